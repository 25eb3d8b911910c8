"""Policy decisions per second: the pure ``decide`` in-process, and the EMQX authz hook over HTTP.

``run(quick) -> list[dict]`` returns rows ``{name, rate, floor, ratio, unit, extra}``:

- ``decide_*``: :func:`iotrust.core.policy.decide` in a loop over many devices, one row per
  request shape (publish to an own exact topic, subscribe under an own ``#`` rule, a wildcard
  subscription, a denied publish to another device's topic, a realistic mix). Floor: the same
  loop doing only a dict lookup and a tuple comparison per request (what any decision must do at
  least: find the device, compare the request). Target: ≥ 500,000 decisions/s for the mix.
- ``emqx_authz_http``: ``POST /v1/broker/emqx/authz`` against real ``iotrust serve`` processes
  (one per CPU, single-worker, sharing one SQLite registry with many devices; see
  :func:`_serve` for why not ``--workers``) from a few threads, each with one keep-alive
  httpx client (``TCP_NODELAY``). Floor: the same endpoint without the shared secret (refused
  before any parsing or database work: the HTTP stack's own cost). Target: ≥ 10,000
  decisions/s.

``python -m benchmarks.decide [--quick]`` prints the rows. Nothing is asserted.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import DeviceState
from iotrust.core.policy import DEFAULT_POLICY, Action, decide

SECRET = "benchmark-broker-hook-secret-0123456789"
HEADER = "x-iotrust-broker-secret"
IN_PROCESS_TARGET = 500_000.0
HTTP_TARGET = 10_000.0


def _ids(n: int) -> list[str]:
    return [new_device_id(i.to_bytes(16, "big")) for i in range(n)]


def _best(rounds: int, work: Callable[[], float]) -> float:
    return max(work() for _ in range(rounds))


def _loop_rate(requests: list[tuple[str, Action, str]], states: dict[str, DeviceState]) -> float:
    start = time.perf_counter()
    for device, action, topic in requests:
        decide(device, states[device], None, action, topic)
    return len(requests) / (time.perf_counter() - start)


def _floor_rate(requests: list[tuple[str, Action, str]], states: dict[str, DeviceState]) -> float:
    allowed = {(device, Action.PUBLISH, f"devices/{device}/telemetry") for device in states}
    hits = 0
    start = time.perf_counter()
    for device, action, topic in requests:
        if states.get(device) is DeviceState.ACTIVE and (device, action, topic) in allowed:
            hits += 1
    elapsed = time.perf_counter() - start
    del hits
    return len(requests) / elapsed


def _shapes(ids: list[str], n: int) -> dict[str, list[tuple[str, Action, str]]]:
    count = len(ids)
    pub, sub = Action.PUBLISH, Action.SUBSCRIBE
    own = [(ids[i % count], pub, f"devices/{ids[i % count]}/telemetry") for i in range(n)]
    under = [(ids[i % count], sub, f"devices/{ids[i % count]}/commands/reboot") for i in range(n)]
    wild = [(ids[i % count], sub, f"devices/{ids[i % count]}/config/+/x") for i in range(n)]
    other = [(ids[i % count], pub, f"devices/{ids[(i + 1) % count]}/telemetry") for i in range(n)]
    # A plausible broker mix: mostly telemetry publishes, some subscriptions, a few refusals.
    mix = [own[i] if i % 10 < 7 else under[i] if i % 10 < 8 else wild[i] if i % 10 < 9
           else other[i] for i in range(n)]
    return {"decide_publish_own": own, "decide_subscribe_under_hash": under,
            "decide_subscribe_wildcard": wild, "decide_publish_other_denied": other,
            "decide_mix": mix}


def in_process(quick: bool) -> list[dict[str, Any]]:
    """``decide`` rates per request shape, each next to the dict+tuple floor."""
    devices = 1_000 if quick else 10_000
    n = 100_000 if quick else 500_000
    rounds = 2 if quick else 3
    ids = _ids(devices)
    states = dict.fromkeys(ids, DeviceState.ACTIVE)
    for device in ids:  # warm the per-device rendering once, as a long-running server would
        decide(device, DeviceState.ACTIVE, DEFAULT_POLICY, Action.PUBLISH, "x")
    rows = []
    for name, requests in _shapes(ids, n).items():
        floor = _best(rounds, lambda r=requests: _floor_rate(r, states))
        rate = _best(rounds, lambda r=requests: _loop_rate(r, states))
        rows.append({"name": name, "rate": rate, "floor": floor, "ratio": rate / floor,
                     "unit": "decisions/s",
                     "extra": {"devices": devices, "requests": n, "rounds": rounds,
                               "target": IN_PROCESS_TARGET if name == "decide_mix" else None,
                               "meets_target": rate >= IN_PROCESS_TARGET
                               if name == "decide_mix" else None}})
    return rows


# -- over HTTP ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _seed_registry(folder: Path, devices: int) -> list[str]:
    """A SQLite registry with ``devices`` ACTIVE devices (written directly: no CA needed)."""
    from iotrust.adapters.sql.store import Database  # noqa: PLC0415 - HTTP part only
    from iotrust.core.lifecycle import Device, KeyStorage  # noqa: PLC0415
    from iotrust.core.records import Manufacturer  # noqa: PLC0415

    now = datetime.now(UTC)
    ids = _ids(devices)
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    db = Database.open(f"sqlite:///{folder / 'iotrust.db'}")
    try:
        with db.transaction() as tx:
            tx.add_manufacturer(Manufacturer(name="bench", display_name="Bench", anchors_pem=pem,
                                             allowed=("bench:sensor",), created_at=now))
            tx.add_devices([Device(
                id=device_id, manufacturer="bench", serial=f"SN-{i:08d}",
                factory_spki_sha256=hashlib.sha256(device_id.encode()).hexdigest(),
                vendor_id="bench", product_id="sensor", owner="operator",
                state=DeviceState.ACTIVE, created_at=now, updated_at=now,
                key_storage=KeyStorage.TPM) for i, device_id in enumerate(ids)])
    finally:
        db.close()
    return ids


@contextmanager
def _serve_one(folder: Path, index: int) -> Iterator[str]:
    """One ``iotrust serve --workers 1`` on a free port; yields its URL."""
    port = _free_port()
    env = {**os.environ, "IOTRUST_DATA": str(folder), "IOTRUST_BROKER_HOOK_SECRET": SECRET}
    env.pop("IOTRUST_DATABASE_URL", None)
    log = folder / f"serve-{index}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iotrust.cli.main", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"iotrust serve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/v1/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"iotrust serve did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def _serve(folder: Path, instances: int) -> Iterator[list[str]]:
    """``instances`` single-worker servers on one registry, as behind a load balancer.

    Not ``--workers N``: uvicorn 0.54 binds the shared socket of its worker processes without
    ``IPPROTO_TCP``, so asyncio does not set ``TCP_NODELAY`` on their connections and every
    response waits ~40 ms for the client's delayed ACK (measured here: 1.6 ms per request with
    one worker, 45 ms with two, on a bare ASGI app).
    """
    with ExitStack() as stack:
        yield [stack.enter_context(_serve_one(folder, i)) for i in range(instances)]


def _check(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"authz answered {response.status_code}")


def _drive(urls: list[str], bodies: list[bytes], headers: dict[str, str], threads: int,
           seconds: float) -> tuple[float, int, int]:
    """Requests/s from ``threads`` keep-alive clients for ``seconds``; (rate, allows, total)."""
    stop = time.perf_counter() + seconds
    counts: list[tuple[int, int]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        done = allows = 0
        # Without TCP_NODELAY, headers and body go out as two segments and Nagle + delayed ACK
        # add ~40 ms to every request (EMQX's HTTP client sets nodelay itself).
        transport = httpx.HTTPTransport(
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        try:
            with httpx.Client(base_url=urls[offset % len(urls)], timeout=30.0, headers=headers,
                              transport=transport) as client:
                i = offset
                while time.perf_counter() < stop:
                    response = client.post("/v1/broker/emqx/authz",
                                           content=bodies[i % len(bodies)])
                    _check(response)
                    allows += response.content == b'{"result":"allow"}'
                    done += 1
                    i += threads
        except Exception as exc:  # noqa: BLE001 - reported after the run
            failures.append(exc)
        with lock:
            counts.append((done, allows))

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"authz over HTTP failed: {failures[0]}") from failures[0]
    total = sum(c[0] for c in counts)
    return total / elapsed, sum(c[1] for c in counts), total


def over_http(quick: bool, *, instances: int | None = None, threads: int = 8,
              ) -> list[dict[str, Any]]:
    """Authorization decisions per second through the EMQX-format hook of a real server."""
    devices = 1_000 if quick else 10_000
    seconds = 2.0 if quick else 6.0
    instances = instances or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="iotrust-bench-decide-") as tmp:
        folder = Path(tmp)
        ids = _seed_registry(folder, devices)
        bodies = []
        for i, device in enumerate(ids):
            own = i % 10 != 9  # one request in ten is for another device's topic
            target = device if own else ids[(i + 1) % len(ids)]
            bodies.append(json.dumps({"clientid": device, "username": device,
                                      "topic": f"devices/{target}/telemetry",
                                      "action": "publish", "peerhost": "127.0.0.1"}).encode())
        with _serve(folder, instances) as urls:
            _drive(urls, bodies, {HEADER: SECRET}, threads, 0.5)  # warm-up
            floor, _, floor_n = _drive(urls, bodies, {}, threads, seconds)
            rate, allows, total = _drive(urls, bodies, {HEADER: SECRET}, threads, seconds)
    return [{"name": "emqx_authz_http", "rate": rate, "floor": floor, "ratio": rate / floor,
             "unit": "decisions/s",
             "extra": {"devices": devices, "server_instances": instances,
                       "client_threads": threads,
                       "seconds": seconds, "requests": total, "allowed": allows,
                       "floor_requests": floor_n,
                       "floor_is": "same endpoint without the secret (denied before any work)",
                       "target": HTTP_TARGET, "meets_target": rate >= HTTP_TARGET}}]


def run(quick: bool) -> list[dict[str, Any]]:
    """Every row of this benchmark (in-process first, then over HTTP)."""
    return in_process(quick) + over_http(quick)


if __name__ == "__main__":
    for row in run("--quick" in sys.argv[1:]):
        print(f"{row['name']:<30} {row['rate']:>12,.0f} {row['unit']}   floor "
              f"{row['floor']:>12,.0f}   ratio {row['ratio']:5.2f}   {row['extra']}")
