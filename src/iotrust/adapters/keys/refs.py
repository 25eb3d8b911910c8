"""Key references: one string that says where a key lives, and opening the signer it names.

The registry records a reference next to every key it uses (CA keys, voucher owner key, update
roles). Three forms exist:

* ``file:<path>`` — a passphrase-encrypted PEM file (:class:`~.file.EncryptedFileSigner`);
* ``devfile:<path>`` — an unencrypted development device key (:class:`~.file.DeviceFileKey`);
* ``pkcs11:module=<path>;token=<label>;object=<label>`` — a key on a PKCS#11 token
  (:class:`~.pkcs11.Pkcs11Signer`), in the spirit of RFC 7512 without percent-encoding: values
  may not contain ``;``, ``=`` or ``%``.

:func:`parse_key_ref` validates a reference into a frozen :class:`KeyRef`; ``str(ref)`` gives the
canonical string back. References hold no secret: the passphrase and the PIN come from the caller
or from the environment (``IOTRUST_PASSPHRASE`` / ``IOTRUST_PASSPHRASE_FILE``,
``IOTRUST_PKCS11_PIN``).

This module does not create keys and does not resolve relative paths (a relative path is kept as
given and opened relative to the working directory).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from iotrust.adapters.keys.file import (
    DeviceFileKey,
    EncryptedFileSigner,
    passphrase_from_environment,
)
from iotrust.adapters.keys.pkcs11 import (
    MAX_KEY_LABEL_BYTES,
    MAX_PIN_BYTES,
    MAX_TOKEN_LABEL_BYTES,
    Pkcs11Signer,
    check_label,
)
from iotrust.errors import InputError
from iotrust.ports import Signer

#: Longest key reference accepted (a bound on untrusted input).
MAX_KEY_REF_CHARS = 4096
PIN_ENV_VAR = "IOTRUST_PKCS11_PIN"

_PKCS11_FIELDS = ("module", "token", "object")


class KeyRefKind(enum.StrEnum):
    """Which key store a reference points into (the reference's scheme)."""

    FILE = "file"
    DEVFILE = "devfile"
    PKCS11 = "pkcs11"


def _invalid(message: str) -> InputError:
    return InputError(message, reason="invalid_key_ref")


def _present(value: str | None) -> str:
    """Narrow a field that the :class:`KeyRef` invariants guarantee is set."""
    if value is None:
        raise _invalid("the key reference lacks a required field")
    return value


def _check_path(value: str, what: str) -> None:
    if not value or "\0" in value or not value.isprintable() or value != value.strip():
        raise _invalid(f"the {what} in a key reference must be a non-empty printable path")
    if ";" in value and what == "module path":
        raise _invalid("a PKCS#11 module path may not contain ';'")


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A validated key reference. Build with :func:`parse_key_ref` or the class methods.

    ``path`` is set for ``file`` and ``devfile``; ``module``, ``token`` and ``key_label`` for
    ``pkcs11``; the other fields are ``None``.
    """

    kind: KeyRefKind
    path: str | None = None
    module: str | None = None
    token: str | None = None
    key_label: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, KeyRefKind):
            raise TypeError("KeyRef.kind is a KeyRefKind")
        if self.kind is KeyRefKind.PKCS11:
            if self.path is not None or None in (self.module, self.token, self.key_label):
                raise _invalid("a pkcs11 key reference needs module, token and object, no path")
            _check_path(_present(self.module), "module path")
            try:
                check_label(_present(self.token), "token label", MAX_TOKEN_LABEL_BYTES)
                check_label(_present(self.key_label), "key label", MAX_KEY_LABEL_BYTES)
            except InputError as exc:
                raise _invalid(exc.message) from None
        else:
            if self.path is None or (self.module, self.token, self.key_label) != (None,) * 3:
                raise _invalid(f"a {self.kind} key reference needs a path and nothing else")
            _check_path(_present(self.path), "path")
        if len(str(self)) > MAX_KEY_REF_CHARS:
            raise _invalid("the key reference is too long")

    @classmethod
    def encrypted_file(cls, path: Path | str) -> KeyRef:
        """A reference to a passphrase-encrypted key file."""
        return cls(KeyRefKind.FILE, path=os.fspath(path))

    @classmethod
    def device_file(cls, path: Path | str) -> KeyRef:
        """A reference to an unencrypted development device key file."""
        return cls(KeyRefKind.DEVFILE, path=os.fspath(path))

    @classmethod
    def pkcs11(cls, module: str, token: str, key_label: str) -> KeyRef:
        """A reference to a key labelled ``key_label`` on a PKCS#11 token."""
        return cls(KeyRefKind.PKCS11, module=module, token=token, key_label=key_label)

    def __str__(self) -> str:
        if self.kind is KeyRefKind.PKCS11:
            return f"pkcs11:module={self.module};token={self.token};object={self.key_label}"
        return f"{self.kind}:{self.path}"


def parse_key_ref(ref: str) -> KeyRef:
    """Parse and validate a key reference string.

    Raises:
        InputError: ``invalid_key_ref`` for anything malformed: unknown scheme, empty path,
            missing, unknown or repeated ``pkcs11`` fields, forbidden characters, over-long input.
    """
    if not isinstance(ref, str):
        raise _invalid("a key reference is a string")
    if len(ref) > MAX_KEY_REF_CHARS:
        raise _invalid("the key reference is too long")
    scheme, sep, rest = ref.partition(":")
    if not sep:
        raise _invalid(f"not a key reference: {ref!r:.80} (expected file:, devfile: or pkcs11:)")
    try:
        kind = KeyRefKind(scheme)
    except ValueError:
        raise _invalid(
            f"unknown key reference scheme {scheme!r:.40} (expected file, devfile or pkcs11)"
        ) from None
    if kind is not KeyRefKind.PKCS11:
        return KeyRef(kind, path=rest)
    fields: dict[str, str] = {}
    for part in rest.split(";"):
        name, eq, value = part.partition("=")
        if not eq or name not in _PKCS11_FIELDS:
            raise _invalid(f"bad pkcs11 key reference attribute {part!r:.80}")
        if name in fields:
            raise _invalid(f"repeated pkcs11 key reference attribute {name!r}")
        fields[name] = value
    missing = [name for name in _PKCS11_FIELDS if name not in fields]
    if missing:
        raise _invalid(f"the pkcs11 key reference lacks {', '.join(missing)}")
    return KeyRef(kind, module=fields["module"], token=fields["token"], key_label=fields["object"])


def pin_from_environment(
    env_var: str = PIN_ENV_VAR, *, environ: Mapping[str, str] | None = None
) -> str:
    """Read the PKCS#11 user PIN from ``env_var`` (default ``IOTRUST_PKCS11_PIN``).

    Raises:
        InputError: ``pin_missing`` when unset or empty; ``bad_pin`` when over-long.
    """
    env = os.environ if environ is None else environ
    pin = env.get(env_var, "")
    if not pin:
        raise InputError(
            f"no PKCS#11 PIN: set {env_var} (never pass it on the command line)",
            reason="pin_missing",
        )
    if len(pin.encode("utf-8")) > MAX_PIN_BYTES:
        raise InputError(f"the PIN in {env_var} is too long", reason="bad_pin")
    return pin


def open_signer(
    ref: str | KeyRef, *, passphrase: bytes | None = None, pin: str | None = None
) -> Signer:
    """Open the signer that ``ref`` names.

    ``file:`` keys need a passphrase (``passphrase``, else :func:`passphrase_from_environment`);
    ``pkcs11:`` keys need a PIN (``pin``, else :func:`pin_from_environment`); ``devfile:`` keys
    need neither. A :class:`~.pkcs11.Pkcs11Signer` should be closed by its user when done.

    Raises:
        InputError: ``invalid_key_ref`` and whatever the key store raises on opening.
        NotFoundError, BackendError: from the key store.
    """
    key_ref = ref if isinstance(ref, KeyRef) else parse_key_ref(ref)
    if key_ref.kind is KeyRefKind.FILE:
        secret = passphrase if passphrase is not None else passphrase_from_environment()
        return EncryptedFileSigner.load(Path(_present(key_ref.path)), secret)
    if key_ref.kind is KeyRefKind.DEVFILE:
        return DeviceFileKey.load(Path(_present(key_ref.path)))
    return Pkcs11Signer.open(
        _present(key_ref.module),
        _present(key_ref.token),
        pin if pin is not None else pin_from_environment(),
        _present(key_ref.key_label),
    )
