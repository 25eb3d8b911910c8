"""The ingest decision: every refusal reason, in the documented order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.core import envelope as e
from iotrust.core.freshness import ReplayWindow
from iotrust.core.ids import new_device_id
from iotrust.core.ingest import (
    REASONS,
    DeviceCredential,
    FreshnessLimits,
    VerifiedMessage,
    to_millis,
    verify_message,
)
from iotrust.core.lifecycle import CredentialState, DeviceState
from iotrust.core.policy import Action, Policy, Rule
from iotrust.errors import InputError, TrustError

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
DEVICE = new_device_id(bytes(range(16)))
OTHER = new_device_id(bytes(range(1, 17)))
TOPIC = f"devices/{DEVICE}/telemetry"
SERIAL = "a1b2c3"


class Key:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


KEY = Key()


def credential(**changes: Any) -> DeviceCredential:
    base: dict[str, Any] = {"serial": SERIAL, "device_id": DEVICE, "public_key": KEY.public_key,
                            "state": CredentialState.ACTIVE,
                            "not_before": NOW - timedelta(days=1),
                            "not_after": NOW + timedelta(days=30)}
    base.update(changes)
    return DeviceCredential(**base)


def envelope(*, key: Key = KEY, serial: str = SERIAL, **changes: Any) -> e.Envelope:
    f: dict[str, Any] = {"device_id": DEVICE, "counter": 10, "timestamp": to_millis(NOW),
                         "topic": TOPIC, "content_type": 50, "kid": e.kid_for_serial(serial)}
    f.update(changes)
    return e.open_envelope(e.seal(b'{"t":1}', signer=key, **f))


def verify(env: e.Envelope, *, creds: dict[str, DeviceCredential] | None = None,
           state: DeviceState | None = DeviceState.ACTIVE, window: ReplayWindow | None = None,
           arrived: str | None = None, now: datetime = NOW, **kw: Any) -> VerifiedMessage:
    table = {SERIAL: credential()} if creds is None else creds
    return verify_message(env, arrived_topic=TOPIC if arrived is None else arrived, now=now,
                          credential_lookup=table.get, device_state=state,
                          window=window if window is not None else ReplayWindow(), **kw)


def reason(env: e.Envelope, **kw: Any) -> str:
    with pytest.raises(TrustError) as exc:
        verify(env, **kw)
    assert exc.value.reason in REASONS
    return exc.value.reason


def test_a_genuine_message_is_accepted() -> None:
    window = ReplayWindow()
    msg = verify(envelope(), window=window)
    assert msg.device_id == DEVICE
    assert msg.counter == 10
    assert msg.topic == TOPIC
    assert msg.payload == b'{"t":1}'
    assert msg.credential_serial == SERIAL
    assert msg.device_state is DeviceState.ACTIVE
    assert window.highest == 10


@pytest.mark.parametrize("cred", [
    None,
    credential(device_id=OTHER),
    credential(state=CredentialState.REVOKED),
    credential(state=CredentialState.EXPIRED),
    credential(state=CredentialState.ISSUED),
    credential(not_after=NOW - timedelta(seconds=1)),
    credential(not_before=NOW + timedelta(seconds=1)),
])
def test_unknown_or_unusable_credential(cred: DeviceCredential | None) -> None:
    creds = {} if cred is None else {SERIAL: cred}
    assert reason(envelope(), creds=creds) == "unknown_credential"


def test_superseded_credential_is_accepted_during_overlap() -> None:
    verify(envelope(), creds={SERIAL: credential(state=CredentialState.SUPERSEDED)})


def test_signature_by_another_key() -> None:
    assert reason(envelope(key=Key())) == "signature_invalid"


def test_credential_checked_before_signature() -> None:
    # forged (wrong key) AND unknown serial: the first check wins
    assert reason(envelope(key=Key(), serial="ff")) == "unknown_credential"


@pytest.mark.parametrize("state", [None, DeviceState.EXPECTED, DeviceState.RETIRED,
                                   DeviceState.QUARANTINED])
def test_device_not_active(state: DeviceState | None) -> None:
    assert reason(envelope(), state=state) == "device_not_active"


def test_quarantined_device_keeps_its_remediation_topics() -> None:
    topic = f"devices/{DEVICE}/attestation"
    msg = verify(envelope(topic=topic), arrived=topic, state=DeviceState.QUARANTINED)
    assert msg.device_state is DeviceState.QUARANTINED


def test_signature_checked_before_state() -> None:
    assert reason(envelope(key=Key()), state=DeviceState.RETIRED) == "signature_invalid"


def test_topic_mismatch() -> None:
    assert reason(envelope(), arrived=f"devices/{DEVICE}/status") == "topic_mismatch"


def test_a_device_cannot_sign_for_another_devices_topic() -> None:
    topic = f"devices/{OTHER}/telemetry"
    assert reason(envelope(topic=topic), arrived=topic) == "topic_mismatch"


def test_assigned_policy_is_honoured() -> None:
    topic = f"devices/{DEVICE}/custom"
    policy = Policy("custom", (Rule(Action.PUBLISH, "devices/{device_id}/custom"),))
    verify(envelope(topic=topic), arrived=topic, policy=policy)
    assert reason(envelope(topic=topic), arrived=topic) == "topic_mismatch"


def test_age_limits() -> None:
    limits = FreshnessLimits(max_age_ms=60_000, max_skew_ms=5_000)
    old = envelope(timestamp=to_millis(NOW) - 60_001)
    assert reason(old, limits=limits) == "too_old"
    future = envelope(timestamp=to_millis(NOW) + 5_001)
    assert reason(future, limits=limits) == "from_future"
    verify(envelope(timestamp=to_millis(NOW) + 5_000), limits=limits)


def test_replay_and_reordering() -> None:
    window = ReplayWindow(64)
    verify(envelope(counter=10), window=window)
    assert reason(envelope(counter=10), window=window) == "replayed"
    verify(envelope(counter=9), window=window)
    verify(envelope(counter=100), window=window)
    assert reason(envelope(counter=36), window=window) == "replayed"


def test_a_refused_message_does_not_burn_its_counter() -> None:
    window = ReplayWindow()
    assert reason(envelope(counter=5), window=window, arrived="elsewhere") == "topic_mismatch"
    assert reason(envelope(counter=5, timestamp=0), window=window) == "too_old"
    assert window.highest == -1
    verify(envelope(counter=5), window=window)


def test_to_millis_and_limits() -> None:
    assert to_millis(datetime(1970, 1, 1, 0, 0, 1, 500, tzinfo=UTC)) == 1000
    with pytest.raises(TypeError):
        to_millis(datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test
    with pytest.raises(InputError):
        FreshnessLimits(max_age_ms=-1)
    with pytest.raises(TypeError):
        credential(not_after=datetime(2027, 1, 1))  # noqa: DTZ001


def test_reason_list_is_the_documented_one() -> None:
    assert set(REASONS) == {"signature_invalid", "unknown_credential", "replayed", "too_old",
                            "from_future", "topic_mismatch", "device_not_active"}
