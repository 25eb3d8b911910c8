"""Credential rotation (DESIGN.md §8): begin, complete, confirm; campaigns; the upkeep sweep.

Each step parses at the core's parse boundary (:mod:`iotrust.core.rotation`), loads the stored
facts, lets the core decide and persists the outcome. Nothing lives in process memory:

* **begin** — the current credential's key signs the request; the credential must be this
  device's live one (not revoked, expired or superseded; the device not retired or expected). A
  session with a single-use server nonce (stored hashed, ≤ 60 s) bound to that credential is
  opened; the reply says whether an operator asked for early renewal and when renewal is due.
* **complete** — the nonce is spent by one conditional update committed *before* the signature
  is checked; then the current key's signature over the transcript, the CSR and its never-seen
  key are checked and the new credential is issued for the lifetime of the device's model
  (its hardware profile, :func:`iotrust.services.hardware.defaults_of`; else 30 days).
* **confirm** — the new key signs; in one transaction the new credential becomes ACTIVE, the old
  one SUPERSEDED and, unless an overlap grace is configured, REVOKED (reason ``superseded``).
  After the commit the CRL of the old credential's CA is republished (other CAs' CRLs are
  reused; concurrent confirmations coalesce, :mod:`iotrust.services.crl_publication`) and,
  when a broker is configured, installed in it (verified, atomic, reload) and the device's
  live session kicked, so it reconnects once with its new credential and the old one is
  refused from then on.

Refusals are recorded as ``rotation.refused`` events; contacts by dead identities (retired,
revoked, expired, superseded) also as zombie contacts (:mod:`iotrust.services.zombies`).

:func:`sweep` is the periodic upkeep: it expires unused sessions, revokes credentials of
rotations never confirmed and superseded credentials past the grace, and marks lapsed
credentials EXPIRED (never automatically re-onboarding anything). :func:`request_renewal` is the
fleet campaign behind ``iotrust rotate``.

This module does not speak HTTP (see :mod:`iotrust.api.lifecycle`) or decide trust itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from iotrust.adapters.sql.store import Database, Tx
from iotrust.core import pki
from iotrust.core import rotation as rot
from iotrust.core.lifecycle import CredentialState, Device, DeviceState
from iotrust.core.records import Credential
from iotrust.errors import (
    ConflictError,
    InputError,
    IotrustError,
    NotFoundError,
    TrustError,
)
from iotrust.ports import Clock
from iotrust.services import crl_publication, eventlog, faults, zombies
from iotrust.services.credentials import (
    DEFAULT_CREDENTIAL_LIFETIME,
    Issuer,
    revoke_credential,
)
from iotrust.services.domain import Secrets, require_domain, root_ca
from iotrust.services.settings import Settings

__all__ = [
    "ACTOR",
    "CampaignReport",
    "RotationConfig",
    "RotationService",
    "SweepReport",
    "credential_lifetime",
    "request_renewal",
    "sweep",
]

_log = logging.getLogger(__name__)

ACTOR: Final = "rotation@iotrust"
ROTATION_STARTED: Final = "rotation.started"
ROTATION_COMPLETED: Final = "rotation.completed"
ROTATION_CONFIRMED: Final = "rotation.confirmed"
ROTATION_REFUSED: Final = "rotation.refused"
ROTATION_UNCONFIRMED: Final = "rotation.unconfirmed"
ROTATION_REQUESTED: Final = "rotation.requested"
CREDENTIAL_SUPERSEDED: Final = "credential.superseded"
CREDENTIAL_EXPIRED: Final = "credential.expired"
_MAX_SOURCE: Final = 200


def _number(settings: Mapping[str, Any], key: str, default: float, low: float,
            high: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InputError(f"domain setting {key} must be a number in {low}..{high}",
                         reason="invalid_setting")
    return value


@dataclass(frozen=True, slots=True)
class RotationConfig:
    """Rotation settings from the trust domain's settings (all optional).

    ``rotation_renew_fraction`` (renewal due at this fraction of the lifetime, default 2/3),
    ``rotation_overlap_grace_s`` (how long a superseded credential stays valid after the new one
    is confirmed, default 0: revoked at confirmation), ``rotation_confirm_s`` (deadline to
    confirm after complete, default 300), ``rotation_session_ttl_s`` (server nonce lifetime,
    at most 60), ``rotation_kick`` (disconnect the device's live session at confirmation so it
    reconnects with the new credential, default true).
    """

    renew_fraction: float = rot.DEFAULT_RENEW_FRACTION
    overlap: rot.OverlapPolicy = dataclasses.field(default_factory=rot.OverlapPolicy)
    confirm_s: int = 300
    session_ttl_s: int = rot.MAX_SESSION_TTL_SECONDS
    kick: bool = True

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> RotationConfig:
        """Read and validate the settings."""
        kick = settings.get("rotation_kick", True)
        if not isinstance(kick, bool):
            raise InputError("domain setting rotation_kick must be a boolean",
                             reason="invalid_setting")
        return cls(
            renew_fraction=_number(settings, "rotation_renew_fraction",
                                   rot.DEFAULT_RENEW_FRACTION, 0.01, 1.0),
            overlap=rot.OverlapPolicy(int(_number(settings, "rotation_overlap_grace_s", 0, 0,
                                                  rot.OverlapPolicy.MAX_GRACE_S))),
            confirm_s=int(_number(settings, "rotation_confirm_s", 300, 1, 86_400)),
            session_ttl_s=int(_number(settings, "rotation_session_ttl_s",
                                      rot.MAX_SESSION_TTL_SECONDS, 1,
                                      rot.MAX_SESSION_TTL_SECONDS)),
            kick=kick)


_LIFETIMES: dict[tuple[str, str], timedelta] = {}


def credential_lifetime(tx: Tx, device: Device, now: datetime) -> timedelta:
    """The credential lifetime of ``device``: its model's hardware profile, else 30 days."""
    if device.model is None:
        return DEFAULT_CREDENTIAL_LIFETIME
    from iotrust.services.hardware import defaults_of  # noqa: PLC0415 - YAML only when needed

    model = tx.get_model(device.model)
    key = (model.name, hashlib.sha256((model.hardware_profile or "").encode()).hexdigest()
           + str(model.credential_lifetime_s) + str(now.year))
    lifetime = _LIFETIMES.get(key)
    if lifetime is None:
        lifetime = timedelta(seconds=defaults_of(model, now_year=now.year).credential_lifetime_s)
        _LIFETIMES[key] = lifetime
    return lifetime


