"""Backup and restore (issue 10, item 6): a restored service keeps refusing what it refused.

A fleet with one onboarded device and one retired device (its credential revoked) is backed up
with ``iotrust backup``; the original data folder is then moved away, the archive restored with
``iotrust restore`` into a new folder, and ``iotrust serve`` started on it: the retired device's
hello is refused ``retired``, its credential is in the restored CRL (openssl and
``pki.is_revoked``), ``iotrust log verify`` passes, and the restored CA keys still sign (a new
device onboards). A tampered archive (one byte flipped in a member) and a restore over an existing
domain are refused, and nothing is put in place.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from tests.conftest import missing_component
from tests.integration.fleet import Maker, build_fleet
from tests.integration.server import running_server
from tests.integration.test_onboarding_service import onboard
from typer.testing import CliRunner

from iotrust.adapters.sql.store import Database
from iotrust.cli.main import app as cli_app
from iotrust.core import pki
from iotrust.core.lifecycle import CredentialState, RetirementReason
from iotrust.core.onboarding import build_hello
from iotrust.ports import FixedClock
from iotrust.services import broker as broker_svc
from iotrust.services.onboarding import OnboardingService
from iotrust.services.settings import Settings


@dataclass(frozen=True, slots=True)
class Ran:
    """A finished ``iotrust`` command."""

    returncode: int
    stdout: str
    stderr: str


def _cli(env: Mapping[str, str], *args: str) -> Ran:
    """Run ``iotrust --json ARGS`` in this process (a subprocess costs seconds per start)."""
    overlay: dict[str, str | None] = {k: None for k in os.environ if k.startswith("IOTRUST_")}
    overlay.update(env)
    result = CliRunner().invoke(cli_app, ["--json", *args], env=overlay)
    return Ran(result.exit_code, result.stdout, result.stderr)


def _flip_byte(src: Path, dst: Path, member: str) -> None:
    data = bytearray(src.read_bytes())
    with tarfile.open(src) as tar:
        info = tar.getmember(member)
        offset = info.offset_data + info.size // 2
    data[offset] ^= 0x01
    dst.write_bytes(bytes(data))


def test_restored_service_keeps_refusing(tmp_path: Path) -> None:  # noqa: PLR0915 - one story
    if not any(Path(p, "openssl").exists() for p in os.environ.get("PATH", "").split(":")):
        missing_component("openssl")
    fleet = build_fleet(tmp_path / "orig", makers=(Maker("widgetco", count=3),))
    clock = FixedClock(datetime.now(UTC))
    active_dev, retired_dev, new_dev = (fleet.device(s) for s in fleet.serials("widgetco"))
    db = fleet.open_db()
    try:
        svc = OnboardingService(db, clock, fleet.settings, fleet.secrets)
        onboard(svc, active_dev, clock)
        retired = onboard(svc, retired_dev, clock)
        broker_svc.retire(db, fleet.settings, fleet.secrets, clock, retired.device_id,
                          broker=None, reason=RetirementReason.COMPROMISED, actor="tests@backup")
        with db.transaction() as tx:
            cred = tx.get_credential(format(retired.certificate.serial_number, "x"))
        assert cred.state is CredentialState.REVOKED
    finally:
        db.close()

    env = {k: v for k, v in fleet.server_env().items()
           if k.startswith("IOTRUST_") and k not in ("IOTRUST_DATA", "IOTRUST_DATABASE_URL")}
    orig = ["--data", str(fleet.settings.data_dir)]
    assert _cli(env, *orig, "log", "anchor").returncode == 0
    archive = tmp_path / "backup.tar"
    made = _cli(env, *orig, "backup", str(archive))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert names[:2] == ["manifest.json", "manifest.sig"]
    assert set(names[2:]) == set(manifest["members"])
    assert "passphrase" not in names
    assert not [n for n in names if n.startswith("keys/") and not n.endswith(".key.pem")]
    assert manifest["event_head"]
    assert manifest["tool_version"]
    assert fleet.passphrase_file.read_text().strip() not in archive.read_bytes().decode("latin-1")
    assert _cli(env, *orig, "backup", str(archive)).returncode != 0  # never overwritten

    # the original is gone: the restored service must not depend on anything in it
    fleet.settings.data_dir.rename(tmp_path / "orig-data-moved-away")
    restored = Settings(data_dir=tmp_path / "restored" / "data",
                        database_url=f"sqlite:///{tmp_path / 'restored' / 'data' / 'iotrust.db'}")

    tampered = tmp_path / "tampered.tar"
    _flip_byte(archive, tampered, "ca/root.pem")
    refused = _cli(env, "restore", str(tampered), "--data", str(restored.data_dir))
    assert refused.returncode == 77, refused.stderr
    assert json.loads(refused.stderr)["reason"] == "backup_tampered"
    assert not restored.data_dir.exists()
    _flip_byte(archive, tampered.with_suffix(".db.tar"), "registry/iotrust.db")
    refused = _cli(env, "restore", str(tampered.with_suffix(".db.tar")), "--data",
                   str(restored.data_dir))
    assert json.loads(refused.stderr)["reason"] == "backup_tampered"

    done = _cli(env, "restore", str(archive), "--data", str(restored.data_dir))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["event_head"] == manifest["event_head"]
    assert report["rewritten_key_refs"] >= 2
    again = _cli(env, "restore", str(archive), "--data", str(restored.data_dir))
    assert again.returncode == 67, again.stderr
    assert json.loads(again.stderr)["reason"] == "domain_exists"

    verify = _cli(env, "--data", str(restored.data_dir), "log", "verify")
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["intact"] is True

    db = Database.open(restored.database_url)
    try:
        with db.transaction() as tx:
            issuing = next(c for c in tx.list_cas(role="issuing"))
            assert all(str(restored.data_dir) in c.key_ref for c in tx.list_cas())
        crl_file = restored.crl_dir / f"{issuing.id}.crl.pem"
        crl = pki.load_crl(crl_file.read_bytes())
        assert pki.is_revoked(crl, retired.certificate.serial_number)
        text = subprocess.run(["openssl", "crl", "-in", str(crl_file), "-noout", "-text"],
                              capture_output=True, text=True, check=True).stdout
        serial_hex = format(retired.certificate.serial_number, "X")
        assert serial_hex in text.replace(":", "").upper()

        server_env = {**fleet.server_env(), "IOTRUST_DATA": str(restored.data_dir),
                      "IOTRUST_DATABASE_URL": restored.database_url}
        with running_server(server_env, log_dir=tmp_path) as server:
            hello = build_hello(serial=retired_dev.serial, factory_chain=retired_dev.chain,
                                random=os.urandom)
            resp = httpx.post(f"{server.url}/v1/onboarding/hello", content=hello.to_wire(),
                              headers={"content-type": "application/json"}, timeout=10)
            assert resp.status_code == 403, resp.text
            assert resp.json()["reason"] == "retired"
            served = httpx.get(f"{server.url}/v1/crl/{issuing.id}.crl", timeout=10)
            assert served.status_code == 200
            assert pki.is_revoked(pki.load_crl(served.content),
                                  retired.certificate.serial_number)
        assert "Traceback" not in server.output()

        # the restored CA keys still sign: a device still expected onboards
        svc = OnboardingService(db, clock, restored, fleet.secrets)
        assert onboard(svc, new_dev, clock).device_id
    finally:
        db.close()


def test_backup_of_postgres_registry(tmp_path: Path) -> None:
    """A PostgreSQL registry is dumped with pg_dump and restored with pg_restore."""
    pytest.importorskip("psycopg")
    from tests.integration.pg import fresh_postgres_database  # noqa: PLC0415

    with fresh_postgres_database() as source_url, fresh_postgres_database() as target_url:
        fleet = build_fleet(tmp_path / "pg", makers=(Maker("widgetco", count=1),),
                            database_url=source_url)
        env = {k: v for k, v in fleet.server_env().items()
               if k.startswith("IOTRUST_") and k != "IOTRUST_DATA"}
        archive = tmp_path / "pg.tar"
        made = _cli(env, "--data", str(fleet.settings.data_dir), "backup", str(archive))
        assert made.returncode == 0, made.stderr
        with tarfile.open(archive) as tar:
            assert "registry/postgresql.dump" in tar.getnames()
        target_env = {**env, "IOTRUST_DATABASE_URL": target_url}
        done = _cli(target_env, "restore", str(archive), "--data", str(tmp_path / "pg-restored"))
        assert done.returncode == 0, done.stderr
        verify = _cli(target_env, "--data", str(tmp_path / "pg-restored"), "log", "verify")
        assert verify.returncode == 0, verify.stderr
        again = _cli(target_env, "restore", str(archive), "--data", str(tmp_path / "pg-again"))
        assert json.loads(again.stderr)["reason"] == "domain_exists"


test_backup_of_postgres_registry = pytest.mark.postgres(test_backup_of_postgres_registry)
