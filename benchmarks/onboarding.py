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

import dataclasses
import gc
import hashlib
import importlib.util
import os
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

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
from iotrust.adapters.sql.store import SessionBinding
from iotrust.core import events as ev
from iotrust.core import lifecycle, pki
from iotrust.core import onboarding as proto
from iotrust.core.events import EventDraft, chain_next
from iotrust.core.hardware import HardwareKeyStorage
from iotrust.core.lifecycle import Device
from iotrust.core.onboarding.key_storage import recorded_key_storage
from iotrust.core.onboarding.messages import (
    AttestRequest,
    AttestResponse,
    Broker,
    ConfirmRequest,
    HelloRequest,
)
from iotrust.core.onboarding.server import (
    AttestDecision,
    check_confirm,
    check_hello,
    check_live_session,
    hello_response,
    new_session,
    nonce_sha256,
    precheck_attest,
    session_record_id,
)
from iotrust.core.records import EventHead, OnboardingSession, SessionState, TrustDomain
from iotrust.ports import SystemClock
from iotrust.services import factory as factory_service
from iotrust.services import manufacturers
from iotrust.services.credentials import Issuer
from iotrust.services.domain import require_domain, root_ca
from iotrust.services.eventlog import JSONValue
from iotrust.services.onboarding import (  # the service's own per-request pieces
    ACTOR as ONBOARDING_ACTOR,
)
from iotrust.services.onboarding import (
    ONBOARDING_STARTED,
    OnboardingConfig,
    _claimed_identity,
    _confirm_view,
    _decoded_voucher,
    _der_of_pem,
    _factory_key,
    _HelloFacts,
    _Issuance,
    _issuance_of,
    _judge_attest,
    _over_limit,
    _profile_key_storage,
    _Seen,
    _spki_der,
    _spki_sha256_of_pem,
    _trust_of,
    render_policy,
)
from iotrust.services.updates import update_root_bundle
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


#: The per-device pieces of ``onboarding_core`` (name, what it holds), in the order met.
CORE_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("parse", "HelloRequest/AttestRequest/ConfirmRequest.from_wire, session ids, clock reads"),
    ("config", ("OnboardingConfig.from_settings x3 (prejudge, hello write, attest plan) and "
                "the rate-limit verdict on counts (the counts themselves are SQL)")),
    ("claimed_identity", ("the hello's leaf parsed and its factory identity read "
                          "(_claimed_identity: the look-up key)")),
    ("voucher_decode", "the stored voucher decoded (_decoded_voucher)"),
    ("check_hello", ("check_hello: voucher signature (its signer under the manufacturer root "
                     "is memoised), owner pin, binding, factory chain verified to the "
                     "manufacturer trust (the leaf's signature; its issuing CA under the "
                     "root is memoised)")),
    ("facts_recheck", ("the hello's facts compared with a second read (the write "
                       "transaction's re-check; the read is SQL, the comparison is not)")),
    ("session_open", ("new_session (random id and nonce, hashed), the session record, the "
                      "factory SPKI DER, hello_response")),
    ("check_attest", ("precheck_attest, the factory key loaded from its stored SPKI, "
                      "check_attest (transcript, factory signature, CSR proof of possession)")),
    ("certificate", ("Issuer.build with the domain's issuing-CA key (serial, issue_device "
                     "signs, credential record with PEM), the SPKI re-check, the nonce hash "
                     "for the spend")),
    ("attest_response", "AttestResponse built: certificate DER, CA chain, broker, policy"),
    ("update_root_bundle", ("update_root_bundle(settings) as attest calls it: file I/O (one "
                            "stat here: the bench domain has no update repository)")),
    ("check_confirm", ("the stored certificate PEM parsed (_confirm_view) and check_confirm "
                       "(the confirm transcript's signature)")),
    ("activate", "recorded_key_storage and lifecycle.onboard (EXPECTED -> ACTIVE)"),
    ("events", ("3 event records drafted and hash-chained in memory (core.events.chain_next, "
                "as eventlog.record does): onboarding.started, credential.issued, "
                "device.onboarded")),
    ("encode", "HelloResponse.to_wire + AttestResponse.to_wire (confirm answers no body)"),
)
#: ECDSA operations the service really makes per device (the floor counts 4 + 1: the voucher's
#: own signature is verified at every hello and is not in it).
CORE_VERIFICATIONS = 5


@dataclass(frozen=True, slots=True)
class _CoreInputs:
    """One device's stored facts, read before the clock (what the SQL reads would return)."""

    device: SimulatedDevice
    facts: _HelloFacts
    facts_again: _HelloFacts
    issuance: _Issuance
    profile_storage: HardwareKeyStorage | None


