"""Sustaining and ending trust: rotation throughput, CRL size/time, retire-to-refused.

* ``lifecycle.rotation`` — whole rotations (begin, complete, confirm with real ECDSA signatures,
  a new certificate issued and the old one revoked) per second through the service layer, on
  SQLite, in process; CRL republication per confirmation switched off (the campaign's cost is
  then the registry and the crypto; the CRL is republished once per sweep or batch);
  ``lifecycle.rotation_crl_per_confirm`` the same with the old credential's CA's CRL re-signed
  and published after every confirmation (no broker), a fifth of the devices.
* ``lifecycle.crl_build`` — building, signing and verifying one CRL with 100,000 revoked
  certificates (quick: 10,000): time and DER/PEM size, the core operation behind every
  ``publish_crls`` (cold, as in a fresh ``iotrust retire`` process, and again in the same
  process, as in ``iotrust serve``, where built entries are remembered); what a request that
  a concurrent publication already covered pays instead (parse the PEM, look the last serial
  up); what the broker adapter's check before replacing ``crl.pem`` costs (signature over the
  whole list, nextUpdate).
* ``lifecycle.retire_with_large_crl`` — ``iotrust retire DEVICE`` when its CA's CRL already
  lists 100,000 revoked certificates (quick: 10,000; bulk-loaded), 20 devices connected: the
  command's steps and the time to a refused handshake.
* ``lifecycle.retire_to_*`` — from ``iotrust retire DEVICE`` (``services.broker.retire``:
  registry transition, CRL published, verified and installed, reload, rules, kick) to (a) the
  device's live session being cut and (b) a fresh TLS handshake with its certificate being
  refused (probed until refused; handshakes accepted after the command returned are counted and
  must be 0), with the other devices connected to a real Mosquitto over mTLS, and the number of
  *other* devices that lost their session (must be 0). The devices are held by the containment
  benchmark's kind of worker processes (:mod:`benchmarks._mqtt_clients`: ``PER_PROCESS`` paho
  clients each, one loop thread per session); ``RLIMIT_NOFILE`` is raised to its hard limit
  first (Mosquitto inherits it). Full: 1,000 devices, 40 runs; quick: 100 devices, 5 runs.

``run(quick)`` returns rows ``{name, n, ..., extra}``; ``python -m benchmarks.lifecycle
[--quick]`` prints them.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import _mqtt_clients as sessions


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _rotation(quick: bool, *, publish: bool = False) -> dict[str, Any]:
    from tests.integration.fleet import build_fleet  # noqa: PLC0415
    from tests.integration.lifecycle_helpers import RotatingDevice  # noqa: PLC0415
    from tests.integration.mqtt import add_active_devices  # noqa: PLC0415

    from iotrust.ports import SystemClock  # noqa: PLC0415
    from iotrust.services.rotation import RotationService  # noqa: PLC0415

    n = (50 if quick else 500) // (5 if publish else 1)
    base = Path(tempfile.mkdtemp(prefix="iotrust-rotation-"))
    try:
        clock = SystemClock()
        fleet = build_fleet(base, makers=(), clock=clock)
        db = fleet.open_db()
        try:
            idents = add_active_devices(fleet, db, clock, n, base / "clients")
            svc = RotationService(db, clock, fleet.settings, fleet.secrets, publish=publish)
            devs = [RotatingDevice(i.name, i.cert, i.key) for i in idents]
            t0 = time.perf_counter()
            for dev in devs:
                dev.rotate(svc)
            elapsed = time.perf_counter() - t0
        finally:
            db.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    name = "lifecycle.rotation_crl_per_confirm" if publish else "lifecycle.rotation"
    return {"name": name, "n": n, "devices_per_s": round(n / elapsed, 1),
            "mean_ms": round(elapsed / n * 1000, 2),
            "extra": {"store": "sqlite", "crl_per_confirm": publish,
                      "includes": "device-side keygen, CSR and 3 signatures"}}


def _crl(quick: bool) -> dict[str, Any]:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from iotrust.adapters.keys.file import DeviceFileKey  # noqa: PLC0415
    from iotrust.adapters.mqtt.mosquitto import verify_crl_bundle  # noqa: PLC0415
    from iotrust.core import pki  # noqa: PLC0415
    from iotrust.ports import SystemClock  # noqa: PLC0415

    n = 10_000 if quick else 100_000
    base = Path(tempfile.mkdtemp(prefix="iotrust-crl-"))
    try:
        key = DeviceFileKey.generate(base / "ca.pem")
        now = datetime.now(UTC)
        root = pki.build_root_ca(key, "Bench Root", "bench", now, timedelta(days=365))
        entries = [pki.RevokedEntry(serial_number=int.from_bytes(os.urandom(19), "big") | 1,
                                    revoked_at=now) for _ in range(n)]
        t0 = time.perf_counter()
        crl = pki.build_crl(key, root, entries, crl_number=1, this_update=now,
                            next_update=now + timedelta(days=7))
        t_build = time.perf_counter() - t0
        # re-signing in the same process (a running service): remembered entries are reused
        t_re = time.perf_counter()
        pki.build_crl(key, root, entries, crl_number=2, this_update=now,
                      next_update=now + timedelta(days=7))
        t_rebuild = time.perf_counter() - t_re
        t1 = time.perf_counter()
        pki.check_crl(crl, root, now)
        t_check = time.perf_counter() - t1
        der = crl.public_bytes(serialization.Encoding.DER)
        pem = crl.public_bytes(serialization.Encoding.PEM)
        # what a coalesced request pays instead: parse the CRL in force, look its serials up
        t2 = time.perf_counter()
        parsed = x509.load_pem_x509_crl(pem)  # lazily, as services.crl_publication does
        found = parsed.get_revoked_certificate_by_serial_number(entries[-1].serial_number)
        t_lookup = time.perf_counter() - t2
        if found is None:
            raise RuntimeError("the last serial is not listed")
        # what the broker adapter checks before it replaces crl.pem (full parse + signature)
        t3 = time.perf_counter()
        verify_crl_bundle(pem, root.public_bytes(serialization.Encoding.PEM), SystemClock(),
                          timedelta(hours=1))
        t_install_check = time.perf_counter() - t3
        t_floor = _crl_floor(root, entries, now)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"name": "lifecycle.crl_build", "n": n, "build_ms": round(t_build * 1000, 1),
            "rebuild_same_process_ms": round(t_rebuild * 1000, 1),
            "verify_ms": round(t_check * 1000, 1),
            "parse_and_lookup_ms": round(t_lookup * 1000, 1),
            "broker_install_check_ms": round(t_install_check * 1000, 1), "der_bytes": len(der),
            "pem_bytes": len(pem), "floor_ms": round(t_floor * 1000, 1),
            "ratio_to_floor": round(t_build / t_floor, 2),
            "extra": {"bytes_per_entry_der": round(len(der) / n, 1),
                      "serials": "152-bit random",
                      "floor": "the same CRL built and signed by cryptography alone, same run"}}


def _crl_floor(ca: Any, entries: list[Any], now: datetime) -> float:
    """Seconds for cryptography alone to build and sign the same CRL (an in-memory key)."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    t0 = time.perf_counter()
    revoked = [x509.RevokedCertificateBuilder().serial_number(e.serial_number)
               .revocation_date(e.revoked_at).build() for e in entries]
    x509.CertificateRevocationListBuilder(
        issuer_name=ca.subject, last_update=now, next_update=now + timedelta(days=7),
        revoked_certificates=revoked).sign(key, hashes.SHA256())
    return time.perf_counter() - t0


