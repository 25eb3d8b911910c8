"""Signed messages end to end through a real Mosquitto: agent, gateway, ingest (issue 5, §7).

A trust domain with ACTIVE devices (``tests/integration/mqtt.py``); agent state folders are
made for them the way onboarding would leave them. The ingest service runs in-process against
the real broker (its own ``ingest@iotrust`` certificate, ``read devices/#``), or as the real
``iotrust ingest run`` process; agents and the gateway run as real ``iotrust-agent`` processes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.integration.fleet import OWNER
from tests.integration.mqtt import MAKER, NOT_AUTHORIZED, Identity, Testbed, build_testbed

from iotrust.adapters.keys import DeviceFileKey, KeyRef
from iotrust.adapters.mqtt.client import MqttEndpoint
from iotrust.agent.state import AgentState, save_state
from iotrust.agent.telemetry import CounterFile, DeviceSealer, telemetry_topic
from iotrust.core import pki
from iotrust.core.envelope import kid_for_serial, seal
from iotrust.core.ingest import to_millis
from iotrust.core.lifecycle import CredentialState, DeviceState
from iotrust.services import broker as broker_svc
from iotrust.services import ingest as ingest_svc
from iotrust.services.gateways import authorize_gateway

pytestmark = pytest.mark.mqtt

AGENT = [sys.executable, "-c", "from iotrust.agent.cli import main; main()"]
IOTRUST = [sys.executable, "-m", "iotrust.cli.main"]


# -- helpers --------------------------------------------------------------------------------------


def active_testbed(base: Path, devices: int) -> Testbed:
    """The shared testbed, with its devices' credentials ACTIVE (as after onboarding confirm)."""
    tb = build_testbed(base, devices=devices)
    db = tb.db()
    try:
        with db.transaction() as tx:
            for ident in tb.devices:
                for cred in tx.list_credentials(ident.name, CredentialState.ISSUED):
                    tx.update_credential_state(cred.serial_number, CredentialState.ACTIVE,
                                               expected=CredentialState.ISSUED)
    finally:
        db.close()
    return tb


def agent_state(tb: Testbed, ident: Identity, folder: Path) -> Path:
    """The state folder onboarding would have left for ``ident`` (broker from the testbed)."""
    assert tb.broker is not None
    chain = tb.broker.layout.ca.read_bytes()
    now = datetime.now(UTC)
    state = AgentState(
        device_id=ident.name, serial=ident.name[4:20].upper(), manufacturer=MAKER, owner=OWNER,
        owner_spki_sha256=pki.spki_sha256(pki.load_certificates(chain)[-1].public_key()),
        server_id="tests", server_url="http://127.0.0.1:9", key_storage="file",
        operational_key_ref=str(KeyRef.device_file(ident.key)),
        certificate_pem=ident.cert.read_bytes(), ca_chain_pem=chain, broker_host="127.0.0.1",
        broker_port=tb.port, update_root=b"", policy=(), onboarded_at=now, confirm_by=now,
        confirmed=True)
    save_state(folder, state)
    return folder


def sealer_for(tb: Testbed, ident: Identity, folder: Path) -> DeviceSealer:
    """The test acting as the device itself (its own key and counter file)."""
    state_dir = agent_state(tb, ident, folder)
    from iotrust.agent.state import load_state  # noqa: PLC0415

    return DeviceSealer(load_state(state_dir), DeviceFileKey.load(ident.key),
                        CounterFile(state_dir))


