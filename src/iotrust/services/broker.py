"""Keeping the MQTT broker in step with the registry, and containment with live effect.

* :func:`configure` (``iotrust broker config``/``run``): the broker's service certificate
  (``broker@iotrust``, issued by the active issuing CA), the trusted CAs, a verified CRL, the ACL
  generated from every device's effective policy. The registry is the source of truth: all of it
  is regenerated on every start.
* :func:`quarantine`, :func:`release`, :func:`retire`: the lifecycle transition and its event
  commit first (one transaction, :mod:`services.devices`); then the broker effects run (rules,
  reload, kick, and for retirement then the CRL and a second kick) and their times are
  measured and returned.
* :func:`refresh_crl_if_due`: re-sign the CRL well before its nextUpdate (a CRL past it locks out
  every device).

Services reach the broker only through :class:`~iotrust.ports.BrokerControl`; which broker runs
(the embedded Mosquitto here) is chosen by :func:`open_broker`. This module does not parse MQTT
or run the broker process itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotrust.adapters.mqtt.mosquitto import (
    BrokerLayout,
    BrokerSettings,
    MosquittoBroker,
    split_crls,
    verify_crl_bundle,
)
from iotrust.adapters.sql.store import Database
from iotrust.core import pki
from iotrust.core.lifecycle import Device, RetirementReason
from iotrust.core.policy import DEFAULT_POLICY, Policy, effective_policy, render
from iotrust.errors import BackendError, IotrustError
from iotrust.ports import BrokerControl, Clock, TopicAccess
from iotrust.services import credentials, crl_publication, devices, faults
from iotrust.services import policies as policy_svc
from iotrust.services.credentials import Issuer
from iotrust.services.domain import Secrets, active_issuing_ca
from iotrust.services.settings import Settings

BROKER_SERVICE_NAME = "broker@iotrust"
BROKER_CERT_LIFETIME = timedelta(days=90)
BROKER_CERT_RENEW_BEFORE = timedelta(days=30)
#: Re-sign the CRL when less than this is left (CRLs are published for 7 days).
CRL_REFRESH_THRESHOLD = timedelta(days=3)
#: The placeholder device id the default policy is rendered for (pattern ``%u``).
PLACEHOLDER_DEVICE = "dev-" + "a" * 26
_PAGE = 10_000


def broker_dir(settings: Settings) -> Path:
    """Where the embedded broker's files live: ``DATA/broker``."""
    return settings.data_dir / "broker"


def open_broker(settings: Settings, clock: Clock, **kwargs: Any) -> MosquittoBroker | None:  # noqa: ANN401
    """The broker configured for this data folder, or ``None`` if there is none."""
    root = broker_dir(settings)
    if not (root / "broker.json").exists():
        return None
    return MosquittoBroker.load(root, clock, **kwargs)


def _rules(policy: Policy | None, device_id: str) -> tuple[tuple[str, str], ...] | None:
    if policy is None:
        return None
    return tuple((r.action.value, r.topic) for r in render(policy, device_id))


def default_access() -> TopicAccess:
    """The default policy rendered for the placeholder device id."""
    return TopicAccess(PLACEHOLDER_DEVICE, _rules(DEFAULT_POLICY, PLACEHOLDER_DEVICE))


def _iter_devices(db: Database) -> Iterator[Device]:
    after: str | None = None
    while True:
        with db.transaction(readonly=True) as tx:
            page = tx.list_devices(limit=_PAGE, after_id=after)
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1].id


def access_entries(db: Database) -> list[TopicAccess]:
    """Every device's effective access, from the registry."""
    assigned = policy_svc.resolve_all(db)  # only the devices not on the default policy
    entries = []
    for device in _iter_devices(db):
        policy = effective_policy(device.state, assigned.get(device.id))
        entries.append(TopicAccess(device.id, _rules(policy, device.id)))
    return entries


def sync(db: Database, broker: BrokerControl) -> None:
    """Regenerate the broker's rules from the registry and apply them to live sessions."""
    with broker.exclusive():
        broker.apply_policies(access_entries(db), default=default_access())


