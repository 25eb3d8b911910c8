"""Least-privilege policies: topic-template rules, their rendering, and the one ``decide`` (§7).

A :class:`Policy` is a named list of allow rules. Each :class:`Rule` allows one MQTT action
(publish or subscribe) on a topic template such as ``devices/{device_id}/telemetry``: a valid MQTT
topic filter in which the placeholder ``{device_id}`` stands for a whole level. A rule that is not
marked ``shared`` must stay inside the device's own topics: it contains ``{device_id}`` as a whole
level, has no ``+``/``#`` at or before that level, names no literal device id and no ``$`` topic.
Anything reaching further is refused (``policy_cross_device``) unless explicitly ``shared=True``,
which the posture audit reports. Rules are validated in their constructor, so an invalid rule or
policy cannot exist.

:func:`decide` is the single source of truth for "may this device do this on that topic", used by
the EMQX HTTP hooks, ``iotrust policy check`` and (through :func:`render`) the Mosquitto ACL. It
follows MQTT 3.1.1/5 matching exactly: ``+`` is one level (possibly empty), ``#`` is the rest
including the parent level, and wildcards in the first level never match ``$``-topics. A publish
topic must not contain wildcards; a subscription filter is allowed only if every topic it can match
is allowed by one rule (:func:`filter_covers`). Decisions do no regex and no rendering per call:
each policy is compiled once, in its constructor, into split levels; its per-device rendering
(exact topics, ``/#`` prefixes) is memoised, so the common request is one set lookup.

This module does no I/O: policies come from the registry through the services, the device state
is an argument. It does not know which broker enforces the result.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from iotrust.core.ids import DEVICE_ID_RE, check_device_id, check_slug
from iotrust.core.lifecycle import DeviceState
from iotrust.errors import InputError

__all__ = [
    "DEFAULT_POLICY",
    "MAX_REQUEST_BYTES",
    "MAX_REQUEST_LEVELS",
    "MAX_RULES",
    "MAX_TEMPLATE_BYTES",
    "MAX_TEMPLATE_LEVELS",
    "PLACEHOLDER",
    "QUARANTINE_POLICY",
    "REASONS",
    "Action",
    "Decision",
    "DeviceGroup",
    "Policy",
    "PolicyRecord",
    "RenderedRule",
    "Rule",
    "decide",
    "effective_policy",
    "filter_covers",
    "merge_policies",
    "render",
    "rules_from_json",
    "rules_to_json",
]

#: The only placeholder a template may use, always as a whole level.
PLACEHOLDER: Final = "{device_id}"
#: Bounds on a rule's template (stricter than MQTT's 65,535 bytes: policies are written by people).
MAX_TEMPLATE_BYTES: Final = 256
MAX_TEMPLATE_LEVELS: Final = 16
#: Bounds on a topic or filter a device asks about; longer requests are ``invalid_topic``.
MAX_REQUEST_BYTES: Final = 4096
MAX_REQUEST_LEVELS: Final = 64
#: At most this many rules in one policy (a merged policy included).
MAX_RULES: Final = 256

#: Every reason a :class:`Decision` can carry.
REASONS: Final = frozenset({
    "allowed", "unknown_device", "device_retired", "device_not_active", "quarantined",
    "no_matching_rule", "invalid_topic",
})

# Characters refused in templates although MQTT allows them: whitespace and control characters
# (they would break a line-based ACL file) and "%" (Mosquitto's pattern substitution).
_TEMPLATE_FORBIDDEN: Final = re.compile(r"[\s\x00-\x1f\x7f%]")
# A device id anywhere inside a literal level (or a level that starts like one).
_DEVICE_ID_LIKE: Final = re.compile(r"dev-[a-z2-7]{26}|^dev-")


class Action(enum.StrEnum):
    """What a device asks to do on a topic."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"


def _invalid(message: str) -> InputError:
    return InputError(message, reason="policy_invalid")


