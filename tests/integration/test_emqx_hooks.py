"""The EMQX 5 HTTP authn/authz hooks through the real app, and once through `iotrust serve`.

Request bodies are exactly what EMQX sends when configured as ``docs/deploy-cluster.md`` says
(placeholders substituted); responses must be HTTP 200 with ``{"result": "allow"|"deny"}`` (plus
``"is_superuser": false`` on an allowed login): EMQX reads any other status as "ignore".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.conftest import T0
from tests.integration.server import running_server

from iotrust.adapters.sql import Database
from iotrust.api import broker_hooks
from iotrust.api.app import create_app
from iotrust.core import events as ev
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import Device, DeviceState, KeyStorage, RetirementReason
from iotrust.core.policy import Action, Rule
from iotrust.core.records import Manufacturer
from iotrust.errors import InputError
from iotrust.ports import FixedClock
from iotrust.services import policies
from iotrust.services.domain import Secrets
from iotrust.services.settings import Settings

SECRET = "broker-hook-secret-for-tests-0123456789"
HEADERS = {broker_hooks.HOOK_SECRET_HEADER: SECRET, "content-type": "application/json"}
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
AUTHZ = "/v1/broker/emqx/authz"
AUTHN = "/v1/broker/emqx/authn"
ALLOW = {"result": "allow"}
DENY = {"result": "deny"}
LOGIN_OK = {"result": "allow", "is_superuser": False}


def dev(n: int) -> str:
    return new_device_id(n.to_bytes(16, "big"))


ACTIVE, OTHER, QUARANTINED, RETIRED, EXPECTED, GATEWAY = (dev(i) for i in range(1, 7))
STATES = {ACTIVE: DeviceState.ACTIVE, OTHER: DeviceState.ACTIVE,
          QUARANTINED: DeviceState.QUARANTINED, RETIRED: DeviceState.RETIRED,
          EXPECTED: DeviceState.EXPECTED, GATEWAY: DeviceState.ACTIVE}


def seed(url: str) -> Database:
    db = Database.open(url)
    with db.transaction() as tx:
        tx.add_manufacturer(Manufacturer(name="acme", display_name="ACME", anchors_pem=PEM,
                                         allowed=("acme:sensor",), created_at=T0))
        tx.add_devices([Device(
            id=device_id, manufacturer="acme", serial=f"SN-{i}",
            factory_spki_sha256=hashlib.sha256(device_id.encode()).hexdigest(),
            vendor_id="acme", product_id="sensor", owner="operator", state=state,
            retired_reason=RetirementReason.COMPROMISED if state is DeviceState.RETIRED else None,
            created_at=T0, updated_at=T0, key_storage=KeyStorage.TPM)
            for i, (device_id, state) in enumerate(STATES.items())])
    clock = FixedClock(T0)
    policies.create(db, clock, "gateway", (
        Rule(Action.PUBLISH, "devices/{device_id}/children/+/telemetry"),), actor="t@cli")
    policies.assign_to_group(db, clock, "gateway", "gateways", actor="t@cli")
    policies.add_to_group(db, clock, "gateways", [GATEWAY], actor="t@cli")
    return db


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[Settings, Database]]:
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'r.db'}")
    db = seed(settings.database_url)
    try:
        yield settings, db
    finally:
        db.close()


@pytest.fixture
def client(registry: tuple[Settings, Database],
           monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    settings, db = registry
    monkeypatch.setenv(broker_hooks.HOOK_SECRET_ENV, SECRET)
    app = create_app(settings, clock=FixedClock(T0), secrets=Secrets(), db=db)
    with TestClient(app) as test_client:
        yield test_client


def authz(client: TestClient, username: str, action: str, topic: str, *,
          clientid: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"clientid": username if clientid is None else clientid, "username": username,
            "topic": topic, "action": action, "peerhost": "10.0.0.7"}
    return client.post(AUTHZ, content=json.dumps(body), headers=HEADERS if headers is None
                       else headers)


def result(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(("username", "action", "topic", "expected"), [
    (ACTIVE, "publish", f"devices/{ACTIVE}/telemetry", ALLOW),
    (ACTIVE, "subscribe", f"devices/{ACTIVE}/commands/#", ALLOW),
    (ACTIVE, "subscribe", f"devices/{ACTIVE}/commands/reboot", ALLOW),
    (ACTIVE, "publish", f"devices/{OTHER}/telemetry", DENY),          # another device's topic
    (ACTIVE, "subscribe", "devices/+/telemetry", DENY),
    (ACTIVE, "subscribe", "#", DENY),
    (ACTIVE, "publish", f"devices/{ACTIVE}/telemetry/#", DENY),       # wildcard in a publish
    (ACTIVE, "publish", f"devices/{ACTIVE}/children/x/telemetry", DENY),
    (GATEWAY, "publish", f"devices/{GATEWAY}/children/x/telemetry", ALLOW),  # group policy
    (GATEWAY, "publish", f"devices/{GATEWAY}/telemetry", DENY),
    (QUARANTINED, "publish", f"devices/{QUARANTINED}/telemetry", DENY),
    (QUARANTINED, "publish", f"devices/{QUARANTINED}/attestation", ALLOW),
    (QUARANTINED, "subscribe", f"devices/{QUARANTINED}/updates/#", ALLOW),
    (QUARANTINED, "subscribe", f"devices/{QUARANTINED}/commands/#", DENY),
    (RETIRED, "publish", f"devices/{RETIRED}/attestation", DENY),
    (EXPECTED, "publish", f"devices/{EXPECTED}/telemetry", DENY),
    (dev(99), "publish", f"devices/{dev(99)}/telemetry", DENY),       # unknown device
    ("admin@iotrust", "subscribe", "#", DENY),
    (ACTIVE, "all", f"devices/{ACTIVE}/telemetry", DENY),             # not publish/subscribe
])
def test_authz_decisions(client: TestClient, username: str, action: str, topic: str,
                         expected: dict[str, str]) -> None:
    assert result(authz(client, username, action, topic)) == expected


def test_authz_matches_decide_for(client: TestClient, registry: tuple[Settings, Database]) -> None:
    _, db = registry
    for device_id in STATES:
        for action in Action:
            topic = f"devices/{device_id}/updates/#" if action is Action.SUBSCRIBE \
                else f"devices/{device_id}/status"
            expected = policies.decide_for(db, device_id, action, topic).allowed
            assert result(authz(client, device_id, action.value, topic)) == (
                ALLOW if expected else DENY)


@pytest.mark.parametrize(("body", "login_too"), [
    (b"", True), (b"not json", True), (b"[]", True), (b"null", True), (b"\xff\xfe", True),
    (b'{"username": 5, "topic": "x", "action": "publish"}', True),
    (json.dumps({"topic": f"devices/{ACTIVE}/telemetry", "action": "publish"}).encode(), True),
    (json.dumps({"username": ACTIVE, "topic": f"devices/{ACTIVE}/telemetry",
                 "action": "publish", "pad": "x" * 9000}).encode(), True),   # oversized
    (json.dumps({"username": ACTIVE, "action": "publish"}).encode(), False),   # no topic
    (json.dumps({"username": ACTIVE, "topic": f"devices/{ACTIVE}/telemetry"}).encode(), False),
])
def test_malformed_requests_are_denied_with_200(client: TestClient, body: bytes,
                                                login_too: bool) -> None:
    assert result(client.post(AUTHZ, content=body, headers=HEADERS)) == DENY
    if login_too:
        assert result(client.post(AUTHN, content=body, headers=HEADERS)) == DENY


def test_client_id_must_be_the_device_id(client: TestClient) -> None:
    topic = f"devices/{ACTIVE}/telemetry"
    assert result(authz(client, ACTIVE, "publish", topic, clientid="other")) == DENY
    body = {"clientid": "other", "username": ACTIVE, "peerhost": "10.0.0.7"}
    assert result(client.post(AUTHN, content=json.dumps(body), headers=HEADERS)) == DENY


def test_the_shared_secret_is_required(client: TestClient) -> None:
    topic = f"devices/{ACTIVE}/telemetry"
    for headers in ({"content-type": "application/json"},
                    {broker_hooks.HOOK_SECRET_HEADER: SECRET[:-1] + "x"},
                    {broker_hooks.HOOK_SECRET_HEADER: ""},
                    {broker_hooks.HOOK_SECRET_HEADER: SECRET + "x"}):
        assert result(authz(client, ACTIVE, "publish", topic, headers=headers)) == DENY
        body = json.dumps({"clientid": ACTIVE, "username": ACTIVE})
        assert result(client.post(AUTHN, content=body, headers=headers)) == DENY
    assert result(authz(client, ACTIVE, "publish", topic)) == ALLOW


def test_without_a_configured_secret_everything_is_denied(
        registry: tuple[Settings, Database], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, db = registry
    monkeypatch.delenv(broker_hooks.HOOK_SECRET_ENV, raising=False)
    monkeypatch.delenv(broker_hooks.HOOK_SECRET_FILE_ENV, raising=False)
    with TestClient(create_app(settings, secrets=Secrets(), db=db)) as unconfigured:
        assert result(authz(unconfigured, ACTIVE, "publish",
                            f"devices/{ACTIVE}/telemetry")) == DENY


def test_secret_configuration(tmp_path: Path) -> None:
    assert broker_hooks.hook_secret_from_environment({}) is None
    assert broker_hooks.hook_secret_from_environment(
        {broker_hooks.HOOK_SECRET_ENV: SECRET}) == SECRET.encode()
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    assert broker_hooks.hook_secret_from_environment(
        {broker_hooks.HOOK_SECRET_FILE_ENV: str(path)}) == SECRET.encode()
    with pytest.raises(InputError) as info:
        broker_hooks.hook_secret_from_environment({broker_hooks.HOOK_SECRET_ENV: "short"})
    assert info.value.reason == "weak_broker_hook_secret"
    assert "short" not in str(info.value.diagnostics())
    with pytest.raises(InputError) as info:
        broker_hooks.hook_secret_from_environment(
            {broker_hooks.HOOK_SECRET_FILE_ENV: str(tmp_path / "missing")})
    assert info.value.reason == "broker_hook_secret_unreadable"


@pytest.mark.parametrize(("username", "expected"), [
    (ACTIVE, LOGIN_OK), (QUARANTINED, LOGIN_OK), (GATEWAY, LOGIN_OK),
    (RETIRED, DENY), (EXPECTED, DENY), (dev(99), DENY), ("admin@iotrust", DENY), ("", DENY),
])
def test_authn_decisions(client: TestClient, username: str, expected: dict[str, object]) -> None:
    body = {"clientid": username, "username": username, "peerhost": "10.0.0.7"}
    assert result(client.post(AUTHN, content=json.dumps(body), headers=HEADERS)) == expected


def test_authn_checks_the_certificate_common_name(client: TestClient) -> None:
    body = {"clientid": ACTIVE, "username": ACTIVE, "cert_common_name": OTHER}
    assert result(client.post(AUTHN, content=json.dumps(body), headers=HEADERS)) == DENY
    body["cert_common_name"] = ACTIVE
    assert result(client.post(AUTHN, content=json.dumps(body), headers=HEADERS)) == LOGIN_OK


def test_a_retired_device_login_is_a_recorded_zombie_contact(
        client: TestClient, registry: tuple[Settings, Database]) -> None:
    _, db = registry
    body = {"clientid": RETIRED, "username": RETIRED, "peerhost": "10.0.0.9"}
    assert result(client.post(AUTHN, content=json.dumps(body), headers=HEADERS)) == DENY
    with db.transaction(readonly=True) as tx:
        zombies = list(tx.iter_events(kind=ev.ZOMBIE_CONTACT))
    assert [(z.device_id, z.reason) for z in zombies] == [(RETIRED, "retired")]
    assert json.loads(zombies[0].data) == {"channel": "broker.authn", "source": "10.0.0.9"}


def test_quarantine_takes_effect_on_the_next_decision(
        client: TestClient, registry: tuple[Settings, Database]) -> None:
    _, db = registry
    topic = f"devices/{OTHER}/telemetry"
    assert result(authz(client, OTHER, "publish", topic)) == ALLOW
    with db.transaction() as tx:
        current = tx.get_device(OTHER)
        tx.update_device(dataclasses.replace(current, state=DeviceState.QUARANTINED),
                         expected_state=DeviceState.ACTIVE)
    assert result(authz(client, OTHER, "publish", topic)) == DENY
    assert result(authz(client, OTHER, "publish", f"devices/{OTHER}/attestation")) == ALLOW


def test_hooks_on_a_real_iotrust_serve(registry: tuple[Settings, Database]) -> None:
    settings, _ = registry
    env = dict(os.environ)
    env.update({"IOTRUST_DATA": str(settings.data_dir),
                "IOTRUST_DATABASE_URL": settings.database_url,
                broker_hooks.HOOK_SECRET_ENV: SECRET})
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        body = {"clientid": ACTIVE, "username": ACTIVE, "topic": f"devices/{ACTIVE}/telemetry",
                "action": "publish", "peerhost": "10.0.0.7"}
        allowed = http.post(AUTHZ, json=body, headers=HEADERS)
        assert (allowed.status_code, allowed.json()) == (200, ALLOW)
        body["topic"] = f"devices/{OTHER}/telemetry"
        denied = http.post(AUTHZ, json=body, headers=HEADERS)
        assert (denied.status_code, denied.json()) == (200, DENY)
        no_secret = http.post(AUTHZ, json=body)
        assert (no_secret.status_code, no_secret.json()) == (200, DENY)
        login = http.post(AUTHN, json={"clientid": ACTIVE, "username": ACTIVE}, headers=HEADERS)
        assert (login.status_code, login.json()) == (200, LOGIN_OK)


def test_a_registry_failure_is_a_deny_not_an_error(
        client: TestClient, registry: tuple[Settings, Database]) -> None:
    """EMQX reads an error status as "ignore": a broken registry must still answer deny."""
    _, db = registry
    topic = f"devices/{ACTIVE}/telemetry"
    assert result(authz(client, ACTIVE, "publish", topic)) == ALLOW
    with db._engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE devices RENAME TO devices_gone")
    assert result(authz(client, ACTIVE, "publish", topic)) == DENY
    body = {"clientid": ACTIVE, "username": ACTIVE}
    assert result(client.post(AUTHN, content=json.dumps(body), headers=HEADERS)) == DENY