@dataclass(slots=True)
class _Seen:
    step: str
    source: str
    device_id: str | None = None
    session_id: str | None = None
    completed: bool = False  # this request moved the session to completed


def _source(source: str) -> str:
    if not isinstance(source, str):
        raise TypeError("source is the client's address as a string")
    return (source or "unknown")[:_MAX_SOURCE]


def _certificate(cred: Credential) -> x509.Certificate:
    return pki.load_certificate(cred.certificate_pem.encode())


def _credential(tx: Tx, serial: str) -> Credential | None:
    try:
        return tx.get_credential(serial)
    except NotFoundError:
        return None


def _device(tx: Tx, device_id: str) -> Device | None:
    try:
        return tx.get_device(device_id)
    except NotFoundError:
        return None


def _check_live(device: Device | None, cred: Credential | None, device_id: str,
                now: datetime) -> None:
    rot.check_current_credential(
        device_id=device_id, device_state=device.state if device else None,
        credential_device_id=cred.device_id if cred else None,
        credential_state=cred.state if cred else None,
        not_before=cred.not_before if cred else None, not_after=cred.not_after if cred else None,
        now=now)


class RotationService:
    """The three rotation steps over one registry; stateless between requests.

    ``broker`` opens the configured broker control (or returns ``None``) when a confirmation
    must take effect there; ``random`` draws session ids and nonces.
    """

    def __init__(self, db: Database, clock: Clock, settings: Settings, secrets: Secrets, *,
                 random: Callable[[int], bytes] = os.urandom, issuer: Issuer | None = None,
                 broker: Callable[[], Any] | None = None, publish: bool = True) -> None:
        self._db = db
        self._clock = clock
        self._settings = settings
        self._secrets = secrets
        self._random = random
        self._issuer = issuer or Issuer(secrets, clock)
        self._broker = broker
        self._publish = publish

    # -- steps -------------------------------------------------------------------------------

    def begin(self, body: bytes, *, source: str) -> rot.BeginResponse:
        """``POST /v1/rotation/begin``."""
        seen = _Seen("begin", _source(source))
        with self._refusals(seen):
            response = self._begin(body, seen)
            faults.checkpoint("rotation.begin.committed")
            return response
        raise RuntimeError("unreachable")  # pragma: no cover - _refusals re-raises

    def complete(self, body: bytes, *, source: str) -> rot.CompleteResponse:
        """``POST /v1/rotation/complete``."""
        seen = _Seen("complete", _source(source))
        with self._refusals(seen):
            return self._complete(body, seen)
        raise RuntimeError("unreachable")  # pragma: no cover

    def confirm(self, body: bytes, *, source: str) -> None:
        """``POST /v1/rotation/confirm``; the broker effects run after the commit."""
        seen = _Seen("confirm", _source(source))
        with self._refusals(seen):
            revoked = self._confirm(body, seen)
        if revoked is not None and seen.device_id is not None:
            self.enforce(seen.device_id, revoked={revoked.issuer_ca_id: {revoked.serial_number}})

    # -- begin -------------------------------------------------------------------------------

    def _begin(self, body: bytes, seen: _Seen) -> rot.BeginResponse:
        req = rot.BeginRequest.from_wire(body)
        seen.device_id = req.device_id
        now = self._clock.now()
        with self._db.transaction() as tx:
            config = RotationConfig.from_settings(require_domain(tx).settings)
            device, cred = _device(tx, req.device_id), _credential(tx, req.credential_serial)
            if device is None or cred is None or cred.device_id != req.device_id:
                seen.device_id = None if device is None else req.device_id
                raise rot.refuse(rot.CREDENTIAL_UNKNOWN, "no such credential for this device")
            rot.check_begin(req, certificate=_certificate(cred))  # the holder of that key
            _check_live(device, cred, req.device_id, now)
            new = rot.new_rotation_session(self._random, now, device_id=req.device_id,
                                           credential_serial=req.credential_serial,
                                           source=seen.source, ttl_seconds=config.session_ttl_s)
            tx.add_rotation_session(new.record)
            tx.touch_last_seen(req.device_id, now)
            requested = tx.rotation_requested(req.device_id) is not None
            renew_at = rot.renewal_due_at(cred.not_before, cred.not_after,
                                          config.renew_fraction).replace(microsecond=0)
            eventlog.record(tx, self._clock, ROTATION_STARTED, actor=ACTOR,
                            device_id=req.device_id,
                            data={"session": new.record.id, "credential": req.credential_serial,
                                  "source": seen.source, "renewal_requested": requested})
        return rot.BeginResponse(session_id=new.session_id, server_nonce=new.server_nonce,
                                 expires_at=new.record.expires_at, renew_at=renew_at,
                                 renewal_requested=requested)

    # -- complete ----------------------------------------------------------------------------

    def _complete(self, body: bytes, seen: _Seen) -> rot.CompleteResponse:
        req = rot.CompleteRequest.from_wire(body)
        now = self._clock.now()
        sid = req.session_id.hex()
        with self._db.transaction() as tx:
            config = RotationConfig.from_settings(require_domain(tx).settings)
            session = tx.get_rotation_session(sid)
            if session is not None and session.device_id == req.device_id:
                seen.device_id, seen.session_id = req.device_id, sid
            session = rot.precheck_complete(req, session=session, now=now)
            confirm_by = now.replace(microsecond=0) + timedelta(seconds=config.confirm_s)
            consumed = tx.complete_rotation_session(sid, session.nonce_sha256, now, confirm_by)
        seen.completed = consumed
        faults.checkpoint("rotation.complete.nonce_spent")
        with self._db.transaction() as tx:
            device, cred = _device(tx, req.device_id), _credential(tx, req.credential_serial)
            if cred is None:
                raise rot.refuse(rot.CREDENTIAL_UNKNOWN, "no such credential for this device")
            current = _certificate(cred)
            key = rot.check_complete(req, session=session, now=now, consumed_ok=consumed,
                                     current_certificate=current, known_key=tx.key_seen)
            _check_live(device, cred, req.device_id, now)
            if device is None:
                raise RuntimeError("unreachable: a live credential without its device")
            try:
                issued = self._issuer.issue_for_device(
                    tx, device_id=device.id, csr=req.csr,
                    lifetime=credential_lifetime(tx, device, now), actor=ACTOR)
            except ConflictError as exc:  # the CSR key was recorded concurrently elsewhere
                raise rot.refuse(rot.CLONE_SUSPECTED, "the CSR key was seen before") from exc
            if pki.spki_sha256(issued.certificate.public_key()) != pki.spki_sha256(key):
                raise RuntimeError("the issuer certified another key than the CSR's")
            tx.set_rotation_credential(sid, issued.credential.serial_number)
            tx.touch_last_seen(device.id, now)
            eventlog.record(tx, self._clock, ROTATION_COMPLETED, actor=ACTOR, device_id=device.id,
                            data={"session": sid, "old": cred.serial_number,
                                  "new": issued.credential.serial_number, "ca": issued.ca.id,
                                  "not_after": issued.credential.not_after.isoformat()})
            root = pki.load_certificate(root_ca(tx).certificate_pem.encode())
        faults.checkpoint("rotation.complete.committed")
        ca = pki.load_certificate(issued.ca.certificate_pem.encode())
        return rot.CompleteResponse(
            device_id=device.id, certificate=issued.certificate.public_bytes(Encoding.DER),
            ca_chain=(ca.public_bytes(Encoding.DER), root.public_bytes(Encoding.DER)),
            confirm_by=confirm_by)

    # -- confirm -----------------------------------------------------------------------------

    def _confirm(self, body: bytes, seen: _Seen) -> Credential | None:
        """Confirm; returns the old credential if it was revoked now (overlap 0)."""
        req = rot.ConfirmRequest.from_wire(body)
        now = self._clock.now()
        sid = req.session_id.hex()
        with self._db.transaction() as tx:
            config = RotationConfig.from_settings(require_domain(tx).settings)
            session = tx.get_rotation_session(sid)
            if session is not None and session.device_id == req.device_id:
                seen.device_id, seen.session_id = req.device_id, sid
            new_cred = (_credential(tx, session.new_credential_serial)
                        if session is not None and session.new_credential_serial else None)
            confirmed = (session is not None and session.state == rot.RotationState.COMPLETED
                         and session.device_id == req.device_id
                         and tx.confirm_rotation_session(sid, now))
            rot.check_confirm(req, session=session, now=now, confirmed_ok=confirmed,
                              new_certificate=_certificate(new_cred) if new_cred else None)
            if session is None or new_cred is None:
                raise RuntimeError("check_confirm accepted a session without a credential")
            device = tx.get_device(req.device_id)
            if device.state is DeviceState.RETIRED:
                raise rot.refuse(rot.RETIRED, "this device is retired")
            try:
                tx.update_credential_state(new_cred.serial_number, CredentialState.ACTIVE,
                                           expected=CredentialState.ISSUED)
            except ConflictError as exc:  # revoked meanwhile (sweep, operator, retirement)
                raise rot.refuse(rot.NONCE_EXPIRED, "the new credential was revoked") from exc
            old = tx.get_credential(session.credential_serial)
            if old.state is CredentialState.REVOKED:
                raise rot.refuse(rot.CREDENTIAL_REVOKED, "the old credential was revoked")
            if old.state is not CredentialState.SUPERSEDED:
                tx.update_credential_state(old.serial_number, CredentialState.SUPERSEDED,
                                           expected=old.state)
            eventlog.record(tx, self._clock, CREDENTIAL_SUPERSEDED, actor=ACTOR,
                            device_id=device.id,
                            data={"serial": old.serial_number, "by": new_cred.serial_number,
                                  "revoke_at": config.overlap.revoke_at(now).isoformat()})
            revoked = config.overlap.immediate and revoke_credential(
                tx, self._clock, old.serial_number, reason="superseded", actor=ACTOR)
            tx.complete_rotation_request(device.id, now)
            tx.touch_last_seen(device.id, now)
            eventlog.record(tx, self._clock, ROTATION_CONFIRMED, actor=ACTOR, device_id=device.id,
                            data={"session": sid, "old": old.serial_number,
                                  "new": new_cred.serial_number, "old_revoked": revoked})
            faults.checkpoint("rotation.confirm.before_commit")
        faults.checkpoint("rotation.confirm.committed")
        return old if revoked else None

    # -- effects -----------------------------------------------------------------------------

    def enforce(self, device_id: str | None, *,
                revoked: Mapping[str, Collection[str]] | None = None) -> None:
        """Publish the CRL; with a broker, install it (verified, atomic, reload) and kick.

        ``revoked`` (CA id → serials) limits re-signing to those CAs and lets a concurrent
        publication that already lists them stand for this one; ``None`` re-signs every CA.
        """
        if not self._publish:
            return
        broker = self._broker() if self._broker is not None else None
        try:
            publish_and_install(self._db, self._settings, self._secrets, self._clock, broker,
                                actor=ACTOR, revoked=revoked)
            if broker is not None and device_id is not None and self._kick_enabled():
                broker.kick(device_id)
        except (IotrustError, OSError) as exc:  # the registry decision stands; next sweep retries
            _log.warning("applying a rotation to the CRL/broker failed: %s", exc)
        finally:
            if broker is not None:
                broker.close()

    def _kick_enabled(self) -> bool:
        with self._db.transaction(readonly=True) as tx:
            return RotationConfig.from_settings(require_domain(tx).settings).kick

    # -- refusals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _refusals(self, seen: _Seen) -> Iterator[None]:
        try:
            yield
        except (TrustError, InputError) as exc:
            self._refused(seen, exc)
            raise

    def _refused(self, seen: _Seen, exc: IotrustError) -> None:
        try:
            with self._db.transaction() as tx:
                if seen.session_id is not None and seen.completed:
                    tx.end_rotation_session(seen.session_id, "refused", expected="completed")
                eventlog.record(tx, self._clock, ROTATION_REFUSED, actor=ACTOR,
                                device_id=seen.device_id, reason=exc.reason,
                                data={"step": seen.step, "source": seen.source,
                                      "session": seen.session_id,
                                      "detail": exc.message[:200]})
                if exc.reason in rot.ZOMBIE_REASONS and seen.device_id is not None:
                    zombies.record_contact_tx(tx, self._clock, identity=seen.device_id,
                                              where="rotation", source=seen.source,
                                              reason=exc.reason, actor=ACTOR)
        except IotrustError as failure:  # the device still gets its refusal
            _log.warning("recording a rotation refusal failed: %s", failure.reason)


