"""Least privilege in the real broker: own topics only, mTLS only, revocation, kicks (§7)."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import pytest
from tests.integration.mqtt import NOT_AUTHORIZED, build_testbed, foreign_identity

from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.adapters.mqtt.mosquitto import ADMIN_USERNAME
from iotrust.core import pki
from iotrust.core.lifecycle import RetirementReason
from iotrust.core.policy import DEFAULT_POLICY, Action, Policy, Rule
from iotrust.errors import InputError
from iotrust.ports import TopicAccess
from iotrust.services import broker as broker_svc
from iotrust.services import policies as policy_svc
from iotrust.services.domain import active_issuing_ca

pytestmark = pytest.mark.mqtt


@pytest.fixture(scope="module")
def tb(tmp_path_factory):
    bed = build_testbed(tmp_path_factory.mktemp("enforce"), devices=6)
    with bed.running():
        yield bed


def test_device_publishes_to_own_topics_and_is_refused_on_others(tb):
    ingest = tb.subscriber()
    a, b = tb.devices[0], tb.devices[1]
    ca = tb.client(a)
    assert ca.connect()
    assert ca.publish(f"devices/{a.name}/telemetry", b"mine") == 0
    assert ca.publish(f"devices/{b.name}/telemetry", b"forged") == NOT_AUTHORIZED
    assert ca.publish(f"devices/{b.name}/commands/reboot", b"forged") == NOT_AUTHORIZED
    assert ingest.wait(lambda: ingest.delivered(f"devices/{a.name}/telemetry"))
    time.sleep(0.3)
    assert ingest.delivered(f"devices/{b.name}/telemetry") == []
    assert ingest.delivered(f"devices/{b.name}/commands/reboot") == []


def test_subscription_to_another_device_delivers_nothing(tb):
    a, b = tb.devices[0], tb.devices[1]
    spy = tb.client(a)
    assert spy.connect()
    spy.subscribe(f"devices/{b.name}/commands/#")  # granted by acl_file; deliveries are checked
    spy.subscribe(f"devices/{a.name}/commands/#")
    ingest_sender = tb.client(tb.ingest)  # services may not publish device commands either
    assert ingest_sender.connect()
    cb = tb.client(b)
    assert cb.connect()
    # b publishing its own telemetry must not reach a's subscription on b's topics
    assert cb.publish(f"devices/{b.name}/telemetry") == 0
    time.sleep(0.3)
    assert spy.messages == []


def test_a_deny_in_a_user_block_overrides_the_pattern_allow_on_live_sessions(tb):
    """The layout's premise, measured: a `topic deny` beats a matching `pattern` allow, and a
    SIGHUP applies the new file to a session that stays connected."""
    victim = tb.devices[2]
    c = tb.client(victim)
    assert c.connect()
    assert c.publish(f"devices/{victim.name}/telemetry") == 0
    db = tb.db()
    try:
        entries = [e if e.username != victim.name else TopicAccess(victim.name, None)
                   for e in broker_svc.access_entries(db)]
    finally:
        db.close()
    tb.broker.apply_policies(entries, default=broker_svc.default_access())
    assert f"user {victim.name}\ntopic deny #" in tb.broker.layout.acl.read_text()
    assert c.wait(lambda: c.publish(f"devices/{victim.name}/telemetry") == NOT_AUTHORIZED, 3)
    assert c.connected
    assert c.disconnects == []
    db = tb.db()
    try:
        broker_svc.sync(db, tb.broker)
    finally:
        db.close()
    assert c.wait(lambda: c.publish(f"devices/{victim.name}/telemetry") == 0, 3)


def test_no_certificate_or_foreign_ca_cannot_connect(tb, tmp_path):
    assert not tb.client(None).connect()
    foreign = foreign_identity(tmp_path, "foreign")
    assert not tb.client(foreign).connect()


def test_revoked_certificate_cannot_connect_and_its_session_is_cut(tb):
    dev = tb.devices[3]
    live = tb.client(dev)
    assert live.connect()
    db = tb.db()
    try:
        result = broker_svc.retire(db, tb.settings, tb.fleet.secrets, tb.clock, dev.name,
                                   broker=tb.broker, reason=RetirementReason.COMPROMISED,
                                   actor="tests@broker")
    finally:
        db.close()
    assert result.broker == "applied"
    assert set(result.timings_ms) >= {"transition", "crl_publish", "crl_install", "rules", "kick"}
    assert live.wait(lambda: live.disconnects, 3)
    assert not tb.client(dev).connect()
    # the rest of the fleet still connects
    assert tb.client(tb.devices[4]).connect()


def test_disable_client_does_not_contain_a_certificate_device_kick_plus_rules_does(tb):
    """dynsec ``disableClient`` drops the session, but a certificate device simply reconnects
    with its rights (the dynsec account is not what admits it): containment must come from the
    ACL (or CRL) plus a kick."""
    dev = tb.devices[5]
    c = tb.client(dev)
    assert c.connect()
    replies = tb.broker.dynsec([{"command": "createClient", "username": dev.name},
                                {"command": "disableClient", "username": dev.name}])
    assert all(not r.get("error") for r in replies)
    again = tb.client(dev)
    assert again.connect()  # still admitted while "disabled"
    assert again.publish(f"devices/{dev.name}/telemetry") == 0  # with its full rights
    tb.broker.dynsec([{"command": "deleteClient", "username": dev.name}])
    # the adapter's kick: createClient + deleteClient in one message cuts the live session
    c2 = tb.client(dev)
    assert c2.connect()
    t0 = time.perf_counter()
    tb.broker.kick(dev.name)
    assert c2.wait(lambda: c2.disconnects, 3)
    assert time.perf_counter() - t0 < 1.0
    assert str(c2.disconnects[0]) == "Administrative action"


def test_admin_name_cannot_be_a_device_certificate_and_admin_listener_is_loopback(tb):
    key = DeviceFileKey.load(tb.devices[0].key)
    db = tb.db()
    try:
        with db.transaction() as tx:
            ca = active_issuing_ca(tx)
    finally:
        db.close()
    ctx = pki.IssuingContext.from_ca(pki.load_certificate(ca.certificate_pem.encode()),
                                     tb.fleet.secrets.open(ca.key_ref))
    for name in (ADMIN_USERNAME, "admin", "ingest@iotrust"):
        with pytest.raises(InputError) as exc:
            ctx.issue_device(device_id=name, public_key=key.public_key, serial_number=12345,
                             not_before=tb.clock.now(), lifetime=timedelta(days=1))
        assert exc.value.reason == "invalid_device_id"
    conf = tb.broker.layout.conf.read_text()
    assert f"listener {tb.broker.settings.admin_port} 127.0.0.1\n" in conf
    other = _non_loopback_address()
    if other is not None:
        with pytest.raises(OSError):
            socket.create_connection((other, tb.broker.settings.admin_port), timeout=1).close()
    with socket.create_connection(("127.0.0.1", tb.broker.settings.admin_port), timeout=1):
        pass


def _non_loopback_address():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_assigned_policy_gets_its_own_block_and_applies_live(tb):
    """A device with a non-default policy (via a group) gets exactly that policy's rights."""
    special, plain = tb.devices[4], tb.devices[1]
    db = tb.db()
    try:
        logs = Policy("with-logs", (*DEFAULT_POLICY.rules,
                                    Rule(Action.PUBLISH, "devices/{device_id}/logs")))
        policy_svc.create(db, tb.clock, logs.name, logs.rules, actor="tests@broker")
        policy_svc.assign_to_group(db, tb.clock, logs.name, "loggers", actor="tests@broker")
        policy_svc.add_to_group(db, tb.clock, "loggers", [special.name], actor="tests@broker",
                                changed=lambda _change: broker_svc.sync(db, tb.broker))
    finally:
        db.close()
    acl = tb.broker.layout.acl.read_text()
    assert f"user {special.name}\ntopic write devices/{special.name}/logs\n" in acl
    assert f"user {plain.name}" not in acl
    assert tb.broker.last_acl.mode.value == "pattern"
    cs, cp = tb.client(special), tb.client(plain)
    assert cs.connect()
    assert cp.connect()
    assert cs.publish(f"devices/{special.name}/logs") == 0
    assert cs.publish(f"devices/{special.name}/telemetry") == 0
    assert cp.publish(f"devices/{plain.name}/logs") == NOT_AUTHORIZED
