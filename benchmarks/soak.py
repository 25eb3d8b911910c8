"""Soak test: a fleet of simulated devices against ``iotrust serve --workers N`` for a fixed time.

``make soak`` (``python -m benchmarks.soak [--minutes 10] [--devices 2000] [--sqlite]``):

* a real supply chain is made first (factory, minted devices, vouchers imported into a fresh
  trust domain on a fresh PostgreSQL database from ``scripts/postgres.sh``, dropped at the end;
  ``--sqlite`` uses a file instead), the per-source onboarding limit is switched off in that
  domain and the server runs with ``IOTRUST_AUTH_FAILURE_LIMIT=0`` (every device is 127.0.0.1);
* device threads then mix, at random and until the time is up, onboarding (hello, attest,
  confirm), credential rotation (begin, complete, confirm, signed with the device-side helpers of
  :mod:`iotrust.core.onboarding` and :mod:`iotrust.core.rotation`) and operator actions with an
  admin token (quarantine, release, retire). Each device is held by one thread at a time, so a
  request is only refused when the server is wrong or a limit is hit;
* the server processes' RSS is sampled every 10 s;
* at the end the registry is checked: no ACTIVE device without exactly one ACTIVE credential, no
  credential without its ``credential.issued`` event, and the event chain verifies.

Prints a table and writes ``benchmarks/results/soak.json``. It does not publish MQTT (that needs a
broker per run and measures the broker rather than iotrust) and is not part of the CI run; the
load generator skips the device's own voucher and chain checks (as ``benchmarks/onboarding.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import serialization

from benchmarks import SoftKey
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
#: Refusals that are an expected answer, not an error (op -> HTTP statuses); none so far.
EXPECTED: dict[str, set[int]] = {}


@dataclass(slots=True)
class Live:
    """A device the simulator has onboarded: its current credential and key."""

    device_id: str
    serial: str
    key: SoftKey
    state: DeviceState = DeviceState.ACTIVE


@dataclass(slots=True)
class Stats:
    """Latencies and failures per operation (thread-safe through ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latency: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, op: str, seconds: float, status: int, body: str) -> None:
        with self.lock:
            self.latency.setdefault(op, []).append(seconds)
            if status < 300:
                return
            bucket = self.refused if status in EXPECTED.get(op, set()) else self.errors
            bucket[op] = bucket.get(op, 0) + 1
            kept = self.samples.setdefault(op, [])
            if len(kept) < 5:
                kept.append(f"{status} {body[:200]}")

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
    retired: int = 0

    def take_fresh(self) -> SimulatedDevice | None:
        with self.lock:
            return self.fresh.pop() if self.fresh else None

    def take(self, rng: random.Random, which: str) -> Live | None:
        with self.lock:
            bucket = self.active if which == "active" else self.quarantined
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
                self.retired += 1


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


# --- the server and its memory -------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    out = []
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            out += [int(c) for c in text.split()]
    return out


def _rss_kib(pid: int) -> int:
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def server_rss(root_pid: int) -> dict[int, int]:
    """RSS in KiB of ``root_pid`` and all its descendants."""
    seen: dict[int, int] = {}
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen[pid] = _rss_kib(pid)
        todo += _children(pid)
    return seen