class _Laps:
    """Seconds per component; :meth:`go` restarts the clock, :meth:`lap` charges since then."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys((name for name, _ in CORE_COMPONENTS), 0.0)
        self._t = 0.0

    def go(self) -> None:
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.totals[name] += now - self._t
        self._t = now


def _core_inputs(domain: BenchDomain, devices: list[SimulatedDevice],
                 ) -> tuple[list[_CoreInputs], TrustDomain, str]:
    """Every stored fact the three steps decide on, read once (the hello's facts twice).

    Also the trust domain record and its root CA's PEM (the attest's CA chain).
    """
    out = []
    with domain.db.transaction(readonly=True) as tx:
        stored = require_domain(tx)
        root_pem = root_ca(tx).certificate_pem
        owner_spki = _spki_sha256_of_pem(root_pem)

        def facts(serial: str) -> _HelloFacts:
            record = tx.find_device(MANUFACTURER, serial)
            if record is None:
                raise RuntimeError(f"{serial} is not expected")
            return _HelloFacts(device=record, manufacturer=tx.get_manufacturer(MANUFACTURER),
                               voucher=tx.get_active_voucher(record.id), owner=stored.owner,
                               owner_spki=owner_spki, by_factory_key=record)

        for device in devices:
            first = facts(device.serial)
            if first.device is None:
                raise RuntimeError("unreachable: facts without a device")
            out.append(_CoreInputs(
                device=device, facts=first, facts_again=facts(device.serial),
                issuance=_issuance_of(tx, stored, first.device),
                profile_storage=_profile_key_storage(tx, first.device)))
    return out, stored, root_pem


def _chain(head: EventHead | None, kind: str, device_id: str | None, at: datetime,
           data: dict[str, JSONValue]) -> EventHead:
    """Draft and hash one event after ``head`` as ``eventlog.record`` does (nothing appended)."""
    row = chain_next(head, EventDraft(kind=kind, actor=ONBOARDING_ACTOR, device_id=device_id,
                                      data=data), at)
    return EventHead(seq=row.seq, hash=row.hash)


@dataclass(frozen=True, slots=True)
class _Opened:
    """A hello's outcome as the attest reads it back from storage."""

    session: OnboardingSession
    binding: SessionBinding
    device: Device
    config: OnboardingConfig
    answer: bytes


@dataclass(frozen=True, slots=True)
class _Attested:
    """An attest's outcome as the confirm reads it back from storage."""

    found: tuple[OnboardingSession, SessionBinding, str | None, Device | None]
    credential: str
    answer: bytes


