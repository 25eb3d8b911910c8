"""The signed-message envelope: round trips, every refusal of the parse boundary, signatures,
size overhead, and the committed vectors (byte-exact against scripts/make_envelope_vectors.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.core import envelope as e
from iotrust.core.ids import new_device_id
from iotrust.errors import InputError, TrustError

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "tests" / "vectors" / "envelope"
DEVICE = new_device_id(bytes(16))
TOPIC = f"devices/{DEVICE}/telemetry"
KID = e.kid_for_serial("7fabcdef0123456789abcdef01234567")
T = 1_767_268_800_000


class Signer:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.calls = 0

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def fields(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"device_id": DEVICE, "counter": 7, "timestamp": T, "topic": TOPIC,
                            "content_type": 50, "kid": KID}
    base.update(changes)
    return base


def seal(signer: Signer, payload: bytes = b'{"t":21.5}', **changes: Any) -> bytes:
    return e.seal(payload, signer=signer, **fields(**changes))


@pytest.mark.parametrize("changes", [
    {}, {"counter": 0}, {"counter": 23}, {"counter": 24}, {"counter": 255}, {"counter": 256},
    {"counter": 65536}, {"counter": 2**32}, {"counter": e.MAX_COUNTER}, {"timestamp": 0},
    {"content_type": "application/json"}, {"content_type": 0}, {"content_type": 65535},
    {"topic": "a"}, {"topic": "t/" + "é" * 300}, {"kid": b"\x01"}, {"kid": b"\xff" * 32},
])
def test_round_trip(signer: Signer, changes: dict[str, Any]) -> None:
    data = seal(signer, b"x" * 300, **changes)
    env = e.open_envelope(data)
    for name, value in fields(**changes).items():
        assert getattr(env, name) == value
    assert env.payload == b"x" * 300
    assert env.encode() == data
    e.verify_signature(env, signer.public_key)
    # the protected header is the deterministic CBOR of the labelled map
    expect = {1: -7, 3: env.content_type, 4: env.kid, -65537: env.device_id,
              -65538: env.counter, -65539: env.timestamp, -65540: env.topic}
    assert env.protected == cbor2.dumps(expect, canonical=True)
    # the whole envelope is the deterministic CBOR of the tagged array
    assert data == cbor2.dumps(cbor2.CBORTag(18, [env.protected, {}, env.payload, env.signature]))


def test_another_key_is_refused(signer: Signer) -> None:
    env = e.open_envelope(seal(signer))
    with pytest.raises(TrustError) as exc:
        e.verify_signature(env, Signer().public_key)
    assert exc.value.reason == "signature_invalid"


def test_every_single_bit_flip_is_refused(signer: Signer) -> None:
    data = seal(signer, b'{"t":1}')
    outcomes = {"malformed": 0, "signature": 0}
    for i in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        try:
            env = e.open_envelope(bytes(flipped))
        except InputError as exc:
            reason = exc.reason
        else:
            reason = None
        if reason is not None:
            assert reason == "malformed_envelope"
            outcomes["malformed"] += 1
            continue
        with pytest.raises(TrustError) as refused:
            e.verify_signature(env, signer.public_key)
        assert refused.value.reason == "signature_invalid"
        outcomes["signature"] += 1
    assert outcomes["malformed"] > 0
    assert outcomes["signature"] > 0


def test_the_public_key_must_be_p256(signer: Signer) -> None:
    env = e.open_envelope(seal(signer))
    with pytest.raises(TypeError):
        e.verify_signature(env, ec.generate_private_key(ec.SECP384R1()).public_key())


def _header(**changes: Any) -> dict[int, Any]:
    h = {1: -7, 3: 50, 4: KID, -65537: DEVICE, -65538: 7, -65539: T, -65540: TOPIC}
    h.update({int(k.removeprefix("l").replace("m", "-")): v for k, v in changes.items()})
    return h


def _raw(header: dict[Any, Any] | bytes, *, unprotected: dict[Any, Any] | None = None,
         payload: Any = b"p", signature: Any = bytes(64), tag: int = 18) -> bytes:
    protected = header if isinstance(header, bytes) else cbor2.dumps(header, canonical=True)
    return cbor2.dumps(cbor2.CBORTag(tag, [protected, unprotected or {}, payload, signature]))


MALFORMED = {
    "alg_es384": _raw(_header(l1=-35)),
    "alg_missing": _raw({k: v for k, v in _header().items() if k != 1}),
    "extra_label": _raw({**_header(), 5: b"x"}),
    "missing_topic": _raw({k: v for k, v in _header().items() if k != -65540}),
    "counter_negative": _raw(_header(m65538=-1)),
    "counter_too_big": _raw(_header(m65538=2**63)),
    "counter_text": _raw(_header(m65538="7")),
    "counter_bool": _raw(_header(m65538=True)),
    "timestamp_float": _raw(_header(m65539=1.5)),
    "device_id_bad": _raw(_header(m65537="dev-UPPER")),
    "device_id_bytes": _raw(_header(m65537=DEVICE.encode())),
    "topic_wildcard": _raw(_header(m65540="devices/+/telemetry")),
    "topic_hash": _raw(_header(m65540="devices/#")),
    "topic_empty": _raw(_header(m65540="")),
    "topic_nul": _raw(_header(m65540="a\x00b")),
    "topic_too_long": _raw(_header(m65540="t" * 1025)),
    "kid_empty": _raw(_header(l4=b"")),
    "kid_too_long": _raw(_header(l4=b"k" * 33)),
    "kid_text": _raw(_header(l4="11")),
    "content_type_big": _raw(_header(l3=65536)),
    "content_type_control": _raw(_header(l3="a\nb")),
    "content_type_empty": _raw(_header(l3="")),
    "unprotected_kid": _raw(_header(), unprotected={4: KID}),
    "payload_nil": _raw(_header(), payload=None),
    "payload_text": _raw(_header(), payload="p"),
    "signature_63": _raw(_header(), signature=bytes(63)),
    "signature_65": _raw(_header(), signature=bytes(65)),
    "tag_17": _raw(_header(), tag=17),
    "untagged": cbor2.dumps([cbor2.dumps(_header(), canonical=True), {}, b"p", bytes(64)]),
    "key_order": _raw(cbor2.dumps(dict(reversed(list(_header().items()))))),
    "protected_not_map": _raw(cbor2.dumps([1, 2])),
    "protected_trailing": _raw(cbor2.dumps(_header(), canonical=True) + b"\x00"),
    "long_form_counter": _raw(cbor2.dumps(_header(), canonical=True).replace(
        b"\x3a\x00\x01\x00\x01\x07", b"\x3a\x00\x01\x00\x01\x18\x07")),
    "bad_utf8_topic": _raw(cbor2.dumps(_header(m65540="ab"), canonical=True).replace(
        b"\x62ab", b"\x62\xff\xfe")),
    "empty": b"",
    "not_cbor": b"\xff" * 10,
    "array_of_three": cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b""])),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_envelopes_are_refused(name: str) -> None:
    with pytest.raises(InputError) as exc:
        e.open_envelope(MALFORMED[name])
    assert exc.value.reason == "malformed_envelope"


def test_trailing_and_oversized_input(signer: Signer) -> None:
    data = seal(signer)
    for bad in (data + b"\x00", data[:-1], b"\x00" + data):
        with pytest.raises(InputError):
            e.open_envelope(bad)
    big = seal(signer, b"x" * 65_500)
    with pytest.raises(InputError) as exc:
        e.open_envelope(big)
    assert exc.value.reason == "malformed_envelope"
    assert e.open_envelope(big, max_bytes=100_000).payload == b"x" * 65_500
    with pytest.raises(InputError):
        e.open_envelope(data, max_bytes=len(data) - 1)
    with pytest.raises(InputError):
        e.open_envelope(bytearray(data))  # type: ignore[arg-type]


@pytest.mark.parametrize("changes", [
    {"device_id": "nope"}, {"counter": -1}, {"counter": 2**63}, {"timestamp": -5},
    {"topic": "a/+"}, {"topic": ""}, {"topic": "\ud800"}, {"content_type": ""},
    {"content_type": 70000}, {"kid": b""}, {"counter": 1.0}, {"kid": "01"},
])
def test_seal_refuses_bad_fields_before_signing(changes: dict[str, Any]) -> None:
    s = Signer()
    with pytest.raises(InputError) as exc:
        seal(s, **changes)
    assert exc.value.reason == "malformed_envelope"
    assert s.calls == 0


def test_envelope_constructor_rejects_inconsistent_protected(signer: Signer) -> None:
    env = e.open_envelope(seal(signer))
    values = {name: getattr(env, name) for name in e.Envelope.__dataclass_fields__}
    assert e.Envelope(**values) == env
    with pytest.raises(InputError):
        e.Envelope(**{**values, "counter": 8})
    with pytest.raises(InputError):
        e.Envelope(**{**values, "signature": bytes(63)})


def test_kid_and_credential_serial() -> None:
    for serial in ("1", "ff", "100", "7fabcdef0123456789abcdef01234567", "8" + "0" * 39):
        assert e.open_envelope(e.seal(b"", signer=Signer(), **fields(kid=e.kid_for_serial(
            serial)))).credential_serial == serial
    assert e.kid_for_serial("100") == b"\x01\x00"
    with pytest.raises(InputError):
        e.kid_for_serial("0")


def test_signature_conversion_round_trips() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for _ in range(20):
        der = key.sign(b"m", ec.ECDSA(hashes.SHA256()))
        raw = e.der_to_raw(der)
        assert len(raw) == 64
        assert e.raw_to_der(raw) == der
    with pytest.raises(TypeError):
        e.raw_to_der(bytes(63))


def test_overhead_formula_and_documented_figure(signer: Signer) -> None:
    for changes in ({}, {"counter": 2**40}, {"content_type": "application/json"},
                    {"topic": "x"}, {"kid": b"\x01"}):
        for n in (0, 23, 24, 300):
            data = seal(signer, b"p" * n, **changes)
            assert e.overhead(payload_len=n, **fields(**changes)) == len(data) - n
    # the module docstring's typical figure: 30-char id, 16-byte kid, 48-char topic, CoAP 50
    assert len(KID) == 16
    assert len(TOPIC) == 48
    assert e.overhead(payload_len=10, **fields(counter=5)) == 208
    assert "adds 208 bytes" in " ".join((e.__doc__ or "").split())


def test_sig_structure_heads() -> None:
    for n in (0, 23, 24, 255, 256, 65535, 65536):
        body = b"a" * n
        assert e.sig_structure(b"\xa1\x01\x26", body, b"aad") == cbor2.dumps(
            ["Signature1", b"\xa1\x01\x26", b"aad", body])


# -- committed vectors --------------------------------------------------------------------------


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_envelope_vectors", ROOT / "scripts" / "make_envelope_vectors.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_committed_vectors_equal_the_generator_output() -> None:
    for name, text in _generator().render().items():
        assert (VECTORS / name).read_text() == text, f"regenerate {name}"


def test_valid_vectors_verify_independently() -> None:
    doc = json.loads((VECTORS / "valid.json").read_text())
    key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), bytes.fromhex(doc["device_public_key"]))
    assert len(doc["vectors"]) >= 3
    for v in doc["vectors"]:
        data = bytes.fromhex(v["envelope"])
        env = e.open_envelope(data)
        assert env.device_id == v["device_id"]
        assert env.counter == v["counter"]
        assert env.timestamp == v["timestamp"]
        assert env.topic == v["topic"]
        assert env.content_type == v["content_type"]
        assert env.kid.hex() == v["kid"]
        assert env.credential_serial == doc["credential_serial"]
        assert env.payload.hex() == v["payload"]
        assert env.protected.hex() == v["protected"]
        assert env.to_be_signed().hex() == v["to_be_signed"]
        assert len(data) == v["size"]
        e.verify_signature(env, key)


def test_malformed_vectors_are_refused() -> None:
    doc = json.loads((VECTORS / "malformed.json").read_text())
    for v in doc["vectors"]:
        with pytest.raises(InputError) as exc:
            e.open_envelope(bytes.fromhex(v["envelope"]))
        assert exc.value.reason == "malformed_envelope", v["name"]
