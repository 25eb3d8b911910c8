"""Every onboarding message decoder, fed anything, raises only InputError(malformed_request)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from iotrust.core.onboarding import messages as m
from iotrust.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
HAPPY = json.loads((ROOT / "tests/vectors/onboarding/happy_path.json").read_text("utf-8"))
CLASSES: dict[str, Any] = {
    "hello": m.HelloRequest, "hello_response": m.HelloResponse, "attest": m.AttestRequest,
    "attest_response": m.AttestResponse, "confirm": m.ConfirmRequest,
}
VALID = {name: json.loads(HAPPY["messages"][name]) for name in CLASSES}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


def decode_only_input_errors(cls: Any, data: bytes) -> None:
    try:
        message = cls.from_wire(data)
    except InputError as exc:
        reason = exc.reason
    else:  # whatever was accepted re-encodes and decodes to the same value
        assert cls.from_wire(message.to_wire()) == message
        return
    assert reason == "malformed_request"


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(CLASSES)), data=st.binary(max_size=512))
def test_arbitrary_bytes(name: str, data: bytes) -> None:
    decode_only_input_errors(CLASSES[name], data)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(CLASSES)),
       value=st.dictionaries(st.text(max_size=15), json_values, max_size=8))
def test_arbitrary_json_objects(name: str, value: dict[str, Any]) -> None:
    decode_only_input_errors(CLASSES[name], json.dumps(value).encode())


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(CLASSES)), data=st.data())
def test_valid_messages_with_one_field_replaced(name: str, data: st.DataObject) -> None:
    obj = dict(VALID[name])
    key = data.draw(st.sampled_from(sorted(obj)))
    obj[key] = data.draw(json_values)
    decode_only_input_errors(CLASSES[name], json.dumps(obj).encode())


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(CLASSES)), data=st.data())
def test_valid_messages_with_bytes_flipped(name: str, data: st.DataObject) -> None:
    wire = bytearray(HAPPY["messages"][name].encode())
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(wire) - 1))
        wire[index] = data.draw(st.integers(0, 255))
    decode_only_input_errors(CLASSES[name], bytes(wire))


@settings(max_examples=100, deadline=None)
@given(serial=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z"),
       nonce=st.binary(min_size=32, max_size=32),
       chain=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=4),
       storage=st.none() | st.sampled_from(sorted(m.KEY_STORAGE_CLAIMS)))
def test_hello_round_trip(serial: str, nonce: bytes, chain: list[bytes],
                          storage: str | None) -> None:
    hello = m.HelloRequest(serial=serial, factory_chain=tuple(chain), device_nonce=nonce,
                           key_storage=storage)
    assert m.HelloRequest.from_wire(hello.to_wire()) == hello
