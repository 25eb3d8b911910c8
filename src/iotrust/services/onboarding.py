"""The onboarding use case (DESIGN.md §6, ``docs/protocol.md``): hello, attest, confirm.

Each step parses its message at the core's parse boundary, loads the stored facts in a read-only
transaction, lets the pure decision functions of :mod:`iotrust.core.onboarding.server` decide
(signatures, and attest's certificate is built and signed) *before* taking the database's write
lock, then settles in one write transaction that re-reads or conditionally updates whatever the
decision used and could have changed, and persists the outcome (``docs/adr/0006``). Everything
that must hold across requests lives in the database, never in process memory, so any number of
workers (and machines) can serve one fleet:

* rate limits count the ``onboarding_attempts`` rows of the last window per serial and per
  source address (``rate_limited``, checked before anything else); a hello is admitted, settled
  and answered in one transaction, and a hello refused after admission is still counted (its
  attempt is written with the refusal event); a hello the counts as read would refuse is not
  decided at all (refusing a flood stays cheap);
* a hello's decision stands only if the facts it used read the same under the lock (else it is
  decided again there); one live session per device: the hello locks the device row before
  looking for a live session, next to the session it opens;
* the server nonce is spent by one conditional ``UPDATE`` (open → attested) in the attest's one
  write transaction, which holds the session until it commits and records the credential: a
  nonce is good for exactly one attest, and a certificate built for an attest whose transaction
  fails is dropped, never returned; a refused attest rolls back and its refusal transaction
  burns the nonce (open → refused), see ``docs/adr/0005``;
* confirm moves attested → confirmed, the credential issued → active and the device
  EXPECTED → ACTIVE in one transaction, with one event, each move conditional.

Every refusal (a :class:`~iotrust.errors.TrustError`, ``rate_limited`` included, or malformed
input) is recorded as an ``onboarding.refused`` event in its own transaction after the failed one
rolled back, then re-raised for the edge to map. Contacts by retired devices also leave a
``zombie.contact`` event. :func:`expire_unconfirmed` revokes the credentials of sessions that were
not confirmed in time and republishes the CRL.

This module does not speak HTTP (see :mod:`iotrust.api.onboarding`), keep sessions in memory,
decide trust itself (the core does) or talk to the broker.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from iotrust.adapters.sql.store import Database, SessionBinding, Tx
from iotrust.core import events as ev
from iotrust.core import hardware as hw
from iotrust.core import lifecycle, pki
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import CredentialState, Device, DeviceState, KeyStorage
from iotrust.core.onboarding import reasons as r
from iotrust.core.onboarding.key_storage import recorded_key_storage
from iotrust.core.onboarding.messages import (
    AttestRequest,
    AttestResponse,
    Broker,
    ConfirmRequest,
    HelloRequest,
    HelloResponse,
)
from iotrust.core.onboarding.reasons import refuse
from iotrust.core.onboarding.server import (
    MAX_SESSION_TTL_SECONDS,
    AttestDecision,
    HelloDecision,
    ManufacturerTrust,
    check_attest,
    check_confirm,
    check_hello,
    check_live_session,
    hello_response,
    load_chain_certificate,
    new_session,
    nonce_sha256,
    precheck_attest,
    read_chain_identity,
    session_record_id,
)
from iotrust.core.records import (
    CertificateAuthority,
    Manufacturer,
    OnboardingSession,
    SessionState,
    TrustDomain,
    Voucher,
)
from iotrust.core.vouchers import SignedVoucher, decode_voucher
from iotrust.errors import ConflictError, InputError, IotrustError, NotFoundError, TrustError
from iotrust.ports import Clock
from iotrust.services import eventlog, faults, zombies
from iotrust.services.credentials import (
    DEFAULT_CREDENTIAL_LIFETIME,
    Built,
    Issued,
    Issuer,
    publish_crls,
    revoke_credential,
)
from iotrust.services.domain import (
    Secrets,
    active_issuing_ca,
    crl_url_for,
    require_domain,
    root_ca,
)
from iotrust.services.settings import Settings
from iotrust.services.updates import update_root_bundle

__all__ = [
    "ACTOR",
    "DEFAULT_POLICY",
    "ONBOARDING_STARTED",
    "ONBOARDING_UNCONFIRMED",
    "OnboardingConfig",
    "OnboardingService",
    "expire_unconfirmed",
    "render_policy",
]

_log = logging.getLogger(__name__)

#: Who the onboarding service acts as in the event log.
ACTOR: Final = "onboarding@iotrust"
#: A hello was accepted and a session opened (``data``: session, serial, source).
ONBOARDING_STARTED: Final = "onboarding.started"
#: A session was not confirmed by its deadline: its credential was revoked.
ONBOARDING_UNCONFIRMED: Final = "onboarding.unconfirmed"
#: Why an unconfirmed credential is revoked (a CRL reason, see services.credentials).
_UNCONFIRMED_REVOCATION: Final = "unspecified"
_MAX_DETAIL: Final = 200
_MAX_SOURCE: Final = 200
#: How often (by the service's clock) a hello also forgets attempts older than the rate window;
#: they no longer count either way, so this is housekeeping, not a limit.
_PRUNE_INTERVAL: Final = timedelta(seconds=10)

#: The least-privilege policy a device gets when nothing more specific exists (DESIGN.md §7):
#: publish its own telemetry, receive its own commands.
DEFAULT_POLICY: Final[tuple[Mapping[str, str], ...]] = (
    {"action": "publish", "topic": "devices/{device_id}/telemetry"},
    {"action": "subscribe", "topic": "devices/{device_id}/commands/#"},
)


def render_policy(device_id: str,
                  templates: tuple[Mapping[str, str], ...] = DEFAULT_POLICY,
                  ) -> tuple[dict[str, Any], ...]:
    """The policy rules for one device: ``{device_id}`` replaced in every topic template."""
    return tuple({"action": t["action"], "topic": t["topic"].replace("{device_id}", device_id)}
                 for t in templates)


def _int_setting(settings: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"domain setting {key} must be an integer in {low}..{high}",
                         reason="invalid_setting")
    return value


@dataclass(frozen=True, slots=True)
class OnboardingConfig:
    """Onboarding limits and what attested devices are told, from the trust domain's settings.

    Keys (all optional): ``onboarding_rate_per_serial`` (hellos per window per serial, default
    5), ``onboarding_rate_per_source`` (per source address, 300), ``onboarding_rate_window_s``
    (60), ``onboarding_session_ttl_s`` (server nonce lifetime, at most 60), ``onboarding_confirm_s``
    (confirmation deadline after attest, 300), ``broker_host`` / ``broker_port``
    (127.0.0.1:8883). A rate of 0 switches that limit off.
    """

    rate_per_serial: int = 5
    rate_per_source: int = 300
    rate_window_s: int = 60
    session_ttl_s: int = MAX_SESSION_TTL_SECONDS
    confirm_s: int = 300
    broker_host: str = "127.0.0.1"
    broker_port: int = 8883

    def __post_init__(self) -> None:
        Broker(self.broker_host, self.broker_port)  # validates host and port
        if not 1 <= self.session_ttl_s <= MAX_SESSION_TTL_SECONDS:
            raise InputError("the session lifetime must be 1..60 s", reason="invalid_setting")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> OnboardingConfig:
        """Read the configuration from the trust domain's settings mapping."""
        host = settings.get("broker_host", "127.0.0.1")
        if not isinstance(host, str):
            raise InputError("domain setting broker_host must be a host name",
                             reason="invalid_setting")
        try:
            return cls(
                rate_per_serial=_int_setting(settings, "onboarding_rate_per_serial", 5, 0,
                                             1_000_000),
                rate_per_source=_int_setting(settings, "onboarding_rate_per_source", 300, 0,
                                             100_000_000),
                rate_window_s=_int_setting(settings, "onboarding_rate_window_s", 60, 1, 3600),
                session_ttl_s=_int_setting(settings, "onboarding_session_ttl_s",
                                           MAX_SESSION_TTL_SECONDS, 1, MAX_SESSION_TTL_SECONDS),
                confirm_s=_int_setting(settings, "onboarding_confirm_s", 300, 1, 86_400),
                broker_host=host,
                broker_port=_int_setting(settings, "broker_port", 8883, 1, 65535))
        except InputError as exc:
            if exc.reason == "malformed_request":  # from Broker: a bad host is a bad setting
                raise InputError("domain setting broker_host is not a host name",
                                 reason="invalid_setting") from exc
            raise