@dataclass(slots=True)
class _CoreRun:
    """The service's per-device work, step by step, with what storage would hold in memory."""

    issuer: Issuer
    domain: BenchDomain
    trust_domain: TrustDomain
    root_pem: str
    laps: _Laps
    head: EventHead | None = None

    def hello(self, item: _CoreInputs, body: bytes, source: str) -> _Opened:
        laps, settings = self.laps, self.trust_domain.settings
        laps.go()
        now = self.domain.clock.now()
        req = HelloRequest.from_wire(body)
        laps.lap("parse")
        config = OnboardingConfig.from_settings(settings)  # the prejudge's read-only tx
        if _over_limit(config, _Seen("hello", source, serial=req.serial), 0, 0) is not None:
            raise RuntimeError("rate limited on zero counts")
        config = OnboardingConfig.from_settings(settings)  # the write tx's
        laps.lap("config")
        _claimed_identity(req)
        laps.lap("claimed_identity")
        facts = item.facts
        trust = _trust_of(facts.manufacturer) if facts.manufacturer is not None else None
        voucher = _decoded_voucher(facts.voucher)
        laps.lap("voucher_decode")
        decision = check_hello(
            req, now=now, device=facts.device, manufacturer=trust, voucher=voucher,
            owner=facts.owner, owner_spki_sha256=facts.owner_spki,
            device_by_factory_key=facts.by_factory_key, open_session_exists=False)
        laps.lap("check_hello")
        if facts != item.facts_again:
            raise RuntimeError("the hello's facts changed between two reads")
        check_live_session(open_session_exists=False)
        laps.lap("facts_recheck")
        device = decision.device
        if device is None:
            raise RuntimeError("unreachable: every bench device is expected")
        new = new_session(os.urandom, now, config.session_ttl_s)
        session = OnboardingSession(
            id=new.record_id, device_id=device.id, serial=req.serial,
            nonce_sha256=new.nonce_sha256, device_nonce=req.device_nonce.hex(),
            expires_at=new.expires_at, state=SessionState.OPEN, source=source,
            created_at=new.created_at)
        binding = SessionBinding(factory_spki=_spki_der(decision.factory_public_key),
                                 voucher_sha256=decision.voucher_sha256.hex(), confirm_by=None,
                                 key_storage=req.key_storage)
        response = hello_response(decision, new, server_id=self.trust_domain.server_id)
        laps.lap("session_open")
        self.head = _chain(self.head, ONBOARDING_STARTED, device.id, self.domain.clock.now(), {
            "session": new.record_id, "serial": req.serial, "source": source,
            "expires_at": new.expires_at.isoformat(),
            "unsafe_admission": device.unsafe_admission})
        laps.lap("events")
        answer = response.to_wire()
        laps.lap("encode")
        return _Opened(session=session, binding=binding, device=device, config=config,
                       answer=answer)

    def attest(self, item: _CoreInputs, opened: _Opened, body: bytes) -> _Attested:
        laps = self.laps
        laps.go()
        now = self.domain.clock.now()
        req = AttestRequest.from_wire(body)
        session_record_id(req.session_id)  # the service's look-up key
        laps.lap("parse")
        config = OnboardingConfig.from_settings(self.trust_domain.settings)
        laps.lap("config")
        session = precheck_attest(req, session=opened.session, now=now)
        outcome = _judge_attest(req, session, opened.binding, now=now,
                                server_id=self.trust_domain.server_id,
                                factory_key=_factory_key(opened.binding.factory_spki))
        if not isinstance(outcome, AttestDecision):
            raise outcome
        laps.lap("check_attest")
        issuance = item.issuance
        confirm_by = now.replace(microsecond=0) + timedelta(seconds=config.confirm_s)
        built = self.issuer.build(issuance.ca, device_id=issuance.device_id,
                                  public_key=outcome.csr_public_key, lifetime=issuance.lifetime,
                                  crl_url=issuance.crl_url, now=now)
        if pki.spki_sha256(built.certificate.public_key()) != outcome.csr_spki_sha256:
            raise RuntimeError("the issuer certified another key than the CSR's")
        nonce_sha256(req.server_nonce)  # the conditional spend's argument
        laps.lap("certificate")
        cred = built.credential
        self.head = _chain(self.head, ev.CREDENTIAL_ISSUED, cred.device_id,
                           self.domain.clock.now(), {
                               "serial": cred.serial_number, "ca": built.ca.id,
                               "not_after": cred.not_after.isoformat(),
                               "spki_sha256": cred.spki_sha256})
        laps.lap("events")
        bundle = update_root_bundle(self.domain.settings)
        laps.lap("update_root_bundle")
        device = opened.device
        response = AttestResponse(
            device_id=device.id, certificate=built.certificate.public_bytes(Encoding.DER),
            ca_chain=(_der_of_pem(built.ca.certificate_pem), _der_of_pem(self.root_pem)),
            broker=Broker(config.broker_host, config.broker_port), update_root=bundle,
            policy=render_policy(device.id), confirm_by=confirm_by)
        laps.lap("attest_response")
        answer = response.to_wire()
        laps.lap("encode")
        found = (dataclasses.replace(session, state=SessionState.ATTESTED,
                                     credential_serial=cred.serial_number),
                 dataclasses.replace(opened.binding, confirm_by=confirm_by),
                 cred.certificate_pem, device)
        return _Attested(found=found, credential=cred.serial_number, answer=answer)

    def confirm(self, item: _CoreInputs, attested: _Attested, body: bytes, source: str) -> None:
        laps = self.laps
        laps.go()
        now = self.domain.clock.now()
        req = ConfirmRequest.from_wire(body)
        session_record_id(req.session_id)  # the service's look-up key
        laps.lap("parse")
        view = _confirm_view(attested.found, req, _Seen("confirm", source), now)
        if view.certificate is None or view.session is None:
            raise RuntimeError("the attested session lost its certificate")
        check_confirm(req, session=view.session, now=now, confirm_by=view.confirm_by,
                      certificate=view.certificate, confirmed_ok=True)
        laps.lap("check_confirm")
        device = attested.found[3]
        if device is None:
            raise RuntimeError("unreachable: the session's device is stored")
        storage = recorded_key_storage(view.key_storage, item.profile_storage)
        moved = dataclasses.replace(lifecycle.onboard(device, now), key_storage=storage)
        laps.lap("activate")
        self.head = _chain(self.head, ev.DEVICE_ONBOARDED, device.id, self.domain.clock.now(), {
            "from": device.state.value, "to": moved.state.value, "session": view.session.id,
            "credential": attested.credential, "source": source,
            "unsafe_admission": device.unsafe_admission, "key_storage": storage.value,
            "key_storage_claimed": view.key_storage})
        laps.lap("events")


