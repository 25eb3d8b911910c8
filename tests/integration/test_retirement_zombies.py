"""Retiring one device among many, and every contact it makes afterwards, on the real parts.

Six devices onboard with their factory identities (the agent's onboarding against the service,
in process) and connect to a real Mosquitto over mTLS, each from its own loopback address. One is
retired: its live session is gone within seconds and it cannot reconnect (CRL), while the others
stay connected; it is refused at onboarding with its factory identity and at rotation with its
old credential. Every attempt is a zombie contact: the broker's refused handshakes come from its
log (attributed through the device's address), the others from the services. ``openssl verify
-crl_check`` and ``openssl crl -verify`` agree with the registry. Ownership transfer and the
tombstone are tested in the second test (no broker needed).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.conftest import missing_component
from tests.integration.fleet import ACTOR, OWNER, Fleet, Maker, build_fleet
from tests.integration.lifecycle_helpers import RotatingDevice
from tests.integration.mqtt import (
    INGEST,
    Client,
    Identity,
    Testbed,
    require_mosquitto,
    service_identity,
)

from iotrust.agent.onboard import ATTEST_PATH, CONFIRM_PATH, HELLO_PATH, onboard
from iotrust.core import pki
from iotrust.core.lifecycle import DeviceState, RetirementReason
from iotrust.errors import IotrustError, TrustError
from iotrust.ports import SystemClock
from iotrust.services import factory, manufacturers, retirement, zombies
from iotrust.services import rotation as rotation_svc
from iotrust.services import vouchers as voucher_svc
from iotrust.services.onboarding import OnboardingService

pytestmark = [pytest.mark.mqtt]
CLOCK = SystemClock()


class InProcess:
    """A :class:`~iotrust.agent.transport.Transport` calling the services directly."""

    def __init__(self, fleet: Fleet, db: object, source: str = "127.0.0.1") -> None:
        self.onboarding = OnboardingService(db, CLOCK, fleet.settings, fleet.secrets)  # type: ignore[arg-type]
        self.source = source

    def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        handlers: dict[str, Callable[..., object]] = {
            HELLO_PATH: self.onboarding.hello, ATTEST_PATH: self.onboarding.attest,
            CONFIRM_PATH: self.onboarding.confirm}
        try:
            reply = handlers[path](body, source=self.source)
        except IotrustError as exc:
            return (403 if isinstance(exc, TrustError) else 422), json.dumps(exc.as_dict()).encode()
        return (204, b"") if reply is None else (200, reply.to_wire())  # type: ignore[attr-defined]


class BoundClient(Client):
    """A test client that connects from a given loopback address (one per simulated device)."""

    def __init__(self, *args: object, bind: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.bind = bind

    def connect(self, timeout: float = 5.0) -> bool:
        before = len(self.connects), len(self.disconnects)
        try:
            self.mqtt.connect("127.0.0.1", self.port, keepalive=30, bind_address=self.bind)
        except (OSError, ssl.SSLError):
            return False
        if not self._started:
            self.mqtt.loop_start()
            self._started = True
        self.wait(lambda: len(self.connects) > before[0] or len(self.disconnects) > before[1],
                  timeout)
        return (len(self.connects) > before[0] and not self.connects[-1].is_failure
                and self.connected)


def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        missing_component("openssl")
    assert path is not None
    return path


def onboard_all(fleet: Fleet, db: object, base: Path) -> dict[str, tuple[str, Path]]:
    """serial → (device id, state folder)."""
    out = {}
    transport = InProcess(fleet, db)
    for serial, dev in fleet.devices.items():
        state_dir = base / "states" / serial
        state = onboard(dev.folder, state_dir, transport, now=lambda: datetime.now(UTC),
                        random=os.urandom)
        out[serial] = (state.device_id, state_dir)
    return out


def test_retire_one_among_many_refused_everywhere_and_recorded(tmp_path: Path) -> None:  # noqa: PLR0915 - one scenario
    require_mosquitto()
    fleet = build_fleet(tmp_path, makers=(Maker("widgetco", count=6),))
    db = fleet.open_db()
    try:
        states = onboard_all(fleet, db, tmp_path)
        idents = {sid: Identity(did, sdir / "operational.crt.pem", sdir / "operational.key.pem")
                  for sid, (did, sdir) in states.items()}
        ingest = service_identity(fleet, db, CLOCK, INGEST, tmp_path / "clients")
        tb = Testbed(fleet=fleet, devices=list(idents.values()), ingest=ingest, clock=CLOCK)
        serials = sorted(idents)
        victim_serial = serials[0]
        victim = idents[victim_serial]
        addr = {s: f"127.0.0.{10 + i}" for i, s in enumerate(serials)}
        with tb.running() as broker:
            clients: dict[str, BoundClient] = {}
            for s in serials:
                c = BoundClient(tb.port, broker.layout.ca, idents[s], bind=addr[s])
                tb.clients.append(c)
                assert c.connect(), s
                clients[s] = c
            start = time.monotonic()
            done = retirement.retire_many(db, fleet.settings, fleet.secrets, CLOCK,
                                          device_ids=[victim.name],
                                          reason=RetirementReason.COMPROMISED, actor=ACTOR,
                                          broker=broker)
            assert [d.state for d in done] == [DeviceState.RETIRED]
            assert clients[victim_serial].wait(
                lambda: bool(clients[victim_serial].disconnects), 5.0)
            # paho reconnects a kicked client on its own, and with TLS 1.3 a refused handshake can
            # look complete to the client, whose loop then retries too: every such retry is a
            # real refused contact, so stop each client of the victim before counting
            clients[victim_serial].close()
            attempts = []
            for _ in range(3):
                again = BoundClient(tb.port, broker.layout.ca, victim, bind=addr[victim_serial])
                attempts.append(again.connect())
                again.close()
            refused_after = time.monotonic() - start
            assert attempts == [False, False, False]
            assert refused_after < 5.0
            for s in serials[1:]:  # the rest of the fleet is untouched
                assert clients[s].connected
                assert not clients[s].disconnects
                assert clients[s].publish(f"devices/{idents[s].name}/telemetry") in {0, 0x10}
            assert tb.process is not None
            log = broker.layout.root / "mosquitto.log"
            refusals = 0
            deadline = time.monotonic() + 15  # Mosquitto flushes its log lines when it can
            while refusals < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
                refusals += zombies.scan_broker_log(db, CLOCK, log,
                                                    state_dir=broker.layout.root).refusals
            time.sleep(1.0)  # let the log catch up with any retry made before a close
            refusals += zombies.scan_broker_log(db, CLOCK, log,
                                                state_dir=broker.layout.root).refusals
            assert refusals >= 3
            # a second scan reads nothing twice
            assert zombies.scan_broker_log(db, CLOCK, log,
                                           state_dir=broker.layout.root).refusals == 0

        # onboarding with its factory identity: refused, twice
        for n in range(2):
            with pytest.raises(TrustError) as info:
                onboard(fleet.devices[victim_serial].folder, tmp_path / f"again-{n}",
                        InProcess(fleet, db, source=addr[victim_serial]),
                        now=lambda: datetime.now(UTC), random=os.urandom)
            assert info.value.reason == "retired"
        # rotation with its old credential: refused
        svc = rotation_svc.RotationService(db, CLOCK, fleet.settings, fleet.secrets)
        with pytest.raises(TrustError) as rinfo:
            svc.begin(RotatingDevice(victim.name, victim.cert, victim.key).begin_request()
                      .to_wire(), source=addr[victim_serial])
        assert rinfo.value.reason == "retired"
        summary = {z.identity: z for z in zombies.list_zombies(db)}[victim.name]
        # each refused handshake in the broker's log is one contact: at least the three made here
        assert summary.channels == {"broker": refusals, "onboarding": 2, "rotation": 1}
        assert summary.count == refusals + 3
        assert all(z.identity == victim.name for z in zombies.list_zombies(db))

        # openssl agrees with the registry
        tool = openssl()
        chain = tmp_path / "trust.pem"
        chain.write_bytes((fleet.settings.ca_dir / "bundle.pem").read_bytes())
        crl = fleet.settings.crl_dir / "all.crl.pem"
        verdicts = {}
        for s in serials[:2]:
            proc = subprocess.run([openssl(), "verify", "-crl_check", "-CAfile", str(chain),
                                   "-CRLfile", str(crl), str(idents[s].cert)],
                                  capture_output=True, text=True, check=False)
            verdicts[s] = proc.returncode == 0
        assert verdicts == {serials[0]: False, serials[1]: True}
        crl_ok = subprocess.run([tool, "crl", "-in", str(crl), "-CAfile", str(chain), "-noout",
                                 "-verify"], capture_output=True, text=True, check=False)
        assert crl_ok.returncode == 0
        with db.transaction() as tx:
            registry = {c.serial_number for c in tx.list_credentials(device_id=victim.name)}
        listed = {f"{r.serial_number:x}" for r in pki.load_crl(crl.read_bytes())}
        assert registry <= listed
    finally:
        db.close()


def test_ownership_transfer_and_tombstone(tmp_path: Path) -> None:
    a = build_fleet(tmp_path / "a", makers=(Maker("widgetco", count=2),))
    b = build_fleet(tmp_path / "b", makers=())
    db_a, db_b = a.open_db(), b.open_db()
    try:
        states = onboard_all(a, db_a, tmp_path / "a")
        moving, staying = sorted(states)
        moving_id, moving_state = states[moving]
        old_cert = pki.load_certificate((moving_state / "operational.crt.pem").read_bytes())
        # the old owner ends its trust: retired as transferred; the other is decommissioned
        retirement.retire_many(db_a, a.settings, a.secrets, CLOCK, device_ids=[moving_id],
                               reason=RetirementReason.TRANSFERRED, actor=ACTOR)
        retirement.retire_many(db_a, a.settings, a.secrets, CLOCK,
                               device_ids=[states[staying][0]],
                               reason=RetirementReason.DECOMMISSIONED, actor=ACTOR)
        # the new owner (domain B) trusts the maker and imports a voucher the maker signed for it
        fac = a.factories["widgetco"]
        manufacturers.add_manufacturer(db_b, CLOCK, name="widgetco",
                                       anchors_pem=(fac.path / "root.crt.pem").read_bytes(),
                                       allowed=["0x1234:sensor-1"], actor=ACTOR)
        passphrase = b"integration passphrase for the factory keys"
        dev = a.devices[moving]
        voucher_b = factory.write_vouchers(fac, CLOCK, [dev.folder], owner=OWNER,
                                           owner_root_pem=b.root_pem.read_bytes(),
                                           passphrase=passphrase)
        report = voucher_svc.import_vouchers(db_b, CLOCK, voucher_b, actor=ACTOR)
        assert not report.refused
        assert len(report.imported) == 1
        with db_b.transaction() as tx:
            expected = tx.find_device("widgetco", moving)
        assert expected is not None
        assert expected.state is DeviceState.EXPECTED
        # the device onboards afresh under the new owner
        new_state = onboard(dev.folder, tmp_path / "b-state", InProcess(b, db_b),
                            now=lambda: datetime.now(UTC), random=os.urandom)
        assert new_state.owner_spki_sha256 != pki.spki_sha256(
            pki.load_certificate(a.root_pem.read_bytes()).public_key())
        # none of the old owner's credentials is valid: revoked in A's CRL, unknown to B
        crl_a = pki.load_crl((a.settings.crl_dir / "all.crl.pem").read_bytes())
        assert crl_a.get_revoked_certificate_by_serial_number(old_cert.serial_number)
        with db_b.transaction() as tx:
            assert all(c.issuer_ca_id != "" for c in tx.list_credentials(device_id=expected.id))
            assert f"{old_cert.serial_number:x}" not in {
                c.serial_number for c in tx.list_credentials()}
        # back in A: a voucher for A again readmits the transferred device (explicit, evented)
        again = factory.write_vouchers(fac, CLOCK, [dev.folder], owner=OWNER,
                                       owner_root_pem=a.root_pem.read_bytes(),
                                       passphrase=passphrase)
        readmit = voucher_svc.import_vouchers(db_a, CLOCK, again, actor=ACTOR)
        assert not readmit.refused
        with db_a.transaction() as tx:
            assert tx.get_device(moving_id).state is DeviceState.EXPECTED
        # tombstone: a new voucher for the decommissioned device is refused
        tomb = factory.write_vouchers(fac, CLOCK, [a.devices[staying].folder], owner=OWNER,
                                      owner_root_pem=a.root_pem.read_bytes(),
                                      passphrase=passphrase)
        refused = voucher_svc.import_vouchers(db_a, CLOCK, tomb, actor=ACTOR)
        assert [r[1] for r in refused.refused] == ["voucher_conflict"]
        with db_a.transaction() as tx:
            assert tx.get_device(states[staying][0]).state is DeviceState.RETIRED
    finally:
        db_a.close()
        db_b.close()
