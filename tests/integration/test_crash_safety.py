"""Crash safety: SIGKILL the service at every checkpoint, restart it, check the invariants.

Each case starts a real ``iotrust serve`` (device protocols) or runs the operator command
(``iotrust quarantine``/``retire``) with ``IOTRUST_FAULT_AT=<checkpoint>``
(:mod:`iotrust.services.faults`), drives the operation until the process dies there, asserts it
died by SIGKILL, then restarts without the fault and checks:

* the operation can be retried to completion, or is refused cleanly with its reason, and a
  replayed single-use message (nonce) is refused after the restart;
* :func:`check_invariants`: no ACTIVE device without exactly one ACTIVE credential, no
  ISSUED/ACTIVE credential on a RETIRED device, every credential has its ``credential.issued``
  event and every such event its row, the event chain verifies;
* broker files: after ``iotrust broker config`` (regeneration from the registry) the ACL is
  exactly what the registry says (a quarantined device has its deny block) and both the
  published and the installed CRL list every revoked serial of the live issuing CAs.

Then the broker itself: Mosquitto is killed by SIGKILL and restarted from the files of
``iotrust broker config``; clients come back, a quarantined device keeps only its quarantine
rights and a revoked certificate is still refused. A retirement whose process died between the
commit and the CRL install is enforced by the same regeneration.

A rollout whose advancing status report committed before the process died offers the next wave
after ``iotrust rollout tick``. The onboarding cases also run on PostgreSQL (marker
``postgres``).

The default run covers one representative checkpoint per crash window; every checkpoint runs
with ``-m slow``. One fleet and one data folder serve the module (one more on PostgreSQL): every
case takes its own devices and the invariants are global.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from tests.integration.fleet import PASSPHRASE, Fleet, FleetDevice, Maker, build_fleet
from tests.integration.lifecycle_helpers import RotatingDevice
from tests.integration.mqtt import Client, Identity, require_mosquitto
from tests.integration.pg import fresh_postgres_database
from tests.integration.server import free_port, running_server, start_server

from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.adapters.mqtt.acl import build_acl
from iotrust.adapters.mqtt.mosquitto import BrokerSettings, MosquittoProcess
from iotrust.adapters.sql.store import Database
from iotrust.core import envelope, pki
from iotrust.core import events as ev
from iotrust.core import rollout as ro
from iotrust.core import rotation as rot
from iotrust.core.lifecycle import CredentialState, DeviceState, RetirementReason
from iotrust.core.onboarding import (
    AttestResponse,
    DeviceSession,
    HelloResponse,
    Onboarded,
    accept_attest_response,
    accept_hello_response,
    build_attest,
    build_confirm,
    build_hello,
)
from iotrust.core.updates import ReleaseInfo
from iotrust.ports import SystemClock
from iotrust.services import broker as broker_svc
from iotrust.services import eventlog, rollouts, updates
from iotrust.services.domain import KeyBackend
from iotrust.services.faults import ENV
from iotrust.services.onboarding import OnboardingService

CLOCK = SystemClock()
KILLED = -signal.SIGKILL
CLI = [sys.executable, "-m", "iotrust.cli.main", "--json"]
#: Short deadlines so a case can wait out an orphaned session instead of a minute.
SESSION_TTL_S = 3
CONFIRM_S = 4
LONG_CONFIRM_S = 300
LONG_TTL_S = 60
DEATH_TIMEOUT_S = 30.0
#: PUBACK reason codes of an accepted publish (0x10: accepted, no subscriber matched).
PUBLISHED = frozenset({0x00, 0x10})


# --- the world: one fleet, its registry, its broker files ----------------------------------------

@dataclass(slots=True)
class World:
    """The module's fleet and what the cases have taken from it."""

    fleet: Fleet
    db: Database
    base: Path
    active: list[RotatingDevice] = field(default_factory=list)
    _taken: set[str] = field(default_factory=set)

    @property
    def env(self) -> dict[str, str]:
        env = self.fleet.server_env()
        env.pop(ENV, None)
        return env

    def fresh(self) -> FleetDevice:
        """A device never used by another case (EXPECTED, vouched)."""
        for serial in self.fleet.serials("widgetco"):
            if serial not in self._taken:
                self._taken.add(serial)
                return self.fleet.device(serial)
        raise RuntimeError("the fleet ran out of fresh devices")

    def take_active(self) -> RotatingDevice:
        """An ACTIVE, onboarded device with its key and certificate files."""
        return self.active.pop()

    def device_id(self, dev: FleetDevice) -> str:
        with self.db.transaction(readonly=True) as tx:
            found = tx.find_device(dev.manufacturer, dev.serial)
        assert found is not None
        return found.id

    def state(self, device_id: str) -> DeviceState:
        with self.db.transaction(readonly=True) as tx:
            return tx.get_device(device_id).state

    def credentials(self, device_id: str) -> dict[str, CredentialState]:
        with self.db.transaction(readonly=True) as tx:
            return {c.serial_number: c.state for c in tx.list_credentials(device_id=device_id)}

    def events(self, device_id: str, kind: str) -> list[Any]:
        with self.db.transaction(readonly=True) as tx:
            return [e for e in tx.iter_events(device_id=device_id) if e.kind == kind]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from _world(tmp_path_factory.mktemp("crash"), None, active=16)