def _raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (inherited by Mosquitto and workers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _retire_worker(conn: Any, port: int, ca: str,  # noqa: C901
                   idents: list[sessions.Ident]) -> None:
    """Hold ``idents`` connected (one paho loop thread each); report cuts and lost sessions.

    ``("arm", name)``: the next disconnect of ``name`` is the one being measured (its time is
    kept, and the client stops reconnecting: a retired device is probed from outside);
    ``("expect_retired", names)``: those will be cut too (not counted as lost).
    """
    _raise_fd_limit()
    lock = threading.Lock()
    state: dict[str, Any] = {"armed": None, "cut": None, "lost": 0, "retired": set()}
    cut_event = threading.Event()

    def make(name: str, cert: str, key: str) -> Any:
        c = sessions.tls_client(name, cert, key, ca, reconnect_delay=1)

        def on_disconnect(client: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
            now = time.monotonic()
            with lock:
                if state["armed"] == name:
                    if state["cut"] is None:
                        state["cut"] = now
                        cut_event.set()
                    state["retired"].add(name)
                    client.disconnect()  # no reconnect: the probe measures refusal
                elif name in state["retired"]:
                    client.disconnect()  # retired elsewhere: expected, no reconnect
                else:
                    state["lost"] += 1

        c.on_disconnect = on_disconnect
        return c

    clients = sessions.connect_all(conn, port, idents, make, keepalive=300, timeout=300)
    while True:
        msg = conn.recv()
        if msg[0] == "arm":
            with lock:
                state["armed"], state["cut"] = msg[1], None
                cut_event.clear()
            conn.send(("armed",))
        elif msg[0] == "expect_retired":
            with lock:
                state["retired"].update(msg[1])
            conn.send(("ok",))
        elif msg[0] == "cut":
            cut_event.wait(msg[1])
            with lock:
                conn.send(("cut", state["cut"]))
        elif msg[0] == "stop":
            with lock:
                lost = state["lost"]
                connected = sum(c.is_connected() for n, c in clients.items()
                                if n not in state["retired"])
            sessions.disconnect_all(clients)
            conn.send(("stopped", lost, connected))
            return


def _probe_until_refused(tb: Any, ident: Any, deadline: float) -> tuple[float | None, int]:
    """Fresh mTLS handshakes as ``ident`` until one is refused: (time refused, accepted before)."""
    accepted = 0
    while time.monotonic() < deadline:
        probe = tb.client(ident)
        ok = probe.connect()
        at = time.monotonic()
        probe.close()
        tb.clients.remove(probe)
        if not ok:
            return at, accepted
        accepted += 1
    return None, accepted


def _retire(quick: bool) -> list[dict[str, Any]]:  # noqa: PLR0915
    from tests.integration.mqtt import build_testbed  # noqa: PLC0415

    from iotrust.core.lifecycle import RetirementReason  # noqa: PLC0415
    from iotrust.services import broker as broker_svc  # noqa: PLC0415

    devices, runs = (100, 5) if quick else (1000, 40)
    nofile = _raise_fd_limit()
    if nofile < 3 * devices:
        raise RuntimeError(f"RLIMIT_NOFILE {nofile} is too low for {devices} devices")
    base = Path(tempfile.mkdtemp(prefix="iotrust-retire-"))
    cut: list[float] = []
    refused: list[float] = []
    command: list[float] = []
    steps: dict[str, list[float]] = {}
    others_lost, still, accepted_after, failures = 0, 0, 0, 0
    try:
        t_build = time.perf_counter()
        tb = build_testbed(base, devices=devices)
        build_s = time.perf_counter() - t_build
        with tb.running() as broker:
            workers, owner, processes = sessions.start_workers(
                _retire_worker, tb.devices, broker.settings.port, str(broker.layout.ca))
            t_conn = time.perf_counter()
            ready = sessions.wait_ready(workers)
            connect_s = time.perf_counter() - t_conn
            if ready != devices:
                raise RuntimeError(f"only {ready}/{devices} devices connected")
            targets = random.Random(11).sample(tb.devices, runs)
            floor_ms = _broker_floor(tb, broker, [d for d in tb.devices if d not in targets])
            db = tb.db()
            try:
                for ident in targets:
                    conn = workers[owner[ident.name]][1]
                    conn.send(("arm", ident.name))
                    conn.recv()
                    t0 = time.monotonic()
                    result = broker_svc.retire(db, tb.settings, tb.fleet.secrets, tb.clock,
                                               ident.name, broker=broker,
                                               reason=RetirementReason.DECOMMISSIONED,
                                               actor="bench@lifecycle")
                    command.append((time.monotonic() - t0) * 1000)
                    for k, v in result.timings_ms.items():
                        steps.setdefault(k, []).append(v)
                    at, accepted = _probe_until_refused(tb, ident, t0 + 10)
                    accepted_after += accepted
                    conn.send(("cut", 10.0))
                    _, cut_at = conn.recv()
                    if at is None or cut_at is None:
                        failures += 1
                        continue
                    refused.append((at - t0) * 1000)
                    cut.append((cut_at - t0) * 1000)
                victims = [d for d in tb.devices if d not in targets][:CONCURRENT_RETIREMENTS]
                for _, parent in workers:
                    parent.send(("expect_retired", [v.name for v in victims]))
                    parent.recv()
                concurrent = _concurrent_retire(tb, victims)
            finally:
                db.close()
            others_lost, still = sessions.stop_workers(workers)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    extra = {"devices": devices, "processes": processes, "runs": runs, "failures": failures,
             "other_devices_lost_session": others_lost,
             "others_connected_at_end": still, "expected_connected_at_end": devices - runs,
             "handshakes_accepted_after_retire_returned": accepted_after,
             "command_p50_ms": round(statistics.median(command), 1) if command else None,
             "command_p99_ms": round(_pct(command, 0.99), 1) if command else None,
             "command_steps_p50_ms": {k: round(statistics.median(v), 2)
                                      for k, v in steps.items()},
             "setup_s": {"build": round(build_s, 1), "connect": round(connect_s, 1)},
             "rlimit_nofile": nofile, "target_ms": {"p99": 2000},
             "floor_ms": round(floor_ms, 1),
             "floor": "median of a bare broker reload (SIGHUP + barrier) plus a median accepted"
                      " mTLS handshake, same run, same broker and fleet"}
    extra["expected_connected_at_end"] = devices - runs - CONCURRENT_RETIREMENTS
    rows = [concurrent]
    for name, values in (("lifecycle.retire_to_session_cut", cut),
                         ("lifecycle.retire_to_refused_handshake", refused)):
        p50 = statistics.median(values) if values else None
        rows.append({"name": name, "n": len(values),
                     "p50_ms": round(p50, 1) if p50 is not None else None,
                     "p99_ms": round(_pct(values, 0.99), 1) if values else None,
                     "max_ms": round(max(values), 1) if values else None,
                     "p50_ratio_to_floor": round(p50 / floor_ms, 2) if p50 and floor_ms else None,
                     "extra": extra})
    return rows


def _fill_revoked(tb: Any, n: int) -> None:
    """``n`` revoked, unexpired credentials of no device under the active issuing CA (bulk)."""
    from sqlalchemy import insert  # noqa: PLC0415

    from iotrust.adapters.sql import schema  # noqa: PLC0415
    from iotrust.services.domain import active_issuing_ca  # noqa: PLC0415

    db = tb.db()
    try:
        with db.transaction(readonly=True) as tx:
            ca = active_issuing_ca(tx)
        now = datetime.now(UTC)
        rows = [{"serial_number": f"{int.from_bytes(os.urandom(19), 'big') | 1:x}",
                 "device_id": None, "subject": "filler", "spki_sha256": os.urandom(32).hex(),
                 "issuer_ca_id": ca.id, "not_before": now - timedelta(days=1),
                 "not_after": now + timedelta(days=29), "state": "revoked",
                 "certificate_pem": "-", "revoked_at": now, "revocation_reason": "superseded",
                 "created_at": now} for _ in range(n)]
        with db._engine.begin() as conn:  # noqa: SLF001 - a benchmark's bulk load
            conn.execute(insert(schema.credentials), rows)
    finally:
        db.close()


def _retire_large_crl(quick: bool) -> dict[str, Any]:
    """``iotrust retire DEVICE`` when the CA's CRL already lists 100,000 revocations.

    In one process, as in ``iotrust serve``: the first publication (before the broker starts)
    leaves the built entries remembered, as a running service has them.
    """
    from tests.integration.mqtt import build_testbed  # noqa: PLC0415

    from iotrust.core.lifecycle import RetirementReason  # noqa: PLC0415
    from iotrust.services import broker as broker_svc  # noqa: PLC0415
    from iotrust.services import credentials  # noqa: PLC0415

    entries, devices, runs = (10_000, 10, 3) if quick else (100_000, 20, 8)
    base = Path(tempfile.mkdtemp(prefix="iotrust-retire-crl-"))
    command: list[float] = []
    refused: list[float] = []
    steps: dict[str, list[float]] = {}
    try:
        tb = build_testbed(base, devices=devices)
        _fill_revoked(tb, entries)
        db = tb.db()
        try:
            credentials.publish_crls(db, tb.settings, tb.fleet.secrets, tb.clock,
                                     actor="bench@lifecycle")
        finally:
            db.close()
        with tb.running() as broker:
            clients = {d.name: tb.client(d) for d in tb.devices}
            if not all(c.connect() for c in clients.values()):
                raise RuntimeError("not every device connected")
            db = tb.db()
            try:
                for ident in tb.devices[:runs]:
                    t0 = time.monotonic()
                    result = broker_svc.retire(db, tb.settings, tb.fleet.secrets, tb.clock,
                                               ident.name, broker=broker,
                                               reason=RetirementReason.DECOMMISSIONED,
                                               actor="bench@lifecycle")
                    command.append((time.monotonic() - t0) * 1000)
                    for k, v in result.timings_ms.items():
                        steps.setdefault(k, []).append(v)
                    at, _ = _probe_until_refused(tb, ident, t0 + 20)
                    if at is not None:
                        refused.append((at - t0) * 1000)
            finally:
                db.close()
            crl_bytes = broker.layout.crl.stat().st_size
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"name": "lifecycle.retire_with_large_crl", "n": len(command),
            "p50_ms": round(statistics.median(command), 1) if command else None,
            "p99_ms": round(_pct(command, 0.99), 1) if command else None,
            "refused_p50_ms": round(statistics.median(refused), 1) if refused else None,
            "extra": {"revoked_entries": entries, "crl_pem_bytes": crl_bytes,
                      "connected_devices": devices,
                      "steps_p50_ms": {k: round(statistics.median(v), 1)
                                       for k, v in steps.items()},
                      "target_ms": {"p99": 2000}}}


CONCURRENT_RETIREMENTS = 16
_THREADS = 8


def _concurrent_retire(tb: Any, victims: list[Any]) -> dict[str, Any]:
    """Retire ``victims`` from ``_THREADS`` threads at once; count the CRL signatures."""
    from iotrust.core import events as ev  # noqa: PLC0415
    from iotrust.core.lifecycle import RetirementReason  # noqa: PLC0415
    from iotrust.services import broker as broker_svc  # noqa: PLC0415

    def signatures() -> int:
        db = tb.db()
        try:
            with db.transaction(readonly=True) as tx:
                return sum(1 for _ in tx.iter_events(kind=ev.CRL_PUBLISHED))
        finally:
            db.close()

    before = signatures()
    times: list[float] = []
    refused: list[bool] = []
    lock = threading.Lock()
    todo = list(victims)
    start = threading.Barrier(_THREADS)

    def work() -> None:
        db = tb.db()
        broker = broker_svc.open_broker(tb.settings, tb.clock)
        try:
            start.wait()
            while True:
                with lock:
                    if not todo:
                        return
                    ident = todo.pop()
                t0 = time.monotonic()
                broker_svc.retire(db, tb.settings, tb.fleet.secrets, tb.clock, ident.name,
                                  broker=broker, reason=RetirementReason.DECOMMISSIONED,
                                  actor="bench@lifecycle")
                elapsed = (time.monotonic() - t0) * 1000
                probe = tb.client(ident)
                ok = probe.connect()
                probe.close()
                with lock:
                    times.append(elapsed)
                    refused.append(not ok)
        finally:
            if broker is not None:
                broker.close()
            db.close()

    threads = [threading.Thread(target=work) for _ in range(_THREADS)]
    t_all = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wall = time.monotonic() - t_all
    return {"name": "lifecycle.retire_concurrent", "n": len(times),
            "p50_ms": round(statistics.median(times), 1) if times else None,
            "p99_ms": round(_pct(times, 0.99), 1) if times else None,
            "retirements_per_s": round(len(times) / wall, 1),
            "extra": {"threads": _THREADS, "crl_signatures": signatures() - before,
                      "refused_on_return": sum(refused),
                      "note": "each request's CRL step is skipped when a publication that "
                              "finished while it waited already lists its serials"}}


def _broker_floor(tb: Any, broker: Any, healthy: list[Any], n: int = 10) -> float:
    """The least any retirement must wait for: one reload processed plus one handshake (ms)."""
    reloads, handshakes = [], []
    for i in range(n):
        t0 = time.monotonic()
        broker.reload()
        reloads.append(time.monotonic() - t0)
        probe = tb.client(healthy[i % len(healthy)])
        t1 = time.monotonic()
        ok = probe.connect()
        handshakes.append(time.monotonic() - t1)
        probe.close()
        tb.clients.remove(probe)
        if not ok:
            raise RuntimeError("a healthy device could not connect")
    return (statistics.median(reloads) + statistics.median(handshakes)) * 1000


def run(quick: bool) -> list[dict[str, Any]]:
    """The lifecycle benchmark rows."""
    return [_rotation(quick), _rotation(quick, publish=True), _crl(quick),
            _retire_large_crl(quick), *_retire(quick)]


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(json.dumps(row))
