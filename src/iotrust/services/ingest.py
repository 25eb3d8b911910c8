"""The ingest service: verify every signed device message that reaches the broker (DESIGN.md §7).

``iotrust ingest run`` subscribes to ``devices/#`` as the privileged service identity
``ingest@iotrust`` (its own certificate from the issuing CA; the broker grants it ``read
devices/#`` and nothing else) and, for each message, in one thread:

1. :func:`~iotrust.core.envelope.open_envelope` (the parse boundary: ``malformed_envelope``);
2. the signing credential from the registry (:class:`RegistryView`: a small TTL cache, emptied
   for a device as soon as an event about it — revocation, quarantine, retirement, a policy
   change — appears in the event log, which it polls every second);
3. :meth:`ReplayGuard.admit <iotrust.services.counters.ReplayGuard.admit>` with
   :func:`~iotrust.core.ingest.verify_message` (signature, device state, topic, age, replay
   window; counters persisted by reservation + write-behind);
4. accepted messages go to every :class:`Sink` in batches (one write per batch, every
   ``batch_size`` messages or ``batch_interval_s``); refusals become events.

Events. Refusals are ``ingest.refused`` with the verifier's reason; a message signed by a
revoked or expired credential, or by a retired device, is a ``zombie.contact`` (reason
``revoked``, ``expired`` or ``retired``; also counted in the ``zombies`` table, channel
``ingest``, one contact per event) — only when the signature verifies with that credential,
otherwise it is an ordinary refusal. Events are **aggregated** per (kind, device,
reason): the first refusal is recorded at once (``count`` 1); later ones within
``aggregate_interval_s`` (default 10 s) are counted and recorded as one event with their
``count`` when the interval ends, so a flood of bad messages costs one event per device and
reason per interval. An event names the device only when the signature proved it
(``authenticated: true``); otherwise it names the device whose topic the message arrived on and
carries the unauthenticated ``claimed_device_id`` (and ``signed_by_device`` when the signature
verifies with another device's credential: a gateway signing for a device it relays for).

Delivery to the sinks is at most once: a message accepted just before the process dies, and not
yet written, is lost (its counter is spent). One ingest process per broker (a fixed MQTT client
id and persistent session: messages published while it restarts wait in the broker).

This module does not parse MQTT (:mod:`iotrust.adapters.mqtt.client`) or decide trust (the core).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.adapters.mqtt.client import MqttEndpoint, MqttSession
from iotrust.adapters.mqtt.mosquitto import BrokerSettings
from iotrust.adapters.sql.counters import SqlCounterStore
from iotrust.adapters.sql.store import Database
from iotrust.core import pki
from iotrust.core.envelope import Envelope, open_envelope, verify_signature
from iotrust.core.events import ZOMBIE_CONTACT
from iotrust.core.freshness import ReplayWindow
from iotrust.core.ids import DEVICE_ID_RE
from iotrust.core.ingest import DeviceCredential, FreshnessLimits, VerifiedMessage, verify_message
from iotrust.core.lifecycle import CredentialState, DeviceState
from iotrust.core.policy import Policy
from iotrust.core.records import Credential
from iotrust.errors import BackendError, InputError, IotrustError, NotFoundError, TrustError
from iotrust.ports import Clock, TopicAccess
from iotrust.services import broker as broker_svc
from iotrust.services import eventlog
from iotrust.services import policies as policy_svc
from iotrust.services.counters import ReplayGuard
from iotrust.services.domain import Secrets
from iotrust.services.settings import Settings

log = logging.getLogger(__name__)

INGEST_SERVICE: Final = "ingest@iotrust"
#: A signed message was refused (``reason``: a verifier reason or ``malformed_envelope``).
INGEST_REFUSED: Final = "ingest.refused"
SUBSCRIPTION: Final = "devices/#"
INGEST_GRANT: Final = TopicAccess(INGEST_SERVICE, (("subscribe", SUBSCRIPTION),))
CERT_LIFETIME: Final = timedelta(days=90)
CERT_RENEW_BEFORE: Final = timedelta(days=30)
SESSION_EXPIRY_S: Final = 3600
_MAX_CACHE: Final = 100_000
_MAX_BUCKETS: Final = 100_000
_MAX_TOPIC_IN_EVENT: Final = 200
_OWN_EVENTS: Final = frozenset({INGEST_REFUSED, ZOMBIE_CONTACT})


# -- sinks ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """A verified message and when the ingest service received it."""

    message: VerifiedMessage
    received_at: datetime


class Sink(Protocol):
    """Where accepted messages go. ``write`` gets a batch; raising loses that batch only."""

    name: str

    def write(self, batch: Sequence[Accepted]) -> None:
        """Store one batch."""
        ...

    def close(self) -> None:
        """Release resources (the last batch was already written)."""
        ...


def message_json(item: Accepted) -> dict[str, Any]:
    """The JSON form of an accepted message (payload in base64)."""
    m = item.message
    return {"device_id": m.device_id, "counter": m.counter, "device_time_ms": m.timestamp,
            "topic": m.topic, "content_type": m.content_type,
            "payload_b64": base64.b64encode(m.payload).decode("ascii"),
            "credential_serial": m.credential_serial, "device_state": m.device_state.value,
            "received_at": item.received_at.isoformat()}


class JsonlSink:
    """Appends one JSON object per message to a file (flushed and fsynced per batch)."""

    name = "jsonl"

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot open the JSONL sink {str(path)!r}: {exc.strerror}",
                             reason="sink_unusable") from None
        self.path = path

    def write(self, batch: Sequence[Accepted]) -> None:
        """Append the batch."""
        try:
            self._file.write("".join(json.dumps(message_json(a), separators=(",", ":")) + "\n"
                                     for a in batch))
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise BackendError(f"cannot write the JSONL sink: {exc.strerror}",
                               reason="sink_failed") from None

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class DatabaseSink:
    """Inserts each batch into ``ingested_messages`` (one transaction per batch)."""

    name = "db"

    def __init__(self, db: Database) -> None:
        self._db = db

    def write(self, batch: Sequence[Accepted]) -> None:
        """Insert the batch."""
        with self._db.transaction() as tx:
            tx.add_ingested_messages([(a.message, a.received_at) for a in batch])

    def close(self) -> None:
        """Nothing to release (the database belongs to the caller)."""


# -- the registry as ingest sees it ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device's state and assigned policy (``state`` None: unknown device)."""

    state: DeviceState | None
    policy: Policy | None


