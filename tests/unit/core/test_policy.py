"""Unit tests for iotrust.core.policy: rule validation, rendering, the decision table, matching."""

from __future__ import annotations

import pytest

from iotrust.core.lifecycle import DeviceState
from iotrust.core.policy import (
    DEFAULT_POLICY,
    MAX_REQUEST_BYTES,
    MAX_RULES,
    QUARANTINE_POLICY,
    REASONS,
    Action,
    Decision,
    Policy,
    RenderedRule,
    Rule,
    decide,
    effective_policy,
    filter_covers,
    merge_policies,
    render,
    rules_from_json,
    rules_to_json,
)
from iotrust.errors import InputError

A = "dev-" + "a" * 26
B = "dev-" + "b" * 26
PUB, SUB = Action.PUBLISH, Action.SUBSCRIBE
ACTIVE, QUARANTINED = DeviceState.ACTIVE, DeviceState.QUARANTINED


def refused(reason: str, template: str, *, shared: bool = False,
            action: Action | str = PUB) -> None:
    with pytest.raises(InputError) as info:
        Rule(action, template, shared)  # type: ignore[arg-type]
    assert info.value.reason == reason, template


# -- rule validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("template", [
    "",                                   # empty
    "devices/{device_id}/#/x",            # '#' not last
    "devices/{device_id}/a#",             # '#' inside a level
    "devices/{device_id}/a+",             # '+' inside a level
    "devices/{device_id}/+x/y",
    "devices/{device_id}/a\x00b",         # NUL
    "devices/{device_id}/a b",            # whitespace (breaks an ACL line)
    "devices/{device_id}/a\nb",           # newline
    "devices/{device_id}/%u",             # Mosquitto pattern substitution
    "devices/{device_id}/" + "x" * 256,   # > 256 bytes
    "devices/{device_id}/" + "/".join("l" * 1 for _ in range(15)),  # 17 levels
    "devices/{device_id}/{model}",        # unknown placeholder
    "devices/{device_id}x/telemetry",     # placeholder not a whole level
    "devices/{device_id/telemetry",       # broken placeholder
    "devices/}/{device_id}",
    "devices/{device_id}/\ud800",         # lone surrogate: not UTF-8
])
def test_malformed_templates_are_policy_invalid(template: str) -> None:
    refused("policy_invalid", template)
    refused("policy_invalid", template, shared=True)


def test_template_bounds_are_inclusive() -> None:
    sixteen = "devices/{device_id}/" + "/".join("l" for _ in range(14))
    assert len(sixteen.split("/")) == 16
    Rule(PUB, sixteen)
    long_ok = "devices/{device_id}/" + "x" * (256 - len("devices/{device_id}/"))
    assert len(long_ok.encode()) == 256
    Rule(PUB, long_ok)


@pytest.mark.parametrize("template", [
    "devices/telemetry",                  # no placeholder
    "#",                                  # everything
    "+/telemetry",
    "devices/+/telemetry",                # wildcard before the device level
    "devices/+/{device_id}/x",
    "devices/#",
    "+/{device_id}/telemetry",
    f"devices/{B}/telemetry",             # literal device id
    f"devices/{{device_id}}/peer/{B}",    # literal id after the device level
    "devices/{device_id}/dev-x",          # starts like a device id
    f"devices/{{device_id}}/x{B}y",       # id embedded in a level
    "$SYS/{device_id}/x",                 # $SYS
    "$share/g/devices/{device_id}/x",     # any $-topic
])
def test_rules_reaching_other_devices_are_refused_unless_shared(template: str) -> None:
    refused("policy_cross_device", template)
    assert Rule(PUB, template, shared=True).shared


def test_own_rules_are_accepted() -> None:
    for template in ("devices/{device_id}/telemetry", "devices/{device_id}/+/x",
                     "devices/{device_id}/#", "{device_id}", "{device_id}/#",
                     "a//{device_id}/", "devices/{device_id}/{device_id}",
                     "{device_id}/../+"):
        assert Rule(SUB, template).template == template


