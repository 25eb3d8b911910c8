"""Operator security of the HTTP API and the CLI (issue 10, item 5).

* Every operation of the published OpenAPI is classified here: operator operations by the
  permission they need, device/service operations as token-less with the reason. An operation
  nobody classified fails the test, so a new endpoint cannot slip through unauthenticated.
* For each operator operation: no token → 401; an auditor on a write/admin operation → 403; the
  right role → neither 401 nor 403.
* Tokens are stored hashed (read from the database); rotation gives a new secret and refuses the
  old one; revocation refuses the token.
* Failed authentications are limited per source address, counted in the registry.
* Every state-changing operator endpoint and CLI command records an event naming its actor.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tests.integration.fleet import Fleet, Maker, build_fleet
from tests.integration.test_onboarding_service import onboard
from typer.testing import CliRunner

from iotrust.adapters.sql.store import Database
from iotrust.api.app import create_app
from iotrust.cli.main import app as cli_app
from iotrust.errors import AuthError, ConflictError, NotFoundError
from iotrust.ports import FixedClock
from iotrust.services import hardware as hw_svc
from iotrust.services import tokens
from iotrust.services.onboarding import OnboardingService

READ, WRITE, ADMIN = "read", "write", "admin"
PROFILE = Path(__file__).resolve().parents[2] / "examples" / "hardware" / "mcu-secure-element.yaml"

#: Operator operations and the permission each needs.
OPERATOR_OPERATIONS: dict[tuple[str, str], str] = {
    ("GET", "/v1/devices"): READ,
    ("GET", "/v1/devices/{device_id}"): READ,
    ("POST", "/v1/devices/{device_id}/quarantine"): WRITE,
    ("POST", "/v1/devices/{device_id}/release"): WRITE,
    ("POST", "/v1/devices/{device_id}/retire"): WRITE,
    ("PUT", "/v1/devices/{device_id}/model"): WRITE,
    ("GET", "/v1/manufacturers"): READ,
    ("POST", "/v1/manufacturers"): ADMIN,
    ("POST", "/v1/vouchers"): WRITE,
    ("GET", "/v1/events"): READ,
    ("GET", "/v1/zombies"): READ,
    ("POST", "/v1/retirements"): WRITE,
    ("POST", "/v1/rotation/campaigns"): WRITE,
    ("GET", "/v1/rotation/progress"): READ,
    ("GET", "/v1/rollouts"): READ,
    ("GET", "/v1/rollouts/{rollout_id}"): READ,
    ("POST", "/v1/rollouts/{rollout_id}/{action}"): WRITE,
    ("GET", "/v1/audit"): READ,
    ("GET", "/v1/audit/suppressions"): READ,
    ("POST", "/v1/audit/suppressions"): WRITE,
}

#: Operations without an operator token, and why that is right.
TOKENLESS_OPERATIONS: dict[tuple[str, str], str] = {
    ("GET", "/v1/health"): "liveness probe; reveals only the version",
    ("GET", "/v1/crl/{ca_id}.crl"): "CRLs are public by design (named in every certificate)",
    ("POST", "/v1/onboarding/hello"): "device: factory chain + voucher, rate-limited",
    ("POST", "/v1/onboarding/attest"): "device: signature over the transcript with its "
                                       "factory key",
    ("POST", "/v1/onboarding/confirm"): "device: proof with the new operational key",
    ("POST", "/v1/rotation/begin"): "device: signed with its current operational key",
    ("POST", "/v1/rotation/complete"): "device: signed with its current operational key",
    ("POST", "/v1/rotation/confirm"): "device: proof with the new key",
    ("POST", "/v1/broker/emqx/authz"): "broker hook: shared hook secret, decides for devices",
    ("POST", "/v1/broker/emqx/authn"): "broker hook: shared hook secret, certificate CN",
    ("GET", "/v1/tuf/image/metadata/{name}"): "TUF metadata is signed and public",
    ("GET", "/v1/tuf/image/targets/{served_path}"): "TUF targets are verified by hash",
    ("GET", "/v1/tuf/director/{device_id}/metadata/{name}"): "device: read signed with its "
                                                                  "operational key (own only)",
    ("POST", "/v1/updates/status"): "device: COSE-signed status report",
}

SAMPLE_PATH_VALUES = {"device_id": "dev-" + "a" * 26, "rollout_id": "no-such-rollout",
                      "action": "pause", "ca_id": "no-such-ca", "name": "timestamp.json",
                      "served_path": "x/y"}


def _concrete(path: str) -> str:
    return re.sub(r"\{([a-z_]+)\}", lambda m: SAMPLE_PATH_VALUES[m.group(1)], path)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return build_fleet(tmp_path_factory.mktemp("scopes"), makers=(Maker("widgetco", count=4),))


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime.now(UTC))


@pytest.fixture
def api(fleet: Fleet, clock: FixedClock) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    app = create_app(fleet.settings, clock=clock, secrets=fleet.secrets)
    db = Database.open(fleet.database_url)
    secrets: dict[str, str] = {}
    stamp = clock.now().strftime("%H%M%S%f")
    for role in tokens.ROLES:
        _, secret = tokens.create_token(db, clock, name=f"{role}-{stamp}", role=role,
                                        actor="tests@scopes")
        secrets[role] = secret
    db.close()
    yield app, secrets
    app.state.iotrust.db.close()


def _operations(app: FastAPI) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in app.openapi()["paths"].items()
            for method in ops}


def _call(client: TestClient, method: str, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.request(method, _concrete(path), headers=headers).status_code


def test_every_operation_is_classified(api: tuple[FastAPI, dict[str, str]]) -> None:
    app, _ = api
    ops = _operations(app)
    unclassified = ops - OPERATOR_OPERATIONS.keys() - TOKENLESS_OPERATIONS.keys()
    assert not unclassified, f"classify these operations in {__file__}: {sorted(unclassified)}"
    gone = (OPERATOR_OPERATIONS.keys() | TOKENLESS_OPERATIONS.keys()) - ops
    assert not gone, f"classified operations that no longer exist: {sorted(gone)}"
    assert not OPERATOR_OPERATIONS.keys() & TOKENLESS_OPERATIONS.keys()


def test_each_operator_operation_checks_the_token_and_role(
        api: tuple[FastAPI, dict[str, str]], clock: FixedClock) -> None:
    app, secrets = api
    role_for = {READ: "auditor", WRITE: "operator", ADMIN: "admin"}
    problems: list[str] = []
    # a source of its own, whose failed authentications (one wrong token per operation) age
    # out of the per-source window before each operation: the number of operations never
    # trips the limit, and the other tests' source keeps a clean count
    with TestClient(app, raise_server_exceptions=False,
                    client=("198.51.100.9", 4000)) as client:
        for (method, path), permission in sorted(OPERATOR_OPERATIONS.items()):
            clock.advance(app.state.iotrust.auth_limits.window_s + 1)
            where = f"{method} {path}"
            if (code := _call(client, method, path, None)) != 401:
                problems.append(f"{where} without a token: {code}")
            if (code := _call(client, method, path, "iot_not-a-real-token")) != 401:
                problems.append(f"{where} with a wrong token: {code}")
            if permission != READ and \
                    (code := _call(client, method, path, secrets["auditor"])) != 403:
                problems.append(f"{where} as auditor: {code}")
            if permission == ADMIN and \
                    (code := _call(client, method, path, secrets["operator"])) != 403:
                problems.append(f"{where} as operator: {code}")
            code = _call(client, method, path, secrets[role_for[permission]])
            if code in (401, 403):
                problems.append(f"{where} as {role_for[permission]}: {code}")
    assert not problems, "\n".join(problems)


def test_tokens_are_stored_hashed_rotated_and_revoked(fleet: Fleet, clock: FixedClock) -> None:
    db = Database.open(fleet.database_url)
    try:
        record, secret = tokens.create_token(db, clock, name="rotating", role="operator",
                                             actor="tests@scopes")
        raw = sqlite3.connect(fleet.settings.data_dir / "iotrust.db")
        try:
            dump = "\n".join(raw.iterdump())
        finally:
            raw.close()
        assert secret not in dump
        assert secret.removeprefix(tokens.PREFIX) not in dump
        assert record.token_sha256 in dump
        assert tokens.authenticate(db, secret).name == "rotating"

        rotated, new_secret = tokens.rotate_token(db, clock, "rotating", actor="alice@cli")
        assert new_secret != secret
        assert rotated.role == "operator"
        assert tokens.authenticate(db, new_secret).name == "rotating"
        with pytest.raises(AuthError) as old:
            tokens.authenticate(db, secret)
        assert old.value.reason == "unauthenticated"
        with db.transaction() as tx:
            last = list(tx.iter_events())[-1]
        assert (last.kind, last.actor) == (tokens.TOKEN_ROTATED, "alice@cli")
        assert new_secret not in last.data

        tokens.revoke_token(db, clock, "rotating", actor="alice@cli")
        with pytest.raises(AuthError):
            tokens.authenticate(db, new_secret)
        with pytest.raises(ConflictError) as revoked:
            tokens.rotate_token(db, clock, "rotating", actor="alice@cli")
        assert revoked.value.reason == "token_revoked"
        with pytest.raises(NotFoundError):
            tokens.rotate_token(db, clock, "never-made", actor="alice@cli")
    finally:
        db.close()


def test_failed_authentications_are_rate_limited_per_source(
        api: tuple[FastAPI, dict[str, str]], clock: FixedClock) -> None:
    app, secrets = api
    limit = app.state.iotrust.auth_limits.limit
    bad = {"Authorization": "Bearer iot_guessing"}
    good = {"Authorization": f"Bearer {secrets['auditor']}"}
    with TestClient(app, client=("192.0.2.7", 4000)) as attacker, \
            TestClient(app, client=("192.0.2.8", 4000)) as operator:
        codes = [attacker.get("/v1/devices", headers=bad).status_code for _ in range(limit)]
        assert codes == [401] * limit
        refused = attacker.get("/v1/devices", headers=bad)
        assert refused.status_code == 429
        assert refused.json()["reason"] == "rate_limited"
        # limited for a while, even with a valid token; other sources are not affected
        assert attacker.get("/v1/devices", headers=good).status_code == 429
        assert operator.get("/v1/devices", headers=good).status_code == 200
        # a second app (another worker) sees the same count: it lives in the registry
        other = create_app(app.state.iotrust.settings, clock=clock,
                           secrets=app.state.iotrust.secrets)
        with TestClient(other, client=("192.0.2.7", 4001)) as same_source:
            assert same_source.get("/v1/devices", headers=good).status_code == 429
        other.state.iotrust.db.close()
        clock.advance(app.state.iotrust.auth_limits.window_s + 1)
        assert attacker.get("/v1/devices", headers=good).status_code == 200
    db = app.state.iotrust.db
    with db.transaction() as tx:
        limited = [e for e in tx.iter_events() if e.kind == tokens.AUTH_RATE_LIMITED]
    assert any("192.0.2.7" in e.data for e in limited)
    assert all(secrets["auditor"] not in e.data for e in limited)


def _events_after(db: Database, seq: int) -> list[Any]:
    with db.transaction() as tx:
        return list(tx.iter_events(after_seq=seq))


def _head(db: Database) -> int:
    with db.transaction() as tx:
        head = tx.event_head()
    return head.seq if head else 0


def test_every_operator_write_records_its_actor(fleet: Fleet, clock: FixedClock,
                                                api: tuple[FastAPI, dict[str, str]]) -> None:
    app, secrets = api
    db = app.state.iotrust.db
    onboard(OnboardingService(db, clock, fleet.settings, fleet.secrets),
            fleet.device(fleet.serials("widgetco")[0]), clock)
    admin_name = next(t.name for t in _tokens(db) if tokens.authenticate(db, secrets["admin"])
                      .name == t.name)
    serials = fleet.serials("widgetco")
    ids = {s: _device_id(db, s) for s in serials}
    a, b, c = ids[serials[0]], ids[serials[1]], ids[serials[2]]
    extra = fleet.factories["widgetco"]
    hw_svc.register_model(db, clock, name="scope-model", manufacturer="widgetco",
                          profile_yaml=PROFILE.read_bytes(), actor="tests@scopes")
    calls: list[tuple[str, str, Any]] = [
        ("POST", f"/v1/devices/{a}/quarantine", {"reason": "suspicious"}),
        ("POST", f"/v1/devices/{a}/release", None),
        ("POST", f"/v1/devices/{b}/retire", {"reason": "decommissioned"}),
        ("POST", "/v1/retirements", {"reason": "lost", "devices": [c]}),
        ("POST", "/v1/rotation/campaigns", {"all": True}),
        ("PUT", f"/v1/devices/{a}/model", {"model": "scope-model"}),
        ("POST", "/v1/manufacturers", {
            "name": "othermaker", "anchors_pem": (extra.path / "root.crt.pem").read_text(),
            "allowed": ["0x9999:other-1"]}),
        ("POST", "/v1/vouchers", [fleet.device(serials[3]).voucher.decode()]),
    ]
    headers = {"Authorization": f"Bearer {secrets['admin']}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        for method, path, body in calls:
            before = _head(db)
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code < 300, (path, response.text)
            new = _events_after(db, before)
            if path == "/v1/vouchers":  # re-importing a known voucher changes nothing
                assert response.json()["unchanged"] == 1
                continue
            assert new, f"{method} {path} recorded no event"
            assert any(admin_name in e.actor for e in new), (path, [e.actor for e in new])


def _tokens(db: Database) -> list[Any]:
    with db.transaction() as tx:
        return tx.list_tokens()


def _device_id(db: Database, serial: str) -> str:
    with db.transaction() as tx:
        device = tx.find_device("widgetco", serial)
    assert device is not None
    return device.id


def test_every_cli_write_records_its_actor(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = build_fleet(tmp_path, makers=(Maker("gizmoco", count=3, allow=(
        "0x1234:sensor-1", "0x1234:sensor-2")),))
    monkeypatch.setenv("USER", "carol")
    monkeypatch.setenv("IOTRUST_DATA", str(fleet.settings.data_dir))
    monkeypatch.setenv("IOTRUST_PASSPHRASE_FILE", str(fleet.passphrase_file))
    monkeypatch.delenv("IOTRUST_PASSPHRASE", raising=False)
    db = Database.open(fleet.database_url)
    serials = fleet.serials("gizmoco")
    clock = FixedClock(datetime.now(UTC))
    onboard(OnboardingService(db, clock, fleet.settings, fleet.secrets),
            fleet.device(serials[0]), clock)
    with db.transaction() as tx:
        ids = [d.id for s in serials if (d := tx.find_device("gizmoco", s)) is not None]
    runner = CliRunner()
    commands = [
        ["token", "create", "ci-bot", "--role", "operator"],
        ["token", "rotate", "ci-bot"],
        ["token", "revoke", "ci-bot"],
        ["quarantine", ids[0]],
        # `iotrust release DEVICE` is shadowed by the firmware `release` group (reported)
        ["retire", ids[1], "--reason", "compromised"],
        ["crl", "publish"],
        ["model", "add", "gizmo-s1", "--manufacturer", "gizmoco", "--profile", str(PROFILE),
         "--product-id", "sensor-1"],
        ["model", "add", "gizmo-s2", "--manufacturer", "gizmoco", "--profile", str(PROFILE),
         "--product-id", "sensor-2"],
        ["devices", "set-model", ids[2], "gizmo-s2"],
        ["manufacturer", "revoke", "gizmoco"],
    ]
    try:
        for args in commands:
            before = _head(db)
            result = runner.invoke(cli_app, ["--json", *args])
            assert result.exit_code == 0, (args, result.output)
            new = _events_after(db, before)
            assert new, f"iotrust {' '.join(args)} recorded no event"
            assert all(e.actor == "carol@cli" for e in new), (args, [e.actor for e in new])
            if args[:2] == ["token", "rotate"]:
                assert any(e.kind == tokens.TOKEN_ROTATED for e in new)
    finally:
        db.close()
