"""Device-signed reads (:mod:`iotrust.core.signed_reads`): header form and the pure checks."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.core import envelope, signed_reads
from iotrust.errors import InputError, TrustError

DEVICE = "dev-" + "a" * 26
OTHER = "dev-" + "b" * 26
NOW = 1_790_000_000_000


class _Key:
    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


def _header(key: _Key, *, device_id: str = DEVICE, topic: str | None = None,
            at: int = NOW) -> str:
    return signed_reads.authorization(
        key, device_id=device_id, kid=b"\x01\x02",
        topic=topic or signed_reads.director_read_topic(DEVICE, "timestamp.json"),
        timestamp_ms=at)


def test_a_read_header_round_trips_and_verifies() -> None:
    key = _Key()
    env = signed_reads.open_read(_header(key))
    envelope.verify_signature(env, key.public_key)
    assert env.content_type == signed_reads.READ_CONTENT_TYPE
    assert env.counter == 0
    assert env.payload == b""
    signed_reads.check_read(env, device_id=DEVICE, name="timestamp.json", now_ms=NOW)


@pytest.mark.parametrize("header", [None, "", "Bearer x", "IotrustDevice", "IotrustDevice ",
                                    "iotrustdevice abc", "x" * 5000])
def test_missing_or_foreign_authorization_is_refused(header: str | None) -> None:
    with pytest.raises(TrustError) as refused:
        signed_reads.open_read(header)
    assert refused.value.reason == "device_auth_required"


@pytest.mark.parametrize("token", ["!!!", "AAAA", base64.urlsafe_b64encode(b"\xd2\x84").decode()])
def test_undecodable_authorization_is_malformed(token: str) -> None:
    with pytest.raises(InputError) as bad:
        signed_reads.open_read(f"IotrustDevice {token}")
    assert bad.value.reason == "malformed_envelope"


def test_checks_name_their_reason() -> None:
    key = _Key()
    cases = [
        (_header(key, device_id=OTHER), "timestamp.json", NOW, "device_mismatch"),
        (_header(key), "1.root.json", NOW, "request_mismatch"),
        (_header(key, topic="devices/" + DEVICE + "/telemetry"), "timestamp.json", NOW,
         "request_mismatch"),
        (_header(key), "timestamp.json", NOW + signed_reads.MAX_SKEW_MS + 1, "request_stale"),
        (_header(key), "timestamp.json", NOW - signed_reads.MAX_SKEW_MS - 1, "request_stale"),
    ]
    for header, name, now, reason in cases:
        with pytest.raises(TrustError) as refused:
            signed_reads.check_read(signed_reads.open_read(header), device_id=DEVICE,
                                    name=name, now_ms=now)
        assert refused.value.reason == reason
    edge = signed_reads.open_read(_header(key))
    signed_reads.check_read(edge, device_id=DEVICE, name="timestamp.json",
                            now_ms=NOW + signed_reads.MAX_SKEW_MS)


def test_a_status_report_envelope_is_not_a_read() -> None:
    key = _Key()
    report = envelope.seal(b"", signer=key, device_id=DEVICE, counter=0, timestamp=NOW,
                           topic=signed_reads.director_read_topic(DEVICE, "timestamp.json"),
                           content_type="application/json", kid=b"\x01")
    token = base64.urlsafe_b64encode(report).rstrip(b"=").decode()
    with pytest.raises(TrustError) as refused:
        signed_reads.check_read(signed_reads.open_read(f"IotrustDevice {token}"),
                                device_id=DEVICE, name="timestamp.json", now_ms=NOW)
    assert refused.value.reason == "request_mismatch"