def test_action_and_flag_types() -> None:
    assert Rule("publish", "devices/{device_id}/t").action is PUB  # type: ignore[arg-type]
    refused("policy_invalid", "devices/{device_id}/t", action="write")
    with pytest.raises(TypeError):
        Rule(PUB, "devices/{device_id}/t", "yes")  # type: ignore[arg-type]
    refused("policy_invalid", 5)  # type: ignore[arg-type]


def test_policy_validation() -> None:
    rule = Rule(PUB, "devices/{device_id}/t")
    with pytest.raises(InputError) as info:
        Policy("p", ())
    assert info.value.reason == "policy_invalid"
    with pytest.raises(InputError) as info:
        Policy("p", (rule, rule))
    assert info.value.reason == "policy_invalid"
    with pytest.raises(InputError) as info:
        Policy("Not A Slug", (rule,))
    assert info.value.reason == "invalid_policy_name"
    many = tuple(Rule(PUB, f"devices/{{device_id}}/t{i}") for i in range(MAX_RULES + 1))
    with pytest.raises(InputError):
        Policy("p", many)
    assert len(Policy("p", many[:MAX_RULES]).rules) == MAX_RULES
    with pytest.raises(TypeError):
        Policy("p", ("devices/{device_id}/t",))  # type: ignore[arg-type]
    assert Policy("p", [rule]).rules == (rule,)  # type: ignore[arg-type]


def test_shared_rules_are_listed() -> None:
    shared = Rule(SUB, "fleet/announcements", shared=True)
    policy = Policy("p", (Rule(PUB, "devices/{device_id}/t"), shared))
    assert policy.shared_rules == (shared,)
    assert DEFAULT_POLICY.shared_rules == ()
    assert QUARANTINE_POLICY.shared_rules == ()


# -- built-in policies, rendering, effective policy -------------------------------------------


def test_default_and_quarantine_policies() -> None:
    assert render(DEFAULT_POLICY, A) == (
        RenderedRule(PUB, f"devices/{A}/telemetry"), RenderedRule(PUB, f"devices/{A}/status"),
        RenderedRule(PUB, f"devices/{A}/events"), RenderedRule(SUB, f"devices/{A}/commands/#"),
        RenderedRule(SUB, f"devices/{A}/config/#"), RenderedRule(SUB, f"devices/{A}/updates/#"))
    assert set(render(QUARANTINE_POLICY, A)) == {
        RenderedRule(SUB, f"devices/{A}/updates/#"), RenderedRule(PUB, f"devices/{A}/attestation"),
        RenderedRule(PUB, f"devices/{A}/quarantine/status")}


def test_render_refuses_a_bad_device_id() -> None:
    for bad in ("dev-x", "+", "#", "a/b", f"{A}/x", ""):
        with pytest.raises(InputError) as info:
            render(DEFAULT_POLICY, bad)
        assert info.value.reason == "invalid_device_id"


def test_effective_policy() -> None:
    custom = Policy("custom", (Rule(PUB, "devices/{device_id}/x"),))
    assert effective_policy(ACTIVE, None) is DEFAULT_POLICY
    assert effective_policy(ACTIVE, custom) is custom
    assert effective_policy(QUARANTINED, custom) is QUARANTINE_POLICY
    assert effective_policy(QUARANTINED, None) is QUARANTINE_POLICY
    for state in (DeviceState.EXPECTED, DeviceState.RETIRED, None):
        assert effective_policy(state, custom) is None


def test_merge_keeps_order_and_drops_duplicates() -> None:
    extra = Policy("extra", (Rule(PUB, "devices/{device_id}/telemetry"),
                             Rule(PUB, "devices/{device_id}/extra")))
    merged = merge_policies("merged", [DEFAULT_POLICY, extra])
    assert merged.rules == (*DEFAULT_POLICY.rules, Rule(PUB, "devices/{device_id}/extra"))


