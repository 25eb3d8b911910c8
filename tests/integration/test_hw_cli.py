"""`iotrust hw` and `iotrust model` as a user runs them (real processes, real SQLite registry),
and model registration through the service on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from tests.integration.pg import fresh_postgres_database

from iotrust.adapters.sql.store import Database
from iotrust.core import hardware as hw
from iotrust.core.records import Manufacturer
from iotrust.errors import ConflictError, NotFoundError
from iotrust.ports import FixedClock
from iotrust.services import hardware as svc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "hardware"
IOTRUST = [sys.executable, "-m", "iotrust.cli.main"]
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def run(args: list[str], env: dict[str, str] | None = None, *,
        expect: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*IOTRUST, *args], env=env or dict(os.environ), capture_output=True,
                          text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def levels(report: dict[str, object]) -> dict[str, str]:
    verdicts = report["verdicts"]
    assert isinstance(verdicts, list)
    return {v["mechanism"]: v["level"] for v in verdicts}


# -------------------------------------------------------------------------- hw assess / validate

def test_assess_json_for_every_example() -> None:
    expected_worst = {"class1-mcu.yaml": "impossible", "mcu-secure-element.yaml": "degraded",
                      "mcu-trustzone.yaml": "feasible", "linux-gateway-tpm.yaml": "feasible",
                      "legacy-camera.yaml": "impossible"}
    for name, worst in expected_worst.items():
        out = run(["hw", "assess", f"examples/hardware/{name}", "--json"]).stdout
        report = json.loads(out)
        assert report["schema"] == "iotrust.hardware-assessment/v1"
        assert report["worst"] == worst, name
        assert len(report["verdicts"]) == 8


def test_assess_class1_mcu_verdicts_and_defaults() -> None:
    report = json.loads(run(["hw", "assess", "examples/hardware/class1-mcu.yaml",
                             "--json"]).stdout)
    got = levels(report)
    assert got["key_protection"] == "impossible"
    assert got["crypto_agility"] == "impossible"
    assert got["ab_recovery"] == "impossible"
    assert report["service_end_year"] == 2041
    assert report["defaults"]["credential_lifetime_days"] == 7
    assert report["defaults"]["sensitive_topics_allowed"] is False


def test_lifetime_option_changes_the_agility_verdict() -> None:
    camera = "examples/hardware/legacy-camera.yaml"
    base = json.loads(run(["hw", "assess", camera, "--json"]).stdout)
    assert base["lifetime_years"] == 10
    assert levels(base)["crypto_agility"] == "feasible"
    longer = json.loads(run(["hw", "assess", camera, "--lifetime", "20y", "--json"]).stdout)
    assert longer["lifetime_years"] == 20
    assert longer["service_end_year"] == 2039
    assert levels(longer)["crypto_agility"] == "impossible"
    # The global --json before the sub-command works too.
    same = json.loads(run(["--json", "hw", "assess", camera, "--lifetime", "20"]).stdout)
    assert same == longer


def test_assess_table_output() -> None:
    env = {**os.environ, "COLUMNS": "200"}
    out = run(["hw", "assess", "examples/hardware/linux-gateway-tpm.yaml", "--lifetime", "12y"],
              env).stdout
    assert "crypto agility" in out
    assert "feasible" in out
    assert "12-year life" in out
    assert "90-day credentials" in out


def test_assess_writes_a_standalone_html_page(tmp_path: Path) -> None:
    page = tmp_path / "report" / "hw.html"
    run(["hw", "assess", "examples/hardware/mcu-secure-element.yaml", "--html", str(page)])
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert 'class="hw-assessment"' in text
    assert text.count("<tr class=") == 8


def test_validate_ok_and_invalid_profiles(tmp_path: Path) -> None:
    out = json.loads(run(["hw", "validate", "examples/hardware/mcu-trustzone.yaml",
                          "--json"]).stdout)
    assert out["valid"] is True
    doc = yaml.safe_load((EXAMPLES / "mcu-trustzone.yaml").read_text())
    doc["secure_boot"]["root_of_trust"] = "efuse"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    proc = run(["hw", "validate", str(bad)], expect=65)
    assert "$.secure_boot.root_of_trust" in proc.stderr
    assert "profile_invalid" in proc.stderr
    proc = run(["hw", "assess", str(bad), "--json"], expect=65)
    error = json.loads(proc.stderr)
    assert error == {"error": "ProfileError", "reason": "profile_invalid",
                     "detail": "$.secure_boot.root_of_trust: must be one of rom, otp, tpm, none"}


def test_refusals_and_their_exit_codes(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n")
    assert "anchors and aliases" in run(["hw", "assess", str(bomb)], expect=65).stderr
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (70 * 1024) + b"\n")
    assert "larger than 65536 bytes" in run(["hw", "validate", str(big)], expect=65).stderr
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    run(["hw", "validate", str(binary)], expect=65)
    missing = run(["hw", "assess", str(tmp_path / "nope.yaml")], expect=66)
    assert "profile_not_found" in missing.stderr
    bad_life = run(["hw", "assess", "examples/hardware/class1-mcu.yaml", "--lifetime", "12m"],
                   expect=65)
    assert "invalid_lifetime" in bad_life.stderr
    run(["hw", "assess", "examples/hardware/class1-mcu.yaml", "--timelines",
         str(tmp_path / "none.yaml")], expect=66)


# -------------------------------------------------------------------------- model add (CLI)

@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("hw")
    (base / "fpass").write_text("factory passphrase 0123456789\n")
    env = {**os.environ, "IOTRUST_DATA": str(base / "data"),
           "IOTRUST_FACTORY_PASSPHRASE_FILE": str(base / "fpass")}
    env.pop("IOTRUST_DATABASE_URL", None)
    factory = base / "factory"
    run(["factory", "init", "--name", "widgetco", "--vendor-id", "0x1234", "--product-id",
         "sensor-1", "-f", str(factory)], env)
    run(["manufacturer", "add", "widgetco", "--anchor", str(factory / "root.crt.pem"),
         "--allow", "0x1234:sensor-1", "--allow", "0x1234:soil-1", "--allow", "0x1234:ctrl-3",
         "--allow", "0x1234:ctrl-4"], env)
    return {"env": env, "db": base / "data" / "registry.db"}


def _db_file(registry: dict[str, object]) -> Path:
    path = registry["db"]
    assert isinstance(path, Path)
    if not path.exists():  # the settings decide the file name; find the one SQLite file
        found = list(path.parent.glob("*.db"))
        assert len(found) == 1, found
        path = found[0]
    return path


def test_model_add_stores_profile_and_defaults(registry: dict[str, object]) -> None:
    env = registry["env"]
    assert isinstance(env, dict)
    profile = EXAMPLES / "mcu-secure-element.yaml"
    out = json.loads(run(["model", "add", "sensor-s2", "--manufacturer", "widgetco",
                          "--profile", str(profile), "--product-id", "sensor-1", "--json"],
                         env).stdout)
    assert out["model"] == "sensor-s2"
    assert (out["product_id"], out["devices_assigned"]) == ("sensor-1", 0)
    assert out["credential_lifetime_days"] == 90
    assert out["sensitive_topics_allowed"] is True
    assert out["worst_verdict"] == "degraded"
    out = json.loads(run(["model", "add", "soil-s1", "--manufacturer", "widgetco", "--profile",
                          str(EXAMPLES / "class1-mcu.yaml"), "--product-id", "soil-1", "--json"],
                         env).stdout)
    assert out["credential_lifetime_days"] == 7
    assert out["sensitive_topics_allowed"] is False

    with sqlite3.connect(_db_file(registry)) as conn:
        rows = dict(conn.execute(
            "SELECT name, credential_lifetime_s FROM device_models").fetchall())
        stored = conn.execute("SELECT hardware_profile FROM device_models WHERE name = ?",
                              ("sensor-s2",)).fetchone()[0]
    assert rows == {"sensor-s2": 90 * 86_400, "soil-s1": 7 * 86_400}
    assert stored == profile.read_text()

    shown = json.loads(run(["model", "show", "soil-s1", "--json"], env).stdout)
    assert shown["sensitive_topics_allowed"] is False
    assert shown["product_id"] == "soil-1"
    listed = json.loads(run(["model", "list", "--json"], env).stdout)
    assert {m["name"]: m["product_id"] for m in listed} == {"sensor-s2": "sensor-1",
                                                             "soil-s1": "soil-1"}
    events = json.loads(run(["--json", "log", "tail", "-n", "5"], env).stdout)
    assert [e["kind"] for e in events].count("model.added") == 2


def test_model_add_refusals(registry: dict[str, object], tmp_path: Path) -> None:
    env = registry["env"]
    assert isinstance(env, dict)
    profile = str(EXAMPLES / "mcu-trustzone.yaml")
    run(["model", "add", "ctrl-c3", "--manufacturer", "widgetco", "--profile", profile,
         "--product-id", "ctrl-3"], env)
    dup = run(["model", "add", "ctrl-c3", "--manufacturer", "widgetco", "--profile", profile,
               "--product-id", "ctrl-4"], env, expect=67)
    assert "model_exists" in dup.stderr
    same_product = run(["model", "add", "ctrl-c3b", "--manufacturer", "widgetco", "--profile",
                        profile, "--product-id", "ctrl-3"], env, expect=67)
    assert "model_product_exists" in same_product.stderr
    assert "ctrl-c3" in same_product.stderr
    not_allowed = run(["model", "add", "ctrl-c6", "--manufacturer", "widgetco", "--profile",
                       profile, "--product-id", "ctrl-6"], env, expect=65)
    assert "product_not_allowed" in not_allowed.stderr
    bad_product = run(["model", "add", "ctrl-c7", "--manufacturer", "widgetco", "--profile",
                       profile, "--product-id", "ctrl 7!"], env, expect=65)
    assert "invalid_product_id" in bad_product.stderr
    missing = run(["model", "add", "ctrl-c8", "--manufacturer", "widgetco", "--profile",
                   profile], env, expect=2)  # --product-id is required
    assert "--product-id" in missing.stderr
    unknown = run(["model", "add", "ctrl-c4", "--manufacturer", "nobody", "--profile", profile,
                   "--product-id", "ctrl-4"], env, expect=66)
    assert "unknown_manufacturer" in unknown.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "mcu-trustzone.yaml").read_text().replace("ram_kb: 640",
                                                                         "ram_kb: lots"))
    invalid = run(["model", "add", "ctrl-c5", "--manufacturer", "widgetco", "--profile",
                   str(bad), "--product-id", "ctrl-4"], env, expect=65)
    assert "$.ram_kb" in invalid.stderr
    run(["model", "add", "Bad Name", "--manufacturer", "widgetco", "--profile", profile,
         "--product-id", "ctrl-4"], env, expect=65)
    run(["model", "show", "ctrl-c9"], env, expect=66)


# -------------------------------------------------------------------------- service, both stores

BACKENDS = [pytest.param("sqlite", id="sqlite"),
            pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database.open(f"sqlite:///{tmp_path / 'registry.db'}")
        try:
            yield database
        finally:
            database.close()
        return
    with fresh_postgres_database() as url:
        database = Database.open(url)
        try:
            yield database
        finally:
            database.close()


def test_register_model_service(db: Database) -> None:
    clock = FixedClock(T0)
    with db.transaction() as tx:
        tx.add_manufacturer(Manufacturer(name="acme", display_name="ACME", anchors_pem=PEM,
                                         allowed=("acme:sensor",), created_at=T0))
    text = (EXAMPLES / "linux-gateway-tpm.yaml").read_bytes()
    reg = svc.register_model(db, clock, name="gw-g4", manufacturer="acme", profile_yaml=text,
                             actor="tester@cli")
    assert reg.defaults.credential_lifetime_s == 90 * 86_400
    assert reg.assessment.worst is hw.Level.FEASIBLE
    with db.transaction() as tx:
        model = tx.get_model("gw-g4")
        events = [e for e in tx.iter_events() if e.kind == svc.MODEL_ADDED]
    assert model.hardware_profile == text.decode()
    assert model.credential_lifetime_s == 90 * 86_400
    assert svc.defaults_of(model, now_year=2026).sensitive_topics_allowed is True
    assert len(events) == 1
    with pytest.raises(ConflictError) as conflict:
        svc.register_model(db, clock, name="gw-g4", manufacturer="acme", profile_yaml=text,
                           actor="tester@cli")
    assert conflict.value.reason == "model_exists"
    with pytest.raises(NotFoundError) as missing:
        svc.register_model(db, clock, name="gw-g5", manufacturer="nobody", profile_yaml=text,
                           actor="tester@cli")
    assert missing.value.reason == "unknown_manufacturer"
    with pytest.raises(hw.ProfileError):
        svc.register_model(db, clock, name="gw-g6", manufacturer="acme",
                           profile_yaml=b"schema: nope\n", actor="tester@cli")
    with db.transaction() as tx:
        assert [m.name for m in tx.list_models()] == ["gw-g4"]
        assert len([e for e in tx.iter_events() if e.kind == svc.MODEL_ADDED]) == 1


def test_render_html_escapes_profile_text() -> None:
    doc = yaml.safe_load((EXAMPLES / "class1-mcu.yaml").read_text())
    doc["model"] = "<script>alert(1)</script>"
    doc["vendor"] = 'Evil "Corp" & Co'
    p = hw.parse_profile(yaml.safe_dump(doc))
    a = hw.assess(p, timelines=svc.load_timelines(), now_year=2026)
    fragment = svc.render_html(a)
    assert "<script>" not in fragment
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in fragment
    assert "Evil &quot;Corp&quot; &amp; Co" in fragment
    assert fragment.startswith('<section class="hw-assessment" data-worst="impossible">')
    page = svc.render_html(a, standalone=True)
    assert "<title>Hardware assessment: &lt;script&gt;" in page