def publish_and_install(db: Database, settings: Settings, secrets: Secrets, clock: Clock,
                        broker: Any, *, actor: str,  # noqa: ANN401 - BrokerControl
                        revoked: Mapping[str, Collection[str]] | None = None) -> None:
    """Publish the CRLs ``revoked`` changed (``None``: all); with a broker, install the bundle.

    See :func:`iotrust.services.crl_publication.publish_and_install` (only the CAs that changed
    are re-signed; a request already covered by a concurrent publication signs nothing).
    """
    crl_publication.publish_and_install(db, settings, secrets, clock, broker, actor=actor,
                                        revoked=revoked,
                                        checkpoint="rotation.enforce.published")


# -- the upkeep sweep -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep did."""

    sessions_expired: int
    unconfirmed_revoked: int
    superseded_revoked: int
    credentials_expired: int

    @property
    def revoked(self) -> int:
        """How many credentials this sweep revoked."""
        return self.unconfirmed_revoked + self.superseded_revoked


def sweep(db: Database, clock: Clock, settings: Settings, secrets: Secrets, *,
          broker: Any = None, actor: str = ACTOR, limit: int = 1000) -> SweepReport:  # noqa: ANN401
    """Expire rotation sessions, revoke what must die, mark lapsed credentials EXPIRED.

    * open sessions past their nonce's expiry → expired;
    * completed rotations past their confirmation deadline → expired, their new credential
      revoked (the device keeps its current one);
    * superseded credentials past the overlap grace → revoked (reason ``superseded``);
    * issued, active or superseded credentials past ``not_after`` → EXPIRED with a
      ``credential.expired`` event. Expiry never re-onboards anything: the way back is the
      operator's ``iotrust devices reset`` (see ``docs/operations.md``).

    Republishes the CRL (and installs it in ``broker``) when anything was revoked. Safe to run
    in several workers at once: every change is a conditional update.
    """
    now = clock.now()
    with db.transaction() as tx:
        domain = tx.get_domain()
        if domain is None:
            return SweepReport(0, 0, 0, 0)
        config = RotationConfig.from_settings(domain.settings)
        expired_sessions = tx.expire_open_rotations(now)
        overdue = tx.unconfirmed_rotations(now, limit=min(limit, 10_000))
        superseded = tx.superseded_due(now - timedelta(seconds=config.overlap.grace_s)
                                       + timedelta(microseconds=1), limit=min(limit, 10_000))
    unconfirmed = superseded_revoked = lapsed_count = 0
    for session in overdue:
        with db.transaction() as tx:
            if not tx.end_rotation_session(session.id, "expired", expected="completed"):
                continue
            revoked = False
            if session.new_credential_serial is not None:
                revoked = revoke_credential(tx, clock, session.new_credential_serial,
                                            reason="unspecified", actor=actor)
            unconfirmed += revoked
            eventlog.record(tx, clock, ROTATION_UNCONFIRMED, actor=actor,
                            device_id=session.device_id, reason="unconfirmed",
                            data={"session": session.id,
                                  "credential": session.new_credential_serial,
                                  "revoked": revoked})
    for session in superseded:
        with db.transaction() as tx:
            cred = tx.get_credential(session.credential_serial)
            if cred.state is CredentialState.SUPERSEDED:
                superseded_revoked += revoke_credential(tx, clock, cred.serial_number,
                                                        reason="superseded", actor=actor)
    with db.transaction() as tx:
        for cred in tx.lapsed_credentials(now, limit=min(limit, 10_000)):
            try:
                tx.update_credential_state(cred.serial_number, CredentialState.EXPIRED,
                                           expected=cred.state)
            except ConflictError:
                continue
            lapsed_count += 1
            eventlog.record(tx, clock, CREDENTIAL_EXPIRED, actor=actor, device_id=cred.device_id,
                            reason="expired",
                            data={"serial": cred.serial_number, "was": cred.state.value,
                                  "not_after": cred.not_after.isoformat()})
    report = SweepReport(sessions_expired=expired_sessions, unconfirmed_revoked=unconfirmed,
                         superseded_revoked=superseded_revoked,
                         credentials_expired=lapsed_count)
    if report.revoked:
        publish_and_install(db, settings, secrets, clock, broker, actor=actor)
    return report