def test_rules_json_round_trip_and_refusals() -> None:
    policy = Policy("p", (Rule(PUB, "devices/{device_id}/t"), Rule(SUB, "fleet/#", shared=True)))
    assert rules_from_json(rules_to_json(policy.rules)) == policy.rules
    for bad in ({}, "x", [1], [{"action": "publish"}], [{"action": "x", "template": "a"}],
                [{"action": "publish", "template": "devices/{device_id}/t", "shared": "no"}],
                [{"action": "publish", "template": "devices/{device_id}/t", "extra": 1}],
                [{"action": "publish", "template": "devices/+/t"}]):
        with pytest.raises(InputError):
            rules_from_json(bad)


# -- the decision table --------------------------------------------------------------------------


def d(state: DeviceState | None, action: Action, topic: str, *,
      policy: Policy | None = None, device_id: str | None = A) -> Decision:
    return decide(device_id, state, policy, action, topic)


def test_unknown_retired_and_expected_devices_are_denied_everything() -> None:
    topic = f"devices/{A}/telemetry"
    assert d(None, PUB, topic) == Decision(False, "unknown_device")
    assert d(ACTIVE, PUB, topic, device_id=None) == Decision(False, "unknown_device")
    assert d(ACTIVE, PUB, topic, device_id="not-a-device") == Decision(False, "unknown_device")
    assert d(ACTIVE, PUB, "devices/a/b/telemetry", device_id="a/b").reason == "unknown_device"
    assert d(DeviceState.RETIRED, PUB, topic) == Decision(False, "device_retired")
    assert d(DeviceState.EXPECTED, PUB, topic) == Decision(False, "device_not_active")
    assert d(DeviceState.EXPECTED, SUB, f"devices/{A}/updates/#").reason == "device_not_active"


@pytest.mark.parametrize(("action", "suffix", "active", "quarantined"), [
    (PUB, "telemetry", "allowed", "quarantined"),
    (PUB, "status", "allowed", "quarantined"),
    (PUB, "events", "allowed", "quarantined"),
    (PUB, "attestation", "no_matching_rule", "allowed"),
    (PUB, "quarantine/status", "no_matching_rule", "allowed"),
    (PUB, "commands/reboot", "no_matching_rule", "quarantined"),
    (SUB, "commands/#", "allowed", "quarantined"),
    (SUB, "commands/reboot", "allowed", "quarantined"),
    (SUB, "commands", "allowed", "quarantined"),      # '#' matches its parent level
    (SUB, "commands/+/x", "allowed", "quarantined"),
    (SUB, "config/#", "allowed", "quarantined"),
    (SUB, "updates/#", "allowed", "allowed"),
    (SUB, "updates/firmware/+", "allowed", "allowed"),
    (SUB, "updates", "allowed", "allowed"),
    (SUB, "#", "no_matching_rule", "quarantined"),    # wider than any rule
    (SUB, "+/#", "no_matching_rule", "quarantined"),
    (SUB, "telemetry", "no_matching_rule", "quarantined"),
])
def test_default_and_quarantine_decisions(action: Action, suffix: str, active: str,
                                          quarantined: str) -> None:
    topic = f"devices/{A}/{suffix}"
    assert d(ACTIVE, action, topic).reason == active
    assert d(ACTIVE, action, topic).allowed is (active == "allowed")
    assert d(QUARANTINED, action, topic).reason == quarantined
    custom = Policy("custom", (Rule(PUB, "devices/{device_id}/other"),))
    assert d(QUARANTINED, action, topic, policy=custom).reason == quarantined


