"""PKCS#11 key store: ECDSA P-256 keys generated and used inside a token (HSM, SoftHSM2).

:class:`Pkcs11Signer` satisfies :class:`iotrust.ports.Signer`. The private key is created on the
token as a persistent, sensitive, non-extractable object and never leaves it; this process sees
only its public half and signatures. Many tokens (SoftHSM2 among them) offer only raw
``CKM_ECDSA``, so the SHA-256 digest is computed here and the token signs the digest; its
``r || s`` output is re-encoded as a DER ``Ecdsa-Sig-Value``.

One logged-in session per (module, token) is shared by every signer of this process and reused
for every signature, behind a lock: PKCS#11 login state belongs to the whole application, so a
second ``C_Login`` would fail and one signer's ``C_Logout`` would log every other one out.
The session is closed when the last signer using it is closed.

Every ``pkcs11`` exception is translated into the iotrust error tree in :func:`_pkcs11_errors`, the
one seam. The PIN is never logged, stored in clear or put into a message; only a keyed hash of it
is kept to check a second signer's PIN against the open session.

This module does not create or initialise tokens, manage PINs, import existing keys or offer any
algorithm but ECDSA P-256 with SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

import pkcs11
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_named_curve_parameters

from iotrust.errors import BackendError, ConflictError, InputError, IotrustError, NotFoundError

#: Where Debian and Ubuntu install SoftHSM2's PKCS#11 module.
SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

#: A PKCS#11 token label is at most 32 bytes (CK_TOKEN_INFO.label).
MAX_TOKEN_LABEL_BYTES = 32
#: Object labels have no limit in the standard; this bound keeps untrusted input small.
MAX_KEY_LABEL_BYTES = 128
MAX_PIN_BYTES = 256

_P256_PARAMS = encode_named_curve_parameters("secp256r1")
_P256_COORDINATE_BYTES = 32
_UNCOMPRESSED_POINT_BYTES = 1 + 2 * _P256_COORDINATE_BYTES
_DER_OCTET_STRING = 0x04
_KEY_ID_BYTES = 16

_PIN_ERRORS: tuple[type[Exception], ...] = (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange)
_PIN_TAG_KEY = secrets.token_bytes(32)


def check_label(value: str, what: str, max_bytes: int) -> str:
    """Return ``value`` if it is a usable token or object label.

    Labels are non-empty printable text without ``;``, ``=`` or ``%`` (so a key reference stays
    unambiguous) and at most ``max_bytes`` UTF-8 bytes.

    Raises:
        InputError: ``invalid_label``.
    """
    if (
        not isinstance(value, str)
        or not value
        or len(value.encode("utf-8")) > max_bytes
        or not value.isprintable()
        or any(c in value for c in ";=%")
        or value != value.strip()
    ):
        raise InputError(
            f"not a usable {what}: {value!r:.80} (1-{max_bytes} bytes of printable text, "
            "no ';', '=', '%' or surrounding spaces)",
            reason="invalid_label",
        )
    return value


def _check_pin(pin: str) -> str:
    if not isinstance(pin, str):
        raise TypeError("a PIN is a str")
    if not pin or len(pin.encode("utf-8")) > MAX_PIN_BYTES:
        raise InputError("the PIN is empty or too long", reason="bad_pin")
    return pin


def _pin_tag(pin: str) -> bytes:
    return hmac.new(_PIN_TAG_KEY, pin.encode("utf-8"), hashlib.sha256).digest()


@contextmanager
def _pkcs11_errors(action: str) -> Iterator[None]:
    """The one seam: turn any ``pkcs11`` failure during ``action`` into the iotrust tree."""
    try:
        yield
    except IotrustError:
        raise
    except _PIN_ERRORS:
        raise InputError(f"{action}: the token refused the PIN", reason="bad_pin") from None
    except p11.PinLocked:
        raise BackendError(f"{action}: the token's PIN is locked", reason="pin_locked") from None
    except p11.NoSuchToken:
        raise BackendError(
            f"{action}: no such token in the PKCS#11 module", reason="token_missing"
        ) from None
    except (p11.TokenNotPresent, p11.DeviceRemoved):
        raise BackendError(f"{action}: the token is not present", reason="token_missing") from None
    except p11.PKCS11Error as exc:
        # Only the exception's class name: its message may echo the attributes we sent.
        raise BackendError(
            f"{action}: the PKCS#11 module failed ({type(exc).__name__})",
            reason="pkcs11_failure",
        ) from None


class _TokenSession:
    """One logged-in read/write session on one token, shared by this process's signers."""

    def __init__(self, key: tuple[str, str], session: Any, pin_tag: bytes) -> None:  # noqa: ANN401 - pkcs11.Session is untyped at runtime
        self.key = key
        self.session = session
        self.pin_tag = pin_tag
        self.lock = threading.Lock()
        self.users = 0


