"""Soak test: a fleet of simulated devices against ``iotrust serve --workers N`` for a fixed time.

``make soak`` (``python -m benchmarks.soak [--minutes 10] [--devices 2000] [--sqlite]
[--no-mqtt] [--publish-rate 40] [--churn-minutes M]``):

* a real supply chain is made first (factory, minted devices, vouchers imported into a fresh
  trust domain on a fresh PostgreSQL database from ``scripts/postgres.sh``, dropped at the end;
  ``--sqlite`` uses a file instead), the per-source onboarding limit is switched off in that
  domain and the server runs with ``IOTRUST_AUTH_FAILURE_LIMIT=0`` (every device is 127.0.0.1);
* the trust domain's own Mosquitto and ``iotrust ingest run`` are started
  (:mod:`benchmarks.soak_mqtt`); the server applies every lifecycle change to that broker;
* device threads then mix, at random and until the time is up, onboarding (hello, attest,
  confirm), credential rotation (begin, complete, confirm, signed with the device-side helpers of
  :mod:`iotrust.core.onboarding` and :mod:`iotrust.core.rotation`) and operator actions with an
  admin token (quarantine, release, retire). Each device is held by one thread at a time, so a
  request is only refused when the server is wrong or a limit is hit;
* with ``--churn-minutes M`` the revocation churn levels off: rotation and retirement (each
  revokes a credential, so the CRL and the registry grow) happen only during the first ``M``
  minutes; afterwards onboarding (while devices remain), quarantine, release, reads and
  publishing go on, and the memory verdict judges only that steady phase;
* publisher threads take devices too (active, quarantined or retired) and publish bursts of
  signed telemetry (COSE_Sign1, per-device counter) over mutual TLS with the device's current
  credential, one connection per burst, paced to ``--publish-rate`` messages/s. An active
  device must be accepted; a quarantined one refused (PUBACK 0x87), a retired one refused at the
  handshake (CRL); a device that rotated must be refused with its previous credential. At the
  end every accepted message must be stored by ingest, and nothing else;
* the RSS of every process (server supervisor and workers, broker, ingest) is sampled every
  10 s, with the size of the broker's CRL, dynamic-security and ACL files, and judged bounded or
  growing (:mod:`benchmarks.soak_memory`);
* at the end the registry is checked: no ACTIVE device without exactly one ACTIVE credential, no
  credential without its ``credential.issued`` event, and the event chain verifies.

Prints a table and writes ``benchmarks/results/soak.json``; exits 1 on any error, broken
invariant or growing memory. Not part of the CI run; the load generator skips the device's own
voucher and chain checks (as ``benchmarks/onboarding.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import serialization

from benchmarks import SoftKey, soak_memory, soak_mqtt
from benchmarks.onboarding import SimulatedDevice, _lean_onboarded, _lean_session
from benchmarks.registry import (
    ACTOR,
    MANUFACTURER,
    OWNER,
    PASSPHRASE,
    PRODUCT_ID,
    VENDOR_ID,
)
from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.adapters.mqtt.mosquitto import free_port
from iotrust.adapters.sql.store import Database
from iotrust.core import events as ev
from iotrust.core import onboarding as proto
from iotrust.core import pki
from iotrust.core import rotation as rot
from iotrust.core.lifecycle import CredentialState, Device, DeviceState
from iotrust.ports import SystemClock
from iotrust.services import eventlog, manufacturers, tokens
from iotrust.services import factory as factory_service
from iotrust.services.domain import KeyBackend, init_domain, root_ca
from iotrust.services.settings import Settings
from iotrust.services.vouchers import import_vouchers

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "soak.json"
RSS_EVERY_S = 10.0
PAGE = 10_000
#: Operation weights once devices are onboarded (onboarding is chosen while devices remain).
WEIGHTS = {"rotate": 6, "quarantine": 2, "release": 2, "retire": 1, "read": 3}
#: The operations that revoke a credential (left out after ``--churn-minutes``).
CHURN = ("rotate", "retire")
STEADY_WEIGHTS = {op: w for op, w in WEIGHTS.items() if op not in CHURN}
#: Refusals that are an expected answer, not an error (op -> HTTP statuses); none so far.
EXPECTED: dict[str, set[int]] = {}
#: Which devices a publish burst takes (the rest of the mix acts on them meanwhile).
PUBLISH_FROM = {"active": 8, "quarantined": 1, "retired": 1}
BURST = 5
#: A device publishes only this long after its onboarding confirmation: the server applies the
#: new device's broker rules asynchronously (``api.onboarding.BROKER_RESYNC_S``, coalesced).
ONBOARD_SETTLE_S = 3.0
#: Each HTTP thread opens a new keep-alive connection after this many operations: connections
#: opened once at the start can all land on one worker (seen: one of two idle for 20 minutes).
RECONNECT_EVERY = 100


@dataclass(slots=True)
class Live:
    """A device the simulator has onboarded: its current credential, key and message counter."""

    device_id: str
    serial: str
    key: SoftKey
    state: DeviceState = DeviceState.ACTIVE
    files: tuple[Path, Path] | None = None  # certificate and key PEM (MQTT)
    previous: tuple[Path, Path] | None = None  # the credential before the last rotation
    counter: int = 0
    publish_after: float = 0.0  # time.monotonic()
    changes_ms: list[int] = field(default_factory=list)  # wall clock of state/credential changes

    def changed(self) -> None:
        self.changes_ms.append(int(time.time() * 1000))


@dataclass(slots=True)
class Stats:
    """Latencies and failures per operation (thread-safe through ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latency: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, op: str, seconds: float, status: int, body: str) -> None:
        """One HTTP request: 2xx ok, an :data:`EXPECTED` status refused, anything else an error."""
        if status < 300:
            self.outcome(op, seconds, "ok")
        else:
            kind = "refused" if status in EXPECTED.get(op, set()) else "error"
            self.outcome(op, seconds, kind, f"{status} {body[:200]}")

    def outcome(self, op: str, seconds: float, kind: str, detail: str = "") -> None:
        """One operation: ``ok``, ``refused`` (the expected answer was a refusal) or ``error``."""
        with self.lock:
            self.latency.setdefault(op, []).append(seconds)
            if kind == "ok":
                return
            bucket = self.refused if kind == "refused" else self.errors
            bucket[op] = bucket.get(op, 0) + 1
            kept = self.samples.setdefault(op, [])
            if kind == "error" and len(kept) < 5:
                kept.append(detail[:240])

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for op in sorted(self.latency):
            lat = sorted(self.latency[op])
            n = len(lat)
            errors = self.errors.get(op, 0)
            rows.append({"op": op, "count": n, "errors": errors,
                         "refused_expected": self.refused.get(op, 0),
                         "error_rate": errors / n if n else 0.0,
                         "p50_ms": 1000 * lat[int(0.50 * (n - 1))] if n else None,
                         "p99_ms": 1000 * lat[int(0.99 * (n - 1))] if n else None,
                         "max_ms": 1000 * lat[-1] if n else None,
                         "error_samples": self.samples.get(op, [])})
        return rows


