"""A real Mosquitto for integration tests and the benchmark, configured by iotrust itself.

::

    tb = build_testbed(tmp_path, devices=3)          # trust domain + ACTIVE devices with certs
    with tb.running() as broker:                     # `iotrust broker config` + mosquitto
        c = tb.client(tb.devices[0])                 # paho v2, MQTT 5, mTLS
        assert c.connect()
        assert c.publish(f"devices/{c.name}/telemetry") == 0

The trust domain is made by the services in a temporary folder; devices are added to the
registry as ACTIVE with an operational certificate issued by iotrust (the onboarding protocol has
its own tests). A subscriber service identity ``ingest@iotrust`` may read ``devices/#``. Without
a ``mosquitto`` binary the tests skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion
from tests.conftest import missing_component
from tests.integration.fleet import ACTOR, OWNER, Fleet, build_fleet

from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.adapters.mqtt.mosquitto import (
    BrokerSettings,
    MosquittoBroker,
    MosquittoProcess,
    find_dynsec_plugin,
    find_mosquitto,
    free_port,
)
from iotrust.adapters.sql.store import Database
from iotrust.core import pki
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import Device, DeviceState
from iotrust.core.records import Manufacturer
from iotrust.ports import Clock, SystemClock, TopicAccess
from iotrust.services import broker as broker_svc
from iotrust.services.credentials import Issuer

INGEST = "ingest@iotrust"
MAKER = "testmaker"
NOT_AUTHORIZED = 0x87


def require_mosquitto() -> None:
    """Skip locally / fail under CI when mosquitto or its dynsec plugin is missing."""
    if find_mosquitto() is None:
        missing_component("mosquitto")
    if find_dynsec_plugin() is None:
        missing_component("mosquitto dynamic-security plugin")


@dataclass(frozen=True, slots=True)
class Identity:
    """A client identity: name (certificate CN) and its key/certificate files."""

    name: str
    cert: Path
    key: Path


@dataclass(slots=True)
class Testbed:
    """A trust domain with devices and (when running) its broker."""

    __test__ = False

    fleet: Fleet
    devices: list[Identity]
    ingest: Identity
    clock: Clock
    broker: MosquittoBroker | None = None
    process: MosquittoProcess | None = None
    clients: list[Client] = field(default_factory=list)

    @property
    def settings(self) -> Any:
        return self.fleet.settings

    def db(self) -> Database:
        return self.fleet.open_db()

    @contextmanager
    def running(self, *, log_all: bool = False) -> Iterator[MosquittoBroker]:
        """Configure the broker from the registry and run it; stop it and every client after."""
        db = self.db()
        try:
            settings = BrokerSettings(
                port=free_port(), log_all=log_all,
                services=(TopicAccess(INGEST, (("subscribe", "devices/#"),)),))
            self.broker = broker_svc.configure(db, self.settings, self.fleet.secrets, self.clock,
                                               broker_settings=settings)
        finally:
            db.close()
        self.process = MosquittoProcess(self.broker)
        self.process.start()
        try:
            yield self.broker
        finally:
            for c in self.clients:
                c.close()
            self.clients.clear()
            self.process.stop()

    @property
    def port(self) -> int:
        assert self.broker is not None
        return self.broker.settings.port

    def client(self, ident: Identity | None, *, client_id: str | None = None,
               ca_file: Path | None = None, reconnect: bool = False) -> Client:
        """A paho client for ``ident`` (``None``: no client certificate)."""
        assert self.broker is not None
        c = Client(self.port, ca_file or self.broker.layout.ca, ident, client_id=client_id,
                   reconnect=reconnect)
        self.clients.append(c)
        return c

    def subscriber(self) -> Client:
        """The privileged ``ingest@iotrust`` subscriber on ``devices/#``, connected."""
        c = self.client(self.ingest)
        assert c.connect(), "ingest could not connect"
        assert c.subscribe("devices/#")
        return c


