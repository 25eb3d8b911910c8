"""What every ``iotrust`` command shares: settings, the database, secrets, output and errors.

Exit codes (documented in the README): 0 ok, 1 unexpected error, 2 usage, 65 bad input,
66 not found, 67 conflict, 69 backend unavailable, 77 refused by a trust decision.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from iotrust.adapters.sql.store import Database
from iotrust.errors import IotrustError
from iotrust.services.domain import KeyBackend, Secrets, secrets_from_environment
from iotrust.services.settings import Settings

out = Console()
err = Console(stderr=True)
ACTOR_CLI = "cli@iotrust"


@dataclass(slots=True)
class Env:
    """Per-invocation state shared by the commands."""

    data: Path | None = None
    json: bool = False

    @property
    def settings(self) -> Settings:
        """Resolved settings."""
        return Settings.from_environment(self.data)

    def db(self) -> Database:
        """Open (and migrate) the registry."""
        s = self.settings
        if s.database_url.startswith("sqlite"):
            s.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Database.open(s.database_url)

    def secrets(self) -> Secrets:
        """Secrets for CA keys, from the environment (never from the command line)."""
        return secrets_from_environment(self.settings)

    def secrets_with(self, backend: KeyBackend) -> Secrets:
        """Secrets matching the key backend just used (e.g. a freshly generated passphrase)."""
        return Secrets(passphrase=backend.passphrase, pin=backend.pkcs11_pin)

    def actor(self) -> str:
        """Who the operator is, for the event log."""
        user = os.environ.get("USER", "operator")
        safe = "".join(c for c in user.lower() if c.isalnum() or c == "-")[:30] or "operator"
        return f"{safe}@cli" if safe[0].isalpha() else ACTOR_CLI


STATE = Env()


def fail(exc: IotrustError) -> NoReturn:
    """Print a typed error and exit with its documented code."""
    if STATE.json:
        err.print_json(json.dumps(exc.as_dict()))
    else:
        err.print(f"[bold red]error:[/] {escape(exc.diagnostics())}", highlight=False)
    sys.exit(exc.exit_code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn the error tree into exit codes; anything else is a bug and keeps its traceback."""
    try:
        yield
    except IotrustError as exc:
        fail(exc)


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """Print rows as a table, or as JSON with ``--json``."""
    if STATE.json:
        sys.stdout.write(json.dumps(list(rows), indent=2, default=str) + "\n")
        return
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[("" if r.get(c) is None else str(r.get(c))) for c in columns])
    out.print(table)


def emit_object(obj: dict[str, Any]) -> None:
    """Print one object (key/value lines, or JSON with ``--json``)."""
    if STATE.json:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
        return
    for k, v in obj.items():
        out.print(f"[bold]{escape(str(k))}[/]: {escape(str(v))}", highlight=False)


@contextmanager
def progress(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (quiet with ``--json`` or when stderr is not a terminal)."""
    if STATE.json or not err.is_terminal:
        yield lambda _n: None
        return
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def abort_usage(message: str) -> NoReturn:
    """A usage error (exit 2)."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)
