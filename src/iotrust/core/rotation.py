"""Credential rotation (DESIGN.md §8): renewal with a new key, proven with the current one.

The exchange (wire format in ``docs/protocol.md``, "Credential rotation") has three steps, each a
JSON message with one parse boundary here:

1. **begin** — the device names its current credential and signs :func:`begin_transcript` with
   its *current* operational key; the server answers with a session id and a single-use server
   nonce (≤ 60 s, stored hashed) bound to that credential, and tells the device whether an
   operator asked for early renewal (``renewal_requested``) and when renewal is due.
2. **complete** — the device makes a **new** key, a CSR for it, and signs, with its *current*
   key, :func:`rotation_transcript`: ``["iotrust-rotation-v1", session id, server nonce,
   device id, current credential serial, SHA-256(CSR)]`` (deterministic CBOR, RFC 8949 §4.2).
   The server spends the nonce (one conditional update), checks the current credential is live
   (not revoked, expired or superseded), the signature, the CSR and that its key was never seen,
   and issues the new credential. Both credentials are valid now: the **overlap**.
3. **confirm** — the device signs :func:`confirm_transcript` with the *new* key. The new
   credential becomes active, the old one superseded and then revoked (reason ``superseded``)
   once the overlap grace (:class:`OverlapPolicy`) has passed — at once by default, so a device
   that keeps using the old credential is refused by the broker (CRL) and by the API.

Renewal is due at a configurable fraction of the credential's lifetime (:func:`renewal_due_at`).

Nothing here reads a clock, draws randomness, stores or sends anything: time, randomness and the
stored facts are arguments; the services and the agent do the I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, Final

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from iotrust.core import pki
from iotrust.core.ids import DEVICE_ID_RE
from iotrust.core.lifecycle import CredentialState, DeviceState
from iotrust.core.onboarding import _wire as w
from iotrust.core.onboarding.reasons import malformed
from iotrust.errors import InputError, TrustError

__all__ = [
    "BEGIN_CONTEXT",
    "CONFIRM_CONTEXT",
    "DEFAULT_RENEW_FRACTION",
    "MAX_SESSION_TTL_SECONDS",
    "PROTOCOL_VERSION",
    "ROTATION_CONTEXT",
    "ROTATION_REASONS",
    "ZOMBIE_REASONS",
    "BeginRequest",
    "BeginResponse",
    "CompleteRequest",
    "CompleteResponse",
    "ConfirmRequest",
    "NewRotationSession",
    "OverlapPolicy",
    "RotationSession",
    "RotationState",
    "begin_transcript",
    "check_begin",
    "check_complete",
    "check_confirm",
    "check_current_credential",
    "confirm_transcript",
    "is_renewal_due",
    "new_rotation_session",
    "nonce_sha256",
    "precheck_complete",
    "refuse",
    "renewal_due_at",
    "rotation_transcript",
]

PROTOCOL_VERSION: Final = 1
ROTATION_CONTEXT: Final = "iotrust-rotation-v1"
BEGIN_CONTEXT: Final = "iotrust-rotation-begin-v1"
CONFIRM_CONTEXT: Final = "iotrust-rotation-confirm-v1"
MAX_SESSION_TTL_SECONDS: Final = 60
#: Renew once two thirds of the lifetime have passed (a third is left for retries and outages).
DEFAULT_RENEW_FRACTION: Final = 2 / 3
SESSION_ID_BYTES: Final = 16
NONCE_BYTES: Final = 32
MAX_SERIAL_HEX: Final = 40
MAX_CSR_BYTES: Final = 4 * 1024
MAX_CERTIFICATE_BYTES: Final = 8 * 1024
MAX_SIGNATURE_BYTES: Final = 72
MIN_SIGNATURE_BYTES: Final = 8
MAX_REQUEST_BYTES: Final = 16 * 1024
MAX_RESPONSE_BYTES: Final = 64 * 1024
_SERIAL_RE: Final = re.compile(r"^[0-9a-f]{1,40}$")

# --- reasons ---------------------------------------------------------------------------------
CREDENTIAL_UNKNOWN: Final = "credential_unknown"
CREDENTIAL_REVOKED: Final = "credential_revoked"
CREDENTIAL_EXPIRED: Final = "credential_expired"
CREDENTIAL_SUPERSEDED: Final = "credential_superseded"
RETIRED: Final = "retired"
DEVICE_NOT_ACTIVE: Final = "device_not_active"
NONCE_UNKNOWN: Final = "nonce_unknown"
NONCE_EXPIRED: Final = "nonce_expired"
NONCE_REPLAYED: Final = "nonce_replayed"
SIGNATURE_INVALID: Final = "signature_invalid"
CSR_INVALID: Final = "csr_invalid"
CLONE_SUSPECTED: Final = "clone_suspected"

#: Every refusal of the rotation exchange with its meaning (all HTTP 403).
ROTATION_REASONS: Final[Mapping[str, str]] = {
    CREDENTIAL_UNKNOWN: "no credential with this serial belongs to this device",
    CREDENTIAL_REVOKED: "the current credential is revoked (a zombie contact)",
    CREDENTIAL_EXPIRED: "the current credential has expired (a zombie contact); re-onboarding "
                        "needs the operator (`iotrust devices reset`)",
    CREDENTIAL_SUPERSEDED: "the current credential was already replaced by a newer one",
    RETIRED: "the device is retired (a zombie contact)",
    DEVICE_NOT_ACTIVE: "the device is not onboarded (expected)",
    NONCE_UNKNOWN: "no rotation session with this id, nonce, device and credential",
    NONCE_EXPIRED: "the server nonce (complete) or the confirmation deadline (confirm) passed",
    NONCE_REPLAYED: "the nonce or the session step was already used",
    SIGNATURE_INVALID: "the transcript signature does not verify with the expected key",
    CSR_INVALID: "the CSR is malformed, fails proof of possession, is not P-256 or reuses the "
                 "current key",
    CLONE_SUSPECTED: "the CSR key was seen before (on this or another device)",
}

#: The refusals that mean "a dead identity is still talking": recorded as zombie contacts.
ZOMBIE_REASONS: Final = frozenset({CREDENTIAL_REVOKED, CREDENTIAL_EXPIRED, RETIRED,
                                   CREDENTIAL_SUPERSEDED})


def refuse(reason: str, message: str) -> TrustError:
    """The :class:`TrustError` for a rotation refusal ``reason`` (raise it yourself)."""
    if reason not in ROTATION_REASONS:
        raise ValueError(f"not a rotation refusal reason: {reason!r}")
    return TrustError(message, reason=reason)


# --- renewal timing and overlap --------------------------------------------------------------

def _aware(*values: datetime) -> None:
    for value in values:
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise TypeError("rotation decisions need timezone-aware times")


def renewal_due_at(not_before: datetime, not_after: datetime,
                   fraction: float = DEFAULT_RENEW_FRACTION) -> datetime:
    """When a credential valid from ``not_before`` to ``not_after`` should be renewed."""
    _aware(not_before, not_after)
    if not 0 < fraction <= 1:
        raise InputError("the renewal fraction must be in (0, 1]", reason="invalid_setting")
    if not_after <= not_before:
        raise InputError("the credential's validity is empty", reason="invalid_validity")
    return not_before + (not_after - not_before) * fraction


def is_renewal_due(now: datetime, not_before: datetime, not_after: datetime,
                   fraction: float = DEFAULT_RENEW_FRACTION) -> bool:
    """Whether renewal is due at ``now``."""
    _aware(now)
    return now >= renewal_due_at(not_before, not_after, fraction)


@dataclass(frozen=True, slots=True)
class OverlapPolicy:
    """How long a superseded credential stays valid after the new one is confirmed.

    ``grace_s = 0`` (the default) revokes the old credential in the confirming transaction: the
    overlap is then exactly the window between *complete* and *confirm*, during which both
    credentials are valid. A positive grace leaves the old credential SUPERSEDED (still
    accepted) until ``confirmed_at + grace``, when a sweep revokes it.
    """

    grace_s: int = 0
    MAX_GRACE_S: ClassVar[int] = 7 * 86_400

    def __post_init__(self) -> None:
        if isinstance(self.grace_s, bool) or not isinstance(self.grace_s, int) \
                or not 0 <= self.grace_s <= self.MAX_GRACE_S:
            raise InputError("the overlap grace must be 0..604800 seconds",
                             reason="invalid_setting")

    def revoke_at(self, confirmed_at: datetime) -> datetime:
        """When the superseded credential of a rotation confirmed at ``confirmed_at`` dies."""
        _aware(confirmed_at)
        return confirmed_at + timedelta(seconds=self.grace_s)

    @property
    def immediate(self) -> bool:
        """Whether the old credential is revoked at confirmation."""
        return self.grace_s == 0


def check_current_credential(*, device_id: str, device_state: DeviceState | None,
                             credential_device_id: str | None,
                             credential_state: CredentialState | None,
                             not_before: datetime | None, not_after: datetime | None,
                             now: datetime, overlap_until: datetime | None = None) -> None:
    """Refuse a rotation unless the named credential is this device's live credential.

    Order: ``credential_unknown`` (no such credential, or another device's), ``retired``,
    ``device_not_active`` (EXPECTED), ``credential_revoked``, ``credential_expired`` (state
    EXPIRED or ``now`` outside its validity), ``credential_superseded`` (unless ``now`` is
    before ``overlap_until``, the end of the overlap grace).
    """
    _aware(now)
    if credential_state is None or credential_device_id != device_id or device_state is None:
        raise refuse(CREDENTIAL_UNKNOWN, "no such credential for this device")
    if device_state is DeviceState.RETIRED:
        raise refuse(RETIRED, "this device is retired")
    if device_state is DeviceState.EXPECTED:
        raise refuse(DEVICE_NOT_ACTIVE, "this device is not onboarded")
    if credential_state is CredentialState.REVOKED:
        raise refuse(CREDENTIAL_REVOKED, "the current credential is revoked")
    if credential_state is CredentialState.EXPIRED or not_before is None or not_after is None \
            or not not_before <= now < not_after:
        raise refuse(CREDENTIAL_EXPIRED, "the current credential has expired")
    if credential_state is CredentialState.SUPERSEDED and (overlap_until is None
                                                           or now >= overlap_until):
        raise refuse(CREDENTIAL_SUPERSEDED, "the current credential was already replaced")


# --- transcripts -----------------------------------------------------------------------------

def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def nonce_sha256(server_nonce: bytes) -> str:
    """How a server nonce is stored: SHA-256, lowercase hex."""
    return hashlib.sha256(server_nonce).hexdigest()


def _exact(value: bytes, length: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{what} must be exactly {length} bytes")
    return value


def begin_transcript(*, device_id: str, credential_serial: str, device_nonce: bytes) -> bytes:
    """What the current key signs in ``begin``: ``[label, device id, serial, device nonce]``."""
    return cbor2.dumps([BEGIN_CONTEXT, device_id, credential_serial,
                        _exact(device_nonce, NONCE_BYTES, "device_nonce")], canonical=True)


def rotation_transcript(*, session_id: bytes, server_nonce: bytes, device_id: str,
                        credential_serial: str, csr_sha256: bytes) -> bytes:
    """What the current key signs in ``complete`` (context label ``iotrust-rotation-v1``)."""
    return cbor2.dumps([ROTATION_CONTEXT, _exact(session_id, SESSION_ID_BYTES, "session_id"),
                        _exact(server_nonce, NONCE_BYTES, "server_nonce"), device_id,
                        credential_serial, _exact(csr_sha256, 32, "csr_sha256")],
                       canonical=True)


def confirm_transcript(*, session_id: bytes, server_nonce: bytes,
                       certificate_sha256: bytes) -> bytes:
    """What the new key signs in ``confirm``."""
    return cbor2.dumps([CONFIRM_CONTEXT, _exact(session_id, SESSION_ID_BYTES, "session_id"),
                        _exact(server_nonce, NONCE_BYTES, "server_nonce"),
                        _exact(certificate_sha256, 32, "certificate_sha256")], canonical=True)


def _verify(certificate: x509.Certificate, signature: bytes, transcript: bytes,
            what: str) -> None:
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                         ec.SECP256R1):
        raise refuse(SIGNATURE_INVALID, f"the {what} credential's key is not ECDSA P-256")
    try:
        key.verify(signature, transcript, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise refuse(SIGNATURE_INVALID,
                     f"the signature does not verify with the {what} key") from exc


# --- messages --------------------------------------------------------------------------------

def _version(obj: Mapping[str, object]) -> None:
    w.get_int(obj, "version", low=PROTOCOL_VERSION, high=PROTOCOL_VERSION)


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise malformed(f"{what} is not acceptable")


def _is_bytes(value: object, low: int, high: int) -> bool:
    return isinstance(value, bytes) and low <= len(value) <= high


def _serial(obj: Mapping[str, object], key: str) -> str:
    return w.get_str(obj, key, max_len=MAX_SERIAL_HEX, pattern=_SERIAL_RE)


def _device(obj: Mapping[str, object]) -> str:
    return w.get_str(obj, "device_id", max_len=30, pattern=DEVICE_ID_RE)


def _sig(obj: Mapping[str, object]) -> bytes:
    return w.b64d(obj["signature"], "signature", min_len=MIN_SIGNATURE_BYTES,
                  max_len=MAX_SIGNATURE_BYTES)


def _fixed(obj: Mapping[str, object], key: str, size: int) -> bytes:
    return w.b64d(obj[key], key, min_len=size, max_len=size)


@dataclass(frozen=True, slots=True)
class BeginRequest:
    """Device → server: ``POST /v1/rotation/begin``, signed with the current key."""

    device_id: str
    credential_serial: str
    device_nonce: bytes
    signature: bytes
    version: int = PROTOCOL_VERSION
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"version", "device_id", "credential_serial", "device_nonce", "signature"})

    def __post_init__(self) -> None:
        _check(self.version == PROTOCOL_VERSION, "version")
        _check(isinstance(self.device_id, str) and bool(DEVICE_ID_RE.fullmatch(self.device_id)),
               "device_id")
        _check(isinstance(self.credential_serial, str)
               and bool(_SERIAL_RE.fullmatch(self.credential_serial)), "credential_serial")
        _check(_is_bytes(self.device_nonce, NONCE_BYTES, NONCE_BYTES), "device_nonce")
        _check(_is_bytes(self.signature, MIN_SIGNATURE_BYTES, MAX_SIGNATURE_BYTES), "signature")

    @classmethod
    def from_wire(cls, data: bytes) -> BeginRequest:
        """Parse untrusted bytes; only ``InputError(malformed_request)`` escapes."""
        obj = w.parse_object(data, max_bytes=MAX_REQUEST_BYTES, keys=cls.FIELDS,
                             what="rotation begin")
        _version(obj)
        return cls(device_id=_device(obj), credential_serial=_serial(obj, "credential_serial"),
                   device_nonce=_fixed(obj, "device_nonce", NONCE_BYTES), signature=_sig(obj))

    def transcript(self) -> bytes:
        """The bytes the signature covers."""
        return begin_transcript(device_id=self.device_id,
                                credential_serial=self.credential_serial,
                                device_nonce=self.device_nonce)

    def to_wire(self) -> bytes:
        """Canonical JSON bytes."""
        return w.to_json({"version": self.version, "device_id": self.device_id,
                          "credential_serial": self.credential_serial,
                          "device_nonce": w.b64e(self.device_nonce),
                          "signature": w.b64e(self.signature)})


@dataclass(frozen=True, slots=True)
class BeginResponse:
    """Server → device: a session bound to the current credential, and the renewal schedule."""

    session_id: bytes
    server_nonce: bytes
    expires_at: datetime
    renew_at: datetime
    renewal_requested: bool
    version: int = PROTOCOL_VERSION
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"version", "session_id", "server_nonce", "expires_at", "renew_at",
         "renewal_requested"})

    def __post_init__(self) -> None:
        _check(self.version == PROTOCOL_VERSION, "version")
        _check(_is_bytes(self.session_id, SESSION_ID_BYTES, SESSION_ID_BYTES), "session_id")
        _check(_is_bytes(self.server_nonce, NONCE_BYTES, NONCE_BYTES), "server_nonce")
        w.check_time(self.expires_at, "expires_at")
        w.check_time(self.renew_at, "renew_at")
        _check(isinstance(self.renewal_requested, bool), "renewal_requested")

    @classmethod
    def from_wire(cls, data: bytes) -> BeginResponse:
        """Parse untrusted bytes; only ``InputError(malformed_request)`` escapes."""
        obj = w.parse_object(data, max_bytes=MAX_RESPONSE_BYTES, keys=cls.FIELDS,
                             what="rotation begin response")
        _version(obj)
        requested = obj["renewal_requested"]
        if not isinstance(requested, bool):
            raise malformed("renewal_requested must be a boolean")
        return cls(session_id=_fixed(obj, "session_id", SESSION_ID_BYTES),
                   server_nonce=_fixed(obj, "server_nonce", NONCE_BYTES),
                   expires_at=w.parse_time(obj["expires_at"], "expires_at"),
                   renew_at=w.parse_time(obj["renew_at"], "renew_at"),
                   renewal_requested=requested)

    def to_wire(self) -> bytes:
        """Canonical JSON bytes."""
        return w.to_json({"version": self.version, "session_id": w.b64e(self.session_id),
                          "server_nonce": w.b64e(self.server_nonce),
                          "expires_at": w.format_time(self.expires_at),
                          "renew_at": w.format_time(self.renew_at),
                          "renewal_requested": self.renewal_requested})


@dataclass(frozen=True, slots=True)
class CompleteRequest:
    """Device → server: the CSR for a new key, signed with the current key over the transcript."""

    session_id: bytes
    device_id: str
    credential_serial: str
    server_nonce: bytes
    csr: bytes
    signature: bytes
    version: int = PROTOCOL_VERSION
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"version", "session_id", "device_id", "credential_serial", "server_nonce", "csr",
         "signature"})

    def __post_init__(self) -> None:
        _check(self.version == PROTOCOL_VERSION, "version")
        _check(_is_bytes(self.session_id, SESSION_ID_BYTES, SESSION_ID_BYTES), "session_id")
        _check(isinstance(self.device_id, str) and bool(DEVICE_ID_RE.fullmatch(self.device_id)),
               "device_id")
        _check(isinstance(self.credential_serial, str)
               and bool(_SERIAL_RE.fullmatch(self.credential_serial)), "credential_serial")
        _check(_is_bytes(self.server_nonce, NONCE_BYTES, NONCE_BYTES), "server_nonce")
        _check(_is_bytes(self.csr, 1, MAX_CSR_BYTES), "csr")
        _check(_is_bytes(self.signature, MIN_SIGNATURE_BYTES, MAX_SIGNATURE_BYTES), "signature")

    @classmethod
    def from_wire(cls, data: bytes) -> CompleteRequest:
        """Parse untrusted bytes; only ``InputError(malformed_request)`` escapes."""
        obj = w.parse_object(data, max_bytes=MAX_REQUEST_BYTES, keys=cls.FIELDS,
                             what="rotation complete")
        _version(obj)
        return cls(session_id=_fixed(obj, "session_id", SESSION_ID_BYTES),
                   device_id=_device(obj), credential_serial=_serial(obj, "credential_serial"),
                   server_nonce=_fixed(obj, "server_nonce", NONCE_BYTES),
                   csr=w.b64d(obj["csr"], "csr", min_len=1, max_len=MAX_CSR_BYTES),
                   signature=_sig(obj))

    def transcript(self) -> bytes:
        """The bytes the signature covers."""
        return rotation_transcript(session_id=self.session_id, server_nonce=self.server_nonce,
                                   device_id=self.device_id,
                                   credential_serial=self.credential_serial,
                                   csr_sha256=_sha256(self.csr))

    def to_wire(self) -> bytes:
        """Canonical JSON bytes."""
        return w.to_json({"version": self.version, "session_id": w.b64e(self.session_id),
                          "device_id": self.device_id,
                          "credential_serial": self.credential_serial,
                          "server_nonce": w.b64e(self.server_nonce), "csr": w.b64e(self.csr),
                          "signature": w.b64e(self.signature)})


@dataclass(frozen=True, slots=True)
class CompleteResponse:
    """Server → device: the new credential (and its chain) and the confirmation deadline."""

    device_id: str
    certificate: bytes
    ca_chain: tuple[bytes, ...]
    confirm_by: datetime
    version: int = PROTOCOL_VERSION
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"version", "device_id", "certificate", "ca_chain", "confirm_by"})

    def __post_init__(self) -> None:
        _check(self.version == PROTOCOL_VERSION, "version")
        _check(isinstance(self.device_id, str) and bool(DEVICE_ID_RE.fullmatch(self.device_id)),
               "device_id")
        _check(_is_bytes(self.certificate, 1, MAX_CERTIFICATE_BYTES), "certificate")
        _check(isinstance(self.ca_chain, tuple) and 1 <= len(self.ca_chain) <= 4  # noqa: PLR2004
               and all(_is_bytes(c, 1, MAX_CERTIFICATE_BYTES) for c in self.ca_chain),
               "ca_chain")
        w.check_time(self.confirm_by, "confirm_by")

    @classmethod
    def from_wire(cls, data: bytes) -> CompleteResponse:
        """Parse untrusted bytes; only ``InputError(malformed_request)`` escapes."""
        obj = w.parse_object(data, max_bytes=MAX_RESPONSE_BYTES, keys=cls.FIELDS,
                             what="rotation complete response")
        _version(obj)
        chain = w.get_list(obj, "ca_chain", min_len=1, max_len=4)
        return cls(device_id=_device(obj),
                   certificate=w.b64d(obj["certificate"], "certificate", min_len=1,
                                      max_len=MAX_CERTIFICATE_BYTES),
                   ca_chain=tuple(w.b64d(c, "ca_chain entry", min_len=1,
                                         max_len=MAX_CERTIFICATE_BYTES) for c in chain),
                   confirm_by=w.parse_time(obj["confirm_by"], "confirm_by"))

    def to_wire(self) -> bytes:
        """Canonical JSON bytes."""
        return w.to_json({"version": self.version, "device_id": self.device_id,
                          "certificate": w.b64e(self.certificate),
                          "ca_chain": [w.b64e(c) for c in self.ca_chain],
                          "confirm_by": w.format_time(self.confirm_by)})


@dataclass(frozen=True, slots=True)
class ConfirmRequest:
    """Device → server: proof of use of the new key."""

    session_id: bytes
    device_id: str
    server_nonce: bytes
    signature: bytes
    version: int = PROTOCOL_VERSION
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"version", "session_id", "device_id", "server_nonce", "signature"})

    def __post_init__(self) -> None:
        _check(self.version == PROTOCOL_VERSION, "version")
        _check(_is_bytes(self.session_id, SESSION_ID_BYTES, SESSION_ID_BYTES), "session_id")
        _check(isinstance(self.device_id, str) and bool(DEVICE_ID_RE.fullmatch(self.device_id)),
               "device_id")
        _check(_is_bytes(self.server_nonce, NONCE_BYTES, NONCE_BYTES), "server_nonce")
        _check(_is_bytes(self.signature, MIN_SIGNATURE_BYTES, MAX_SIGNATURE_BYTES), "signature")

    @classmethod
    def from_wire(cls, data: bytes) -> ConfirmRequest:
        """Parse untrusted bytes; only ``InputError(malformed_request)`` escapes."""
        obj = w.parse_object(data, max_bytes=MAX_REQUEST_BYTES, keys=cls.FIELDS,
                             what="rotation confirm")
        _version(obj)
        return cls(session_id=_fixed(obj, "session_id", SESSION_ID_BYTES),
                   device_id=_device(obj),
                   server_nonce=_fixed(obj, "server_nonce", NONCE_BYTES), signature=_sig(obj))

    def to_wire(self) -> bytes:
        """Canonical JSON bytes."""
        return w.to_json({"version": self.version, "session_id": w.b64e(self.session_id),
                          "device_id": self.device_id,
                          "server_nonce": w.b64e(self.server_nonce),
                          "signature": w.b64e(self.signature)})


# --- sessions and server decisions -----------------------------------------------------------

class RotationState:
    """The states of a rotation session (strings, as stored)."""

    OPEN: Final = "open"
    COMPLETED: Final = "completed"
    CONFIRMED: Final = "confirmed"
    EXPIRED: Final = "expired"
    REFUSED: Final = "refused"


@dataclass(frozen=True, slots=True)
class RotationSession:
    """One stored rotation session (the server nonce only as its SHA-256)."""

    id: str
    device_id: str
    credential_serial: str
    nonce_sha256: str
    state: str
    source: str
    created_at: datetime
    expires_at: datetime
    consumed_at: datetime | None = None
    confirm_by: datetime | None = None
    confirmed_at: datetime | None = None
    new_credential_serial: str | None = None

    def __post_init__(self) -> None:
        if self.state not in {"open", "completed", "confirmed", "expired", "refused"}:
            raise InputError("unknown rotation session state", reason="invalid_state")
        _aware(self.created_at, self.expires_at)


@dataclass(frozen=True, slots=True)
class NewRotationSession:
    """A freshly opened session: return ``server_nonce`` once, store ``nonce_sha256``."""

    session_id: bytes
    server_nonce: bytes
    record: RotationSession


def new_rotation_session(random: Callable[[int], bytes], now: datetime, *, device_id: str,
                         credential_serial: str, source: str,
                         ttl_seconds: int = MAX_SESSION_TTL_SECONDS) -> NewRotationSession:
    """Draw a session id and a single-use nonce; times in whole seconds."""
    _aware(now)
    if isinstance(ttl_seconds, bool) or not 1 <= ttl_seconds <= MAX_SESSION_TTL_SECONDS:
        raise ValueError("a rotation session lives 1..60 seconds")
    sid, nonce = random(SESSION_ID_BYTES), random(NONCE_BYTES)
    if len(sid) != SESSION_ID_BYTES or len(nonce) != NONCE_BYTES:
        raise RuntimeError("the random source returned the wrong number of bytes")
    created = now.replace(microsecond=0)
    record = RotationSession(id=sid.hex(), device_id=device_id,
                             credential_serial=credential_serial,
                             nonce_sha256=nonce_sha256(nonce), state=RotationState.OPEN,
                             source=source, created_at=created,
                             expires_at=created + timedelta(seconds=ttl_seconds))
    return NewRotationSession(session_id=sid, server_nonce=nonce, record=record)


def check_begin(req: BeginRequest, *, certificate: x509.Certificate) -> None:
    """The current credential's key signed the begin transcript (``signature_invalid``)."""
    _verify(certificate, req.signature, req.transcript(), "current")


def _same_nonce(server_nonce: bytes, stored_sha256: str) -> bool:
    return hmac.compare_digest(nonce_sha256(server_nonce).encode(), stored_sha256.encode())


def precheck_complete(req: CompleteRequest, *, session: RotationSession | None,
                      now: datetime) -> RotationSession:
    """Session checks before the nonce is spent: unknown, expired, replayed."""
    _aware(now)
    if session is None or session.id != req.session_id.hex() \
            or session.device_id != req.device_id \
            or session.credential_serial != req.credential_serial \
            or not _same_nonce(req.server_nonce, session.nonce_sha256):
        raise refuse(NONCE_UNKNOWN, "no rotation session with this id, nonce and credential")
    if session.state == RotationState.EXPIRED or now >= session.expires_at:
        raise refuse(NONCE_EXPIRED, "the server nonce has expired")
    if session.state != RotationState.OPEN:
        raise refuse(NONCE_REPLAYED, f"the rotation session is already {session.state}")
    return session


def check_complete(req: CompleteRequest, *, session: RotationSession | None, now: datetime,
                   consumed_ok: bool, current_certificate: x509.Certificate,
                   known_key: Callable[[str], bool]) -> ec.EllipticCurvePublicKey:
    """Decide a complete; return the CSR's key to certify.

    Order: :func:`precheck_complete`; ``nonce_replayed`` if the atomic consume lost;
    ``signature_invalid`` (current key over :func:`rotation_transcript`); ``csr_invalid``
    (malformed, bad proof of possession, not P-256, or the current key again);
    ``clone_suspected`` (the CSR key was ever seen). The current credential's liveness is
    :func:`check_current_credential`'s job, run by the service before this.
    """
    precheck_complete(req, session=session, now=now)
    if not consumed_ok:
        raise refuse(NONCE_REPLAYED, "the server nonce was already used")
    _verify(current_certificate, req.signature, req.transcript(), "current")
    try:
        key = pki.check_csr(req.csr)
    except InputError as exc:
        raise refuse(CSR_INVALID, exc.message) from exc
    spki = pki.spki_sha256(key)
    if hmac.compare_digest(spki.encode(),
                           pki.spki_sha256(current_certificate.public_key()).encode()):
        raise refuse(CSR_INVALID, "the CSR key is the current key; a new key is required")
    if known_key(spki):
        raise refuse(CLONE_SUSPECTED, "the CSR key was seen before")
    return key


def check_confirm(req: ConfirmRequest, *, session: RotationSession | None, now: datetime,
                  confirmed_ok: bool, new_certificate: x509.Certificate | None) -> None:
    """Decide a confirm: unknown, replayed, expired, lost race, then the new key's signature."""
    _aware(now)
    if session is None or session.id != req.session_id.hex() \
            or session.device_id != req.device_id \
            or not _same_nonce(req.server_nonce, session.nonce_sha256):
        raise refuse(NONCE_UNKNOWN, "no rotation session with this id and nonce")
    if session.state == RotationState.CONFIRMED:
        raise refuse(NONCE_REPLAYED, "the rotation is already confirmed")
    if session.state == RotationState.EXPIRED or (
            session.state == RotationState.COMPLETED
            and (session.confirm_by is None or now > session.confirm_by)):
        raise refuse(NONCE_EXPIRED, "the confirmation deadline has passed")
    if session.state != RotationState.COMPLETED or new_certificate is None:
        raise refuse(NONCE_UNKNOWN, f"the rotation session is {session.state}, not completed")
    if not confirmed_ok:
        raise refuse(NONCE_REPLAYED, "the rotation was confirmed concurrently")
    transcript = confirm_transcript(
        session_id=req.session_id, server_nonce=req.server_nonce,
        certificate_sha256=_sha256(new_certificate.public_bytes(Encoding.DER)))
    _verify(new_certificate, req.signature, transcript, "new")