def _onboard_core(run: _CoreRun, inputs: list[_CoreInputs],
                  anchors: tuple[x509.Certificate, ...]) -> None:
    """Each device through :class:`_CoreRun`'s steps; the device side off the clock."""
    for index, item in enumerate(inputs):
        device = item.device
        source = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
        hello = proto.build_hello(serial=device.serial, factory_chain=device.factory_chain,
                                  random=os.urandom)
        opened = run.hello(item, hello.to_wire(), source)
        session = proto.accept_hello_response(proto.HelloResponse.from_wire(opened.answer),
                                              hello=hello, manufacturer_anchors=anchors,
                                              now=datetime.now(UTC))
        body = proto.build_attest(session, factory_signer=device.factory_key,
                                  csr_der=device.csr_der).to_wire()
        attested = run.attest(item, opened, body)
        onboarded = proto.accept_attest_response(
            proto.AttestResponse.from_wire(attested.answer), session=session,
            csr_public_key=device.operational_key.public_key, now=datetime.now(UTC))
        body = proto.build_confirm(session, onboarded,
                                   operational_signer=device.operational_key).to_wire()
        run.confirm(item, attested, body, source)


def bench_onboarding_core(config: Config) -> list[Result]:
    """The per-device work of the three steps with no database and no HTTP, vs the floor."""
    n = config.pick(1_000, 200)
    with tempfile.TemporaryDirectory(prefix="iotrust-bench-") as tmp:
        fleet = prepare_fleet(Path(tmp), n * config.rounds + 1)
        domain = fleet.domain
        try:
            inputs, trust_domain, root_pem = _core_inputs(domain, fleet.devices)
            issuer = Issuer(domain.secrets, domain.clock)
            issuer.context(inputs[0].issuance.ca)  # the issuing-CA key, opened once
            run = _CoreRun(issuer=issuer, domain=domain, trust_domain=trust_domain,
                           root_pem=root_pem, laps=_Laps())
            _onboard_core(run, inputs[-1:], fleet.anchors)  # warm the memoised CA parsing
            ours: list[float] = []
            floor: list[float] = []
            rounds: list[dict[str, float]] = []
            for r in range(config.rounds):
                floor.append(onboarding_floor_rate(n))
                run.laps = _Laps()
                gc.collect()
                _onboard_core(run, inputs[r * n:(r + 1) * n], fleet.anchors)
                ours.append(per_second(n, sum(run.laps.totals.values())))
                rounds.append(run.laps.totals)
        finally:
            domain.db.close()
    per_device = {k: round(v / n * 1e6, 1) for k, v in rounds[ours.index(best(ours))].items()}
    top = sorted(per_device.items(), key=lambda kv: -kv[1])[:5]
    ratio = best(ours) / best(floor)
    return [Result(
        name="onboarding_core", rate=best(ours), n=n,
        floor=f"{FLOOR_VERIFICATIONS} ECDSA verify + {FLOOR_SIGNATURES} sign",
        floor_rate=best(floor),
        note=(f"no database, no HTTP: the service's per-device parsing, checks "
              f"({CORE_VERIFICATIONS} verifies: the voucher's is not in the floor), "
              f"certificate signing, responses, event hashing; a ceiling for the "
              f"service's ratio ({ratio:.2f}; issue #3 asks {TARGET_RATIO:.2f}); "
              f"µs/device: " + ", ".join(f"{k} {v:,.0f}" for k, v in top)
              + f" (floor {1e6 / best(floor):,.0f}; all in JSON details)"),
        details={"rounds_per_s": ours, "floor_rounds_per_s": floor,
                 "us_per_device": per_device,
                 "us_per_device_total": round(sum(per_device.values()), 1),
                 "floor_us_per_device": round(1e6 / best(floor), 1),
                 "ecdsa_per_device": {"verify": CORE_VERIFICATIONS, "sign": FLOOR_SIGNATURES},
                 "components": dict(CORE_COMPONENTS),
                 "reference_ratio": TARGET_RATIO,
                 "excluded": ("every SQL read and write (rate-limit counts, the facts, the "
                              "session, the nonce spend, key/credential/event rows, the 3 "
                              "commits), the HTTP edge (body read, routing, error mapping), "
                              "the refusal path; update_root_bundle is file I/O and is "
                              "included (its own line)"),
                 "what": ("OnboardingService's per-device work for hello+attest+confirm "
                          "minus storage, each piece called as the service calls it; stored "
                          "facts read before the clock; the device side off the clock")})]
