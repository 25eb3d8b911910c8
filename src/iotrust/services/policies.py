"""Managing least-privilege policies and answering "may this device do that" from the registry.

Policies are stored by name; a policy can be attached to device models and to device groups. A
device's policy is the union of its groups' policies and its model's policy, or
:data:`~iotrust.core.policy.DEFAULT_POLICY` when none applies (:func:`resolve`). Its state decides
whether that policy, the quarantine policy or nothing applies (:func:`decide_for`, which calls the
pure :func:`iotrust.core.policy.decide`).

Every change is one transaction plus one event (``policy.created``, ``policy.changed``,
``policy.assigned``, ``policy.group_created``, ``policy.group_member_added``,
``policy.group_member_removed``). After the commit, the optional ``changed`` callback receives a
:class:`PolicyChange` so that a broker adapter can resynchronise its ACLs; a failing callback does
not undo the committed change (the adapter regenerates everything from the registry on start).

This module does not talk to a broker and does not render ACL files.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from iotrust.adapters.sql.store import Database, Tx
from iotrust.core import events as ev
from iotrust.core.ids import DEVICE_ID_RE, check_device_id, check_slug
from iotrust.core.lifecycle import DeviceState
from iotrust.core.policy import (
    DEFAULT_POLICY,
    Action,
    Decision,
    DeviceGroup,
    Policy,
    PolicyRecord,
    Rule,
    decide,
    merge_policies,
    rules_to_json,
)
from iotrust.errors import InputError, NotFoundError
from iotrust.ports import Clock
from iotrust.services import eventlog

__all__ = [
    "GROUP_CREATED",
    "GROUP_MEMBER_ADDED",
    "GROUP_MEMBER_REMOVED",
    "POLICY_ASSIGNED",
    "POLICY_CHANGED",
    "POLICY_CREATED",
    "ChangeHook",
    "PolicyChange",
    "PolicyDetail",
    "add_to_group",
    "assign_to_group",
    "assign_to_model",
    "broker_login",
    "create",
    "create_group",
    "decide_for",
    "list_groups",
    "list_policies",
    "remove_from_group",
    "resolve",
    "resolve_all",
    "rules_from_templates",
    "show",
    "update",
]

#: A policy was created (``data``: name, rules).
POLICY_CREATED = "policy.created"
#: A policy's rules were replaced (``data``: name, version, rules).
POLICY_CHANGED = "policy.changed"
#: A policy was attached to (or detached from) a model or group.
POLICY_ASSIGNED = "policy.assigned"
#: A device group was created.
GROUP_CREATED = "policy.group_created"
#: A device joined a group (the event names the device).
GROUP_MEMBER_ADDED = "policy.group_member_added"
#: A device left a group.
GROUP_MEMBER_REMOVED = "policy.group_member_removed"

#: Most devices one ``add_to_group`` / ``remove_from_group`` call takes.
MAX_DEVICES_PER_CALL = 10_000


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """What changed, for the broker adapter: ``device_ids`` empty means "possibly any device"."""

    kind: str
    policy: str | None = None
    model: str | None = None
    group: str | None = None
    device_ids: tuple[str, ...] = ()


ChangeHook = Callable[[PolicyChange], None]


@dataclass(frozen=True, slots=True)
class PolicyDetail:
    """A stored policy and where it is attached."""

    record: PolicyRecord
    models: list[str]
    groups: list[str]


def rules_from_templates(publish: Sequence[str] = (), subscribe: Sequence[str] = (), *,
                         shared: bool = False) -> tuple[Rule, ...]:
    """Rules from lists of publish and subscribe templates (all shared or none)."""
    return (*(Rule(Action.PUBLISH, t, shared) for t in publish),
            *(Rule(Action.SUBSCRIBE, t, shared) for t in subscribe))


def _rules_data(policy: Policy) -> list[eventlog.JSONValue]:
    rules: list[eventlog.JSONValue] = list(rules_to_json(policy.rules))
    return rules


def _notify(changed: ChangeHook | None, change: PolicyChange) -> None:
    if changed is not None:
        changed(change)


def _check_name(name: str) -> str:
    return check_slug(name, "policy_name")


def create(db: Database, clock: Clock, name: str, rules: Iterable[Rule], *, actor: str,
           changed: ChangeHook | None = None) -> PolicyRecord:
    """Store a new policy; ``ConflictError(policy_exists)`` if the name is taken."""
    policy = Policy(_check_name(name), tuple(rules))
    with db.transaction() as tx:
        record = tx.add_policy(policy, clock.now())
        eventlog.record(tx, clock, POLICY_CREATED, actor=actor,
                        data={"policy": name, "rules": _rules_data(policy),
                              "shared_rules": len(policy.shared_rules)})
    _notify(changed, PolicyChange(POLICY_CREATED, policy=name))
    return record


def update(db: Database, clock: Clock, name: str, rules: Iterable[Rule], *, actor: str,
           changed: ChangeHook | None = None) -> PolicyRecord:
    """Replace a policy's rules (its version goes up); ``NotFoundError(unknown_policy)``."""
    policy = Policy(_check_name(name), tuple(rules))
    with db.transaction() as tx:
        before = tx.get_policy(name)
        record = tx.replace_policy(policy, clock.now())
        eventlog.record(tx, clock, POLICY_CHANGED, actor=actor,
                        data={"policy": name, "version": record.version,
                              "previous_rules": _rules_data(before.policy),
                              "rules": _rules_data(policy),
                              "shared_rules": len(policy.shared_rules)})
    _notify(changed, PolicyChange(POLICY_CHANGED, policy=name))
    return record