@dataclass(slots=True)
class _Seen:
    """What a step learned before it failed: what its refusal event records."""

    step: str
    source: str
    serial: str | None = None
    device_id: str | None = None
    session_id: str | None = None
    consumed: bool = False  # this request spent the session's nonce (attest)
    attested: bool = False  # the session was attested when the confirm was refused
    uncounted: bool = False  # a hello passed the rate limits; its rolled-back attempt is owed


class _SweepFirst(Exception):  # noqa: N818 - a control-flow signal inside this module, no error
    """A hello found overdue sessions: roll back, run the sweep, decide the hello again."""


@dataclass(frozen=True, slots=True)
class _HelloFacts:
    """What a hello's decision rests on, as read; compared again under the write lock."""

    device: Device | None
    manufacturer: Manufacturer | None
    voucher: Voucher | None
    owner: str
    owner_spki: str
    by_factory_key: Device | None


@dataclass(frozen=True, slots=True)
class _Judged:
    """A hello decided before its write transaction: the facts and what they gave."""

    facts: _HelloFacts
    outcome: HelloDecision | TrustError | InputError


@dataclass(frozen=True, slots=True)
class _Issuance:
    """How an attest's credential is issued; built before the write lock, compared under it."""

    device_id: str
    ca: CertificateAuthority
    lifetime: timedelta
    crl_url: str | None


@dataclass(frozen=True, slots=True)
class _AttestPlan:
    """An attest decided (and its certificate built) before its write transaction."""

    session: OnboardingSession
    config: OnboardingConfig
    confirm_by: datetime
    bound_error: TrustError | InputError | None  # the binding is unusable (after the spend)
    outcome: AttestDecision | TrustError | InputError
    issuance: _Issuance | None  # None: not built (retired or missing device as read)
    built: Built | None


@dataclass(frozen=True, slots=True)
class _ConfirmView:
    """A confirm's session as its checks see it (:func:`_confirm_view`)."""

    session: OnboardingSession | None
    certificate: x509.Certificate | None
    confirm_by: datetime
    key_storage: str | None


def _source(source: str) -> str:
    if not isinstance(source, str):
        raise TypeError("source is the client's address as a string")
    return (source or "unknown")[:_MAX_SOURCE]


def _spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _factory_key(spki: bytes | None) -> ec.EllipticCurvePublicKey:
    if spki is None:
        raise refuse(r.NONCE_UNKNOWN, "the session holds no factory key")
    key = pki.load_public_key(spki)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise refuse(r.NONCE_UNKNOWN, "the session's factory key is not ECDSA")
    return key


