"""Registry records: the immutable values the registry stores besides :class:`Device`.

Each record checks its own rules in ``__post_init__`` so an invalid one cannot exist (slugs, hex
digests, timezone-aware timestamps, known states). These are plain values: they say nothing about
how they are stored (that is :mod:`iotrust.adapters.sql`), and this module does no I/O, reads no
clock and computes no hashes (the event hash chain lives in :mod:`iotrust.core.events`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeVar

from iotrust.core.ids import check_device_id, check_serial, check_slug
from iotrust.core.lifecycle import CredentialState
from iotrust.errors import InputError

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"^[0-9a-f]+$")
_VENDOR_PRODUCT = re.compile(r"^[A-Za-z0-9._-]{1,32}:[A-Za-z0-9._-]{1,32}$")
#: A product id as vouchers and factory certificates carry it (``check_vendor_product``).
_PRODUCT_ID = re.compile(r"^[0-9A-Za-z_-]{1,16}$")
_RECORD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_MAX_SERIAL_HEX = 40  # RFC 5280: at most 20 octets


class CaRole(enum.StrEnum):
    """What a certificate authority of the trust domain is for."""

    ROOT = "root"
    ISSUING = "issuing"


class CaState(enum.StrEnum):
    """The life of a CA: ``retiring`` still signs CRLs but issues no new certificates."""

    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"


class SessionState(enum.StrEnum):
    """Where an onboarding session is (DESIGN.md §6)."""

    OPEN = "open"
    ATTESTED = "attested"
    CONFIRMED = "confirmed"
    EXPIRED = "expired"
    REFUSED = "refused"


class TokenRole(enum.StrEnum):
    """What an operator token may do: ``auditor`` is read-only."""

    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"


class KeyKind(enum.StrEnum):
    """Where a public key was first seen (for "seen before" and clone detection)."""

    FACTORY = "factory"
    CSR = "csr"
    CREDENTIAL = "credential"


def check_sha256_hex(value: str, what: str = "hash") -> str:
    """Return ``value`` if it is 64 lowercase hex characters (a SHA-256 digest)."""
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise InputError(f"{what} must be 64 lowercase hex characters", reason="invalid_hash")
    return value


def check_serial_hex(value: str) -> str:
    """Return ``value`` if it is an X.509 serial number as lowercase hex (no leading zeros)."""
    if (not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) > _MAX_SERIAL_HEX
            or (len(value) > 1 and value.startswith("0"))):
        raise InputError("certificate serial must be lowercase hex without leading zeros",
                         reason="invalid_certificate_serial")
    return value


def check_record_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is an opaque record identifier (CA, session, token ids)."""
    if not isinstance(value, str) or not _RECORD_ID.fullmatch(value):
        raise InputError(f"not a valid {what}: {value!r:.80}", reason=f"invalid_{what}")
    return value


_E = TypeVar("_E", bound=enum.StrEnum)


def as_enum(cls: type[_E], value: str, what: str) -> _E:
    """``cls(value)``, or :class:`InputError` (``invalid_<what>``) naming the allowed values."""
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise InputError(f"{what} must be one of {allowed}", reason=f"invalid_{what}") from None


def _aware(*values: datetime | None) -> None:
    for value in values:
        if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
            raise TypeError("registry timestamps must be timezone-aware datetimes")


def _nonempty(value: str, what: str, limit: int) -> None:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InputError(f"{what} must be 1..{limit} characters", reason=f"invalid_{what}")


