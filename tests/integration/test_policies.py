"""Policies in the registry (SQLite and PostgreSQL): create, assign, resolve, decide, events."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from tests.conftest import T0
from tests.integration.pg import fresh_postgres_database

from iotrust.adapters.sql import Database
from iotrust.adapters.sql import schema as s
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import Device, DeviceState, KeyStorage, RetirementReason
from iotrust.core.policy import (
    DEFAULT_POLICY,
    Action,
    Decision,
    Policy,
    Rule,
)
from iotrust.core.records import DeviceModel, Manufacturer
from iotrust.errors import ConflictError, InputError, NotFoundError
from iotrust.ports import FixedClock
from iotrust.services import eventlog
from iotrust.services import policies as svc
from iotrust.services.policies import PolicyChange

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
ACTOR = "tester@cli"
PUB, SUB = Action.PUBLISH, Action.SUBSCRIBE

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        Database.open(url).close()
        yield url


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database.open(f"sqlite:///{tmp_path / 'registry.db'}")
    else:
        database = Database.open(str(request.getfixturevalue("pg_module_url")))
        tables = ", ".join(t.name for t in s.metadata.sorted_tables if t.name != "event_head")
        with database._engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            conn.execute(text("UPDATE event_head SET seq = 0, hash = ''"))
    try:
        yield database
    finally:
        database.close()


def device_id(n: int) -> str:
    return new_device_id(n.to_bytes(16, "big"))


def seed(db: Database, n: int = 4, *, model: str | None = "sensor-v1") -> list[str]:
    """A manufacturer, two models, and ``n`` ACTIVE devices of ``model``."""
    with db.transaction() as tx:
        tx.add_manufacturer(Manufacturer(name="acme", display_name="ACME", anchors_pem=PEM,
                                         allowed=("acme:sensor",), created_at=T0))
        for name in ("sensor-v1", "gateway-v1"):
            tx.add_model(DeviceModel(name=name, manufacturer="acme", credential_lifetime_s=3600,
                                     created_at=T0))
        tx.add_devices([Device(
            id=device_id(i), manufacturer="acme", serial=f"SN-{i:04d}",
            factory_spki_sha256=hashlib.sha256(f"k{i}".encode()).hexdigest(),
            vendor_id="acme", product_id="sensor", owner="operator", state=DeviceState.ACTIVE,
            created_at=T0, updated_at=T0, model=model, key_storage=KeyStorage.TPM)
            for i in range(n)])
    return [device_id(i) for i in range(n)]


def set_state(db: Database, dev: str, state: DeviceState) -> None:
    with db.transaction() as tx:
        current = tx.get_device(dev)
        retired = RetirementReason.DECOMMISSIONED if state is DeviceState.RETIRED else None
        tx.update_device(dataclasses.replace(current, state=state, retired_reason=retired),
                         expected_state=current.state)


def expect(error: type[Exception], reason: str, call: Callable[[], object]) -> None:
    with pytest.raises(error) as info:
        call()
    assert getattr(info.value, "reason", None) == reason


def kinds(db: Database) -> list[str]:
    with db.transaction(readonly=True) as tx:
        return [e.kind for e in tx.iter_events()]


GATEWAY_RULES = (Rule(PUB, "devices/{device_id}/telemetry"),
                 Rule(PUB, "devices/{device_id}/children/+/telemetry"),
                 Rule(SUB, "devices/{device_id}/commands/#"))
FLEET_RULES = (Rule(SUB, "fleet/announcements", shared=True),)


def test_schema_matches_the_migrations(db: Database) -> None:
    assert db.schema_revision() == Database.head_revision()
    with db._engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                s.metadata)
    assert diff == []


def test_create_list_show_update(db: Database) -> None:
    clock = FixedClock(T0)
    changes: list[PolicyChange] = []
    record = svc.create(db, clock, "gateway", GATEWAY_RULES, actor=ACTOR, changed=changes.append)
    assert (record.name, record.version, record.policy.rules) == ("gateway", 1, GATEWAY_RULES)
    expect(ConflictError, "policy_exists",
           lambda: svc.create(db, clock, "gateway", GATEWAY_RULES, actor=ACTOR))
    svc.create(db, clock, "fleet", FLEET_RULES, actor=ACTOR)
    assert [r.name for r in svc.list_policies(db)] == ["fleet", "gateway"]
    stored = svc.show(db, "fleet").record.policy
    assert stored.rules[0].shared is True  # stored explicitly, for the audit

    updated = svc.update(db, clock, "gateway", GATEWAY_RULES[:1], actor=ACTOR,
                         changed=changes.append)
    assert updated.version == 2
    assert svc.show(db, "gateway").record.policy.rules == GATEWAY_RULES[:1]
    expect(NotFoundError, "unknown_policy",
           lambda: svc.update(db, clock, "nope", GATEWAY_RULES, actor=ACTOR))
    expect(NotFoundError, "unknown_policy", lambda: svc.show(db, "nope"))
    assert [c.kind for c in changes] == [svc.POLICY_CREATED, svc.POLICY_CHANGED]
    assert kinds(db) == [svc.POLICY_CREATED, svc.POLICY_CREATED, svc.POLICY_CHANGED]
    assert eventlog.verify(db).intact


def test_invalid_policies_are_refused_before_storage(db: Database) -> None:
    clock = FixedClock(T0)
    expect(InputError, "policy_cross_device", lambda: svc.create(
        db, clock, "bad", svc.rules_from_templates(subscribe=["devices/+/commands"]),
        actor=ACTOR))
    expect(InputError, "invalid_policy_name", lambda: svc.create(
        db, clock, "Bad Name", GATEWAY_RULES, actor=ACTOR))
    expect(InputError, "policy_invalid", lambda: svc.create(db, clock, "empty", (), actor=ACTOR))
    assert svc.list_policies(db) == []
    assert kinds(db) == []


def test_resolution_default_model_and_groups(db: Database) -> None:
    clock = FixedClock(T0)
    devs = seed(db)
    assert svc.resolve(db, devs[0]) is DEFAULT_POLICY
    svc.create(db, clock, "gateway", GATEWAY_RULES, actor=ACTOR)
    svc.create(db, clock, "fleet", FLEET_RULES, actor=ACTOR)

    changes: list[PolicyChange] = []
    svc.assign_to_model(db, clock, "gateway", "sensor-v1", actor=ACTOR, changed=changes.append)
    assert svc.resolve(db, devs[0]).rules == GATEWAY_RULES
    assert svc.show(db, "gateway").models == ["sensor-v1"]

    added = svc.add_to_group(db, clock, "eu", [devs[0], devs[1], devs[0]], actor=ACTOR,
                             changed=changes.append)
    assert added == [devs[0], devs[1]]
    assert svc.add_to_group(db, clock, "eu", [devs[0]], actor=ACTOR) == []  # idempotent
    assert svc.resolve(db, devs[0]).rules == GATEWAY_RULES  # group without a policy yet
    svc.assign_to_group(db, clock, "fleet", "eu", actor=ACTOR, changed=changes.append)
    merged = svc.resolve(db, devs[0])
    assert set(merged.rules) == set(GATEWAY_RULES) | set(FLEET_RULES)
    assert svc.resolve(db, devs[2]).rules == GATEWAY_RULES
    assert svc.show(db, "fleet").groups == ["eu"]
    assert [(g.name, g.policy, g.members) for g in svc.list_groups(db)] == [("eu", "fleet", 2)]

    assert svc.resolve_all(db) == {devs[0]: merged, devs[1]: merged, devs[2]: svc.resolve(
        db, devs[2]), devs[3]: svc.resolve(db, devs[3])}
    assert svc.remove_from_group(db, clock, "eu", [devs[0], devs[2]], actor=ACTOR,
                                 changed=changes.append) == [devs[0]]
    assert svc.resolve(db, devs[0]).rules == GATEWAY_RULES
    svc.assign_to_model(db, clock, None, "sensor-v1", actor=ACTOR)
    assert svc.resolve(db, devs[2]) is DEFAULT_POLICY
    assert svc.resolve(db, devs[1]).rules == FLEET_RULES

    assert [c.kind for c in changes] == [svc.POLICY_ASSIGNED, svc.GROUP_MEMBER_ADDED,
                                         svc.POLICY_ASSIGNED, svc.GROUP_MEMBER_REMOVED]
    assert changes[1].device_ids == (devs[0], devs[1])
    assert changes[2].device_ids == (devs[0], devs[1])
    assert kinds(db).count(svc.GROUP_MEMBER_ADDED) == 2
    with db.transaction(readonly=True) as tx:
        member_events = list(tx.iter_events(kind=svc.GROUP_MEMBER_ADDED))
    assert {e.device_id for e in member_events} == {devs[0], devs[1]}
    assert eventlog.verify(db).intact


def test_assignment_refusals(db: Database) -> None:
    clock = FixedClock(T0)
    devs = seed(db, 1)
    svc.create(db, clock, "gateway", GATEWAY_RULES, actor=ACTOR)
    expect(NotFoundError, "unknown_model",
           lambda: svc.assign_to_model(db, clock, "gateway", "nope", actor=ACTOR))
    expect(NotFoundError, "unknown_policy",
           lambda: svc.assign_to_model(db, clock, "nope", "sensor-v1", actor=ACTOR))
    expect(NotFoundError, "unknown_policy",
           lambda: svc.assign_to_group(db, clock, "nope", "eu", actor=ACTOR))
    assert svc.list_groups(db) == []  # the group creation was rolled back with the refusal
    unknown = device_id(999)
    expect(NotFoundError, "unknown_device",
           lambda: svc.add_to_group(db, clock, "eu", [devs[0], unknown], actor=ACTOR))
    assert svc.list_groups(db) == []  # all or nothing
    expect(InputError, "invalid_device_id",
           lambda: svc.add_to_group(db, clock, "eu", ["not-a-device"], actor=ACTOR))
    expect(InputError, "invalid_devices", lambda: svc.add_to_group(db, clock, "eu", [],
                                                                   actor=ACTOR))
    expect(NotFoundError, "unknown_group",
           lambda: svc.remove_from_group(db, clock, "nope", devs, actor=ACTOR))
    expect(NotFoundError, "unknown_device", lambda: svc.resolve(db, unknown))
    svc.create_group(db, clock, "eu", actor=ACTOR, policy="gateway")
    expect(ConflictError, "group_exists",
           lambda: svc.create_group(db, clock, "eu", actor=ACTOR))
    assert kinds(db) == [svc.POLICY_CREATED, svc.GROUP_CREATED]


def test_decide_for_follows_registry_state(db: Database) -> None:
    clock = FixedClock(T0)
    devs = seed(db, 3)
    svc.create(db, clock, "gateway", GATEWAY_RULES, actor=ACTOR)
    svc.add_to_group(db, clock, "gw", [devs[0]], actor=ACTOR)
    svc.assign_to_group(db, clock, "gateway", "gw", actor=ACTOR)
    own, other = devs[0], devs[1]
    child = f"devices/{own}/children/x/telemetry"
    assert svc.decide_for(db, own, PUB, child) == Decision(True, "allowed")
    assert svc.decide_for(db, other, PUB, f"devices/{other}/children/x/telemetry") \
        == Decision(False, "no_matching_rule")  # default policy has no children rule
    assert svc.decide_for(db, other, PUB, f"devices/{other}/status").allowed
    assert svc.decide_for(db, own, PUB, f"devices/{other}/telemetry").reason \
        == "no_matching_rule"
    set_state(db, own, DeviceState.QUARANTINED)
    assert svc.decide_for(db, own, PUB, child) == Decision(False, "quarantined")
    assert svc.decide_for(db, own, PUB, f"devices/{own}/attestation").allowed
    assert svc.decide_for(db, own, SUB, f"devices/{own}/updates/#").allowed
    set_state(db, own, DeviceState.RETIRED)
    assert svc.decide_for(db, own, PUB, f"devices/{own}/attestation").reason == "device_retired"
    set_state(db, devs[2], DeviceState.EXPECTED)
    assert svc.decide_for(db, devs[2], PUB, f"devices/{devs[2]}/status").reason \
        == "device_not_active"
    assert svc.decide_for(db, device_id(999), PUB, "x").reason == "unknown_device"
    assert svc.decide_for(db, "x" * 10_000, PUB, "x").reason == "unknown_device"
    assert svc.decide_for(db, other, PUB, f"devices/{other}/+").reason == "invalid_topic"


def test_a_failing_change_hook_does_not_undo_the_change(db: Database) -> None:
    clock = FixedClock(T0)

    def broken(_: PolicyChange) -> None:
        raise RuntimeError("broker down")

    with pytest.raises(RuntimeError):
        svc.create(db, clock, "gateway", GATEWAY_RULES, actor=ACTOR, changed=broken)
    assert [r.name for r in svc.list_policies(db)] == ["gateway"]


def test_stored_rules_are_revalidated_on_read(db: Database) -> None:
    """A row edited behind iotrust's back into a cross-device rule is refused, not obeyed."""
    clock = FixedClock(T0)
    svc.create(db, clock, "gateway", GATEWAY_RULES, actor=ACTOR)
    with db._engine.begin() as conn:
        conn.execute(s.policies.update().values(
            rules=[{"action": "subscribe", "template": "devices/#", "shared": False}]))
    expect(InputError, "policy_cross_device", lambda: svc.show(db, "gateway"))


