"""The ``config-copied`` audit check on a real registry and a real TUF image repository.

A fleet whose device documents were provisioned by copying one device's configuration trips it;
the same settings published once as a group document (shared by design) and distinct device
documents do not. A document file altered on disk is reported, never compared."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.audit_fleet import PASSPHRASE, AuditFleet, clean_fleet

from iotrust.core.audit import Finding, Severity
from iotrust.services import audit as svc
from iotrust.services import updates
from iotrust.services.domain import KeyBackend

ACTOR = "tests@audit"
CHECK = "config-copied"
PROVISIONED = {"device_token": "tok-7Hq2", "mqtt": {"client_id": "pump"}, "interval_s": 60}


def _fleet(base: Path) -> AuditFleet:
    fleet = clean_fleet(base)
    updates.init_updates(fleet.settings, KeyBackend("file", passphrase=PASSPHRASE), fleet.clock)
    return fleet


def _publish(fleet: AuditFleet, scope: str, settings: dict[str, object], version: int = 1) -> str:
    image = updates.open_image(fleet.settings, fleet.secrets)
    return updates.publish_config(image, settings, scope=scope, version=version,
                                  now=fleet.clock.now()).path


def _run(fleet: AuditFleet) -> list[Finding]:
    return svc.run_audit(fleet.db, fleet.settings, fleet.clock, actor=ACTOR, checks=[CHECK],
                         record=False).findings


def test_copied_device_configuration_is_found(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    a, b, c, d = fleet.devices
    paths = [_publish(fleet, dev, PROVISIONED) for dev in (a, b, c)]
    _publish(fleet, d, {**PROVISIONED, "device_token": "tok-other"})
    # a later, distinct version of c is what counts for c
    _publish(fleet, c, {**PROVISIONED, "device_token": "tok-c2"}, version=2)
    found = _run(fleet)
    assert len(found) == 1
    finding = found[0]
    assert finding.check_id == CHECK
    assert finding.severity is Severity.CRITICAL
    assert finding.affected == tuple(sorted((a, b)))
    assert sorted(finding.evidence["targets"]) == sorted(paths[:2])
    assert finding.evidence["secret_like_fields"] == ["device_token"]
    assert "tok-7Hq2" not in json.dumps(finding.as_dict())


def test_shared_group_configuration_and_distinct_documents_pass(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    assert _run(fleet) == []  # no configuration published yet
    _publish(fleet, "groups/pumps", PROVISIONED)
    _publish(fleet, "groups/valves", PROVISIONED)
    for i, dev in enumerate(fleet.devices):
        _publish(fleet, dev, {**PROVISIONED, "device_token": f"tok-{i}"})
    assert _run(fleet) == []


def test_altered_document_file_is_reported(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    a, b = fleet.devices[:2]
    _publish(fleet, a, {"interval_s": 5})
    _publish(fleet, b, {"interval_s": 6})
    image = updates.open_image(fleet.settings, fleet.secrets)
    target = image.targets_of("config")[f"config/{b}/config-v1.json"]
    file = image.targets_dir / "config" / b / f"{target.hashes['sha256']}.config-v1.json"
    file.write_bytes(json.dumps({"scope": b, "version": 1,
                                 "settings": {"interval_s": 5}}).encode())
    found = _run(fleet)
    assert [(f.severity, f.affected) for f in found] == [(Severity.MEDIUM, (b,))]
    assert "signed hash" in json.dumps(found[0].evidence["problems"])
