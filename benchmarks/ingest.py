"""End-to-end ingest: 100 devices publish signed telemetry through a real Mosquitto (issue 5).

Devices are paho-mqtt clients (MQTT 5, mTLS, QoS 1) spread over a few processes; each seals its
messages with its own key *before* the clock starts (signing is the device's cost, not the
ingest's) and publishes with at most ``BACKLOG`` messages not yet handled by ingest (see
there why). The ingest service runs in this process (``services.ingest.run``: paho network
thread + one verifying thread, SQLite registry, database sink), so its CPU time is this
process's CPU time (``resource.getrusage``, all threads) over the measured span, which runs
from the "go" sent to the publishers until ingest has handled every message.

Rows: ``ingest_e2e`` (messages/s through the broker, CPU seconds per message of the ingest
process) and ``ingest_handle`` (the same service fed in-process, no MQTT: the verification,
replay-window and sink floor the end-to-end figure is compared with).

``run(quick)``; ``python -m benchmarks.ingest [--quick]`` prints the rows. Full: 100 devices x
100 messages; quick: 100 devices x 10 messages.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PER_PROCESS = 25
#: Messages published but not yet handled by ingest, at most. Mosquitto 2.0 queues at most
#: ``max_queued_messages`` (default 1000) QoS 1 messages per subscriber and *drops* the rest
#: ("Outgoing messages are being dropped for client ..."), so an unpaced burst larger than that
#: loses messages before ingest sees them; the publishers are paced to stay below it.
BACKLOG = 500


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _seal_all(idents: list[tuple[str, str, str]], per_device: int, first: int,
              ) -> list[list[tuple[str, bytes]]]:
    from iotrust.adapters.keys import DeviceFileKey  # noqa: PLC0415
    from iotrust.core import pki  # noqa: PLC0415
    from iotrust.core.envelope import kid_for_serial, seal  # noqa: PLC0415

    now = int(datetime.now(UTC).timestamp() * 1000)
    out = []
    for name, cert, key in idents:
        signer = DeviceFileKey.load(Path(key))
        serial = format(pki.load_certificate(Path(cert).read_bytes()).serial_number, "x")
        topic = f"devices/{name}/telemetry"
        out.append([(topic, seal(json.dumps({"n": i, "t": 21.5}).encode(), signer=signer,
                                 device_id=name, counter=first + i, timestamp=now, topic=topic,
                                 content_type="application/json", kid=kid_for_serial(serial)))
                    for i in range(per_device)])
    return out


def _worker(conn: Any, port: int, ca: str, idents: list[tuple[str, str, str]],  # noqa: PLR0917
            per_device: int, sent: Any, handled: Any) -> None:
    import ssl  # noqa: PLC0415

    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    messages = _seal_all(idents, per_device, 0)
    acked = [0]
    cond = threading.Condition()

    def on_publish(*_a: Any) -> None:
        with cond:
            acked[0] += 1
            cond.notify_all()

    clients = []
    for name, cert, key in idents:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        c.tls_set_context(ctx)
        c.max_inflight_messages_set(50)
        c.on_publish = on_publish
        c.connect("127.0.0.1", port, keepalive=60)
        c.loop_start()
        clients.append(c)
    deadline = time.monotonic() + 30
    while not all(c.is_connected() for c in clients) and time.monotonic() < deadline:
        time.sleep(0.01)
    conn.send(("ready", sum(c.is_connected() for c in clients)))
    conn.recv()  # go
    total = per_device * len(clients)
    i = 0
    while i < per_device:  # interleave devices, as a fleet would; keep the backlog bounded
        if sent.value - handled.value >= BACKLOG:
            time.sleep(0.0005)
            continue
        for c, msgs in zip(clients, messages, strict=True):
            c.publish(msgs[i][0], msgs[i][1], qos=1)
        with sent.get_lock():
            sent.value += len(clients)
        i += 1
    with cond:
        while acked[0] < total:
            if not cond.wait(60):
                break
    conn.send(("done", acked[0]))
    conn.recv()  # stop
    for c in clients:
        c.disconnect()
        c.loop_stop()


def run(quick: bool) -> list[dict[str, Any]]:  # noqa: PLR0915 - one measured scenario
    from tests.integration.mqtt import build_testbed  # noqa: PLC0415

    from iotrust.adapters.mqtt.client import MqttEndpoint  # noqa: PLC0415
    from iotrust.core.lifecycle import CredentialState  # noqa: PLC0415
    from iotrust.services import ingest as ingest_svc  # noqa: PLC0415

    devices, per_device = (100, 10) if quick else (100, 100)
    total = devices * per_device
    base = Path(tempfile.mkdtemp(prefix="iotrust-ingest-"))
    try:
        tb = build_testbed(base, devices=devices)
        db = tb.db()
        with db.transaction() as tx:
            for ident in tb.devices:
                for cred in tx.list_credentials(ident.name, CredentialState.ISSUED):
                    tx.update_credential_state(cred.serial_number, CredentialState.ACTIVE,
                                               expected=CredentialState.ISSUED)
        rows: list[dict[str, Any]] = []
        with tb.running() as broker:
            service = ingest_svc.IngestService(db, tb.clock, [ingest_svc.DatabaseSink(db)])
            endpoint = MqttEndpoint("127.0.0.1", broker.settings.port, broker.layout.ca,
                                    tb.ingest.cert, tb.ingest.key)
            stop, ready = threading.Event(), threading.Event()
            thread = threading.Thread(target=ingest_svc.run, args=(service, endpoint, stop),
                                      kwargs={"on_ready": ready.set, "client_id": "bench-ingest"},
                                      daemon=True)
            thread.start()
            if not ready.wait(30):
                raise RuntimeError("ingest did not subscribe")
            ctx = mp.get_context("spawn")
            groups = [tb.devices[i:i + PER_PROCESS] for i in range(0, devices, PER_PROCESS)]
            workers = []
            sent, handled_v = ctx.Value("q", 0), ctx.Value("q", 0)
            for group in groups:
                parent, child = ctx.Pipe()
                idents = [(d.name, str(d.cert), str(d.key)) for d in group]
                p = ctx.Process(target=_worker, args=(child, broker.settings.port,
                                                      str(broker.layout.ca), idents, per_device,
                                                      sent, handled_v),
                                daemon=True)
                p.start()
                workers.append((p, parent))
            connected = sum(parent.recv()[1] for _, parent in workers)
            if connected != devices:
                raise RuntimeError(f"only {connected}/{devices} devices connected")
            cpu0, t0 = _cpu(), time.perf_counter()
            for _, parent in workers:
                parent.send(("go",))
            deadline = time.monotonic() + 300
            while (service.stats.accepted + sum(service.stats.refused.values()) < total
                   and time.monotonic() < deadline):
                handled_v.value = service.stats.accepted + sum(service.stats.refused.values())
                time.sleep(0.001)
            elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
            acked = sum(parent.recv()[1] for _, parent in workers)
            for p, parent in workers:
                parent.send(("stop",))
                p.join(10)
            stop.set()
            thread.join(60)
            stats = service.stats.as_dict()
            handled = service.stats.accepted + sum(service.stats.refused.values())
            with db.transaction(readonly=True) as tx:
                stored = tx.count_ingested_messages()
        rows.append({"name": "ingest_e2e", "n": handled, "rate": handled / elapsed,
                     "unit": "messages/s", "cpu_s_per_msg": cpu / max(handled, 1),
                     "extra": {"devices": devices, "per_device": per_device,
                               "publisher_processes": len(groups), "pubacks": acked,
                               "max_backlog": BACKLOG,
                               "stored": stored, "elapsed_s": round(elapsed, 3),
                               "ingest_cpu_s": round(cpu, 3), **stats}})
        # the same service fed directly: verification + replay window + sink, no MQTT
        idents = [(d.name, str(d.cert), str(d.key)) for d in tb.devices]
        more = _seal_all(idents, per_device, per_device)
        service2 = ingest_svc.IngestService(db, tb.clock, [ingest_svc.DatabaseSink(db)])
        flat = [m for i in range(per_device) for m in (msgs[i] for msgs in more)]
        cpu0, t0 = _cpu(), time.perf_counter()
        for topic, data in flat:
            service2.handle(topic, data)
        service2.close()
        elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
        rows.append({"name": "ingest_handle", "n": len(flat), "rate": len(flat) / elapsed,
                     "unit": "messages/s", "cpu_s_per_msg": cpu / len(flat),
                     "extra": {"accepted": service2.stats.accepted,
                               "refused": dict(service2.stats.refused)}})
        db.close()
        return rows
    finally:
        shutil.rmtree(base, ignore_errors=True)


def bench_ingest(config: Any) -> list[Any]:
    """The same rows as :class:`benchmarks.Result` lines for :mod:`benchmarks.run`."""
    from benchmarks import Result, Skipped  # noqa: PLC0415
    from iotrust.adapters.mqtt.mosquitto import find_dynsec_plugin, find_mosquitto  # noqa: PLC0415

    if find_mosquitto() is None or find_dynsec_plugin() is None:
        raise Skipped("mosquitto (with its dynamic-security plugin) is not installed")
    rows = run(config.quick)
    e2e, floor = rows
    return [Result(name="ingest_e2e", rate=e2e["rate"], n=e2e["n"], floor="ingest_handle",
                   floor_rate=floor["rate"],
                   note=f"{e2e['cpu_s_per_msg'] * 1e3:.2f} ms CPU/message (ingest process)",
                   details={**e2e["extra"], "cpu_s_per_msg": e2e["cpu_s_per_msg"],
                            "floor_cpu_s_per_msg": floor["cpu_s_per_msg"]})]


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(json.dumps(row))