@dataclass(slots=True)
class Pool:
    """Devices by what can happen to them next; a taken device belongs to one thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    fresh: list[SimulatedDevice] = field(default_factory=list)
    active: list[Live] = field(default_factory=list)
    quarantined: list[Live] = field(default_factory=list)
    retired: list[Live] = field(default_factory=list)
    drained_at: float | None = None  # time.monotonic() when the last fresh device was taken

    def take_fresh(self) -> SimulatedDevice | None:
        with self.lock:
            if self.fresh:
                device = self.fresh.pop()
                if not self.fresh:
                    self.drained_at = time.monotonic()
                return device
            return None

    def take(self, rng: random.Random, which: str) -> Live | None:
        with self.lock:
            bucket = {"active": self.active, "quarantined": self.quarantined,
                      "retired": self.retired}[which]
            if not bucket:
                return None
            i = rng.randrange(len(bucket))
            bucket[i], bucket[-1] = bucket[-1], bucket[i]
            return bucket.pop()

    def give(self, live: Live) -> None:
        with self.lock:
            if live.state is DeviceState.ACTIVE:
                self.active.append(live)
            elif live.state is DeviceState.QUARANTINED:
                self.quarantined.append(live)
            else:
                self.retired.append(live)

    def everyone(self) -> list[Live]:
        """Every onboarded device (at the end, when no thread holds one)."""
        with self.lock:
            return [*self.active, *self.quarantined, *self.retired]


# --- set-up --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Setup:
    """The trust domain, its devices and the admin token."""

    settings: Settings
    devices: list[SimulatedDevice]
    admin_token: str


def prepare(base: Path, database_url: str, count: int) -> Setup:
    """Mint ``count`` devices, make a trust domain on ``database_url``, import their vouchers."""
    clock = SystemClock()
    made = factory_service.init_factory(base / "factory", clock, name=MANUFACTURER,
                                        vendor_id=VENDOR_ID, product_id=PRODUCT_ID,
                                        passphrase=PASSPHRASE)
    minted = factory_service.mint(made, clock, count, passphrase=PASSPHRASE)
    data = base / "data"
    data.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=data, database_url=database_url)
    db = Database.open(database_url)
    try:
        init_domain(db, settings, clock, name="soak-fleet", owner=OWNER,
                    backend=KeyBackend(kind="file", passphrase=PASSPHRASE),
                    public_url="https://iotrust.example")
        with db.transaction() as tx:
            current = tx.get_domain()
            if current is None:
                raise RuntimeError("the soak domain vanished")
            tx.update_domain(replace(current, settings={**current.settings,
                                                        "onboarding_rate_per_source": 0}))
        manufacturers.add_manufacturer(
            db, clock, name=MANUFACTURER,
            anchors_pem=made.root.public_bytes(serialization.Encoding.PEM),
            allowed=[f"{VENDOR_ID}:{PRODUCT_ID}"], actor=ACTOR)
        with db.transaction(readonly=True) as tx:
            owner_root = root_ca(tx).certificate_pem.encode()
        vouchers = factory_service.write_vouchers(made, clock, [m.folder for m in minted],
                                                  owner=OWNER, owner_root_pem=owner_root,
                                                  passphrase=PASSPHRASE)
        report = import_vouchers(db, clock, vouchers, actor=ACTOR)
        if len(report.imported) != count:
            raise RuntimeError(f"voucher import refused some devices: {report.refused[:3]}")
        _, secret = tokens.create_token(db, clock, name="soak-admin", role="admin", actor=ACTOR)
    finally:
        db.close()
    issuing_der = made.issuing.public_bytes(serialization.Encoding.DER)
    devices = []
    for m in minted:
        leaf = pki.load_certificate((m.folder / "factory.crt.pem").read_bytes())
        operational = SoftKey()
        devices.append(SimulatedDevice(
            serial=m.serial,
            factory_chain=(leaf.public_bytes(serialization.Encoding.DER), issuing_der),
            factory_key=DeviceFileKey.load(m.folder / "factory.key.pem"),
            operational_key=operational,
            csr_der=pki.build_csr(operational).public_bytes(serialization.Encoding.DER)))
    return Setup(settings=settings, devices=devices, admin_token=secret)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database from ``scripts/postgres.sh``, dropped afterwards."""
    url = subprocess.run([str(ROOT / "scripts" / "postgres.sh")], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        yield url
    finally:
        parts = urlsplit(url.replace("+psycopg", ""))
        subprocess.run(["dropdb", "--force", "-h", parts.hostname or "127.0.0.1",
                        "-p", str(parts.port or 5432), "-U", parts.username or "postgres",
                        parts.path.lstrip("/")], check=False, capture_output=True)


@contextmanager
def sqlite_database(folder: Path) -> Iterator[str]:
    """A SQLite file in ``folder`` (removed with the folder)."""
    yield f"sqlite:///{folder / 'iotrust.db'}"


# --- the server ----------------------------------------------------------------------------------

@contextmanager
def serve(settings: Settings, workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``iotrust serve --workers N`` on a free loopback port; yields (base URL, process)."""
    port = free_port()
    env = {**os.environ, "IOTRUST_DATA": str(settings.data_dir),
           "IOTRUST_DATABASE_URL": settings.database_url,
           "IOTRUST_PASSPHRASE": PASSPHRASE.decode(), "IOTRUST_AUTH_FAILURE_LIMIT": "0"}
    env.pop("IOTRUST_PASSPHRASE_FILE", None)
    log = settings.data_dir / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iotrust.cli.main", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(workers)],
            env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"iotrust serve exited: {log.read_text()[-2000:]}")
            with suppress(httpx.TransportError):
                if httpx.get(f"{url}/v1/health", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"iotrust serve did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the device and operator operations ----------------------------------------------------------

class Driver:
    """One thread's HTTP client plus the shared pool and statistics."""

    def __init__(self, url: str, token: str, pool: Pool, stats: Stats, seed: int, *,
                 identities: Path | None = None, churn_until: float = float("inf")) -> None:
        self.http = httpx.Client(base_url=url, timeout=60.0)
        self.admin = {"authorization": f"Bearer {token}"}
        self.pool, self.stats, self.rng = pool, stats, random.Random(seed)
        self.identities = identities  # where devices keep their TLS files (None: no MQTT)
        self.churn_until = churn_until  # time.monotonic() after which nothing is revoked

    def call(self, op: str, path: str, body: bytes | None = None, *,
             operator: bool = False, method: str = "POST") -> httpx.Response | None:
        headers = dict(self.admin) if operator else {}
        headers["content-type"] = "application/json"
        t0 = time.perf_counter()
        try:
            reply = self.http.request(method, path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self.stats.add(op, time.perf_counter() - t0, 599, f"transport: {exc!r}")
            return None
        self.stats.add(op, time.perf_counter() - t0, reply.status_code, reply.text)
        return reply if reply.status_code < 300 else None

    def onboard(self, device: SimulatedDevice) -> Live | None:
        hello = proto.build_hello(serial=device.serial, factory_chain=device.factory_chain,
                                  random=os.urandom)
        reply = self.call("onboard.hello", "/v1/onboarding/hello", hello.to_wire())
        if reply is None:
            return None
        session = _lean_session(hello, proto.HelloResponse.from_wire(reply.content))
        attest = proto.build_attest(session, factory_signer=device.factory_key,
                                    csr_der=device.csr_der)
        reply = self.call("onboard.attest", "/v1/onboarding/attest", attest.to_wire())
        if reply is None:
            return None
        onboarded = _lean_onboarded(proto.AttestResponse.from_wire(reply.content))
        confirm = proto.build_confirm(session, onboarded,
                                      operational_signer=device.operational_key)
        if self.call("onboard.confirm", "/v1/onboarding/confirm", confirm.to_wire()) is None:
            return None
        live = Live(device_id=onboarded.device_id,
                    serial=f"{onboarded.certificate.serial_number:x}",
                    key=device.operational_key,
                    publish_after=time.monotonic() + ONBOARD_SETTLE_S)
        if self.identities is not None:
            live.files = soak_mqtt.write_identity(self.identities, live.device_id, live.serial,
                                                  live.key.private_key,
                                                  onboarded.certificate_der)
        return live

    def rotate(self, live: Live) -> None:
        nonce = os.urandom(rot.NONCE_BYTES)
        begin = rot.BeginRequest(
            device_id=live.device_id, credential_serial=live.serial, device_nonce=nonce,
            signature=live.key.sign(rot.begin_transcript(
                device_id=live.device_id, credential_serial=live.serial, device_nonce=nonce)))
        reply = self.call("rotate.begin", "/v1/rotation/begin", begin.to_wire())
        if reply is None:
            return
        begun = rot.BeginResponse.from_wire(reply.content)
        new_key = SoftKey()
        csr = pki.build_csr(new_key).public_bytes(serialization.Encoding.DER)
        transcript = rot.rotation_transcript(
            session_id=begun.session_id, server_nonce=begun.server_nonce,
            device_id=live.device_id, credential_serial=live.serial,
            csr_sha256=hashlib.sha256(csr).digest())
        complete = rot.CompleteRequest(session_id=begun.session_id, device_id=live.device_id,
                                       credential_serial=live.serial,
                                       server_nonce=begun.server_nonce, csr=csr,
                                       signature=live.key.sign(transcript))
        reply = self.call("rotate.complete", "/v1/rotation/complete", complete.to_wire())
        if reply is None:
            return
        done = rot.CompleteResponse.from_wire(reply.content)
        confirm = rot.ConfirmRequest(
            session_id=begun.session_id, device_id=live.device_id,
            server_nonce=begun.server_nonce,
            signature=new_key.sign(rot.confirm_transcript(
                session_id=begun.session_id, server_nonce=begun.server_nonce,
                certificate_sha256=hashlib.sha256(done.certificate).digest())))
        if self.call("rotate.confirm", "/v1/rotation/confirm", confirm.to_wire()) is None:
            return
        cert = pki.load_certificate(done.certificate)
        live.serial, live.key = f"{cert.serial_number:x}", new_key
        live.changed()
        if self.identities is not None:
            live.previous = live.files
            live.files = soak_mqtt.write_identity(
                self.identities, live.device_id, live.serial, new_key.private_key,
                cert.public_bytes(serialization.Encoding.DER))

    def operator(self, live: Live, action: str) -> None:
        body = json.dumps({"reason": "decommissioned"}).encode() if action == "retire" else None
        if self.call(f"operator.{action}", f"/v1/devices/{live.device_id}/{action}", body,
                     operator=True) is not None:
            live.state = {"quarantine": DeviceState.QUARANTINED, "release": DeviceState.ACTIVE,
                          "retire": DeviceState.RETIRED}[action]
            live.changed()

    def step(self) -> None:
        """One random operation on a device this thread takes from the pool and gives back."""
        device = self.pool.take_fresh() if self.rng.random() < 0.5 else None
        if device is not None:
            live = self.onboard(device)
            if live is not None:
                self.pool.give(live)
            return
        weights = WEIGHTS if time.monotonic() < self.churn_until else STEADY_WEIGHTS
        op = self.rng.choices(list(weights), weights=list(weights.values()))[0]
        if op == "read":
            self.call("operator.list", "/v1/devices?limit=50", operator=True, method="GET")
            return
        from_quarantine = op == "release" or (op == "retire" and self.rng.random() < 0.3)
        which = "quarantined" if from_quarantine else "active"
        live = self.pool.take(self.rng, which)
        if live is None:
            time.sleep(0.01)
            return
        try:
            if op == "rotate":
                self.rotate(live)
            else:
                self.operator(live, op)
        finally:
            self.pool.give(live)


class Publisher:
    """One thread's publish bursts: takes a device, connects as it, publishes, gives it back."""

    def __init__(self, port: int, ca_file: Path, pool: Pool, stats: Stats, *,
                 ledger: soak_mqtt.Ledger, seed: int) -> None:
        self.port, self.ca_file = port, ca_file
        self.pool, self.stats, self.ledger = pool, stats, ledger
        self.rng = random.Random(seed)

    def step(self) -> bool:
        """One burst from a random device; False when no device was available."""
        which = self.rng.choices(list(PUBLISH_FROM), weights=list(PUBLISH_FROM.values()))[0]
        live = self.pool.take(self.rng, which)
        if live is None:
            return False
        try:
            if live.files is None or time.monotonic() < live.publish_after:
                return False
            if which == "retired":
                self._refused_identity(live, live.files, "mqtt.connect.retired")
            else:
                if live.previous is not None and self.rng.random() < 0.2:
                    self._refused_identity(live, live.previous, "mqtt.connect.superseded")
                self._burst(live)
        finally:
            self.pool.give(live)
        return True

    def _link(self, live: Live, files: tuple[Path, Path]) -> soak_mqtt.Burst:
        return soak_mqtt.Burst(self.port, self.ca_file, files[0], files[1],
                               client_id=f"{live.device_id}-{os.urandom(3).hex()}")

    def _refused_identity(self, live: Live, files: tuple[Path, Path], op: str) -> None:
        """A revoked credential (retired, or replaced by a rotation) must not connect."""
        link = self._link(live, files)
        t0 = time.perf_counter()
        why = link.connect()
        took = time.perf_counter() - t0
        try:
            if why is not None:
                kind = "error" if why.startswith("timeout") else "refused"
                self.stats.outcome(op, took, kind, f"{live.device_id}: {why}")
                return
            self.stats.outcome(op, took, "error",
                               f"{live.device_id}: connected with a revoked credential")
            self._publish(link, live, expect_accept=False, op=op.replace("connect", "publish"))
        finally:
            link.close()

    def _burst(self, live: Live) -> None:
        assert live.files is not None
        active = live.state is DeviceState.ACTIVE
        link = self._link(live, live.files)
        t0 = time.perf_counter()
        why = link.connect()
        self.stats.outcome("mqtt.connect", time.perf_counter() - t0,
                           "ok" if why is None else "error", f"{live.device_id}: {why}")
        try:
            if why is not None:
                return
            op = "mqtt.publish" if active else "mqtt.publish.quarantined"
            for _ in range(BURST):
                if not self._publish(link, live, expect_accept=active, op=op):
                    return
        finally:
            link.close()

    def _publish(self, link: soak_mqtt.Burst, live: Live, *, expect_accept: bool,
                 op: str) -> bool:
        """Seal and publish one message; False when the connection is gone."""
        counter = live.counter
        live.counter += 1
        topic, data, sealed_ms = soak_mqtt.seal_telemetry(live.key, live.device_id, live.serial,
                                                          counter, counter)
        t0 = time.perf_counter()
        answer = link.publish(topic, data)
        took = time.perf_counter() - t0
        self.ledger.add(soak_mqtt.Sent(live.device_id, counter, sealed_ms, expect_accept, answer))
        if isinstance(answer, str):
            self.stats.outcome(op, took, "error", f"{live.device_id}: {answer}")
            return False
        accepted = answer < soak_mqtt.FIRST_FAILURE
        if accepted == expect_accept:
            self.stats.outcome(op, took, "ok" if accepted else "refused")
        else:
            self.stats.outcome(op, took, "error", f"{live.device_id} ({live.state.value}): "
                               f"PUBACK 0x{answer:02x}")
        return True


# --- the invariants ------------------------------------------------------------------------------

def check_invariants(database_url: str) -> dict[str, Any]:
    """The end-of-run registry checks; returns counts and every violation found."""
    db = Database.open(database_url)
    try:
        with db.transaction(readonly=True) as tx:
            devices: list[Device] = []
            while True:
                page = tx.list_devices(limit=PAGE,
                                       after_id=devices[-1].id if devices else None)
                devices += page
                if len(page) < PAGE:
                    break
            creds = tx.list_credentials()
            issued = [e for e in tx.iter_events() if e.kind == ev.CREDENTIAL_ISSUED]
        chain = eventlog.verify(db)
    finally:
        db.close()
    by_device: dict[str, list[CredentialState]] = {}
    for c in creds:
        if c.device_id is not None:
            by_device.setdefault(c.device_id, []).append(c.state)
    bad_active = [d.id for d in devices if d.state is DeviceState.ACTIVE
                  and by_device.get(d.id, []).count(CredentialState.ACTIVE) != 1]
    event_serials = {(json.loads(e.data)["serial"], e.device_id) for e in issued}
    without_event = sorted(c.serial_number for c in creds
                           if (c.serial_number, c.device_id) not in event_serials)
    states: dict[str, int] = {}
    for d in devices:
        states[d.state.value] = states.get(d.state.value, 0) + 1
    return {"devices_by_state": states, "credentials": len(creds),
            "credential_issued_events": len(issued), "events": chain.count,
            "active_without_exactly_one_active_credential": bad_active[:20],
            "credentials_without_issued_event": without_event[:20],
            "chain_breaks": [str(b) for b in chain.breaks[:20]],
            "ok": not bad_active and not without_event and not chain.breaks}


# --- the run -------------------------------------------------------------------------------------

@dataclass(slots=True)
class Options:
    """What to run."""

    minutes: float = 10.0
    devices: int = 2000
    threads: int = 16
    workers: int = 2
    sqlite: bool = False
    mqtt: bool = True
    publishers: int = 8
    publish_rate: float = 40.0  # messages per second, all publishers together
    churn_minutes: float | None = None  # rotate and retire only this long (None: all along)


def _loop(end: float, stop: threading.Event, step: Any, pace_s: float = 0.0) -> None:
    next_at = time.monotonic()
    while time.monotonic() < end and not stop.is_set():
        if not step():
            time.sleep(0.01)
            continue
        if pace_s:
            next_at += pace_s
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                next_at = time.monotonic()


def _http_worker(driver: Driver, url: str, end: float, stop: threading.Event) -> None:
    steps = 0

    def step() -> bool:
        nonlocal steps
        steps += 1
        if steps % RECONNECT_EVERY == 0:  # a new connection may land on another worker
            driver.http.close()
            driver.http = httpx.Client(base_url=url, timeout=60.0)
        driver.step()
        return True

    try:
        _loop(end, stop, step)
    finally:
        driver.http.close()


def _drive(opts: Options, setup: Setup, *, url: str, proc: subprocess.Popen[bytes],
           side: soak_mqtt.MqttSide | None, pool: Pool, stats: Stats,
           ledger: soak_mqtt.Ledger) -> tuple[float, list[dict[str, Any]]]:
    """Run the device, operator and publisher threads until the time is up; (seconds, RSS)."""
    rss: list[dict[str, Any]] = []
    others = {} if side is None else {"broker": side.broker_pid, "ingest": side.ingest.pid}
    files = {} if side is None else side.files
    identities = setup.settings.data_dir.parent / "devices" if side is not None else None
    stop = threading.Event()
    start = time.monotonic()
    end = start + opts.minutes * 60
    churn_until = (float("inf") if opts.churn_minutes is None
                   else start + opts.churn_minutes * 60)

    def worker(seed: int) -> None:
        _http_worker(Driver(url, setup.admin_token, pool, stats, seed, identities=identities,
                            churn_until=churn_until),
                     url, end, stop)

    def publisher(seed: int) -> None:
        assert side is not None
        pub = Publisher(side.port, side.ca_file, pool, stats, ledger=ledger, seed=seed)
        _loop(end, stop, pub.step, pace_s=opts.publishers * BURST / opts.publish_rate)

    def sampler() -> None:
        while True:
            rss.append({"t_s": round(time.monotonic() - start, 1),
                        "mib": soak_memory.sample(proc.pid, others),
                        "bytes": soak_memory.file_sizes(files)})
            if stop.wait(RSS_EVERY_S):
                return

    sample = threading.Thread(target=sampler, daemon=True)
    sample.start()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(opts.threads)]
    if side is not None:
        threads += [threading.Thread(target=publisher, args=(1000 + i,), daemon=True)
                    for i in range(opts.publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    stop.set()
    sample.join()
    if pool.drained_at is not None:
        pool.drained_at -= start  # from now on: seconds into the run
    return elapsed, rss


def _file_growth(rss: list[dict[str, Any]], since_s: float) -> dict[str, Any]:
    """The broker files' sizes: first sample, first of the judged phase, last sample."""
    if not rss or not rss[0].get("bytes"):
        return {}
    steady = next((s for s in rss if s["t_s"] >= since_s), rss[-1])
    return {label: {"first": rss[0]["bytes"][label], "steady_first": steady["bytes"][label],
                    "last": rss[-1]["bytes"][label]} for label in rss[0]["bytes"]}


def run(*, minutes: float, devices: int, threads: int, workers: int, sqlite: bool,
        out: Path | None, mqtt: bool = True, publishers: int = 8,
        publish_rate: float = 40.0, churn_minutes: float | None = None) -> dict[str, Any]:
    """Run the soak and return the report (also written to ``out`` unless ``None``)."""
    if churn_minutes is not None and not 0 <= churn_minutes < minutes:
        raise ValueError("--churn-minutes must be in [0, --minutes)")
    opts = Options(minutes=minutes, devices=devices, threads=threads, workers=workers,
                   sqlite=sqlite, mqtt=mqtt, publishers=publishers, publish_rate=publish_rate,
                   churn_minutes=churn_minutes)
    if mqtt and (why := soak_mqtt.missing()) is not None:
        raise RuntimeError(f"{why} (run with --no-mqtt to soak without publishing)")
    ledger = soak_mqtt.Ledger()
    ingest: dict[str, Any] = {"exercised": False}
    with tempfile.TemporaryDirectory(prefix="iotrust-soak-") as tmp:
        base = Path(tmp)
        db_ctx = sqlite_database(base) if sqlite else postgres_database()
        with db_ctx as database_url:
            t_setup = time.perf_counter()
            setup = prepare(base, database_url, devices)
            setup_s = time.perf_counter() - t_setup
            pool, stats = Pool(fresh=list(setup.devices)), Stats()
            with ExitStack() as stack:
                side = (stack.enter_context(soak_mqtt.broker_and_ingest(setup.settings,
                                                                        PASSPHRASE))
                        if mqtt else None)
                url, proc = stack.enter_context(serve(setup.settings, workers))
                elapsed, rss = _drive(opts, setup, url=url, proc=proc, side=side,
                                      pool=pool, stats=stats, ledger=ledger)
                if side is not None:
                    accepted = sum(1 for m in ledger.sent if m.answer == 0)
                    soak_mqtt.wait_for_ingest(database_url, accepted)
            if side is not None:
                changes = {live.device_id: live.changes_ms for live in pool.everyone()}
                ingest = {"exercised": True, "process": side.ingest_stats,
                          **soak_mqtt.ingest_report(
                              ledger, soak_mqtt.stored_messages(database_url), changes)}
            invariants = check_invariants(database_url)
    rows = stats.table()
    since_s = 0.0 if churn_minutes is None else churn_minutes * 60
    memory = soak_memory.verdicts(rss, since_s)
    report = {
        "minutes": minutes, "elapsed_s": round(elapsed, 1), "devices": devices,
        "threads": threads, "workers": workers, "churn_minutes": churn_minutes,
        "onboarding_done_s": (None if pool.drained_at is None
                              else round(pool.drained_at, 1)),
        "database": "sqlite" if sqlite else "postgresql", "setup_s": round(setup_s, 1),
        "mqtt": ({"publishers": publishers, "publish_rate_per_s": publish_rate,
                  "burst": BURST, "connection": "one TLS connection per burst",
                  "messages": len(ledger.sent),
                  "messages_per_s": round(len(ledger.sent) / max(elapsed, 1e-9), 1)}
                 if mqtt else "not exercised (--no-mqtt)"),
        "operations": rows,
        "total_requests": sum(r["count"] for r in rows),
        "total_errors": sum(r["errors"] for r in rows) + ingest.get("errors", 0),
        "ingest": ingest,
        "rss": {"every_s": RSS_EVERY_S, "judged_from_s": since_s, "verdicts": memory,
                "broker_files_bytes": _file_growth(rss, since_s),
                "load_average": list(os.getloadavg()),
                "bounded": all(v["verdict"] != "growing" for v in memory.values()),
                "samples": rss},
        "pool_at_end": {"never_onboarded": len(pool.fresh), "active": len(pool.active),
                        "quarantined": len(pool.quarantined), "retired": len(pool.retired)},
        "invariants": invariants,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _print_memory(report: dict[str, Any]) -> None:
    """The RSS part of the table."""
    judged = report["rss"]["judged_from_s"]
    if judged:
        print(f"churn (rotate, retire) stopped at {judged:.0f} s; onboarding done at "
              f"{report['onboarding_done_s']} s. RSS every {report['rss']['every_s']:.0f} s "
              "(MiB): run's first → last (max); then the STEADY PHASE only (after churn): "
              "its first, middle third → last third mean; slope over its second half")
    else:
        print(f"RSS every {report['rss']['every_s']:.0f} s (MiB): first → last (max); middle "
              "third → last third mean; slope over the second half")
    for label, v in report["rss"]["verdicts"].items():
        line = f"  {label:<24}{v['first_mib']} → {v['last_mib']} ({v['max_mib']})"
        if "steady_first_mib" in v:
            line += f"; steady from {v['steady_first_mib']}"
        if "growth_mib" in v:
            line += (f"; {v['middle_third_mean_mib']} → {v['last_third_mean_mib']} "
                     f"({v['growth_mib']:+} MiB, tolerance {v['tolerance_mib']}); "
                     f"{v['slope_second_half_mib_per_hour']:+} MiB/h")
        print(f"{line}: {v['verdict'].upper()}")
    for label, size in report["rss"]["broker_files_bytes"].items():
        print(f"  {label:<24}{size['first']} → {size['steady_first']} → {size['last']} bytes "
              "(first → steady phase's first → last)")
    print(f"load average at the end: {report['rss']['load_average']}")


def print_report(report: dict[str, Any]) -> None:
    """The human-readable table."""
    print(f"soak: {report['elapsed_s']} s, {report['devices']} devices, {report['threads']} "
          f"threads, serve --workers {report['workers']} on {report['database']} "
          f"(set-up {report['setup_s']} s); mqtt: {report['mqtt']}")
    print(f"{'operation':<26}{'count':>8}{'errors':>7}{'err %':>7}{'refused':>8}{'p50 ms':>9}"
          f"{'p99 ms':>9}{'max ms':>9}")
    for r in report["operations"]:
        print(f"{r['op']:<26}{r['count']:>8}{r['errors']:>7}{100 * r['error_rate']:>7.2f}"
              f"{r['refused_expected']:>8}{_ms(r['p50_ms']):>9}{_ms(r['p99_ms']):>9}"
              f"{_ms(r['max_ms']):>9}")
        for sample in r["error_samples"]:
            print(f"    e.g. {sample}")
    ing = report["ingest"]
    if ing.get("exercised"):
        lat = ing["publish_to_ingest_ms"]
        print(f"{'ingest.accept':<26}{ing['broker_accepted']:>8}{ing['errors']:>7}"
              f"{100 * ing['error_rate']:>7.2f}{ing['not_stored_after_a_state_change']:>8}"
              f"{_ms(lat['p50']):>9}{_ms(lat['p99']):>9}{_ms(lat['max']):>9}")
        print(f"    ingest process: {json.dumps(ing['process'])}")
        for k in ("not_stored_without_a_state_change", "stored_but_should_be_refused"):
            if ing[k]:
                print(f"    {k}: {ing[k][:5]}")
    _print_memory(report)
    inv = report["invariants"]
    print(f"registry: {inv['devices_by_state']}, {inv['credentials']} credentials, "
          f"{inv['events']} events; invariants {'OK' if inv['ok'] else 'VIOLATED'}")
    if not inv["ok"]:
        print(json.dumps({k: v for k, v in inv.items() if isinstance(v, list)}, indent=2))


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.soak``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16, help="HTTP device/operator threads")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--no-mqtt", action="store_true",
                        help="no broker, no ingest, no publishing")
    parser.add_argument("--publishers", type=int, default=8,
                        help="publisher threads (= devices connected at once, at most)")
    parser.add_argument("--publish-rate", type=float, default=40.0,
                        help="messages per second, all publishers together")
    parser.add_argument("--churn-minutes", type=float, default=None,
                        help="rotate and retire only during the first M minutes, then judge "
                             "memory over the steady phase")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    report = run(minutes=args.minutes, devices=args.devices, threads=args.threads,
                 workers=args.workers, sqlite=args.sqlite, out=args.out, mqtt=not args.no_mqtt,
                 publishers=args.publishers, publish_rate=args.publish_rate,
                 churn_minutes=args.churn_minutes)
    print_report(report)
    print(f"written to {args.out}")
    ok = (report["invariants"]["ok"] and report["total_errors"] == 0
          and report["rss"]["bounded"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
