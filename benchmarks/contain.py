"""Time to contain: quarantine one device among >= 1,000 live mTLS sessions on a real Mosquitto.

From the quarantine command (``services.broker.quarantine``: registry transition + event, ACL
regenerated and written, SIGHUP applied, dynsec kick) to

(a) the first refused (PUBACK 0x87) out-of-quarantine publish of that device after it reconnects,
(b) its live session being cut (the client sees the DISCONNECT),

p50/p99 over the runs, and the number of *other* devices that lost their session (must be 0).
The devices are paho-mqtt clients spread over a few processes (~250 sessions each, one paho loop
thread per session); times are CLOCK_MONOTONIC, shared by every process. Each run picks another
device and releases it afterwards (not timed).

``run(quick)`` returns rows ``{name, n, p50_ms, p99_ms, ..., extra}``; ``python -m
benchmarks.contain [--quick]`` prints them. Full: 1,000 devices, 60 runs; quick: 100 devices,
10 runs.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import _mqtt_clients as sessions

REFUSED = 0x87
REFUSED_FLOOR = 0x80  # PUBACK codes below 0x80 are successes (0x10: no subscribers)


def _worker(conn: Any, port: int, ca: str, idents: list[sessions.Ident]) -> None:  # noqa: C901, PLR0912, PLR0915
    lock = threading.Lock()
    state: dict[str, Any] = {"armed": None, "cut": None, "lost": 0,
                             "reconnected": threading.Event()}
    clients: dict[str, Any] = {}  # by name, once connect_all has connected them
    acks: dict[tuple[str, int], Any] = {}
    ack_cond = threading.Condition()

    def make(name: str, cert: str, key: str) -> Any:
        c = sessions.tls_client(name, cert, key, ca, reconnect_delay=0)

        def on_disconnect(_c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
            now = time.monotonic()
            with lock:
                if state["armed"] == name:
                    if state["cut"] is None:
                        state["cut"] = now
                elif state["expect"] != name:
                    state["lost"] += 1

        def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if not rc.is_failure and state.get("armed_or_expect") == name:
                state["reconnected"].set()

        def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
            with ack_cond:
                acks[(name, mid)] = rc
                ack_cond.notify_all()

        c.on_disconnect = on_disconnect
        c.on_connect = on_connect
        c.on_publish = on_publish
        return c

    def publish(name: str, topic: str, timeout: float = 5.0) -> int | None:
        info = clients[name].publish(topic, b"x", qos=1)
        if info.rc != 0:
            return None
        deadline = time.monotonic() + timeout
        with ack_cond:
            while (name, info.mid) not in acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                ack_cond.wait(left)
            return int(acks.pop((name, info.mid)).value)

    state["expect"] = None
    clients.update(sessions.connect_all(conn, port, idents, make, keepalive=120, timeout=120))
    while True:
        msg = conn.recv()
        if msg[0] == "arm":
            name = msg[1]
            with lock:
                state["armed"], state["cut"] = name, None
                state["armed_or_expect"] = name
                state["reconnected"].clear()
            conn.send(("armed",))
        elif msg[0] == "measure":
            # wait for the cut, the reconnect, then publish outside quarantine until refused
            name = state["armed"]
            refused_at = None
            if state["reconnected"].wait(10):
                for _ in range(50):
                    if not clients[name].is_connected():
                        time.sleep(0.001)
                        continue
                    rc = publish(name, f"devices/{name}/telemetry")
                    if rc == REFUSED:
                        refused_at = time.monotonic()
                        break
            conn.send(("measured", state["cut"], refused_at))
        elif msg[0] == "expect":  # a release is coming: its kick is expected, not a loss
            name = msg[1]
            with lock:
                state["armed"], state["expect"] = None, name
                state["armed_or_expect"] = name
                state["reconnected"].clear()
            conn.send(("ok",))
        elif msg[0] == "restored":
            name = state["expect"]
            ok = False
            last: int | str | None = "no reconnect"  # the last publish's result code
            if state["reconnected"].wait(10):
                for _ in range(50):
                    if clients[name].is_connected():
                        code = publish(name, f"devices/{name}/telemetry")
                        last = code
                        if code is not None and code < REFUSED_FLOOR:
                            ok = True
                            break
                    time.sleep(0.01)
            if not ok:
                print(f"restore of {name} failed: {last}", file=sys.stderr)
            with lock:
                state["expect"] = None
                state["armed_or_expect"] = None
            conn.send(("restored", ok))
        elif msg[0] == "stop":
            with lock:
                lost = state["lost"]
                connected = sum(c.is_connected() for c in clients.values())
            sessions.disconnect_all(clients)
            conn.send(("stopped", lost, connected))
            return


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(quick: bool) -> list[dict[str, Any]]:  # noqa: PLR0915
    from tests.integration.mqtt import build_testbed  # noqa: PLC0415

    from iotrust.services import broker as broker_svc  # noqa: PLC0415

    devices, runs = (100, 10) if quick else (1000, 60)
    base = Path(tempfile.mkdtemp(prefix="iotrust-contain-"))
    t_build = time.perf_counter()
    tb = build_testbed(base, devices=devices)
    build_s = time.perf_counter() - t_build
    rows: list[dict[str, Any]] = []
    with tb.running() as broker:
        workers, owner, processes = sessions.start_workers(_worker, tb.devices,
                                                           broker.settings.port,
                                                           str(broker.layout.ca))
        t_conn = time.perf_counter()
        ready = sessions.wait_ready(workers)
        connect_s = time.perf_counter() - t_conn
        if ready != devices:
            raise RuntimeError(f"only {ready}/{devices} devices connected")
        rng = random.Random(7)
        targets = rng.sample([d.name for d in tb.devices], runs)
        to_refused, to_cut, command, failures = [], [], [], 0
        steps: dict[str, list[float]] = {}
        db = tb.db()
        try:
            for name in targets:
                conn = workers[owner[name]][1]
                conn.send(("arm", name))
                conn.recv()
                t0 = time.monotonic()
                result = broker_svc.quarantine(db, tb.clock, broker, name, actor="bench@contain",
                                               reason="benchmark")
                t_cmd = time.monotonic()
                conn.send(("measure",))
                _, cut, refused = conn.recv()
                if cut is None or refused is None:
                    failures += 1
                else:
                    to_cut.append((cut - t0) * 1000)
                    to_refused.append((refused - t0) * 1000)
                command.append((t_cmd - t0) * 1000)
                for k, v in result.timings_ms.items():
                    steps.setdefault(k, []).append(v)
                conn.send(("expect", name))
                conn.recv()
                broker_svc.release(db, tb.clock, broker, name, actor="bench@contain")
                conn.send(("restored",))
                if not conn.recv()[1]:
                    failures += 1
        finally:
            db.close()
        lost, still = sessions.stop_workers(workers)
        acl = broker.last_acl
    shutil.rmtree(base, ignore_errors=True)
    extra = {"devices": devices, "processes": processes, "runs": runs, "failures": failures,
             "other_devices_lost_session": lost, "connected_at_end": still,
             "acl_layout": acl.mode.value if acl else None,
             "command_steps_p50_ms": {k: round(statistics.median(v), 2) for k, v in steps.items()},
             "setup_s": {"build": round(build_s, 1), "connect": round(connect_s, 1)},
             "target_ms": {"p99": 1000, "aim": 250}}
    for name, values in (("contain.quarantine_to_refused_publish", to_refused),
                         ("contain.quarantine_to_session_cut", to_cut),
                         ("contain.quarantine_command", command)):
        if not values:
            rows.append({"name": name, "n": 0, "extra": extra})
            continue
        rows.append({"name": name, "n": len(values),
                     "p50_ms": round(statistics.median(values), 2),
                     "p99_ms": round(_pct(values, 0.99), 2),
                     "max_ms": round(max(values), 2), "min_ms": round(min(values), 2),
                     "extra": extra})
    return rows


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(json.dumps(row))
