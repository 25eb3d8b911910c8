"""Software key stores: ECDSA P-256 keys kept in PEM PKCS#8 files.

Two stores, both satisfying :class:`iotrust.ports.Signer` and :class:`iotrust.ports.HasPrivateKey`:

* :class:`EncryptedFileSigner` — the trust domain's software key store (CA, voucher owner, update
  roles when no HSM is available): the key is encrypted with a passphrase
  (``BestAvailableEncryption``). Passphrases come from the environment or a file
  (:func:`passphrase_from_environment`), never from a command line.
* :class:`DeviceFileKey` — an **unencrypted** development key store for the device side (factory
  tool, agent).

Both create key files atomically with ``O_CREAT | O_EXCL`` and mode ``0600``, never overwrite an
existing key, and refuse to load a key file readable by group or others.

This module does not decide *which* key store a deployment uses (see :mod:`.refs`), keeps no
passphrase after use, and does not log.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.errors import BackendError, ConflictError, InputError

#: Shortest passphrase accepted when a key file is created.
MIN_PASSPHRASE_BYTES = 12
#: Longest passphrase read from the environment or a file (a bound on untrusted input).
MAX_PASSPHRASE_BYTES = 4096
#: A PEM P-256 key is well under 1 KiB; anything far larger is not one of ours.
MAX_KEY_FILE_BYTES = 64 * 1024

_ENCRYPTED_PEM_HEADER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_ENCRYPTED_PEM_FOOTER = b"-----END ENCRYPTED PRIVATE KEY-----"
_KEY_FILE_MODE = 0o600
_DER_SEQUENCE = 0x30
_DER_LONG_FORM = 0x80
_DER_MIN_HEADER = 2  # tag octet + first length octet
_DER_MAX_LENGTH_OCTETS = 4


def passphrase_from_environment(
    env_var: str = "IOTRUST_PASSPHRASE",
    file_env_var: str = "IOTRUST_PASSPHRASE_FILE",
    *,
    environ: Mapping[str, str] | None = None,
) -> bytes:
    r"""Read the key-store passphrase from ``env_var`` or from the file named by ``file_env_var``.

    One trailing newline (``\n`` or ``\r\n``) of the file is removed. Setting both variables is
    refused as ambiguous; an empty value counts as unset.

    Args:
        env_var: variable holding the passphrase itself.
        file_env_var: variable holding the path of a file that contains the passphrase.
        environ: the environment to read (defaults to ``os.environ``).

    Raises:
        InputError: ``passphrase_missing``, ``passphrase_ambiguous``,
            ``passphrase_file_unreadable`` or ``passphrase_too_long``.
    """
    env = os.environ if environ is None else environ
    direct = env.get(env_var, "")
    file_name = env.get(file_env_var, "")
    if direct and file_name:
        raise InputError(
            f"both {env_var} and {file_env_var} are set; set only one",
            reason="passphrase_ambiguous",
        )
    if direct:
        value = os.fsencode(direct)
    elif file_name:
        value = _read_passphrase_file(Path(file_name), file_env_var)
    else:
        raise InputError(
            f"no key-store passphrase: set {env_var} to the passphrase, or {file_env_var} to "
            "the path of a file containing it (never pass it on the command line)",
            reason="passphrase_missing",
        )
    if len(value) > MAX_PASSPHRASE_BYTES:
        raise InputError(
            f"the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes",
            reason="passphrase_too_long",
        )
    if not value:
        raise InputError(f"the passphrase in {file_env_var} is empty", reason="passphrase_missing")
    return value


def _read_passphrase_file(path: Path, file_env_var: str) -> bytes:
    try:
        with path.open("rb") as handle:
            value = handle.read(MAX_PASSPHRASE_BYTES + 3)
    except OSError as exc:
        raise InputError(
            f"cannot read the passphrase file named by {file_env_var}: {exc.strerror}",
            reason="passphrase_file_unreadable",
        ) from None
    if value.endswith(b"\r\n"):
        return value[:-2]
    if value.endswith(b"\n"):
        return value[:-1]
    return value


def check_passphrase(passphrase: bytes) -> bytes:
    """Return ``passphrase`` if it is acceptable for a new key file.

    Raises:
        TypeError: it is not ``bytes``.
        InputError: ``weak_passphrase`` (shorter than :data:`MIN_PASSPHRASE_BYTES`) or
            ``passphrase_too_long``.
    """
    if not isinstance(passphrase, bytes):
        raise TypeError("a passphrase is bytes")
    if len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise InputError(
            f"the passphrase must be at least {MIN_PASSPHRASE_BYTES} bytes long",
            reason="weak_passphrase",
        )
    if len(passphrase) > MAX_PASSPHRASE_BYTES:
        raise InputError(
            f"the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes",
            reason="passphrase_too_long",
        )
    return passphrase


class _SoftwareKey:
    """The Signer surface shared by both file key stores."""

    def __init__(self, path: Path, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise InputError("only ECDSA P-256 keys are supported", reason="unsupported_key")
        self._path = path
        self._private_key = private_key
        self._public_key = private_key.public_key()

    @property
    def path(self) -> Path:
        """Where the key file lives."""
        return self._path

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half of the key."""
        return self._public_key

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The in-process private key (the :class:`~iotrust.ports.HasPrivateKey` fast path)."""
        return self._private_key

    def sign(self, data: bytes) -> bytes:
        """Sign ``SHA-256(data)``; return the DER ``Ecdsa-Sig-Value``."""
        return self._private_key.sign(data, ec.ECDSA(hashes.SHA256()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self._path)!r})"


class EncryptedFileSigner(_SoftwareKey):
    """An ECDSA P-256 key in a passphrase-encrypted PEM PKCS#8 file (mode 0600).

    Use :meth:`generate` to create one and :meth:`load` to open it; the constructor is private.
    """

    @classmethod
    def generate(cls, path: Path, passphrase: bytes) -> Self:
        """Create a new key and write it, encrypted, to ``path``.

        Raises:
            InputError: ``weak_passphrase``; ``key_path_unusable`` (missing directory, no
                permission).
            ConflictError: ``key_exists`` when ``path`` already exists (it is never overwritten).
            BackendError: ``key_store_io`` for any other I/O failure.
        """
        check_passphrase(passphrase)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
        _write_new_key_file(path, pem)
        return cls(path, key)

    @classmethod
    def load(cls, path: Path, passphrase: bytes) -> Self:
        """Open the encrypted key at ``path``.

        Raises:
            InputError: ``bad_passphrase`` (wrong passphrase, or a damaged ciphertext),
                ``key_not_encrypted``, ``malformed_key_file``, ``unsupported_key``,
                ``key_file_unreadable``, ``key_file_permissions``, ``key_file_too_large``.
        """
        if not isinstance(passphrase, bytes):
            raise TypeError("a passphrase is bytes")
        data = _read_key_file(path)
        _check_encrypted_pem_framing(data)
        if not passphrase:
            raise InputError("the passphrase is empty", reason="bad_passphrase")
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except ValueError:
            # The framing and DER outer structure were checked above, so what is left is a
            # failed decryption: a wrong passphrase or a damaged ciphertext.
            raise InputError(
                f"cannot decrypt the key file {str(path)!r}: wrong passphrase "
                "(or the file is damaged)",
                reason="bad_passphrase",
            ) from None
        except (TypeError, UnsupportedAlgorithm):
            raise InputError(
                f"the key file {str(path)!r} uses an unsupported encryption",
                reason="malformed_key_file",
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InputError(f"the key in {str(path)!r} is not an EC key", reason="unsupported_key")
        return cls(path, key)


class DeviceFileKey(_SoftwareKey):
    """A DEVELOPMENT-ONLY device key: an **unencrypted** PEM PKCS#8 P-256 key file (mode 0600).

    For the device side (the factory tool minting factory identities, the agent holding its
    operational key) on machines without a secure element or TPM. Anyone who can read the file
    owns the device's identity, so it gives no key protection at all: devices using it declare
    software key storage, get shorter credential lifetimes, and the posture audit flags them as
    weak key storage. Use PKCS#11 (a secure element, TPM or HSM) in production.
    """

    @classmethod
    def generate(cls, path: Path) -> Self:
        """Create a new unencrypted development key at ``path``.

        Raises:
            InputError: ``key_path_unusable``.
            ConflictError: ``key_exists`` when ``path`` already exists.
            BackendError: ``key_store_io``.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new_key_file(path, pem)
        return cls(path, key)

    @classmethod
    def load(cls, path: Path) -> Self:
        """Open the unencrypted development key at ``path``.

        Raises:
            InputError: ``key_encrypted`` (use :class:`EncryptedFileSigner`),
                ``malformed_key_file``, ``unsupported_key``, ``key_file_unreadable``,
                ``key_file_permissions``, ``key_file_too_large``.
        """
        data = _read_key_file(path)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise InputError(
                f"the key file {str(path)!r} is encrypted; open it as an encrypted key",
                reason="key_encrypted",
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise InputError(
                f"the key file {str(path)!r} is not a PEM private key",
                reason="malformed_key_file",
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InputError(f"the key in {str(path)!r} is not an EC key", reason="unsupported_key")
        return cls(path, key)


def _write_new_key_file(path: Path, content: bytes) -> None:
    """Create ``path`` exclusively with mode 0600 and write ``content``; never overwrite.

    A partly written file (disk full) is removed again, so a key file either exists whole or not
    at all as far as this process can tell.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, _KEY_FILE_MODE)
    except FileExistsError:
        raise ConflictError(
            f"a key already exists at {str(path)!r}; refusing to overwrite it",
            reason="key_exists",
        ) from None
    except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError) as exc:
        raise InputError(
            f"cannot create the key file {str(path)!r}: {exc.strerror}",
            reason="key_path_unusable",
        ) from None
    except OSError as exc:
        raise BackendError(
            f"cannot create the key file {str(path)!r}: {exc.strerror}", reason="key_store_io"
        ) from None
    try:
        try:
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        raise BackendError(
            f"cannot write the key file {str(path)!r}: {exc.strerror}", reason="key_store_io"
        ) from None
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the new directory entry durable; best effort (not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _read_key_file(path: Path) -> bytes:
    """Read a key file, refusing symlink tricks, oversize files and loose permissions."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputError(
            f"cannot read the key file {str(path)!r}: {exc.strerror}",
            reason="key_file_unreadable",
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(
                f"the key file {str(path)!r} is not a regular file", reason="key_file_unreadable"
            )
        if info.st_mode & 0o077:
            raise InputError(
                f"the key file {str(path)!r} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it",
                reason="key_file_permissions",
            )
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise InputError(
                f"the key file {str(path)!r} is too large to be a key",
                reason="key_file_too_large",
            )
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError(
            f"cannot read the key file {str(path)!r}: {exc.strerror}",
            reason="key_file_unreadable",
        ) from None
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise InputError(
            f"the key file {str(path)!r} is too large to be a key", reason="key_file_too_large"
        )
    return data


def _check_encrypted_pem_framing(data: bytes) -> None:
    """Refuse anything but one well-formed ``ENCRYPTED PRIVATE KEY`` PEM block.

    Checking the framing first lets :meth:`EncryptedFileSigner.load` tell a damaged or wrong file
    (``malformed_key_file``, ``key_not_encrypted``) from a wrong passphrase.
    """
    text = data.strip()
    if text.startswith((b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN EC ")):
        raise InputError(
            "the key file is not encrypted; an encrypted key store refuses plaintext keys",
            reason="key_not_encrypted",
        )
    if not (text.startswith(_ENCRYPTED_PEM_HEADER) and text.endswith(_ENCRYPTED_PEM_FOOTER)):
        raise InputError(
            "the key file is not an encrypted PEM PKCS#8 key", reason="malformed_key_file"
        )
    body = text[len(_ENCRYPTED_PEM_HEADER) : -len(_ENCRYPTED_PEM_FOOTER)]
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            "the key file is not an encrypted PEM PKCS#8 key", reason="malformed_key_file"
        ) from None
    if not _is_single_der_sequence(der):
        raise InputError(
            "the key file is not an encrypted PEM PKCS#8 key", reason="malformed_key_file"
        )


def _is_single_der_sequence(der: bytes) -> bool:
    """True when ``der`` is exactly one DER SEQUENCE (tag, definite length, contents)."""
    if len(der) < _DER_MIN_HEADER or der[0] != _DER_SEQUENCE:
        return False
    first = der[1]
    if first < _DER_LONG_FORM:
        return len(der) == _DER_MIN_HEADER + first
    count = first & ~_DER_LONG_FORM
    if not 0 < count <= _DER_MAX_LENGTH_OCTETS or len(der) < _DER_MIN_HEADER + count:
        return False
    length = int.from_bytes(der[_DER_MIN_HEADER : _DER_MIN_HEADER + count], "big")
    return len(der) == _DER_MIN_HEADER + count + length
