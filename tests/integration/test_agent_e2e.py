"""End to end: the real ``iotrust-agent onboard`` process against the real ``iotrust serve``.

A fleet is built through the services (trust domain, factories, minted device folders, imported
vouchers); the server runs as a subprocess on SQLite; the agent runs as a subprocess with the
minted device folder, exactly as on a device. A genuine expected device onboards (exit 0, ACTIVE
in ``iotrust devices list --json``, a certificate ``openssl verify`` accepts); a device nobody
vouched for is refused (exit 77, the reason printed); and a second run of an onboarded device is
stopped locally.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from tests.integration.fleet import Fleet, Maker, build_fleet
from tests.integration.server import Server, running_server

from iotrust.core import pki

AGENT = [sys.executable, "-c", "from iotrust.agent.cli import main; main()"]
IOTRUST = [sys.executable, "-m", "iotrust.cli.main"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return build_fleet(tmp_path_factory.mktemp("agent-e2e"), makers=(
        Maker("widgetco", count=2),
        Maker("shadyco", count=1, vouch=False),  # registered, but nobody vouched for its devices
    ))


@pytest.fixture(scope="module")
def server(fleet: Fleet) -> Iterator[Server]:
    with running_server(fleet.server_env(), log_dir=fleet.base) as srv:
        yield srv


def agent(args: list[str], *, expect: int) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def devices_by_serial(fleet: Fleet) -> dict[str, dict[str, object]]:
    proc = subprocess.run([*IOTRUST, "--json", "devices", "list"], env=fleet.server_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return {row["serial"]: row for row in json.loads(proc.stdout)}


def device_record(fleet: Fleet, device_id: str) -> dict[str, object]:
    """``iotrust devices show`` as JSON: the registry's record of one device."""
    proc = subprocess.run([*IOTRUST, "--json", "devices", "show", device_id],
                          env=fleet.server_env(), capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    record: dict[str, object] = json.loads(proc.stdout)
    return record


def test_the_entry_point_is_installed() -> None:
    script = Path(sys.executable).parent / "iotrust-agent"
    assert script.exists(), "reinstall the package: pip install -e ."
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0
    assert "onboard" in proc.stdout


def test_a_genuine_device_onboards(fleet: Fleet, server: Server, tmp_path: Path) -> None:
    serial = fleet.serials("widgetco")[0]
    device = fleet.device(serial)
    state = tmp_path / "state"
    proc = agent(["onboard", "--device", str(device.folder), "--state", str(state),
                  "--server", server.url, "--insecure-first-contact", "--json"], expect=0)
    shown = json.loads(proc.stdout)
    assert shown["serial"] == serial
    assert shown["confirmed"] is True
    assert shown["key_storage"] == "file"
    assert "key_storage=file" in proc.stderr  # the development-key warning

    row = devices_by_serial(fleet)[serial]
    assert row["state"] == "active"
    assert row["id"] == shown["device_id"]
    # the agent stated its development key store in the hello; the registry says so
    assert device_record(fleet, row["id"])["key_storage"] == "file"

    # the owner pin the agent kept is the fleet's operational root
    root = pki.load_certificate(fleet.root_pem.read_bytes())
    assert shown["owner_spki_sha256"] == pki.spki_sha256(root.public_key())

    # openssl accepts the operational certificate: root trusted, issuing CA untrusted
    chain = pki.load_certificates((state / "ca-chain.pem").read_bytes())
    issuing = tmp_path / "issuing.pem"
    issuing.write_bytes(chain[0].public_bytes(Encoding.PEM))
    openssl = shutil.which("openssl")
    assert openssl is not None
    check = subprocess.run([openssl, "verify", "-CAfile", str(fleet.root_pem), "-untrusted",
                            str(issuing), str(state / "operational.crt.pem")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert ": OK" in check.stdout

    status = agent(["status", "--state", str(state), "--json"], expect=0)
    assert json.loads(status.stdout)["device_id"] == shown["device_id"]

    # onboarding twice is stopped on the device, before any contact
    again = agent(["onboard", "--device", str(device.folder), "--state", str(state),
                   "--server", server.url, "--insecure-first-contact"], expect=67)
    assert "already_onboarded" in again.stderr


def test_a_device_nobody_vouched_for_is_refused(fleet: Fleet, server: Server,
                                                tmp_path: Path) -> None:
    serial = fleet.serials("shadyco")[0]
    proc = agent(["onboard", "--device", str(fleet.device(serial).folder), "--state",
                  str(tmp_path / "state"), "--server", server.url,
                  "--insecure-first-contact"], expect=77)
    assert last_line(proc.stderr).startswith("refused: unknown_device: "), proc.stderr
    assert not (tmp_path / "state" / "state.json").exists()
    assert serial not in devices_by_serial(fleet)


def test_an_onboarded_device_cannot_onboard_again_from_elsewhere(
        fleet: Fleet, server: Server, tmp_path: Path) -> None:
    # A clone of an onboarded device (same factory key, fresh state folder) is refused.
    serial = fleet.serials("widgetco")[1]
    folder = fleet.device(serial).folder
    agent(["onboard", "--device", str(folder), "--state", str(tmp_path / "one"),
           "--server", server.url, "--insecure-first-contact"], expect=0)
    proc = agent(["onboard", "--device", str(folder), "--state", str(tmp_path / "two"),
                  "--server", server.url, "--insecure-first-contact"], expect=77)
    assert last_line(proc.stderr).startswith("refused: clone_suspected: "), proc.stderr


def test_plain_http_needs_the_insecure_flag(server: Server, tmp_path: Path) -> None:
    proc = agent(["onboard", "--device", str(tmp_path), "--state", str(tmp_path / "s"),
                  "--server", server.url], expect=2)
    assert "--insecure-first-contact" in proc.stderr


def test_an_unreachable_server_is_exit_69(fleet: Fleet, tmp_path: Path) -> None:
    from tests.integration.server import free_port  # noqa: PLC0415

    serial = fleet.serials("widgetco")[0]
    proc = agent(["onboard", "--device", str(fleet.device(serial).folder), "--state",
                  str(tmp_path / "state"), "--server", f"http://127.0.0.1:{free_port()}",
                  "--insecure-first-contact", "--retries", "1"], expect=69)
    assert last_line(proc.stderr).startswith("error: network: "), proc.stderr
