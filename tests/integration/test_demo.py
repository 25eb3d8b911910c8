"""``iotrust demo --fast`` end to end: the real command, its real processes, its outcomes.

The demo runs as a subprocess (``python -m iotrust.cli.main --json demo --fast --dir ...``) with
a real Mosquitto, a real ``iotrust serve`` and real ``iotrust-agent`` processes. The test reads
the machine-readable outcome (never the narration) and checks the registry the demo left behind:
every device but the retired one is ACTIVE, the refusals carry their reasons, telemetry was
accepted, the rollout aborted before its later wave, the quarantine took under a second, the
rotation happened, the retired device was recorded as a zombie, and the audit ran. The demo
registers its product's device model before the vouchers arrive, so every device gets the model,
its credential lifetime and key-storage ceiling, and the audit speaks about that hardware.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.integration.mqtt import require_mosquitto

from iotrust.adapters.sql.store import Database
from iotrust.core import events as ev
from iotrust.core.lifecycle import CredentialState, DeviceState
from iotrust.services import zombies

pytestmark = pytest.mark.mqtt

FAST_DEVICES = 5
MODEL = "acme-sensor-s2"
SECURE_ELEMENT_DAYS = 90


def test_demo_fast_tells_the_whole_story(tmp_path: Path) -> None:  # noqa: PLR0915 - one story
    require_mosquitto()
    folder = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items()
           if k not in {"IOTRUST_DATA", "IOTRUST_DATABASE_URL", "IOTRUST_PASSPHRASE",
                        "IOTRUST_PASSPHRASE_FILE"}}
    proc = subprocess.run([sys.executable, "-m", "iotrust.cli.main", "--json", "demo", "--fast",
                           "--dir", str(folder)], capture_output=True, text=True, timeout=240,
                          check=False, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    outcome = json.loads(proc.stdout)
    steps = outcome["steps"]
    assert outcome["ok"] is True
    assert outcome["devices"] == FAST_DEVICES
    assert outcome["dashboard"].startswith("http://127.0.0.1:")
    assert outcome["dashboard"].endswith("/ui/")
    assert all(step["ok"] for step in steps.values()), steps

    mint = steps["mint"]
    assert mint["vouchers_imported"] == FAST_DEVICES
    assert mint["model"] == MODEL
    assert mint["devices_with_model"] == FAST_DEVICES
    assert mint["model_worst"] == "degraded"  # the secure-element MCU: no rollback counter
    assert mint["credential_lifetime_days"] == SECURE_ELEMENT_DAYS
    refusals = steps["refusals"]
    assert {"nonce_replayed", "clone_suspected"} <= set(refusals["reasons"])
    assert refusals["rogue"] in {"unknown_device", "chain_invalid"}
    assert steps["telemetry"]["accepted"] > 0
    assert steps["telemetry"]["refused"] == {}
    rollout = steps["rollout"]
    assert rollout["status"] == "aborted"
    assert rollout["reason"] == "failure_threshold"
    assert rollout["later_wave"] >= 1
    assert rollout["later_offered"] == 0
    quarantine = steps["quarantine"]
    assert quarantine["quarantine_ms"] < 1000
    assert quarantine["peer_messages_after"] > 0
    assert steps["rotation"]["new_serial"] != steps["rotation"]["old_serial"]
    retired = steps["retirement"]
    assert retired["device"] == quarantine["device"]  # the compromised device ends retired
    assert retired["zombie_contacts"] >= 1
    assert retired["hello_reason"] == "retired"
    assert retired["mqtt_refused"] is True
    audit = steps["audit"]
    assert isinstance(audit["findings"], list)
    assert audit["checks"] > 0
    assert audit["device_states"] == {"active": FAST_DEVICES - 1, "retired": 1}
    # the agents claim file keys; the secure-element profile can back that claim, so it stands
    assert audit["key_storage"] == {"file": FAST_DEVICES}
    hardware = [f for f in audit["findings"] if f["check"] == "hardware-lifetime"]
    assert [(f["severity"], f["affected"]) for f in hardware] == [("medium", 1)]
    assert MODEL in hardware[0]["title"]
    assert "weak-key-storage" not in {f["check"] for f in audit["findings"]}  # own topics only
    # ... but the hardware could have kept those keys in its secure element
    underused = [f for f in audit["findings"] if f["check"] == "key-storage-underused"]
    assert [f["severity"] for f in underused] == ["medium"]
    assert f"model {MODEL}: {FAST_DEVICES - 1} device(s) keep keys in file" in underused[0]["title"]

    # the registry the demo left behind says the same
    db = Database.open(f"sqlite:///{folder / 'data' / 'iotrust.db'}")
    try:
        with db.transaction(readonly=True) as tx:
            states = [d.state for d in tx.list_devices(limit=100)]
            models = {d.model for d in tx.list_devices(limit=100)}
            lifetime = tx.get_model(MODEL).credential_lifetime_s
            kinds = [e.kind for e in tx.iter_events()]
            refused = {e.reason for e in tx.iter_events(kind=ev.ONBOARDING_REFUSED)}
            rotated = {c.serial_number: c for c in
                       tx.list_credentials(device_id=steps["rotation"]["device"])}
        assert states.count(DeviceState.ACTIVE) == FAST_DEVICES - 1
        assert states.count(DeviceState.RETIRED) == 1
        assert models == {MODEL}
        assert lifetime == SECURE_ELEMENT_DAYS * 86_400
        assert {"nonce_replayed", "clone_suspected", refusals["rogue"], "retired"} <= refused
        assert "rollout.aborted" in kinds
        assert "audit.completed" in kinds
        assert rotated[steps["rotation"]["old_serial"]].state is CredentialState.REVOKED
        assert rotated[steps["rotation"]["new_serial"]].state is CredentialState.ACTIVE
        assert any(z.device_id == retired["device"] for z in zombies.list_zombies(db))
    finally:
        db.close()
