"""The Mosquitto ACL generator: layouts, deviations, injection refusals (pure, no broker)."""

from __future__ import annotations

import pytest

from iotrust.adapters.mqtt.acl import AclMode, build_acl, check_topic, filters_intersect
from iotrust.core.policy import DEFAULT_POLICY, QUARANTINE_POLICY, Action, Policy, Rule, render
from iotrust.errors import InputError
from iotrust.ports import TopicAccess

PLACEHOLDER = "dev-" + "a" * 26
A = "dev-" + "b" * 26
B = "dev-" + "c" * 26
C = "dev-" + "d" * 26


def rules(policy, device_id):
    return tuple((r.action.value, r.topic) for r in render(policy, device_id))


DEFAULT = TopicAccess(PLACEHOLDER, rules(DEFAULT_POLICY, PLACEHOLDER))


def entry(device_id, policy):
    return TopicAccess(device_id, None if policy is None else rules(policy, device_id))


def lines(text):
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_default_fleet_is_patterns_only_and_size_independent_of_fleet():
    small = build_acl([entry(A, DEFAULT_POLICY)], default=DEFAULT)
    many = [entry("dev-" + f"{i:026b}".replace("0", "a").replace("1", "b"), DEFAULT_POLICY)
            for i in range(500)]
    big = build_acl(many, default=DEFAULT)
    assert small.mode is AclMode.PATTERN
    assert small.text == big.text
    assert big.user_blocks == 0
    assert "pattern write devices/%u/telemetry" in big.text
    assert "pattern read devices/%u/commands/#" in big.text
    assert "user " not in big.text


def test_quarantined_device_gets_denies_for_lost_rules_and_its_own_allows():
    acl = build_acl([entry(A, DEFAULT_POLICY), entry(B, QUARANTINE_POLICY)], default=DEFAULT)
    assert acl.mode is AclMode.PATTERN
    body = acl.text.split(f"user {B}\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert f"topic deny devices/{B}/telemetry" in body
    assert f"topic deny devices/{B}/commands/#" in body
    assert f"topic write devices/{B}/attestation" in body
    # kept by both policies: neither denied nor repeated as a deny
    assert f"topic deny devices/{B}/updates/#" not in body
    assert f"user {A}" not in acl.text


def test_no_policy_denies_everything():
    acl = build_acl([entry(C, None)], default=DEFAULT)
    assert f"user {C}\ntopic deny #" in acl.text


def test_overlapping_deviation_falls_back_to_explicit_blocks():
    # keeps devices/{id}/telemetry/# but loses devices/{id}/telemetry: a deny would remove both
    odd = Policy("odd", (Rule(Action.PUBLISH, "devices/{device_id}/telemetry/#"),))
    acl = build_acl([entry(A, DEFAULT_POLICY), entry(B, odd), entry(C, None)], default=DEFAULT)
    assert acl.mode is AclMode.EXPLICIT
    assert acl.fallback_reason
    assert "pattern" not in "\n".join(lines(acl.text))
    assert f"user {A}\n" in acl.text
    assert f"topic write devices/{A}/telemetry" in acl.text
    assert f"topic write devices/{B}/telemetry/#" in acl.text
    assert f"user {C}" not in acl.text  # no block: nothing allowed
    with pytest.raises(InputError) as exc:
        build_acl([entry(B, odd)], default=DEFAULT, mode=AclMode.PATTERN)
    assert exc.value.reason == "acl_not_expressible"


def test_services_get_their_blocks():
    svc = TopicAccess("ingest@iotrust", (("subscribe", "devices/#"),))
    acl = build_acl([], default=DEFAULT, services=[svc])
    assert "user ingest@iotrust\ntopic read devices/#" in acl.text


@pytest.mark.parametrize("topic", ["a b", "a\nuser admin@iotrust", "a/%c", "", "a/#/b", "a+/b",
                                   "x" * 2000, "a\x00"])
def test_topics_that_could_inject_lines_are_refused(topic):
    with pytest.raises(InputError) as exc:
        check_topic(topic)
    assert exc.value.reason == "invalid_topic"
    with pytest.raises(InputError):
        build_acl([TopicAccess(A, (("publish", topic),))], default=DEFAULT)


@pytest.mark.parametrize("name", ["admin", "dev-A", "a b", "x@y\nuser z", ""])
def test_usernames_must_be_device_ids_or_service_names(name):
    with pytest.raises(InputError) as exc:
        build_acl([TopicAccess(name, None)], default=DEFAULT)
    assert exc.value.reason == "invalid_username"


def test_unknown_action_refused():
    with pytest.raises(InputError) as exc:
        build_acl([TopicAccess(A, (("delete", "a"),))], default=DEFAULT)
    assert exc.value.reason == "invalid_action"


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("a/b", "a/b", True), ("a/b", "a/c", False), ("a/+", "a/c", True), ("a/#", "a", True),
    ("a/#", "b/#", False), ("a/b/c", "a/b", False), ("+/+", "a/b", True), ("#", "x/y", True),
    ("a/+/c", "a/b/d", False),
])
def test_filters_intersect(a, b, expected):
    assert filters_intersect(a, b) is expected
    assert filters_intersect(b, a) is expected