@pytest.fixture(scope="module")
def pg_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with fresh_postgres_database() as url:
        yield from _world(tmp_path_factory.mktemp("crash-pg"), url, active=0)


def _world(base: Path, database_url: str | None, *, active: int) -> Iterator[World]:
    require_mosquitto()  # the broker files name the dynamic-security plugin
    fleet = build_fleet(base, database_url=database_url, makers=(Maker("widgetco", count=40),),
                        domain_settings={
        # recovery polls hello until an orphaned session ends: not a rate-limit test
        "onboarding_rate_per_serial": 0,
        "onboarding_session_ttl_s": SESSION_TTL_S, "onboarding_confirm_s": CONFIRM_S,
        "rotation_session_ttl_s": SESSION_TTL_S, "rotation_confirm_s": CONFIRM_S})
    db = fleet.open_db()
    try:
        # broker files (not running): every effect writes them, `broker config` regenerates them
        broker_svc.configure(db, fleet.settings, fleet.secrets, CLOCK,
                             broker_settings=BrokerSettings(port=free_port()))
        w = World(fleet=fleet, db=db, base=base)
        (base / "keys").mkdir()
        svc = OnboardingService(db, CLOCK, fleet.settings, fleet.secrets)
        for _ in range(active):
            w.active.append(onboard_in_process(svc, w.fresh(), base / "devices"))
        yield w
    finally:
        db.close()


def onboard_in_process(svc: OnboardingService, dev: FleetDevice, folder: Path) -> RotatingDevice:
    """Onboard ``dev`` through the service itself; its operational key and certificate files."""
    folder.mkdir(parents=True, exist_ok=True)
    hello = build_hello(serial=dev.serial, factory_chain=dev.chain, random=os.urandom)
    session = accept_hello_response(svc.hello(hello.to_wire(), source="192.0.2.1"), hello=hello,
                                    manufacturer_anchors=(dev.manufacturer_root,),
                                    now=CLOCK.now())
    key = DeviceFileKey.generate(folder / f"{dev.serial}.key.pem")
    attest = build_attest(session, factory_signer=dev.factory_key,
                          csr_der=pki.build_csr(key).public_bytes(Encoding.DER))
    onboarded = accept_attest_response(svc.attest(attest.to_wire(), source="192.0.2.1"),
                                       session=session, csr_public_key=key.public_key,
                                       now=CLOCK.now())
    svc.confirm(build_confirm(session, onboarded, operational_signer=key).to_wire(),
                source="192.0.2.1")
    cert = folder / f"{dev.serial}.crt.pem"
    cert.write_bytes(onboarded.certificate.public_bytes(Encoding.PEM))
    return RotatingDevice(onboarded.device_id, cert, folder / f"{dev.serial}.key.pem")


# --- killing and restarting ----------------------------------------------------------------------

def crash_server(w: World, fault: str, drive: Callable[[httpx.Client], object]) -> None:
    """Serve with ``fault`` armed, ``drive`` it until it dies; it must die by SIGKILL."""
    server = start_server({**w.env, ENV: fault}, log_dir=w.base)
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as http, \
                pytest.raises(httpx.TransportError):
            drive(http)
        code = server.process.wait(timeout=DEATH_TIMEOUT_S)
    finally:
        server.stop()
    assert code == KILLED, f"{fault}: exit {code}\n{server.output()}"
    assert "Traceback" not in server.output(), server.output()


def cli(w: World, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**w.env, **({ENV: fault} if fault else {})}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, check=False,
                          timeout=120)


