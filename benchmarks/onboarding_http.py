"""Onboarding over HTTP: a real ``iotrust serve --workers N``, many simulated devices, devices/s.

The devices come from :func:`benchmarks.onboarding.prepare_fleet` (a real supply chain, vouchers
imported, every device's operational key and CSR made before the clock starts, as a device would
before it first connects). The hello message is built before the clock too: it carries only the
serial, the factory chain and the device's own nonce. What the protocol forbids preparing ahead,
the driver does inside the timed window: the attest transcript signature (it covers the server's
nonce) and the confirm signature (it covers the issued certificate). The device's own voucher and
chain checks are skipped (the in-process ``onboarding`` line measures them).

The driver is one asyncio process with ``concurrency`` keep-alive HTTP/1.1 connections written
and read directly on asyncio streams (no client library between the device and the socket); each
connection onboards one device after the other. It runs on the same cores as the server, so the
result line also says where the CPU went during the timed window: the driver's own CPU (this
process), the server's (the ``serve`` process and its workers, from ``/proc``) and the rest (idle
or other programs), next to the crypto floor measured in the same run (the ECDSA work one
onboarding cannot avoid) and the rate of the cheapest route (``GET /v1/health``) over the same
connections, the HTTP stack's own ceiling.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from benchmarks import Config, Result, Skipped, best, per_second
from benchmarks.onboarding import (
    FLOOR_SIGNATURES,
    FLOOR_VERIFICATIONS,
    SimulatedDevice,
    _free_port,
    _lean_onboarded,
    _lean_session,
    onboarding_floor_rate,
    prepare_fleet,
)
from benchmarks.registry import PASSPHRASE
from iotrust.adapters.sql.store import Database
from iotrust.core import onboarding as proto
from iotrust.ports import SystemClock

TARGET_HTTP_RATE: Final = 1_000.0
CONCURRENCY: Final = 32
_HOST: Final = "127.0.0.1"
_MAX_RESPONSE_BYTES: Final = 1024 * 1024


def missing_http() -> str | None:
    """Why the HTTP onboarding benchmark cannot run (``None`` if it can)."""
    if importlib.util.find_spec("iotrust.api.onboarding") is None:
        return "iotrust.api.onboarding (the HTTP routes) does not exist yet"
    return None


class HttpError(RuntimeError):
    """A response the driver did not expect (a refusal, a malformed reply, a closed socket)."""


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One device with its hello request encoded ahead (serial, chain, its own nonce)."""

    device: SimulatedDevice
    hello: proto.HelloRequest
    hello_wire: bytes


