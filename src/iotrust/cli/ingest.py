"""``iotrust ingest``: verify the signed messages devices publish, store the accepted ones.

``run`` makes sure the service identity exists (``ingest@iotrust``: key and certificate in
``DATA/ingest``) and that the embedded broker grants it ``read devices/#``, then subscribes and
verifies until Ctrl-C/SIGTERM (or ``--count``/``--duration``), printing a summary. ``messages``
lists what the database sink stored. Logic lives in ``services.ingest``.
"""

from __future__ import annotations

import base64
import signal
import threading
from pathlib import Path
from types import FrameType

import typer

from iotrust.cli.common import STATE, emit, emit_object, err, errors
from iotrust.core.ingest import FreshnessLimits
from iotrust.ports import SystemClock
from iotrust.services import ingest as ingest_svc

app = typer.Typer(help="Verify signed device messages from the broker and store accepted ones.",
                  no_args_is_help=True)
CLOCK = SystemClock()


@app.command("run")
def run_cmd(
    jsonl: Path | None = typer.Option(None, "--jsonl", help="Also append accepted messages "
                                      "to this JSONL file."),
    db_sink: bool = typer.Option(True, "--db/--no-db", help="Store accepted messages in the "
                                 "registry (ingested_messages)."),
    host: str | None = typer.Option(None, "--host", help="Broker host (default: the embedded "
                                    "broker's listener)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Broker port."),
    max_age: float = typer.Option(300.0, "--max-age", min=0.0,
                                  help="Refuse messages older than this (seconds)."),
    max_skew: float = typer.Option(30.0, "--max-skew", min=0.0,
                                   help="Refuse messages dated further ahead (seconds)."),
    aggregate: float = typer.Option(10.0, "--aggregate-interval", min=0.1,
                                    help="Seconds over which repeated refusals of one device "
                                         "and reason become one event."),
    count: int | None = typer.Option(None, "--count", min=1,
                                     help="Stop after handling N messages."),
    duration: float | None = typer.Option(None, "--duration", min=0.1,
                                          help="Stop after this many seconds."),
) -> None:
    """Subscribe to devices/# and verify every message until stopped."""
    with errors():
        settings, secrets = STATE.settings, STATE.secrets()
        db = STATE.db()
        try:
            files = ingest_svc.ensure_identity(db, settings, secrets, CLOCK)
            if host is None or port is None:
                ingest_svc.ensure_broker_grant(db, settings, secrets, CLOCK)
            endpoint = ingest_svc.broker_endpoint(settings, CLOCK, files, host=host, port=port)
            sinks: list[ingest_svc.Sink] = []
            if db_sink:
                sinks.append(ingest_svc.DatabaseSink(db))
            if jsonl is not None:
                sinks.append(ingest_svc.JsonlSink(jsonl))
            limits = FreshnessLimits(max_age_ms=round(max_age * 1000),
                                     max_skew_ms=round(max_skew * 1000))
            service = ingest_svc.IngestService(db, CLOCK, sinks, limits=limits,
                                               aggregate_interval_s=aggregate)
            stop = threading.Event()

            def on_signal(_signum: int, _frame: FrameType | None) -> None:
                stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            timer = threading.Timer(duration, stop.set) if duration else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            stats = ingest_svc.run(
                service, endpoint, stop, max_messages=count,
                on_ready=lambda: err.print(f"ingest: subscribed to devices/# on "
                                           f"{endpoint.host}:{endpoint.port}"))
            if timer is not None:
                timer.cancel()
        finally:
            db.close()
        emit_object(stats.as_dict())


@app.command("messages")
def messages_cmd(
    device: str | None = typer.Option(None, "--device", help="Only this device."),
    after: int = typer.Option(0, "--after", min=0, help="Only messages with a larger id."),
    limit: int = typer.Option(20, "--limit", min=1, max=1000),
) -> None:
    """Stored accepted messages in arrival order (database sink); page with --after."""
    with errors():
        db = STATE.db()
        try:
            with db.transaction(readonly=True) as tx:
                total = tx.count_ingested_messages(device)
                rows = tx.list_ingested_messages(device, after_id=after, limit=limit)
        finally:
            db.close()
        emit([{"id": i, "received_at": at.isoformat(), "device_id": m.device_id,
               "counter": m.counter, "topic": m.topic, "content_type": m.content_type,
               "payload_b64": base64.b64encode(m.payload).decode("ascii")}
              for i, at, m in rows],
             ["id", "received_at", "device_id", "counter", "topic", "payload_b64"],
             title=f"{len(rows)} of {total} stored messages")