def _cross(message: str) -> InputError:
    return InputError(message, reason="policy_cross_device")


def _check_filter_syntax(levels: Sequence[str]) -> None:
    """MQTT filter syntax: ``+`` and ``#`` only as whole levels, ``#`` only last."""
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if level in {"+", "#"}:
            if level == "#" and i != last:
                raise _invalid("'#' may only be the last level of a topic filter")
            continue
        if "+" in level or "#" in level:
            raise _invalid("'+' and '#' must occupy a whole topic level")


@dataclass(frozen=True, slots=True)
class Rule:
    """Allow ``action`` on the topics ``template`` matches once ``{device_id}`` is substituted.

    ``shared`` is the explicit opt-in for a rule reaching beyond the device's own topics (no
    placeholder, wildcards across the device level, another device's id, ``$SYS``).
    """

    action: Action
    template: str
    shared: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", _as_action(self.action))
        if not isinstance(self.shared, bool):
            raise TypeError("shared must be a bool")
        levels = _template_levels(self.template)
        if not self.shared:
            _check_own_topics(levels)


def _as_action(value: object) -> Action:
    if isinstance(value, Action):
        return value
    if isinstance(value, str):
        try:
            return Action(value)
        except ValueError:
            pass
    raise _invalid("a rule's action is publish or subscribe")


def _template_levels(template: object) -> list[str]:
    """The levels of a syntactically valid template, else ``InputError(policy_invalid)``."""
    if not isinstance(template, str) or not template:
        raise _invalid("a rule's template must be a non-empty string")
    try:
        size = len(template.encode("utf-8"))
    except UnicodeEncodeError:
        raise _invalid("a rule's template must be valid UTF-8 text") from None
    if size > MAX_TEMPLATE_BYTES:
        raise _invalid(f"a rule's template is at most {MAX_TEMPLATE_BYTES} bytes")
    if _TEMPLATE_FORBIDDEN.search(template):
        raise _invalid("a rule's template may not contain whitespace, control characters or '%'")
    levels = template.split("/")
    if len(levels) > MAX_TEMPLATE_LEVELS:
        raise _invalid(f"a rule's template has at most {MAX_TEMPLATE_LEVELS} levels")
    _check_filter_syntax(levels)
    for level in levels:
        if level != PLACEHOLDER and ("{" in level or "}" in level):
            raise _invalid("the only placeholder is {device_id}, and it must be a whole topic "
                           "level")
    return levels


def _check_own_topics(levels: Sequence[str]) -> None:
    """Refuse a non-shared template that could reach another device's (or the broker's) topics."""
    if levels[0].startswith("$"):
        raise _cross("a device's own rule cannot address $-topics such as $SYS; mark it shared")
    if PLACEHOLDER not in levels:
        raise _cross("a device's own rule must contain {device_id} as a whole level; a rule "
                     "outside the device's own topics must be marked shared")
    device_level = levels.index(PLACEHOLDER)
    if any(level in {"+", "#"} for level in levels[: device_level + 1]):
        raise _cross("a wildcard at or before the device level reaches other devices; mark the "
                     "rule shared")
    for level in levels:
        if level != PLACEHOLDER and _DEVICE_ID_LIKE.search(level):
            raise _cross("a literal device id in a rule reaches that device; mark it shared")


@dataclass(frozen=True, slots=True)
class RenderedRule:
    """A rule with the device id substituted: the topic (or filter) the broker enforces."""

    action: Action
    topic: str


_Levels = tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class _Rendered:
    """One device's view of a compiled policy (see :class:`_Compiled`)."""

    publish: frozenset[str]
    subscribe: frozenset[str]
    publish_prefixes: tuple[str, ...]
    subscribe_prefixes: tuple[str, ...]