def test_other_devices_topics_are_denied() -> None:
    for action, topic in ((PUB, f"devices/{B}/telemetry"), (SUB, f"devices/{B}/commands/#"),
                          (SUB, "devices/+/commands/#"), (SUB, "devices/#"), (SUB, "#"),
                          (SUB, f"devices/{B}/commands"), (PUB, f"devices/{A}x/telemetry"),
                          (PUB, f"x/devices/{A}/telemetry"), (PUB, "devices/{device_id}/telemetry"),
                          (SUB, "devices/{device_id}/commands/#")):
        assert d(ACTIVE, action, topic).reason == "no_matching_rule", topic


@pytest.mark.parametrize("topic", [
    f"devices/{A}/telemetry/#", f"devices/{A}/+", "#", "+", f"devices/{A}/tele+metry",
    "", f"devices/{A}/a\x00", "x" * (MAX_REQUEST_BYTES + 1), "/".join(["a"] * 65),
    f"devices/{A}/\ud800",
])
def test_invalid_publish_topics(topic: str) -> None:
    assert d(ACTIVE, PUB, topic) == Decision(False, "invalid_topic")
    assert d(QUARANTINED, PUB, topic) == Decision(False, "invalid_topic")


@pytest.mark.parametrize("topic", [
    f"devices/{A}/commands/#/x", f"devices/{A}/commands/a#", f"devices/{A}/commands/+a", "",
    "a/#/b",
])
def test_invalid_subscription_filters(topic: str) -> None:
    assert d(ACTIVE, SUB, topic) == Decision(False, "invalid_topic")


