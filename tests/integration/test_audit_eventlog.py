"""The event-log check verifies incrementally from the checkpoint the last recorded audit left,
on a real registry: a tampered record after the checkpoint is still found (the fast path gives
up and the full verification classifies it); one before it is found by ``--full`` and by the
periodic full run; a consistent rewrite of the chain is caught by the checkpoint itself; a
forged checkpoint is not trusted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from tests.integration.audit_fleet import AuditFleet, clean_fleet
from tests.integration.pg import fresh_postgres_database

from iotrust.api.app import create_app
from iotrust.core.audit import Finding
from iotrust.core.audit_eventlog import CHECKPOINT_KEY
from iotrust.core.events import EventDraft, chain_next
from iotrust.core.records import EventHead, EventRow
from iotrust.services import audit as svc
from iotrust.services import audit_report, eventlog, tokens

ACTOR = "tests@audit"
CHECK = "event-log-integrity"


def _audit(fleet: AuditFleet, *, full: bool = False,
           record: bool = True) -> tuple[svc.AuditReport, list[Finding]]:
    report = svc.run_audit(fleet.db, fleet.settings, fleet.clock, actor=ACTOR, checks=[CHECK],
                           record=record, full_event_log=full)
    return report, [f for f in report.findings if f.severity.value == "critical"]


def _append(fleet: AuditFleet, n: int) -> None:
    with fleet.db.transaction() as tx:
        for i in range(n):
            eventlog.record(tx, fleet.clock, "test.appended", actor=ACTOR, data={"i": i})


def _next(head: EventHead | None, *, draft: EventDraft, at: datetime) -> EventRow:
    return chain_next(head, draft, at)


def _head(fleet: AuditFleet) -> int:
    with fleet.db.transaction(readonly=True) as tx:
        head = tx.event_head()
    assert head is not None
    return head.seq


def test_second_audit_verifies_only_what_was_appended(tmp_path: Path) -> None:
    fleet = clean_fleet(tmp_path)
    first, critical = _audit(fleet)
    assert critical == []
    assert first.event_log is not None
    assert first.event_log["mode"] == "full"
    verified = first.event_log["head_seq"]
    assert first.event_log["records"] == verified
    with fleet.db.transaction(readonly=True) as tx:
        (carrier,) = list(tx.iter_events(kind=svc.AUDIT_COMPLETED))
    assert json.loads(carrier.data)[CHECKPOINT_KEY].startswith(f"{verified}:")
    _append(fleet, 25)
    second, critical = _audit(fleet)
    assert critical == []
    assert second.event_log is not None
    assert second.event_log["mode"] == "incremental"
    assert second.event_log["since_seq"] == verified
    # the checkpointed record, the first audit's own event and the 25 appended ones
    assert second.event_log["records"] == 27
    assert second.event_log["full_at"] == first.event_log["full_at"]
    third, _ = _audit(fleet, full=True)
    assert third.event_log is not None
    assert third.event_log["mode"] == "full"
    assert third.event_log["records"] == _head(fleet) - 1


def test_tampering_after_the_checkpoint_is_found(tmp_path: Path) -> None:
    fleet = clean_fleet(tmp_path)
    _audit(fleet)
    _append(fleet, 5)
    target = _head(fleet) - 2
    with fleet.db.transaction() as tx:
        tx._exec(text(f"UPDATE events SET actor = 'mallory@x' WHERE seq = {target}"))
    report, critical = _audit(fleet)
    assert report.event_log is not None
    assert report.event_log["mode"] == "full"  # the fast path gave up
    assert [f.affected for f in critical] == [(f"event:{target}",)]
    # a broken chain leaves no new checkpoint: the next audit finds the break again
    _, again = _audit(fleet)
    assert [f.affected for f in again] == [(f"event:{target}",)]


def test_tampering_before_the_checkpoint_needs_a_full_run(tmp_path: Path) -> None:
    fleet = clean_fleet(tmp_path)
    _audit(fleet)
    with fleet.db.transaction() as tx:
        tx._exec(text("UPDATE events SET actor = 'mallory@x' WHERE seq = 3"))
    report, critical = _audit(fleet, record=False)
    assert report.event_log is not None
    assert report.event_log["mode"] == "incremental"
    assert critical == []  # the documented limit of an incremental run
    _, critical = _audit(fleet, full=True, record=False)
    assert [f.affected for f in critical] == [("event:3",)]
    fleet.clock.advance(8 * 86400)  # the last full run is too old: full again
    report, critical = _audit(fleet, record=False)
    assert report.event_log is not None
    assert report.event_log["mode"] == "full"
    assert [f.affected for f in critical] == [("event:3",)]


def test_a_consistent_rewrite_is_caught_by_the_checkpoint(tmp_path: Path) -> None:
    fleet = clean_fleet(tmp_path)
    fleet.settings.anchor_file.unlink()  # no exported anchor: only the checkpoint remembers
    _audit(fleet)
    with fleet.db.transaction() as tx:
        rows = list(tx.iter_events())
        tx._exec(text("DELETE FROM events"))
    rewritten = None
    with fleet.db.transaction() as tx:
        tx._exec(text("UPDATE event_head SET seq = 0, hash = ''"))
        for row in rows:
            data = json.loads(row.data)
            if row.seq == 2:
                data["rewritten"] = True
            draft = EventDraft(kind=row.kind, actor=row.actor, device_id=row.device_id,
                               reason=row.reason, data=data)
            rewritten = tx.append_event(partial(_next, draft=draft, at=row.at))
    assert rewritten is not None
    report, critical = _audit(fleet, record=False)
    assert report.event_log is not None
    assert report.event_log["mode"] == "full"
    (finding,) = critical
    assert "anchor_mismatch" in finding.evidence["kinds"]
    assert "earlier audit" in json.dumps(finding.evidence["first"])


def test_a_forged_checkpoint_is_not_trusted(tmp_path: Path) -> None:
    fleet = clean_fleet(tmp_path)
    _audit(fleet)
    with fleet.db.transaction() as tx:
        tx._exec(text("UPDATE events SET actor = 'mallory@x' WHERE seq = 3"))
        (carrier,) = list(tx.iter_events(kind=svc.AUDIT_COMPLETED))
        data = json.loads(carrier.data)
        data[CHECKPOINT_KEY] = f"{carrier.seq - 1}:{'a' * 64}"
        tx._exec(text("UPDATE events SET data = :d WHERE seq = :s"),
                 {"d": json.dumps(data), "s": carrier.seq})
    report, critical = _audit(fleet, record=False)
    assert report.event_log is not None
    assert report.event_log["mode"] == "full"
    assert {a for f in critical for a in f.affected} == {"event:3", f"event:{carrier.seq}"}


def test_cli_full_and_the_report_say_how_the_log_was_verified(tmp_path: Path) -> None:
    fleet = clean_fleet(tmp_path)
    env = dict(os.environ, IOTRUST_DATA=str(fleet.settings.data_dir),
               IOTRUST_DATABASE_URL=fleet.settings.database_url)

    def cli(*args: str) -> dict[str, Any]:
        proc = subprocess.run([sys.executable, "-m", "iotrust.cli.main", "audit", "--json",
                               "--check", CHECK, *args], env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        report: dict[str, Any] = json.loads(proc.stdout)
        return report

    assert cli()["event_log"]["mode"] == "full"
    assert cli()["event_log"]["mode"] == "incremental"
    assert cli("--full")["event_log"]["mode"] == "full"
    report, _ = _audit(fleet)
    assert report.event_log is not None
    assert report.event_log["mode"] == "incremental"
    page = audit_report.build_html(fleet.db, fleet.settings, fleet.clock, report)
    assert 'id="event-log-verification"' in page
    assert f"from the checkpoint at record {report.event_log['since_seq']}" in page


def test_api_full_verifies_the_whole_chain(tmp_path: Path) -> None:
    fleet = clean_fleet(tmp_path)
    _audit(fleet)  # a recorded audit leaves the checkpoint the incremental run starts from
    token = tokens.create_token(fleet.db, fleet.clock, name="audit-api", role="auditor",
                                actor=ACTOR)[1]
    client = TestClient(create_app(fleet.settings, clock=fleet.clock, secrets=fleet.secrets,
                                   db=fleet.db))
    auth = {"Authorization": f"Bearer {token}"}

    def mode(**params: str) -> str:
        got = client.get("/v1/audit", params={"check": CHECK, **params}, headers=auth)
        assert got.status_code == 200, got.text
        return str(got.json()["event_log"]["mode"])

    assert mode() == "incremental"
    assert mode(full="true") == "full"
    assert mode(full="false") == "incremental"
    bad = client.get("/v1/audit", params={"full": "maybe"}, headers=auth)
    assert bad.status_code == 422
    assert {"error", "reason", "detail"} <= set(bad.json())


@pytest.mark.postgres
def test_postgres_incremental_and_tampering(tmp_path: Path) -> None:
    with fresh_postgres_database() as url:
        fleet = clean_fleet(tmp_path / "pg", url)
        try:
            first, critical = _audit(fleet)
            assert critical == []
            assert first.event_log is not None
            _append(fleet, 3)
            second, critical = _audit(fleet)
            assert critical == []
            assert second.event_log is not None
            assert second.event_log["mode"] == "incremental"
            assert second.event_log["since_seq"] == first.event_log["head_seq"]
            target = _head(fleet) - 1
            with fleet.db.transaction() as tx:
                tx._exec(text(f"UPDATE events SET actor = 'mallory@x' WHERE seq = {target}"))
            _, critical = _audit(fleet, record=False)
            assert [f.affected for f in critical] == [(f"event:{target}",)]
        finally:
            fleet.db.close()