_sessions: dict[tuple[str, str], _TokenSession] = {}
_sessions_lock = threading.Lock()


def _acquire_session(module: str, token_label: str, pin: str, action: str) -> _TokenSession:
    """Return the shared logged-in session for this token, opening it on first use."""
    key = (module, token_label)
    tag = _pin_tag(pin)
    with _sessions_lock:
        shared = _sessions.get(key)
        if shared is not None:
            if not hmac.compare_digest(shared.pin_tag, tag):
                raise InputError(
                    f"{action}: the PIN differs from the one the open session logged in with",
                    reason="bad_pin",
                )
            shared.users += 1
            return shared
        try:
            library = pkcs11.lib(module)
        except p11.PKCS11Error:
            raise BackendError(
                f"{action}: cannot load the PKCS#11 module {module!r}",
                reason="module_unavailable",
            ) from None
        with _pkcs11_errors(action):
            token = library.get_token(token_label=token_label)
            session = token.open(user_pin=pin, rw=True)
        shared = _TokenSession(key, session, tag)
        shared.users = 1
        _sessions[key] = shared
        return shared


def _release_session(shared: _TokenSession) -> None:
    """Drop one user of ``shared``; log out and close it when it was the last."""
    with _sessions_lock:
        shared.users -= 1
        if shared.users > 0:
            return
        if _sessions.get(shared.key) is shared:
            del _sessions[shared.key]
        with shared.lock, _pkcs11_errors("closing the PKCS#11 session"):
            shared.session.close()


def _public_key_from_ec_point(value: object) -> ec.EllipticCurvePublicKey:
    """Decode ``CKA_EC_POINT`` (a DER OCTET STRING, or the raw point some tokens return)."""
    if not isinstance(value, bytes):
        raise BackendError("the token returned no EC point", reason="pkcs11_failure")
    point = value
    if (
        len(value) == _UNCOMPRESSED_POINT_BYTES + 2
        and value[0] == _DER_OCTET_STRING
        and value[1] == _UNCOMPRESSED_POINT_BYTES
    ):
        point = value[2:]
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise BackendError(
            "the token returned an EC point that is not on P-256", reason="pkcs11_failure"
        ) from None


def _generate_pair(
    session: Any,  # noqa: ANN401 - a pkcs11 Session; the package's stubs are partial
    token_label: str,
    key_label: str,
) -> tuple[Any, ec.EllipticCurvePublicKey]:
    """Generate the key pair on ``session``'s token; refuse a label already in use."""
    if next(iter(session.get_objects({Attribute.LABEL: key_label})), None) is not None:
        raise ConflictError(
            f"token {token_label!r} already holds an object labelled {key_label!r}",
            reason="key_exists",
        )
    public, private = session.generate_keypair(
        KeyType.EC,
        id=os.urandom(_KEY_ID_BYTES),
        label=key_label,
        store=True,
        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
        public_template={Attribute.EC_PARAMS: _P256_PARAMS},
        private_template={
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DERIVE: False,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
        },
    )
    return private, _public_key_from_ec_point(public[Attribute.EC_POINT])


def _find_pair(
    session: Any,  # noqa: ANN401 - a pkcs11 Session; the package's stubs are partial
    key_label: str,
) -> tuple[Any, ec.EllipticCurvePublicKey]:
    """Find the private key and the P-256 public key labelled ``key_label``."""
    private = _find_key(session, ObjectClass.PRIVATE_KEY, key_label)
    public = _find_key(session, ObjectClass.PUBLIC_KEY, key_label)
    if public[Attribute.EC_PARAMS] != _P256_PARAMS:
        raise InputError(f"key {key_label!r} is not a P-256 key", reason="unsupported_key")
    return private, _public_key_from_ec_point(public[Attribute.EC_POINT])


def _find_key(session: Any, object_class: ObjectClass, key_label: str) -> Any:  # noqa: ANN401 - pkcs11 objects are untyped here
    try:
        return session.get_key(object_class=object_class, key_type=KeyType.EC, label=key_label)
    except p11.NoSuchKey:
        raise NotFoundError(
            f"no EC key labelled {key_label!r} on the token", reason="key_not_found"
        ) from None
    except p11.MultipleObjectsReturned:
        raise ConflictError(
            f"several EC keys are labelled {key_label!r} on the token", reason="key_ambiguous"
        ) from None