@contextmanager
def serve(settings: Settings, workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``iotrust serve --workers N`` on a free loopback port; yields (base URL, process)."""
    from benchmarks.onboarding import _free_port  # noqa: PLC0415 - shared helper, private name

    port = _free_port()
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

    def __init__(self, url: str, token: str, pool: Pool, stats: Stats, seed: int) -> None:
        self.http = httpx.Client(base_url=url, timeout=60.0)
        self.admin = {"authorization": f"Bearer {token}"}
        self.pool, self.stats, self.rng = pool, stats, random.Random(seed)

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
        return Live(device_id=onboarded.device_id,
                    serial=f"{onboarded.certificate.serial_number:x}",
                    key=device.operational_key)

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

    def operator(self, live: Live, action: str) -> None:
        body = json.dumps({"reason": "decommissioned"}).encode() if action == "retire" else None
        if self.call(f"operator.{action}", f"/v1/devices/{live.device_id}/{action}", body,
                     operator=True) is not None:
            live.state = {"quarantine": DeviceState.QUARANTINED, "release": DeviceState.ACTIVE,
                          "retire": DeviceState.RETIRED}[action]

    def step(self) -> None:
        """One random operation on a device this thread takes from the pool and gives back."""
        device = self.pool.take_fresh() if self.rng.random() < 0.5 else None
        if device is not None:
            live = self.onboard(device)
            if live is not None:
                self.pool.give(live)
            return
        op = self.rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
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

def _slope_mib_per_min(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    xs = [t / 60 for t, _ in points]
    ys = [v for _, v in points]
    return statistics.linear_regression(xs, ys).slope


def run(*, minutes: float, devices: int, threads: int, workers: int, sqlite: bool,
        out: Path | None) -> dict[str, Any]:
    """Run the soak and return the report (also written to ``out`` unless ``None``)."""
    with tempfile.TemporaryDirectory(prefix="iotrust-soak-") as tmp:
        base = Path(tmp)
        db_ctx = sqlite_database(base) if sqlite else postgres_database()
        with db_ctx as database_url:
            t_setup = time.perf_counter()
            setup = prepare(base, database_url, devices)
            setup_s = time.perf_counter() - t_setup
            pool, stats = Pool(fresh=list(setup.devices)), Stats()
            rss: list[dict[str, Any]] = []
            with serve(setup.settings, workers) as (url, proc):
                stop = threading.Event()
                start = time.monotonic()
                end = start + minutes * 60

                def worker(seed: int) -> None:
                    driver = Driver(url, setup.admin_token, pool, stats, seed)
                    with driver.http:
                        while time.monotonic() < end and not stop.is_set():
                            driver.step()

                def sampler() -> None:
                    while True:
                        per = server_rss(proc.pid)
                        rss.append({"t_s": round(time.monotonic() - start, 1),
                                    "total_mib": round(sum(per.values()) / 1024, 1),
                                    "processes": len(per)})
                        if stop.wait(RSS_EVERY_S):
                            return

                sample = threading.Thread(target=sampler, daemon=True)
                sample.start()
                pool_threads = [threading.Thread(target=worker, args=(i,), daemon=True)
                                for i in range(threads)]
                for t in pool_threads:
                    t.start()
                for t in pool_threads:
                    t.join()
                elapsed = time.monotonic() - start
                stop.set()
                sample.join()
            invariants = check_invariants(database_url)
    totals = [r["total_mib"] for r in rss]
    rows = stats.table()
    report = {
        "minutes": minutes, "elapsed_s": round(elapsed, 1), "devices": devices,
        "threads": threads, "workers": workers,
        "database": "sqlite" if sqlite else "postgresql", "setup_s": round(setup_s, 1),
        "mqtt": "not exercised (no broker in the soak)",
        "operations": rows,
        "total_requests": sum(r["count"] for r in rows),
        "total_errors": sum(r["errors"] for r in rows),
        "rss": {"first_mib": totals[0] if totals else None,
                "last_mib": totals[-1] if totals else None,
                "max_mib": max(totals) if totals else None,
                "slope_mib_per_min": round(_slope_mib_per_min(
                    [(r["t_s"], r["total_mib"]) for r in rss]), 2),
                "samples": rss},
        "pool_at_end": {"never_onboarded": len(pool.fresh), "active": len(pool.active),
                        "quarantined": len(pool.quarantined), "retired": pool.retired},
        "invariants": invariants,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_report(report: dict[str, Any]) -> None:
    """The human-readable table."""
    print(f"soak: {report['elapsed_s']} s, {report['devices']} devices, {report['threads']} "
          f"threads, serve --workers {report['workers']} on {report['database']} "
          f"(set-up {report['setup_s']} s)")
    print(f"{'operation':<20}{'count':>9}{'errors':>8}{'err %':>8}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'max ms':>9}")
    for r in report["operations"]:
        print(f"{r['op']:<20}{r['count']:>9}{r['errors']:>8}{100 * r['error_rate']:>8.2f}"
              f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}")
        for sample in r["error_samples"]:
            print(f"    e.g. {sample}")
    rss = report["rss"]
    print(f"server RSS (all processes): first {rss['first_mib']} MiB, last {rss['last_mib']} "
          f"MiB, max {rss['max_mib']} MiB, slope {rss['slope_mib_per_min']} MiB/min "
          f"({len(rss['samples'])} samples)")
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
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    report = run(minutes=args.minutes, devices=args.devices, threads=args.threads,
                 workers=args.workers, sqlite=args.sqlite, out=args.out)
    print_report(report)
    print(f"written to {args.out}")
    ok = report["invariants"]["ok"] and report["total_errors"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
