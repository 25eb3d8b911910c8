"""The moving parts of ``iotrust demo``: child processes, the server's start and in-process ingest.

:class:`Processes` starts ``iotrust serve`` and ``iotrust-agent`` children, each in its own
process group, and stops them by their pid only (SIGTERM, then SIGKILL after a grace period).
:func:`wait_healthy` waits for a started server's ``/v1/health``; :class:`IngestThread` runs the
ingest service on a background thread until it is stopped. :func:`refusal` and
:func:`update_statuses` read what an agent printed.

This module tells no story and decides nothing (:mod:`iotrust.services.demo` does the first, the
services and the server the second); it does not handle signals or exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from iotrust.adapters.mqtt.client import MqttEndpoint
from iotrust.errors import BackendError
from iotrust.services import ingest as ingest_svc

PROCESS_TIMEOUT_S: Final = 120.0
START_TIMEOUT_S: Final = 60.0


def agent_command() -> list[str]:
    """The argv prefix that runs ``iotrust-agent`` with this interpreter's installation."""
    script = Path(sys.executable).parent / "iotrust-agent"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from iotrust.agent.cli import main; main()"]


def refusal(stderr: str) -> str | None:
    """The reason of an agent's ``refused: <reason>: <detail>`` line, if any."""
    for line in reversed(stderr.strip().splitlines()):
        if line.startswith("refused: "):
            return line.split(": ", 2)[1]
    return None


@dataclass(slots=True)
class Finished:
    """A finished child process."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def update_statuses(done: Finished) -> list[str]:
    """The statuses an ``iotrust-agent update --json`` run printed (empty: nothing offered)."""
    if done.returncode != 0:
        return [f"exit {done.returncode}"]
    try:
        return [str(r["status"]) for r in json.loads(done.stdout)]
    except (ValueError, KeyError, TypeError):
        return [f"unreadable output: {done.stdout[:80]!r}"]


class Processes:
    """Child processes, each in its own process group, stopped by pid."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[str]] = []

    def start(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
              log: Path | None = None) -> subprocess.Popen[str]:
        """Start ``argv`` (stdout/stderr to ``log``, else piped)."""
        sink: Any = log.open("w") if log is not None else subprocess.PIPE
        try:
            proc = subprocess.Popen(list(argv), env=env, stdout=sink,  # noqa: S603 - our argv
                                    stderr=subprocess.STDOUT if log is not None else sink,
                                    text=True, start_new_session=True)
        finally:
            if log is not None:
                sink.close()
        self._running.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen[str], timeout: float = PROCESS_TIMEOUT_S) -> Finished:
        """Wait for ``proc`` (stopped if it takes longer than ``timeout``)."""
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            stdout, stderr = proc.communicate()
        with contextlib.suppress(ValueError):
            self._running.remove(proc)
        argv = [str(a) for a in proc.args] if isinstance(proc.args, list) else []
        return Finished(argv, proc.returncode, stdout or "", stderr or "")

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
            timeout: float = PROCESS_TIMEOUT_S) -> Finished:
        """Run ``argv`` to completion."""
        return self.wait(self.start(argv, env=env), timeout)

    @staticmethod
    def stop(proc: subprocess.Popen[str], grace: float = 10.0) -> None:
        """SIGTERM the process group of ``proc``, then SIGKILL after ``grace`` seconds."""
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)

    def stop_all(self) -> None:
        """Stop every process still running, newest first."""
        while self._running:
            proc = self._running.pop()
            self.stop(proc)


def wait_healthy(server: subprocess.Popen[str], url: str, log: Path) -> None:
    """Wait until the server started as ``server`` answers ``{url}/v1/health``.

    Raises ``BackendError(server_start_failed)`` when it exits first or does not answer within
    :data:`START_TIMEOUT_S`.
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise BackendError("iotrust serve exited; see " + str(log),
                               reason="server_start_failed")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v1/health", timeout=2.0).status_code == 200:  # noqa: PLR2004
                return
        if time.monotonic() > deadline:
            raise BackendError("iotrust serve did not answer", reason="server_start_failed")
        time.sleep(0.1)


class IngestThread:
    """The ingest service on a daemon thread, from :meth:`start` until :meth:`stop`."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, service: ingest_svc.IngestService, endpoint: MqttEndpoint) -> None:
        """Run ``service`` against ``endpoint``; return once it subscribed.

        Raises ``BackendError(ingest_start_failed)`` when it fails or is not ready within
        :data:`START_TIMEOUT_S`.
        """
        ready = threading.Event()
        failed: list[BaseException] = []

        def work() -> None:
            try:
                ingest_svc.run(service, endpoint, self._stop, on_ready=ready.set,
                               client_id=f"ingest-demo-{os.urandom(3).hex()}")
            except Exception as exc:  # noqa: BLE001 - reported to the main thread below
                failed.append(exc)
                ready.set()

        self._thread = threading.Thread(target=work, name="demo-ingest", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S) or failed:
            raise BackendError(f"the ingest service did not start: {failed[:1]}",
                               reason="ingest_start_failed")

    def stop(self) -> None:
        """Ask the service to stop and wait for its thread (at most 30 s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
