"""Blast radius: which topics, and which other devices' data, a set of devices can reach.

Devices that share a state and the same stored policies share one effective policy
(:func:`iotrust.core.policy.effective_policy`); the registry hands the audit one
:class:`PolicySet` per such combination with its device count, never one row per device. For each
set, :func:`blast_radius` takes every ``shared`` rule of its effective policy (non-shared rules
stay inside the device's own topics by construction, :class:`iotrust.core.policy.Rule`) and
finds the other sets whose rules it meets:

* a shared **subscribe** filter that intersects any topic or filter of another device's rules
  *reads* that device's data (what it publishes, or the commands and configuration sent to it);
* a shared **publish** rule that intersects them *writes* into that device's topics (spoofing
  its telemetry, or sending it commands).

Two MQTT filters intersect when at least one topic matches both (:func:`filters_intersect`).
Templates are rendered for two distinct symbolic devices, or for the literal device ids a rule
names (a gateway's per-device rules), so "all devices of the other sets" and "these named
devices" are told apart. The result is sorted worst first (devices reachable, then devices
holding the reach). This module does no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from iotrust.core.lifecycle import DeviceState
from iotrust.core.policy import (
    DEFAULT_POLICY,
    PLACEHOLDER,
    QUARANTINE_POLICY,
    Action,
    Policy,
    Rule,
    merge_policies,
)

__all__ = ["PolicySet", "Reach", "blast_radius", "effective_for", "filters_intersect"]

_ACTOR: Final = "dev-" + "a" * 26
_VICTIM: Final = "dev-" + "b" * 26
_DEVICE_ID: Final = re.compile(r"^dev-[a-z2-7]{26}$")
_CONNECTED: Final = frozenset({DeviceState.ACTIVE.value, DeviceState.QUARANTINED.value})


class PolicySet(NamedTuple):
    """Devices sharing state, stored policies, key storage and model; ``sample``: some ids."""

    policies: tuple[str, ...]  # sorted names of the stored policies that apply; () = default
    state: str
    key_storage: str
    model: str | None
    devices: int
    sample: tuple[str, ...]


def effective_for(policies: tuple[str, ...], state: str,
                  stored: Mapping[str, Policy]) -> Policy | None:
    """The effective policy of a set: default/merged when active, quarantine, or nothing."""
    if state == DeviceState.QUARANTINED.value:
        return QUARANTINE_POLICY
    if state != DeviceState.ACTIVE.value:
        return None
    found = [stored[name] for name in policies if name in stored]
    if not found:
        return DEFAULT_POLICY
    if len(found) == 1:
        return found[0]
    return merge_policies("merged", found)


@functools.lru_cache(maxsize=65_536)
def filters_intersect(a: str, b: str) -> bool:
    """Whether some topic matches both MQTT topic filters ``a`` and ``b`` (topics included)."""
    la, lb = a.split("/"), b.split("/")
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else None
        y = lb[i] if i < len(lb) else None
        if x is None or y is None:
            # one filter ended: only a '#' on the other side can match the parent level
            rest = y if x is None else x
            return rest == "#"
        dollar = i == 0 and ((x.startswith("$") and y in {"+", "#"})
                             or (y.startswith("$") and x in {"+", "#"}))
        if dollar:
            return False  # wildcards in the first level never match $-topics
        if "#" in {x, y}:
            return True
        if "+" in {x, y} or x == y:
            continue
        return False
    return True


@dataclass(frozen=True, slots=True)
class Reach:
    """What the devices of one policy set can reach beyond their own topics."""

    policies: tuple[str, ...]
    state: str
    devices: int
    sample: tuple[str, ...]
    shared_rules: tuple[str, ...]      # "publish devices/+/commands/x" ...
    reads_devices: int                 # other devices whose published data it can receive
    writes_devices: int                # other devices it can publish into
    named_devices: tuple[str, ...]     # devices named literally by its rules (gateways)
    everything: bool                   # subscribes to every topic ('#', '+/#')

    @property
    def reachable(self) -> int:
        """Other devices reachable (read or write), the ranking key."""
        return max(self.reads_devices, self.writes_devices)

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"policies": list(self.policies) or ["default"], "state": self.state,
                "devices": self.devices, "sample": list(self.sample),
                "shared_rules": list(self.shared_rules), "reads_devices": self.reads_devices,
                "writes_devices": self.writes_devices, "named_devices": list(self.named_devices),
                "everything": self.everything}


def _render(template: str, device_id: str) -> str:
    return template.replace(PLACEHOLDER, device_id)


def _named(template: str) -> tuple[str, ...]:
    return tuple(level for level in template.split("/") if _DEVICE_ID.fullmatch(level))


def _meets(shared: Rule, other: Rule) -> bool:
    """Does ``shared`` (held by one device) meet ``other`` (held by another device)?"""
    mine = _render(shared.template, _ACTOR)
    named = _named(mine)
    targets = named or (_VICTIM,)
    return any(filters_intersect(mine, _render(other.template, t)) for t in targets)


class _Victims:
    """Connected sets grouped by effective policy: the devices a rule could reach.

    Only a victim's own (non-shared) rules describe its data and channels: two shared rules
    meeting each other reach nobody's device.
    """

    def __init__(self, sets: Sequence[PolicySet], stored: Mapping[str, Policy]) -> None:
        by_policy: dict[tuple[tuple[str, ...], str], int] = {}
        self.policy: dict[tuple[tuple[str, ...], str], Policy] = {}
        for ps in sets:
            if ps.state not in _CONNECTED or ps.devices <= 0:
                continue
            key = (ps.policies if ps.state == DeviceState.ACTIVE.value else (), ps.state)
            by_policy[key] = by_policy.get(key, 0) + ps.devices
            if key not in self.policy:
                effective = effective_for(ps.policies, ps.state, stored)
                if effective is not None:
                    self.policy[key] = effective
        self.devices = by_policy

    def reached(self, rule: Rule) -> int:
        total = 0
        for key, policy in self.policy.items():
            if any(_meets(rule, r) for r in policy.rules if not r.shared):
                total += self.devices[key]
        return total


def blast_radius(sets: Iterable[PolicySet], stored: Mapping[str, Policy]) -> list[Reach]:
    """The reach of every connected policy set holding shared rules, worst first."""
    merged: dict[tuple[tuple[str, ...], str], list[PolicySet]] = {}
    all_sets = list(sets)
    for ps in all_sets:
        if ps.state in _CONNECTED and ps.devices > 0:
            merged.setdefault((ps.policies, ps.state), []).append(ps)
    victims = _Victims(all_sets, stored)
    out: list[Reach] = []
    for (names, state), group in merged.items():
        effective = effective_for(names, state, stored)
        if effective is None or not effective.shared_rules:
            continue
        devices = sum(ps.devices for ps in group)
        sample = tuple(sorted({d for ps in group for d in ps.sample}))[:20]
        reads = writes = 0
        named: set[str] = set()
        everything = False
        for rule in effective.shared_rules:
            named.update(_named(rule.template))
            if rule.action is Action.SUBSCRIBE:
                reads = max(reads, victims.reached(rule))
                everything = everything or rule.template in {"#", "+/#"}
            else:
                writes = max(writes, victims.reached(rule))
        if not named:
            # a generic rule reaches the set's own devices too: count only the others
            reads, writes = max(0, reads - 1), max(0, writes - 1)
        else:
            reads, writes = min(reads, len(named)), min(writes, len(named))
        rules = tuple(f"{r.action.value} {r.template}" for r in effective.shared_rules)
        out.append(Reach(policies=names, state=state, devices=devices, sample=sample,
                         shared_rules=rules, reads_devices=reads, writes_devices=writes,
                         named_devices=tuple(sorted(named))[:50], everything=everything))
    out.sort(key=lambda r: (-int(r.everything), -r.reachable, -r.devices, r.policies))
    return out
