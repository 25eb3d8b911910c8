"""Vouchers: a manufacturer-signed statement that a device belongs to an owner (DESIGN.md §2, §5-6).

A voucher names the device twice — by ``manufacturer`` + ``serial`` **and** by the SHA-256 of its
factory public key (SPKI) — with its vendor/product ids, and names the owner twice — by slug and by
the SHA-256 of the SPKI of the owner's trust-domain root CA, which the device pins to refuse a
rogue server. Importing a valid voucher is what makes a device *expected*.

Wire form (at most :data:`MAX_VOUCHER_BYTES`), a canonical JSON object::

    {"payload": b64url(payload), "signature": b64url(DER ECDSA-SHA256 over payload),
     "signer": b64url(DER voucher-signer certificate)}

where ``payload`` is the canonical JSON of the claims (:func:`encode_claims`; times are
ISO-8601 UTC with a ``Z`` and whole seconds) and base64url carries no padding. The decoder accepts
only the canonical form of both the envelope and the payload, so a voucher has one encoding.

This module:

* builds wire bytes (:func:`sign_voucher`) with any :class:`~iotrust.ports.Signer` (file, HSM);
* is the one parse boundary for voucher bytes (:func:`decode_voucher`): every failure there is
  :class:`~iotrust.errors.InputError` ``voucher_malformed``;
* verifies (:func:`verify_voucher`): the signer certificate is issued directly by one of the
  given manufacturer roots, is valid at the given time, is an end-entity certificate allowed to
  sign (``digitalSignature``) *vouchers* (extended key usage :data:`OID_VOUCHER_SIGNING`, so a
  device's factory certificate cannot vouch) with a P-256 key, the signature verifies, the
  voucher is not expired and names the expected owner. Verification returns the claims or raises
  :class:`~iotrust.errors.TrustError` (``voucher_invalid`` / ``voucher_wrong_owner``);
* compares a voucher with a device (:func:`check_voucher_matches`, ``voucher_mismatch``) and with
  another voucher for the same device (:func:`vouchers_diverge`).

It does not decide *which* roots belong to the claimed manufacturer, whether that manufacturer may
vouch for these vendor/product ids, or whether the manufacturer is revoked: the caller picks the
anchors and checks ``claims.manufacturer``. It does no I/O and reads no clock.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from iotrust.core.canonical import canonical_json, parse_json_object
from iotrust.core.ids import check_serial, check_slug
from iotrust.errors import InputError, TrustError
from iotrust.ports import Signer

#: The only claims version this module reads and writes.
VOUCHER_VERSION: Final = 1
#: Upper bound on voucher wire bytes.
MAX_VOUCHER_BYTES: Final = 16 * 1024
#: Extended key usage a voucher-signing certificate must carry (the same OID as
#: ``iotrust.core.pki.OID_VOUCHER_SIGNING``). Without it, any end-entity certificate of the
#: manufacturer — a device's factory certificate included — could vouch for devices.
OID_VOUCHER_SIGNING: Final = x509.ObjectIdentifier("2.25.16456982409768010059852343152476099021.2")
#: How far in the future a voucher's ``created_at`` may be (manufacturer clock skew).
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)

_SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")
_MODEL_ID: Final = re.compile(r"^[0-9A-Za-z_-]{1,16}$")
_WIRE_TIME: Final = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
_B64URL: Final = re.compile(r"^[A-Za-z0-9_-]*$")
_ENVELOPE_KEYS: Final = frozenset({"payload", "signature", "signer"})
_CLAIM_KEYS: Final = frozenset(
    {
        "version",
        "manufacturer",
        "serial",
        "vendor_id",
        "product_id",
        "factory_spki_sha256",
        "owner",
        "owner_spki_sha256",
        "created_at",
        "expires_at",
    }
)


def _check_sha256_hex(value: object, what: str) -> str:
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise InputError(f"{what} must be 64 lowercase hex characters", reason=f"invalid_{what}")
    return value


def _check_model_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not _MODEL_ID.fullmatch(value):
        raise InputError(
            f"{what} must be 1-16 characters of [0-9A-Za-z_-]", reason=f"invalid_{what}"
        )
    return value


def _utc_seconds(value: object, what: str) -> datetime:
    """Normalise an aware datetime to UTC with whole seconds (the wire precision)."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise TypeError(f"{what} must be a timezone-aware datetime")
    return value.astimezone(UTC).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class VoucherClaims:
    """What a voucher says. Invalid claims cannot be constructed (:class:`InputError`).

    ``created_at`` and ``expires_at`` are normalised to UTC and truncated to whole seconds, so
    claims survive a round trip through the wire form unchanged.
    """

    manufacturer: str
    serial: str
    vendor_id: str
    product_id: str
    factory_spki_sha256: str
    owner: str
    owner_spki_sha256: str
    created_at: datetime
    expires_at: datetime | None = None
    version: int = VOUCHER_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or self.version != VOUCHER_VERSION:
            raise InputError(
                f"unsupported voucher version {self.version!r:.20}",
                reason="unsupported_voucher_version",
            )
        check_slug(self.manufacturer, "manufacturer")
        check_serial(self.serial)
        _check_model_id(self.vendor_id, "vendor_id")
        _check_model_id(self.product_id, "product_id")
        _check_sha256_hex(self.factory_spki_sha256, "factory_spki_sha256")
        check_slug(self.owner, "owner")
        _check_sha256_hex(self.owner_spki_sha256, "owner_spki_sha256")
        object.__setattr__(self, "created_at", _utc_seconds(self.created_at, "created_at"))
        if self.expires_at is not None:
            expires_at = _utc_seconds(self.expires_at, "expires_at")
            if expires_at <= self.created_at:
                raise InputError(
                    "a voucher must expire after it was created", reason="invalid_expires_at"
                )
            object.__setattr__(self, "expires_at", expires_at)


