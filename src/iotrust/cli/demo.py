"""``iotrust demo``: the whole lifecycle in one command, narrated in the terminal.

This module only narrates (rich), prints the outcome (``--json``), handles Ctrl-C and exits;
the orchestration is :mod:`iotrust.services.demo`. Without Mosquitto it says how to install it
and exits 69.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

import typer
from rich.console import Console
from rich.markup import escape

from iotrust.cli.common import STATE, err, errors, out
from iotrust.services import demo as demo_svc

EXIT_UNAVAILABLE = 69
_STYLES = {"step": "bold cyan", "info": "", "ok": "green", "refused": "yellow",
           "warn": "bold red"}
_MARKS = {"step": "\n==", "info": "  ", "ok": "  ✓", "refused": "  ✗", "warn": "  !"}


def _narrator(console: Console) -> demo_svc.Narrate:
    def narrate(kind: str, text: str) -> None:
        style = _STYLES.get(kind, "")
        line = f"{_MARKS.get(kind, '  ')} {escape(text)}"
        console.print(f"[{style}]{line}[/]" if style else line, highlight=False,
                      soft_wrap=True)
    return narrate


def _wait_for_interrupt() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM, without raising KeyboardInterrupt mid-wait."""
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    err.print("stopping the server, the broker and ingest ...")


def demo(
    fast: bool = typer.Option(False, "--fast", help="A smaller fleet; stop everything at the end."),
    device_count: int | None = typer.Option(None, "--devices", min=3, max=200,
                                            help="Fleet size (default 8; --fast 5)."),
    folder: Path | None = typer.Option(None, "--dir",
                                       help="Keep the demo's data here (default: a temp folder)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the temporary folder afterwards."),
) -> None:
    """Watch the whole lifecycle on a real Mosquitto and a real server.

    Factory, onboarding, attacks, telemetry, rollout, quarantine, rotation, retirement, zombie
    and audit, narrated step by step.
    """
    console = err if STATE.json else out
    missing = demo_svc.mosquitto_missing()
    if missing is not None:
        err.print(f"[bold red]error:[/] the demo needs {missing}: install it with "
                  f"`{demo_svc.INSTALL_HINT}` (Debian/Ubuntu; the package ships the "
                  "dynamic-security plugin), or run `make demo`.")
        raise typer.Exit(EXIT_UNAVAILABLE)
    count = device_count or (5 if fast else 8)
    temporary = folder is None
    base = Path(tempfile.mkdtemp(prefix="iotrust-demo-")) if folder is None else folder
    run = demo_svc.Demo(base=base.absolute(), devices=count, fast=fast,
                        narrate=_narrator(console))
    ok = False
    try:
        with errors():
            run.run()
            ok = all(step.get("ok") for step in run.outcome.values())
        console.print(f"\n[bold]Dashboard:[/] {run.dashboard_url}  (sign in with the admin "
                      f"token below)\n[bold]Admin token:[/] {run.token}\n"
                      f"[bold]Data folder:[/] {run.settings.data_dir}", highlight=False)
        if STATE.json:
            sys.stdout.write(json.dumps({"ok": ok, "devices": count,
                                         "dashboard": run.dashboard_url,
                                         "data": str(run.settings.data_dir),
                                         "steps": run.outcome}, indent=2, default=str) + "\n")
            sys.stdout.flush()
        console.print("[bold green]The demo went as expected.[/]" if ok else
                      "[bold red]Some steps did not go as expected (see above).[/]")
        if not fast:
            console.print("The server, the broker and ingest keep running: watch the "
                          "dashboard. Press Ctrl-C to stop.")
            _wait_for_interrupt()
    finally:
        run.close()
        if temporary and not keep:
            shutil.rmtree(base, ignore_errors=True)
        elif temporary:
            console.print(f"kept {base}")
    if not ok:
        raise typer.Exit(1)


def install(app: typer.Typer) -> None:
    """Register ``iotrust demo``."""
    app.command("demo")(demo)

