"""The agent's onboarding flow against an in-memory server built from the core's decisions.

:class:`ServerSimulator` plugs into the :class:`~iotrust.agent.transport.Transport` seam (as
python-tuf's RepositorySimulator plugs into its fetcher): it runs the pure server-side decision
functions of ``iotrust.core.onboarding`` over in-memory facts and answers like the real API
(``{"error", "reason", "detail"}`` bodies, 403/422/429). It can also misbehave: fail at the
network level, answer 503, or act as a rogue server.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import stat
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from iotrust.adapters.keys import DeviceFileKey
from iotrust.agent import cli as agent_cli
from iotrust.agent.onboard import ATTEST_PATH, CONFIRM_PATH, HELLO_PATH, onboard
from iotrust.agent.state import STATE_FILE, load_state
from iotrust.agent.transport import RetryingTransport, RetryPolicy, no_jitter
from iotrust.core import lifecycle, pki
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import Device, DeviceState
from iotrust.core.onboarding import (
    AttestRequest,
    AttestResponse,
    Broker,
    ConfirmRequest,
    HelloRequest,
    ManufacturerTrust,
    check_attest,
    check_confirm,
    check_hello,
    hello_response,
    new_session,
)
from iotrust.core.records import OnboardingSession, SessionState
from iotrust.core.vouchers import VoucherClaims, decode_voucher, sign_voucher
from iotrust.errors import BackendError, ConflictError, InputError, IotrustError, TrustError

ROOT = Path(__file__).resolve().parents[3]


def _load_make_vectors() -> ModuleType:
    if "make_vectors" in sys.modules:
        return sys.modules["make_vectors"]
    spec = importlib.util.spec_from_file_location("make_vectors",
                                                  ROOT / "scripts" / "make_vectors.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_vectors"] = module
    spec.loader.exec_module(module)
    return module


mv = _load_make_vectors()
T0: datetime = mv.T0
YEAR = timedelta(days=365)
SERVER_ID = "iotrust.test"
VENDOR, PRODUCT = mv.VENDOR, mv.PRODUCT


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


# --- the world: a manufacturer, an owner, a minted device folder ------------------------------

@dataclasses.dataclass
class World:
    maker: Any
    domain: Any
    device_dir: Path
    serial: str
    factory_public_key: ec.EllipticCurvePublicKey
    voucher: bytes
    device: Device


def write_device_folder(folder: Path, maker: Any, serial: str, *,
                        factory_public_key: ec.EllipticCurvePublicKey, key_ref: str,
                        number: int) -> None:
    """The layout ``iotrust factory mint`` writes (services/factory.py)."""
    cert = pki.issue_factory_certificate(
        maker.factory_ca_key, maker.factory_ca, serial=serial, manufacturer=maker.name,
        vendor_id=VENDOR, product_id=PRODUCT, public_key=factory_public_key,
        serial_number=number, not_before=T0 - YEAR, lifetime=8 * YEAR)
    (folder / "factory.crt.pem").write_bytes(pem(cert))
    (folder / "chain.pem").write_bytes(pem(maker.factory_ca))
    (folder / "manufacturer-root.pem").write_bytes(pem(maker.root))
    (folder / "device.json").write_text(json.dumps({
        "serial": serial, "manufacturer": maker.name, "vendor_id": VENDOR,
        "product_id": PRODUCT, "factory_spki_sha256": pki.spki_sha256(factory_public_key),
        "key_ref": key_ref}))


def make_voucher(maker: Any, domain: Any, serial: str,
                 factory_public_key: ec.EllipticCurvePublicKey, *, owner: str | None = None,
                 ) -> bytes:
    claims = VoucherClaims(
        manufacturer=maker.name, serial=serial, vendor_id=VENDOR, product_id=PRODUCT,
        factory_spki_sha256=pki.spki_sha256(factory_public_key),
        owner=owner or domain.owner, owner_spki_sha256=domain.owner_spki_sha256,
        created_at=T0 - timedelta(days=1))
    return sign_voucher(claims, maker.voucher_key, der(maker.voucher_signer))


def expected_device(maker: Any, domain: Any, serial: str,
                    factory_public_key: ec.EllipticCurvePublicKey) -> Device:
    return Device(id=new_device_id(os.urandom(16)), manufacturer=maker.name, serial=serial,
                  factory_spki_sha256=pki.spki_sha256(factory_public_key), vendor_id=VENDOR,
                  product_id=PRODUCT, owner=domain.owner, state=DeviceState.EXPECTED,
                  created_at=T0 - timedelta(days=1), updated_at=T0 - timedelta(days=1))


def build_world(base: Path, *, factory_public_key: ec.EllipticCurvePublicKey | None = None,
                key_ref: str | None = None, serial: str = "SN00000001") -> World:
    """A devfile device unless a factory key (and its reference) is given."""
    maker = mv.make_maker("acme", 0x1000)
    domain = mv.make_domain("example-owner", 0x3000)
    folder = base / "device"
    folder.mkdir()
    if factory_public_key is None:
        key = DeviceFileKey.generate(folder / "factory.key.pem")
        factory_public_key, key_ref = key.public_key, f"devfile:{key.path}"
    assert key_ref is not None
    write_device_folder(folder, maker, serial, factory_public_key=factory_public_key,
                        key_ref=key_ref, number=0x2001)
    voucher = make_voucher(maker, domain, serial, factory_public_key)
    return World(maker, domain, folder, serial, factory_public_key, voucher,
                 expected_device(maker, domain, serial, factory_public_key))


# --- the server simulator ---------------------------------------------------------------------

class ServerSimulator:
    """An in-memory onboarding server over the core's pure decision functions."""

    def __init__(self, world: World, *, clock: Callable[[], datetime]) -> None:
        self.world = world
        self.now = clock
        self.devices: dict[str, Device] = {world.serial: world.device}
        self.trust = ManufacturerTrust(name=world.maker.name, anchors=(world.maker.root,),
                                       allowed=frozenset({f"{VENDOR}:{PRODUCT}"}))
        self.voucher: bytes = world.voucher
        self.issuer = world.domain  # whose issuing CA signs operational certificates
        self.sessions: dict[str, OnboardingSession] = {}
        self.factory_keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self.claims: dict[str, str | None] = {}  # session id -> the hello's key_storage claim
        self.certificates: dict[str, x509.Certificate] = {}
        self.known_keys: set[str] = set()
        self.calls: list[str] = []
        self.faults: list[str | int] = []  # "network" or an HTTP status, consumed per request
        self.serial_number = 0x5000

    # -- Transport
    def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.calls.append(path)
        if self.faults:
            fault = self.faults.pop(0)
            if fault == "network":
                raise BackendError("connection refused", reason="network")
            assert isinstance(fault, int)
            return fault, b'{"error":"BackendError","reason":"busy","detail":"try later"}'
        handler = {HELLO_PATH: self.hello, ATTEST_PATH: self.attest,
                   CONFIRM_PATH: self.confirm}[path]
        try:
            return handler(body)
        except TrustError as exc:
            status = 429 if exc.reason == "rate_limited" else 403
            return status, json.dumps(exc.as_dict()).encode()
        except InputError as exc:
            return 422, json.dumps(exc.as_dict()).encode()

    # -- endpoints
    def hello(self, body: bytes) -> tuple[int, bytes]:
        req = HelloRequest.from_wire(body)
        device = self.devices.get(req.serial)
        now = self.now()
        live = any(s.serial == req.serial and s.state is SessionState.OPEN
                   and now < s.expires_at for s in self.sessions.values())
        decision = check_hello(
            req, now=now, device=device, manufacturer=self.trust,
            voucher=decode_voucher(self.world.voucher), owner=self.world.domain.owner,
            owner_spki_sha256=self.world.domain.owner_spki_sha256,
            device_by_factory_key=device, open_session_exists=live)
        assert decision.device is not None
        session = new_session(os.urandom, now, 60)
        self.sessions[session.record_id] = OnboardingSession(
            id=session.record_id, device_id=decision.device.id, serial=req.serial,
            nonce_sha256=session.nonce_sha256, device_nonce=req.device_nonce.hex(),
            expires_at=session.expires_at, state=SessionState.OPEN, source="simulator",
            created_at=now)
        self.factory_keys[session.record_id] = decision.factory_public_key
        self.claims[session.record_id] = req.key_storage
        resp = hello_response(dataclasses.replace(decision, voucher=self.voucher), session,
                              server_id=SERVER_ID)
        return 200, resp.to_wire()

    def attest(self, body: bytes) -> tuple[int, bytes]:
        req = AttestRequest.from_wire(body)
        sid = req.session_id.hex()
        record = self.sessions.get(sid)
        now = self.now()
        consumed = record is not None and record.state is SessionState.OPEN
        decision = check_attest(
            req, session=record, now=now, server_id=SERVER_ID,
            factory_public_key=self.factory_keys.get(sid, self.world.factory_public_key),
            voucher_sha256=mv.sha256(self.world.voucher), nonce_consumed_ok=consumed,
            known_key=lambda spki: spki in self.known_keys, key_storage=self.claims.get(sid))
        assert record is not None
        self.sessions[sid] = dataclasses.replace(record, state=SessionState.ATTESTED)
        self.known_keys.add(decision.csr_spki_sha256)
        self.serial_number += 1
        cert = pki.issue_device_certificate(
            self.issuer.issuing_key, self.issuer.issuing, device_id=record.device_id,
            public_key=decision.csr_public_key, serial_number=self.serial_number,
            not_before=now, lifetime=timedelta(days=30))
        self.certificates[sid] = cert
        resp = AttestResponse(
            device_id=record.device_id, certificate=der(cert),
            ca_chain=(der(self.issuer.issuing), der(self.issuer.root)),
            broker=Broker(host="broker.test", port=8883), update_root=b'{"signed":{}}',
            policy=({"action": "publish", "topic": "devices/{device_id}/telemetry"},),
            confirm_by=now.replace(microsecond=0) + timedelta(minutes=5))
        return 200, resp.to_wire()

    def confirm(self, body: bytes) -> tuple[int, bytes]:
        req = ConfirmRequest.from_wire(body)
        sid = req.session_id.hex()
        record = self.sessions.get(sid)
        now = self.now()
        cert = self.certificates.get(sid)
        check_confirm(req, session=record, now=now,
                      confirm_by=now + timedelta(minutes=5) if cert else now,
                      certificate=cert or self.world.maker.root,
                      confirmed_ok=record is not None and record.state is SessionState.ATTESTED)
        assert record is not None
        self.sessions[sid] = dataclasses.replace(record, state=SessionState.CONFIRMED)
        device = self.devices[record.serial]
        self.devices[record.serial] = lifecycle.onboard(device, now)
        return 204, b""


