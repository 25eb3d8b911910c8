"""Onboarding (hello → attest → confirm): in-process through the service layer, and over HTTP.

Devices come from a real supply chain made before the timer starts (``init_factory``, ``mint``,
vouchers imported into a fresh trust domain); they are driven by the device-side helpers of
:mod:`iotrust.core.onboarding`.

* ``onboarding`` (in process, SQLite): only the time spent inside the service calls is charged
  to the server; the device-side work (voucher check, key and CSR, transcript signatures) runs
  outside that clock. The floor is the cryptography one onboarding cannot avoid, measured in the
  same run: four ECDSA P-256 verifications (factory certificate under its issuing CA, attest
  transcript, CSR proof of possession, confirm transcript) and one signature (the certificate).
  The note adds the server's CPU time alone: the gap to the server time is waiting, mostly for
  the three durable (fsynced) SQLite commits, one per step (docs/adr/0004, 0005).
* ``onboarding_http`` (:mod:`benchmarks.onboarding_http`) drives a real ``iotrust serve`` with
  devices from :func:`prepare_fleet`.

Both need ``iotrust.services.onboarding``; until it exists they are reported as skipped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks import (
    ECDSA_SHA256,
    Config,
    Result,
    SoftKey,
    best,
    per_second,
    seconds,
)
from benchmarks.registry import (
    ACTOR,
    MANUFACTURER,
    PASSPHRASE,
    PRODUCT_ID,
    VENDOR_ID,
    BenchDomain,
    open_domain,
)
from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.core import onboarding as proto
from iotrust.core import pki
from iotrust.ports import SystemClock
from iotrust.services import factory as factory_service
from iotrust.services import manufacturers
from iotrust.services.domain import root_ca
from iotrust.services.vouchers import import_vouchers

if TYPE_CHECKING:
    from iotrust.services.onboarding import OnboardingService

#: ECDSA work the server cannot avoid per onboarded device.
FLOOR_VERIFICATIONS = 4
FLOOR_SIGNATURES = 1
TARGET_RATIO = 0.60
#: Durable commits one onboarding makes (one per step, docs/adr/0005): fsyncs on SQLite.
COMMITS_PER_ONBOARDING = 3


def missing_service() -> str | None:
    """Why the in-process onboarding benchmark cannot run (``None`` if it can)."""
    if importlib.util.find_spec("iotrust.services.onboarding") is None:
        return "iotrust.services.onboarding does not exist yet"
    return None


def onboarding_floor_rate(n: int, message_len: int = 512) -> float:
    """Onboardings per second if the server did nothing but the unavoidable ECDSA work."""
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(FLOOR_VERIFICATIONS)]
    ca_key = ec.generate_private_key(ec.SECP256R1())
    messages = [os.urandom(message_len) for _ in keys]
    checks = [(k.public_key(), k.sign(m, ECDSA_SHA256), m) for k, m in zip(keys, messages,
                                                                           strict=True)]
    tbs = os.urandom(message_len)

    def work() -> None:
        for _ in range(n):
            for public, signature, message in checks:
                public.verify(signature, message, ECDSA_SHA256)
            ca_key.sign(tbs, ECDSA_SHA256)

    return per_second(n, seconds(work))


@dataclass(frozen=True, slots=True)
class SimulatedDevice:
    """A minted device as the agent would hold it, plus its next operational key and CSR."""

    serial: str
    factory_chain: tuple[bytes, ...]
    factory_key: DeviceFileKey
    operational_key: SoftKey
    csr_der: bytes


@dataclass(frozen=True, slots=True)
class Fleet:
    """A trust domain expecting ``devices`` (vouchers imported) and the devices' anchors."""

    domain: BenchDomain
    devices: list[SimulatedDevice]
    anchors: tuple[x509.Certificate, ...]


def prepare_fleet(base: Path, count: int, *, settings: dict[str, object] | None = None) -> Fleet:
    """Mint ``count`` devices, make a trust domain in ``base`` and import their vouchers."""
    clock = SystemClock()
    made = factory_service.init_factory(base / "factory", clock, name=MANUFACTURER,
                                        vendor_id=VENDOR_ID, product_id=PRODUCT_ID,
                                        passphrase=PASSPHRASE)
    minted = factory_service.mint(made, clock, count, passphrase=PASSPHRASE)
    domain = open_domain(base / "data", clock=clock)
    if settings:
        with domain.db.transaction() as tx:
            current = tx.get_domain()
            if current is None:
                raise RuntimeError("the bench domain vanished")
            tx.update_domain(replace(current, settings={**current.settings, **settings}))
    manufacturers.add_manufacturer(
        domain.db, clock, name=MANUFACTURER,
        anchors_pem=made.root.public_bytes(serialization.Encoding.PEM),
        allowed=[f"{VENDOR_ID}:{PRODUCT_ID}"], actor=ACTOR)
    with domain.db.transaction(readonly=True) as tx:
        owner_root = root_ca(tx).certificate_pem.encode()
    vouchers = factory_service.write_vouchers(made, clock, [m.folder for m in minted],
                                              owner=domain.owner, owner_root_pem=owner_root,
                                              passphrase=PASSPHRASE)
    report = import_vouchers(domain.db, clock, vouchers, actor=ACTOR)
    if len(report.imported) != count:
        raise RuntimeError(f"voucher import refused some devices: {report.refused[:3]}")
    issuing_der = made.issuing.public_bytes(serialization.Encoding.DER)
    devices = []
    for m in minted:
        leaf = pki.load_certificate((m.folder / "factory.crt.pem").read_bytes())
        operational = SoftKey()
        devices.append(SimulatedDevice(
            serial=m.serial,
            factory_chain=(leaf.public_bytes(serialization.Encoding.DER), issuing_der),
            factory_key=DeviceFileKey.load(m.folder / "factory.key.pem"),
            operational_key=operational,
            csr_der=pki.build_csr(operational).public_bytes(serialization.Encoding.DER)))
    return Fleet(domain=domain, devices=devices, anchors=(made.root,))


