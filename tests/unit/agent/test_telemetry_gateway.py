"""Agent telemetry counter and the gateway relay, with a recording publisher (no broker)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.adapters.mqtt.client import NOT_AUTHORIZED
from iotrust.agent.gateway import Gateway, Spool, SpoolPublisher
from iotrust.agent.telemetry import COUNTER_FILE, CounterFile, reading
from iotrust.core.envelope import open_envelope, seal
from iotrust.errors import InputError

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DEV = "dev-" + "b" * 26


class Key:
    def __init__(self) -> None:
        self._k = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._k.public_key()

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415

        return self._k.sign(data, ec.ECDSA(hashes.SHA256()))


KEY = Key()


def envelope(counter: int, topic: str | None = None, device: str = DEV) -> bytes:
    return seal(b"{}", signer=KEY, device_id=device, counter=counter, timestamp=1,
                topic=topic or f"devices/{device}/telemetry", content_type=50, kid=b"\x01")


class Recorder:
    def __init__(self, codes: dict[int, int] | None = None) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.codes = codes or {}

    def publish(self, topic: str, payload: bytes) -> int:
        self.sent.append((topic, payload))
        return self.codes.get(len(self.sent), 0)


def test_counter_never_repeats_after_a_crash_and_has_no_gap_after_a_clean_stop(
        tmp_path: Path) -> None:
    c = CounterFile(tmp_path, block=10)
    assert [c.next() for _ in range(3)] == [0, 1, 2]
    assert json.loads((tmp_path / COUNTER_FILE).read_text()) == {"next": 10}  # reserved block
    crashed = CounterFile(tmp_path, block=10)  # the first one died without close()
    assert crashed.next() == 10
    crashed.close()
    assert CounterFile(tmp_path, block=10).next() == 11


def test_a_damaged_counter_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / COUNTER_FILE).write_text('{"next": -4}')
    with pytest.raises(InputError) as info:
        CounterFile(tmp_path)
    assert info.value.reason == "state_damaged"


def test_reading_is_json() -> None:
    assert json.loads(reading(7, T0))["n"] == 7


def test_gateway_relays_in_order_and_sets_aside_what_it_cannot_relay(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    device_side = SpoolPublisher(tmp_path / "s")
    for n in (2, 0, 1):
        assert device_side.publish("ignored", envelope(n)) == 0
    (tmp_path / "s" / "00000000000000000005.cose").write_bytes(b"garbage")
    spool.put(envelope(3, topic=f"devices/{'dev-' + 'c' * 26}/telemetry"))  # not its own topic
    spool.put(envelope(4))
    pub = Recorder(codes={4: NOT_AUTHORIZED})  # the broker refuses the 4th publish
    gw = Gateway([spool], pub)
    assert gw.relay_once() == 3
    assert [open_envelope(p).counter for _, p in pub.sent] == [0, 1, 2, 4]
    assert {t for t, _ in pub.sent} == {f"devices/{DEV}/telemetry"}
    assert gw.stats.rejected == {"broker_refused_0x87": 1, "foreign_topic": 1,
                                 "malformed_envelope": 1}
    assert list(spool.path.glob("*.cose")) == []
    assert len(list((spool.path / "rejected").glob("*.cose"))) == 3
    stop = threading.Event()
    stop.set()
    assert gw.run(stop).relayed == 3


def test_a_gateway_needs_downstream_devices() -> None:
    with pytest.raises(InputError):
        Gateway([], Recorder())