# -- campaigns ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CampaignReport:
    """A renewal campaign: its id and how many devices it asked to renew."""

    campaign: str
    requested: int


def select_targets(db: Database, *, model: str | None, group: str | None,
             all_devices: bool) -> list[str]:
    if sum((model is not None, group is not None, all_devices)) != 1:
        raise InputError("choose exactly one of --model, --group or --all",
                         reason="invalid_selection")
    live = (DeviceState.ACTIVE, DeviceState.QUARANTINED)
    with db.transaction(readonly=True) as tx:
        if group is not None:
            tx.get_group(group)
            members = tx.group_members(group)
            return [d for d in members if tx.get_device(d).state in live]
        if model is not None:
            tx.get_model(model)
        out: list[str] = []
        after: str | None = None
        while True:
            page = tx.list_devices(model=model, limit=10_000, after_id=after)
            out += [d.id for d in page if d.state in live]
            if len(page) < 10_000:  # noqa: PLR2004
                return out
            after = page[-1].id


def request_renewal(db: Database, clock: Clock, *, actor: str, model: str | None = None,
                    group: str | None = None, all_devices: bool = False,
                    rate: float | None = None, progress: Callable[[int], None] | None = None,
                    sleep: Callable[[float], None] = time.sleep) -> CampaignReport:
    """Ask the selected devices (ACTIVE or QUARANTINED) to renew early, ``rate`` per second.

    Devices see the request in their next ``begin`` (``renewal_requested``) and renew then; the
    rate bounds how many are asked per second, so renewals spread out instead of arriving at
    once. ``progress`` is called with the number marked in each batch.
    """
    if rate is not None and not 0 < rate <= 1_000_000:  # noqa: PLR2004
        raise InputError("the rate must be in (0, 1000000] devices per second",
                         reason="invalid_rate")
    targets = select_targets(db, model=model, group=group, all_devices=all_devices)
    campaign = f"rot-{clock.now().strftime('%Y%m%d%H%M%S')}-{os.urandom(3).hex()}"
    batch = max(1, int(rate)) if rate is not None else 1000
    interval = batch / rate if rate is not None else 0.0
    started = time.monotonic()
    for i in range(0, len(targets), batch):
        chunk = targets[i:i + batch]
        with db.transaction() as tx:
            tx.request_rotations(chunk, campaign, clock.now())
        if progress is not None:
            progress(len(chunk))
        if interval and i + batch < len(targets):
            wait = started + interval * (i // batch + 1) - time.monotonic()
            if wait > 0:
                sleep(wait)
    with db.transaction() as tx:
        eventlog.record(tx, clock, ROTATION_REQUESTED, actor=actor,
                        data={"campaign": campaign, "devices": len(targets), "model": model,
                              "group": group, "all": all_devices,
                              "rate": None if rate is None else str(rate)})
    return CampaignReport(campaign=campaign, requested=len(targets))


def campaign_progress(db: Database, campaign: str | None = None) -> dict[str, int]:
    """``{"requested": n, "renewed": m, "pending": n - m}`` for a campaign (or all)."""
    with db.transaction(readonly=True) as tx:
        total, done = tx.rotation_progress(campaign)
    return {"requested": total, "renewed": done, "pending": total - done}