class _Compiled:
    """A policy prepared for fast decisions; built once per policy, in its constructor.

    Per device, :meth:`for_device` renders and caches:

    - the publish topics and subscription filters allowed verbatim (exact rules, every rendered
      subscription filter, and the parent topic of a rule ending in ``/#``). A request found in
      its set is allowed without parsing it: every member is a valid topic/filter by
      construction;
    - the prefixes of rules of the form ``literal-or-device levels/#`` (no ``+``): a valid
      request without wildcards that starts with ``devices/<id>/commands/`` is covered by
      ``devices/<id>/commands/#``.

    Everything else (``+`` rules, wildcard requests) is matched level by level against
    ``wild_*`` (templates split into levels, the device level as ``None``). The cache is plain
    memoisation, bounded and cleared when full, so decisions stay a pure function of the inputs.
    """

    __slots__ = ("_cache", "other_publish", "other_subscribe", "rules", "wild_publish",
                 "wild_subscribe")

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        wild = [r for r in rules if _has_wildcard(r.template)]
        self.wild_publish = tuple(_split_template(r.template) for r in wild
                                  if r.action is Action.PUBLISH)
        self.wild_subscribe = tuple(_split_template(r.template) for r in wild
                                    if r.action is Action.SUBSCRIBE)
        # Wildcard rules that the prefix test cannot decide.
        self.other_publish = tuple(_split_template(r.template) for r in wild
                                   if r.action is Action.PUBLISH and not _is_prefix_rule(r))
        self.other_subscribe = tuple(_split_template(r.template) for r in wild
                                     if r.action is Action.SUBSCRIBE and not _is_prefix_rule(r))
        self._cache: dict[str, _Rendered] = {}

    def for_device(self, device_id: str) -> _Rendered | None:
        """The device's rendered view; ``None`` if ``device_id`` is not a device id."""
        found = self._cache.get(device_id)
        if found is not None:
            return found
        if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
            return None
        verbatim: dict[Action, set[str]] = {Action.PUBLISH: set(), Action.SUBSCRIBE: set()}
        prefixes: dict[Action, list[str]] = {Action.PUBLISH: [], Action.SUBSCRIBE: []}
        for rule in self.rules:
            text = rule.template.replace(PLACEHOLDER, device_id)
            if rule.action is Action.SUBSCRIBE or not _has_wildcard(text):
                verbatim[rule.action].add(text)
            if _is_prefix_rule(rule):
                verbatim[rule.action].add(text[:-2])
                prefixes[rule.action].append(text[:-1])
        found = _Rendered(frozenset(verbatim[Action.PUBLISH]),
                          frozenset(verbatim[Action.SUBSCRIBE]),
                          tuple(prefixes[Action.PUBLISH]), tuple(prefixes[Action.SUBSCRIBE]))
        if len(self._cache) >= _MAX_CACHED_DEVICES:
            self._cache.clear()
        self._cache[device_id] = found
        return found


def _is_prefix_rule(rule: Rule) -> bool:
    """``a/b/{device_id}/c/#``: ends in ``/#`` with no other wildcard."""
    head = rule.template[:-2]
    return rule.template.endswith("/#") and not _has_wildcard(head)


_MAX_CACHED_DEVICES: Final = 65_536


def _has_wildcard(text: str) -> bool:
    return "+" in text or "#" in text


def _split_template(template: str) -> _Levels:
    return tuple(None if level == PLACEHOLDER else level for level in template.split("/"))