#: At most this many root CA ids are remembered per service (a root changes at rollover only).
_MAX_ROOTS_REMEMBERED: Final = 16


# CA certificates and manufacturer records are parsed once per distinct stored value (immutable
# text in, immutable value out); the registry is still read in every transaction (the owner
# root: its id, see OnboardingService._owner_spki).
@functools.lru_cache(maxsize=64)
def _spki_sha256_of_pem(certificate_pem: str) -> str:
    return pki.spki_sha256(pki.load_certificate(certificate_pem.encode()).public_key())


@functools.lru_cache(maxsize=64)
def _der_of_pem(certificate_pem: str) -> bytes:
    return pki.load_certificate(certificate_pem.encode()).public_bytes(Encoding.DER)


@functools.lru_cache(maxsize=256)
def _trust_of(record: Manufacturer) -> ManufacturerTrust:
    return ManufacturerTrust.from_record(record)


class OnboardingService:
    """The three onboarding steps over one registry; stateless between requests.

    ``random`` draws session ids, nonces and device ids (``os.urandom`` unless a test injects
    one). The :class:`~iotrust.services.credentials.Issuer` caches the opened issuing-CA key, and
    the service the owner root's SPKI hash per root CA id (a CA's certificate never changes
    under its id; the domain names the current root in every transaction): immutable things;
    nothing about sessions or devices is kept here.
    """

    def __init__(self, db: Database, clock: Clock, settings: Settings, secrets: Secrets, *,
                 random: Callable[[int], bytes] = os.urandom,
                 issuer: Issuer | None = None) -> None:
        self._db = db
        self._clock = clock
        self._settings = settings
        self._secrets = secrets
        self._random = random
        self._issuer = issuer or Issuer(secrets, clock)
        self._next_prune = datetime.min.replace(tzinfo=clock.now().tzinfo)
        self._owner_spki_by_root: dict[str, str] = {}

    # -- the three steps ---------------------------------------------------------------------

    def hello(self, body: bytes, *, source: str) -> HelloResponse:
        """Answer ``POST /v1/onboarding/hello``: open a session and return its server nonce."""
        seen = _Seen("hello", _source(source))
        try:
            response = self._hello(body, seen)
        except (TrustError, InputError) as exc:
            self._refused(seen, exc)
            raise
        faults.checkpoint("onboarding.hello.committed")
        return response

    def attest(self, body: bytes, *, source: str) -> AttestResponse:
        """Answer ``POST /v1/onboarding/attest``: spend the nonce, check, issue the credential."""
        seen = _Seen("attest", _source(source))
        try:
            return self._attest(body, seen)
        except (TrustError, InputError) as exc:
            self._refused(seen, exc)
            raise

    def confirm(self, body: bytes, *, source: str) -> None:
        """Answer ``POST /v1/onboarding/confirm``: the device proved its new key; make it ACTIVE."""
        seen = _Seen("confirm", _source(source))
        try:
            self._confirm(body, seen)
        except (TrustError, InputError) as exc:
            self._refused(seen, exc)
            raise

    def expire_unconfirmed(self) -> int:
        """:func:`expire_unconfirmed` with this service's registry, clock and secrets."""
        return expire_unconfirmed(self._db, self._clock, self._secrets, self._settings)

    # -- hello -------------------------------------------------------------------------------

    def _hello(self, body: bytes, seen: _Seen) -> HelloResponse:
        now = self._clock.now()
        parse_error: InputError | None = None
        req: HelloRequest | None = None
        try:
            req = HelloRequest.from_wire(body)
            seen.serial = req.serial
        except InputError as exc:
            parse_error = exc
        # Decide before the write lock (chain and voucher signatures); the write transaction
        # admits, re-reads what the decision used and keeps the decision only if it is unchanged.
        judged = self._prejudge_hello(req, seen, now) if req is not None else None
        try:
            return self._hello_once(req, parse_error, judged, seen, now, sweep_checked=False)
        except _SweepFirst:
            pass
        # Overdue sessions exist: expire them (own transactions), then decide on the result.
        self._sweep_quietly()
        self._next_prune = now + _PRUNE_INTERVAL
        return self._hello_once(req, parse_error, judged, seen, now, sweep_checked=True)

    def _prejudge_hello(self, req: HelloRequest, seen: _Seen, now: datetime) -> _Judged | None:
        """Read a hello's facts in a read-only transaction and decide on them, unlocked.

        A hello the rate limits would refuse (as read here) is not decided at all (``None``; not
        even its leaf is parsed): refusing it must stay cheap. The write transaction checks the
        limits again either way.
        """
        with self._db.transaction(readonly=True) as tx:
            domain = require_domain(tx)
            config = OnboardingConfig.from_settings(domain.settings)
            per_serial, per_source, _ = tx.onboarding_admission(
                since=now - timedelta(seconds=config.rate_window_s), serial=seen.serial,
                source=seen.source, at=now)
            if _over_limit(config, seen, per_serial, per_source) is not None:
                return None
            maker_name, spki = _claimed_identity(req)
            facts = self._hello_facts(tx, domain, req, maker_name, spki, for_update=False)
        return _Judged(facts, _judge_hello(req, now, facts))

    def _hello_facts(self, tx: Tx, domain: TrustDomain, req: HelloRequest,
                     maker_name: str | None, spki: str | None, *,
                     for_update: bool) -> _HelloFacts:
        """Everything :func:`_judge_hello` decides on (the live session aside), as stored now.

        ``for_update``: lock the device row until the transaction ends (the write transaction:
        one live session per device, across workers).
        """
        device = None
        if maker_name is not None:
            find = tx.find_device_for_update if for_update else tx.find_device
            device = find(maker_name, req.serial)
        record = None
        if maker_name is not None:
            try:
                record = tx.get_manufacturer(maker_name)
            except NotFoundError:
                record = None
        voucher = tx.get_active_voucher(device.id) if device is not None else None
        return _HelloFacts(device=device, manufacturer=record, voucher=voucher,
                           owner=domain.owner, owner_spki=self._owner_spki(tx, domain),
                           by_factory_key=_device_by_factory_key(tx, device, spki))

    def _hello_once(self, req: HelloRequest | None, parse_error: InputError | None,
                    judged: _Judged | None, seen: _Seen, now: datetime, *,
                    sweep_checked: bool) -> HelloResponse:
        """Admit and settle one hello in one write transaction (``_SweepFirst``: sweep, again).

        The decision made before the transaction stands only if every fact it used reads the
        same under the lock; otherwise the hello is decided again here, on what is stored now.
        """
        with self._db.transaction() as tx:
            domain = require_domain(tx)
            config = OnboardingConfig.from_settings(domain.settings)
            self._admit(tx, config, seen, now, sweep_checked=sweep_checked)
            if parse_error is not None:
                raise parse_error
            if req is None:  # parse_error is None exactly when req is set
                raise RuntimeError("unreachable: no request and no parse error")
            maker_name, spki = _claimed_identity(req)  # parsed once: memoised per leaf
            facts = self._hello_facts(tx, domain, req, maker_name, spki, for_update=True)
            if facts.device is not None:
                seen.device_id = facts.device.id
            outcome = (judged.outcome if judged is not None and judged.facts == facts
                       else _judge_hello(req, now, facts))
            if not isinstance(outcome, HelloDecision):
                raise outcome
            decision = outcome
            check_live_session(open_session_exists=(
                facts.device is not None and tx.live_session_exists(facts.device.id, now)))
            if decision.device is None:
                device = self._admit_unsafely(tx, decision, domain, seen, now)
            else:
                device = decision.device
            session = new_session(self._random, now, config.session_ttl_s)
            seen.session_id = session.record_id
            tx.open_session(
                OnboardingSession(
                    id=session.record_id, device_id=device.id, serial=req.serial,
                    nonce_sha256=session.nonce_sha256, device_nonce=req.device_nonce.hex(),
                    expires_at=session.expires_at, state=SessionState.OPEN, source=seen.source,
                    created_at=session.created_at),
                factory_spki=_spki_der(decision.factory_public_key),
                voucher_sha256=decision.voucher_sha256.hex(), key_storage=req.key_storage)
            tx.touch_last_seen(device.id, now)
            eventlog.record(tx, self._clock, ONBOARDING_STARTED, actor=ACTOR,
                            device_id=device.id,
                            data={"session": session.record_id, "serial": req.serial,
                                  "source": seen.source,
                                  "expires_at": session.expires_at.isoformat(),
                                  "unsafe_admission": device.unsafe_admission})
            response = hello_response(decision, session, server_id=domain.server_id)
        seen.uncounted = False
        return response

    def _owner_spki(self, tx: Tx, domain: TrustDomain) -> str:
        """The SPKI SHA-256 of the domain's root CA (what vouchers pin), read once per root id."""
        root_id = domain.root_ca_id
        known = self._owner_spki_by_root.get(root_id) if root_id is not None else None
        if known is not None:
            return known
        spki = _spki_sha256_of_pem(root_ca(tx).certificate_pem)
        if root_id is not None and len(self._owner_spki_by_root) < _MAX_ROOTS_REMEMBERED:
            self._owner_spki_by_root[root_id] = spki
        return spki

    def _admit(self, tx: Tx, config: OnboardingConfig, seen: _Seen, now: datetime, *,
               sweep_checked: bool) -> None:
        """Apply the rate limits, then count this hello (a refused one is not counted).

        The attempt is written in the hello's own transaction; if the hello is refused after
        this point, that transaction rolls back and :meth:`_refused` writes the attempt again
        next to the refusal event (``seen.uncounted``), so every hello past the limits counts.
        Raises :class:`_SweepFirst` when overdue sessions wait for the sweep (unless
        ``sweep_checked``).
        """
        since = now - timedelta(seconds=config.rate_window_s)
        per_serial, per_source, sweep_due = tx.onboarding_admission(
            since=since, serial=seen.serial, source=seen.source, at=now)
        if sweep_due and not sweep_checked:
            raise _SweepFirst
        limited = _over_limit(config, seen, per_serial, per_source)
        if limited is not None:
            raise limited
        tx.add_onboarding_attempt(seen.serial, seen.source, now)
        seen.uncounted = True
        if now >= self._next_prune:  # after a sweep (which prunes too) this waits
            tx.prune_onboarding_attempts(since)
            self._next_prune = now + _PRUNE_INTERVAL

    def _admit_unsafely(self, tx: Tx, decision: HelloDecision, domain: TrustDomain, seen: _Seen,
                        now: datetime) -> Device:
        """Unsafe manufacturer-CA-only trust: create the genuine but unvouched device.

        It gets the model registered for its manufacturer and product id, if any.
        """
        ident = decision.identity
        model = tx.find_model_for_product(ident.manufacturer, ident.product_id)
        device = Device(
            id=new_device_id(self._random(16)), manufacturer=ident.manufacturer,
            serial=decision.serial, factory_spki_sha256=ident.spki_sha256,
            vendor_id=ident.vendor_id, product_id=ident.product_id, owner=domain.owner,
            state=DeviceState.EXPECTED, created_at=now, updated_at=now,
            key_storage=KeyStorage.UNKNOWN, unsafe_admission=True,
            model=model.name if model is not None else None)
        try:
            tx.add_device(device)
            tx.record_key(ident.spki_sha256, "factory", device.id, now)
        except ConflictError as exc:  # a concurrent admission, or a key seen elsewhere
            raise refuse(r.CLONE_SUSPECTED, "this serial or factory key is already registered",
                         detail=exc.reason) from exc
        seen.device_id = device.id
        eventlog.record(tx, self._clock, ev.DEVICE_EXPECTED, actor=ACTOR, device_id=device.id,
                        reason="unsafe_manufacturer_trust",
                        data={"manufacturer": device.manufacturer, "serial": device.serial,
                              "vendor_product": f"{device.vendor_id}:{device.product_id}",
                              "factory_spki_sha256": device.factory_spki_sha256,
                              "source": seen.source})
        return device

    def _sweep_quietly(self) -> None:
        """Expire what is overdue before deciding a hello; a failure here refuses no device."""
        try:
            self.expire_unconfirmed()
        except IotrustError as exc:
            _log.warning("expiring unconfirmed onboarding sessions failed: %s", exc.reason)

    # -- attest ------------------------------------------------------------------------------

    def _attest(self, body: bytes, seen: _Seen) -> AttestResponse:
        req = AttestRequest.from_wire(body)
        seen.serial = req.serial
        sid = session_record_id(req.session_id)
        now = self._clock.now()
        plan = self._plan_attest(req, sid, seen, now)
        device, issued, root_pem = self._settle_attest(req, sid, plan, seen, now)
        faults.checkpoint("onboarding.attest.committed")
        config = plan.config
        return AttestResponse(
            device_id=device.id,
            certificate=issued.certificate.public_bytes(Encoding.DER),
            ca_chain=(_der_of_pem(issued.ca.certificate_pem), _der_of_pem(root_pem)),
            broker=Broker(config.broker_host, config.broker_port),
            update_root=update_root_bundle(self._settings),
            policy=render_policy(device.id), confirm_by=plan.confirm_by)

    def _plan_attest(self, req: AttestRequest, sid: str, seen: _Seen,
                     now: datetime) -> _AttestPlan:
        """Read (no write lock), decide and build the certificate, before spending the nonce.

        Session refusals (unknown, expired, replayed as read) are raised here: nothing was
        spent, and a session never moves back to open. Any later refusal is kept in the plan
        and raised only after the nonce is spent (ADR 0005's order: a nonce spent by another
        attest is ``nonce_replayed`` whatever this one carried).
        """
        with self._db.transaction(readonly=True) as tx:
            domain = require_domain(tx)
            config = OnboardingConfig.from_settings(domain.settings)
            found = tx.get_session_context(sid)  # the session, its binding and its device
            session, binding, _, stored_device = (
                found if found is not None else (None, None, None, None))
            if session is not None and session.serial == req.serial:
                seen.device_id = session.device_id
                seen.session_id = sid
            session = precheck_attest(req, session=session, now=now)
            issuance = None
            if stored_device is not None and stored_device.state is not DeviceState.RETIRED:
                try:
                    issuance = _issuance_of(tx, domain, stored_device)
                except IotrustError:
                    # (no active issuing CA, model gone): not built here; the write transaction
                    # computes it again after the signature checks and fails there, in the
                    # order of the checks, as before
                    issuance = None
        confirm_by = now.replace(microsecond=0) + timedelta(seconds=config.confirm_s)
        bound_error: TrustError | InputError | None = None
        outcome: AttestDecision | TrustError | InputError
        try:
            if binding is None or binding.voucher_sha256 is None:
                raise refuse(r.NONCE_UNKNOWN, "the session was not opened by a hello")
            factory_key = _factory_key(binding.factory_spki)
        except (TrustError, InputError) as exc:  # InputError: a damaged stored factory key
            bound_error = outcome = exc
        else:
            outcome = _judge_attest(req, session, binding, now=now, server_id=domain.server_id,
                                    factory_key=factory_key)
        built = None
        if isinstance(outcome, AttestDecision) and issuance is not None:
            built = self._build(issuance, outcome, now)
        return _AttestPlan(session=session, config=config, confirm_by=confirm_by,
                           bound_error=bound_error, outcome=outcome, issuance=issuance,
                           built=built)

    def _settle_attest(self, req: AttestRequest, sid: str, plan: _AttestPlan, seen: _Seen,
                       now: datetime) -> tuple[Device, Issued, str]:
        """Spend the nonce, re-check and record the planned credential in one write transaction.

        The conditional UPDATE (open -> attested on id, nonce hash, unspent, unexpired) holds
        the session row (PostgreSQL) or the write lock (SQLite) until the commit: one attest per
        nonce. A refusal rolls it back; :meth:`_refused` then burns the nonce next to the
        refusal event (``docs/adr/0005``, ``0006``). A built certificate whose transaction
        fails is dropped, never returned.
        """
        with self._db.transaction() as tx:
            consumed = tx.attest_session(sid, nonce_sha256(req.server_nonce), now,
                                         plan.confirm_by)
            seen.consumed = consumed
            faults.checkpoint("onboarding.attest.nonce_spent")
            if not consumed:  # moved on since it was read: its state now says why
                current = tx.get_session_and_binding(sid)
                precheck_attest(req, session=current[0] if current is not None else None,
                                now=now)
            if plan.bound_error is not None:
                raise plan.bound_error
            if not consumed:
                raise refuse(r.NONCE_REPLAYED, "the server nonce was already used")
            if not isinstance(plan.outcome, AttestDecision):
                raise plan.outcome
            decision = plan.outcome
            device = tx.get_device(plan.session.device_id)
            if device.state is DeviceState.RETIRED:
                if tx.key_seen(decision.csr_spki_sha256):  # check_attest's order: clone first
                    raise refuse(r.CLONE_SUSPECTED, "the CSR key was already seen on a device")
                raise refuse(r.RETIRED, "this device is retired")
            issuance = _issuance_of(tx, require_domain(tx), device)
            built = plan.built
            if built is None or issuance != plan.issuance:  # changed meanwhile: build again
                built = self._build(issuance, decision, now)
            try:
                issued = self._issuer.record(tx, built, actor=ACTOR)
            except ConflictError as exc:  # the CSR key was recorded concurrently elsewhere
                if exc.reason != "key_reused":
                    raise
                raise refuse(r.CLONE_SUSPECTED, "the CSR key was already seen on a device",
                             detail=exc.reason) from exc
            tx.set_session_state(sid, SessionState.ATTESTED, expected=SessionState.ATTESTED,
                                 credential_serial=issued.credential.serial_number)
            tx.touch_last_seen(device.id, now)
            root_pem = root_ca(tx).certificate_pem
            faults.checkpoint("onboarding.attest.before_commit")
        return device, issued, root_pem

    def _build(self, issuance: _Issuance, decision: AttestDecision, now: datetime) -> Built:
        """The operational certificate for ``decision``'s key, built and signed, not recorded."""
        # check_attest verified the CSR (proof of possession, P-256, not the factory key):
        # certify its key without checking the CSR a second time.
        built = self._issuer.build(issuance.ca, device_id=issuance.device_id,
                                   public_key=decision.csr_public_key,
                                   lifetime=issuance.lifetime, crl_url=issuance.crl_url, now=now)
        if pki.spki_sha256(built.certificate.public_key()) != decision.csr_spki_sha256:
            raise RuntimeError("the issuer certified another key than the CSR's")
        return built

    # -- confirm -----------------------------------------------------------------------------

    def _confirm(self, body: bytes, seen: _Seen) -> None:
        req = ConfirmRequest.from_wire(body)
        sid = session_record_id(req.session_id)
        now = self._clock.now()
        # 1. Read (no write lock) and decide: the session, its certificate, the signature.
        with self._db.transaction(readonly=True) as tx:
            # one read: the session, its binding, its credential's certificate and its device
            view = _confirm_view(tx.get_session_context(sid), req, seen, now)
            certificate = view.certificate
            if certificate is None:
                # Never used: without a certificate the session is not (treated as) attested
                # here, and the core refuses such a confirm before it looks at it.
                certificate = pki.load_certificate(root_ca(tx).certificate_pem.encode())
        signature_error: TrustError | None = None
        try:
            check_confirm(req, session=view.session, now=now, confirm_by=view.confirm_by,
                          certificate=certificate, confirmed_ok=True)
        except TrustError as exc:
            if exc.reason != r.SIGNATURE_INVALID:
                raise  # the session's state as read refuses it: nothing to change
            signature_error = exc  # step 5: raised once the session is confirmed (step 4)
        session = view.session
        if session is None or session.credential_serial is None:
            raise RuntimeError("check_confirm accepted a session without a credential")
        # 2. Move the states, conditionally, in one write transaction.
        with self._db.transaction() as tx:
            if not tx.confirm_session(sid, now):  # moved on since it was read: say why
                now_view = _confirm_view(tx.get_session_context(sid), req, seen, now)
                check_confirm(req, session=now_view.session, now=now,
                              confirm_by=now_view.confirm_by, certificate=certificate,
                              confirmed_ok=False)
                raise RuntimeError("check_confirm accepted a confirm that changed nothing")
            if signature_error is not None:
                raise signature_error
            self._activate(tx, session, session.credential_serial, claimed=view.key_storage,
                           seen=seen, now=now)
            faults.checkpoint("onboarding.confirm.before_commit")
        faults.checkpoint("onboarding.confirm.committed")

    def _activate(self, tx: Tx, session: OnboardingSession, credential_serial: str, *,
                  claimed: str | None, seen: _Seen, now: datetime) -> None:
        """The confirmed session's credential ISSUED -> ACTIVE, its device EXPECTED -> ACTIVE."""
        # read under the lock: update_device below is conditional on the state read here,
        # so a concurrent change refuses instead of being overwritten
        device = tx.get_device(session.device_id)
        if device.state is DeviceState.RETIRED:
            raise refuse(r.RETIRED, "this device is retired")
        try:
            tx.update_credential_state(credential_serial, CredentialState.ACTIVE,
                                       expected=CredentialState.ISSUED)
        except ConflictError as exc:  # revoked meanwhile (deadline sweep, operator)
            raise refuse(r.NONCE_EXPIRED, "the credential of this session was revoked",
                         detail=exc.reason) from exc
        # the hello's claim, signed in the attest; never recorded above the model's profile
        storage = recorded_key_storage(claimed, _profile_key_storage(tx, device))
        try:
            moved = dataclasses.replace(lifecycle.onboard(device, now), key_storage=storage)
            tx.update_device(moved, expected_state=DeviceState.EXPECTED, seen_at=now)
        except ConflictError as exc:
            raise refuse(r.CLONE_SUSPECTED,
                         f"the device is already onboarded ({device.state.value})",
                         detail=exc.reason) from exc
        eventlog.record(tx, self._clock, ev.DEVICE_ONBOARDED, actor=ACTOR,
                        device_id=device.id,
                        data={"from": device.state.value, "to": moved.state.value,
                              "session": session.id, "credential": credential_serial,
                              "source": seen.source,
                              "unsafe_admission": device.unsafe_admission,
                              "key_storage": storage.value,
                              "key_storage_claimed": claimed})

    # -- refusals ----------------------------------------------------------------------------

    def _refused(self, seen: _Seen, exc: IotrustError) -> None:
        """Record a refusal in its own transaction (the refused one was rolled back)."""
        revoked = False
        try:
            with self._db.transaction() as tx:
                if seen.uncounted:  # the hello's own transaction (and its attempt) rolled back
                    tx.add_onboarding_attempt(seen.serial, seen.source, self._clock.now())
                if seen.session_id is not None and seen.consumed:
                    # the refused attest spent the nonce in its rolled-back transaction: burn
                    # it now (unless a concurrent attest with the same nonce won meanwhile)
                    tx.refuse_session(seen.session_id, expected=SessionState.OPEN)
                if seen.step == "confirm" and seen.attested and seen.session_id is not None \
                        and exc.reason == r.SIGNATURE_INVALID:
                    revoked = self._refuse_attested(tx, seen.session_id)
                data: dict[str, eventlog.JSONValue] = {
                    "step": seen.step, "serial": seen.serial, "source": seen.source,
                    "session": seen.session_id, "detail": exc.message[:_MAX_DETAIL]}
                eventlog.record(tx, self._clock, ev.ONBOARDING_REFUSED, actor=ACTOR,
                                device_id=seen.device_id, reason=exc.reason, data=data)
                if exc.reason == r.RETIRED:
                    # counted per identity in the zombies table, with its zombie.contact event
                    zombies.record_contact_tx(
                        tx, self._clock, where="onboarding", source=seen.source,
                        identity=seen.device_id or f"serial:{seen.serial}", reason=r.RETIRED,
                        device_id=seen.device_id, actor=ACTOR)
        except IotrustError as failure:  # the device still gets its refusal
            _log.warning("recording an onboarding refusal failed: %s", failure.reason)
            return
        if revoked or (seen.step == "confirm" and exc.reason == r.NONCE_EXPIRED):
            self._sweep_quietly()
            if revoked:
                self._publish_quietly()

    def _refuse_attested(self, tx: Tx, session_id: str) -> bool:
        """A confirm with the right nonce but a bad signature: end the session and its key."""
        if not tx.refuse_session(session_id, expected=SessionState.ATTESTED):
            return False
        serial = tx.get_session(session_id).credential_serial
        if serial is None:
            return False
        return revoke_credential(tx, self._clock, serial, reason=_UNCONFIRMED_REVOCATION,
                                 actor=ACTOR)

    def _publish_quietly(self) -> None:
        try:
            publish_crls(self._db, self._settings, self._secrets, self._clock, actor=ACTOR)
        except (IotrustError, OSError) as exc:
            _log.warning("publishing the CRL after an onboarding refusal failed: %s", exc)


