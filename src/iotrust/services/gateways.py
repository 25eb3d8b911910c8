"""Letting a gateway device publish for its downstream devices: an explicit, shared policy.

A gateway relays envelopes its downstream devices signed (``iotrust-agent gateway``); the broker
must let the gateway's own session publish on ``devices/<downstream-id>/telemetry``. That is a
rule reaching across devices, so it is written out per downstream device and marked
``shared=True`` (the posture audit reports shared rules): the gateway's policy is
``gateway-<gateway id without "dev-">`` = the default policy's rules + one shared publish rule per
downstream device, attached to a group of the same name whose only member is the gateway.

The broker's permission is not what protects the downstream devices' messages: the ingest
service refuses anything the gateway alters, replays, re-routes or forges, because each message is
signed by its device. The shared rule only lets genuine relayed traffic through.

This module does not talk to the broker itself; pass ``changed`` (e.g. a broker resync) to
apply the new rules to live sessions.
"""

from __future__ import annotations

from collections.abc import Sequence

from iotrust.adapters.sql.store import Database
from iotrust.core.ids import check_device_id
from iotrust.core.policy import DEFAULT_POLICY, Action, Policy, Rule
from iotrust.errors import InputError, NotFoundError
from iotrust.ports import Clock
from iotrust.services import policies as policy_svc
from iotrust.services.policies import ChangeHook

__all__ = ["authorize_gateway", "gateway_policy_name", "gateway_rules"]


def gateway_policy_name(gateway_id: str) -> str:
    """The policy (and group) name of one gateway."""
    return "gateway-" + check_device_id(gateway_id)[4:]


def gateway_rules(downstream: Sequence[str]) -> tuple[Rule, ...]:
    """The default rules plus one shared publish rule per downstream device's telemetry."""
    ids = [check_device_id(d) for d in downstream]
    if not ids:
        raise InputError("a gateway relays for at least one downstream device",
                         reason="no_downstream")
    if len(set(ids)) != len(ids):
        raise InputError("a downstream device is listed twice", reason="duplicate_downstream")
    shared = tuple(Rule(Action.PUBLISH, f"devices/{d}/telemetry", shared=True) for d in ids)
    return (*DEFAULT_POLICY.rules, *shared)


def authorize_gateway(db: Database, clock: Clock, gateway_id: str, downstream: Sequence[str], *,
                      actor: str, changed: ChangeHook | None = None) -> Policy:
    """Create (or replace) the gateway's shared policy and put the gateway in its group."""
    name = gateway_policy_name(gateway_id)
    if gateway_id in downstream:
        raise InputError("a gateway is not its own downstream device",
                         reason="invalid_downstream")
    rules = gateway_rules(downstream)
    try:
        record = policy_svc.update(db, clock, name, rules, actor=actor, changed=changed)
    except NotFoundError:
        record = policy_svc.create(db, clock, name, rules, actor=actor, changed=changed)
    policy_svc.assign_to_group(db, clock, name, name, actor=actor, changed=changed)
    policy_svc.add_to_group(db, clock, name, [gateway_id], actor=actor, changed=changed)
    return record.policy