@dataclass(frozen=True, slots=True)
class Policy:
    """A named set of allow rules. At least one rule, no duplicates, at most :data:`MAX_RULES`."""

    name: str
    rules: tuple[Rule, ...]
    _compiled: _Compiled = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_slug(self.name, "policy_name")
        if isinstance(self.rules, (str, bytes)) or not isinstance(self.rules, Iterable):
            raise TypeError("rules is a sequence of Rule")
        rules = tuple(self.rules)
        if not all(isinstance(rule, Rule) for rule in rules):
            raise TypeError("rules is a sequence of Rule")
        if not rules:
            raise _invalid("a policy needs at least one rule (no rules would deny everything)")
        if len(rules) > MAX_RULES:
            raise _invalid(f"a policy has at most {MAX_RULES} rules")
        if len(set(rules)) != len(rules):
            raise _invalid("a policy lists the same rule twice")
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "_compiled", _Compiled(rules))

    @property
    def shared_rules(self) -> tuple[Rule, ...]:
        """The rules that reach beyond the device's own topics (the audit reports these)."""
        return tuple(rule for rule in self.rules if rule.shared)


def _own(action: Action, *templates: str) -> tuple[Rule, ...]:
    return tuple(Rule(action, f"devices/{{device_id}}/{t}") for t in templates)


#: What an ACTIVE device gets when nothing more specific is assigned.
DEFAULT_POLICY: Final = Policy("default", (
    *_own(Action.PUBLISH, "telemetry", "status", "events"),
    *_own(Action.SUBSCRIBE, "commands/#", "config/#", "updates/#"),
))

#: What a QUARANTINED device keeps: the remediation channel only (updates, attestation).
QUARANTINE_POLICY: Final = Policy("quarantine", (
    *_own(Action.SUBSCRIBE, "updates/#"),
    *_own(Action.PUBLISH, "attestation", "quarantine/status"),
))


def render(policy: Policy, device_id: str) -> tuple[RenderedRule, ...]:
    """The policy's rules for one device, placeholders substituted, in rule order."""
    check_device_id(device_id)
    return tuple(RenderedRule(rule.action, rule.template.replace(PLACEHOLDER, device_id))
                 for rule in policy.rules)


def merge_policies(name: str, policies: Iterable[Policy]) -> Policy:
    """One policy allowing what any of ``policies`` allows (rules in order, duplicates dropped)."""
    seen: dict[Rule, None] = {}
    for policy in policies:
        for rule in policy.rules:
            seen.setdefault(rule, None)
    return Policy(name, tuple(seen))