def list_policies(db: Database) -> list[PolicyRecord]:
    """Every stored policy, by name."""
    with db.transaction(readonly=True) as tx:
        return tx.list_policies()


def show(db: Database, name: str) -> PolicyDetail:
    """One policy and the models and groups it is attached to."""
    with db.transaction(readonly=True) as tx:
        return PolicyDetail(record=tx.get_policy(name), models=tx.models_with_policy(name),
                            groups=tx.groups_with_policy(name))


def assign_to_model(db: Database, clock: Clock, name: str | None, model: str, *, actor: str,
                    changed: ChangeHook | None = None) -> None:
    """Attach policy ``name`` to every device of ``model`` (``None`` detaches).

    ``NotFoundError`` with ``unknown_model`` or ``unknown_policy``.
    """
    if name is not None:
        _check_name(name)
    with db.transaction() as tx:
        tx.set_model_policy(model, name)
        eventlog.record(tx, clock, POLICY_ASSIGNED, actor=actor,
                        data={"policy": name, "model": model})
    _notify(changed, PolicyChange(POLICY_ASSIGNED, policy=name, model=model))


def _ensure_group(tx: Tx, clock: Clock, group: str, *, actor: str) -> bool:
    try:
        tx.get_group(group)
    except NotFoundError:
        tx.add_group(DeviceGroup(name=group, policy=None, created_at=clock.now()))
        eventlog.record(tx, clock, GROUP_CREATED, actor=actor, data={"group": group})
        return True
    return False


def create_group(db: Database, clock: Clock, group: str, *, actor: str,
                 policy: str | None = None, changed: ChangeHook | None = None) -> DeviceGroup:
    """Create a device group, optionally with a policy; ``ConflictError(group_exists)``."""
    check_slug(group, "group_name")
    with db.transaction() as tx:
        tx.add_group(DeviceGroup(name=group, policy=policy, created_at=clock.now()))
        eventlog.record(tx, clock, GROUP_CREATED, actor=actor,
                        data={"group": group, "policy": policy})
        created = tx.get_group(group)
    if policy is not None:
        _notify(changed, PolicyChange(POLICY_ASSIGNED, policy=policy, group=group))
    return created


def assign_to_group(db: Database, clock: Clock, name: str | None, group: str, *, actor: str,
                    changed: ChangeHook | None = None) -> None:
    """Attach policy ``name`` to a group, creating the group if needed (``None`` detaches)."""
    check_slug(group, "group_name")
    if name is not None:
        _check_name(name)
    with db.transaction() as tx:
        _ensure_group(tx, clock, group, actor=actor)
        tx.set_group_policy(group, name)
        members = tuple(tx.group_members(group))
        eventlog.record(tx, clock, POLICY_ASSIGNED, actor=actor,
                        data={"policy": name, "group": group, "members": len(members)})
    _notify(changed, PolicyChange(POLICY_ASSIGNED, policy=name, group=group,
                                  device_ids=members))


def _device_ids(device_ids: Sequence[str]) -> list[str]:
    if isinstance(device_ids, str):
        raise TypeError("device_ids is a sequence of device ids")
    if not device_ids or len(device_ids) > MAX_DEVICES_PER_CALL:
        raise InputError(f"name 1 to {MAX_DEVICES_PER_CALL} devices", reason="invalid_devices")
    return [check_device_id(d) for d in dict.fromkeys(device_ids)]


def add_to_group(db: Database, clock: Clock, group: str, device_ids: Sequence[str], *,
                 actor: str, changed: ChangeHook | None = None) -> list[str]:
    """Put devices in a group (created if needed); returns the ones that were not members.

    All or nothing: an unknown device refuses the whole call (``NotFoundError(unknown_device)``).
    """
    check_slug(group, "group_name")
    ids = _device_ids(device_ids)
    added = []
    with db.transaction() as tx:
        _ensure_group(tx, clock, group, actor=actor)
        policy = tx.get_group(group).policy
        for device_id in ids:
            tx.get_device(device_id)  # NotFoundError(unknown_device) before any write
        for device_id in ids:
            if tx.add_group_member(group, device_id, clock.now()):
                added.append(device_id)
                eventlog.record(tx, clock, GROUP_MEMBER_ADDED, actor=actor, device_id=device_id,
                                data={"group": group, "policy": policy})
    if added:
        _notify(changed, PolicyChange(GROUP_MEMBER_ADDED, policy=policy, group=group,
                                      device_ids=tuple(added)))
    return added