def _over_limit(config: OnboardingConfig, seen: _Seen, per_serial: int,
                per_source: int) -> TrustError | None:
    """The ``rate_limited`` refusal for these counts of recent hellos, if they are too many."""
    if seen.serial is not None and config.rate_per_serial and \
            per_serial >= config.rate_per_serial:
        return refuse(r.RATE_LIMITED, "too many onboarding attempts for this serial")
    if config.rate_per_source and per_source >= config.rate_per_source:
        return refuse(r.RATE_LIMITED, "too many onboarding attempts from this source")
    return None


def _judge_hello(req: HelloRequest, now: datetime,
                 facts: _HelloFacts) -> HelloDecision | TrustError | InputError:
    """:func:`check_hello` on ``facts`` (the live session is checked under the write lock).

    Pure but for the memoised parsing; the refusal is returned, to be raised once the hello
    is admitted (the rate limits come first).
    """
    try:
        manufacturer = _trust_of(facts.manufacturer) if facts.manufacturer is not None else None
        voucher = _decoded_voucher(facts.voucher)
        return check_hello(
            req, now=now, device=facts.device, manufacturer=manufacturer, voucher=voucher,
            owner=facts.owner, owner_spki_sha256=facts.owner_spki,
            device_by_factory_key=facts.by_factory_key, open_session_exists=False)
    except (TrustError, InputError) as exc:
        return exc


