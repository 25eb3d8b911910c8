"""``iotrust`` commands for sustaining and ending trust (DESIGN.md §8-9).

* ``iotrust rotate --model M | --group G | --all [--rate N]`` — a renewal campaign (devices see
  ``renewal_requested`` in their next rotation); ``iotrust rotate --progress [CAMPAIGN]``;
* ``iotrust ca rollover`` / ``iotrust ca retire-old`` — issuing-CA rollover;
* ``iotrust zombies [--scan]`` — dead identities that still make contact;
* ``iotrust sweep`` — credential upkeep (expiry, superseded, unconfirmed rotations);
* ``iotrust devices retire --model M | --group G --reason R``, ``iotrust devices reset DEVICE``,
  ``iotrust devices dormant --days N [--quarantine | --retire]``.

Parsing and printing only; the services decide. :func:`install` adds them to the main app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

from iotrust.cli.common import STATE, emit, emit_object, err, errors, progress
from iotrust.core.lifecycle import RetirementReason
from iotrust.errors import InputError
from iotrust.ports import SystemClock
from iotrust.services import broker as broker_svc
from iotrust.services import domain, retirement, rollover, zombies
from iotrust.services import rotation as rotation_svc

__all__ = ["ca_app", "install"]

CLOCK = SystemClock()
ca_app = typer.Typer(help="Issuing-CA rollover.", no_args_is_help=True)


@contextmanager
def _broker() -> Iterator[Any]:
    broker = broker_svc.open_broker(STATE.settings, CLOCK)
    try:
        yield broker
    finally:
        if broker is not None:
            broker.close()


def rotate_cmd(
    model: str | None = typer.Option(None, help="Every device of this model."),
    group: str | None = typer.Option(None, help="Every device of this group."),
    all_devices: bool = typer.Option(False, "--all", help="Every active device."),
    rate: float | None = typer.Option(None, help="Devices asked per second (default: all)."),
    show_progress: bool = typer.Option(False, "--progress",
                                       help="Only show how far renewals have come."),
    campaign: str | None = typer.Option(None, help="With --progress: one campaign."),
) -> None:
    """Ask devices to renew their credential early; they renew at their next rotation check."""
    with errors():
        db = STATE.db()
        if show_progress:
            emit_object({"campaign": campaign, **rotation_svc.campaign_progress(db, campaign)})
            return
        targets = rotation_svc.select_targets(db, model=model, group=group,
                                        all_devices=all_devices)
        with progress(len(targets), "requesting renewal") as tick:
            report = rotation_svc.request_renewal(db, CLOCK, actor=STATE.actor(), model=model,
                                                  group=group, all_devices=all_devices,
                                                  rate=rate, progress=tick)
        emit_object({"campaign": report.campaign, "requested": report.requested,
                     **rotation_svc.campaign_progress(db, report.campaign)})


def sweep_cmd() -> None:
    """Credential upkeep: expire lapsed credentials, revoke superseded and unconfirmed ones."""
    with errors(), _broker() as broker:
        report = rotation_svc.sweep(STATE.db(), CLOCK, STATE.settings, STATE.secrets(),
                                    broker=broker, actor=STATE.actor())
        emit_object({"sessions_expired": report.sessions_expired,
                     "unconfirmed_revoked": report.unconfirmed_revoked,
                     "superseded_revoked": report.superseded_revoked,
                     "credentials_expired": report.credentials_expired})


def zombies_cmd(
    scan: bool = typer.Option(True, "--scan/--no-scan",
                              help="Read the broker's log for refused handshakes first."),
    limit: int = typer.Option(1000, min=1, max=10_000),
) -> None:
    """Retired, revoked or expired identities that still make contact (count, first/last seen)."""
    with errors():
        db = STATE.db()
        root = broker_svc.broker_dir(STATE.settings)
        log = root / "mosquitto.log"
        if scan and log.exists():
            zombies.scan_broker_log(db, CLOCK, log, state_dir=root)
        rows = [z.as_dict() for z in zombies.list_zombies(db, limit=limit)]
        for row in rows:
            row["channels"] = ",".join(f"{k}:{v}" for k, v in sorted(row["channels"].items()))
        emit(rows, ["identity", "count", "channels", "first_seen_at", "last_seen_at",
                    "last_source", "last_reason"], title="zombies")


@ca_app.command("rollover")
def ca_rollover(
    key_backend: str = typer.Option("file", help="file (encrypted PEM) or pkcs11."),
    pkcs11_module: str | None = typer.Option(None, envvar="IOTRUST_PKCS11_MODULE"),
    pkcs11_token: str | None = typer.Option(None, envvar="IOTRUST_PKCS11_TOKEN"),
) -> None:
    """Introduce a new issuing CA signed by the root (the root key must be online)."""
    with errors(), _broker() as broker:
        sec = STATE.secrets()
        backend = domain.KeyBackend(kind=key_backend, passphrase=sec.passphrase,
                                    pkcs11_module=pkcs11_module, pkcs11_token=pkcs11_token,
                                    pkcs11_pin=sec.pin)
        report = rollover.rollover(STATE.db(), STATE.settings, sec, CLOCK, backend=backend,
                                   actor=STATE.actor(), broker=broker)
        emit_object({"active": report.new.id, "retiring": report.retiring,
                     "broker": report.broker})
        err.print("next: `iotrust rotate --all`, then `iotrust ca retire-old`")


@ca_app.command("retire-old")
def ca_retire_old() -> None:
    """Retire the retiring issuing CAs once no live credential depends on them."""
    with errors(), _broker() as broker:
        retired = rollover.retire_old(STATE.db(), STATE.settings, STATE.secrets(), CLOCK,
                                      actor=STATE.actor(), broker=broker)
        emit_object({"retired": retired})


def devices_retire(
    reason: RetirementReason = typer.Option(..., help="Why the devices' trust ends."),
    model: str | None = typer.Option(None, help="Every device of this model."),
    group: str | None = typer.Option(None, help="Every device of this group."),
) -> None:
    """Retire every device of a model or a group (one-way)."""
    with errors(), _broker() as broker:
        if (model is None) == (group is None):
            raise InputError("give exactly one of --model or --group",
                             reason="invalid_selection")
        db = STATE.db()
        ids = retirement.select_devices(db, model=model, group=group)
        with progress(len(ids), "retiring") as tick:
            done = retirement.retire_many(db, STATE.settings, STATE.secrets(), CLOCK,
                                          device_ids=ids, reason=reason, actor=STATE.actor(),
                                          broker=broker, progress=tick)
        emit_object({"retired": len(done), "reason": reason.value,
                     "devices": [d.id for d in done]})


def devices_reset(device_id: str) -> None:
    """Back to EXPECTED after a lapsed credential, so it may onboard again (explicit only)."""
    with errors():
        moved = retirement.reset(STATE.db(), CLOCK, device_id, actor=STATE.actor())
        emit_object({"device": moved.id, "state": moved.state.value})


def devices_dormant(
    days: float = typer.Option(..., help="Not seen for this many days."),
    quarantine: bool = typer.Option(False, "--quarantine", help="Quarantine them."),
    retire: bool = typer.Option(False, "--retire", help="Retire them (reason lost)."),
) -> None:
    """Devices not seen for N days; optionally quarantine or retire them (with events)."""
    with errors(), _broker() as broker:
        if quarantine and retire:
            raise InputError("choose --quarantine or --retire", reason="invalid_action")
        action = "quarantine" if quarantine else "retire" if retire else None
        found = retirement.dormant(STATE.db(), STATE.settings, STATE.secrets(), CLOCK,
                                   days=days, action=action, actor=STATE.actor(), broker=broker)
        emit([d.as_dict() for d in found], ["id", "state", "model", "last_seen_at", "action"],
             title=f"not seen for {days:g} days")


def install(app: typer.Typer, devices_app: typer.Typer) -> None:
    """Add the commands to the main app and its ``devices`` group."""
    command: Callable[..., Any]
    for name, command in (("rotate", rotate_cmd), ("sweep", sweep_cmd),
                          ("zombies", zombies_cmd)):
        app.command(name)(command)
    app.add_typer(ca_app, name="ca")
    devices_app.command("retire")(devices_retire)
    devices_app.command("reset")(devices_reset)
    devices_app.command("dormant")(devices_dormant)