def remove_from_group(db: Database, clock: Clock, group: str, device_ids: Sequence[str], *,
                      actor: str, changed: ChangeHook | None = None) -> list[str]:
    """Take devices out of a group; returns the ones that were members."""
    ids = _device_ids(device_ids)
    removed = []
    with db.transaction() as tx:
        policy = tx.get_group(group).policy
        for device_id in ids:
            if tx.remove_group_member(group, device_id):
                removed.append(device_id)
                eventlog.record(tx, clock, GROUP_MEMBER_REMOVED, actor=actor,
                                device_id=device_id, data={"group": group, "policy": policy})
    if removed:
        _notify(changed, PolicyChange(GROUP_MEMBER_REMOVED, policy=policy, group=group,
                                      device_ids=tuple(removed)))
    return removed


def list_groups(db: Database) -> list[DeviceGroup]:
    """Every device group with its policy and member count."""
    with db.transaction(readonly=True) as tx:
        return tx.list_groups()


def _combine(policies: Sequence[Policy]) -> Policy:
    """One policy from the ones that apply (union of their rules), or the default."""
    if not policies:
        return DEFAULT_POLICY
    if len(policies) == 1:
        return policies[0]
    name = ".".join(p.name for p in policies)
    return merge_policies(name if len(name) <= _MAX_NAME else "merged", policies)


_MAX_NAME = 63


def resolve(db: Database, device_id: str) -> Policy:
    """The policy assigned to a device: the union of its groups' and its model's, else the default.

    ``NotFoundError(unknown_device)`` for a device the registry does not know. The device's
    state is not considered here (see :func:`decide_for` and
    :func:`iotrust.core.policy.effective_policy`).
    """
    with db.transaction(readonly=True) as tx:
        tx.get_device(device_id)
        return _combine(tx.policies_for_device(device_id))


def resolve_all(db: Database) -> dict[str, Policy]:
    """Every device whose assigned policy is not the default, with that policy.

    Devices not in the result run under :data:`~iotrust.core.policy.DEFAULT_POLICY` when
    ACTIVE (the broker adapter writes one pattern rule set for them).
    """
    with db.transaction(readonly=True) as tx:
        stored = {r.name: r.policy for r in tx.list_policies()}
        names: dict[str, list[str]] = {}
        for device_id, name in tx.policy_assignments():
            names.setdefault(device_id, []).append(name)
    return {device_id: _combine([stored[n] for n in sorted(set(ns))])
            for device_id, ns in names.items()}


def decide_for(db: Database, device_id: str, action: Action, topic: str) -> Decision:
    """The registry's answer for one request: the device's state and policy, then ``decide``.

    An unknown (or malformed) device id is ``unknown_device``; never raises for bad input (a
    registry failure is a :class:`~iotrust.errors.BackendError`). One read-only transaction of
    two prebuilt statements; parsed and merged policies are memoised, so the rendered rules of a
    device are reused from one request to the next.
    """
    state: DeviceState | None = None
    assigned: Policy | None = None
    if isinstance(device_id, str) and DEVICE_ID_RE.fullmatch(device_id):
        with db.transaction(readonly=True) as tx:
            state = tx.device_state(device_id)
            if state in _CONNECTED:
                found = tx.policies_for_device(device_id)
                assigned = _combined(tuple(found)) if found else None
    return decide(device_id if state is not None else None, state, assigned, action, topic)


_CONNECTED = (DeviceState.ACTIVE, DeviceState.QUARANTINED)


@functools.lru_cache(maxsize=1024)
def _combined(policies: tuple[Policy, ...]) -> Policy:
    return _combine(policies)


def broker_login(db: Database, clock: Clock, device_id: str, *, source: str,
                 actor: str) -> Decision:
    """May this certificate identity (a broker username) hold an MQTT session at all?

    Allowed for a device that exists and is ACTIVE or QUARANTINED (quarantine keeps the
    remediation channel). A retired device trying to connect is a zombie: the refusal is
    recorded as ``zombie.contact`` (DESIGN.md §9). Reasons: ``allowed``, ``unknown_device``,
    ``device_retired``, ``device_not_active``.
    """
    if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
        return Decision(allowed=False, reason="unknown_device")
    with db.transaction(readonly=True) as tx:
        try:
            state = tx.get_device(device_id).state
        except NotFoundError:
            return Decision(allowed=False, reason="unknown_device")
    if state is DeviceState.RETIRED:
        eventlog.record_refusal(db, clock, ev.ZOMBIE_CONTACT, actor=actor, reason="retired",
                                device_id=device_id,
                                data={"channel": "broker.authn", "source": source})
        return Decision(allowed=False, reason="device_retired")
    if state is DeviceState.EXPECTED:
        return Decision(allowed=False, reason="device_not_active")
    return Decision(allowed=True, reason="allowed")