def _judge_attest(req: AttestRequest, session: OnboardingSession, binding: SessionBinding, *,
                  now: datetime, server_id: str, factory_key: ec.EllipticCurvePublicKey,
                  ) -> AttestDecision | TrustError | InputError:
    """:func:`check_attest` before the nonce is spent (the refusal is returned, not raised).

    The seen-key check is left to the write transaction: recording the key refuses a key seen
    before (``clone_suspected``), atomically. ``binding`` has its voucher hash.
    """
    try:
        return check_attest(
            req, session=session, now=now, server_id=server_id, factory_public_key=factory_key,
            voucher_sha256=bytes.fromhex(binding.voucher_sha256 or ""), nonce_consumed_ok=True,
            known_key=_never_seen, key_storage=binding.key_storage)
    except (TrustError, InputError) as exc:
        return exc


def _never_seen(_spki_sha256: str) -> bool:
    return False


def _issuance_of(tx: Tx, domain: TrustDomain, device: Device) -> _Issuance:
    """How a credential for ``device`` is issued now: CA, lifetime (its model's) and CRL URL."""
    lifetime = (timedelta(seconds=tx.get_model(device.model).credential_lifetime_s)
                if device.model is not None else DEFAULT_CREDENTIAL_LIFETIME)
    ca = active_issuing_ca(tx)
    return _Issuance(device_id=device.id, ca=ca, lifetime=lifetime,
                     crl_url=crl_url_for(domain, ca.id))


