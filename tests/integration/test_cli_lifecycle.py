"""The foundation as a new user runs it: real `iotrust` processes on a real SQLite registry."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

IOTRUST = [sys.executable, "-m", "iotrust.cli.main"]


def run(args: list[str], env: dict[str, str], *,
        expect: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*IOTRUST, *args], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("cli")
    (base / "pass").write_text("correct horse battery staple\n")
    (base / "fpass").write_text("factory passphrase 0123456789\n")
    env = {**os.environ, "IOTRUST_DATA": str(base / "data"),
           "IOTRUST_PASSPHRASE_FILE": str(base / "pass"),
           "IOTRUST_FACTORY_PASSPHRASE_FILE": str(base / "fpass")}
    env.pop("IOTRUST_PASSPHRASE", None)
    env.pop("IOTRUST_DATABASE_URL", None)
    run(["init", "--name", "acme-fleet", "--owner", "acme-ops"], env)
    factory = base / "factory"
    run(["factory", "init", "--name", "widgetco", "--vendor-id", "0x1234",
         "--product-id", "sensor-1", "-f", str(factory)], env)
    run(["factory", "mint", "--count", "25", "-f", str(factory)], env)
    root = base / "data" / "ca" / "root.pem"
    vouchers = base / "vouchers.jsonl"
    run(["factory", "voucher", "-f", str(factory), "--owner", "acme-ops", "--owner-root",
         str(root), "-o", str(vouchers)], env)
    run(["manufacturer", "add", "widgetco", "--anchor", str(factory / "root.crt.pem"),
         "--allow", "0x1234:sensor-1"], env)
    return {"base": base, "env": env, "factory": factory, "vouchers": vouchers, "root": root}


def devices(env: dict[str, str]) -> list[dict[str, object]]:
    out = run(["--json", "devices", "list", "--limit", "1000"], env).stdout
    rows: list[dict[str, object]] = json.loads(out)
    return rows


def test_import_makes_devices_expected_and_is_idempotent(world: dict[str, object]) -> None:
    env = world["env"]
    assert isinstance(env, dict)
    run(["voucher", "import", str(world["vouchers"])], env)
    rows = devices(env)
    assert len(rows) == 25
    assert {r["state"] for r in rows} == {"expected"}
    assert len({r["factory_spki_sha256"] for r in rows}) == 25
    again = json.loads(run(["--json", "voucher", "import", str(world["vouchers"])], env).stdout)
    assert again["unchanged"] == 25
    assert again["imported"] == 0
    assert len(devices(env)) == 25


def test_bad_signature_voucher_is_refused_and_changes_nothing(world: dict[str, object],
                                                              tmp_path: Path) -> None:
    env = world["env"]
    assert isinstance(env, dict)
    run(["voucher", "import", str(world["vouchers"])], env)
    before = devices(env)
    factory = world["factory"]
    assert isinstance(factory, Path)
    run(["factory", "mint", "--count", "1", "-f", str(factory)], env)
    fresh = tmp_path / "one.jsonl"
    newest = max((factory / "devices").iterdir()).name
    run(["factory", "voucher", "-f", str(factory), "--owner", "acme-ops", "--owner-root",
         str(world["root"]), "--serial", newest, "-o", str(fresh)], env)
    doc = json.loads(fresh.read_text())
    sig = bytearray(base64.urlsafe_b64decode(doc["signature"] + "=" * (-len(doc["signature"]) % 4)))
    sig[10] ^= 0x01  # inside r: still well-formed DER, no longer a valid signature
    doc["signature"] = base64.urlsafe_b64encode(bytes(sig)).decode().rstrip("=")
    fresh.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n")
    proc = run(["--json", "voucher", "import", str(fresh)], env, expect=77)
    assert json.loads(proc.stderr)["reason"] == "voucher_invalid"
    assert devices(env) == before
    tail = json.loads(run(["--json", "log", "tail", "-n", "1"], env).stdout)
    assert tail[0]["kind"] == "voucher.refused"
    assert tail[0]["reason"] == "voucher_invalid"


def test_voucher_for_another_owner_is_refused(world: dict[str, object], tmp_path: Path) -> None:
    env = world["env"]
    assert isinstance(env, dict)
    factory = world["factory"]
    assert isinstance(factory, Path)
    other = tmp_path / "other.jsonl"
    serial = min((factory / "devices").iterdir()).name
    run(["factory", "voucher", "-f", str(factory), "--owner", "someone-else", "--owner-root",
         str(world["root"]), "--serial", serial, "-o", str(other)], env)
    proc = run(["--json", "voucher", "import", str(other)], env, expect=77)
    assert json.loads(proc.stderr)["reason"] == "voucher_wrong_owner"


def test_log_verify_detects_tampering(world: dict[str, object], tmp_path: Path) -> None:
    env = world["env"]
    assert isinstance(env, dict)
    base = world["base"]
    assert isinstance(base, Path)
    ok = json.loads(run(["--json", "log", "verify"], env).stdout)
    assert ok["intact"] is True
    assert ok["records"] > 25
    # Work on a copy so the other tests keep an intact log.
    copy = tmp_path / "data"
    subprocess.run(["cp", "-a", str(base / "data"), str(copy)], check=True)
    env2 = {**env, "IOTRUST_DATA": str(copy)}
    with sqlite3.connect(copy / "iotrust.db") as con:
        con.execute("UPDATE events SET reason = 'nothing_to_see' WHERE seq = 5")
    proc = run(["--json", "log", "verify"], env2, expect=77)
    report = json.loads(proc.stdout)
    assert report["intact"] is False
    assert report["breaks"][0]["seq"] == 5
    assert report["breaks"][0]["kind"] == "modified"
    assert json.loads(proc.stderr)["reason"] == "event_log_tampered"


def test_init_refuses_to_overwrite(world: dict[str, object]) -> None:
    env = world["env"]
    assert isinstance(env, dict)
    proc = run(["--json", "init"], env, expect=67)
    assert json.loads(proc.stderr)["reason"] == "domain_exists"


def test_malformed_anchor_is_a_typed_error(world: dict[str, object], tmp_path: Path) -> None:
    env = world["env"]
    assert isinstance(env, dict)
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    proc = run(["--json", "manufacturer", "add", "junk", "--anchor", str(junk), "--allow",
                "1:2"], env, expect=65)
    assert json.loads(proc.stderr)["error"] == "InputError"