def effective_policy(state: DeviceState | None, assigned: Policy | None) -> Policy | None:
    """The policy a device in ``state`` runs under; ``None`` means deny everything.

    ACTIVE → ``assigned`` (or :data:`DEFAULT_POLICY`); QUARANTINED → :data:`QUARANTINE_POLICY`
    whatever is assigned; EXPECTED, RETIRED or unknown → ``None``.
    """
    if state is DeviceState.ACTIVE:
        return assigned if assigned is not None else DEFAULT_POLICY
    if state is DeviceState.QUARANTINED:
        return QUARANTINE_POLICY
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of :func:`decide`: allowed or not, and why (one of :data:`REASONS`)."""

    allowed: bool
    reason: str


_ALLOWED: Final = Decision(allowed=True, reason="allowed")
_UNKNOWN: Final = Decision(allowed=False, reason="unknown_device")
_RETIRED: Final = Decision(allowed=False, reason="device_retired")
_NOT_ACTIVE: Final = Decision(allowed=False, reason="device_not_active")
_QUARANTINED: Final = Decision(allowed=False, reason="quarantined")
_NO_RULE: Final = Decision(allowed=False, reason="no_matching_rule")
_INVALID: Final = Decision(allowed=False, reason="invalid_topic")


def _covers(  # noqa: PLR0911 - hot path: one early exit per MQTT matching rule
        rule: tuple[str | None, ...], device_id: str, requested: Sequence[str]) -> bool:
    """Whether every topic ``requested`` (split levels) matches is matched by ``rule``.

    ``rule`` holds ``None`` where the device id goes. A topic is a filter without wildcards,
    so this is also plain topic matching.
    """
    n = len(requested)
    for i, level in enumerate(rule):
        if level == "#":
            # '#' (and '+') in the first level never match topics starting with '$'; a requested
            # '+'/'#' first level cannot match those either.
            return i > 0 or not requested[0].startswith("$")
        if i >= n:
            return False
        asked = requested[i]
        if asked == "#":
            # Only '+/#' covers a whole-tree request: every topic has a first level.
            return i == 0 and level == "+" and len(rule) == 2 and rule[1] == "#"  # noqa: PLR2004
        if level is None:
            if asked != device_id:
                return False
        elif level == "+":
            if i == 0 and asked.startswith("$"):
                return False
        elif asked != level:
            return False
    return len(rule) == n


def _request_size_ok(text: str) -> bool:
    if not text or "\x00" in text:
        return False
    if text.isascii():
        return len(text) <= MAX_REQUEST_BYTES
    try:
        return len(text.encode("utf-8")) <= MAX_REQUEST_BYTES
    except UnicodeEncodeError:  # lone surrogates are not valid MQTT strings
        return False


def _wildcards_ok(levels: Sequence[str]) -> bool:
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if level in {"+", "#"}:
            if level == "#" and i != last:
                return False
        elif "+" in level or "#" in level:
            return False
    return True


def _split_request(text: str, *, wildcards: bool) -> list[str] | None:
    """The levels of a requested topic or filter, or ``None`` if it is not valid MQTT."""
    if not _request_size_ok(text):
        return None
    levels = text.split("/")
    if len(levels) > MAX_REQUEST_LEVELS:
        return None
    if ("+" in text or "#" in text) and not (wildcards and _wildcards_ok(levels)):
        return None
    return levels


def filter_covers(rule_filter: str, requested_filter: str) -> bool:
    """Whether every topic ``requested_filter`` can match is matched by ``rule_filter``.

    Both are MQTT topic filters (a topic name is a filter without wildcards). An invalid filter
    on either side covers / is covered by nothing (``False``).
    """
    rule = _split_request(rule_filter, wildcards=True)
    requested = _split_request(requested_filter, wildcards=True)
    if rule is None or requested is None:
        return False
    return _covers(tuple(rule), "", requested)


def decide(device_id: str | None, state: DeviceState | None, policy: Policy | None,
           action: Action, topic: str) -> Decision:
    """May device ``device_id``, in ``state``, with assigned ``policy``, do ``action`` on ``topic``?

    ``policy`` is the device's *assigned* policy (``None``: the default); the effective one comes
    from :func:`effective_policy`, so a quarantined device is held to :data:`QUARANTINE_POLICY`
    whatever it is assigned. For a subscription ``topic`` is the requested filter and is allowed
    only if one rule covers every topic it can match. Never raises for any string input.
    """
    if state is _ACTIVE and device_id is not None:
        effective = policy if policy is not None else DEFAULT_POLICY
    elif state is _QUARANTINED_STATE and device_id is not None:
        effective = QUARANTINE_POLICY
    else:
        return _gate(device_id, state)
    compiled = effective._compiled  # noqa: SLF001 - the policy's own compiled form
    view = compiled.for_device(device_id)
    if view is None:
        return _UNKNOWN
    publish = action is _PUBLISH
    try:
        if topic in (view.publish if publish else view.subscribe):  # the common case
            return _ALLOWED
    except TypeError:  # an unhashable non-string
        return _INVALID
    if not (publish or action is _SUBSCRIBE) or not isinstance(topic, str):
        return _INVALID
    return _decide_slow(compiled, view, device_id, publish, topic,
                        denied=_QUARANTINED if state is _QUARANTINED_STATE else _NO_RULE)


def _gate(device_id: str | None, state: DeviceState | None) -> Decision:
    """The refusal for a device that is unknown or neither ACTIVE nor QUARANTINED."""
    if device_id is None or state is None:
        return _UNKNOWN
    if state is _RETIRED_STATE:
        return _RETIRED
    if state is _EXPECTED:
        return _NOT_ACTIVE
    return _UNKNOWN


def _plain(topic: str) -> bool:
    """A cheap test for the usual request: ASCII, no wildcard, no NUL, within the bounds."""
    return (len(topic) <= MAX_REQUEST_BYTES and topic.isascii() and "+" not in topic
            and "#" not in topic and "\x00" not in topic and topic != ""
            and topic.count("/") < MAX_REQUEST_LEVELS)


def _decide_slow(compiled: _Compiled, view: _Rendered, device_id: str, publish: bool,
                 topic: str, *, denied: Decision) -> Decision:
    """Prefix rules for plain requests; otherwise parse and match level by level."""
    if _plain(topic):
        prefixes = view.publish_prefixes if publish else view.subscribe_prefixes
        if prefixes and topic.startswith(prefixes):
            return _ALLOWED
        candidates = compiled.other_publish if publish else compiled.other_subscribe
        if not candidates:
            return denied
        levels = topic.split("/")
    else:
        candidates = compiled.wild_publish if publish else compiled.wild_subscribe
        parsed = _split_request(topic, wildcards=not publish)
        if parsed is None:
            return _INVALID
        levels = parsed
    for rule in candidates:
        if _covers(rule, device_id, levels):
            return _ALLOWED
    return denied


_ACTIVE: Final = DeviceState.ACTIVE
_QUARANTINED_STATE: Final = DeviceState.QUARANTINED
_EXPECTED: Final = DeviceState.EXPECTED
_RETIRED_STATE: Final = DeviceState.RETIRED
_PUBLISH: Final = Action.PUBLISH
_SUBSCRIBE: Final = Action.SUBSCRIBE


# --- registry records -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """A stored policy: its value, a version bumped on every change, and when."""

    policy: Policy
    version: int
    created_at: datetime
    updated_at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.policy, Policy):
            raise TypeError("policy must be a Policy")
        if isinstance(self.version, bool) or not isinstance(self.version, int) \
                or self.version < 1:
            raise _invalid("policy versions start at 1")
        if self.created_at.tzinfo is None or self.updated_at.tzinfo is None:
            raise TypeError("policy timestamps must be timezone-aware")

    @property
    def name(self) -> str:
        """The policy's name."""
        return self.policy.name


