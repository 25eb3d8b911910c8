"""End to end with keys on a token: the real agent process (PKCS#11, SoftHSM2) and real server.

The manufacturer mints two devices whose factory keys are generated on the token; their vouchers
are imported; ``iotrust serve`` runs as a subprocess and ``iotrust-agent onboard`` as another one,
with the device folder, the token configuration and the PIN in its environment. The agent states
``key_storage: pkcs11`` in its hello. The registry records ``pkcs11`` for the device whose model
has a hardware profile that can hold such keys (TPM 2.0), and ``unknown`` for the one without a
model: a claim nothing backs never raises trust. Both are in the ``device.onboarded`` event with
the claim itself.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.fleet import ACTOR, FACTORY_PASSPHRASE, OWNER, Fleet, Maker, build_fleet
from tests.integration.server import Server, running_server
from tests.integration.softhsm import SoftHsmToken, softhsm_token
from tests.integration.test_agent_e2e import AGENT, device_record, devices_by_serial

from iotrust.core import events as ev
from iotrust.core.lifecycle import DeviceState
from iotrust.ports import SystemClock
from iotrust.services import factory
from iotrust.services import hardware as hw_svc
from iotrust.services import vouchers as voucher_svc

pytestmark = pytest.mark.hsm

MAKER = "tokenco"
MODEL = "tpm-gateway"
PROFILE = Path(__file__).resolve().parents[2] / "examples" / "hardware" / "linux-gateway-tpm.yaml"


@dataclasses.dataclass(frozen=True)
class TokenFleet:
    fleet: Fleet
    token: SoftHsmToken
    with_model: Path  # device folders (factory keys on the token)
    without_model: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TokenFleet:
    token = softhsm_token()
    clock = SystemClock()
    fleet = build_fleet(tmp_path_factory.mktemp("agent-e2e-hsm"),
                        makers=(Maker(MAKER, count=1),))
    fac = fleet.factories[MAKER]
    keystore = factory.DeviceKeyStore(kind="pkcs11", module=token.module, token=token.label,
                                      pin=token.pin)
    minted = factory.mint(fac, clock, 2, passphrase=FACTORY_PASSPHRASE, keystore=keystore,
                          prefix=f"P{secrets.token_hex(3).upper()}")
    assert all(m.key_ref.startswith("pkcs11:") for m in minted)
    signed = factory.write_vouchers(fac, clock, [m.folder for m in minted], owner=OWNER,
                                    owner_root_pem=fleet.root_pem.read_bytes(),
                                    passphrase=FACTORY_PASSPHRASE)
    db = fleet.open_db()
    try:
        report = voucher_svc.import_vouchers(db, clock, signed, actor=ACTOR)
        assert not report.refused
        hw_svc.register_model(db, clock, name=MODEL, manufacturer=MAKER,
                              profile_yaml=PROFILE.read_bytes(), actor=ACTOR)
        with db.transaction() as tx:  # the operator's record of what hardware this device is
            found = tx.find_device(MAKER, minted[0].serial)
            assert found is not None
            tx.update_device(dataclasses.replace(found, model=MODEL),
                             expected_state=DeviceState.EXPECTED)
    finally:
        db.close()
    return TokenFleet(fleet, token, minted[0].folder, minted[1].folder)


@pytest.fixture(scope="module")
def server(world: TokenFleet) -> Iterator[Server]:
    with running_server(world.fleet.server_env(), log_dir=world.fleet.base) as srv:
        yield srv


def _onboard(world: TokenFleet, server: Server, folder: Path, state: Path) -> dict[str, object]:
    env = {**world.token.env(), "IOTRUST_PKCS11_PIN": world.token.pin}
    proc = subprocess.run([*AGENT, "onboard", "--device", str(folder), "--state", str(state),
                           "--server", server.url, "--insecure-first-contact", "--json"],
                          capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "key_storage=file" not in proc.stderr  # no development-key warning
    shown: dict[str, object] = json.loads(proc.stdout)
    assert shown["key_storage"] == "pkcs11"
    return shown


def _onboarded_event(world: TokenFleet, device_id: str) -> dict[str, object]:
    db = world.fleet.open_db()
    try:
        with db.transaction(readonly=True) as tx:
            events = [e for e in tx.iter_events(after_seq=0, kind=ev.DEVICE_ONBOARDED)
                      if e.device_id == device_id]
    finally:
        db.close()
    assert len(events) == 1
    data: dict[str, object] = json.loads(events[0].data)
    return data


def test_a_token_device_of_a_tpm_model_is_recorded_as_pkcs11(world: TokenFleet, server: Server,
                                                            tmp_path: Path) -> None:
    shown = _onboard(world, server, world.with_model, tmp_path / "state")
    serial = json.loads((world.with_model / "device.json").read_text())["serial"]
    row = devices_by_serial(world.fleet)[serial]
    assert row["state"] == "active"
    assert row["id"] == shown["device_id"]
    assert device_record(world.fleet, str(row["id"]))["key_storage"] == "pkcs11"
    event = _onboarded_event(world, str(shown["device_id"]))
    assert (event["key_storage"], event["key_storage_claimed"]) == ("pkcs11", "pkcs11")


def test_a_token_device_without_a_model_stays_unknown(world: TokenFleet, server: Server,
                                                      tmp_path: Path) -> None:
    shown = _onboard(world, server, world.without_model, tmp_path / "state")
    serial = json.loads((world.without_model / "device.json").read_text())["serial"]
    row = devices_by_serial(world.fleet)[serial]
    assert row["state"] == "active"
    # the claim alone never raises trust
    assert device_record(world.fleet, str(row["id"]))["key_storage"] == "unknown"
    event = _onboarded_event(world, str(shown["device_id"]))
    assert (event["key_storage"], event["key_storage_claimed"]) == ("unknown", "pkcs11")


def test_the_token_keys_stayed_on_the_token(world: TokenFleet) -> None:
    for folder in (world.with_model, world.without_model):
        assert not list(folder.glob("*.key.pem"))
        assert json.loads((folder / "device.json").read_text())["key_ref"].startswith("pkcs11:")