def _confirm_view(found: tuple[OnboardingSession, SessionBinding, str | None, Device | None]
                  | None, req: ConfirmRequest, seen: _Seen, now: datetime) -> _ConfirmView:
    """A confirm's session as :func:`check_confirm` must see it, from one session-context read.

    A session attested without a certificate or a deadline (its attest failed after spending
    the nonce) is treated as refused; then the certificate is ``None`` and the deadline ``now``
    (neither is looked at).
    """
    session, binding, certificate_pem, _ = (
        found if found is not None else (None, None, None, None))
    if session is not None and session.device_id == req.device_id:
        seen.device_id = session.device_id
        seen.serial = session.serial
        seen.session_id = session.id
        seen.attested = session.state is SessionState.ATTESTED
    key_storage = binding.key_storage if binding is not None else None
    confirm_by = binding.confirm_by if binding is not None else None
    certificate = None
    if session is not None and session.credential_serial is not None \
            and certificate_pem is not None:
        certificate = pki.load_certificate(certificate_pem.encode())
    if certificate is None or confirm_by is None:
        if session is not None and session.state is SessionState.ATTESTED:
            session = dataclasses.replace(session, state=SessionState.REFUSED)
        return _ConfirmView(session=session, certificate=None, confirm_by=now,
                            key_storage=key_storage)
    return _ConfirmView(session=session, certificate=certificate, confirm_by=confirm_by,
                        key_storage=key_storage)


