"""End to end with keys on a token: the real agent process (PKCS#11, SoftHSM2) and real server.

The manufacturer mints two devices whose factory keys are generated on the token, one of a TPM
gateway product and one of a product no model is registered for. The operator registers the TPM
gateway model for its product id (``iotrust model add --product-id``), then imports the vouchers:
the import gives the gateway its model, the real path an operator takes (nothing writes the
registry directly). ``iotrust serve`` runs as a subprocess and ``iotrust-agent onboard`` as
another one, with the device folder, the token configuration and the PIN in its environment. The
agent states ``key_storage: pkcs11`` in its hello. The registry records ``pkcs11`` for the device
whose model has a hardware profile that can hold such keys (TPM 2.0), and ``unknown`` for the one
without a model: a claim nothing backs never raises trust. Both are in the ``device.onboarded``
event with the claim itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.fleet import FACTORY_PASSPHRASE, OWNER, Fleet, Maker, build_fleet
from tests.integration.server import Server, running_server
from tests.integration.softhsm import SoftHsmToken, softhsm_token
from tests.integration.test_agent_e2e import AGENT, device_record, devices_by_serial
from typer.testing import CliRunner

from iotrust.cli.main import app as cli_app
from iotrust.core import events as ev
from iotrust.ports import SystemClock
from iotrust.services import factory

pytestmark = pytest.mark.hsm

MAKER = "tokenco"
MODEL = "tpm-gateway"
GATEWAY_PRODUCT = "tpm-gw-1"  # the product the model is registered for
OTHER_PRODUCT = "sensor-1"  # the fleet maker's default product: no model
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
    fleet = build_fleet(tmp_path_factory.mktemp("agent-e2e-hsm"), makers=(Maker(
        MAKER, count=1, allow=(f"0x1234:{GATEWAY_PRODUCT}", f"0x1234:{OTHER_PRODUCT}")),))
    fac = fleet.factories[MAKER]
    keystore = factory.DeviceKeyStore(kind="pkcs11", module=token.module, token=token.label,
                                      pin=token.pin)
    prefix = f"P{secrets.token_hex(3).upper()}"
    minted = [*factory.mint(fac, clock, 1, passphrase=FACTORY_PASSPHRASE, keystore=keystore,
                            prefix=prefix, product_id=GATEWAY_PRODUCT),
              *factory.mint(fac, clock, 1, passphrase=FACTORY_PASSPHRASE, keystore=keystore,
                            prefix=prefix, product_id=OTHER_PRODUCT)]
    assert all(m.key_ref.startswith("pkcs11:") for m in minted)
    vouchers = tmp_path_factory.mktemp("vouchers") / "vouchers.jsonl"
    vouchers.write_bytes(b"\n".join(factory.write_vouchers(
        fac, clock, [m.folder for m in minted], owner=OWNER,
        owner_root_pem=fleet.root_pem.read_bytes(), passphrase=FACTORY_PASSPHRASE)) + b"\n")
    _iotrust(fleet, "model", "add", MODEL, "--manufacturer", MAKER, "--profile", str(PROFILE),
             "--product-id", GATEWAY_PRODUCT)
    _iotrust(fleet, "voucher", "import", str(vouchers))
    models = {d["serial"]: d["model"] for d in json.loads(
        _iotrust(fleet, "devices", "list", "--manufacturer", MAKER))}
    assert (models[minted[0].serial], models[minted[1].serial]) == (MODEL, None)
    return TokenFleet(fleet, token, minted[0].folder, minted[1].folder)


def _iotrust(fleet: Fleet, *args: str) -> str:
    """Run an operator command on the fleet's data folder; its JSON output."""
    env = {k: v for k, v in fleet.server_env().items() if k.startswith("IOTRUST_")}
    result = CliRunner().invoke(cli_app, ["--json", *args],
                                env={**env, "IOTRUST_PASSPHRASE": None,
                                     "USER": os.environ.get("USER", "tests")})
    assert result.exit_code == 0, (args, result.output)
    return result.output


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