def test_request_bounds_are_inclusive() -> None:
    policy = Policy("wide", (Rule(PUB, "devices/{device_id}/#"),))
    prefix = f"devices/{A}/"
    longest = prefix + "x" * (MAX_REQUEST_BYTES - len(prefix))
    assert d(ACTIVE, PUB, longest, policy=policy).allowed
    assert d(ACTIVE, PUB, longest + "x", policy=policy).reason == "invalid_topic"
    deepest = prefix + "/".join(["l"] * 62)
    assert len(deepest.split("/")) == 64
    assert d(ACTIVE, PUB, deepest, policy=policy).allowed
    assert d(ACTIVE, PUB, deepest + "/l", policy=policy).reason == "invalid_topic"
    multibyte = prefix + "é" * ((MAX_REQUEST_BYTES - len(prefix)) // 2 + 1)
    assert d(ACTIVE, PUB, multibyte, policy=policy).reason == "invalid_topic"


def test_non_string_requests_are_invalid_not_errors() -> None:
    assert d(ACTIVE, PUB, ["x"]).reason == "invalid_topic"  # type: ignore[arg-type]
    assert d(ACTIVE, PUB, 5).reason == "invalid_topic"  # type: ignore[arg-type]
    assert d(ACTIVE, "publish", f"devices/{A}/x").reason == "invalid_topic"  # type: ignore[arg-type]


def test_every_reason_is_documented() -> None:
    seen = {d(None, PUB, "x").reason, d(DeviceState.RETIRED, PUB, "x").reason,
            d(DeviceState.EXPECTED, PUB, "x").reason, d(QUARANTINED, PUB, "x").reason,
            d(ACTIVE, PUB, "x").reason, d(ACTIVE, PUB, "#").reason,
            d(ACTIVE, PUB, f"devices/{A}/telemetry").reason}
    assert seen == REASONS


def test_plus_rules_and_shared_rules() -> None:
    policy = Policy("p", (
        Rule(PUB, "devices/{device_id}/+/data"),
        Rule(SUB, "devices/{device_id}/+/cmd/#"),
        Rule(SUB, "fleet/+/announce", shared=True),
        Rule(PUB, f"devices/{B}/inbox", shared=True),
        Rule(SUB, "#", shared=True),
    ))
    assert d(ACTIVE, PUB, f"devices/{A}/sensor1/data", policy=policy).allowed
    assert d(ACTIVE, PUB, f"devices/{A}//data", policy=policy).allowed  # '+' matches empty
    assert not d(ACTIVE, PUB, f"devices/{A}/data", policy=policy).allowed
    assert not d(ACTIVE, PUB, f"devices/{A}/a/b/data", policy=policy).allowed
    assert d(ACTIVE, SUB, f"devices/{A}/x/cmd", policy=policy).allowed
    assert d(ACTIVE, SUB, f"devices/{A}/+/cmd/#", policy=policy).allowed
    assert d(ACTIVE, PUB, f"devices/{B}/inbox", policy=policy).allowed  # explicit shared rule
    assert d(ACTIVE, SUB, "fleet/eu/announce", policy=policy).allowed
    assert d(ACTIVE, SUB, "anything/at/all", policy=policy).allowed  # shared '#'
    assert d(ACTIVE, SUB, "#", policy=policy).allowed
    assert not d(ACTIVE, SUB, "$SYS/broker/uptime", policy=policy).allowed  # '#' skips $
    assert not d(ACTIVE, SUB, "$SYS/#", policy=policy).allowed


def test_shared_literal_own_id_is_matched_exactly() -> None:
    policy = Policy("p", (Rule(PUB, f"x/{A}/{{device_id}}/y", shared=True),))
    assert d(ACTIVE, PUB, f"x/{A}/{A}/y", policy=policy).allowed
    assert not d(ACTIVE, PUB, f"x/{A}/{B}/y", policy=policy).allowed
    assert d(ACTIVE, PUB, f"x/{A}/{B}/y", policy=policy, device_id=B).allowed


def test_decisions_are_stable_across_many_devices() -> None:
    """The per-device cache is memoisation only: clearing it changes nothing."""
    ids = ["dev-" + c * 26 for c in "cdefg"]
    for device in ids * 3:
        assert decide(device, ACTIVE, None, PUB, f"devices/{device}/telemetry").allowed
        assert not decide(device, ACTIVE, None, PUB, f"devices/{A}/telemetry").allowed
    DEFAULT_POLICY._compiled._cache.clear()
    assert decide(ids[0], ACTIVE, None, PUB, f"devices/{ids[0]}/telemetry").allowed


# -- filter_covers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "requested", "expected"), [
    ("#", "#", True),
    ("#", "a/b/c", True),
    ("#", "+/#", True),
    ("#", "/", True),
    ("#", "$SYS/x", False),              # '#' never matches $-topics
    ("#", "$SYS/#", False),
    ("+/#", "$SYS/x", False),
    ("+/#", "#", True),                   # every topic has a first level
    ("+/#", "$SYS/#", False),
    ("+/+/#", "#", False),                # "#" matches one-level topics
    ("a/+/#", "a/#", False),              # "a/#" matches "a"
    ("a/+/#", "a/+", True),
    ("+", "$SYS", False),
    ("+/x", "+/x", True),                 # '+' requests match no $-topics either
    ("$SYS/#", "$SYS/broker/x", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/#", "#", False),
    ("a/#", "a", True),                   # parent level
    ("a/#", "a/#", True),
    ("a/#", "a/+", True),
    ("a/#", "a/+/b/#", True),
    ("a/#", "b", False),
    ("a/#", "#", False),
    ("a/+", "a", False),
    ("a/+", "a/b", True),
    ("a/+", "a/", True),                  # '+' matches an empty level
    ("a/+", "a/+", True),
    ("a/+", "a/#", False),                # '#' includes a and a/b/c
    ("a/+", "a/b/c", False),
    ("a/b", "a/+", False),
    ("a/b", "a/b", True),
    ("a/b", "a/b/", False),
    ("+/+", "a/b", True),
    ("+/b", "+/+", False),
    ("a/+/c", "a/+/c", True),
    ("a/+/c/#", "a/b/c", True),
    ("a", "a/#", False),
    ("", "a", False),                     # invalid filters cover nothing
    ("a/#/b", "a/x/b", False),
    ("a", "a\x00", False),
])
def test_filter_covers(rule: str, requested: str, expected: bool) -> None:
    assert filter_covers(rule, requested) is expected