def _wire_time(value: datetime) -> str:
    v = value.astimezone(UTC)
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}Z"


def encode_claims(claims: VoucherClaims) -> bytes:
    """The payload bytes: canonical JSON of ``claims``."""
    return canonical_json(
        {
            "version": claims.version,
            "manufacturer": claims.manufacturer,
            "serial": claims.serial,
            "vendor_id": claims.vendor_id,
            "product_id": claims.product_id,
            "factory_spki_sha256": claims.factory_spki_sha256,
            "owner": claims.owner,
            "owner_spki_sha256": claims.owner_spki_sha256,
            "created_at": _wire_time(claims.created_at),
            "expires_at": None if claims.expires_at is None else _wire_time(claims.expires_at),
        }
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class SignedVoucher:
    """A decoded, *not yet verified* voucher: use :func:`verify_voucher` before trusting it."""

    claims: VoucherClaims
    payload: bytes
    signature: bytes
    signer: x509.Certificate
    raw: bytes

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of the exact wire bytes: what the onboarding transcript binds."""
        return hashlib.sha256(self.raw).hexdigest()


def spki_sha256_of(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 (hex) of a public key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def sign_voucher(claims: VoucherClaims, signer: Signer, signer_cert_der: bytes) -> bytes:
    """Sign ``claims`` and return the voucher's wire bytes.

    Raises:
        InputError: ``invalid_certificate`` (``signer_cert_der`` is not a certificate),
            ``voucher_signer_mismatch`` (the certificate is not for ``signer``'s key) or
            ``too_large`` (the voucher would exceed :data:`MAX_VOUCHER_BYTES`).
    """
    try:
        cert = x509.load_der_x509_certificate(signer_cert_der)
        cert_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(
            "the voucher signer certificate is not a DER certificate", reason="invalid_certificate"
        ) from None
    if not isinstance(cert_key, ec.EllipticCurvePublicKey) or spki_sha256_of(
        cert_key
    ) != spki_sha256_of(signer.public_key):
        raise InputError(
            "the voucher signer certificate is not for the signing key",
            reason="voucher_signer_mismatch",
        )
    payload = encode_claims(claims)
    signature = signer.sign(payload)
    wire = canonical_json(
        {
            "payload": _b64url(payload),
            "signature": _b64url(signature),
            "signer": _b64url(signer_cert_der),
        }
    )
    if len(wire) > MAX_VOUCHER_BYTES:
        raise InputError(f"voucher larger than {MAX_VOUCHER_BYTES} bytes", reason="too_large")
    return wire


class _MalformedError(ValueError):
    """A voucher-specific decoding failure (turned into ``voucher_malformed``)."""


def _field_b64url(envelope: dict[str, object], key: str) -> bytes:
    value = envelope[key]
    if not isinstance(value, str) or not _B64URL.fullmatch(value) or len(value) % 4 == 1:
        raise _MalformedError(f"{key} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _MalformedError(f"{key} is not unpadded base64url") from None
    if _b64url(data) != value:  # non-zero trailing bits: a second spelling of the same bytes
        raise _MalformedError(f"{key} is not canonical base64url")
    if not data:
        raise _MalformedError(f"{key} is empty")
    return data


def _parse_wire_time(value: object, what: str) -> datetime:
    if not isinstance(value, str) or not _WIRE_TIME.fullmatch(value):
        raise _MalformedError(f"{what} must be YYYY-MM-DDTHH:MM:SSZ")
    try:
        return datetime.fromisoformat(value[:-1]).replace(tzinfo=UTC)
    except ValueError:
        raise _MalformedError(f"{what} is not a valid date and time") from None


def _text(body: dict[str, object], key: str) -> str:
    value = body[key]
    if not isinstance(value, str):
        raise _MalformedError(f"{key} must be a string")
    return value


def _decode_claims(payload: bytes) -> VoucherClaims:
    body = parse_json_object(payload, max_bytes=MAX_VOUCHER_BYTES, max_depth=1)
    if set(body) != _CLAIM_KEYS:
        missing = sorted(_CLAIM_KEYS - set(body))
        extra = len(set(body) - _CLAIM_KEYS)
        raise _MalformedError(f"payload fields wrong (missing {missing}, {extra} unknown)")
    version = body["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _MalformedError("version must be an integer")
    expires_raw = body["expires_at"]
    claims = VoucherClaims(
        version=version,
        manufacturer=_text(body, "manufacturer"),
        serial=_text(body, "serial"),
        vendor_id=_text(body, "vendor_id"),
        product_id=_text(body, "product_id"),
        factory_spki_sha256=_text(body, "factory_spki_sha256"),
        owner=_text(body, "owner"),
        owner_spki_sha256=_text(body, "owner_spki_sha256"),
        created_at=_parse_wire_time(body["created_at"], "created_at"),
        expires_at=None if expires_raw is None else _parse_wire_time(expires_raw, "expires_at"),
    )
    if encode_claims(claims) != payload:
        raise _MalformedError("payload is not canonical JSON")
    return claims


@functools.lru_cache(maxsize=64)
def _load_signer(der: bytes) -> x509.Certificate:
    """The signer certificate of a voucher, parsed once per DER (one signs many vouchers)."""
    return x509.load_der_x509_certificate(der)


def decode_voucher(data: bytes) -> SignedVoucher:
    """Parse voucher wire bytes. Nothing is verified here except the form.

    Raises:
        InputError: ``voucher_malformed`` for anything that is not a well-formed voucher
            (size, JSON, fields, base64url, claims, certificate or signature encoding).
    """
    if not isinstance(data, bytes):
        raise TypeError("decode_voucher needs bytes")
    raw = data
    try:
        envelope = parse_json_object(raw, max_bytes=MAX_VOUCHER_BYTES, max_depth=1)
        if set(envelope) != _ENVELOPE_KEYS:
            raise _MalformedError("a voucher has exactly: payload, signature, signer")
        if canonical_json(envelope) != raw:
            raise _MalformedError("voucher is not canonical JSON")
        payload = _field_b64url(envelope, "payload")
        signature = _field_b64url(envelope, "signature")
        signer_der = _field_b64url(envelope, "signer")
        decode_dss_signature(signature)  # a DER Ecdsa-Sig-Value, or ValueError
        claims = _decode_claims(payload)
        signer = _load_signer(signer_der)
    except InputError as exc:
        raise InputError(f"malformed voucher: {exc.message}", reason="voucher_malformed") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        # The one broad boundary of this wire format: the JSON, base64 and DER decoders only
        # raise these; the messages come from this module or describe structure, not secrets.
        what = str(exc) if isinstance(exc, _MalformedError) else "bad signature or certificate"
        raise InputError(f"malformed voucher: {what}", reason="voucher_malformed") from None
    return SignedVoucher(
        claims=claims, payload=payload, signature=signature, signer=signer, raw=raw
    )


def _invalid(message: str) -> TrustError:
    return TrustError(message, reason="voucher_invalid")


def _within(cert: x509.Certificate, at: datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


@functools.lru_cache(maxsize=256)
def _signed_by(signer: x509.Certificate, anchor: x509.Certificate) -> bool:
    """Whether ``anchor`` directly issued ``signer`` (name and signature).

    Remembered in a bounded LRU: both certificates are immutable and compare and hash by their
    full DER, so an entry stands for exactly the verification it replaces. A manufacturer signs
    many vouchers with one signer certificate, so this is met again at every onboarding; the
    validity windows, extensions and the voucher's own signature are checked every time.
    """
    try:
        signer.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _issuing_anchor(
    signer: x509.Certificate, anchors: tuple[x509.Certificate, ...]
) -> x509.Certificate:
    for anchor in anchors:
        if _signed_by(signer, anchor):
            return anchor
    raise _invalid("the voucher signer certificate is not issued by a trusted manufacturer root")


@functools.lru_cache(maxsize=256)  # a pure check of an immutable certificate; raising is not cached
def _check_signer_extensions(signer: x509.Certificate) -> None:
    try:
        extensions = signer.extensions
    except ValueError:
        raise _invalid("the voucher signer certificate has malformed extensions") from None
    try:
        key_usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise _invalid("the voucher signer certificate has no key usage extension") from None
    if not key_usage.digital_signature:
        raise _invalid("the voucher signer certificate may not make digital signatures")
    try:
        purposes = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        purposes = x509.ExtendedKeyUsage([])
    if OID_VOUCHER_SIGNING not in purposes:
        raise _invalid(
            "the voucher signer certificate is not for voucher signing (extended key usage)"
        )
    try:
        basic = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return
    if basic.ca:
        raise _invalid("the voucher signer certificate is a CA; vouchers need an end-entity signer")


def _check_signature(v: SignedVoucher, anchors: tuple[x509.Certificate, ...], at: datetime) -> None:
    """The signer is a valid end-entity P-256 certificate from ``anchors`` and signed ``v``."""
    signer = v.signer
    anchor = _issuing_anchor(signer, anchors)
    if not _within(anchor, at):
        raise _invalid("the manufacturer root of the voucher signer is not valid at this time")
    if not _within(signer, at):
        raise _invalid("the voucher signer certificate is not valid at this time")
    _check_signer_extensions(signer)
    try:
        key = signer.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise _invalid("the voucher signer key cannot be read") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _invalid("the voucher signer key is not an ECDSA P-256 key")
    try:
        key.verify(v.signature, v.payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _invalid("the voucher signature does not verify") from None


def verify_voucher(
    v: SignedVoucher,
    *,
    anchors: tuple[x509.Certificate, ...] | list[x509.Certificate],
    expected_owner: str | None,
    expected_owner_spki: str | None,
    at: datetime,
) -> VoucherClaims:
    """Verify a decoded voucher and return its claims; raise if anything is wrong.

    Checks, in order: the signer certificate is issued directly by one of ``anchors`` (an empty
    list fails closed), the signer and that root are valid at ``at``, the signer is an
    end-entity certificate with ``digitalSignature``, the voucher-signing extended key usage and
    a P-256 key, the signature over the
    payload verifies, the voucher was not created in the future (beyond
    :data:`MAX_CLOCK_SKEW`) and has not expired, then the owner (slug and root SPKI hash) when
    expected values are given. Whether ``anchors`` are the roots of ``claims.manufacturer`` is
    the caller's check.

    Raises:
        TrustError: ``voucher_invalid`` or ``voucher_wrong_owner``.
        TypeError: ``at`` is not timezone-aware (a programming error).
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise TypeError("verify_voucher needs a timezone-aware time")
    _check_signature(v, tuple(anchors), at)
    claims = v.claims
    if claims.created_at > at + MAX_CLOCK_SKEW:
        raise _invalid("the voucher was created in the future")
    if claims.expires_at is not None and at >= claims.expires_at:
        raise _invalid("the voucher has expired")
    if expected_owner is not None and claims.owner != expected_owner:
        raise TrustError("the voucher names another owner", reason="voucher_wrong_owner")
    if expected_owner_spki is not None and not hmac.compare_digest(
        claims.owner_spki_sha256.encode("ascii"), expected_owner_spki.encode("utf-8")
    ):
        raise TrustError("the voucher pins another owner root key", reason="voucher_wrong_owner")
    return claims


def check_voucher_matches(
    claims: VoucherClaims,
    *,
    serial: str,
    factory_spki_sha256: str,
    vendor_id: str,
    product_id: str,
) -> None:
    """Check that a voucher names this device; return nothing or raise.

    Raises:
        TrustError: ``voucher_mismatch``, naming the first field that differs.
    """
    for field, ours in (
        ("serial", serial),
        ("factory_spki_sha256", factory_spki_sha256),
        ("vendor_id", vendor_id),
        ("product_id", product_id),
    ):
        theirs: str = getattr(claims, field)
        if not hmac.compare_digest(theirs.encode("utf-8"), ours.encode("utf-8")):
            raise TrustError(
                f"the voucher does not match the device: {field} differs",
                reason="voucher_mismatch",
            )


def vouchers_diverge(a: VoucherClaims, b: VoucherClaims) -> bool:
    """True when two vouchers name the same device (manufacturer + serial) but disagree.

    Disagreement is a different factory key, vendor id, product id, owner or owner root key —
    a sign of a cloned identity, a manufacturer error or a double sale. Times and versions may
    differ (a renewed voucher does not diverge).
    """
    if (a.manufacturer, a.serial) != (b.manufacturer, b.serial):
        return False
    return (a.factory_spki_sha256, a.vendor_id, a.product_id, a.owner, a.owner_spki_sha256) != (
        b.factory_spki_sha256,
        b.vendor_id,
        b.product_id,
        b.owner,
        b.owner_spki_sha256,
    )
