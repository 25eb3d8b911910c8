"""A real ``iotrust serve`` for integration tests: a subprocess on a free port, waited for.

Usage::

    with running_server(fleet.server_env(), workers=2) as server:
        httpx.post(server.url + "/v1/onboarding/hello", content=...)

The server is ``python -m iotrust.cli.main serve --host 127.0.0.1 --port <free> --workers N``
in its own process group; :func:`running_server` waits until ``/v1/health`` answers 200 (failing
with the server's output if it dies or takes too long) and stops exactly that process group
afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class Server:
    """A running server process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """What the server wrote so far (stdout and stderr)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after a grace period)."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)


def start_server(env: Mapping[str, str], *, workers: int = 1,
                 timeout_s: float = START_TIMEOUT_S, log_dir: Path | None = None) -> Server:
    """Start ``iotrust serve`` with ``env`` and wait for ``/v1/health``."""
    port = free_port()
    folder = log_dir or Path(tempfile.mkdtemp(prefix="iotrust-server-"))
    log = folder / f"server-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "iotrust.cli.main", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(workers)],
            env=dict(env), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(url=f"http://127.0.0.1:{port}", process=process, log=log)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"iotrust serve exited with {process.returncode}:\n"
                               f"{server.output()}")
        try:
            if httpx.get(f"{server.url}/v1/health", timeout=2.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"iotrust serve did not answer within {timeout_s}s:\n"
                               f"{server.output()}")
        time.sleep(0.1)


@contextmanager
def running_server(env: Mapping[str, str], *, workers: int = 1,
                   timeout_s: float = START_TIMEOUT_S, log_dir: Path | None = None,
                   ) -> Iterator[Server]:
    """:func:`start_server` as a context manager that always stops the server."""
    server = start_server(env, workers=workers, timeout_s=timeout_s, log_dir=log_dir)
    try:
        yield server
    finally:
        server.stop()
