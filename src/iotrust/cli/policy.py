"""``iotrust policy``: least-privilege policies, device groups, and "may this device do that".

Commands map onto :mod:`iotrust.services.policies`; this module parses arguments and prints. After
a change, the embedded broker (if one is configured in the data folder) is resynchronised; if
that fails the change stays committed and a warning says how to apply it.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from iotrust.cli.common import STATE, abort_usage, emit, emit_object, err, errors, out
from iotrust.core.policy import Action, Policy, PolicyRecord, rules_to_json
from iotrust.errors import IotrustError, TrustError
from iotrust.ports import SystemClock
from iotrust.services import broker as broker_svc
from iotrust.services import policies
from iotrust.services.policies import ChangeHook, PolicyChange

app = typer.Typer(help="Least-privilege policies: topic templates per device, models and groups.",
                  no_args_is_help=True)
group_app = typer.Typer(help="Device groups (a group's policy applies to its members).",
                        no_args_is_help=True)
app.add_typer(group_app, name="group")

CLOCK = SystemClock()

_PUBLISH = typer.Option([], "--publish", "-p", help="Publish template (repeatable), e.g. "
                        "devices/{device_id}/telemetry.")
_SUBSCRIBE = typer.Option([], "--subscribe", "-s", help="Subscribe template (repeatable), e.g. "
                          "devices/{device_id}/commands/#.")
_SHARED = typer.Option(False, "--shared", help="Mark the rules shared: they may reach beyond the "
                       "device's own topics (reported by the audit).")
_JSON = typer.Option(False, "--json", help="Machine-readable output.")


def resync_hook(stored: str = "the change") -> ChangeHook:
    """A change hook that regenerates the embedded broker's rules, if a broker is configured.

    ``stored`` names what was stored, for the warning when the broker could not be updated.
    """

    def hook(_change: PolicyChange) -> None:
        try:
            broker_svc.sync_configured(STATE.db(), STATE.settings, CLOCK)
        except IotrustError as exc:
            err.print(f"[yellow]warning:[/] {stored} is stored but the broker was not updated "
                      f"({escape(exc.diagnostics())}); it applies when the broker is next "
                      "configured or started", highlight=False)

    return hook


def _policy_dict(record: PolicyRecord) -> dict[str, Any]:
    rules: Any = rules_to_json(record.policy.rules) if STATE.json else _rules_text(record.policy)
    return {"name": record.name, "version": record.version, "rules": rules,
            "shared_rules": len(record.policy.shared_rules),
            "created_at": record.created_at.isoformat(),
            "updated_at": record.updated_at.isoformat()}


def _rules_text(policy: Policy) -> str:
    return "; ".join(f"{r.action.value} {r.template}{' (shared)' if r.shared else ''}"
                     for r in policy.rules)


@app.command("create")
def create(name: str, publish: list[str] = _PUBLISH, subscribe: list[str] = _SUBSCRIBE,
           shared: bool = _SHARED) -> None:
    """Create a policy from publish and subscribe templates."""
    with errors():
        rules = policies.rules_from_templates(publish, subscribe, shared=shared)
        record = policies.create(STATE.db(), CLOCK, name, rules, actor=STATE.actor(),
                                 changed=resync_hook())
        emit_object(_policy_dict(record))


@app.command("update")
def update(name: str, publish: list[str] = _PUBLISH, subscribe: list[str] = _SUBSCRIBE,
           shared: bool = _SHARED) -> None:
    """Replace a policy's rules (every device it applies to gets the new rules)."""
    with errors():
        rules = policies.rules_from_templates(publish, subscribe, shared=shared)
        record = policies.update(STATE.db(), CLOCK, name, rules, actor=STATE.actor(),
                                 changed=resync_hook())
        emit_object(_policy_dict(record))


@app.command("list")
def list_cmd(json_out: bool = _JSON) -> None:
    """Every stored policy (the built-in default and quarantine policies are not stored)."""
    STATE.json = STATE.json or json_out
    with errors():
        records = policies.list_policies(STATE.db())
        if STATE.json:
            emit([_policy_dict(r) for r in records], [])
            return
        emit([{"name": r.name, "version": r.version, "rules": _rules_text(r.policy),
               "shared": len(r.policy.shared_rules)} for r in records],
             ["name", "version", "rules", "shared"], title="policies")


@app.command("show")
def show(name: str, json_out: bool = _JSON) -> None:
    """One policy, its rules and where it is attached."""
    STATE.json = STATE.json or json_out
    with errors():
        detail = policies.show(STATE.db(), name)
        emit_object({**_policy_dict(detail.record), "models": detail.models,
                     "groups": detail.groups})


@app.command("assign")
def assign(name: str,
           model: str | None = typer.Option(None, "--model", help="Device model."),
           group: str | None = typer.Option(None, "--group", help="Device group (created if "
                                            "needed).")) -> None:
    """Attach a policy to a device model or to a device group (exactly one)."""
    if (model is None) == (group is None):
        abort_usage("give exactly one of --model or --group")
    with errors():
        db = STATE.db()
        if model is not None:
            policies.assign_to_model(db, CLOCK, name, model, actor=STATE.actor(),
                                     changed=resync_hook())
        elif group is not None:
            policies.assign_to_group(db, CLOCK, name, group, actor=STATE.actor(),
                                     changed=resync_hook())
        emit_object({"policy": name, "model": model, "group": group})


@group_app.command("add")
def group_add(group: str, device_ids: list[str] = typer.Argument(..., metavar="DEVICE...")
              ) -> None:
    """Put devices in a group (the group is created if needed)."""
    with errors():
        added = policies.add_to_group(STATE.db(), CLOCK, group, device_ids,
                                      actor=STATE.actor(), changed=resync_hook())
        emit_object({"group": group, "added": added,
                     "already_members": [d for d in dict.fromkeys(device_ids)
                                         if d not in added]})


@group_app.command("remove")
def group_remove(group: str, device_ids: list[str] = typer.Argument(..., metavar="DEVICE...")
                 ) -> None:
    """Take devices out of a group."""
    with errors():
        removed = policies.remove_from_group(STATE.db(), CLOCK, group, device_ids,
                                             actor=STATE.actor(), changed=resync_hook())
        emit_object({"group": group, "removed": removed})


@group_app.command("list")
def group_list(json_out: bool = _JSON) -> None:
    """Every device group with its policy and member count."""
    STATE.json = STATE.json or json_out
    with errors():
        emit([{"name": g.name, "policy": g.policy, "members": g.members,
               "created_at": g.created_at.isoformat()} for g in policies.list_groups(STATE.db())],
             ["name", "policy", "members"], title="device groups")


@app.command("check")
def check(device_id: str, action: Action, topic: str, json_out: bool = _JSON) -> None:
    """Would DEVICE be allowed ACTION on TOPIC (a filter for subscribe)? Exit 0 allow, 77 deny."""
    STATE.json = STATE.json or json_out
    with errors():
        decision = policies.decide_for(STATE.db(), device_id, action, topic)
    if STATE.json:
        emit_object({"device": device_id, "action": action.value, "topic": topic,
                     "allowed": decision.allowed, "reason": decision.reason})
    else:
        verdict = "[green]allow[/]" if decision.allowed else "[red]deny[/]"
        out.print(f"{verdict} {escape(decision.reason)}", highlight=False)
    if not decision.allowed:
        raise typer.Exit(TrustError.exit_code)
