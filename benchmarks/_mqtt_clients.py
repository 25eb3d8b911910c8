"""Live mTLS sessions held by worker processes, for the benchmarks that need a connected fleet.

The containment (:mod:`benchmarks.contain`) and retirement (:mod:`benchmarks.lifecycle`)
benchmarks measure a command against a real Mosquitto while ~1,000 devices hold sessions. The
devices are paho-mqtt clients spread over ``spawn`` worker processes (``PER_PROCESS`` sessions
each, one paho loop thread per session). Each benchmark writes its own worker (its callbacks and
pipe protocol differ); this module holds what they share:

* in the worker: :func:`tls_client` (a client with the device's certificate, trusting the fleet
  CA), :func:`connect_all` (connect every device, wait for all sessions, report ``("ready", n)``)
  and :func:`disconnect_all`;
* in the benchmark process: :func:`start_workers`, :func:`wait_ready` and :func:`stop_workers`
  (every worker answers ``("stop",)`` with ``("stopped", lost, connected)``).
"""

from __future__ import annotations

import multiprocessing as mp
import ssl
import time
from collections.abc import Callable
from typing import Any

PER_PROCESS = 250

Ident = tuple[str, str, str]  # device name, certificate path, key path
Worker = Callable[[Any, int, str, list[Ident]], None]


def tls_client(name: str, cert: str, key: str, ca: str, *, reconnect_delay: int) -> Any:
    """A paho MQTT v5 client ``name`` with ``cert``/``key``, trusting ``ca``; no callbacks set."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.tls_set_context(ctx)
    c.reconnect_delay_set(min_delay=reconnect_delay, max_delay=reconnect_delay)
    return c


def connect_all(conn: Any, port: int, idents: list[Ident], make: Callable[[str, str, str], Any],
                *, keepalive: int, timeout: float) -> dict[str, Any]:
    """Make, connect and start a client per identity; once all are connected (or ``timeout``
    seconds have passed), send ``("ready", connected)`` on ``conn``. The clients, by name."""
    clients: dict[str, Any] = {}
    for name, cert, key in idents:
        c = make(name, cert, key)
        c.connect("localhost", port, keepalive=keepalive)
        c.loop_start()
        clients[name] = c
    deadline = time.monotonic() + timeout
    while not all(c.is_connected() for c in clients.values()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    conn.send(("ready", sum(c.is_connected() for c in clients.values())))
    return clients


def disconnect_all(clients: dict[str, Any]) -> None:
    """Disconnect every client and stop its loop thread."""
    for c in clients.values():
        c.disconnect()
        c.loop_stop()


def start_workers(target: Worker, devices: list[Any], port: int,
                  ca: str) -> tuple[list[tuple[Any, Any]], dict[str, int], int]:
    """Spawn ``target(conn, port, ca, idents)`` per ``PER_PROCESS`` devices (daemon processes).

    Returns ``(workers, owner, processes)``: ``(process, pipe end)`` pairs, the index of the
    worker holding each device by name, and the number of processes.
    """
    ctx = mp.get_context("spawn")
    groups = [devices[i:i + PER_PROCESS] for i in range(0, len(devices), PER_PROCESS)]
    workers: list[tuple[Any, Any]] = []
    owner: dict[str, int] = {}
    for gi, group in enumerate(groups):
        parent, child = ctx.Pipe()
        idents = [(d.name, str(d.cert), str(d.key)) for d in group]
        p = ctx.Process(target=target, args=(child, port, ca, idents), daemon=True)
        p.start()
        workers.append((p, parent))
        owner.update({d.name: gi for d in group})
    return workers, owner, len(groups)


def wait_ready(workers: list[tuple[Any, Any]]) -> int:
    """Wait for every worker's ``("ready", n)``: the number of devices connected."""
    return sum(parent.recv()[1] for _, parent in workers)


def stop_workers(workers: list[tuple[Any, Any]]) -> tuple[int, int]:
    """Stop every worker: ``(sessions lost, sessions still connected)`` summed over them."""
    lost, still = 0, 0
    for p, parent in workers:
        parent.send(("stop",))
        _, worker_lost, connected = parent.recv()
        lost += worker_lost
        still += connected
        p.join(10)
    return lost, still