def test_policy_merge_is_stable_for_many_groups(db: Database) -> None:
    clock = FixedClock(T0)
    devs = seed(db, 1)
    for i in range(12):
        name = f"policy-with-a-rather-long-name-{i:02d}"
        svc.create(db, clock, name, (Rule(PUB, f"devices/{{device_id}}/p{i}"),), actor=ACTOR)
        svc.assign_to_group(db, clock, name, f"group-{i:02d}", actor=ACTOR)
        svc.add_to_group(db, clock, f"group-{i:02d}", devs, actor=ACTOR)
    policy = svc.resolve(db, devs[0])
    assert isinstance(policy, Policy)
    assert len(policy.rules) == 12
    assert all(svc.decide_for(db, devs[0], PUB, f"devices/{devs[0]}/p{i}").allowed
               for i in range(12))


def test_cli_create_assign_check(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `iotrust policy` commands against a SQLite registry; check exits 0 / 77."""
    from typer.testing import CliRunner  # noqa: PLC0415 - only this test drives the CLI

    from iotrust.cli.main import app  # noqa: PLC0415

    monkeypatch.setenv("IOTRUST_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("IOTRUST_DATABASE_URL", raising=False)
    (tmp_path / "data").mkdir()
    db = Database.open(f"sqlite:///{tmp_path / 'data' / 'iotrust.db'}")
    try:
        devs = seed(db, 2)
    finally:
        db.close()
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.output

    code, _ = run("policy", "create", "gw", "--publish",
                  "devices/{device_id}/children/+/telemetry", "--subscribe",
                  "devices/{device_id}/commands/#")
    assert code == 0
    code, output = run("policy", "create", "bad", "--subscribe", "devices/+/commands/#")
    assert code == 65
    assert "policy_cross_device" in output
    assert run("policy", "assign", "gw")[0] == 2
    assert run("policy", "assign", "gw", "--group", "gws")[0] == 0
    assert run("policy", "group", "add", "gws", devs[0])[0] == 0
    assert run("policy", "group", "add", "gws", device_id(77))[0] == 66
    code, output = run("policy", "list", "--json")
    assert code == 0
    assert [p["name"] for p in json.loads(output)] == ["gw"]

    topic = f"devices/{devs[0]}/children/a/telemetry"
    code, output = run("policy", "check", devs[0], "publish", topic)
    assert (code, output.split()) == (0, ["allow", "allowed"])
    code, output = run("policy", "check", devs[1], "publish",
                       f"devices/{devs[1]}/children/a/telemetry")
    assert (code, output.split()) == (77, ["deny", "no_matching_rule"])
    code, output = run("--json", "policy", "check", devs[0], "subscribe", "devices/#")
    assert code == 77
    assert json.loads(output)["reason"] == "no_matching_rule"
    assert run("policy", "check", devs[0], "write", topic)[0] == 2