class _Connection:
    """One keep-alive HTTP/1.1 connection: a request written, its response read, in turn."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(_HOST, self._port)
        return self._reader, self._writer

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request; return (status, body). Reconnects if the server closed the socket."""
        reader, writer = await self._open()
        head = (f"{method} {path} HTTP/1.1\r\nhost: {_HOST}:{self._port}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
        writer.write(head.encode("ascii") + body)
        try:
            status, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            length = int(headers.get("content-length", "0"))
            if length > _MAX_RESPONSE_BYTES:
                raise HttpError(f"{path}: a {length}-byte response")
            payload = await reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise HttpError(f"{path}: connection lost ({exc!r})") from exc
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, payload

    async def close(self) -> None:
        """Close the socket (the next request opens a new one)."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HttpError(f"not an HTTP status line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError("chunked responses are not expected from the onboarding routes")
    return int(parts[1]), headers


async def _post(conn: _Connection, path: str, body: bytes) -> bytes:
    status, payload = await conn.request("POST", path, body)
    if status >= 300:
        raise HttpError(f"{path}: HTTP {status} {payload[:200]!r}")
    return payload


async def _onboard(conn: _Connection, prepared: _Prepared) -> None:
    """hello → attest → confirm for one device, signing what cannot be signed ahead."""
    device = prepared.device
    answer = await _post(conn, "/v1/onboarding/hello", prepared.hello_wire)
    session = _lean_session(prepared.hello, proto.HelloResponse.from_wire(answer))
    attest = proto.build_attest(session, factory_signer=device.factory_key,
                                csr_der=device.csr_der)
    answer = await _post(conn, "/v1/onboarding/attest", attest.to_wire())
    onboarded = _lean_onboarded(proto.AttestResponse.from_wire(answer))
    confirm = proto.build_confirm(session, onboarded, operational_signer=device.operational_key)
    await _post(conn, "/v1/onboarding/confirm", confirm.to_wire())


def prepare(devices: list[SimulatedDevice]) -> list[_Prepared]:
    """Each device's hello, encoded before the clock (nothing in it depends on the server)."""
    out = []
    for device in devices:
        hello = proto.build_hello(serial=device.serial, factory_chain=device.factory_chain,
                                  random=os.urandom)
        out.append(_Prepared(device, hello, hello.to_wire()))
    return out


async def _drive_async(port: int, devices: list[_Prepared], concurrency: int) -> None:
    pending = iter(devices)
    conns = [_Connection(port) for _ in range(concurrency)]

    async def worker(conn: _Connection) -> None:
        for prepared in pending:  # one iterator shared by every worker: each device once
            await _onboard(conn, prepared)

    try:
        async with asyncio.TaskGroup() as group:
            for conn in conns:
                group.create_task(worker(conn))
    finally:
        for conn in conns:
            await conn.close()


async def _health_async(port: int, count: int, concurrency: int) -> None:
    conns = [_Connection(port) for _ in range(concurrency)]
    remaining = count

    async def worker(conn: _Connection) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status, body = await conn.request("GET", "/v1/health")
            if status != 200:
                raise HttpError(f"/v1/health: HTTP {status} {body[:200]!r}")

    try:
        async with asyncio.TaskGroup() as group:
            for conn in conns:
                group.create_task(worker(conn))
    finally:
        for conn in conns:
            await conn.close()


def _cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of ``root_pid`` and its live descendants (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        stack.extend(int(c) for c in children)
    return total


@dataclass(frozen=True, slots=True)
class Window:
    """One timed window: wall seconds and the CPU seconds the driver and the server used."""

    wall_s: float
    driver_cpu_s: float
    server_cpu_s: float

    @property
    def cores_idle_or_other(self) -> float:
        """CPU seconds of the machine's cores spent neither by the driver nor by the server."""
        return max(0.0, (os.cpu_count() or 1) * self.wall_s - self.driver_cpu_s
                   - self.server_cpu_s)


def run_window(server_pid: int, run: Callable[[], Coroutine[object, object, None]]) -> Window:
    """Run ``run()`` in a fresh event loop; its wall time and the CPU split."""
    server0 = _cpu_seconds(server_pid)
    driver0 = time.process_time()
    start = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - start
    return Window(wall_s=wall, driver_cpu_s=time.process_time() - driver0,
                  server_cpu_s=_cpu_seconds(server_pid) - server0)


@contextmanager
def serve(data_dir: Path, workers: int, *, database_url: str | None = None,
          ) -> Iterator[tuple[int, int]]:
    """``iotrust serve --workers N`` on a free local port; yields (port, server pid).

    The registry is the data folder's SQLite file unless ``database_url`` names another.
    """
    port = _free_port()
    env = {**os.environ, "IOTRUST_DATA": str(data_dir),
           "IOTRUST_PASSPHRASE": PASSPHRASE.decode()}
    for name in ("IOTRUST_DATABASE_URL", "IOTRUST_PASSPHRASE_FILE"):
        env.pop(name, None)
    if database_url is not None:
        env["IOTRUST_DATABASE_URL"] = database_url
    log = data_dir / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iotrust.cli.main", "serve", "--host", _HOST,
             "--port", str(port), "--workers", str(workers)],
            env=env, stdout=sink, stderr=subprocess.STDOUT)
    base_url = f"http://{_HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"iotrust serve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base_url}/v1/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"iotrust serve did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def service_cpu_ms(data_dir: Path, database_url: str, devices: list[_Prepared]) -> float:
    """CPU milliseconds per device inside ``OnboardingService`` alone, in this process.

    The same registry, the same service calls as the server makes, without HTTP: the server's CPU
    per device minus this is what the HTTP stack (uvicorn, FastAPI, the thread hop) costs.
    """
    from iotrust.services.domain import Secrets  # noqa: PLC0415 - only this measurement
    from iotrust.services.onboarding import OnboardingService  # noqa: PLC0415
    from iotrust.services.settings import Settings  # noqa: PLC0415

    db = Database.open(database_url)
    try:
        service = OnboardingService(db, SystemClock(),
                                    Settings(data_dir=data_dir, database_url=database_url),
                                    Secrets(passphrase=PASSPHRASE))
        cpu = 0.0
        for prepared in devices:
            device = prepared.device
            t0 = time.thread_time()
            answer = service.hello(prepared.hello_wire, source=_HOST).to_wire()
            cpu += time.thread_time() - t0
            session = _lean_session(prepared.hello, proto.HelloResponse.from_wire(answer))
            body = proto.build_attest(session, factory_signer=device.factory_key,
                                      csr_der=device.csr_der).to_wire()
            t0 = time.thread_time()
            answer = service.attest(body, source=_HOST).to_wire()
            cpu += time.thread_time() - t0
            onboarded = _lean_onboarded(proto.AttestResponse.from_wire(answer))
            body = proto.build_confirm(session, onboarded,
                                       operational_signer=device.operational_key).to_wire()
            t0 = time.thread_time()
            service.confirm(body, source=_HOST)
            cpu += time.thread_time() - t0
    finally:
        db.close()
    return 1000 * cpu / max(1, len(devices))


