"""``iotrust audit``: the fleet posture audit, its suppressions and mitigations.

``iotrust audit [--json | --html FILE] [--check ID ...] [--full]`` runs the checks and records an
``audit.completed`` event (``--full``: verify the whole event log, not only since the last
checkpoint); findings are reported, not turned into exit codes (0 whatever they
are). ``iotrust audit suppress CHECK TARGET --reason ...`` records who accepted what and why;
``iotrust audit mitigate CHECK TARGET --action quarantine|rotate|notify`` applies one reversible
action, recorded as an event. ``iotrust audit checks`` lists the checks. Commands map onto
:mod:`iotrust.services.audit`; this module parses arguments and prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from iotrust.adapters.files import write_atomic
from iotrust.cli.common import STATE, emit, emit_object, err, errors, out
from iotrust.core.audit_checks import ALL_CHECKS
from iotrust.ports import SystemClock
from iotrust.services import audit as svc
from iotrust.services import broker as broker_svc

app = typer.Typer(help="Fleet posture audit: findings, suppressions, mitigations.",
                  invoke_without_command=True)
CLOCK = SystemClock()
_JSON = typer.Option(False, "--json", help="Machine-readable output.")
_COLOURS = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan",
            "info": "dim"}


@contextmanager
def _broker() -> Iterator[Any]:
    broker = broker_svc.open_broker(STATE.settings, CLOCK)
    try:
        yield broker
    finally:
        if broker is not None:
            broker.close()


def _print(report: svc.AuditReport) -> None:
    table = Table(title=f"Posture audit: {sum(report.device_states.values())} devices, "
                  f"{len(report.findings)} findings, {report.seconds:.2f} s")
    for col in ("severity", "check", "finding", "affected", "suggested action"):
        table.add_column(col)
    for f in report.findings:
        colour = _COLOURS[f.severity.value]
        shown = ", ".join(f.affected[:3]) + (" ..." if len(f.affected) > 3 else "")  # noqa: PLR2004
        table.add_row(f"[{colour}]{f.severity.value}[/]", escape(f.check_id), escape(f.title),
                      escape(shown), escape(f.suggested_action))
    out.print(table)
    counts = ", ".join(f"{v} {k}" for k, v in report.by_severity.items())
    out.print(f"[bold]by severity[/]: {escape(counts)}", highlight=False)
    log = report.event_log
    if log is not None:
        how = (f"incremental since record {log['since_seq']}" if log["mode"] == "incremental"
               else "full")
        out.print(f"[bold]event log[/]: {log['records']} record(s) verified ({escape(how)}; "
                  f"last full verification {escape(str(log['full_at']))})", highlight=False)


@app.callback()
def audit_cmd(
    ctx: typer.Context,
    json_out: bool = _JSON,
    html_out: Path | None = typer.Option(None, "--html", dir_okay=False,
                                         help="Also write the HTML report with charts."),
    check: list[str] = typer.Option([], "--check", "-c",
                                    help="Run only this check (repeatable; see 'audit checks')."),
    skip: list[str] = typer.Option([], "--skip", help="Leave this check out (repeatable)."),
    no_record: bool = typer.Option(False, "--no-record",
                                   help="Do not record the audit.completed event."),
    full: bool = typer.Option(False, "--full",
                              help="Verify the whole event-log chain, not only the records "
                                   "since the last audit's checkpoint."),
) -> None:
    """Run the posture audit (every check, or those named with --check)."""
    STATE.json = STATE.json or json_out
    if ctx.invoked_subcommand is not None:
        return
    with errors():
        settings = STATE.settings
        db = STATE.db()
        try:
            report = svc.run_audit(db, settings, CLOCK, actor=STATE.actor(), checks=check,
                                   skip=skip, record=not no_record, full_event_log=full)
            if html_out is not None:
                from iotrust.services import audit_report  # noqa: PLC0415 - matplotlib: only here

                page = audit_report.build_html(db, settings, CLOCK, report)
                write_atomic(html_out, page.encode("utf-8"), mode=0o644)
        finally:
            db.close()
    if STATE.json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
    else:
        _print(report)
        if html_out is not None:
            err.print(f"HTML report written to {escape(str(html_out))}")


@app.command("checks")
def checks_cmd(json_out: bool = _JSON) -> None:
    """List the checks."""
    STATE.json = STATE.json or json_out
    emit([{"id": c.id, "severity": c.severity.value, "title": c.title} for c in ALL_CHECKS],
         ["id", "severity", "title"], title="Audit checks")


@app.command("suppress")
def suppress_cmd(
    check_id: str = typer.Argument(..., metavar="CHECK_ID"),
    target: str = typer.Argument(..., help="Device id, serial, CA, policy or model ('*': all)."),
    reason: str = typer.Option(..., "--reason", help="Why this is accepted (recorded)."),
    days: float | None = typer.Option(None, "--days", help="Expire after this many days."),
    json_out: bool = _JSON,
) -> None:
    """Accept one finding target of a check, with the reason (recorded as an event)."""
    STATE.json = STATE.json or json_out
    expires = CLOCK.now() + timedelta(days=days) if days is not None else None
    with errors():
        db = STATE.db()
        try:
            row = svc.suppress(db, CLOCK, check_id, target, reason=reason, actor=STATE.actor(),
                               expires_at=expires)
        finally:
            db.close()
    emit_object(row.as_dict())


@app.command("unsuppress")
def unsuppress_cmd(check_id: str = typer.Argument(..., metavar="CHECK_ID"),
                   target: str = typer.Argument(...), json_out: bool = _JSON) -> None:
    """Lift a suppression (recorded as an event)."""
    STATE.json = STATE.json or json_out
    with errors():
        db = STATE.db()
        try:
            row = svc.unsuppress(db, CLOCK, check_id, target, actor=STATE.actor())
        finally:
            db.close()
    emit_object(row.as_dict())


@app.command("suppressions")
def suppressions_cmd(json_out: bool = _JSON) -> None:
    """List the suppressions."""
    STATE.json = STATE.json or json_out
    with errors():
        db = STATE.db()
        try:
            rows = svc.list_suppressions(db)
        finally:
            db.close()
    emit([r.as_dict() for r in rows],
         ["check_id", "target", "reason", "actor", "created_at", "expires_at"],
         title="Audit suppressions")


@app.command("mitigate")
def mitigate_cmd(
    check_id: str = typer.Argument(..., metavar="CHECK_ID"),
    target: str = typer.Argument(..., help="The device id (any target for notify)."),
    action: str = typer.Option(..., "--action", help="quarantine, rotate or notify."),
    note: str | None = typer.Option(None, "--note", help="Recorded with the event."),
    json_out: bool = _JSON,
) -> None:
    """Apply one reversible mitigation for a finding (recorded as audit.mitigated)."""
    STATE.json = STATE.json or json_out
    with errors():
        db = STATE.db()
        try:
            with _broker() as broker:
                done = svc.mitigate(db, CLOCK, check_id, target, action=action,
                                    actor=STATE.actor(), broker=broker, note=note)
        finally:
            db.close()
    emit_object(done.as_dict())