@dataclass(frozen=True, slots=True)
class TrustDomain:
    """The operator's trust domain (one per registry)."""

    name: str
    owner: str
    created_at: datetime
    server_id: str
    root_ca_id: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_slug(self.name, "domain")
        check_slug(self.owner, "owner")
        check_record_id(self.server_id, "server_id")
        if self.root_ca_id is not None:
            check_record_id(self.root_ca_id, "ca_id")
        _aware(self.created_at)
        if not isinstance(self.settings, Mapping):
            raise TypeError("settings must be a mapping")
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA of the trust domain; its private key stays behind ``key_ref``."""

    id: str
    role: str  # a CaRole (normalised to it)
    name: str
    certificate_pem: str
    key_ref: str
    state: str  # a CaState (normalised to it)
    not_after: datetime
    created_at: datetime
    crl_number: int = 0

    def __post_init__(self) -> None:
        check_record_id(self.id, "ca_id")
        object.__setattr__(self, "role", as_enum(CaRole, self.role, "ca_role"))
        object.__setattr__(self, "state", as_enum(CaState, self.state, "ca_state"))
        _nonempty(self.name, "ca_name", 200)
        if "-----BEGIN CERTIFICATE-----" not in self.certificate_pem:
            raise InputError("CA certificate must be PEM", reason="invalid_certificate")
        _nonempty(self.key_ref, "key_ref", 1000)
        if self.crl_number < 0:
            raise InputError("CRL number cannot be negative", reason="invalid_crl_number")
        _aware(self.not_after, self.created_at)


@dataclass(frozen=True, slots=True)
class Manufacturer:
    """A maker whose factory CA chain is trusted for certain ``vendor:product`` pairs."""

    name: str
    display_name: str
    anchors_pem: str
    allowed: Sequence[str]  # stored as a tuple
    created_at: datetime
    revoked: bool = False
    unsafe_manufacturer_trust: bool = False

    def __post_init__(self) -> None:
        check_slug(self.name, "manufacturer")
        _nonempty(self.display_name, "display_name", 200)
        if "-----BEGIN CERTIFICATE-----" not in self.anchors_pem:
            raise InputError("manufacturer trust anchors must be PEM certificates",
                             reason="invalid_anchors")
        if isinstance(self.allowed, str):
            raise TypeError("allowed is a sequence of vendor:product strings")
        allowed = tuple(self.allowed)
        for pair in allowed:
            if not isinstance(pair, str) or not _VENDOR_PRODUCT.fullmatch(pair):
                raise InputError(f"not a vendor:product pair: {pair!r:.80}",
                                 reason="invalid_vendor_product")
        object.__setattr__(self, "allowed", allowed)
        _aware(self.created_at)


@dataclass(frozen=True, slots=True)
class DeviceModel:
    """A device model of one manufacturer and what its hardware allows.

    ``product_id`` is the product id the manufacturer's vouchers and factory certificates carry
    for this model (``None`` for a model registered before models were bound to a product); a
    device of that manufacturer and product gets the model when it becomes known.
    """

    name: str
    manufacturer: str
    credential_lifetime_s: int
    created_at: datetime
    hardware_profile: str | None = None
    product_id: str | None = None

    def __post_init__(self) -> None:
        check_slug(self.name, "model")
        check_slug(self.manufacturer, "manufacturer")
        if self.product_id is not None and (not isinstance(self.product_id, str)
                                            or not _PRODUCT_ID.fullmatch(self.product_id)):
            raise InputError("product_id must be 1-16 characters of [0-9A-Za-z_-]",
                             reason="invalid_product_id")
        if isinstance(self.credential_lifetime_s, bool) or self.credential_lifetime_s <= 0:
            raise InputError("credential lifetime must be a positive number of seconds",
                             reason="invalid_lifetime")
        _aware(self.created_at)


@dataclass(frozen=True, slots=True)
class Voucher:
    """An imported manufacturer voucher; ``raw`` is kept verbatim for re-verification."""

    id: int
    device_id: str
    sha256: str
    raw: bytes
    owner: str
    imported_at: datetime
    superseded: bool = False

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        check_sha256_hex(self.sha256, "voucher hash")
        check_slug(self.owner, "owner")
        if not isinstance(self.raw, bytes) or not self.raw:
            raise InputError("voucher must be non-empty bytes", reason="voucher_invalid")
        _aware(self.imported_at)


@dataclass(frozen=True, slots=True)
class Credential:
    """An operational certificate (of a device, or of a service when ``device_id`` is None)."""

    serial_number: str
    device_id: str | None
    subject: str
    spki_sha256: str
    issuer_ca_id: str
    not_before: datetime
    not_after: datetime
    state: CredentialState
    certificate_pem: str
    created_at: datetime
    revoked_at: datetime | None = None
    revocation_reason: str | None = None

    def __post_init__(self) -> None:
        check_serial_hex(self.serial_number)
        if self.device_id is not None:
            check_device_id(self.device_id)
        _nonempty(self.subject, "subject", 200)
        check_sha256_hex(self.spki_sha256, "key hash")
        check_record_id(self.issuer_ca_id, "ca_id")
        object.__setattr__(self, "state", as_enum(CredentialState, self.state, "credential_state"))
        if "-----BEGIN CERTIFICATE-----" not in self.certificate_pem:
            raise InputError("credential certificate must be PEM", reason="invalid_certificate")
        _aware(self.not_before, self.not_after, self.created_at, self.revoked_at)
        if self.not_after <= self.not_before:
            raise InputError("credential validity is empty", reason="invalid_validity")
        if (self.state is CredentialState.REVOKED) != (self.revoked_at is not None):
            raise InputError("a revocation time is required exactly when revoked",
                             reason="invalid_state")


@dataclass(frozen=True, slots=True)
class OnboardingSession:
    """One onboarding attempt; the server nonce is stored only as its SHA-256."""

    id: str
    device_id: str
    serial: str
    nonce_sha256: str
    device_nonce: str
    expires_at: datetime
    state: str  # a SessionState (normalised to it)
    source: str
    created_at: datetime
    consumed_at: datetime | None = None
    credential_serial: str | None = None

    def __post_init__(self) -> None:
        check_record_id(self.id, "session_id")
        check_device_id(self.device_id)
        check_serial(self.serial)
        check_sha256_hex(self.nonce_sha256, "nonce hash")
        if not _HEX.fullmatch(self.device_nonce) or len(self.device_nonce) > 128:  # noqa: PLR2004
            raise InputError("device nonce must be lowercase hex, at most 64 bytes",
                             reason="invalid_nonce")
        object.__setattr__(self, "state", as_enum(SessionState, self.state, "session_state"))
        _nonempty(self.source, "source", 200)
        if self.credential_serial is not None:
            check_serial_hex(self.credential_serial)
        _aware(self.expires_at, self.created_at, self.consumed_at)


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An operator token; only the SHA-256 of the secret is ever stored."""

    id: str
    name: str
    role: str  # a TokenRole (normalised to it)
    token_sha256: str
    created_at: datetime
    revoked_at: datetime | None = None

    def __post_init__(self) -> None:
        check_record_id(self.id, "token_id")
        check_slug(self.name, "token_name")
        object.__setattr__(self, "role", as_enum(TokenRole, self.role, "role"))
        check_sha256_hex(self.token_sha256, "token hash")
        _aware(self.created_at, self.revoked_at)

    @property
    def active(self) -> bool:
        """Whether the token may still authenticate."""
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class EventHead:
    """The last record of the event log: its sequence number and hash."""

    seq: int
    hash: str

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or self.seq < 1:
            raise InputError("event sequence numbers start at 1", reason="invalid_event")


@dataclass(frozen=True, slots=True)
class EventRow:
    """One stored event-log record; ``data`` is canonical JSON text, hashed by the caller."""

    seq: int
    at: datetime
    kind: str
    actor: str
    device_id: str | None
    reason: str | None
    data: str
    prev_hash: str
    hash: str

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or self.seq < 1:
            raise InputError("event sequence numbers start at 1", reason="invalid_event")
        _aware(self.at)
        _nonempty(self.kind, "event_kind", 100)
        _nonempty(self.actor, "event_actor", 200)
        _nonempty(self.hash, "event_hash", 200)
        if not isinstance(self.prev_hash, str) or len(self.prev_hash) > 200:  # noqa: PLR2004
            raise InputError("previous hash must be a short string", reason="invalid_event")

    @property
    def head(self) -> EventHead:
        """This record as the new head of the log."""
        return EventHead(self.seq, self.hash)
