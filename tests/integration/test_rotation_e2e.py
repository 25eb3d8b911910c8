"""End to end: the real ``iotrust-agent rotate`` against the real ``iotrust serve`` and Mosquitto.

A device onboards with the real agent, connects to the broker with its operational credential
and publishes numbered QoS 1 messages from a thread. Meanwhile ``iotrust-agent rotate --force``
renews the credential with a new key: the server revokes the old credential at confirmation,
installs the CRL in the broker and disconnects the old session; the device reconnects once with
the new files. Every message arrives (no loss), with at most one reconnect. Afterwards the old
credential is refused by the broker (CRL) and by the API (a rotation with a copy of the old state
exits 77 ``credential_revoked`` and is recorded as a zombie contact).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.integration.fleet import Maker, build_fleet
from tests.integration.mqtt import INGEST, Client, Identity, require_mosquitto, service_identity
from tests.integration.server import running_server

from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.adapters.mqtt.mosquitto import BrokerSettings, MosquittoProcess, free_port
from iotrust.core import pki
from iotrust.core.lifecycle import CredentialState
from iotrust.errors import IotrustError
from iotrust.ports import SystemClock, TopicAccess
from iotrust.services import broker as broker_svc
from iotrust.services import zombies

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
AGENT = [sys.executable, "-c", "from iotrust.agent.cli import main; main()"]
MESSAGES = 60
CLOCK = SystemClock()


def identity_of(state_dir: Path, device_id: str) -> Identity:
    """The state's current key and certificate, once they match (the agent may be mid-switch)."""
    for _ in range(100):
        try:
            ref = json.loads((state_dir / "state.json").read_text())["operational_key_ref"]
            key = state_dir / Path(ref.split(":", 1)[1]).name  # the folder may be a copy
            cert = state_dir / "operational.crt.pem"
            if pki.spki_sha256(DeviceFileKey.load(key).public_key) == pki.spki_sha256(
                    pki.load_certificate(cert.read_bytes()).public_key()):
                return Identity(device_id, cert, key)
        except (OSError, ValueError, IotrustError):
            pass
        time.sleep(0.05)
    raise AssertionError("the state's key and certificate never matched")


def test_agent_rotates_with_overlap_without_losing_a_message(tmp_path: Path) -> None:  # noqa: PLR0915 - one scenario
    require_mosquitto()
    fleet = build_fleet(tmp_path, makers=(Maker("widgetco", count=1),))
    serial = fleet.serials("widgetco")[0]
    db = fleet.open_db()
    try:
        ingest = service_identity(fleet, db, CLOCK, INGEST, tmp_path / "clients")
        broker = broker_svc.configure(
            db, fleet.settings, fleet.secrets, CLOCK,
            broker_settings=BrokerSettings(port=free_port(), services=(
                TopicAccess(INGEST, (("subscribe", "devices/#"),)),)))
    finally:
        db.close()
    state_dir = tmp_path / "state"
    with MosquittoProcess(broker) as proc, running_server(fleet.server_env(),
                                                          log_dir=tmp_path) as server:
        onboarded = subprocess.run(
            [*AGENT, "onboard", "--device", str(fleet.device(serial).folder), "--state",
             str(state_dir), "--server", server.url, "--insecure-first-contact", "--json"],
            capture_output=True, text=True, timeout=120, check=False)
        assert onboarded.returncode == 0, onboarded.stderr
        device_id = json.loads(onboarded.stdout)["device_id"]
        db = fleet.open_db()
        try:  # onboarding does not touch the broker: give the now ACTIVE device its rules
            broker_svc.sync(db, broker)
        finally:
            db.close()
        old_state = tmp_path / "old-state"
        shutil.copytree(state_dir, old_state)
        record = json.loads((old_state / "state.json").read_text())
        record["operational_key_ref"] = f"devfile:{old_state / 'operational.key.pem'}"
        (old_state / "state.json").write_text(json.dumps(record))
        old_serial = f"{pki.load_certificate((state_dir / 'operational.crt.pem').read_bytes()).serial_number:x}"  # noqa: E501

        sub = Client(broker.settings.port, broker.layout.ca, ingest)
        assert sub.connect()
        assert sub.subscribe("devices/#")
        connections: list[Client] = []
        failures: list[str] = []
        done = threading.Event()

        trace: dict[str, object] = {}

        def publisher() -> None:
            seq = 0
            while seq < MESSAGES:
                trace.update(seq=seq, connections=len(connections))
                current = connections[-1] if connections else None
                if current is None or current.disconnects or not current.connected:
                    if current is not None:
                        current.close()
                    fresh = Client(broker.settings.port, broker.layout.ca,
                                   identity_of(state_dir, device_id))
                    connections.append(fresh)
                    if not fresh.connect():
                        failures.append(f"connect failed before message {seq}")
                        time.sleep(0.2)
                    continue
                rc = current.publish(f"devices/{device_id}/telemetry", str(seq).encode(),
                                     timeout=2.0)
                trace["rc"] = rc
                if rc in {0, 0x10}:
                    seq += 1
                    time.sleep(0.03)
                elif rc is None and not current.disconnects:
                    current.disconnects.append("publish failed")  # resend on a new connection
            done.set()

        thread = threading.Thread(target=publisher, daemon=True)
        thread.start()
        time.sleep(0.5)
        rotated = subprocess.run([*AGENT, "rotate", "--state", str(state_dir), "--server",
                                  server.url, "--force", "--json"], capture_output=True,
                                 text=True, timeout=120, check=False)
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        outcome = json.loads(rotated.stdout)
        assert outcome["rotated"] is True
        assert outcome["credential_serial"] != old_serial
        if not done.wait(60):
            import traceback  # noqa: PLC0415
            frame = sys._current_frames().get(thread.ident or 0)
            stack = "".join(traceback.format_stack(frame)) if frame else ""
            pytest.fail(f"publisher stuck: {trace} {failures}\n{stack}")
        thread.join(5)
        assert sub.wait(lambda: {int(p) for _, p in sub.messages} >= set(range(MESSAGES)), 10)
        assert {int(p) for _, p in sub.messages} == set(range(MESSAGES))  # nothing lost
        assert failures == []
        assert len(connections) <= 2  # the first connection and at most one reconnect
        for c in [*connections, sub]:
            c.close()

        # the old credential is refused by the broker ...
        old_client = Client(broker.settings.port, broker.layout.ca,
                            identity_of(old_state, device_id))
        assert not old_client.connect()
        old_client.close()
        # ... and by the API (recorded as a zombie contact)
        stale = subprocess.run([*AGENT, "rotate", "--state", str(old_state), "--server",
                                server.url, "--force"], capture_output=True, text=True,
                               timeout=120, check=False)
        assert stale.returncode == 77, stale.stdout + stale.stderr
        assert "credential_revoked" in stale.stderr
        assert "Traceback" not in stale.stderr
        del proc
    db = fleet.open_db()
    try:
        with db.transaction() as tx:
            states = {c.serial_number: (c.state, c.revocation_reason)
                      for c in tx.list_credentials(device_id=device_id)}
        assert states[old_serial] == (CredentialState.REVOKED, "superseded")
        assert states[outcome["credential_serial"]][0] is CredentialState.ACTIVE
        found = {z.identity: z for z in zombies.list_zombies(db)}
        assert found[device_id].channels == {"rotation": 1}
    finally:
        db.close()
