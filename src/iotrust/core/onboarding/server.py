"""Server-side onboarding decisions: pure functions over a message and the facts the service loaded.

Each ``check_*`` function takes one parsed message plus everything the service looked up (device,
manufacturer trust, voucher, session, results of its atomic updates), runs its checks in a fixed,
documented order and either returns a decision value or raises
:class:`~iotrust.errors.TrustError` with one reason code from :mod:`.reasons`. The first failing
check decides the reason, so the same input always yields the same reason.

This module does not read the clock, draw randomness, look anything up, store anything, issue
certificates or rate-limit: time, randomness and stored facts are arguments, and the service
persists the outcome and records the event (accepted or refused).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from iotrust.core import pki
from iotrust.core.lifecycle import Device, DeviceState
from iotrust.core.onboarding import reasons as r
from iotrust.core.onboarding.messages import (
    NONCE_BYTES,
    SESSION_ID_BYTES,
    AttestRequest,
    ConfirmRequest,
    HelloRequest,
    HelloResponse,
)
from iotrust.core.onboarding.reasons import malformed, refuse
from iotrust.core.onboarding.transcript import (
    attest_transcript,
    confirm_transcript,
    sha256,
    verify_transcript_signature,
)
from iotrust.core.records import Manufacturer, OnboardingSession, SessionState
from iotrust.core.vouchers import (
    SignedVoucher,
    VoucherClaims,
    check_voucher_matches,
    verify_voucher,
)
from iotrust.errors import InputError, TrustError

#: Upper bound on a session's (and so a server nonce's) lifetime (DESIGN.md §6).
MAX_SESSION_TTL_SECONDS: Final = 60


@dataclass(frozen=True, slots=True)
class ManufacturerTrust:
    """What the server trusts about one manufacturer, parsed once by the service.

    ``allowed`` holds ``vendor:product`` pairs. ``unsafe_manufacturer_trust`` admits any genuine
    device of an allowed model without a voucher (DESIGN.md §5): weaker, explicit, audited.
    """

    name: str
    anchors: tuple[x509.Certificate, ...]
    allowed: frozenset[str]
    revoked: bool = False
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    require_crl: bool = False
    unsafe_manufacturer_trust: bool = False

    @classmethod
    def from_record(cls, record: Manufacturer, *,
                    crls: tuple[x509.CertificateRevocationList, ...] = (),
                    require_crl: bool = False) -> ManufacturerTrust:
        """Build from the registry record (parses the PEM anchors)."""
        return cls(name=record.name, anchors=tuple(pki.load_certificates(
                       record.anchors_pem.encode("ascii"))),
                   allowed=frozenset(record.allowed), revoked=record.revoked, crls=crls,
                   require_crl=require_crl,
                   unsafe_manufacturer_trust=record.unsafe_manufacturer_trust)


@dataclass(frozen=True, slots=True)
class HelloDecision:
    """A hello that passed every check: what the service needs to open the session.

    ``device`` is ``None`` only for an unsafe admission (no voucher, manufacturer-CA-only
    trust): the service then creates the device (``unsafe_admission=True``) before opening the
    session. ``voucher`` is the voucher's wire bytes to return (empty when there is none).
    """

    serial: str
    device: Device | None
    identity: pki.FactoryIdentity
    factory_public_key: ec.EllipticCurvePublicKey
    voucher_claims: VoucherClaims | None
    voucher: bytes
    voucher_sha256: bytes
    unsafe_admission: bool


@dataclass(frozen=True, slots=True)
class NewSession:
    """A freshly opened session. Store ``nonce_sha256``, never ``server_nonce``."""

    session_id: bytes
    server_nonce: bytes
    nonce_sha256: str
    created_at: datetime
    expires_at: datetime

    @property
    def record_id(self) -> str:
        """The registry id of this session (:func:`session_record_id`)."""
        return session_record_id(self.session_id)


@dataclass(frozen=True, slots=True)
class AttestDecision:
    """An attest that passed every check: certify ``csr_public_key`` (subject set by the CA)."""

    csr_public_key: ec.EllipticCurvePublicKey
    csr_spki_sha256: str
    transcript: bytes


@dataclass(frozen=True, slots=True)
class ConfirmDecision:
    """A confirm that passed every check: the device may become ACTIVE."""

    device_id: str
    certificate_sha256: bytes


def session_record_id(session_id: bytes) -> str:
    """The registry id of a session: its 16 id bytes as 32 lowercase hex characters."""
    if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_BYTES:
        raise ValueError("a session id is 16 bytes")
    return session_id.hex()


def nonce_sha256(server_nonce: bytes) -> str:
    """How a server nonce is stored: SHA-256, lowercase hex."""
    return hashlib.sha256(server_nonce).hexdigest()


def _aware(now: datetime) -> None:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise TypeError("onboarding decisions need a timezone-aware time")


@functools.lru_cache(maxsize=64)
def load_chain_certificate(der: bytes) -> x509.Certificate:
    """:func:`iotrust.core.pki.load_certificate` for a hello's chain, remembered per DER.

    A certificate is an immutable value of its bytes: the service's look-up and
    :func:`check_hello` parse the leaf once between them, and a manufacturer's issuing CA,
    sent by every device, is parsed once. Failures (``InputError``) are not remembered.
    """
    return pki.load_certificate(der)


@functools.lru_cache(maxsize=64)
def read_chain_identity(leaf: x509.Certificate) -> pki.FactoryIdentity:
    """:func:`iotrust.core.pki.read_factory_identity` of a hello's leaf, remembered per leaf.

    It reads, it does not verify. The service's look-up and :func:`check_hello` read the same
    leaf (one object from :func:`load_chain_certificate`) once between them. Failures
    (``InputError``) are not remembered.
    """
    return pki.read_factory_identity(leaf)


def _load_chain(req: HelloRequest) -> tuple[x509.Certificate, list[x509.Certificate]]:
    try:
        certs = [load_chain_certificate(der) for der in req.factory_chain]
    except InputError as exc:
        raise malformed("factory_chain holds something that is not a DER certificate") from exc
    return certs[0], certs[1:]


# --- hello -----------------------------------------------------------------------------------

def check_hello(
    req: HelloRequest,
    *,
    now: datetime,
    device: Device | None,
    manufacturer: ManufacturerTrust | None,
    voucher: SignedVoucher | None,
    owner: str,
    owner_spki_sha256: str,
    device_by_factory_key: Device | None,
    open_session_exists: bool,
) -> HelloDecision:
    """Decide a hello. Checks run in this order; the first failure is the reason.

    1. ``unknown_device`` — no device under this serial (unless the manufacturer is in unsafe
       manufacturer-CA-only trust).
    2. ``retired`` — the device is retired (a zombie).
    3. ``voucher_invalid`` — no voucher, no manufacturer to verify it, bad signature, expired,
       another owner (slug or root key), or issued for another manufacturer.
    4. ``chain_invalid`` if the leaf is not a factory certificate at all; then
       ``voucher_mismatch`` — voucher, device record, hello serial and factory certificate do not
       name the same serial, factory key, vendor and product.
    5. ``chain_invalid`` — the factory chain does not verify to the manufacturer's anchors at
       ``now`` (including revocation and required CRLs), names another manufacturer, or its key
       is not P-256.
    6. ``manufacturer_revoked``.
    7. ``wrong_vendor_product`` — the certificate's ``vendor:product`` is not allowed.
    8. ``clone_suspected`` — the factory key is bound to another device, the device is already
       onboarded (active or quarantined), or it already has a live session.

    Rate limiting (``rate_limited``) happens in the service before this is called. A factory
    chain that is not DER is ``malformed_request`` (:class:`~iotrust.errors.InputError`).
    """
    _aware(now)
    unsafe = manufacturer is not None and manufacturer.unsafe_manufacturer_trust
    if device is None and not unsafe:
        raise refuse(r.UNKNOWN_DEVICE, "no device is expected under this serial")
    if device is not None and device.state is DeviceState.RETIRED:
        raise refuse(r.RETIRED, "this device is retired")
    leaf, intermediates = _load_chain(req)
    claims: VoucherClaims | None = None
    if device is not None:
        claims = _check_voucher(voucher, manufacturer, owner, owner_spki_sha256, now)
        identity = _read_identity(leaf)
        _check_binding(req, device, claims, identity)
    else:
        identity = _read_identity(leaf)
        if identity.serial != req.serial:
            raise refuse(r.VOUCHER_MISMATCH, "the factory certificate names another serial")
    if manufacturer is None:
        raise refuse(r.CHAIN_INVALID, "no registered manufacturer anchors this chain")
    factory_key = _check_chain(leaf, intermediates, identity, manufacturer, now)
    if manufacturer.revoked:
        raise refuse(r.MANUFACTURER_REVOKED, f"manufacturer {manufacturer.name} is revoked")
    if f"{identity.vendor_id}:{identity.product_id}" not in manufacturer.allowed:
        raise refuse(r.WRONG_VENDOR_PRODUCT,
                     f"{identity.vendor_id}:{identity.product_id} is not allowed for "
                     f"{manufacturer.name}")
    _check_clone(device, device_by_factory_key, open_session_exists=open_session_exists)
    raw = b"" if voucher is None or device is None else voucher.raw
    return HelloDecision(serial=req.serial, device=device, identity=identity,
                         factory_public_key=factory_key, voucher_claims=claims, voucher=raw,
                         voucher_sha256=sha256(raw), unsafe_admission=device is None)


def _read_identity(leaf: x509.Certificate) -> pki.FactoryIdentity:
    try:
        return read_chain_identity(leaf)
    except InputError as exc:
        raise refuse(r.CHAIN_INVALID, "the leaf is not a factory certificate",
                     detail=exc.reason) from exc


def _check_voucher(voucher: SignedVoucher | None, manufacturer: ManufacturerTrust | None,
                   owner: str, owner_spki_sha256: str, now: datetime) -> VoucherClaims:
    if voucher is None:
        raise refuse(r.VOUCHER_INVALID, "no voucher is on file for this device")
    if manufacturer is None:
        raise refuse(r.VOUCHER_INVALID, "the device's manufacturer is not registered")
    try:
        claims = verify_voucher(voucher, anchors=manufacturer.anchors, expected_owner=owner,
                                expected_owner_spki=owner_spki_sha256, at=now)
    except TrustError as exc:
        raise refuse(r.VOUCHER_INVALID, exc.message, detail=exc.reason) from exc
    if claims.manufacturer != manufacturer.name:
        raise refuse(r.VOUCHER_INVALID, "the voucher is for another manufacturer")
    return claims


def _check_binding(req: HelloRequest, device: Device, claims: VoucherClaims,
                   identity: pki.FactoryIdentity) -> None:
    try:
        check_voucher_matches(claims, serial=req.serial, factory_spki_sha256=identity.spki_sha256,
                              vendor_id=identity.vendor_id, product_id=identity.product_id)
    except TrustError as exc:
        raise refuse(r.VOUCHER_MISMATCH, exc.message) from exc
    pairs = (("serial", device.serial, req.serial), ("serial", identity.serial, req.serial),
             ("manufacturer", device.manufacturer, claims.manufacturer),
             ("factory key", device.factory_spki_sha256, identity.spki_sha256),
             ("vendor", device.vendor_id, identity.vendor_id),
             ("product", device.product_id, identity.product_id))
    for what, expected, seen in pairs:
        if not hmac.compare_digest(expected.encode(), seen.encode()):
            raise refuse(r.VOUCHER_MISMATCH,
                         f"the device record and the factory certificate disagree on {what}")


def _check_chain(leaf: x509.Certificate, intermediates: list[x509.Certificate],
                 identity: pki.FactoryIdentity, manufacturer: ManufacturerTrust,
                 now: datetime) -> ec.EllipticCurvePublicKey:
    if identity.manufacturer != manufacturer.name:
        raise refuse(r.CHAIN_INVALID, "the factory certificate names another manufacturer")
    try:
        pki.verify_chain(leaf, intermediates, manufacturer.anchors, now,
                         crls=manufacturer.crls, require_crl=manufacturer.require_crl)
    except TrustError as exc:
        raise refuse(r.CHAIN_INVALID, exc.message, detail=exc.reason) from exc
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise refuse(r.CHAIN_INVALID, "the factory key is not an ECDSA P-256 key")
    return key


def _check_clone(device: Device | None, device_by_factory_key: Device | None, *,
                 open_session_exists: bool) -> None:
    if device_by_factory_key is not None and (device is None
                                              or device_by_factory_key.id != device.id):
        raise refuse(r.CLONE_SUSPECTED, "this factory key is bound to another device")
    if device is not None and device.state is not DeviceState.EXPECTED:
        raise refuse(r.CLONE_SUSPECTED,
                     f"the device is already onboarded ({device.state.value})")
    check_live_session(open_session_exists=open_session_exists)


def check_live_session(*, open_session_exists: bool) -> None:
    """The last check of :func:`check_hello` alone: ``clone_suspected`` for a second live session.

    A service that decides the rest of a hello before taking its write lock calls
    :func:`check_hello` with ``open_session_exists=False`` and this one under the lock, where
    the live session is looked up next to the session it opens.
    """
    if open_session_exists:
        raise refuse(r.CLONE_SUSPECTED, "the device already has a live onboarding session")


def new_session(random: Callable[[int], bytes], now: datetime,
                ttl_seconds: int = MAX_SESSION_TTL_SECONDS) -> NewSession:
    """Open a session: 16 random id bytes and a 32-byte single-use nonce, stored hashed.

    ``expires_at`` is ``now`` truncated to whole seconds plus ``ttl_seconds`` (1..60), so the
    stored value and the wire value are identical.
    """
    _aware(now)
    if isinstance(ttl_seconds, bool) or not 1 <= ttl_seconds <= MAX_SESSION_TTL_SECONDS:
        raise ValueError(f"a session lives 1..{MAX_SESSION_TTL_SECONDS} seconds")
    session_id = random(SESSION_ID_BYTES)
    nonce = random(NONCE_BYTES)
    if len(session_id) != SESSION_ID_BYTES or len(nonce) != NONCE_BYTES:
        raise RuntimeError("the random source returned the wrong number of bytes")
    created = now.replace(microsecond=0)
    return NewSession(session_id=session_id, server_nonce=nonce,
                      nonce_sha256=nonce_sha256(nonce), created_at=created,
                      expires_at=created + timedelta(seconds=ttl_seconds))


def hello_response(decision: HelloDecision, session: NewSession, *,
                   server_id: str) -> HelloResponse:
    """The reply to an accepted hello."""
    return HelloResponse(session_id=session.session_id, server_nonce=session.server_nonce,
                         server_id=server_id, voucher=decision.voucher,
                         expires_at=session.expires_at)


# --- attest ----------------------------------------------------------------------------------

def _same_nonce(server_nonce: bytes, stored_sha256: str) -> bool:
    return hmac.compare_digest(nonce_sha256(server_nonce).encode(), stored_sha256.encode())


def precheck_attest(req: AttestRequest, *, session: OnboardingSession | None,
                    now: datetime) -> OnboardingSession:
    """The session checks of :func:`check_attest`, to run *before* consuming the nonce.

    1. ``nonce_unknown`` — no such session, or it belongs to another serial, or the server nonce
       is not this session's (compared by SHA-256, in constant time).
    2. ``nonce_replayed`` — the session already moved past ``open`` (attested, confirmed,
       refused); ``nonce_expired`` — it is marked expired or ``now`` is at or past
       ``expires_at``.
    """
    _aware(now)
    if session is None or session.id != session_record_id(req.session_id):
        raise refuse(r.NONCE_UNKNOWN, "no onboarding session with this id")
    if session.serial != req.serial:
        raise refuse(r.NONCE_UNKNOWN, "the session belongs to another device")
    if not _same_nonce(req.server_nonce, session.nonce_sha256):
        raise refuse(r.NONCE_UNKNOWN, "the server nonce is not this session's")
    if session.state is SessionState.EXPIRED or now >= session.expires_at:
        raise refuse(r.NONCE_EXPIRED, "the server nonce has expired")
    if session.state is not SessionState.OPEN:
        raise refuse(r.NONCE_REPLAYED, f"the session is already {session.state}")
    return session


def check_attest(
    req: AttestRequest,
    *,
    session: OnboardingSession | None,
    now: datetime,
    server_id: str,
    factory_public_key: ec.EllipticCurvePublicKey,
    voucher_sha256: bytes,
    nonce_consumed_ok: bool,
    known_key: Callable[[str], bool],
    key_storage: str | None = None,
) -> AttestDecision:
    """Decide an attest. Checks run in this order; the first failure is the reason.

    1-2. :func:`precheck_attest` (``nonce_unknown``, ``nonce_expired``, ``nonce_replayed``).
    3. ``nonce_replayed`` — the service's atomic consume (open → attested, conditional on the
       nonce hash and expiry) did not update a row (``nonce_consumed_ok`` false): another request
       won the race.
    4. ``signature_invalid`` — the factory key's signature over :func:`attest_transcript` fails.
    5. ``csr_invalid`` — the CSR is malformed, its self-signature (proof of possession) fails,
       its key is not P-256, or its key **is the factory key**.
    6. ``clone_suspected`` — the CSR key was **seen before** on any device (``known_key`` of its
       SPKI SHA-256 hex is true): a shared or copied key.

    ``voucher_sha256`` is the raw SHA-256 of the voucher bytes sent in the hello response
    (of the empty string for an unsafe admission); ``key_storage`` is the hello's key-storage
    claim as the session stored it (``None``: the hello had none), signed in the transcript.
    """
    session = precheck_attest(req, session=session, now=now)
    if not nonce_consumed_ok:
        raise refuse(r.NONCE_REPLAYED, "the server nonce was already used")
    transcript = attest_transcript(
        session_id=req.session_id, server_nonce=req.server_nonce,
        device_nonce=bytes.fromhex(session.device_nonce), serial=session.serial,
        server_id=server_id, csr_sha256=sha256(req.csr), voucher_sha256=voucher_sha256,
        key_storage=key_storage)
    verify_transcript_signature(factory_public_key, req.signature, transcript, what="factory")
    try:
        csr_key = pki.check_csr(req.csr)
    except InputError as exc:
        raise refuse(r.CSR_INVALID, exc.message, detail=exc.reason) from exc
    csr_spki = pki.spki_sha256(csr_key)
    if hmac.compare_digest(csr_spki.encode(), pki.spki_sha256(factory_public_key).encode()):
        raise refuse(r.CSR_INVALID, "the CSR key is the factory key; a new key is required")
    if known_key(csr_spki):
        raise refuse(r.CLONE_SUSPECTED, "the CSR key was already seen on a device")
    return AttestDecision(csr_public_key=csr_key, csr_spki_sha256=csr_spki, transcript=transcript)


# --- confirm ---------------------------------------------------------------------------------

def check_confirm(
    req: ConfirmRequest,
    *,
    session: OnboardingSession | None,
    now: datetime,
    confirm_by: datetime,
    certificate: x509.Certificate,
    confirmed_ok: bool,
) -> ConfirmDecision:
    """Decide a confirm. Checks run in this order; the first failure is the reason.

    1. ``nonce_unknown`` — no such session, another device id, not this session's server nonce,
       or the session was never attested (open, refused).
    2. ``nonce_replayed`` — the session is already confirmed.
    3. ``nonce_expired`` — the session is expired or ``now`` is past ``confirm_by``.
    4. ``nonce_replayed`` — the service's atomic attested → confirmed update lost a race
       (``confirmed_ok`` false).
    5. ``signature_invalid`` — the issued certificate's key did not sign
       :func:`confirm_transcript`.

    ``certificate`` is the operational certificate issued in this session's attest.
    """
    _aware(now)
    if session is None or session.id != session_record_id(req.session_id):
        raise refuse(r.NONCE_UNKNOWN, "no onboarding session with this id")
    if session.device_id != req.device_id:
        raise refuse(r.NONCE_UNKNOWN, "the session belongs to another device")
    if not _same_nonce(req.server_nonce, session.nonce_sha256):
        raise refuse(r.NONCE_UNKNOWN, "the server nonce is not this session's")
    if session.state is SessionState.CONFIRMED:
        raise refuse(r.NONCE_REPLAYED, "the session is already confirmed")
    if session.state is SessionState.EXPIRED or (session.state is SessionState.ATTESTED
                                                 and now > confirm_by):
        raise refuse(r.NONCE_EXPIRED, "the confirmation deadline has passed")
    if session.state is not SessionState.ATTESTED:
        raise refuse(r.NONCE_UNKNOWN, f"the session is {session.state}, not attested")
    if not confirmed_ok:
        raise refuse(r.NONCE_REPLAYED, "the session was confirmed concurrently")
    cert_sha256 = sha256(certificate.public_bytes(Encoding.DER))
    transcript = confirm_transcript(session_id=req.session_id, server_nonce=req.server_nonce,
                                    certificate_sha256=cert_sha256)
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise refuse(r.SIGNATURE_INVALID, "the issued certificate's key is not ECDSA")
    verify_transcript_signature(key, req.signature, transcript, what="operational")
    return ConfirmDecision(device_id=req.device_id, certificate_sha256=cert_sha256)
