"""The posture audit on real registries (SQLite, and PostgreSQL for the service): a clean fleet
passes, a careless one trips every check the registry can show; suppressions and mitigations
are recorded as events; the CLI's --json and --html and the API work as a user runs them.

Headless Chromium is not installed here, so the HTML report is checked by parsing it (the
standard library's HTMLParser): four chart images as inline PNG data, the findings table,
the hardware assessments, and escaping."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from tests.integration.audit_fleet import AuditFleet, anchor, bad_fleet, clean_fleet
from tests.integration.pg import fresh_postgres_database

from iotrust.api.app import create_app
from iotrust.core.audit import Finding
from iotrust.core.audit_checks import ALL_CHECKS
from iotrust.core.lifecycle import DeviceState
from iotrust.errors import ConflictError, InputError, NotFoundError
from iotrust.services import audit as svc
from iotrust.services import audit_report, tokens

ROOT = Path(__file__).resolve().parents[2]
ACTOR = "tests@audit"
#: What the careless fleet trips (weak CA keys and CA expiry need a hand-made CA: unit tests).
EXPECTED_BAD = {"credential-shared", "key-reused", "weak-device-key", "revoked-still-trusted",
                "credential-expiring", "credential-age", "conflicting-client-ids",
                "policy-overly-permissive", "policy-misreadable", "blast-radius",
                "weak-key-storage", "unsafe-manufacturer-trust", "zombies", "dormant-devices",
                "hardware-lifetime", "event-log-integrity", "rollout-lagging",
                "withdrawn-release"}


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> AuditFleet:
    return bad_fleet(tmp_path_factory.mktemp("bad"))


def _checks(report: svc.AuditReport) -> set[str]:
    return {f.check_id for f in report.findings}


def test_clean_fleet_has_no_findings(tmp_path: Path) -> None:
    fleet = clean_fleet(tmp_path)
    report = svc.run_audit(fleet.db, fleet.settings, fleet.clock, actor=ACTOR)
    assert report.findings == [], [f.title for f in report.findings]
    assert report.device_states["active"] == 4
    assert {r.check_id for r in report.runs} >= EXPECTED_BAD
    with fleet.db.transaction() as tx:
        events = list(tx.iter_events(kind=svc.AUDIT_COMPLETED))
    assert len(events) == 1
    assert json.loads(events[0].data)["findings"] == 0
    assert report.event_seq == events[0].seq


def test_bad_fleet_trips_every_check(bad: AuditFleet) -> None:
    report = svc.run_audit(bad.db, bad.settings, bad.clock, actor=ACTOR, record=False)
    assert _checks(report) == EXPECTED_BAD
    by_check: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_check.setdefault(f.check_id, []).append(f)
    ids = bad.devices
    assert ids[7] in {a for f in by_check["key-reused"] for a in f.affected}
    assert "abc124" in by_check["weak-device-key"][0].affected
    revoked = [f for f in by_check["revoked-still-trusted"] if f.evidence.get("count")]
    assert revoked
    assert revoked[0].evidence["count"] == 1
    reach = by_check["blast-radius"][0]
    assert reach.affected == (ids[4],)
    assert reach.evidence["reads_devices"] == 7
    assert by_check["zombies"][0].affected == (ids[0],)
    assert by_check["credential-shared"][0].evidence["kind"] == "clone_suspected"
    assert {f.affected for f in by_check["rollout-lagging"]} == {(ids[2],), (ids[3],)}
    assert by_check["withdrawn-release"][0].affected == (ids[1],)


def test_only_the_named_checks_run(bad: AuditFleet) -> None:
    report = svc.run_audit(bad.db, bad.settings, bad.clock, actor=ACTOR, record=False,
                           checks=["zombies", "dormant-devices"])
    assert [r.check_id for r in report.runs] == ["zombies", "dormant-devices"]
    assert _checks(report) == {"zombies", "dormant-devices"}
    skipped = svc.run_audit(bad.db, bad.settings, bad.clock, actor=ACTOR, record=False,
                            skip=["event-log-integrity", "zombies"])
    assert _checks(skipped) == EXPECTED_BAD - {"event-log-integrity", "zombies"}
    with pytest.raises(InputError) as exc:
        svc.run_audit(bad.db, bad.settings, bad.clock, actor=ACTOR, checks=["nope"])
    assert exc.value.reason == "unknown_check"


def test_suppression_is_recorded_and_honoured(tmp_path: Path) -> None:
    fleet = bad_fleet(tmp_path)
    target = fleet.devices[1]
    row = svc.suppress(fleet.db, fleet.clock, "dormant-devices", target,
                       reason="on a shelf in the lab", actor="alice@cli")
    assert (row.actor, row.reason) == ("alice@cli", "on a shelf in the lab")
    with pytest.raises(ConflictError) as conflict:
        svc.suppress(fleet.db, fleet.clock, "dormant-devices", target, reason="again",
                     actor="alice@cli")
    assert conflict.value.reason == "suppression_exists"
    with pytest.raises(InputError) as bad_reason:
        svc.suppress(fleet.db, fleet.clock, "zombies", target, reason=" ", actor="a@cli")
    assert bad_reason.value.reason == "invalid_reason"
    svc.suppress(fleet.db, fleet.clock, "policy-misreadable", "*", reason="known", actor="a@cli")
    report = svc.run_audit(fleet.db, fleet.settings, fleet.clock, actor=ACTOR)
    dormant = next(f for f in report.findings if f.check_id == "dormant-devices")
    assert target not in dormant.affected
    assert dormant.evidence["suppressed"] == 1
    assert "policy-misreadable" not in _checks(report)
    with fleet.db.transaction() as tx:
        events = list(tx.iter_events(kind=svc.AUDIT_SUPPRESSED))
    assert [json.loads(e.data)["why"] for e in events] == ["on a shelf in the lab", "known"]
    assert events[0].actor == "alice@cli"
    assert events[0].device_id == target
    svc.unsuppress(fleet.db, fleet.clock, "dormant-devices", target, actor="alice@cli")
    with pytest.raises(NotFoundError):
        svc.unsuppress(fleet.db, fleet.clock, "dormant-devices", target, actor="alice@cli")
    again = svc.run_audit(fleet.db, fleet.settings, fleet.clock, actor=ACTOR, record=False)
    assert target in next(f for f in again.findings if f.check_id == "dormant-devices").affected


def test_mitigations_are_explicit_reversible_and_evented(tmp_path: Path) -> None:
    fleet = bad_fleet(tmp_path)
    spy = fleet.devices[4]
    done = svc.mitigate(fleet.db, fleet.clock, "blast-radius", spy, action="quarantine",
                        actor="alice@cli", note="reads everyone's telemetry")
    assert done.detail["state"] == "quarantined"
    with fleet.db.transaction() as tx:
        assert tx.get_device(spy).state is DeviceState.QUARANTINED
        mitigated = list(tx.iter_events(kind=svc.AUDIT_MITIGATED))
        quarantined = list(tx.iter_events(kind="device.quarantined"))
    assert json.loads(mitigated[0].data)["action"] == "quarantine"
    assert quarantined[0].reason == "audit"
    # the blast radius is gone once it is quarantined
    report = svc.run_audit(fleet.db, fleet.settings, fleet.clock, actor=ACTOR, record=False)
    assert "blast-radius" not in _checks(report)
    rotated = svc.mitigate(fleet.db, fleet.clock, "credential-age", fleet.devices[5],
                           action="rotate", actor="alice@cli")
    with fleet.db.transaction() as tx:
        assert tx.rotation_requested(fleet.devices[5]) is not None
        assert list(tx.iter_events(kind="rotation.requested"))
    assert str(rotated.detail["campaign"]).startswith("audit-")
    note = svc.mitigate(fleet.db, fleet.clock, "weak-ca-key", "issuing-x", action="notify",
                        actor="alice@cli")
    assert note.event_seq > rotated.event_seq
    for action, target, reason in (("quarantine", "issuing-x", "invalid_target"),
                                   ("erase", spy, "invalid_action")):
        with pytest.raises(InputError) as exc:
            svc.mitigate(fleet.db, fleet.clock, "zombies", target, action=action, actor="a@cli")
        assert exc.value.reason == reason
    with pytest.raises(ConflictError):  # already quarantined: the lifecycle refuses
        svc.mitigate(fleet.db, fleet.clock, "blast-radius", spy, action="quarantine",
                     actor="alice@cli")


def test_broken_event_log_is_critical(tmp_path: Path) -> None:
    fleet = clean_fleet(tmp_path)
    with fleet.db.transaction() as tx:
        tx._exec(text("UPDATE events SET actor = 'mallory@x' WHERE seq = 3"))
    report = svc.run_audit(fleet.db, fleet.settings, fleet.clock, actor=ACTOR, record=False)
    (finding,) = report.findings
    assert (finding.check_id, finding.severity.value) == ("event-log-integrity", "critical")
    assert "event:3" in finding.affected


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, bytes] = {}
        self.findings: list[str] = []
        self.text: list[str] = []
        self._figure: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure":
            self._figure = a.get("data-chart")
        if tag == "img" and self._figure and (a.get("src") or "").startswith(
                "data:image/png;base64,"):
            self.charts[self._figure] = base64.b64decode((a["src"] or "").split(",", 1)[1])
        if tag == "tr" and a.get("data-check"):
            self.findings.append(a["data-check"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _cli(fleet: AuditFleet, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IOTRUST_DATA=str(fleet.settings.data_dir),
               IOTRUST_DATABASE_URL=fleet.settings.database_url)
    proc = subprocess.run([sys.executable, "-m", "iotrust.cli.main", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_cli_json_html_suppress_and_mitigate(bad: AuditFleet, tmp_path: Path) -> None:
    page = tmp_path / "audit.html"
    proc = _cli(bad, "audit", "--json", "--html", str(page))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["schema"] == "iotrust.audit/v1"
    assert {f["check_id"] for f in report["findings"]} >= EXPECTED_BAD - {"revoked-still-trusted"}
    assert len(report["checks"]) == len(ALL_CHECKS)
    parsed = _Page()
    parsed.feed(page.read_text(encoding="utf-8"))
    assert set(parsed.charts) == set(audit_report.CHART_IDS)
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
               for png in parsed.charts.values())
    assert set(parsed.findings) == {f["check_id"] for f in report["findings"]}
    body = " ".join(parsed.text)
    assert "tiny-mcu" in body  # the hardware assessment of the registered model
    target = bad.devices[6]
    proc = _cli(bad, "audit", "suppress", "dormant-devices", target, "--reason", "spare unit",
                "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["reason"] == "spare unit"
    proc = _cli(bad, "audit", "mitigate", "zombies", bad.devices[0], "--action", "wipe")
    assert proc.returncode == 65, proc.stderr
    svc.unsuppress(bad.db, bad.clock, "dormant-devices", target, actor=ACTOR)


def test_report_escapes_everything(bad: AuditFleet) -> None:
    report = svc.run_audit(bad.db, bad.settings, bad.clock, actor=ACTOR, record=False)
    evil = Finding("zombies", "high", "<script>alert(1)</script>", ("<img src=x>",),
                   {"<b>": "</td><script>"}, "<a href='javascript:x'>fix</a>")
    report.findings.insert(0, evil)
    html = audit_report.render(audit_report.gather(bad.db, bad.settings, bad.clock, report))
    assert "<script>" not in html
    assert "<img src=x>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_history_feeds_the_severity_chart(tmp_path: Path) -> None:
    fleet = clean_fleet(tmp_path)
    for _ in range(3):
        svc.run_audit(fleet.db, fleet.settings, fleet.clock, actor=ACTOR)
        fleet.clock.advance(86_400)
    history = svc.audit_history(fleet.db)
    assert len(history) == 3
    assert history[0][1]["by_severity"]["critical"] == 0
    assert history[0][0] < history[-1][0]


def test_api_audit_and_suppressions(bad: AuditFleet) -> None:
    toks = {role: tokens.create_token(bad.db, bad.clock, name=f"audit-{role}", role=role,
                                      actor=ACTOR)[1] for role in ("auditor", "operator")}
    client = TestClient(create_app(bad.settings, clock=bad.clock, secrets=bad.secrets,
                                   db=bad.db))
    auditor = {"Authorization": f"Bearer {toks['auditor']}"}
    operator = {"Authorization": f"Bearer {toks['operator']}"}
    assert client.get("/v1/audit").status_code == 401
    got = client.get("/v1/audit", params={"check": ["zombies"]}, headers=auditor)
    assert got.status_code == 200, got.text
    assert {f["check_id"] for f in got.json()["findings"]} == {"zombies"}
    body = {"check_id": "zombies", "target": bad.devices[0], "reason": "lab unit", "days": 7}
    assert client.post("/v1/audit/suppressions", json=body, headers=auditor).status_code == 403
    made = client.post("/v1/audit/suppressions", json=body, headers=operator)
    assert made.status_code == 201, made.text
    assert made.json()["actor"] == "audit-operator@api"
    assert client.post("/v1/audit/suppressions", json=body, headers=operator).status_code == 409
    listed = client.get("/v1/audit/suppressions", headers=auditor).json()
    assert [s["target"] for s in listed] == [bad.devices[0]]
    after = client.get("/v1/audit", params={"check": ["zombies"]}, headers=auditor).json()
    assert after["findings"] == []
    svc.unsuppress(bad.db, bad.clock, "zombies", bad.devices[0], actor=ACTOR)


@pytest.mark.postgres
def test_postgres_gives_the_same_findings(tmp_path: Path, bad: AuditFleet) -> None:
    with fresh_postgres_database() as url:
        fleet = bad_fleet(tmp_path / "pg", url)
        try:
            pg = svc.run_audit(fleet.db, fleet.settings, fleet.clock, actor=ACTOR)
            lite = svc.run_audit(bad.db, bad.settings, bad.clock, actor=ACTOR, record=False)
            assert _checks(pg) == EXPECTED_BAD
            assert ({(f.check_id, f.severity, f.evidence.get("count")) for f in pg.findings}
                    == {(f.check_id, f.severity, f.evidence.get("count"))
                        for f in lite.findings})
            svc.suppress(fleet.db, fleet.clock, "dormant-devices", fleet.devices[1],
                         reason="lab", actor=ACTOR)
            again = svc.run_audit(fleet.db, fleet.settings, fleet.clock, actor=ACTOR)
            dormant = next(f for f in again.findings if f.check_id == "dormant-devices")
            assert fleet.devices[1] not in dormant.affected
        finally:
            fleet.db.close()


@pytest.mark.postgres
def test_postgres_clean_fleet_and_mitigation(tmp_path: Path) -> None:
    with fresh_postgres_database() as url:
        fleet = clean_fleet(tmp_path, url)
        try:
            assert svc.run_audit(fleet.db, fleet.settings, fleet.clock,
                                 actor=ACTOR).findings == []
            svc.mitigate(fleet.db, fleet.clock, "dormant-devices", fleet.devices[0],
                         action="quarantine", actor=ACTOR)
            fleet.clock.advance(timedelta(days=1).total_seconds())
            anchor(fleet)
            report = svc.run_audit(fleet.db, fleet.settings, fleet.clock, actor=ACTOR)
            assert report.device_states["quarantined"] == 1
            assert report.findings == []
        finally:
            fleet.db.close()