def until(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


class RunningIngest:
    def __init__(self, service: ingest_svc.IngestService, thread: threading.Thread,
                 stop: threading.Event) -> None:
        self.service = service
        self.thread = thread
        self.stop = stop

    @property
    def stats(self) -> ingest_svc.IngestStats:
        return self.service.stats

    def handled(self) -> int:
        return self.stats.accepted + sum(self.stats.refused.values())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@contextlib.contextmanager
def ingesting(tb: Testbed, sinks: list[Any], **kwargs: Any) -> Iterator[RunningIngest]:
    db = tb.db()
    service = ingest_svc.IngestService(db, tb.clock, [ingest_svc.DatabaseSink(db), *sinks],
                                       **kwargs)
    assert tb.broker is not None
    endpoint = MqttEndpoint("127.0.0.1", tb.port, tb.broker.layout.ca, tb.ingest.cert,
                            tb.ingest.key)
    stop, ready, failed = threading.Event(), threading.Event(), []

    def work() -> None:
        try:
            ingest_svc.run(service, endpoint, stop, on_ready=ready.set,
                           client_id=f"ingest-{os.urandom(4).hex()}")
        except BaseException as exc:
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    assert ready.wait(15)
    assert not failed, failed
    running = RunningIngest(service, thread, stop)
    try:
        yield running
    finally:
        if thread.is_alive():
            running.close()
        db.close()
    assert not failed, failed


def events(tb: Testbed, kind: str) -> list[Any]:
    db = tb.db()
    try:
        with db.transaction(readonly=True) as tx:
            return list(tx.iter_events(kind=kind))
    finally:
        db.close()


def refusal_counts(tb: Testbed, kind: str = ingest_svc.INGEST_REFUSED) -> dict[tuple[str | None,
                                                                                    str], int]:
    counts: dict[tuple[str | None, str], int] = {}
    for e in events(tb, kind):
        key = (e.device_id, e.reason)
        counts[key] = counts.get(key, 0) + json.loads(e.data)["count"]
    return counts


def stored(tb: Testbed, device_id: str | None = None) -> int:
    db = tb.db()
    try:
        with db.transaction(readonly=True) as tx:
            return tx.count_ingested_messages(device_id)
    finally:
        db.close()


def agent(args: list[str], *, expect: int = 0, timeout: float = 60) -> str:
    proc = subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


# -- tests ----------------------------------------------------------------------------------------


def test_agent_run_publishes_signed_telemetry_that_ingest_accepts(tmp_path: Path) -> None:
    tb = active_testbed(tmp_path, devices=1)
    device = tb.devices[0]
    with tb.running(), ingesting(tb, [ingest_svc.JsonlSink(tmp_path / "out.jsonl")]) as ing:
        state = agent_state(tb, device, tmp_path / "state")
        out = agent(["run", "--state", str(state), "--count", "3", "--interval", "0.05"])
        assert f"published 3 signed messages as {device.name}" in out
        assert until(lambda: ing.stats.accepted == 3), ing.stats
        # a second run continues the counter (persisted in the state folder)
        agent(["run", "--state", str(state), "--count", "2", "--interval", "0"])
        assert until(lambda: ing.stats.accepted == 5)
        ing.close()
    assert ing.stats.refused == {}
    assert stored(tb, device.name) == 5
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["counter"] for x in lines] == [0, 1, 2, 3, 4]
    assert {x["topic"] for x in lines} == {telemetry_topic(device.name)}
    assert json.loads(base64.b64decode(lines[0]["payload_b64"]))["n"] == 0