def _onboard_in_process(service: OnboardingService, fleet: Fleet,
                        devices: list[SimulatedDevice]) -> tuple[float, float, float]:
    """Onboard ``devices`` one after the other; (server seconds, server CPU seconds, wall seconds).

    Server CPU is this process's CPU time inside the service calls: the server time minus what
    it spent waiting, mostly on the disk (each step ends with a durable SQLite commit).
    """
    clock = time.perf_counter
    cpu = time.process_time
    server = server_cpu = 0.0
    wall_start = clock()
    for index, device in enumerate(devices):
        source = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
        hello = proto.build_hello(serial=device.serial, factory_chain=device.factory_chain,
                                  random=os.urandom)
        body = hello.to_wire()
        t0, c0 = clock(), cpu()
        answer = service.hello(body, source=source).to_wire()
        server, server_cpu = server + clock() - t0, server_cpu + cpu() - c0
        session = proto.accept_hello_response(proto.HelloResponse.from_wire(answer), hello=hello,
                                              manufacturer_anchors=fleet.anchors,
                                              now=datetime.now(UTC))
        body = proto.build_attest(session, factory_signer=device.factory_key,
                                  csr_der=device.csr_der).to_wire()
        t0, c0 = clock(), cpu()
        answer = service.attest(body, source=source).to_wire()
        server, server_cpu = server + clock() - t0, server_cpu + cpu() - c0
        onboarded = proto.accept_attest_response(
            proto.AttestResponse.from_wire(answer), session=session,
            csr_public_key=device.operational_key.public_key, now=datetime.now(UTC))
        body = proto.build_confirm(session, onboarded,
                                   operational_signer=device.operational_key).to_wire()
        t0, c0 = clock(), cpu()
        service.confirm(body, source=source)
        server, server_cpu = server + clock() - t0, server_cpu + cpu() - c0
    return server, server_cpu, clock() - wall_start


def bench_onboarding(config: Config) -> list[Result]:
    """Devices onboarded per second through the service layer, next to the crypto floor."""
    from iotrust.services.onboarding import OnboardingService  # noqa: PLC0415 - may be missing

    n = config.pick(1_000, 200)
    with tempfile.TemporaryDirectory(prefix="iotrust-bench-") as tmp:
        fleet = prepare_fleet(Path(tmp), n * config.rounds + 1)
        domain = fleet.domain
        try:
            service = OnboardingService(domain.db, domain.clock, domain.settings,
                                        domain.secrets)
            _onboard_in_process(service, fleet, fleet.devices[-1:])  # open the CA key once
            ours: list[float] = []
            cpu_only: list[float] = []
            end_to_end: list[float] = []
            floor: list[float] = []
            for r in range(config.rounds):
                batch = fleet.devices[r * n:(r + 1) * n]
                floor.append(onboarding_floor_rate(n))
                server_s, cpu_s, wall_s = _onboard_in_process(service, fleet, batch)
                ours.append(per_second(n, server_s))
                cpu_only.append(per_second(n, cpu_s))
                end_to_end.append(per_second(n, wall_s))
            with domain.db.transaction(readonly=True) as tx:
                states = {s.value: c for s, c in tx.count_devices_by_state().items()}
        finally:
            domain.db.close()
    if states.get("active") != n * config.rounds + 1:
        raise RuntimeError(f"not every device ended ACTIVE: {states}")
    return [Result(
        name="onboarding", rate=best(ours), n=n,
        floor=f"{FLOOR_VERIFICATIONS} ECDSA verify + {FLOOR_SIGNATURES} sign",
        floor_rate=best(floor), target=TARGET_RATIO,
        note=f"server time only; with the device-side work in the same thread "
             f"{best(end_to_end):,.0f} devices/s; server CPU alone {best(cpu_only):,.0f}/s "
             f"(ratio {best(cpu_only) / best(floor):.2f}), the rest is waiting on the "
             f"{COMMITS_PER_ONBOARDING} durable commits",
        details={"rounds_per_s": ours, "floor_rounds_per_s": floor,
                 "end_to_end_rounds_per_s": end_to_end, "server_cpu_rounds_per_s": cpu_only,
                 "commits_per_onboarding": COMMITS_PER_ONBOARDING,
                 "what": "OnboardingService hello+attest+confirm on SQLite, responses "
                         "serialised; device helpers run outside the server clock"})]


def _lean_session(hello: proto.HelloRequest, resp: proto.HelloResponse) -> proto.DeviceSession:
    """The device's session without re-verifying the voucher (the load generator's shortcut)."""
    return proto.DeviceSession(
        serial=hello.serial, device_nonce=hello.device_nonce, session_id=resp.session_id,
        server_nonce=resp.server_nonce, server_id=resp.server_id, expires_at=resp.expires_at,
        voucher_sha256=hashlib.sha256(resp.voucher).digest(), owner="unchecked",
        owner_spki_sha256="0" * 64)


def _lean_onboarded(resp: proto.AttestResponse) -> proto.Onboarded:
    """The credential as received, without the device's chain check (load generator only)."""
    cert = x509.load_der_x509_certificate(resp.certificate)
    return proto.Onboarded(device_id=resp.device_id, certificate=cert,
                           certificate_der=resp.certificate, ca_chain=(), broker=resp.broker,
                           update_root=resp.update_root, policy=resp.policy,
                           confirm_by=resp.confirm_by)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
