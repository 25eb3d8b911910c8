"""Property tests for iotrust.core.policy: isolation between devices and exact MQTT matching."""

from __future__ import annotations

import itertools
import re

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from iotrust.core.lifecycle import DeviceState
from iotrust.core.policy import (
    Action,
    Policy,
    Rule,
    decide,
    filter_covers,
    render,
)
from iotrust.errors import InputError

A = "dev-" + "a" * 26
B = "dev-" + "b" * 26
C = "dev-" + "c" * 26

device_ids = st.sampled_from([A, B, C])
states = st.sampled_from([DeviceState.ACTIVE, DeviceState.QUARANTINED])
actions = st.sampled_from([Action.PUBLISH, Action.SUBSCRIBE])
literals = st.sampled_from(["devices", "telemetry", "cmd", "x", "", "dev", "$SYS", "a"])


@st.composite
def own_templates(draw: st.DrawFn, *, rooted: bool) -> str:
    """Templates a non-shared rule may use; ``rooted``: under ``devices/{device_id}``."""
    prefix = ["devices"] if rooted else draw(st.lists(literals.filter(lambda v: v != "$SYS"),
                                                      max_size=3))
    suffix = draw(st.lists(st.one_of(literals, st.just("+"), st.just("{device_id}")),
                           max_size=4))
    if draw(st.booleans()):
        suffix.append("#")
    return "/".join([*prefix, "{device_id}", *suffix])


@st.composite
def own_policies(draw: st.DrawFn, *, rooted: bool) -> Policy:
    rules = draw(st.lists(st.builds(Rule, actions, own_templates(rooted=rooted)),
                          min_size=1, max_size=6, unique=True))
    return Policy("p", tuple(rules))


request_levels = st.sampled_from(
    ["devices", A, B, C, "telemetry", "cmd", "x", "", "+", "#", "$SYS", "{device_id}", "a",
     "dev"])


@st.composite
def requests(draw: st.DrawFn) -> str:
    return "/".join(draw(st.lists(request_levels, min_size=1, max_size=7)))


# -- a reference matcher, written independently of the implementation --------------------------


def reference_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching by regular expression (the spec's rules, stated directly)."""
    if topic_filter[:1] in {"+", "#"} and topic.startswith("$"):
        return False
    pattern = ""
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            pattern = pattern + "(/.*)?" if i else ".*"
            break
        pattern += ("/" if i else "") + ("[^/]*" if part == "+" else re.escape(part))
    return re.fullmatch(pattern, topic, flags=re.DOTALL) is not None


def valid_filter(text: str) -> bool:
    parts = text.split("/")
    return text != "" and all(p in {"+", "#"} or ("+" not in p and "#" not in p) for p in parts) \
        and "#" not in parts[:-1]


# -- isolation -----------------------------------------------------------------------------------


@given(own_policies(rooted=True), states, actions, requests(), device_ids)
@settings(max_examples=300)
def test_own_policies_never_leave_the_devices_subtree(policy: Policy, state: DeviceState,
                                                      action: Action, request: str,
                                                      device: str) -> None:
    decision = decide(device, state, policy, action, request)
    if decision.allowed:
        assert request == f"devices/{device}" or request.startswith(f"devices/{device}/")


@given(own_policies(rooted=False), actions, requests())
@settings(max_examples=300)
def test_no_request_is_allowed_for_two_devices(policy: Policy, action: Action,
                                               request: str) -> None:
    """Any non-shared policy, wherever its device level sits, separates devices."""
    allowed = [dev for dev in (A, B, C)
               if decide(dev, DeviceState.ACTIVE, policy, action, request).allowed]
    assert len(allowed) <= 1
    if allowed:
        assert allowed[0] in request.split("/")


@given(st.lists(st.one_of(literals, request_levels, st.just("{device_id}")), min_size=1,
                max_size=6), st.booleans())
def test_rule_validation_refuses_every_cross_device_template(levels: list[str],
                                                             tail: bool) -> None:
    template = "/".join([*levels, "#"] if tail else levels)
    try:
        rule = Rule(Action.SUBSCRIBE, template)
    except InputError as exc:
        reason = exc.reason
    else:
        reason = None
    if reason is not None:
        assert reason in {"policy_invalid", "policy_cross_device"}
        return
    parts = template.split("/")
    device_level = parts.index("{device_id}")
    assert not {"+", "#"} & set(parts[: device_level + 1])
    assert not any(p.startswith("dev-") for p in parts)
    assert not parts[0].startswith("$")
    assert rule.template == template


# -- decide agrees with render + filter_covers, and filter_covers with brute force ----------------


@given(st.lists(st.builds(Rule, actions, own_templates(rooted=False)), min_size=1,
                max_size=6, unique=True),
       st.lists(st.builds(Rule, actions, st.sampled_from(
           ["#", "+/x", f"x/{A}", f"x/{A}/{{device_id}}/#", "$SYS/#", "fleet/+/y", "a/#"]),
           st.just(True)), max_size=3, unique=True),
       actions, requests(), device_ids)
@settings(max_examples=400)
def test_decide_agrees_with_rendered_rules(own: list[Rule], shared: list[Rule], action: Action,
                                           request: str, device: str) -> None:
    policy = Policy("p", (*own, *shared))
    decision = decide(device, DeviceState.ACTIVE, policy, action, request)
    wildcard = "+" in request or "#" in request
    if not valid_filter(request) or (action is Action.PUBLISH and wildcard):
        assert decision.reason == "invalid_topic"
        return
    expected = any(r.action is action and filter_covers(r.topic, request)
                   for r in render(policy, device))
    assert decision.allowed is expected
    assert decision.reason == ("allowed" if expected else "no_matching_rule")


FILTER_LEVELS = ["a", "b", "", "$s", "+", "#"]
TOPIC_LEVELS = ["a", "b", "", "$s", "c"]
# Every topic of up to 4 levels over an alphabet with one level no filter names ("c"): enough
# witnesses for filters of up to 3 levels.
ALL_TOPICS = ["/".join(t) for n in range(1, 5) for t in itertools.product(TOPIC_LEVELS, repeat=n)]


@st.composite
def small_filters(draw: st.DrawFn) -> str:
    text = "/".join(draw(st.lists(st.sampled_from(FILTER_LEVELS), min_size=1, max_size=3)))
    assume(valid_filter(text))
    return text


@given(small_filters(), small_filters())
@settings(max_examples=400)
def test_filter_covers_agrees_with_brute_force(rule: str, requested: str) -> None:
    brute = all(reference_matches(rule, t) for t in ALL_TOPICS if reference_matches(requested, t))
    assert filter_covers(rule, requested) is brute


@given(small_filters(), st.sampled_from(ALL_TOPICS))
@settings(max_examples=400)
def test_topic_matching_agrees_with_the_reference(rule: str, topic: str) -> None:
    assert filter_covers(rule, topic) is reference_matches(rule, topic)