class Pkcs11Signer:
    """An ECDSA P-256 key that lives on a PKCS#11 token and never leaves it.

    Create with :meth:`generate`, find with :meth:`open`; call :meth:`close` (or use ``with``)
    when done. Thread-safe: signatures are serialised on the token's shared session.
    """

    def __init__(
        self,
        shared: _TokenSession,
        private_key: Any,  # noqa: ANN401 - a pkcs11.PrivateKey; the package's stubs are partial
        public_key: ec.EllipticCurvePublicKey,
        key_label: str,
    ) -> None:
        self._shared = shared
        self._private_key = private_key
        self._public_key = public_key
        self._key_label = key_label
        self._closed = False
        self._close_lock = threading.Lock()

    @classmethod
    def generate(cls, module: str, token_label: str, pin: str, key_label: str) -> Self:
        """Generate a new P-256 key pair on the token, labelled ``key_label``.

        The private key is a token object (persistent), private, sensitive, not extractable and
        usable only to sign.

        Raises:
            ConflictError: ``key_exists`` if an object with that label is already on the token.
            InputError: ``bad_pin``, ``invalid_label``.
            BackendError: ``token_missing``, ``pin_locked``, ``pkcs11_failure``.
        """
        cls._check_arguments(module, token_label, pin, key_label)
        action = f"generating key {key_label!r} on token {token_label!r}"
        shared = _acquire_session(module, token_label, pin, action)
        try:
            with shared.lock, _pkcs11_errors(action):
                private, public_key = _generate_pair(shared.session, token_label, key_label)
        except BaseException:
            _release_session(shared)
            raise
        return cls(shared, private, public_key, key_label)

    @classmethod
    def open(cls, module: str, token_label: str, pin: str, key_label: str) -> Self:
        """Find the P-256 key pair labelled ``key_label`` on the token.

        Raises:
            NotFoundError: ``key_not_found`` (no such private or public key).
            ConflictError: ``key_ambiguous`` (several keys carry the label).
            InputError: ``bad_pin``, ``invalid_label``, ``unsupported_key`` (not P-256).
            BackendError: ``token_missing``, ``pin_locked``, ``pkcs11_failure``.
        """
        cls._check_arguments(module, token_label, pin, key_label)
        action = f"opening key {key_label!r} on token {token_label!r}"
        shared = _acquire_session(module, token_label, pin, action)
        try:
            with shared.lock, _pkcs11_errors(action):
                private, public_key = _find_pair(shared.session, key_label)
        except BaseException:
            _release_session(shared)
            raise
        return cls(shared, private, public_key, key_label)

    @staticmethod
    def _check_arguments(module: str, token_label: str, pin: str, key_label: str) -> None:
        if not isinstance(module, str) or not module or "\0" in module:
            raise InputError("the PKCS#11 module path is empty", reason="invalid_module")
        check_label(token_label, "token label", MAX_TOKEN_LABEL_BYTES)
        check_label(key_label, "key label", MAX_KEY_LABEL_BYTES)
        _check_pin(pin)

    @property
    def key_label(self) -> str:
        """The key's label on the token."""
        return self._key_label

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half of the key, as read from the token."""
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        """Sign ``SHA-256(data)`` on the token; return the DER ``Ecdsa-Sig-Value``.

        Raises:
            RuntimeError: the signer was closed.
            BackendError: the token failed.
        """
        digest = hashlib.sha256(data).digest()
        shared = self._shared
        with shared.lock:
            if self._closed:
                raise RuntimeError("this Pkcs11Signer is closed")
            with _pkcs11_errors(f"signing with key {self._key_label!r}"):
                raw = self._private_key.sign(digest, mechanism=Mechanism.ECDSA)
        if not isinstance(raw, bytes) or len(raw) != 2 * _P256_COORDINATE_BYTES:
            raise BackendError(
                "the token returned a malformed ECDSA signature", reason="pkcs11_failure"
            )
        r = int.from_bytes(raw[:_P256_COORDINATE_BYTES], "big")
        s = int.from_bytes(raw[_P256_COORDINATE_BYTES:], "big")
        return encode_dss_signature(r, s)

    def close(self) -> None:
        """Release this signer's use of the token session (idempotent)."""
        with self._close_lock:
            if self._closed:
                return
            with self._shared.lock:
                self._closed = True
            _release_session(self._shared)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        token = self._shared.key[1]
        return f"Pkcs11Signer(token={token!r}, key_label={self._key_label!r})"