def _claimed_identity(req: HelloRequest) -> tuple[str | None, str | None]:
    """The manufacturer and factory key the (not yet verified) leaf certificate claims."""
    try:
        ident = read_chain_identity(load_chain_certificate(req.factory_chain[0]))
    except InputError:
        return None, None
    return ident.manufacturer, ident.spki_sha256


def _device_by_factory_key(tx: Tx, device: Device | None, spki: str | None) -> Device | None:
    """The device bound to the claimed factory key (keys are unique in the registry)."""
    if spki is None:
        return None
    if device is not None and device.factory_spki_sha256 == spki:
        return device  # the unique key is this device's own: no second lookup needed
    return tx.find_device_by_factory_key(spki)


def _decoded_voucher(stored: Voucher | None) -> SignedVoucher | None:
    if stored is None:
        return None
    try:
        return decode_voucher(stored.raw)
    except InputError as exc:
        raise refuse(r.VOUCHER_INVALID, "the stored voucher cannot be decoded",
                     detail=exc.reason) from exc


def _profile_key_storage(tx: Tx, device: Device) -> hw.HardwareKeyStorage | None:
    """The key storage of the device model's hardware profile (``None``: no model or profile)."""
    if device.model is None:
        return None
    profile = tx.get_model(device.model).hardware_profile
    return None if profile is None else _key_storage_of_profile(profile)


