"""The operator API through the real app on a real SQLite registry: tokens, roles, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.conftest import T0

from iotrust.adapters.sql.store import Database
from iotrust.api.app import create_app
from iotrust.ports import FixedClock
from iotrust.services import domain, factory, manufacturers, tokens
from iotrust.services import vouchers as vsvc
from iotrust.services.settings import Settings

PASS = b"correct horse battery staple"
FPASS = b"factory passphrase 0123456789"


@pytest.fixture
def api(tmp_path: Path) -> tuple[TestClient, dict[str, str], list[str]]:
    clock = FixedClock(T0)
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'r.db'}")
    settings.data_dir.mkdir()
    db = Database.open(settings.database_url)
    domain.init_domain(db, settings, clock, name="fleet", owner="acme-ops",
                       backend=domain.KeyBackend(kind="file", passphrase=PASS),
                       public_url="http://127.0.0.1:8443")
    f = factory.init_factory(tmp_path / "factory", clock, name="widgetco", vendor_id="0x1",
                             product_id="s1", passphrase=FPASS)
    minted = factory.mint(f, clock, 3, passphrase=FPASS)
    manufacturers.add_manufacturer(db, clock, name="widgetco",
                                   anchors_pem=(f.path / "root.crt.pem").read_bytes(),
                                   allowed=["0x1:s1"], actor="t@iotrust")
    signed = factory.write_vouchers(f, clock, [m.folder for m in minted], owner="acme-ops",
                                    owner_root_pem=(settings.ca_dir / "root.pem").read_bytes(),
                                    passphrase=FPASS)
    report = vsvc.import_vouchers(db, clock, signed[:2], actor="t@iotrust")
    toks = {role: tokens.create_token(db, clock, name=f"t-{role}", role=role,
                                      actor="t@iotrust")[1]
            for role in ("admin", "operator", "auditor")}
    app = create_app(settings, clock=clock, secrets=domain.Secrets(passphrase=PASS), db=db)
    return TestClient(app), toks, [v.decode() for v in signed[2:]] + report.imported


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_operator_endpoint_without_a_token(api: tuple[TestClient, dict[str, str], list[str]]
                                              ) -> None:
    client, _, _ = api
    for method, path in [("GET", "/v1/devices"), ("GET", "/v1/events"),
                         ("GET", "/v1/manufacturers"), ("POST", "/v1/vouchers"),
                         ("POST", "/v1/devices/dev-aaaaaaaaaaaaaaaaaaaaaaaaaa/quarantine")]:
        r = client.request(method, path)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["reason"] == "unauthenticated"
        r = client.request(method, path, headers=auth("iot_not-a-real-token"))
        assert r.status_code == 401


def test_roles(api: tuple[TestClient, dict[str, str], list[str]]) -> None:
    client, toks, rest = api
    r = client.get("/v1/devices", headers=auth(toks["auditor"]))
    assert r.status_code == 200
    assert len(r.json()["items"]) == 2
    r = client.post("/v1/vouchers", json=[rest[0]], headers=auth(toks["auditor"]))
    assert r.status_code == 403
    assert r.json()["reason"] == "forbidden"
    r = client.post("/v1/vouchers", json=[rest[0]], headers=auth(toks["operator"]))
    assert r.status_code == 200
    assert len(r.json()["imported"]) == 1
    r = client.post("/v1/manufacturers", headers=auth(toks["operator"]),
                    json={"name": "x", "anchors_pem": "x", "allowed": ["1:2"]})
    assert r.status_code == 403


def test_typed_errors(api: tuple[TestClient, dict[str, str], list[str]]) -> None:
    client, toks, rest = api
    h = auth(toks["operator"])
    r = client.get("/v1/devices/dev-aaaaaaaaaaaaaaaaaaaaaaaaaa", headers=h)
    assert (r.status_code, r.json()["reason"]) == (404, "unknown_device")
    r = client.get("/v1/devices/not-an-id", headers=h)
    assert r.status_code in (404, 422)
    device_id = rest[-1]
    r = client.post(f"/v1/devices/{device_id}/quarantine", headers=h)
    assert r.status_code == 409  # expected devices cannot be quarantined
    assert r.json()["reason"].startswith("illegal_transition")
    r = client.post(f"/v1/devices/{device_id}/retire", headers=h, json={"reason": "lost"})
    assert (r.status_code, r.json()["state"]) == (200, "retired")
    r = client.post(f"/v1/devices/{device_id}/retire", headers=h, json={"reason": "bogus"})
    assert (r.status_code, r.json()["reason"]) == (422, "invalid_request")
    r = client.get("/v1/events", headers=h, params={"device_id": device_id})
    assert [e["kind"] for e in r.json()][-1] == "device.retired"
    r = client.post("/v1/manufacturers", headers=auth(toks["admin"]),
                    json={"name": "junk", "anchors_pem": "-----BEGIN CERTIFICATE-----\nAA\n"
                          "-----END CERTIFICATE-----\n", "allowed": ["1:2"]})
    assert r.status_code == 422
    assert r.json()["error"] == "InputError"