def crash_cli(w: World, fault: str, *args: str) -> None:
    done = cli(w, *args, fault=fault)
    assert done.returncode == KILLED, f"{fault}: exit {done.returncode}\n{done.stdout}{done.stderr}"


def post(http: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return http.post(path, content=body, headers={"content-type": "application/json"})


def refused(resp: httpx.Response, *reasons: str) -> str:
    assert resp.status_code in {403, 409, 422, 429}, resp.text
    reason = resp.json()["reason"]
    assert reason in reasons, resp.text
    return str(reason)


# --- the invariants ------------------------------------------------------------------------------

def crl_serials(pem: bytes) -> set[int]:
    out: set[int] = set()
    for block in pem.split(b"-----END X509 CRL-----")[:-1]:
        crl = pki.load_crl(block + b"-----END X509 CRL-----\n")
        out |= {entry.serial_number for entry in crl}
    return out


def check_invariants(w: World, *, regenerate: bool = True) -> None:
    """Registry, event log and (after regeneration from the registry) broker files agree."""
    db, settings = w.db, w.fleet.settings
    with db.transaction(readonly=True) as tx:
        devices = tx.list_devices(limit=10_000)
        creds = tx.list_credentials()
        issued = [e for e in tx.iter_events() if e.kind == ev.CREDENTIAL_ISSUED]
        live_cas = {c.id for c in tx.list_cas(role="issuing") if c.state != "retired"}
    by_device: dict[str, list[CredentialState]] = {}
    for c in creds:
        if c.device_id is not None:
            by_device.setdefault(c.device_id, []).append(c.state)
    for d in devices:
        states = by_device.get(d.id, [])
        if d.state is DeviceState.ACTIVE:
            assert states.count(CredentialState.ACTIVE) == 1, (d.id, states)
        if d.state is DeviceState.RETIRED:
            assert not {CredentialState.ISSUED, CredentialState.ACTIVE} & set(states), (d.id,
                                                                                     states)
        if d.state is DeviceState.EXPECTED:
            assert CredentialState.ACTIVE not in states, (d.id, states)
    # a credential row exactly when its credential.issued event (for the same device)
    event_serials = {(json.loads(e.data)["serial"], e.device_id) for e in issued}
    assert len(event_serials) == len(issued)
    assert {(c.serial_number, c.device_id) for c in creds} == event_serials
    report = eventlog.verify(db)
    assert not report.breaks, report.breaks
    if not regenerate:
        return
    broker = broker_svc.configure(db, settings, w.fleet.secrets, CLOCK)  # = `iotrust broker config`
    revoked = {int(c.serial_number, 16) for c in creds
               if c.state is CredentialState.REVOKED and c.issuer_ca_id in live_cas}
    published = crl_serials((settings.crl_dir / "all.crl.pem").read_bytes())
    installed = crl_serials(broker.layout.crl.read_bytes())
    assert revoked <= published, sorted(f"{s:x}" for s in revoked - published)
    assert revoked <= installed, sorted(f"{s:x}" for s in revoked - installed)
    expected = build_acl(broker_svc.access_entries(db), default=broker_svc.default_access(),
                         services=broker.settings.services)
    acl = broker.layout.acl.read_text()
    assert acl == expected.text
    for d in devices:
        if d.state is DeviceState.QUARANTINED:
            block = acl.split(f"\nuser {d.id}\n", 1)
            assert len(block) == 2, f"no ACL block for quarantined {d.id}"
            assert "topic deny" in block[1].split("\nuser ", 1)[0]


# --- onboarding ----------------------------------------------------------------------------------

@dataclass(slots=True)
class Onboarding:
    """One device's onboarding over HTTP, keeping every message for replays."""

    dev: FleetDevice
    key: DeviceFileKey
    hello_wire: bytes | None = None
    session: DeviceSession | None = None
    attest_wire: bytes | None = None
    onboarded: Onboarded | None = None
    confirm_wire: bytes | None = None

    def hello(self, http: httpx.Client) -> httpx.Response:
        req = build_hello(serial=self.dev.serial, factory_chain=self.dev.chain, random=os.urandom)
        self.hello_wire = req.to_wire()
        resp = post(http, "/v1/onboarding/hello", self.hello_wire)
        if resp.status_code == 200:
            self.session = accept_hello_response(
                HelloResponse.from_wire(resp.content), hello=req,
                manufacturer_anchors=(self.dev.manufacturer_root,), now=CLOCK.now())
        return resp

    def attest(self, http: httpx.Client) -> httpx.Response:
        assert self.session is not None
        self.attest_wire = build_attest(
            self.session, factory_signer=self.dev.factory_key,
            csr_der=pki.build_csr(self.key).public_bytes(Encoding.DER)).to_wire()
        resp = post(http, "/v1/onboarding/attest", self.attest_wire)
        if resp.status_code == 200:
            self.onboarded = accept_attest_response(
                AttestResponse.from_wire(resp.content), session=self.session,
                csr_public_key=self.key.public_key, now=CLOCK.now())
        return resp

    def confirm(self, http: httpx.Client) -> httpx.Response:
        assert self.session is not None
        assert self.onboarded is not None
        self.confirm_wire = build_confirm(self.session, self.onboarded,
                                          operational_signer=self.key).to_wire()
        return post(http, "/v1/onboarding/confirm", self.confirm_wire)

    def run(self, http: httpx.Client) -> None:
        """All three steps; each must succeed."""
        assert self.hello(http).status_code == 200
        assert self.attest(http).status_code == 200
        assert self.confirm(http).status_code == 204


def wait_for_fresh_hello(ob: Onboarding, http: httpx.Client, timeout_s: float) -> None:
    """Hello again until the orphaned session's deadline passed (refused cleanly till then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        resp = ob.hello(http)
        if resp.status_code == 200:
            return
        refused(resp, "clone_suspected")  # "the device already has a live onboarding session"
        assert time.monotonic() < deadline, resp.text
        time.sleep(0.5)


def _onboarding_recover(w: World, fault: str, ob: Onboarding, device_id: str) -> None:
    with running_server(w.env, log_dir=w.base) as server, \
            httpx.Client(base_url=server.url, timeout=30.0) as http:
        if fault == "onboarding.hello.committed":
            wait_for_fresh_hello(ob, http, SESSION_TTL_S + 5)
        elif fault in ("onboarding.attest.nonce_spent", "onboarding.attest.before_commit"):
            # one transaction (docs/adr/0005), rolled back: nothing issued, the nonce unspent
            assert ob.attest_wire is not None
            assert w.credentials(device_id) == {}  # nothing issued, nothing half-issued
            resp = post(http, "/v1/onboarding/attest", ob.attest_wire)
            if resp.status_code == 200:  # the nonce still lives: the same attest completes it
                assert ob.session is not None
                ob.onboarded = accept_attest_response(
                    AttestResponse.from_wire(resp.content), session=ob.session,
                    csr_public_key=ob.key.public_key, now=CLOCK.now())
                assert ob.confirm(http).status_code == 204
            else:
                refused(resp, "nonce_expired")  # the restart outlived the nonce: start again
                wait_for_fresh_hello(ob, http, SESSION_TTL_S + 5)
        elif fault == "onboarding.attest.committed":
            assert ob.attest_wire is not None
            refused(post(http, "/v1/onboarding/attest", ob.attest_wire), "nonce_replayed")
            assert list(w.credentials(device_id).values()) == [CredentialState.ISSUED]
            wait_for_fresh_hello(ob, http, CONFIRM_S + 5)
            # the deadline sweep revoked the orphan; its key was certified once: never again
            assert list(w.credentials(device_id).values()) == [CredentialState.REVOKED]
            refused(ob.attest(http), "clone_suspected")
            ob.key = DeviceFileKey.generate(ob.key.path.with_suffix(".2.pem"))
            ob.onboarded = None
            assert ob.hello(http).status_code == 200
        elif fault == "onboarding.confirm.before_commit":
            assert ob.confirm_wire is not None
            assert w.state(device_id) is DeviceState.EXPECTED  # rolled back
            resp = post(http, "/v1/onboarding/confirm", ob.confirm_wire)
            assert resp.status_code == 204, resp.text  # the same confirm completes it
        elif fault == "onboarding.confirm.committed":
            assert ob.confirm_wire is not None
            assert w.state(device_id) is DeviceState.ACTIVE
            refused(post(http, "/v1/onboarding/confirm", ob.confirm_wire), "nonce_replayed")
        if w.state(device_id) is DeviceState.EXPECTED:
            if ob.session is None or ob.onboarded is not None:
                assert ob.hello(http).status_code == 200
            assert ob.attest(http).status_code == 200
            assert ob.confirm(http).status_code == 204
        assert "Traceback" not in server.output(), server.output()
    assert w.state(device_id) is DeviceState.ACTIVE
    assert len(w.events(device_id, ev.DEVICE_ONBOARDED)) == 1


ONBOARDING = {
    "onboarding.hello.committed": "hello",
    "onboarding.attest.nonce_spent": "attest",
    "onboarding.attest.before_commit": "attest",
    "onboarding.attest.committed": "attest",
    "onboarding.confirm.before_commit": "confirm",
    "onboarding.confirm.committed": "confirm",
}
#: The checkpoints of the default run; every other one is ``slow``.
FAST = frozenset({
    "onboarding.attest.nonce_spent", "onboarding.confirm.committed",
    "rotation.confirm.committed", "quarantine:broker.before_rules",
    "retire:broker.retire.committed",
})


def cases(names: list[str] | dict[str, str], fast: frozenset[str] = FAST) -> list[Any]:
    return [pytest.param(n, id=n, marks=() if n in fast else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("fault", cases(ONBOARDING))
def test_onboarding_survives_sigkill(world: World, fault: str) -> None:
    onboarding_case(world, fault)


@pytest.mark.postgres
@pytest.mark.parametrize("fault", cases(ONBOARDING, frozenset({"onboarding.attest.nonce_spent"})))
def test_onboarding_survives_sigkill_on_postgres(pg_world: World, fault: str) -> None:
    """The same on PostgreSQL: the server's session dies with the process, its transaction
    rolls back, a committed one stays."""
    onboarding_case(pg_world, fault)


def onboarding_case(world: World, fault: str) -> None:
    """Kill the server at ``fault`` during one device's onboarding; restart; recover; check."""
    dev = world.fresh()
    device_id = world.device_id(dev)
    ob = Onboarding(dev, DeviceFileKey.generate(world.base / "keys" / f"{dev.serial}.key.pem"))
    dies_at = ONBOARDING[fault]
    # a message replayed after the restart must meet a live session (else: nonce_expired);
    # an orphaned session must end soon enough for the device to start again
    world.fleet.update_domain_settings(
        onboarding_session_ttl_s=SESSION_TTL_S if dies_at == "hello" else LONG_TTL_S,
        onboarding_confirm_s=LONG_CONFIRM_S if dies_at == "confirm" else CONFIRM_S)

    def drive(http: httpx.Client) -> None:
        for step in ("hello", "attest", "confirm"):
            resp = getattr(ob, step)(http)
            assert step != dies_at, f"survived {fault}: {resp.status_code} {resp.text}"
            assert resp.status_code in {200, 204}, resp.text

    crash_server(world, fault, drive)
    check_invariants(world, regenerate=False)
    _onboarding_recover(world, fault, ob, device_id)
    check_invariants(world)


# --- rotation ------------------------------------------------------------------------------------

@dataclass(slots=True)
class Rotation:
    """One rotation over HTTP, keeping every message for replays."""

    device: RotatingDevice
    new_key: DeviceFileKey
    begun: rot.BeginResponse | None = None
    complete_wire: bytes | None = None
    done: rot.CompleteResponse | None = None
    confirm_wire: bytes | None = None

    def begin(self, http: httpx.Client) -> httpx.Response:
        resp = post(http, "/v1/rotation/begin", self.device.begin_request().to_wire())
        if resp.status_code == 200:
            self.begun = rot.BeginResponse.from_wire(resp.content)
        return resp

    def complete(self, http: httpx.Client) -> httpx.Response:
        assert self.begun is not None
        self.complete_wire = self.device.complete_request(self.begun, self.new_key).to_wire()
        resp = post(http, "/v1/rotation/complete", self.complete_wire)
        if resp.status_code == 200:
            self.done = rot.CompleteResponse.from_wire(resp.content)
        return resp

    def confirm(self, http: httpx.Client) -> httpx.Response:
        assert self.begun is not None
        assert self.done is not None
        self.confirm_wire = RotatingDevice.confirm_request(
            self.begun, self.done, self.new_key, self.device.device_id).to_wire()
        return post(http, "/v1/rotation/confirm", self.confirm_wire)


ROTATION = {
    "rotation.begin.committed": "begin",
    "rotation.complete.nonce_spent": "complete",
    "rotation.complete.committed": "complete",
    "rotation.confirm.before_commit": "confirm",
    "rotation.confirm.committed": "confirm",
    "rotation.enforce.published": "confirm",
}


def _rotate_fully(w: World, http: httpx.Client, device: RotatingDevice, timeout_s: float) -> None:
    """A whole new rotation, retried while an orphaned session still blocks it."""
    deadline = time.monotonic() + timeout_s
    while True:
        key_path = device.key.with_name(device.key.name + f".{os.urandom(3).hex()}")
        again = Rotation(device, DeviceFileKey.generate(key_path))
        resp = again.begin(http)
        if resp.status_code == 200:
            resp = again.complete(http)
        if resp.status_code == 200:
            break
        refused(resp, "rotation_in_progress", "clone_suspected", "session_open")
        assert time.monotonic() < deadline, resp.text
        time.sleep(0.5)
    assert again.confirm(http).status_code == 204
    assert again.done is not None
    key_path.replace(device.key)
    device.cert.write_bytes(pki.load_certificate(again.done.certificate).public_bytes(
        Encoding.PEM))
    assert w.credentials(device.device_id)[device.serial] is CredentialState.ACTIVE


@pytest.mark.parametrize("fault", cases(ROTATION))
def test_rotation_survives_sigkill(world: World, fault: str) -> None:
    device = world.take_active()
    old_serial = device.serial
    new_path = device.key.with_name(device.key.name + ".next")
    r = Rotation(device, DeviceFileKey.generate(new_path))
    dies_at = ROTATION[fault]
    world.fleet.update_domain_settings(
        rotation_session_ttl_s=SESSION_TTL_S if dies_at == "begin" else LONG_TTL_S,
        rotation_confirm_s=LONG_CONFIRM_S if dies_at == "confirm" else CONFIRM_S)

    def drive(http: httpx.Client) -> None:
        for step in ("begin", "complete", "confirm"):
            resp = getattr(r, step)(http)
            assert step != dies_at, f"survived {fault}: {resp.status_code} {resp.text}"
            assert resp.status_code in {200, 204}, resp.text

    crash_server(world, fault, drive)
    check_invariants(world, regenerate=False)
    creds = world.credentials(device.device_id)
    with running_server(world.env, log_dir=world.base) as server, \
            httpx.Client(base_url=server.url, timeout=30.0) as http:
        if dies_at == "complete":
            assert r.complete_wire is not None
            refused(post(http, "/v1/rotation/complete", r.complete_wire), "nonce_replayed")
        if fault == "rotation.confirm.before_commit":
            assert creds[old_serial] is CredentialState.ACTIVE  # rolled back
            assert r.confirm_wire is not None
            resp = post(http, "/v1/rotation/confirm", r.confirm_wire)
            assert resp.status_code == 204, resp.text  # the same confirm completes it
        elif dies_at == "confirm":
            assert creds[old_serial] is CredentialState.REVOKED  # committed before the crash
            assert r.confirm_wire is not None
            refused(post(http, "/v1/rotation/confirm", r.confirm_wire), "nonce_replayed")
        if dies_at == "confirm":
            assert r.done is not None
            new_path.replace(device.key)
            device.cert.write_bytes(pki.load_certificate(r.done.certificate).public_bytes(
                Encoding.PEM))
        else:  # the device never got to confirm: it rotates again from the start
            _rotate_fully(world, http, device, CONFIRM_S + 10)
        assert "Traceback" not in server.output(), server.output()
    after = world.credentials(device.device_id)
    assert after[old_serial] in {CredentialState.REVOKED, CredentialState.SUPERSEDED}
    assert world.state(device.device_id) is DeviceState.ACTIVE
    check_invariants(world)


# --- operator commands: quarantine and retirement ------------------------------------------------

OPERATOR = [
    "quarantine:devices.transition.before_commit",
    "quarantine:broker.before_rules",
    "retire:devices.transition.before_commit",
    "retire:broker.retire.committed",
    "retire:broker.before_crl_install",
    "retire:crl.publish.before_bundle",
    "retire:broker.retire.crl_published",
    "retire:broker.before_rules",
]


def _operator_args(action: str, device_id: str) -> list[str]:
    if action == "quarantine":
        return ["quarantine", device_id]
    return ["retire", device_id, "--reason", "decommissioned"]


@pytest.mark.parametrize("case", cases(OPERATOR))
def test_operator_command_survives_sigkill(world: World, case: str) -> None:
    action, fault = case.split(":", 1)
    device = world.take_active()
    serial = device.serial
    args = _operator_args(action, device.device_id)
    crash_cli(world, fault, *args)
    check_invariants(world, regenerate=False)
    committed = fault != "devices.transition.before_commit"
    target = DeviceState.QUARANTINED if action == "quarantine" else DeviceState.RETIRED
    assert world.state(device.device_id) is (target if committed else DeviceState.ACTIVE)
    retry = cli(world, *args)
    if committed:  # done already: refused cleanly, nothing changes
        assert retry.returncode not in {0, KILLED}, retry.stdout + retry.stderr
        reason = json.loads(retry.stderr)["reason"]
        assert reason == f"illegal_transition_{target.value}_to_{target.value}", retry.stderr
    else:
        assert retry.returncode == 0, retry.stdout + retry.stderr
    assert world.state(device.device_id) is target
    if action == "retire":
        assert world.credentials(device.device_id)[serial] is CredentialState.REVOKED
    check_invariants(world)


# --- the whole chain, through the CLI ------------------------------------------------------------

def test_log_verify_cli_after_all_crashes(world: World) -> None:
    """``iotrust log verify`` exits 0 on the log every crash above left behind."""
    done = cli(world, "log", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["intact"] is True
    done = cli(world, "broker", "config")
    assert done.returncode == 0, done.stdout + done.stderr


# --- the broker killed and restarted -------------------------------------------------------------

@pytest.mark.mqtt
def test_broker_sigkill_restart_keeps_enforcing(tmp_path: Path) -> None:  # noqa: PLR0915 - one scenario
    require_mosquitto()
    fleet = build_fleet(tmp_path, makers=(Maker("widgetco", count=4),))
    db = fleet.open_db()
    w = World(fleet=fleet, db=db, base=tmp_path)
    try:
        svc = OnboardingService(db, CLOCK, fleet.settings, fleet.secrets)
        keep, quarantined, retired, late = (
            onboard_in_process(svc, w.fresh(), tmp_path / "devices") for _ in range(4))
        broker = broker_svc.configure(db, fleet.settings, fleet.secrets, CLOCK,
                                      broker_settings=BrokerSettings(port=free_port()))
        ca = broker.layout.ca

        def client(d: RotatingDevice, *, reconnect: bool = False) -> Client:
            return Client(broker.settings.port, ca, Identity(d.device_id, d.cert, d.key),
                          reconnect=reconnect)

        proc = MosquittoProcess(broker)
        proc.start()
        clients: list[Client] = []
        try:
            live = client(keep, reconnect=True)
            clients.append(live)
            assert live.connect()
            assert live.publish(f"devices/{keep.device_id}/telemetry") in PUBLISHED
            # quarantine and retire two devices the normal way (broker running)
            broker_svc.quarantine(db, CLOCK, broker, quarantined.device_id, actor="tests@crash")
            broker_svc.retire(db, fleet.settings, fleet.secrets, CLOCK, retired.device_id,
                              broker=broker, reason=RetirementReason.DECOMMISSIONED,
                              actor="tests@crash")
            # a retirement whose process dies after the commit: CRL not published, no kick
            crash_cli(w, "broker.retire.committed", "retire", late.device_id, "--reason",
                      "compromised")
            check_invariants(w, regenerate=False)
            window = client(late)
            clients.append(window)
            assert window.connect(), "expected: the crash left the revocation unpublished"
            window.close()
            # recovery: regenerate every file from the registry, apply to the running broker
            for args in (("broker", "config"), ("broker", "sync")):
                done = cli(w, *args)
                assert done.returncode == 0, done.stdout + done.stderr
            fresh = client(late)
            clients.append(fresh)
            assert not fresh.connect(), "a retired (revoked) certificate connected"

            # SIGKILL the broker, then restart it from `iotrust broker config` files
            assert proc.proc is not None
            os.kill(proc.proc.pid, signal.SIGKILL)
            assert proc.proc.wait(timeout=10) == KILLED
            assert live.wait(lambda: bool(live.disconnects), 10)
            done = cli(w, "broker", "config")
            assert done.returncode == 0, done.stdout + done.stderr
            proc.proc = None
            proc.start()
            # sessions come back: the reconnecting client is back with its rights
            assert live.wait(lambda: len(live.connects) >= 2 and live.connected, 15)
            assert live.publish(f"devices/{keep.device_id}/telemetry") in PUBLISHED
            # the quarantined device keeps only its quarantine rights
            q = client(quarantined)
            clients.append(q)
            assert q.connect()
            assert q.publish(f"devices/{quarantined.device_id}/telemetry") == 0x87
            assert q.publish(f"devices/{quarantined.device_id}/quarantine/status") in PUBLISHED
            # revoked certificates are still refused (CRL) after the restart
            for gone in (retired, late):
                c = client(gone)
                clients.append(c)
                assert not c.connect(), f"revoked {gone.device_id} connected after restart"
        finally:
            for c in clients:
                c.close()
            proc.stop()
        check_invariants(w)
    finally:
        db.close()


# --- rollout advance ----------------------------------------------------------------------------

@pytest.mark.slow
def test_rollout_advance_survives_sigkill(tmp_path: Path) -> None:
    """The report that advances a rollout commits, then the process dies before the director
    rewrite: after the restart the next wave is offered (``iotrust rollout tick``), the report
    cannot be replayed, and the chain verifies."""
    require_mosquitto()
    fleet = build_fleet(tmp_path, makers=(Maker("widgetco", count=6),))
    updates.init_updates(fleet.settings, KeyBackend("file", passphrase=PASSPHRASE), CLOCK)
    db = fleet.open_db()
    w = World(fleet=fleet, db=db, base=tmp_path)
    try:
        broker_svc.configure(db, fleet.settings, fleet.secrets, CLOCK,
                             broker_settings=BrokerSettings(port=free_port()))
        svc = OnboardingService(db, CLOCK, fleet.settings, fleet.secrets)
        devs = {d.device_id: d for d in (onboard_in_process(svc, w.fresh(), tmp_path / "devices")
                                         for _ in range(6))}
        rollouts.add_release(db, fleet.settings, fleet.secrets, CLOCK, data=b"two " * 1024,
                             info=ReleaseInfo("main", ("sensor-1",), 2), actor="tests@crash")
        waves = (50, 100)
        rid, first = next((r, f) for r, f in (
            (r, [d for d, (_, wave) in ro.assign(r, devs, waves).items() if wave == 0])
            for r in (f"ro-crash-{i}" for i in range(100))) if 0 < len(f) < len(devs))
        later = sorted(set(devs) - set(first))
        rollouts.create_rollout(db, fleet.settings, fleet.secrets, CLOCK, "main-2",
                                actor="tests@crash", policy=ro.RolloutPolicy(waves=waves),
                                device_ids=list(devs), rollout_id=rid)
        director = updates.open_director(fleet.settings, fleet.secrets)
        assert all(director.device_targets(d) for d in first)
        assert not any(director.device_targets(d) for d in later)

        def report(device_id: str) -> bytes:
            dev = devs[device_id]
            payload = json.dumps({"release": "main-2", "status": "committed"}).encode()
            return envelope.seal(payload, signer=dev.signer(), device_id=device_id, counter=1,
                                 timestamp=int(time.time() * 1000), topic=rollouts.STATUS_TOPIC,
                                 content_type="application/json",
                                 kid=envelope.kid_for_serial(dev.serial))

        bodies = {d: report(d) for d in first}

        def drive(http: httpx.Client) -> None:
            for n, device_id in enumerate(first, 1):
                resp = post(http, "/v1/updates/status", bodies[device_id])
                assert n < len(first), f"survived the advance: {resp.text}"
                assert resp.status_code == 200, resp.text

        # the last wave-0 report advances the rollout: die there (the n-th hit)
        crash_server(w, f"rollouts.report.committed:{len(first)}", drive)
        view = rollouts.status(db, rid)
        assert view.rollout.wave_index == 1  # committed before the crash
        director = updates.open_director(fleet.settings, fleet.secrets)
        assert not any(director.device_targets(d) for d in later)  # the crash window
        check_invariants(w, regenerate=False)
        with running_server(w.env, log_dir=tmp_path) as server, \
                httpx.Client(base_url=server.url, timeout=30.0) as http:
            resp = post(http, "/v1/updates/status", bodies[first[-1]])
            assert resp.status_code == 403, resp.text
            assert resp.json()["reason"] == "replayed"
        done = cli(w, "rollout", "tick")
        assert done.returncode == 0, done.stdout + done.stderr
        director = updates.open_director(fleet.settings, fleet.secrets)
        assert all(director.device_targets(d) for d in later), "the next wave was never offered"
        check_invariants(w)
    finally:
        db.close()