@functools.lru_cache(maxsize=64)  # a profile is an immutable text: parse it (~1 ms) once
def _key_storage_of_profile(profile: str) -> hw.HardwareKeyStorage | None:
    try:
        return hw.parse_profile(profile.encode("utf-8")).key_storage
    except InputError:  # profiles are validated when registered; a damaged one backs no claim
        return None


def expire_unconfirmed(db: Database, clock: Clock, secrets: Secrets, settings: Settings, *,
                       actor: str = ACTOR, limit: int = 100) -> int:
    """End sessions whose confirmation deadline passed: revoke their credentials.

    Open sessions past their nonce's expiry are marked expired; each attested session past
    ``confirm_by`` is marked expired with one conditional update (so concurrent sweeps in several
    workers expire it once), its issued credential revoked and an ``onboarding.unconfirmed``
    event recorded, in one transaction. The device stays EXPECTED (only a confirm makes it
    ACTIVE). The CRL is republished when anything was revoked. Returns how many attested
    sessions were expired (at most ``limit`` per call).
    """
    now = clock.now()
    with db.transaction() as tx:
        domain = tx.get_domain()
        if domain is None:
            return 0
        config = OnboardingConfig.from_settings(domain.settings)
        tx.expire_open_sessions(now)
        tx.prune_onboarding_attempts(now - timedelta(seconds=config.rate_window_s))
        overdue = tx.unconfirmed_sessions(now, limit=limit)
    expired = revoked = 0
    for session in overdue:
        with db.transaction() as tx:
            if not tx.expire_unconfirmed_session(session.id, now):
                continue  # confirmed or expired meanwhile (another worker)
            expired += 1
            was_revoked = False
            if session.credential_serial is not None:
                cred = tx.get_credential(session.credential_serial)
                if cred.state is not CredentialState.REVOKED:
                    was_revoked = revoke_credential(tx, clock, cred.serial_number,
                                                    reason=_UNCONFIRMED_REVOCATION, actor=actor)
            revoked += was_revoked
            eventlog.record(tx, clock, ONBOARDING_UNCONFIRMED, actor=actor,
                            device_id=session.device_id, reason="unconfirmed",
                            data={"session": session.id,
                                  "credential": session.credential_serial,
                                  "revoked": was_revoked})
    if revoked:
        publish_crls(db, settings, secrets, clock, actor=actor)
    return expired