def _credential(c: Credential) -> DeviceCredential | None:
    if c.device_id is None:  # a service certificate never signs device messages
        return None
    key = pki.load_certificate(c.certificate_pem.encode()).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return None
    return DeviceCredential(serial=c.serial_number, device_id=c.device_id, public_key=key,
                            state=c.state, not_before=c.not_before, not_after=c.not_after)


class RegistryView:
    """Credentials and device states from the registry, cached for ``ttl_s`` seconds.

    :meth:`poll_changes` reads the event log since the last poll and drops the cache entries of
    every device an event names (revocation, quarantine, release, retirement, group changes);
    an event naming no device (a policy changed) empties the device cache.
    """

    def __init__(self, db: Database, *, ttl_s: float = 5.0, poll_interval_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._ttl = ttl_s
        self._poll_interval = poll_interval_s
        self._mono = monotonic
        self._credentials: dict[str, tuple[float, DeviceCredential | None]] = {}
        self._devices: dict[str, tuple[float, DeviceView]] = {}
        with db.transaction(readonly=True) as tx:
            head = tx.event_head()
        self._last_seq = head.seq if head else 0
        self._last_poll = monotonic()

    def credential(self, serial: str) -> DeviceCredential | None:
        """The credential with this serial (any state), or ``None``."""
        now = self._mono()
        hit = self._credentials.get(serial)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        found: DeviceCredential | None = None
        with self._db.transaction(readonly=True) as tx:
            try:
                c = tx.get_credential(serial)
            except NotFoundError:
                c = None
        if c is not None:
            found = _credential(c)
        if len(self._credentials) >= _MAX_CACHE:
            self._credentials.clear()
        self._credentials[serial] = (now, found)
        return found

    def device(self, device_id: str) -> DeviceView:
        """The device's state and assigned policy."""
        now = self._mono()
        hit = self._devices.get(device_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        try:
            with self._db.transaction(readonly=True) as tx:
                state = tx.get_device(device_id).state
            view = DeviceView(state, policy_svc.resolve(self._db, device_id))
        except NotFoundError:
            view = DeviceView(None, None)
        if len(self._devices) >= _MAX_CACHE:
            self._devices.clear()
        self._devices[device_id] = (now, view)
        return view

    def invalidate(self, device_id: str | None) -> None:
        """Forget one device (its state and credentials), or everything (``None``)."""
        if device_id is None:
            self._devices.clear()
            self._credentials.clear()
            return
        self._devices.pop(device_id, None)
        for serial, (_, cred) in list(self._credentials.items()):
            if cred is None or cred.device_id == device_id:
                self._credentials.pop(serial, None)

    def poll_changes(self, *, force: bool = False) -> int:
        """Invalidate what new events touch (at most every ``poll_interval_s``); how many."""
        now = self._mono()
        if not force and now - self._last_poll < self._poll_interval:
            return 0
        self._last_poll = now
        seen = 0
        with self._db.transaction(readonly=True) as tx:
            for row in tx.iter_events(after_seq=self._last_seq):
                self._last_seq = row.seq
                if row.kind in _OWN_EVENTS:
                    continue
                seen += 1
                self.invalidate(row.device_id)
        return seen


# -- aggregated refusal events --------------------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    opened: float
    pending: int = 0
    data: dict[str, Any] = field(default_factory=dict)


EventWriter = Callable[[str, str | None, str, Mapping[str, Any]], None]


class RefusalAggregator:
    """One event for the first refusal of a (kind, device, reason), then one per interval."""

    def __init__(self, write: EventWriter, *, interval_s: float = 10.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise InputError("the aggregation interval is positive", reason="invalid_interval")
        self._write = write
        self._interval = interval_s
        self._mono = monotonic
        self._buckets: dict[tuple[str, str | None, str], _Bucket] = {}
        self.events_written = 0

    def refused(self, kind: str, device_id: str | None, reason: str,
                data: Mapping[str, Any]) -> None:
        """Count one refusal; write an event now if it is the first of its interval."""
        key = (kind, device_id, reason)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self.flush_all()
            self._buckets[key] = _Bucket(self._mono())
            self._emit(key, 1, 0.0, data)
            return
        bucket.pending += 1
        bucket.data = dict(data)

    def tick(self) -> None:
        """Write the counts of every interval that has ended; forget quiet keys."""
        now = self._mono()
        for key, bucket in list(self._buckets.items()):
            if now - bucket.opened < self._interval:
                continue
            if bucket.pending:
                self._emit(key, bucket.pending, now - bucket.opened, bucket.data)
                self._buckets[key] = _Bucket(now)
            else:
                del self._buckets[key]

    def flush_all(self) -> None:
        """Write every pending count now (shutdown)."""
        now = self._mono()
        for key, bucket in self._buckets.items():
            if bucket.pending:
                self._emit(key, bucket.pending, now - bucket.opened, bucket.data)
        self._buckets.clear()

    def _emit(self, key: tuple[str, str | None, str], count: int, window: float,
              data: Mapping[str, Any]) -> None:
        kind, device_id, reason = key
        self._write(kind, device_id, reason,
                    {**data, "count": count, "window_ms": round(window * 1000)})
        self.events_written += 1


# -- the service ----------------------------------------------------------------------------------


@dataclass(slots=True)
class IngestStats:
    """What the service did so far."""

    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    zombies: int = 0
    batches: int = 0
    sink_failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        """For the CLI."""
        return {"accepted": self.accepted, "refused": dict(sorted(self.refused.items())),
                "refused_total": sum(self.refused.values()), "zombie_contacts": self.zombies,
                "batches": self.batches, "sink_failures": self.sink_failures}


def _topic_device(topic: str) -> str | None:
    parts = topic.split("/", 2)
    if len(parts) >= 2 and parts[0] == "devices" and DEVICE_ID_RE.fullmatch(parts[1]):  # noqa: PLR2004
        return parts[1]
    return None


def _signed_by(env: Envelope, cred: DeviceCredential | None) -> bool:
    if cred is None:
        return False
    try:
        verify_signature(env, cred.public_key)
    except TrustError:
        return False
    return True


class IngestService:
    """Verifies messages one at a time (:meth:`handle`), batches sinks, aggregates events."""

    def __init__(self, db: Database, clock: Clock, sinks: Sequence[Sink], *,
                 guard: ReplayGuard | None = None, limits: FreshnessLimits | None = None,
                 registry: RegistryView | None = None, aggregate_interval_s: float = 10.0,
                 batch_size: int = 500, batch_interval_s: float = 0.2,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._clock = clock
        self._sinks = tuple(sinks)
        self._guard = guard or ReplayGuard(SqlCounterStore(db), clock)
        self._limits = limits or FreshnessLimits()
        self.registry = registry or RegistryView(db, monotonic=monotonic)
        self.events = RefusalAggregator(self._write_event, interval_s=aggregate_interval_s,
                                        monotonic=monotonic)
        self._batch: list[Accepted] = []
        self._batch_size = batch_size
        self._batch_interval = batch_interval_s
        self._mono = monotonic
        self._batch_opened = monotonic()
        self.stats = IngestStats()

    # -- one message --------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> VerifiedMessage | None:
        """Decide one message as it arrived on ``topic``; the accepted message, or ``None``."""
        now = self._clock.now()
        try:
            env = open_envelope(payload)
        except InputError as exc:
            self._refuse(INGEST_REFUSED, _topic_device(topic), exc.reason,
                         {"topic": topic[:_MAX_TOPIC_IN_EVENT], "authenticated": False})
            return None
        cred = self.registry.credential(env.credential_serial)
        if cred is None or cred.device_id != env.device_id or not cred.usable_at(now):
            self._unusable_credential(env, cred, topic, now)
            return None
        view = self.registry.device(env.device_id)

        def decide(window: ReplayWindow) -> VerifiedMessage:
            return verify_message(env, arrived_topic=topic, now=now,
                                  credential_lookup=lambda _s: cred, device_state=view.state,
                                  window=window, limits=self._limits, policy=view.policy)

        try:
            message = self._guard.admit(env.device_id, decide)
        except TrustError as exc:
            reason = exc.reason
            if reason == "device_not_active" and view.state is DeviceState.RETIRED:
                self._zombie(env, topic, "retired", reason)
            else:
                authentic = reason != "signature_invalid"
                self._refuse(INGEST_REFUSED,
                             env.device_id if authentic else _topic_device(topic), reason,
                             self._data(env, topic, authenticated=authentic))
            return None
        except BackendError as exc:  # the reservation could not be written: not accepted
            self._count(exc.reason)
            log.warning("message of %s not accepted: %s", env.device_id, exc.reason)
            return None
        self.stats.accepted += 1
        self._batch.append(Accepted(message, now))
        if len(self._batch) >= self._batch_size:
            self.flush_sinks()
        return message

    def _data(self, env: Envelope, topic: str, *, authenticated: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"topic": topic[:_MAX_TOPIC_IN_EVENT],
                                "authenticated": authenticated,
                                "credential_serial": env.credential_serial[:64]}
        if not authenticated:
            data["claimed_device_id"] = env.device_id
        return data

    def _unusable_credential(self, env: Envelope, cred: DeviceCredential | None, topic: str,
                             now: datetime) -> None:
        if cred is not None and cred.device_id == env.device_id and _signed_by(env, cred):
            if cred.state is CredentialState.REVOKED:
                self._zombie(env, topic, "revoked", "unknown_credential")
                return
            if cred.state is CredentialState.EXPIRED or now > cred.not_after:
                self._zombie(env, topic, "expired", "unknown_credential")
                return
        data = self._data(env, topic, authenticated=False)
        if cred is not None and cred.device_id != env.device_id and _signed_by(env, cred):
            data["signed_by_device"] = cred.device_id
        self._refuse(INGEST_REFUSED, _topic_device(topic), "unknown_credential", data)

    def _zombie(self, env: Envelope, topic: str, why: str, refusal: str) -> None:
        self.stats.zombies += 1
        data = {**self._data(env, topic, authenticated=True), "channel": "ingest",
                "refusal": refusal}
        self._count(refusal)
        self.events.refused(ZOMBIE_CONTACT, env.device_id, why, data)

    def _count(self, reason: str) -> None:
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1

    def _refuse(self, kind: str, device_id: str | None, reason: str,
                data: Mapping[str, Any]) -> None:
        self._count(reason)
        self.events.refused(kind, device_id, reason, data)

    def _write_event(self, kind: str, device_id: str | None, reason: str,
                     data: Mapping[str, Any]) -> None:
        try:
            with self._db.transaction() as tx:
                if kind == ZOMBIE_CONTACT and device_id is not None:
                    # the zombies table (``iotrust zombies``) counts one contact per event;
                    # the event's ``count`` says how many messages it stands for
                    tx.record_zombie(identity=device_id, where="ingest", device_id=device_id,
                                     at=self._clock.now(), source=str(data.get("topic", "")),
                                     reason=reason)
                eventlog.record(tx, self._clock, kind, actor=INGEST_SERVICE, reason=reason,
                                device_id=device_id, data=data)
        except IotrustError as exc:  # the log is down: keep verifying, say so
            log.warning("could not record %s for %s: %s", kind, device_id, exc.reason)

    # -- periodic work --------------------------------------------------------------------------

    def flush_sinks(self) -> int:
        """Write the pending batch to every sink; how many messages."""
        batch, self._batch = self._batch, []
        self._batch_opened = self._mono()
        if not batch:
            return 0
        for sink in self._sinks:
            try:
                sink.write(batch)
            except IotrustError as exc:
                self.stats.sink_failures += 1
                log.warning("sink %s lost %d messages: %s", sink.name, len(batch), exc.reason)
        self.stats.batches += 1
        return len(batch)

    def tick(self) -> None:
        """Due work: the sink batch, counter write-behind, event summaries, cache invalidation."""
        if self._batch and self._mono() - self._batch_opened >= self._batch_interval:
            self.flush_sinks()
        self._guard.maybe_flush()
        self.events.tick()
        self.registry.poll_changes()

    def close(self) -> None:
        """Clean shutdown: sinks, counters (exact windows), pending event counts."""
        self.flush_sinks()
        self._guard.close()
        self.events.flush_all()
        for sink in self._sinks:
            sink.close()


# -- running against a broker ---------------------------------------------------------------------


def run(service: IngestService, endpoint: MqttEndpoint, stop: threading.Event, *,
        client_id: str = INGEST_SERVICE, max_messages: int | None = None,
        on_ready: Callable[[], None] | None = None, queue_size: int = 10_000) -> IngestStats:
    """Subscribe to ``devices/#`` and handle messages until ``stop`` is set (then close).

    The paho network thread only queues (a full queue holds it back: backpressure on the
    broker); this thread verifies, so one writer owns every replay window.
    """
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=queue_size)
    session = MqttSession(endpoint, client_id=client_id, on_message=lambda t, p: inbox.put((t, p)),
                          subscriptions=(SUBSCRIPTION,), clean_start=False,
                          session_expiry_s=SESSION_EXPIRY_S)
    handled = 0
    try:
        session.connect()
        if on_ready is not None:
            on_ready()
        while not stop.is_set():
            try:
                topic, payload = inbox.get(timeout=0.05)
            except queue.Empty:
                service.tick()
                continue
            service.handle(topic, payload)
            handled += 1
            service.tick()
            if max_messages is not None and handled >= max_messages:
                break
    finally:
        session.close()
        while True:  # what was already received is still decided
            try:
                topic, payload = inbox.get_nowait()
            except queue.Empty:
                break
            service.handle(topic, payload)
        service.close()
    return service.stats


# -- identity and broker grant (the CLI's setup) --------------------------------------------------


def ingest_dir(settings: Settings) -> Path:
    """Where the ingest service keeps its key, certificate and CA bundle: ``DATA/ingest``."""
    return settings.data_dir / "ingest"


def ensure_identity(db: Database, settings: Settings, secrets: Secrets, clock: Clock, *,
                    renew: bool = False) -> tuple[Path, Path, Path]:
    """The service's key, certificate chain and CA bundle files (issued or renewed if due)."""
    root = ingest_dir(settings)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path, ca_path = root / "ingest.key.pem", root / "ingest.crt.pem", root / "ca.pem"
    if renew and key_path.exists():
        key_path.unlink()  # a renewal makes a new key too
    key = DeviceFileKey.load(key_path) if key_path.exists() else DeviceFileKey.generate(key_path)
    due = renew or not cert_path.exists()
    if not due:
        cert = pki.load_certificates(cert_path.read_bytes())[0]
        due = (cert.public_key() != key.public_key
               or cert.not_valid_after_utc - clock.now() < CERT_RENEW_BEFORE)
    if due:
        _, chain = broker_svc.issue_service_certificate(db, secrets, clock, name=INGEST_SERVICE,
                                                        public_key=key.public_key,
                                                        lifetime=CERT_LIFETIME)
        cert_path.write_bytes(chain)
    ca_path.write_bytes(broker_svc.ca_bundle(db))
    return key_path, cert_path, ca_path


def ensure_broker_grant(db: Database, settings: Settings, secrets: Secrets, clock: Clock) -> bool:
    """Make the embedded broker grant ``ingest@iotrust`` ``read devices/#``; True if changed."""
    broker = broker_svc.open_broker(settings, clock)
    if broker is None:
        raise NotFoundError("no broker is configured here: run `iotrust broker config`",
                            reason="broker_not_configured")
    try:
        if any(s.username == INGEST_SERVICE and s.rules == INGEST_GRANT.rules
               for s in broker.settings.services):
            return False
        others = tuple(s for s in broker.settings.services if s.username != INGEST_SERVICE)
        current = broker.settings
        new = BrokerSettings(bind=current.bind, port=current.port, admin_port=current.admin_port,
                             mosquitto=current.mosquitto, plugin=current.plugin,
                             run_as_root=current.run_as_root, log_all=current.log_all,
                             services=(*others, INGEST_GRANT))
        configured = broker_svc.configure(db, settings, secrets, clock, broker_settings=new)
        try:
            if configured.running():
                configured.reload()
        finally:
            configured.close()
        return True
    finally:
        broker.close()


def broker_endpoint(settings: Settings, clock: Clock, files: tuple[Path, Path, Path], *,
                    host: str | None = None, port: int | None = None) -> MqttEndpoint:
    """The device listener of the embedded broker (or ``host``/``port``) for this identity."""
    key_path, cert_path, ca_path = files
    if host is None or port is None:
        broker = broker_svc.open_broker(settings, clock)
        if broker is None:
            raise NotFoundError("no broker is configured here: give --host and --port",
                                reason="broker_not_configured")
        bind = broker.settings.bind
        host = host or ("127.0.0.1" if bind in {"0.0.0.0", "::", "localhost"} else bind)  # noqa: S104
        port = port or broker.settings.port
    return MqttEndpoint(host=host, port=port, ca_file=ca_path, cert_file=cert_path,
                        key_file=key_path)