# --- fixtures and helpers ---------------------------------------------------------------------

def fixed_now() -> datetime:
    return T0


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path)


@pytest.fixture
def server(world: World) -> ServerSimulator:
    return ServerSimulator(world, clock=fixed_now)


def run_onboard(world: World, state_dir: Path, transport: Any) -> Any:
    return onboard(world.device_dir, state_dir, transport, now=fixed_now, random=os.urandom,
                   server_url="https://iotrust.test")


def refused(reason: str, fn: Callable[[], object]) -> TrustError:
    with pytest.raises(TrustError) as info:
        fn()
    assert info.value.reason == reason, info.value.diagnostics()
    return info.value


# --- happy path -------------------------------------------------------------------------------

def test_onboards_and_saves_its_state(world: World, server: ServerSimulator,
                                      tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state = run_onboard(world, state_dir, server)

    assert server.calls == [HELLO_PATH, ATTEST_PATH, CONFIRM_PATH]
    assert server.devices[world.serial].state is DeviceState.ACTIVE
    assert state.device_id == world.device.id
    assert state.confirmed
    assert state.owner == world.domain.owner
    assert state.owner_spki_sha256 == world.domain.owner_spki_sha256
    assert state.server_id == SERVER_ID
    assert state.key_storage == "file"
    assert list(server.claims.values()) == ["file"]  # stated in the hello, signed in the attest
    assert (state.broker_host, state.broker_port) == ("broker.test", 8883)
    assert state.update_root == b'{"signed":{}}'
    # the certificate is for the operational key, not the factory key, and chains to the owner
    op_key = DeviceFileKey.load(state_dir / "operational.key.pem")
    assert pki.spki_sha256(state.certificate.public_key()) == pki.spki_sha256(op_key.public_key)
    assert pki.spki_sha256(op_key.public_key) != pki.spki_sha256(world.factory_public_key)
    assert state.operational_key_ref == f"devfile:{state_dir / 'operational.key.pem'}"

    loaded = load_state(state_dir)
    assert loaded == state
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    for name in ("state.json", "update-root.json", "operational.key.pem"):
        assert stat.S_IMODE((state_dir / name).stat().st_mode) == 0o600, name
    assert not [p for p in state_dir.iterdir() if p.name.startswith(".")]  # no temp files


def test_a_second_onboard_is_refused_locally(world: World, server: ServerSimulator,
                                             tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    run_onboard(world, state_dir, server)
    with pytest.raises(ConflictError) as info:
        run_onboard(world, state_dir, server)
    assert info.value.reason == "already_onboarded"
    assert server.calls == [HELLO_PATH, ATTEST_PATH, CONFIRM_PATH]


def test_status_command_shows_the_state(world: World, server: ServerSimulator, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    state_dir = tmp_path / "state"
    state = run_onboard(world, state_dir, server)
    assert agent_cli.run(["status", "--state", str(state_dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["device_id"] == state.device_id
    assert shown["confirmed"] is True
    assert shown["key_storage"] == "file"
    assert agent_cli.run(["status", "--state", str(tmp_path / "nothing")]) == 66
    assert "not_onboarded" in capsys.readouterr().err


# --- refusals: by the server, never retried ---------------------------------------------------

def test_unknown_device_is_refused_and_not_retried(world: World, server: ServerSimulator,
                                                   tmp_path: Path) -> None:
    server.devices.clear()
    sleeps: list[float] = []
    transport = RetryingTransport(server, sleep=sleeps.append, jitter=no_jitter)
    err = refused("unknown_device", lambda: run_onboard(world, tmp_path / "state", transport))
    assert "no device is expected" in err.message
    assert server.calls == [HELLO_PATH]
    assert sleeps == []
    assert not (tmp_path / "state" / STATE_FILE).exists()


def test_a_live_session_is_clone_suspected(world: World, server: ServerSimulator,
                                           tmp_path: Path) -> None:
    leaf = pki.load_certificate((world.device_dir / "factory.crt.pem").read_bytes())
    status, _ = server.post_json(HELLO_PATH, HelloRequest(
        serial=world.serial, factory_chain=(der(leaf), der(world.maker.factory_ca)),
        device_nonce=bytes(32)).to_wire())
    assert status == 200
    refused("clone_suspected", lambda: run_onboard(world, tmp_path / "state", server))


# --- refusals: by the device, against a rogue server ------------------------------------------

def test_forged_voucher_is_voucher_invalid(world: World, server: ServerSimulator,
                                           tmp_path: Path) -> None:
    rogue_maker = mv.make_maker("acme", 0x7000)  # same name, keys the device does not trust
    rogue_domain = mv.make_domain("rogue", 0x7100)
    server.voucher = make_voucher(rogue_maker, rogue_domain, world.serial,
                                  world.factory_public_key)
    refused("voucher_invalid", lambda: run_onboard(world, tmp_path / "state", server))
    assert server.calls == [HELLO_PATH]


def test_voucher_of_another_device_is_voucher_mismatch(world: World, server: ServerSimulator,
                                                       tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    server.voucher = make_voucher(world.maker, world.domain, world.serial, other)
    refused("voucher_mismatch", lambda: run_onboard(world, tmp_path / "state", server))
    assert server.calls == [HELLO_PATH]


def test_chain_to_another_root_is_owner_mismatch(world: World, server: ServerSimulator,
                                                 tmp_path: Path) -> None:
    # The rogue replays the genuine voucher but can only issue under its own root.
    server.issuer = mv.make_domain("rogue", 0x7100)
    refused("owner_mismatch", lambda: run_onboard(world, tmp_path / "state", server))
    assert server.calls == [HELLO_PATH, ATTEST_PATH]  # no confirm: the credential is unused
    assert not (tmp_path / "state" / STATE_FILE).exists()


def test_certificate_for_another_key_is_certificate_mismatch(
        world: World, server: ServerSimulator, tmp_path: Path) -> None:
    original = server.attest

    def swap_key(body: bytes) -> tuple[int, bytes]:
        status, reply = original(body)
        resp = AttestResponse.from_wire(reply)
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        cert = pki.issue_device_certificate(
            world.domain.issuing_key, world.domain.issuing, device_id=resp.device_id,
            public_key=other, serial_number=0x6001, not_before=T0,
            lifetime=timedelta(days=30))
        return status, dataclasses.replace(resp, certificate=der(cert)).to_wire()

    server.attest = swap_key  # type: ignore[method-assign]
    refused("certificate_mismatch", lambda: run_onboard(world, tmp_path / "state", server))
    assert CONFIRM_PATH not in server.calls


def test_a_failed_attempt_can_start_over(world: World, server: ServerSimulator,
                                         tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    server.issuer = mv.make_domain("rogue", 0x7100)
    refused("owner_mismatch", lambda: run_onboard(world, state_dir, server))
    assert (state_dir / "operational.key.pem").exists()  # left behind, never certified
    server.issuer = world.domain
    server.sessions.clear()  # the old session expired
    state = run_onboard(world, state_dir, server)
    assert state.confirmed


# --- retries ----------------------------------------------------------------------------------

def test_network_errors_are_retried_with_backoff(world: World, server: ServerSimulator,
                                                 tmp_path: Path) -> None:
    server.faults = ["network", "network"]
    sleeps: list[float] = []
    transport = RetryingTransport(server, sleep=sleeps.append, jitter=no_jitter)
    state = run_onboard(world, tmp_path / "state", transport)
    assert state.confirmed
    assert sleeps == [0.2, 0.4]
    assert server.calls == [HELLO_PATH] * 3 + [ATTEST_PATH, CONFIRM_PATH]


def test_503_is_retried(world: World, server: ServerSimulator, tmp_path: Path) -> None:
    server.faults = [503, 502, 504]
    sleeps: list[float] = []
    transport = RetryingTransport(server, sleep=sleeps.append, jitter=no_jitter)
    assert run_onboard(world, tmp_path / "state", transport).confirmed
    assert sleeps == [0.2, 0.4, 0.8]


def test_retry_budget_exhausted_is_a_backend_error(world: World, server: ServerSimulator,
                                                   tmp_path: Path) -> None:
    server.faults = ["network"] * 10
    sleeps: list[float] = []
    transport = RetryingTransport(server, policy=RetryPolicy(retries=3, backoff_max=0.5),
                                  sleep=sleeps.append, jitter=no_jitter)
    with pytest.raises(BackendError) as info:
        run_onboard(world, tmp_path / "state", transport)
    assert info.value.reason == "network"
    assert sleeps == [0.2, 0.4, 0.5]
    assert server.calls == [HELLO_PATH] * 4


def test_exhausted_503_is_a_backend_error(world: World, server: ServerSimulator,
                                          tmp_path: Path) -> None:
    server.faults = [503] * 10
    transport = RetryingTransport(server, policy=RetryPolicy(retries=2),
                                  sleep=lambda _s: None, jitter=no_jitter)
    with pytest.raises(BackendError) as info:
        run_onboard(world, tmp_path / "state", transport)
    assert info.value.reason == "busy"
    assert len(server.calls) == 3


# --- inputs -----------------------------------------------------------------------------------

def test_a_damaged_device_folder_is_input_error(world: World, server: ServerSimulator,
                                                tmp_path: Path) -> None:
    (world.device_dir / "factory.crt.pem").write_bytes(b"not a certificate")
    with pytest.raises(InputError) as info:
        run_onboard(world, tmp_path / "state", server)
    assert info.value.reason == "device_folder_damaged"
    assert server.calls == []


def test_a_factory_key_that_does_not_match_is_refused_before_contact(
        world: World, server: ServerSimulator, tmp_path: Path) -> None:
    (world.device_dir / "factory.key.pem").unlink()
    DeviceFileKey.generate(world.device_dir / "factory.key.pem")
    with pytest.raises(IotrustError) as info:
        run_onboard(world, tmp_path / "state", server)
    assert info.value.reason == "factory_key_mismatch"
    assert server.calls == []


# --- the CSR the agent sends ------------------------------------------------------------------

class ExternalKey:
    """A signer without ``private_key``: forces build_csr's external-signer path."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


class WrongKey(ExternalKey):
    """Signs with a different key than it claims: a broken key store."""

    def sign(self, data: bytes) -> bytes:
        return ec.generate_private_key(ec.SECP256R1()).sign(data, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("make", [lambda p: DeviceFileKey.generate(p / "k.pem"),
                                  lambda _p: ExternalKey()])
def test_build_csr_for_any_signer(tmp_path: Path, make: Callable[[Path], Any]) -> None:
    signer = make(tmp_path)
    csr = pki.build_csr(signer)
    assert csr.is_signature_valid
    key = pki.check_csr(csr.public_bytes(Encoding.DER))
    assert pki.spki_sha256(key) == pki.spki_sha256(signer.public_key)
    assert len(csr.subject) == 0


def test_build_csr_refuses_a_broken_signer() -> None:
    with pytest.raises(RuntimeError):
        pki.build_csr(WrongKey())
