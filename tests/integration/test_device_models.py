"""Devices get their model through the real path (issue 8, item 2: a model's profile sets defaults).

* A model is bound to the product it describes (manufacturer + product id, unique).
* Registered before the vouchers: voucher import gives each new device the model, and the model's
  credential lifetime is what onboarding issues.
* Registered after: the already-known, model-less, not retired devices of that product get it in
  the registration's transaction, counted in its ``model.added`` event; a device an operator gave
  another model keeps it.
* Unsafe manufacturer-trust admission gives the device its product's model too.
* ``set_device_model`` / ``iotrust devices set-model`` / ``PUT /v1/devices/{id}/model``: the
  explicit override, refused for a retired device, another manufacturer's model, unknown names.
* ``iotrust devices list --json`` shows each device's model and key storage.

The fleet is shared by the module's tests, which build on each other in file order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.integration.fleet import ACTOR, Fleet, FleetDevice, Maker, build_fleet
from tests.integration.pg import fresh_postgres_database
from tests.integration.test_onboarding_service import SOURCE, onboard
from typer.testing import CliRunner

from iotrust.adapters.sql.store import Database
from iotrust.api.app import create_app
from iotrust.cli.main import app as cli_app
from iotrust.core import events as ev
from iotrust.core.lifecycle import Device, RetirementReason
from iotrust.core.onboarding import build_hello
from iotrust.core.records import DeviceModel, Manufacturer
from iotrust.errors import ConflictError, InputError, NotFoundError
from iotrust.ports import FixedClock
from iotrust.services import devices as device_svc
from iotrust.services import hardware as hw_svc
from iotrust.services import tokens
from iotrust.services import vouchers as voucher_svc
from iotrust.services.onboarding import OnboardingService

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hardware"
CLASS1 = (EXAMPLES / "class1-mcu.yaml").read_bytes()  # no protected keys: 7-day credentials
SECURE = (EXAMPLES / "mcu-secure-element.yaml").read_bytes()  # 90-day credentials
PRODUCT = "sensor-1"  # the fleet makers' default product id
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"  # the form is checked

MAKERS = (
    Maker("preco", count=2, prefix="PR", vouch=False),  # vouchers imported by the test
    Maker("postco", count=4, prefix="PO"),
    Maker("otherco", count=1, prefix="OT"),
    Maker("clico", count=2, prefix="CL"),
    Maker("unsafeco", count=1, prefix="UN", vouch=False, unsafe=True),
)


@pytest.fixture(scope="module")
def clock() -> FixedClock:
    return FixedClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, clock: FixedClock) -> Fleet:
    return build_fleet(tmp_path_factory.mktemp("models"), makers=MAKERS, clock=clock)


@pytest.fixture(scope="module")
def db(fleet: Fleet) -> Iterator[Database]:
    database = fleet.open_db()
    yield database
    database.close()


def _device(db: Database, dev: FleetDevice) -> Device:
    with db.transaction(readonly=True) as tx:
        found = tx.find_device(dev.manufacturer, dev.serial)
    assert found is not None
    return found


def _events(db: Database, kind: str) -> list[dict[str, object]]:
    with db.transaction(readonly=True) as tx:
        return [json.loads(e.data) | {"_device_id": e.device_id, "_actor": e.actor}
                for e in tx.iter_events(kind=kind)]


def _devices(fleet: Fleet, maker: str) -> list[FleetDevice]:
    return [fleet.device(s) for s in fleet.serials(maker)]


def test_model_registered_first_is_given_at_import_and_sets_the_credential_lifetime(
        fleet: Fleet, db: Database, clock: FixedClock) -> None:
    reg = hw_svc.register_model(db, clock, name="pre-s1", manufacturer="preco",
                                product_id=PRODUCT, profile_yaml=CLASS1, actor=ACTOR)
    assert reg.devices_assigned == 0
    assert reg.defaults.credential_lifetime_s == 7 * 86_400
    devs = _devices(fleet, "preco")
    report = voucher_svc.import_vouchers(db, clock, [d.voucher for d in devs], actor=ACTOR)
    assert not report.refused
    assert len(report.imported) == len(devs)
    assert {_device(db, d).model for d in devs} == {"pre-s1"}
    imported = [e for e in _events(db, ev.VOUCHER_IMPORTED) if e["manufacturer"] == "preco"]
    assert [e["model"] for e in imported] == ["pre-s1"] * len(devs)

    onboarded = onboard(OnboardingService(db, clock, fleet.settings, fleet.secrets), devs[0],
                        clock)
    with db.transaction(readonly=True) as tx:
        (cred,) = tx.list_credentials(device_id=onboarded.device_id)
    lifetime = cred.not_after - cred.not_before
    # the model's 7 days, not the 30-day default of a model-less device (allowing for skew)
    assert timedelta(days=7) <= lifetime <= timedelta(days=7, hours=1), lifetime


def test_model_registered_after_import_is_assigned_to_the_known_devices(
        fleet: Fleet, db: Database, clock: FixedClock) -> None:
    plain, chosen, retired, plain2 = _devices(fleet, "postco")
    assert {_device(db, d).model for d in (plain, chosen, retired, plain2)} == {None}
    # an operator's explicit choice (a model bound to no product), and a retired device
    hw_svc.register_model(db, clock, name="post-unbound", manufacturer="postco",
                          profile_yaml=SECURE, actor=ACTOR)
    hw_svc.set_device_model(db, clock, _device(db, chosen).id, "post-unbound", actor=ACTOR)
    device_svc.retire(db, clock, _device(db, retired).id, RetirementReason.DECOMMISSIONED,
                      actor=ACTOR)

    reg = hw_svc.register_model(db, clock, name="post-s1", manufacturer="postco",
                                product_id=PRODUCT, profile_yaml=SECURE, actor="alice@cli")
    assert reg.devices_assigned == 2
    assert _device(db, plain).model == _device(db, plain2).model == "post-s1"
    assert _device(db, chosen).model == "post-unbound"
    assert _device(db, retired).model is None
    (added,) = [e for e in _events(db, hw_svc.MODEL_ADDED) if e["model"] == "post-s1"]
    assert (added["product_id"], added["devices_assigned"], added["_actor"]) == (
        PRODUCT, 2, "alice@cli")


def test_one_model_per_product_and_only_products_the_maker_ships(
        db: Database, clock: FixedClock) -> None:
    with pytest.raises(ConflictError) as taken:
        hw_svc.register_model(db, clock, name="post-s1b", manufacturer="postco",
                              product_id=PRODUCT, profile_yaml=CLASS1, actor=ACTOR)
    assert taken.value.reason == "model_product_exists"
    assert "post-s1" in taken.value.message
    with pytest.raises(InputError) as foreign:
        hw_svc.register_model(db, clock, name="post-hub", manufacturer="postco",
                              product_id="hub-9", profile_yaml=CLASS1, actor=ACTOR)
    assert foreign.value.reason == "product_not_allowed"
    with db.transaction(readonly=True) as tx:
        names = {m.name for m in tx.list_models("postco")}
    assert names == {"post-unbound", "post-s1"}


def test_unsafe_admission_gives_the_device_its_product_model(
        fleet: Fleet, db: Database, clock: FixedClock) -> None:
    hw_svc.register_model(db, clock, name="unsafe-s1", manufacturer="unsafeco",
                          product_id=PRODUCT, profile_yaml=CLASS1, actor=ACTOR)
    (dev,) = _devices(fleet, "unsafeco")
    svc = OnboardingService(db, clock, fleet.settings, fleet.secrets)
    req = build_hello(serial=dev.serial, factory_chain=dev.chain, random=os.urandom)
    svc.hello(req.to_wire(), source=SOURCE)
    device = _device(db, dev)
    assert device.unsafe_admission
    assert device.model == "unsafe-s1"


def test_set_model_overrides_and_refuses(fleet: Fleet, db: Database, clock: FixedClock) -> None:
    plain = _device(db, _devices(fleet, "postco")[0])
    retired = _device(db, _devices(fleet, "postco")[2])
    (other,) = _devices(fleet, "otherco")
    hw_svc.register_model(db, clock, name="other-s1", manufacturer="otherco",
                          product_id=PRODUCT, profile_yaml=CLASS1, actor=ACTOR)

    def refused(cls: type[Exception], reason: str, device_id: str, model: str) -> None:
        with db.transaction(readonly=True) as tx:
            head = tx.event_head()
        with pytest.raises(cls) as info:
            hw_svc.set_device_model(db, clock, device_id, model, actor=ACTOR)
        assert getattr(info.value, "reason", None) == reason
        with db.transaction(readonly=True) as tx:
            assert tx.event_head() == head  # nothing recorded, nothing changed

    refused(ConflictError, "model_manufacturer_mismatch", plain.id, "other-s1")
    refused(ConflictError, "device_retired", retired.id, "post-s1")
    refused(NotFoundError, "unknown_model", plain.id, "no-such-model")
    refused(NotFoundError, "unknown_device", "dev-" + "a" * 26, "post-s1")
    assert _device(db, _devices(fleet, "postco")[0]).model == "post-s1"
    assert _device(db, other).model == "other-s1"  # its maker's model, assigned at register

    same = hw_svc.set_device_model(db, clock, plain.id, "post-s1", actor=ACTOR)
    assert (same.changed, same.previous) == (False, "post-s1")
    moved = hw_svc.set_device_model(db, clock, plain.id, "post-unbound", actor="bob@cli")
    assert (moved.changed, moved.previous, moved.device.model) == (True, "post-s1",
                                                                  "post-unbound")
    last = [e for e in _events(db, hw_svc.DEVICE_MODEL_SET) if e["_device_id"] == plain.id][-1]
    assert (last["model"], last["previous"], last["model_product_id"], last["_actor"]) == (
        "post-unbound", "post-s1", None, "bob@cli")


def test_cli_set_model_and_devices_list_show_the_model(
        fleet: Fleet, db: Database, clock: FixedClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "carol")
    monkeypatch.setenv("IOTRUST_DATA", str(fleet.settings.data_dir))
    monkeypatch.setenv("IOTRUST_PASSPHRASE_FILE", str(fleet.passphrase_file))
    monkeypatch.delenv("IOTRUST_PASSPHRASE", raising=False)
    monkeypatch.delenv("IOTRUST_DATABASE_URL", raising=False)
    runner = CliRunner()
    profile = EXAMPLES / "mcu-secure-element.yaml"
    added = runner.invoke(cli_app, ["--json", "model", "add", "cli-s1", "--manufacturer",
                                    "clico", "--profile", str(profile), "--product-id", PRODUCT])
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["devices_assigned"] == 2
    hw_svc.register_model(db, clock, name="cli-unbound", manufacturer="clico",
                          profile_yaml=CLASS1, actor=ACTOR)
    first = _device(db, _devices(fleet, "clico")[0])

    done = runner.invoke(cli_app, ["--json", "devices", "set-model", first.id, "cli-unbound"])
    assert done.exit_code == 0, done.output
    shown = json.loads(done.output)
    assert (shown["model"], shown["previous_model"], shown["changed"]) == (
        "cli-unbound", "cli-s1", True)
    (event,) = [e for e in _events(db, hw_svc.DEVICE_MODEL_SET) if e["_device_id"] == first.id]
    assert event["_actor"] == "carol@cli"

    mismatch = runner.invoke(cli_app, ["--json", "devices", "set-model", first.id, "other-s1"])
    assert mismatch.exit_code == 67, mismatch.output  # ConflictError
    assert "model_manufacturer_mismatch" in mismatch.output
    unknown = runner.invoke(cli_app, ["--json", "devices", "set-model", first.id, "nope"])
    assert unknown.exit_code == 66, unknown.output  # NotFoundError
    assert "unknown_model" in unknown.output

    listed = runner.invoke(cli_app, ["--json", "devices", "list", "--manufacturer", "clico"])
    assert listed.exit_code == 0, listed.output
    rows = {r["id"]: r for r in json.loads(listed.output)}
    assert rows[first.id]["model"] == "cli-unbound"
    assert {r["model"] for i, r in rows.items() if i != first.id} == {"cli-s1"}
    assert {r["key_storage"] for r in rows.values()} == {"unknown"}
    assert {r["product_id"] for r in rows.values()} == {PRODUCT}
    one = runner.invoke(cli_app, ["--json", "devices", "show", first.id])
    assert json.loads(one.output)["model"] == "cli-unbound"
    of_model = runner.invoke(cli_app, ["--json", "devices", "list", "--model", "cli-s1"])
    assert {r["id"] for r in json.loads(of_model.output)} == set(rows) - {first.id}


def test_api_set_model_checks_role_and_refuses_with_reasons(
        fleet: Fleet, db: Database, clock: FixedClock) -> None:
    app = create_app(fleet.settings, clock=clock, secrets=fleet.secrets)
    _, operator = tokens.create_token(db, clock, name="models-operator", role="operator",
                                      actor=ACTOR)
    _, auditor = tokens.create_token(db, clock, name="models-auditor", role="auditor",
                                     actor=ACTOR)
    device = _device(db, _devices(fleet, "clico")[1])
    path = f"/v1/devices/{device.id}/model"
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            def put(token: str, model: str) -> tuple[int, dict[str, object]]:
                resp = client.put(path, json={"model": model},
                                  headers={"Authorization": f"Bearer {token}"})
                return resp.status_code, resp.json()

            assert put(auditor, "cli-unbound")[0] == 403
            code, body = put(operator, "other-s1")
            assert (code, body["error"], body["reason"]) == (
                409, "ConflictError", "model_manufacturer_mismatch")
            code, body = put(operator, "nope")
            assert (code, body["reason"]) == (404, "unknown_model")
            code, body = put(operator, "cli-unbound")
            assert code == 200, body
            assert (body["id"], body["model"]) == (device.id, "cli-unbound")
            got = client.get(f"/v1/devices/{device.id}",
                             headers={"Authorization": f"Bearer {auditor}"})
            assert got.json()["model"] == "cli-unbound"
            page = client.get("/v1/devices", params={"model": "cli-unbound"},
                              headers={"Authorization": f"Bearer {auditor}"}).json()
            assert device.id in {d["id"] for d in page["items"]}
            assert {d["model"] for d in page["items"]} == {"cli-unbound"}
    finally:
        app.state.iotrust.db.close()
    (event,) = [e for e in _events(db, hw_svc.DEVICE_MODEL_SET) if e["_device_id"] == device.id]
    assert event["_actor"] == "models-operator@api"


# ------------------------------------------------------------------ the registry, both stores

BACKENDS = [pytest.param("sqlite", id="sqlite"),
            pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database.open(f"sqlite:///{tmp_path / 'registry.db'}")
        try:
            yield database
        finally:
            database.close()
        return
    with fresh_postgres_database() as url:
        database = Database.open(url)
        try:
            yield database
        finally:
            database.close()


def test_the_registry_keeps_one_model_per_product(registry: Database) -> None:
    at = datetime(2026, 11, 25, tzinfo=UTC)
    with registry.transaction() as tx:
        tx.add_manufacturer(Manufacturer(name="acme", display_name="ACME", anchors_pem=PEM,
                                         allowed=("0x1:p1",), created_at=at))
        tx.add_model(DeviceModel(name="m1", manufacturer="acme", credential_lifetime_s=60,
                                 created_at=at, product_id="p1"))
        tx.add_model(DeviceModel(name="m-free-1", manufacturer="acme",
                                 credential_lifetime_s=60, created_at=at))
        tx.add_model(DeviceModel(name="m-free-2", manufacturer="acme",  # NULLs never collide
                                 credential_lifetime_s=60, created_at=at))
    with pytest.raises(ConflictError) as dup, registry.transaction() as tx:
        tx.add_model(DeviceModel(name="m2", manufacturer="acme", credential_lifetime_s=60,
                                 created_at=at, product_id="p1"))
    assert dup.value.reason == "model_product_exists"
    with registry.transaction(readonly=True) as tx:
        found = tx.find_model_for_product("acme", "p1")
        assert found is not None
        assert (found.name, found.product_id) == ("m1", "p1")
        assert tx.find_model_for_product("acme", "p2") is None
        assert tx.get_model("m-free-1").product_id is None