def sync_configured(db: Database, settings: Settings, clock: Clock) -> bool:
    """:func:`sync` the data folder's broker, if one is configured (``False`` if none is).

    Raises the broker's ``IotrustError`` when it could not be updated (the change stays stored).
    """
    broker = open_broker(settings, clock)
    if broker is None:
        return False
    try:
        sync(db, broker)
    finally:
        broker.close()
    return True


@dataclass(slots=True)
class Containment:
    """What a containment action did and how long each step took (milliseconds)."""

    device: Device
    timings_ms: dict[str, float] = field(default_factory=dict)
    broker: str = "none"  # none (no broker configured) | applied | not_running

    def as_dict(self) -> dict[str, Any]:
        """For the CLI and the API."""
        return {"device": self.device.id, "state": self.device.state.value,
                "broker": self.broker,
                "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()}}


class _Stopwatch:
    def __init__(self, timings: dict[str, float]) -> None:
        self._timings = timings
        self._start = time.perf_counter()
        self._last = self._start

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self._timings[name] = (now - self._last) * 1000
        self._last = now

    def total(self) -> None:
        self._timings["total"] = (time.perf_counter() - self._start) * 1000


def _effects(result: Containment, watch: _Stopwatch,
             steps: Sequence[tuple[str, Callable[[], None]]]) -> None:
    """Run broker ``steps`` after the commit.

    A stopped broker still gets its files (each step writes before it reloads) and picks them up
    at its next start; there is then no live session to kick.
    """
    result.broker = "applied"
    for name, step in steps:
        if result.broker == "not_running" and name.startswith("kick"):
            continue
        faults.checkpoint("broker.before_" + name)
        try:
            step()
        except BackendError as exc:
            if exc.reason != "broker_not_running":
                raise
            result.broker = "not_running"
        watch.lap(name)
    watch.total()


def quarantine(db: Database, clock: Clock, broker: BrokerControl | None, device_id: str, *,
               actor: str, reason: str = "operator") -> Containment:
    """ACTIVE → QUARANTINED, then: new rules to live sessions (reload), kick the device."""
    return _contain(db, broker, device_id, lambda: devices.quarantine(
        db, clock, device_id, actor=actor, reason=reason))


def release(db: Database, clock: Clock, broker: BrokerControl | None, device_id: str, *,
            actor: str) -> Containment:
    """QUARANTINED → ACTIVE, then: normal rules back (reload), kick so it reconnects with them."""
    return _contain(db, broker, device_id, lambda: devices.release(
        db, clock, device_id, actor=actor))


def _contain(db: Database, broker: BrokerControl | None, device_id: str,
             transition: Callable[[], Device]) -> Containment:
    timings: dict[str, float] = {}
    watch = _Stopwatch(timings)
    result = Containment(device=transition(), timings_ms=timings)
    watch.lap("transition")
    if broker is None:
        watch.total()
        return result
    _effects(result, watch, [
        ("rules", lambda: sync(db, broker)),
        ("kick", lambda: broker.kick(device_id)),
    ])
    return result


def retire(db: Database, settings: Settings, secrets: Secrets, clock: Clock, device_id: str, *,
           broker: BrokerControl | None, reason: RetirementReason, actor: str) -> Containment:
    """Retire (credentials revoked), publish the CRL, install it in the broker, deny, kick.

    What a return with ``broker == "applied"`` promises: the broker has processed the reload of
    a CRL that lists every revoked, unexpired credential of the device (every new handshake with
    them is refused), its rules deny it and its live sessions were disconnected. Only the CRLs
    of the CAs that issued its credentials are re-signed, and none if a concurrent publication
    already lists them (:mod:`iotrust.services.crl_publication`). ``not_running``: the files
    are in place for the broker's next start.
    """
    timings: dict[str, float] = {}
    watch = _Stopwatch(timings)
    result = Containment(device=devices.retire(db, clock, device_id, reason, actor=actor),
                         timings_ms=timings)
    faults.checkpoint("broker.retire.committed")
    watch.lap("transition")
    if broker is None:
        crl_publication.publish_and_install(db, settings, secrets, clock, None, actor=actor,
                                            revoked=crl_publication.revoked_of_devices(
                                                db, clock, [device_id]))
        watch.lap("crl_publish")
        watch.total()
        return result

    revoked = crl_publication.revoked_of_devices(db, clock, [device_id])

    def publish_and_install() -> None:
        # Under the broker's lock (a concurrent retirement cannot install an older CRL); only
        # the device's CAs are re-signed, and not at all if a concurrent publication already
        # lists its serials. Returns once the broker has reloaded it (new handshakes refused).
        crl_publication.publish_and_install(db, settings, secrets, clock, broker, actor=actor,
                                            revoked=revoked,
                                            checkpoint="broker.retire.crl_published",
                                            on_published=lambda: watch.lap("crl_publish"))

    # Cut first, then close the door: the rules (deny) and the kick do not wait for the CRL to
    # be signed; a session it re-opens meanwhile has no rights and is kicked again once the CRL
    # refuses new handshakes.
    _effects(result, watch, [
        ("rules", lambda: sync(db, broker)),
        ("kick", lambda: broker.kick(device_id)),
        ("crl_install", publish_and_install),
        ("kick_again", lambda: broker.kick(device_id)),
    ])
    return result


def _crl_ok(pem: bytes | None, ca_pem: bytes, clock: Clock, threshold: timedelta) -> bool:
    if not pem:
        return False
    try:
        verify_crl_bundle(pem, ca_pem, clock, threshold)
    except IotrustError:
        return False
    return True


def _lists_every_revocation(db: Database, clock: Clock, pem: bytes | None) -> bool:
    """Whether ``pem`` lists every credential the registry says is revoked (live issuing CAs).

    Credentials long expired are not expected (:func:`iotrust.core.pki.expired_entry_cutoff`):
    a CRL signed earlier lists a superset of what one signed now would.

    A process that died between a revocation's commit and the CRL publication (or between the
    per-CA files and the bundle) leaves a CRL that verifies and is fresh but misses serials.
    """
    cutoff = pki.expired_entry_cutoff(clock.now())  # what a CRL signed now would list
    with db.transaction(readonly=True) as tx:
        revoked = {int(serial, 16) for ca in tx.list_cas(role="issuing") if ca.state != "retired"
                   for serial, _, _ in tx.revoked_serials(ca.id, not_after_from=cutoff)}
    if not revoked:
        return True
    if not pem:
        return False
    try:
        listed = {entry.serial_number for crl in split_crls(pem) for entry in crl}
    except IotrustError:
        return False
    return revoked <= listed


def ensure_published_crls(db: Database, settings: Settings, secrets: Secrets, clock: Clock, *,
                          threshold: timedelta = CRL_REFRESH_THRESHOLD) -> bool:
    """Re-sign the published CRLs if they are missing, expiring or miss a revocation.

    Run when the service starts, so a crash between a revocation's commit and its publication
    never leaves ``/v1/crl/...`` stale. Returns whether new CRLs were published.
    """
    published_path = settings.crl_dir / "all.crl.pem"
    published = published_path.read_bytes() if published_path.exists() else None
    if _crl_ok(published, ca_bundle(db), clock, threshold) \
            and _lists_every_revocation(db, clock, published):
        return False
    credentials.publish_crls(db, settings, secrets, clock, actor=BROKER_SERVICE_NAME)
    return True


def refresh_crl_if_due(db: Database, settings: Settings, secrets: Secrets, clock: Clock,
                       broker: MosquittoBroker, *,
                       threshold: timedelta = CRL_REFRESH_THRESHOLD) -> bool:
    """Re-sign the CRLs if the published or installed ones expire within ``threshold``.

    Also re-signs when the published bundle misses a serial the registry says is revoked (the
    registry is the source of truth: a crash after a revocation's commit must not leave it
    unpublished past the next ``iotrust broker config``).

    Installs the published CRL in the broker when it differs from the installed one (and reloads
    a running broker). Returns whether a new CRL was signed.
    """
    published_path = settings.crl_dir / "all.crl.pem"
    ca_pem = broker.layout.ca.read_bytes()
    published = published_path.read_bytes() if published_path.exists() else None
    installed = broker.layout.crl.read_bytes() if broker.layout.crl.exists() else None
    due = not (_crl_ok(published, ca_pem, clock, threshold)
               and _crl_ok(installed, ca_pem, clock, threshold))
    if due and _crl_ok(published, ca_pem, clock, threshold):
        due = False  # only the installed copy is stale: install, no need to re-sign
    if not due and not _lists_every_revocation(db, clock, published):
        due = True  # a revocation committed but never published (the process died between)
    if due:
        credentials.publish_crls(db, settings, secrets, clock, actor=BROKER_SERVICE_NAME)
        published = published_path.read_bytes()
    if published is not None and published != installed:
        broker.write_crl(published)
        if broker.running():
            broker.reload()
    return due


def issue_service_certificate(db: Database, secrets: Secrets, clock: Clock, *, name: str,
                              public_key: object, lifetime: timedelta = BROKER_CERT_LIFETIME,
                              dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = (),
                              ) -> tuple[x509.Certificate, bytes]:
    """A service certificate (``name`` contains ``@``) from the active issuing CA.

    Returns the certificate and the PEM chain (leaf, issuing CA).
    """
    with db.transaction(readonly=True) as tx:
        ca = active_issuing_ca(tx)
    ctx = Issuer(secrets, clock).context(ca)
    now = clock.now()
    cert = ctx.issue_service(service_name=name, public_key=public_key,  # type: ignore[arg-type]
                             serial_number=pki.new_serial_number(os.urandom(20)),
                             not_before=now - timedelta(minutes=5), lifetime=lifetime,
                             dns_names=dns_names, ip_addresses=ip_addresses)
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.certificate_pem.encode()
    return cert, chain


def ca_bundle(db: Database) -> bytes:
    """Every non-retired CA certificate of the trust domain (what the broker trusts)."""
    with db.transaction(readonly=True) as tx:
        return "".join(c.certificate_pem for c in tx.list_cas() if c.state != "retired").encode()


def configure(db: Database, settings: Settings, secrets: Secrets, clock: Clock, *,
              broker_settings: BrokerSettings | None = None, names: Sequence[str] = (),
              renew_certificate: bool = False) -> MosquittoBroker:
    """Write the complete broker configuration for this data folder from the registry.

    ``broker_settings`` replaces the stored settings (ports, bind address, service grants);
    ``None`` keeps them (or uses the defaults). ``names`` are extra DNS names/IP addresses for
    the server certificate (``localhost`` and ``127.0.0.1`` are always in it).
    """
    root = broker_dir(settings)
    if broker_settings is None:
        existing = open_broker(settings, clock)
        broker_settings = existing.settings if existing else BrokerSettings()
    if broker_settings.run_as_root is False and hasattr(os, "geteuid") and os.geteuid() == 0:
        import dataclasses  # noqa: PLC0415

        broker_settings = dataclasses.replace(broker_settings, run_as_root=True)
    broker = MosquittoBroker(BrokerLayout(root), broker_settings, clock)
    broker.prepare()
    current = broker.server_certificate()
    cas = ca_bundle(db)
    public_key = broker.server_public_key(renew=renew_certificate)
    if (renew_certificate or current is None or current.public_key() != public_key
            or current.not_valid_after_utc - clock.now() < BROKER_CERT_RENEW_BEFORE):
        dns = ["localhost", *(n for n in names if not _is_ip(n))]
        ips = ["127.0.0.1", *(n for n in names if _is_ip(n))]
        _, chain = issue_service_certificate(db, secrets, clock, name=BROKER_SERVICE_NAME,
                                             public_key=public_key, dns_names=dns,
                                             ip_addresses=ips)
        broker.install_server_certificate(chain, cas)
    else:
        broker.install_server_certificate(broker.layout.cert.read_bytes(), cas)
    refresh_crl_if_due(db, settings, secrets, clock, broker)
    broker.write_acl(access_entries(db), default=default_access())
    return broker


def _is_ip(name: str) -> bool:
    import ipaddress  # noqa: PLC0415

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
