"""Every decoder not covered by its own property module raises only its typed error on any input.

The audit (issue 10, "hostile input"), decoder by decoder, and where its property test lives:

| decoder                                   | property test                                   |
| ----------------------------------------- | ----------------------------------------------- |
| PEM / DER certificates, chains, CSR, CRL, | tests/property/test_pki_decoders.py             |
| public keys, check_csr, factory identity  |                                                 |
| COSE_Sign1 envelope, generic COSE         | tests/property/test_envelope_properties.py      |
| onboarding JSON messages (5)              | tests/property/test_onboarding_decoders.py      |
| canonical JSON (parse_json_object)        | tests/property/test_voucher_decoder.py + here   |
| vouchers                                  | tests/property/test_voucher_decoder.py          |
| YAML hardware profiles                    | tests/property/test_hardware_profiles.py        |
| policy topic matching (decide, filters)   | tests/property/test_policy.py + here            |
| rotation JSON messages (5)                | here                                            |
| event-log anchors                         | here                                            |
| key references                            | here                                            |
| policy templates and stored rules         | here                                            |
| crypto timelines (YAML), lifetimes        | here                                            |
| release versions, TUF custom fields       | here                                            |
| protocol times                            | here                                            |
| Mosquitto log lines (zombie detection)    | here                                            |
| update keyring file                       | here                                            |

"Only InputError" means: the decoder returns a value or raises :class:`InputError` (or, where
its contract says so, the one documented :class:`TrustError` reason), never ``KeyError``,
``ValueError``, ``TypeError``, ``RecursionError``, ``UnicodeError`` or an unrelated error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotrust.adapters.keys.refs import parse_key_ref
from iotrust.adapters.tuf.keyring import Keyring
from iotrust.core import canonical, events, hardware, policy, rotation, updates, zombies
from iotrust.core.lifecycle import DeviceState
from iotrust.core.onboarding import _wire
from iotrust.errors import InputError, IotrustError, TrustError

_SETTINGS = settings(max_examples=100, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
# Values that look like what the decoders expect (base64 text, times, ids) reach deeper checks.
wire_like = st.one_of(
    json_values,
    st.from_regex(r"\A[A-Za-z0-9_\-]{0,100}={0,2}\Z"),
    st.from_regex(r"\A20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z"),
    st.from_regex(r"\Adev-[a-z2-7]{26}\Z"),
    st.from_regex(r"\A[0-9a-f]{1,48}\Z"),
    st.integers(min_value=-(2**70), max_value=2**70),
)


def only_input_error(decode: Callable[[], object]) -> IotrustError | None:
    """Run ``decode``; return the InputError it raised (None if it returned); fail otherwise."""
    try:
        decode()
    except InputError as exc:
        caught: IotrustError = exc
    else:
        return None
    assert caught.reason, "a typed error carries a reason code"
    return caught


# --- rotation messages ---------------------------------------------------------------------------

ROTATION: dict[str, Any] = {
    "begin": rotation.BeginRequest, "begin_response": rotation.BeginResponse,
    "complete": rotation.CompleteRequest, "complete_response": rotation.CompleteResponse,
    "confirm": rotation.ConfirmRequest,
}


@_SETTINGS
@given(name=st.sampled_from(sorted(ROTATION)), data=st.binary(max_size=1024))
def test_rotation_messages_arbitrary_bytes(name: str, data: bytes) -> None:
    only_input_error(lambda: ROTATION[name].from_wire(data))


@_SETTINGS
@given(name=st.sampled_from(sorted(ROTATION)), data=st.data())
def test_rotation_messages_with_the_right_keys_and_any_values(name: str,
                                                               data: st.DataObject) -> None:
    cls = ROTATION[name]
    obj = data.draw(st.fixed_dictionaries(dict.fromkeys(sorted(cls.FIELDS), wire_like)))
    wire = json.dumps(obj).encode()
    if only_input_error(lambda: cls.from_wire(wire)) is None:
        message = cls.from_wire(wire)
        assert cls.from_wire(message.to_wire()) == message


@_SETTINGS
@given(name=st.sampled_from(sorted(ROTATION)),
       value=st.dictionaries(st.text(max_size=15), json_values, max_size=8))
def test_rotation_messages_arbitrary_json_objects(name: str, value: dict[str, Any]) -> None:
    only_input_error(lambda: ROTATION[name].from_wire(json.dumps(value).encode()))


# --- event-log anchors ---------------------------------------------------------------------------


@_SETTINGS
@given(text=st.text(max_size=200) | st.from_regex(r"\A[0-9]{0,30}:[0-9a-f]{60,68}\s*\Z"))
def test_event_anchor_any_text(text: str) -> None:
    if only_input_error(lambda: events.parse_anchor(text)) is None:
        head = events.parse_anchor(text)
        assert events.parse_anchor(events.format_anchor(head)) == head


@_SETTINGS
@given(value=json_values)
def test_event_anchor_any_value(value: object) -> None:
    only_input_error(lambda: events.parse_anchor(value))  # type: ignore[arg-type]


# --- key references ------------------------------------------------------------------------------

key_ref_like = st.one_of(
    st.text(max_size=300),
    st.builds(lambda scheme, rest: f"{scheme}:{rest}",
              st.sampled_from(["file", "devfile", "pkcs11", "FILE", ""]),
              st.text(max_size=200)),
    st.builds(lambda parts: "pkcs11:" + ";".join(parts),
              st.lists(st.builds(lambda k, v: f"{k}={v}",
                                 st.sampled_from(["module", "token", "object", "x", ""]),
                                 st.text(max_size=40)), max_size=5)),
)


@_SETTINGS
@given(ref=key_ref_like)
def test_key_ref_any_text(ref: str) -> None:
    if only_input_error(lambda: parse_key_ref(ref)) is None:
        parsed = parse_key_ref(ref)
        assert parse_key_ref(str(parsed)) == parsed


@_SETTINGS
@given(value=json_values)
def test_key_ref_any_value(value: object) -> None:
    only_input_error(lambda: parse_key_ref(value))  # type: ignore[arg-type]


# --- policy templates, stored rules, topic requests ---------------------------------------------

template_like = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(["devices", "{device_id}", "+", "#", "", "$SYS", "{x}", "a b",
                              "telemetry", "{device_id}x", "%u", "\x00"]),
             max_size=20).map("/".join),
)


@_SETTINGS
@given(action=st.sampled_from(["publish", "subscribe", "both", ""]) | st.text(max_size=10),
       template=template_like, shared=st.booleans())
def test_policy_template_any_text(action: str, template: str, shared: bool) -> None:
    only_input_error(lambda: policy.Rule(action, template, shared))  # type: ignore[arg-type]


@_SETTINGS
@given(value=json_values | st.lists(st.fixed_dictionaries(
    {"action": st.sampled_from(["publish", "subscribe"]) | json_scalars,
     "template": template_like | json_scalars},
    optional={"shared": st.booleans() | json_scalars}), max_size=6))
def test_stored_policy_rules_any_json(value: object) -> None:
    if only_input_error(lambda: policy.rules_from_json(value)) is None:
        rules = policy.rules_from_json(value)
        assert policy.rules_from_json(policy.rules_to_json(rules)) == rules


@_SETTINGS
@given(topic=template_like, action=st.sampled_from(list(policy.Action)),
       state=st.sampled_from(list(DeviceState)))
def test_policy_decisions_on_any_topic_never_raise(topic: str, action: policy.Action,
                                                    state: DeviceState) -> None:
    device_id = "dev-" + "a" * 26
    decision = policy.decide(device_id, state, None, action, topic)
    assert isinstance(decision.allowed, bool)
    assert isinstance(policy.filter_covers(topic, topic), bool)


# --- hardware: crypto timelines, lifetimes ------------------------------------------------------


@_SETTINGS
@given(data=st.binary(max_size=2048) | st.text(max_size=2048))
def test_timelines_any_input(data: bytes | str) -> None:
    only_input_error(lambda: hardware.parse_timelines(data))


@_SETTINGS
@given(document=json_values)
def test_timelines_any_yaml_document(document: object) -> None:
    text = json.dumps(document)  # JSON is YAML: every shape of document reaches the schema check
    only_input_error(lambda: hardware.parse_timelines(text))


def test_yaml_depth_and_size_limits_are_input_errors() -> None:
    deep = "a: " + "[" * 500 + "]" * 500
    for text in (deep, "x: " + "y" * (hardware.MAX_TIMELINES_BYTES + 1),
                 "&a [*a, *a]", "a: &x [1]\nb: [*x, *x, *x]"):
        with pytest.raises(InputError):
            hardware.parse_timelines(text)
        with pytest.raises(InputError):
            hardware.parse_profile(text)


@_SETTINGS
@given(text=st.text(max_size=40) | st.from_regex(r"\A\s*[0-9]{1,6}\s*(y|years?)?\s*\Z"))
def test_lifetime_any_text(text: str) -> None:
    if only_input_error(lambda: hardware.parse_lifetime_years(text)) is None:
        assert 1 <= hardware.parse_lifetime_years(text) <= hardware.MAX_LIFETIME_YEARS


# --- updates: versions and TUF custom fields ----------------------------------------------------


@_SETTINGS
@given(text=st.text(max_size=40) | st.from_regex(r"\A[0-9]{1,30}(\.[0-9]{1,30}){0,5}\Z")
       | json_scalars)
def test_release_version_any_value(text: object) -> None:
    only_input_error(lambda: updates.parse_version(text))  # type: ignore[arg-type]


@_SETTINGS
@given(custom=json_values | st.fixed_dictionaries(
    {"kind": st.sampled_from(["release", "config", "other"]) | json_scalars},
    optional={"component": wire_like, "hardware": st.lists(wire_like, max_size=3) | wire_like,
              "release_counter": wire_like, "min_agent_version": wire_like, "scope": wire_like,
              "config_version": wire_like}))
def test_tuf_custom_fields_only_invalid_custom(custom: object) -> None:
    try:
        updates.parse_custom(custom)
    except TrustError as exc:  # the documented boundary: TrustError(invalid_custom)
        reason = exc.reason
    else:
        return
    assert reason == "invalid_custom"


# --- protocol times ------------------------------------------------------------------------------


@_SETTINGS
@given(value=json_values
       | st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z"))
def test_protocol_time_any_value(value: object) -> None:
    only_input_error(lambda: _wire.parse_time(value, "at"))


# --- canonical JSON: depth and size limits -------------------------------------------------------


@_SETTINGS
@given(depth=st.integers(1, 3000), opener=st.sampled_from(["[", '{"a":']))
def test_canonical_json_nesting_is_bounded(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    data = ('{"k":' + opener * depth + "1" + closer * depth + "}").encode()
    result = only_input_error(
        lambda: canonical.parse_json_object(data, max_bytes=1 << 20, max_depth=8))
    if depth + 1 > 8:
        assert result is not None


# --- Mosquitto log lines (zombie detection) ------------------------------------------------------

log_line = st.one_of(
    st.text(max_size=200),
    st.builds(lambda t, rest: f"{t}: {rest}", st.integers(-(2**70), 2**70).map(str),
              st.sampled_from([
                  "New connection from 1.2.3.4:5 on port 8883.",
                  "New client connected from 1.2.3.4:5 as dev-x (p2, c1, k60, u'dev-x').",
                  "OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed",
                  "Client <unknown> disconnected: protocol error."])
              | st.text(max_size=100)),
)


@_SETTINGS
@given(lines=st.lists(log_line, max_size=20))
def test_mosquitto_log_parser_never_raises(lines: list[str]) -> None:
    for item in zombies.parse_mosquitto_log(lines):
        assert item is not None


# --- update keyring file -------------------------------------------------------------------------


@_SETTINGS
@given(data=st.binary(max_size=512)
       | json_values.map(lambda v: json.dumps(v).encode())
       | st.fixed_dictionaries({"version": st.just(1) | json_scalars,
                                "repositories": json_values}).map(lambda v: json.dumps(v).encode()))
def test_update_keyring_any_bytes(data: bytes) -> None:
    only_input_error(lambda: Keyring.from_json(data))
