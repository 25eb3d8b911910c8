"""``iotrust backup`` and ``iotrust restore``: the edges of :mod:`iotrust.services.backup`.

Secrets come from the environment as for every command (``IOTRUST_PASSPHRASE[_FILE]``,
``IOTRUST_PKCS11_PIN``); restore needs them only to regenerate the broker's files. No logic here.
"""

from __future__ import annotations

from pathlib import Path

import typer

from iotrust.cli.common import STATE, emit_object, err, errors
from iotrust.ports import SystemClock
from iotrust.services import backup as backup_svc

CLOCK = SystemClock()


def backup_cmd(
    out: Path = typer.Argument(..., help="The archive to write (mode 0600; never overwritten)."),
) -> None:
    """Back up the registry, encrypted keys, event log, CA/CRL/TUF files into one signed archive."""
    with errors():
        report = backup_svc.backup(STATE.db(), STATE.settings, CLOCK, out, actor=STATE.actor(),
                                   secrets=STATE.secrets())
        emit_object(report.as_dict())


def restore_cmd(
    archive: Path = typer.Argument(..., exists=True, dir_okay=False, help="A backup archive."),
    data: Path | None = typer.Option(None, "--data", help="Where to restore (default: --data "
                                     "of iotrust, IOTRUST_DATA or ./data)."),
    force: bool = typer.Option(False, "--force",
                               help="Move an existing trust domain aside and replace it."),
    pkcs11_module: str | None = typer.Option(
        None, "--pkcs11-module", envvar="IOTRUST_PKCS11_MODULE",
        help="Your PKCS#11 module, when the archive was signed by a key on a token."),
) -> None:
    """Verify an archive (signature, manifest hashes, event chain) and restore it."""
    if data is not None:
        STATE.data = data
    with errors():
        sec = STATE.secrets()
        report = backup_svc.restore(archive, STATE.settings, CLOCK, passphrase=sec.passphrase,
                                    pin=sec.pin, actor=STATE.actor(), force=force,
                                    pkcs11_module=pkcs11_module)
        if report.broker.startswith("not regenerated"):
            err.print(f"[yellow]note:[/] broker files {report.broker}")
        emit_object(report.as_dict())


def install(app: typer.Typer) -> None:
    """Register the commands on the main ``iotrust`` application."""
    app.command("backup")(backup_cmd)
    app.command("restore")(restore_cmd)