def bench_onboarding_http(config: Config) -> list[Result]:
    """Devices onboarded per second against ``iotrust serve --workers N`` over HTTP."""
    n = config.pick(1_000, 300)
    n_service = config.pick(300, 100)
    concurrency = min(CONCURRENCY, max(1, n))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="iotrust-bench-") as tmp:
        # Every simulated device connects from 127.0.0.1: the per-source limit is switched off
        # (the per-serial limit stays on).
        fleet = prepare_fleet(Path(tmp), n * config.rounds + concurrency + n_service,
                              settings={"onboarding_rate_per_source": 0})
        fleet.domain.db.close()
        settings = fleet.domain.settings
        devices = prepare(fleet.devices)
        timed, warm, alone = (devices[:n * config.rounds],
                              devices[n * config.rounds:n * config.rounds + concurrency],
                              devices[n * config.rounds + concurrency:])
        with serve(settings.data_dir, config.http_workers) as (port, pid):
            probe = httpx.post(f"http://{_HOST}:{port}/v1/onboarding/hello", content=b"{}",
                               timeout=10.0)
            if probe.status_code in {404, 405}:
                raise Skipped("the server has no /v1/onboarding routes")
            asyncio.run(_drive_async(port, warm, concurrency))  # every worker opens its CA key
            windows: list[Window] = []
            health: list[float] = []
            floor: list[float] = []
            for r in range(config.rounds):
                batch = timed[r * n:(r + 1) * n]
                floor.append(onboarding_floor_rate(config.pick(500, 200)))
                hw = run_window(pid, functools.partial(_health_async, port, 3 * n, concurrency))
                health.append(per_second(3 * n, hw.wall_s))
                windows.append(run_window(
                    pid, functools.partial(_drive_async, port, batch, concurrency)))
        service_ms = service_cpu_ms(settings.data_dir, settings.database_url, alone)
    load_after = os.getloadavg()[0]
    rates = [per_second(n, w.wall_s) for w in windows]
    top = windows[rates.index(max(rates))]
    cores = os.cpu_count() or 1
    server_ms = 1000 * top.server_cpu_s / n
    driver_ms = 1000 * top.driver_cpu_s / n
    return [Result(
        name="onboarding_http", rate=best(rates), n=n, target=TARGET_HTTP_RATE,
        note=(f"serve --workers {config.http_workers}, {concurrency} keep-alive connections, "
              f"{cores} CPUs shared with the driver (load {load_before:.1f}..{load_after:.1f}); "
              f"CPU per device: server {server_ms:.1f} ms (service alone {service_ms:.1f} ms), "
              f"driver {driver_ms:.1f} ms; crypto floor {best(floor):,.0f}/s on one core; "
              f"GET /v1/health {best(health):,.0f} req/s"),
        details={"rounds_per_s": rates, "workers": config.http_workers,
                 "concurrency": concurrency,
                 "floor": f"{FLOOR_VERIFICATIONS} ECDSA verify + {FLOOR_SIGNATURES} sign",
                 "floor_rounds_per_s": floor, "health_rounds_per_s": health,
                 "load_average": [load_before, load_after],
                 "windows": [{"wall_s": w.wall_s, "driver_cpu_s": w.driver_cpu_s,
                              "server_cpu_s": w.server_cpu_s,
                              "idle_or_other_cpu_s": w.cores_idle_or_other} for w in windows],
                 "server_cpu_ms_per_device": server_ms, "driver_cpu_ms_per_device": driver_ms,
                 "service_cpu_ms_per_device": service_ms,
                 "http_cpu_ms_per_device": server_ms - service_ms,
                 "server_bound_rate": cores * 1000 / server_ms if server_ms else None,
                 "what": "hello+attest+confirm over HTTP/1.1 keep-alive on asyncio streams; "
                         "hello, keys and CSRs prepared before the clock, the two transcript "
                         "signatures inside it; the device's voucher and chain checks skipped; "
                         "service_cpu: the same calls in process after the server stopped"})]
