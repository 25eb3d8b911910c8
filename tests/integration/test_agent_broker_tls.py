"""A broker that refuses the device's certificate at the TLS handshake, on a real Mosquitto.

Mosquitto checks client certificates against its CA and CRL. With TLS 1.3 it rejects one only
after the client's side of the handshake has completed, with an alert (``certificate_revoked``,
``unknown_ca``) that reaches the client on its network thread; no CONNACK ever comes. The MQTT
session reports that as the refusal it is — ``broker_refused_tls``, at once — instead of waiting
out its timeout and calling it ``broker_timeout``; the agent prints it and exits 77 like any
other refusal.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.mqtt import Identity, Testbed, build_testbed, foreign_identity
from tests.integration.test_agent_e2e import AGENT
from tests.integration.test_ingest_mqtt import agent_state

from iotrust.adapters.mqtt.client import MqttEndpoint, MqttSession
from iotrust.core.lifecycle import RetirementReason
from iotrust.errors import TrustError
from iotrust.services import broker as broker_svc

pytestmark = pytest.mark.mqtt


@pytest.fixture(scope="module")
def tb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    bed = build_testbed(tmp_path_factory.mktemp("broker-tls"), devices=2)
    with bed.running() as broker:
        db = bed.db()
        try:  # revoked: its certificate is on the CRL the broker enforces
            broker_svc.retire(db, bed.settings, bed.fleet.secrets, bed.clock,
                              bed.devices[0].name, broker=broker,
                              reason=RetirementReason.COMPROMISED, actor="tests@tls")
        finally:
            db.close()
        yield bed


def _session(tb: Testbed, ident: Identity) -> MqttSession:
    assert tb.broker is not None
    return MqttSession(MqttEndpoint(host="127.0.0.1", port=tb.port, ca_file=tb.broker.layout.ca,
                                    cert_file=ident.cert, key_file=ident.key),
                       client_id=ident.name, timeout=30.0)


def test_a_good_certificate_connects(tb: Testbed) -> None:
    with _session(tb, tb.devices[1]) as session:
        session.connect()
        assert session.connected


@pytest.mark.parametrize("who", ["revoked", "foreign"])
def test_a_refused_certificate_is_broker_refused_tls(tb: Testbed, tmp_path: Path,
                                                     who: str) -> None:
    ident, alert = ((tb.devices[0], "certificate_revoked") if who == "revoked"
                    else (foreign_identity(tmp_path, "x"), "unknown_ca"))
    with _session(tb, ident) as session, pytest.raises(TrustError) as info:
        session.connect()  # a 30 s timeout: broker_timeout would take all of it
    assert info.value.reason == "broker_refused_tls"
    assert f"alert: {alert}" in info.value.message


def test_the_agent_reports_a_revoked_certificate_as_refused(tb: Testbed, tmp_path: Path) -> None:
    state = agent_state(tb, tb.devices[0], tmp_path / "state")
    proc = subprocess.run([*AGENT, "run", "--state", str(state), "--count", "1",
                           "--interval", "0"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 77, (proc.stdout, proc.stderr)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("refused: broker_refused_tls: "), proc.stderr
    assert "certificate_revoked" in last
    assert "broker_timeout" not in proc.stderr
    assert "Traceback" not in proc.stderr