def test_gateway_relays_for_three_devices_and_a_compromised_gateway_cannot_forge(  # noqa: PLR0915 - one scenario, told in order
        tmp_path: Path) -> None:
    tb = active_testbed(tmp_path, devices=5)
    gw, *downs, outsider = tb.devices
    a, b = downs[0], downs[1]
    db = tb.db()
    try:
        policy = authorize_gateway(db, tb.clock, gw.name, [d.name for d in downs],
                                   actor="tests@ingest")
    finally:
        db.close()
    assert [r.template for r in policy.shared_rules] == [
        f"devices/{d.name}/telemetry" for d in downs]
    with tb.running(), ingesting(tb, [], aggregate_interval_s=60.0) as ing:
        # -- the genuine path: three devices spool, the real gateway process relays --------
        gw_state = agent_state(tb, gw, tmp_path / "gw-state")
        spools = [tmp_path / f"spool-{i}" for i in range(3)]
        procs = [subprocess.Popen([*AGENT, "run", "--state",
                                   str(agent_state(tb, d, tmp_path / f"state-{i}")),
                                   "--spool", str(spools[i]), "--count", "4", "--interval", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for i, d in enumerate(downs)]
        for p in procs:
            _, errs = p.communicate(timeout=60)
            assert p.returncode == 0, errs
        out = agent(["gateway", "--state", str(gw_state), "--downstream", *map(str, spools),
                     "--count", "12", "--poll", "0.05"])
        assert json.loads(out.strip().splitlines()[-1]) == {"relayed": 12, "rejected": {}}
        assert until(lambda: ing.stats.accepted == 12)
        assert all(not list(s.glob("*.cose")) for s in spools)

        # -- a compromised gateway: a double holding only the gateway's credentials ---------
        double = tb.client(gw)
        assert double.connect()
        dev_a = sealer_for(tb, a, tmp_path / "state-0")  # the test is device A from here on
        now = datetime.now(UTC)
        genuine = 0

        def relay(topic: str, data: bytes) -> None:
            assert double.publish(topic, data) == 0  # the broker lets the gateway publish it

        # replay: a genuine message, then the same bytes again, three times
        _, m1 = dev_a.seal(telemetry_topic(a.name), b'{"t":21.5}', now=now)
        relay(telemetry_topic(a.name), m1)
        genuine += 1
        for _ in range(3):
            relay(telemetry_topic(a.name), m1)
        # alteration: one payload byte, then one bit of the signed counter
        _, m2 = dev_a.seal(telemetry_topic(a.name), b'{"t":21.6}', now=now)
        relay(telemetry_topic(a.name), m2[:-70] + bytes([m2[-70] ^ 1]) + m2[-69:])
        i = m2.index(b"\x3a\x00\x01\x00\x01") + 5  # label -65538 (counter), then its value
        relay(telemetry_topic(a.name), m2[:i] + bytes([m2[i] ^ 1]) + m2[i + 1:])
        # re-routing: A's genuine message onto B's topic (the gateway may publish there)
        _, m3 = dev_a.seal(telemetry_topic(a.name), b'{"t":21.7}', now=now)
        relay(telemetry_topic(b.name), m3)
        # the untouched originals still pass: refusals never burn a counter
        relay(telemetry_topic(a.name), m2)
        relay(telemetry_topic(a.name), m3)
        genuine += 2
        # forgery 1: signed with the gateway's own key and its own credential, claiming A
        gw_key = DeviceFileKey.load(gw.key)
        gw_serial = format(pki.load_certificate(gw.cert.read_bytes()).serial_number, "x")
        forged = seal(b'{"t":99}', signer=gw_key, device_id=a.name, counter=10**6,
                      timestamp=to_millis(now), topic=telemetry_topic(a.name),
                      content_type="application/json", kid=kid_for_serial(gw_serial))
        relay(telemetry_topic(a.name), forged)
        # forgery 2: A's credential named, gateway key used
        a_serial = format(dev_a.state.certificate.serial_number, "x")
        forged2 = seal(b'{"t":99}', signer=gw_key, device_id=a.name, counter=10**6,
                       timestamp=to_millis(now), topic=telemetry_topic(a.name),
                       content_type="application/json", kid=kid_for_serial(a_serial))
        relay(telemetry_topic(a.name), forged2)
        # a device the gateway does not serve: refused at the broker already
        assert double.publish(telemetry_topic(outsider.name), m1) == NOT_AUTHORIZED
        # genuine traffic keeps flowing, interleaved
        for k in range(5):
            _, g = dev_a.seal(telemetry_topic(a.name), f'{{"k":{k}}}'.encode(), now=now)
            relay(telemetry_topic(a.name), g)
            genuine += 1
        refusals = 3 + 2 + 1 + 2
        assert until(lambda: ing.handled() == 12 + genuine + refusals)
        ing.close()
    dev_a.close()
    assert ing.stats.accepted == 12 + genuine
    assert ing.stats.refused == {"replayed": 3, "signature_invalid": 3, "topic_mismatch": 1,
                                 "unknown_credential": 1}
    assert stored(tb, a.name) == 4 + genuine
    assert stored(tb, b.name) == 4
    assert stored(tb, outsider.name) == 0
    # every refusal is in the log, aggregated, and says why
    assert refusal_counts(tb) == {(a.name, "replayed"): 3, (a.name, "signature_invalid"): 3,
                                  (a.name, "topic_mismatch"): 1,
                                  (a.name, "unknown_credential"): 1}
    by_reason = {e.reason: json.loads(e.data) for e in events(tb, ingest_svc.INGEST_REFUSED)}
    assert by_reason["replayed"]["authenticated"] is True
    assert by_reason["topic_mismatch"]["topic"] == telemetry_topic(b.name)
    assert by_reason["signature_invalid"]["authenticated"] is False
    assert by_reason["unknown_credential"]["signed_by_device"] == gw.name
    assert by_reason["unknown_credential"]["claimed_device_id"] == a.name
    replay_events = [e for e in events(tb, ingest_svc.INGEST_REFUSED) if e.reason == "replayed"]
    assert [json.loads(e.data)["count"] for e in replay_events] == [1, 2]  # first, then summary


def test_quarantined_device_keeps_only_its_remediation_channel(tmp_path: Path) -> None:
    tb = active_testbed(tmp_path, devices=2)
    target, peer = tb.devices
    with tb.running() as broker, ingesting(tb, []) as ing:
        dev = sealer_for(tb, target, tmp_path / "state")
        peer_dev = sealer_for(tb, peer, tmp_path / "peer-state")
        tc = tb.client(target, reconnect=True)
        pc = tb.client(peer)
        assert tc.connect()
        assert pc.connect()
        db = tb.db()
        try:
            broker_svc.quarantine(db, tb.clock, broker, target.name, actor="tests@ingest",
                                  reason="suspicious")
        finally:
            db.close()
        assert tc.wait(lambda: tc.connected and len(tc.connects) >= 2, 10), "no reconnect"
        time.sleep(1.2)  # the ingest registry view polls the event log every second
        now = datetime.now(UTC)
        _, tel = dev.seal(telemetry_topic(target.name), b'{"t":1}', now=now)
        assert tc.publish(telemetry_topic(target.name), tel) == NOT_AUTHORIZED
        attestation = f"devices/{target.name}/attestation"
        _, att = dev.seal(attestation, b"quote", now=now, content_type="application/octet-stream")
        assert tc.publish(attestation, att) == 0
        _, ptel = peer_dev.seal(telemetry_topic(peer.name), b'{"t":2}', now=now)
        assert pc.publish(telemetry_topic(peer.name), ptel) == 0
        assert until(lambda: ing.stats.accepted == 2)
        ing.close()
    assert ing.stats.refused == {}
    db = tb.db()
    try:
        with db.transaction(readonly=True) as tx:
            rows = tx.list_ingested_messages(target.name)
    finally:
        db.close()
    assert [(m.topic, m.device_state) for _, _, m in rows] == [
        (attestation, DeviceState.QUARANTINED)]


def test_ingest_cli_restart_keeps_counters_a_replay_after_restart_is_refused(
        tmp_path: Path) -> None:
    tb = active_testbed(tmp_path, devices=1)
    device = tb.devices[0]
    env = tb.fleet.server_env()
    out = tmp_path / "cli.jsonl"
    with tb.running():
        dev = sealer_for(tb, device, tmp_path / "state")
        client = tb.client(device)
        assert client.connect()
        topic = telemetry_topic(device.name)
        now = datetime.now(UTC)
        first = [dev.seal(topic, f'{{"i":{i}}}'.encode(), now=now)[1] for i in range(3)]
        cmd = [*IOTRUST, "--json", "ingest", "run", "--jsonl", str(out), "--count", "3"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            assert "subscribed to devices/#" in proc.stderr.readline(), "ingest never subscribed"
            for m in first:
                assert client.publish(topic, m) == 0
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        assert proc.returncode == 0, stderr
        assert json.loads(stdout)["accepted"] == 3
        # while ingest is down: the replay and one new message wait in its broker session
        assert client.publish(topic, first[1]) == 0
        _, fresh = dev.seal(topic, b'{"i":3}', now=datetime.now(UTC))
        assert client.publish(topic, fresh) == 0
        proc = subprocess.run([*IOTRUST, "--json", "ingest", "run", "--jsonl", str(out),
                               "--count", "2"], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        second = json.loads(proc.stdout)
    assert second["accepted"] == 1
    assert second["refused"] == {"replayed": 1}
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["counter"] for x in lines] == [0, 1, 2, 3]
    assert refusal_counts(tb) == {(device.name, "replayed"): 1}
    listing = subprocess.run([*IOTRUST, "--json", "ingest", "messages"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert listing.returncode == 0, listing.stderr
    assert [r["counter"] for r in json.loads(listing.stdout)] == [0, 1, 2, 3]

