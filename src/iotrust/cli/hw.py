"""``iotrust hw`` (hardware profiles), ``iotrust model`` and ``iotrust devices set-model``.

``hw`` assesses and validates hardware profiles, ``model`` registers device models, and
``devices set-model`` is installed on the devices command group by :func:`install`. Parses
arguments, calls :mod:`iotrust.services.hardware`, prints a table or JSON. Verdicts are reported,
not turned into exit codes: ``hw assess`` exits 0 whatever the verdicts; an invalid profile
exits 65, a missing file 66. After ``set-model`` the embedded broker (if the data folder
configures one) is resynchronised, since the model's policy now applies to the device.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from iotrust.adapters.files import write_atomic
from iotrust.cli.common import STATE, emit, emit_object, errors, out
from iotrust.cli.policy import resync_hook
from iotrust.core import hardware as hw
from iotrust.errors import InputError
from iotrust.ports import SystemClock
from iotrust.services import hardware as svc

app = typer.Typer(help="Hardware profiles: what trust a device model can sustain.",
                  no_args_is_help=True)
model_app = typer.Typer(help="Device models and their hardware profiles.", no_args_is_help=True)

CLOCK = SystemClock()
_COLOURS = {hw.Level.FEASIBLE: "green", hw.Level.DEGRADED: "yellow", hw.Level.IMPOSSIBLE: "red"}

JsonOption = typer.Option(False, "--json", help="Machine-readable output.")
TimelinesOption = typer.Option(None, "--timelines", dir_okay=False,
                               help="Algorithm timelines YAML (default: the shipped ones).")


def _print_assessment(a: hw.Assessment) -> None:
    p = a.profile
    deployed = f", deployed {p.deployed_year}" if p.deployed_year is not None else ""
    table = Table(title=f"{escape(p.model)} ({escape(p.vendor)}): {a.lifetime_years}-year "
                  f"life{deployed}, in service until {a.service_end_year}", show_lines=True)
    for col in ("mechanism", "verdict", "reason", "what would change it"):
        table.add_column(col)
    for v in a.verdicts:
        colour = _COLOURS[v.level]
        table.add_row(v.mechanism.value.replace("_", " "), f"[{colour}]{v.level.value}[/]",
                      escape(v.reason), escape(v.would_change_it))
    out.print(table)
    out.print(f"[bold]model defaults[/]: {escape(a.defaults.reason)}", highlight=False)


@app.command("assess")
def assess_cmd(
    profile: Path = typer.Argument(..., dir_okay=False, help="Hardware profile YAML."),
    lifetime: str | None = typer.Option(None, "--lifetime",
                                        help="Planned service life, e.g. 12y (default: the "
                                        "profile's planned_lifetime_years)."),
    json_out: bool = JsonOption,
    html_out: Path | None = typer.Option(None, "--html", dir_okay=False,
                                         help="Also write a standalone HTML page."),
    timelines: Path | None = TimelinesOption,
) -> None:
    """Say, per security mechanism, whether this hardware can carry it for its whole life."""
    STATE.json = STATE.json or json_out
    with errors():
        years = hw.parse_lifetime_years(lifetime) if lifetime is not None else None
        a = svc.assess_file(profile, now_year=CLOCK.now().year, lifetime_years=years,
                            timelines=svc.load_timelines(timelines))
        if html_out is not None:
            try:
                write_atomic(html_out, svc.render_html(a, standalone=True).encode(), mode=0o644)
            except OSError as exc:
                raise InputError(f"cannot write {str(html_out)[:200]!r}: {exc.strerror}",
                                 reason="output_unwritable") from None
        if STATE.json:
            emit_object(a.as_dict())
        else:
            _print_assessment(a)


@app.command("validate")
def validate_cmd(
    profile: Path = typer.Argument(..., dir_okay=False, help="Hardware profile YAML."),
    json_out: bool = JsonOption,
) -> None:
    """Check a profile against the schema; errors name the JSON path of the problem."""
    STATE.json = STATE.json or json_out
    with errors():
        p = svc.load_profile(profile)
        emit_object({"valid": True, "schema": hw.SCHEMA, "model": p.model, "vendor": p.vendor})


@model_app.command("add")
def model_add(
    name: str = typer.Argument(..., help="Model name (slug), e.g. sensor-s2."),
    manufacturer: str = typer.Option(..., "--manufacturer", help="A registered manufacturer."),
    profile: Path = typer.Option(..., "--profile", dir_okay=False, help="Hardware profile YAML."),
    product_id: str = typer.Option(
        ..., "--product-id", help="The product id this model's vouchers and factory "
        "certificates carry (the PRODUCT of the manufacturer's allowed VENDOR:PRODUCT)."),
    json_out: bool = JsonOption,
) -> None:
    """Register a device model of one product; its devices get its defaults.

    The credential lifetime and topic permissions follow from the profile. Devices of that
    manufacturer and product get the model: the ones already imported now (unless an operator
    set another model), new ones when their voucher is imported.
    """
    STATE.json = STATE.json or json_out
    with errors():
        reg = svc.register_model(STATE.db(), CLOCK, name=name, manufacturer=manufacturer,
                                 product_id=product_id, profile_yaml=svc.read_profile(profile),
                                 actor=STATE.actor())
        emit_object({"model": reg.model.name, "manufacturer": reg.model.manufacturer,
                     "product_id": reg.model.product_id, **reg.defaults.as_dict(),
                     "worst_verdict": reg.assessment.worst.value,
                     "devices_assigned": reg.devices_assigned})


@model_app.command("list")
def model_list(
    manufacturer: str | None = typer.Option(None, "--manufacturer"),
    json_out: bool = JsonOption,
) -> None:
    """Registered device models."""
    STATE.json = STATE.json or json_out
    with errors():
        db = STATE.db()
        with db.transaction() as tx:
            rows = tx.list_models(manufacturer)
        emit([{"name": m.name, "manufacturer": m.manufacturer, "product_id": m.product_id,
               "credential_lifetime_days": m.credential_lifetime_s // 86_400,
               "profile": m.hardware_profile is not None} for m in rows],
             ["name", "manufacturer", "product_id", "credential_lifetime_days", "profile"])


@model_app.command("show")
def model_show(name: str, json_out: bool = JsonOption) -> None:
    """One model with the defaults its stored profile gives today."""
    STATE.json = STATE.json or json_out
    with errors():
        db = STATE.db()
        with db.transaction() as tx:
            m = tx.get_model(name)
        d = svc.defaults_of(m, now_year=CLOCK.now().year)
        emit_object({"model": m.name, "manufacturer": m.manufacturer,
                     "product_id": m.product_id, "created_at": m.created_at.isoformat(),
                     **d.as_dict()})


def set_model_cmd(
    device_id: str = typer.Argument(..., help="Device id."),
    model: str = typer.Argument(..., help="A registered model of the device's manufacturer."),
    json_out: bool = JsonOption,
) -> None:
    """Set a device's model explicitly (when its product id does not say which it is).

    The model must be of the device's manufacturer; a retired device is refused. Its policy
    applies at once, its credential lifetime from the device's next credential.
    """
    STATE.json = STATE.json or json_out
    with errors():
        result = svc.set_device_model(STATE.db(), CLOCK, device_id, model, actor=STATE.actor(),
                                      changed=resync_hook("the model"))
        d = result.device
        emit_object({"id": d.id, "model": d.model, "previous_model": result.previous,
                     "changed": result.changed, "product_id": d.product_id,
                     "state": d.state.value})


def install(devices_app: typer.Typer) -> None:
    """Add ``set-model`` to the ``iotrust devices`` command group."""
    devices_app.command("set-model")(set_model_cmd)