class Client:
    """A paho-mqtt 2 client (MQTT 5, mTLS) that records what happens to it."""

    def __init__(self, port: int, ca_file: Path, ident: Identity | None, *,
                 client_id: str | None = None, reconnect: bool = False) -> None:
        self.name = ident.name if ident else "anonymous"
        self.port = port
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects: list[Any] = []
        self.connects: list[Any] = []
        self._acks: dict[int, Any] = {}
        self._cond = threading.Condition()
        ctx = ssl.create_default_context(cafile=str(ca_file))
        if ident is not None:
            ctx.load_cert_chain(str(ident.cert), str(ident.key))
        self.mqtt = mqtt.Client(CallbackAPIVersion.VERSION2,
                                client_id=client_id or f"{self.name}-{os.urandom(4).hex()}",
                                protocol=mqtt.MQTTv5)
        self.mqtt.tls_set_context(ctx)
        self.mqtt.reconnect_delay_set(min_delay=1, max_delay=1)
        self.reconnect = reconnect
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_disconnect = self._on_disconnect
        self.mqtt.on_message = self._on_message
        self.mqtt.on_publish = self._on_publish
        self.mqtt.on_subscribe = self._on_subscribe
        self._started = False

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connects.append(rc)
        self._notify()

    def _on_disconnect(self, client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.disconnects.append(rc)
        self._notify()
        if not self.reconnect:
            # No automatic reconnect unless asked: a refused client must stay refused.
            client.disconnect()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self.messages.append((msg.topic, msg.payload))
        self._notify()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        self._acks[mid] = rc
        self._notify()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: Any, _p: Any) -> None:
        self._acks[mid] = rcs
        self._notify()

    def wait(self, predicate: Any, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    @property
    def connected(self) -> bool:
        return self.mqtt.is_connected()

    def connect(self, timeout: float = 5.0) -> bool:
        """Connect; True once a successful CONNACK arrived, False if refused or dropped."""
        before = len(self.connects), len(self.disconnects)
        try:
            self.mqtt.connect("localhost", self.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False
        if not self._started:
            self.mqtt.loop_start()
            self._started = True
        self.wait(lambda: len(self.connects) > before[0] or len(self.disconnects) > before[1],
                  timeout)
        return (len(self.connects) > before[0] and not self.connects[-1].is_failure
                and self.connected)

    def publish(self, topic: str, payload: bytes = b"x", timeout: float = 5.0) -> int | None:
        """QoS 1 publish; the PUBACK reason code (0 ok, 0x87 not authorized), None if none."""
        info = self.mqtt.publish(topic, payload, qos=1)
        if info.rc != 0:
            return None
        self.wait(lambda: info.mid in self._acks, timeout)
        rc = self._acks.get(info.mid)
        return None if rc is None else int(rc.value)

    def subscribe(self, topic: str, timeout: float = 5.0) -> bool:
        rc, mid = self.mqtt.subscribe(topic, qos=1)
        return rc == 0 and self.wait(lambda: mid in self._acks, timeout)

    def delivered(self, topic: str) -> list[bytes]:
        return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.reconnect = False
        try:
            self.mqtt.disconnect()
        finally:
            if self._started:
                self.mqtt.loop_stop()
                self._started = False


def _identity_files(folder: Path, name: str, key: DeviceFileKey | None = None) -> tuple[
        Path, Path, DeviceFileKey]:
    folder.mkdir(parents=True, exist_ok=True)
    key_path = folder / f"{name}.key.pem"
    k = key or DeviceFileKey.generate(key_path)
    return folder / f"{name}.crt.pem", key_path, k


def add_active_devices(fleet: Fleet, db: Database, clock: Clock, count: int,
                       folder: Path) -> list[Identity]:
    """Register ``count`` ACTIVE devices, each with a key and an iotrust-issued certificate."""
    now = clock.now()
    with db.transaction() as tx:
        try:
            tx.get_manufacturer(MAKER)
        except Exception:
            root = fleet.root_pem.read_text()
            tx.add_manufacturer(Manufacturer(name=MAKER, display_name="Test maker",
                                             anchors_pem=root, allowed=("0x1234:sensor-1",),
                                             created_at=now))
    issuer = Issuer(fleet.secrets, clock)
    out: list[Identity] = []
    for _ in range(count):
        device_id = new_device_id(os.urandom(16))
        cert_path, key_path, key = _identity_files(folder, device_id)
        with db.transaction() as tx:
            tx.add_device(Device(id=device_id, manufacturer=MAKER, serial=device_id[4:20].upper(),
                                 factory_spki_sha256=os.urandom(32).hex(), vendor_id="0x1234",
                                 product_id="sensor-1", owner=OWNER, state=DeviceState.ACTIVE,
                                 created_at=now, updated_at=now))
            issued = issuer.issue_for_device(tx, device_id=device_id, csr=pki.build_csr(key),
                                             actor=ACTOR)
        cert_path.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
        out.append(Identity(device_id, cert_path, key_path))
    return out


def service_identity(fleet: Fleet, db: Database, clock: Clock, name: str,
                     folder: Path) -> Identity:
    """A service certificate (``name`` with ``@``) issued by the trust domain."""
    cert_path, key_path, key = _identity_files(folder, name)
    _, chain = broker_svc.issue_service_certificate(db, fleet.secrets, clock, name=name,
                                                    public_key=key.public_key)
    cert_path.write_bytes(chain)
    return Identity(name, cert_path, key_path)


def foreign_identity(folder: Path, name: str) -> Identity:
    """A device-looking certificate from a CA the broker does not trust."""
    other = build_fleet(folder / "other-domain", makers=())
    db = other.open_db()
    try:
        return add_active_devices(other, db, SystemClock(), 1, folder / "foreign")[0]
    finally:
        db.close()


def build_testbed(base: Path, *, devices: int = 3, clock: Clock | None = None) -> Testbed:
    """A trust domain in ``base`` with ``devices`` ACTIVE devices and the ingest identity."""
    require_mosquitto()
    clock = clock or SystemClock()
    fleet = build_fleet(base, makers=(), clock=clock)
    db = fleet.open_db()
    try:
        idents = add_active_devices(fleet, db, clock, devices, base / "clients")
        ingest = service_identity(fleet, db, clock, INGEST, base / "clients")
    finally:
        db.close()
    return Testbed(fleet=fleet, devices=idents, ingest=ingest, clock=clock)
