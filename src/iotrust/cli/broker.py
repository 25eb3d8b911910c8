"""``iotrust broker``: the embedded Mosquitto broker of this data folder.

``config`` writes every broker file from the registry, ``run`` does that and runs Mosquitto in
the foreground (re-signing the CRL before it runs out), ``reload``/``sync`` re-apply the rules to
a running broker, ``kick`` disconnects one device's live sessions. Logic lives in
``services.broker``; this module parses options and prints.
"""

from __future__ import annotations

import signal
import threading
from datetime import timedelta
from types import FrameType

import typer

from iotrust.adapters.mqtt.mosquitto import BrokerSettings, MosquittoBroker, MosquittoProcess
from iotrust.cli.common import STATE, emit_object, err, errors
from iotrust.errors import InputError, NotFoundError
from iotrust.ports import SystemClock, TopicAccess
from iotrust.services import broker as broker_svc

app = typer.Typer(help="The embedded MQTT broker (Mosquitto): configuration, run, reload.",
                  no_args_is_help=True)
CLOCK = SystemClock()
CRL_CHECK_INTERVAL_S = 600.0


def _grants(values: list[str]) -> tuple[TopicAccess, ...]:
    """``NAME=ACTION:FILTER[,ACTION:FILTER]`` → service grants."""
    out = []
    for value in values:
        name, _, rest = value.partition("=")
        rules = []
        for part in filter(None, rest.split(",")):
            action, _, topic = part.partition(":")
            if action not in {"publish", "subscribe"} or not topic:
                raise InputError(f"not ACTION:FILTER: {part!r:.80}", reason="invalid_grant")
            rules.append((action, topic))
        if not rules:
            raise InputError(f"no rules in {value!r:.80}", reason="invalid_grant")
        out.append(TopicAccess(name, tuple(rules)))
    return tuple(out)


def _configure(bind: str | None, port: int | None, names: list[str], grants: list[str],
               renew: bool) -> MosquittoBroker:
    db = STATE.db()
    try:
        existing = broker_svc.open_broker(STATE.settings, CLOCK)
        base = existing.settings if existing else BrokerSettings()
        settings = BrokerSettings(
            bind=bind or base.bind, port=port or base.port, admin_port=base.admin_port,
            mosquitto=base.mosquitto, plugin=base.plugin, run_as_root=base.run_as_root,
            services=_grants(grants) if grants else base.services, log_all=base.log_all)
        return broker_svc.configure(db, STATE.settings, STATE.secrets(), CLOCK,
                                    broker_settings=settings, names=names,
                                    renew_certificate=renew)
    finally:
        db.close()


def _summary(broker: MosquittoBroker) -> dict[str, object]:
    acl = broker.last_acl
    return {"folder": str(broker.layout.root), "listener": f"{broker.settings.bind}:"
            f"{broker.settings.port} (mTLS)", "admin": f"127.0.0.1:{broker.settings.admin_port}",
            "acl_layout": acl.mode.value if acl else None,
            "acl_user_blocks": acl.user_blocks if acl else None,
            "ca": str(broker.layout.ca), "running": broker.running()}


BIND = typer.Option(None, "--bind", help="Address of the device listener (default 127.0.0.1).")
PORT = typer.Option(None, "--port", min=1, max=65535, help="Device listener port (8883).")
NAMES = typer.Option([], "--name", help="Extra DNS name or IP for the server certificate.")
GRANTS = typer.Option([], "--service",
                      help="Service grant NAME=ACTION:FILTER,... e.g. "
                           "ingest@iotrust=subscribe:devices/#")
RENEW = typer.Option(False, "--renew-certificate", help="New broker key and certificate.")


@app.command("config")
def config_cmd(bind: str | None = BIND, port: int | None = PORT, name: list[str] = NAMES,
               service: list[str] = GRANTS, renew: bool = RENEW) -> None:
    """Write every broker file from the registry (certificate, CAs, verified CRL, ACL)."""
    with errors():
        emit_object(_summary(_configure(bind, port, name, service, renew)))


@app.command("run")
def run_cmd(bind: str | None = BIND, port: int | None = PORT, name: list[str] = NAMES,
            service: list[str] = GRANTS, renew: bool = RENEW) -> None:
    """Configure from the registry, then run Mosquitto in the foreground (Ctrl-C stops it)."""
    with errors():
        broker = _configure(bind, port, name, service, renew)
        proc = MosquittoProcess(broker, inherit_output=True)
        proc.start()
        err.print(f"broker running: devices on {broker.settings.bind}:{broker.settings.port} "
                  f"(mTLS, CA {broker.layout.ca}); Ctrl-C stops it")
        stop = threading.Event()

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            while not stop.wait(CRL_CHECK_INTERVAL_S):
                if proc.proc is None or proc.proc.poll() is not None:
                    break
                db = STATE.db()
                try:
                    broker_svc.refresh_crl_if_due(db, STATE.settings, STATE.secrets(), CLOCK,
                                                  broker)
                finally:
                    db.close()
        finally:
            proc.stop()


def _broker() -> MosquittoBroker:
    broker = broker_svc.open_broker(STATE.settings, CLOCK)
    if broker is None:
        raise NotFoundError("no broker is configured here: run `iotrust broker config`",
                            reason="broker_not_configured")
    return broker


@app.command("sync")
def sync_cmd() -> None:
    """Regenerate the ACL from the registry and apply it to live sessions."""
    with errors():
        broker = _broker()
        db = STATE.db()
        try:
            broker_svc.sync(db, broker)
        finally:
            db.close()
            broker.close()
        emit_object(_summary(broker))


@app.command("reload")
def reload_cmd() -> None:
    """Make the running broker re-read its files (SIGHUP), once it has processed it."""
    with errors():
        broker = _broker()
        try:
            broker.reload()
        finally:
            broker.close()
        emit_object({"reloaded": True})


@app.command("refresh-crl")
def refresh_crl_cmd(
    threshold_hours: float = typer.Option(72.0, min=0.0, help="Re-sign below this many hours."),
) -> None:
    """Re-sign the CRL if it expires within the threshold; install it in the broker."""
    with errors():
        broker = _broker()
        db = STATE.db()
        try:
            resigned = broker_svc.refresh_crl_if_due(
                db, STATE.settings, STATE.secrets(), CLOCK, broker,
                threshold=timedelta(hours=threshold_hours))
        finally:
            db.close()
            broker.close()
        emit_object({"resigned": resigned, "crl": str(broker.layout.crl)})


@app.command("kick")
def kick_cmd(device_id: str) -> None:
    """Disconnect a device's live sessions (it reconnects with its current rights)."""
    with errors():
        broker = _broker()
        try:
            broker.kick(device_id)
        finally:
            broker.close()
        emit_object({"kicked": device_id})


@app.command("status")
def status_cmd() -> None:
    """Where the broker's files are and whether it runs."""
    with errors():
        emit_object(_summary(_broker()))