@dataclass(frozen=True, slots=True)
class DeviceGroup:
    """A named group of devices; its policy (if any) applies to every member."""

    name: str
    policy: str | None
    created_at: datetime
    members: int = 0

    def __post_init__(self) -> None:
        check_slug(self.name, "group_name")
        if self.policy is not None:
            check_slug(self.policy, "policy_name")
        if self.created_at.tzinfo is None:
            raise TypeError("group timestamps must be timezone-aware")


# --- storage form -------------------------------------------------------------------------------


def rules_to_json(rules: Iterable[Rule]) -> list[dict[str, str | bool]]:
    """The stored form of rules: ``[{"action", "template", "shared"}, ...]``."""
    return [{"action": rule.action.value, "template": rule.template, "shared": rule.shared}
            for rule in rules]


def rules_from_json(value: object) -> tuple[Rule, ...]:
    """Parse the stored form back into rules; anything malformed is ``InputError``."""
    if not isinstance(value, list) or len(value) > MAX_RULES:
        raise _invalid(f"policy rules must be a list of at most {MAX_RULES} objects")
    rules = []
    for item in value:
        if not isinstance(item, Mapping) or set(item) - {"action", "template", "shared"}:
            raise _invalid("a stored rule is an object with action, template and shared")
        action, template, shared = item.get("action"), item.get("template"), \
            item.get("shared", False)
        if not isinstance(action, str) or not isinstance(template, str) \
                or not isinstance(shared, bool):
            raise _invalid("a stored rule has string action/template and a boolean shared")
        try:
            parsed = Action(action)
        except ValueError:
            raise _invalid("a stored rule's action is publish or subscribe") from None
        rules.append(Rule(parsed, template, shared))
    return tuple(rules)
