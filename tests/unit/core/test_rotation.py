"""The rotation core: renewal timing, overlap, liveness order, transcripts, messages, decisions."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.core import pki
from iotrust.core import rotation as rot
from iotrust.core.lifecycle import CredentialState, DeviceState
from iotrust.core.zombies import BrokerLogin, BrokerRefusal, parse_mosquitto_log
from iotrust.errors import InputError, TrustError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEV = "dev-" + "a" * 26


def test_renewal_due_at_fraction() -> None:
    end = T0 + timedelta(days=30)
    assert rot.renewal_due_at(T0, end) == T0 + timedelta(days=20)
    assert rot.renewal_due_at(T0, end, 0.5) == T0 + timedelta(days=15)
    assert not rot.is_renewal_due(T0 + timedelta(days=19), T0, end)
    assert rot.is_renewal_due(T0 + timedelta(days=20), T0, end)
    with pytest.raises(InputError):
        rot.renewal_due_at(T0, end, 0)
    with pytest.raises(InputError):
        rot.OverlapPolicy(-1)
    assert rot.OverlapPolicy().immediate
    assert rot.OverlapPolicy(60).revoke_at(T0) == T0 + timedelta(seconds=60)


@pytest.mark.parametrize(("device", "cred", "state", "now", "reason"), [
    (DeviceState.ACTIVE, "other", CredentialState.ACTIVE, T0, "credential_unknown"),
    (DeviceState.RETIRED, DEV, CredentialState.REVOKED, T0, "retired"),
    (DeviceState.EXPECTED, DEV, CredentialState.ISSUED, T0, "device_not_active"),
    (DeviceState.ACTIVE, DEV, CredentialState.REVOKED, T0, "credential_revoked"),
    (DeviceState.ACTIVE, DEV, CredentialState.EXPIRED, T0, "credential_expired"),
    (DeviceState.ACTIVE, DEV, CredentialState.ACTIVE, T0 + timedelta(days=31),
     "credential_expired"),
    (DeviceState.ACTIVE, DEV, CredentialState.SUPERSEDED, T0, "credential_superseded"),
])
def test_liveness_refusals_in_order(device: DeviceState, cred: str, state: CredentialState,
                                    now: datetime, reason: str) -> None:
    with pytest.raises(TrustError) as info:
        rot.check_current_credential(device_id=DEV, device_state=device,
                                     credential_device_id=cred, credential_state=state,
                                     not_before=T0 - timedelta(days=1),
                                     not_after=T0 + timedelta(days=29), now=now)
    assert info.value.reason == reason


def test_live_credential_passes() -> None:
    rot.check_current_credential(device_id=DEV, device_state=DeviceState.QUARANTINED,
                                 credential_device_id=DEV, credential_state=CredentialState.ACTIVE,
                                 not_before=T0, not_after=T0 + timedelta(days=1), now=T0)


def test_transcript_binds_label_nonce_serial_and_csr() -> None:
    base = {"session_id": b"s" * 16, "server_nonce": b"n" * 32, "device_id": DEV,
            "credential_serial": "ab", "csr_sha256": b"c" * 32}
    t = rot.rotation_transcript(**base)  # type: ignore[arg-type]
    assert b"iotrust-rotation-v1" in t
    for key, other in (("server_nonce", b"m" * 32), ("credential_serial", "ac"),
                       ("csr_sha256", b"d" * 32)):
        assert rot.rotation_transcript(**{**base, key: other}) != t  # type: ignore[arg-type]


def test_messages_round_trip_and_reject_extras() -> None:
    req = rot.BeginRequest(device_id=DEV, credential_serial="ab12", device_nonce=b"x" * 32,
                           signature=b"s" * 70)
    assert rot.BeginRequest.from_wire(req.to_wire()) == req
    with pytest.raises(InputError):
        rot.BeginRequest.from_wire(req.to_wire()[:-1] + b',"x":1}')
    with pytest.raises(InputError):
        rot.BeginRequest.from_wire(b"[]")


def test_complete_and_confirm_decisions(tmp_path: object) -> None:
    from pathlib import Path  # noqa: PLC0415

    folder = Path(str(tmp_path))
    ca_key = DeviceFileKey.generate(folder / "ca.pem")
    root = pki.build_root_ca(ca_key, "R", "o", T0, timedelta(days=365))
    ctx = pki.IssuingContext.from_ca(root, ca_key)
    old_key = DeviceFileKey.generate(folder / "old.pem")
    new_key = DeviceFileKey.generate(folder / "new.pem")
    current = ctx.issue_device(device_id=DEV, public_key=old_key.public_key, serial_number=11,
                               not_before=T0, lifetime=timedelta(days=30))
    new = rot.new_rotation_session(lambda n: b"\x07" * n, T0, device_id=DEV,
                                   credential_serial="b", source="s")
    csr = pki.build_csr(new_key).public_bytes(Encoding.DER)
    transcript = rot.rotation_transcript(session_id=new.session_id,
                                         server_nonce=new.server_nonce, device_id=DEV,
                                         credential_serial="b",
                                         csr_sha256=hashlib.sha256(csr).digest())
    req = rot.CompleteRequest(session_id=new.session_id, device_id=DEV, credential_serial="b",
                              server_nonce=new.server_nonce, csr=csr,
                              signature=old_key.sign(transcript))
    key = rot.check_complete(req, session=new.record, now=T0, consumed_ok=True,
                             current_certificate=current, known_key=lambda _s: False)
    assert pki.spki_sha256(key) == pki.spki_sha256(new_key.public_key)
    for kwargs, reason in (({"consumed_ok": False}, "nonce_replayed"),
                           ({"known_key": lambda _s: True}, "clone_suspected"),
                           ({"now": T0 + timedelta(seconds=61)}, "nonce_expired")):
        args = {"session": new.record, "now": T0, "consumed_ok": True,
                "current_certificate": current, "known_key": lambda _s: False, **kwargs}
        with pytest.raises(TrustError) as info:
            rot.check_complete(req, **args)  # type: ignore[arg-type]
        assert info.value.reason == reason
    forged = rot.CompleteRequest(session_id=new.session_id, device_id=DEV,
                                 credential_serial="b", server_nonce=new.server_nonce, csr=csr,
                                 signature=new_key.sign(transcript))
    with pytest.raises(TrustError) as info:
        rot.check_complete(forged, session=new.record, now=T0, consumed_ok=True,
                           current_certificate=current, known_key=lambda _s: False)
    assert info.value.reason == "signature_invalid"


def test_mosquitto_log_refusals_are_paired_with_their_address() -> None:
    lines = [
        "1795633514: New connection from 127.0.0.10:35129 on port 57703.",
        ("1795633514: New client connected from 127.0.0.10:35129 as c1 (p5, c1, k30, "
        "u'dev-aaaaaaaaaaaaaaaaaaaaaaaaaa')."),
        "1795633515: New connection from 127.0.0.10:54527 on port 57703.",
        "1795633515: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed",
        "1795633515: Client <unknown> disconnected: Protocol error.",
        "garbage line",
        # a handshake refused inside accept() (seen with Mosquitto 2.0.11 right after a reload)
        ("1795633516: Client connection from 127.0.0.11 failed: error:0A000086:SSL "
         "routines::certificate verify failed."),
        "1795633516: Client connection from 127.0.0.12 failed: Connection reset by peer.",
    ]
    facts = list(parse_mosquitto_log(lines))
    assert isinstance(facts[0], BrokerLogin)
    assert facts[0].username == "dev-aaaaaaaaaaaaaaaaaaaaaaaaaa"
    assert isinstance(facts[1], BrokerRefusal)
    assert facts[1].address == "127.0.0.10"
    assert isinstance(facts[2], BrokerRefusal)
    assert facts[2].address == "127.0.0.11"
    assert len(facts) == 3


def test_mosquitto_log_refusal_pairs_with_a_connection_from_the_previous_scan() -> None:
    pending: list[str] = []
    first = list(parse_mosquitto_log(
        ["1795633515: New connection from 127.0.0.10:54527 on port 57703."], pending))
    assert first == []
    assert pending == ["127.0.0.10:54527"]
    second = list(parse_mosquitto_log(
        ["1795633515: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed"],
        pending))
    assert [f.address for f in second if isinstance(f, BrokerRefusal)] == ["127.0.0.10"]
    assert pending == []
