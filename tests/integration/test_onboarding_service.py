"""The onboarding service on a real registry (SQLite) with a fixed clock: every refusal path.

Each refusal asserts its exact reason *and* the ``onboarding.refused`` event it left (reason,
serial, source, device id when known). The device side uses the core's device helpers, so the
service is exercised by the same code a real agent runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy import update
from tests.integration.fleet import FACTORY_PASSPHRASE, Fleet, FleetDevice, Maker, build_fleet

from iotrust.adapters.keys.file import EncryptedFileSigner
from iotrust.adapters.sql import schema
from iotrust.adapters.sql.store import Database
from iotrust.core import events as ev
from iotrust.core import pki
from iotrust.core.lifecycle import CredentialState, DeviceState, RetirementReason
from iotrust.core.onboarding import (
    AttestRequest,
    AttestResponse,
    ConfirmRequest,
    DeviceSession,
    HelloRequest,
    HelloResponse,
    Onboarded,
    accept_attest_response,
    accept_hello_response,
    build_attest,
    build_confirm,
    build_hello,
)
from iotrust.core.onboarding import reasons as r
from iotrust.core.onboarding.transcript import sha256
from iotrust.core.records import EventRow, SessionState
from iotrust.errors import InputError, TrustError
from iotrust.ports import FixedClock
from iotrust.services import devices as device_svc
from iotrust.services import factory as factory_svc
from iotrust.services import manufacturers as maker_svc
from iotrust.services.onboarding import ONBOARDING_UNCONFIRMED, OnboardingService

SOURCE = "198.51.100.7"


class SoftKey:
    """An in-memory operational key (a Signer)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self.private_key = key or ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))


def csr_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


# --- fixtures --------------------------------------------------------------------------------

MAKERS = (
    Maker("widgetco", count=40),
    Maker("gadgetco", count=2, prefix="GA"),
    Maker("wrongco", count=2, prefix="WR", vendor_id="0x5555", product_id="hub-2"),
    Maker("unsafeco", count=3, prefix="UN", vouch=False, unsafe=True),
    Maker("safeco", count=2, prefix="SA", vouch=False),
    Maker("rogueco", count=1, prefix="RO", register=False, vouch=False),
)


@pytest.fixture(scope="module")
def clock() -> FixedClock:
    return FixedClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, clock: FixedClock) -> Fleet:
    return build_fleet(tmp_path_factory.mktemp("onb-svc"), makers=MAKERS, clock=clock)


# db, svc and fresh: tests/integration/conftest.py


# --- device side -----------------------------------------------------------------------------

def hello(svc: OnboardingService, dev: FleetDevice, clock: FixedClock, *,
          source: str = SOURCE) -> tuple[HelloRequest, HelloResponse, DeviceSession]:
    req = build_hello(serial=dev.serial, factory_chain=dev.chain, random=os.urandom)
    resp = HelloResponse.from_wire(svc.hello(req.to_wire(), source=source).to_wire())
    session = accept_hello_response(resp, hello=req, manufacturer_anchors=(dev.manufacturer_root,),
                                    now=clock.now())
    return req, resp, session


def attest(svc: OnboardingService, dev: FleetDevice, session: DeviceSession, clock: FixedClock,
           key: SoftKey | None = None) -> tuple[SoftKey, Onboarded]:
    key = key or SoftKey()
    req = build_attest(session, factory_signer=dev.factory_key, csr_der=csr_der(key.private_key))
    resp = AttestResponse.from_wire(svc.attest(req.to_wire(), source=SOURCE).to_wire())
    onboarded = accept_attest_response(resp, session=session, csr_public_key=key.public_key,
                                       now=clock.now())
    return key, onboarded


def onboard(svc: OnboardingService, dev: FleetDevice, clock: FixedClock) -> Onboarded:
    _, _, session = hello(svc, dev, clock)
    key, onboarded = attest(svc, dev, session, clock)
    svc.confirm(build_confirm(session, onboarded, operational_signer=key).to_wire(),
                source=SOURCE)
    return onboarded


def head(db: Database) -> int:
    with db.transaction(readonly=True) as tx:
        h = tx.event_head()
    return h.seq if h is not None else 0


def events_since(db: Database, seq: int, kind: str | None = None) -> list[EventRow]:
    with db.transaction(readonly=True) as tx:
        return list(tx.iter_events(after_seq=seq, kind=kind))


def refused(db: Database, reason: str, fn: Callable[..., object], *args: object,
            serial: str | None = None, device_id: str | None = None, step: str | None = None,
            source: str = SOURCE, **kwargs: object) -> EventRow:
    """Run ``fn``: it must raise with ``reason`` and log exactly one matching refusal event."""
    mark = head(db)
    with pytest.raises((TrustError, InputError)) as info:
        fn(*args, source=source, **kwargs)
    assert info.value.reason == reason, info.value.diagnostics()
    refusals = events_since(db, mark, ev.ONBOARDING_REFUSED)
    assert len(refusals) == 1, refusals
    event = refusals[0]
    assert event.reason == reason
    assert event.device_id == device_id
    data = json.loads(event.data)
    assert data["serial"] == serial
    assert data["source"] == source
    if step is not None:
        assert data["step"] == step
    return event


def device_state(db: Database, device_id: str) -> DeviceState:
    with db.transaction(readonly=True) as tx:
        return tx.get_device(device_id).state


def device_id_of(db: Database, dev: FleetDevice) -> str:
    with db.transaction(readonly=True) as tx:
        found = tx.find_device(dev.manufacturer, dev.serial)
    assert found is not None
    return found.id


# --- happy path ------------------------------------------------------------------------------

def test_genuine_device_onboards_and_confirms(svc: OnboardingService, db: Database,
                                              clock: FixedClock,
                                              fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    device_id = device_id_of(db, dev)
    mark = head(db)
    _, resp, session = hello(svc, dev, clock)
    assert resp.expires_at == clock.now() + timedelta(seconds=60)
    key, onboarded = attest(svc, dev, session, clock)
    assert onboarded.device_id == device_id
    assert onboarded.broker.host == "127.0.0.1"
    assert onboarded.broker.port == 8883
    assert onboarded.confirm_by == clock.now() + timedelta(minutes=5)
    assert onboarded.policy == (
        {"action": "publish", "topic": f"devices/{device_id}/telemetry"},
        {"action": "subscribe", "topic": f"devices/{device_id}/commands/#"})
    assert onboarded.update_root == b""
    assert len(onboarded.ca_chain) == 2
    assert device_state(db, device_id) is DeviceState.EXPECTED  # not before confirm
    svc.confirm(build_confirm(session, onboarded, operational_signer=key).to_wire(),
                source=SOURCE)
    assert device_state(db, device_id) is DeviceState.ACTIVE
    with db.transaction(readonly=True) as tx:
        creds = tx.list_credentials(device_id=device_id)
    assert [c.state for c in creds] == [CredentialState.ACTIVE]
    assert creds[0].spki_sha256 == pki.spki_sha256(key.public_key)
    assert creds[0].not_after - creds[0].not_before == timedelta(days=30)
    kinds = [e.kind for e in events_since(db, mark)]
    assert kinds == ["onboarding.started", ev.CREDENTIAL_ISSUED, ev.DEVICE_ONBOARDED]
    # a confirmed session cannot be confirmed again, and the device cannot onboard twice
    refused(db, r.NONCE_REPLAYED, svc.confirm,
            build_confirm(session, onboarded, operational_signer=key).to_wire(),
            serial=dev.serial, device_id=device_id, step="confirm")
    refused(db, r.CLONE_SUSPECTED, hello, svc, dev, clock, serial=dev.serial,
            device_id=device_id, step="hello")


def test_malformed_hello_is_recorded(svc: OnboardingService, db: Database) -> None:
    refused(db, r.MALFORMED_REQUEST, svc.hello, b'{"version": 1}', serial=None)
    refused(db, r.MALFORMED_REQUEST, svc.attest, b"[]", serial=None)


# --- hello refusals --------------------------------------------------------------------------

def test_unknown_devices(svc: OnboardingService, db: Database, clock: FixedClock,
                         fresh: Callable[[str], FleetDevice]) -> None:
    rogue = fresh("rogueco")  # its manufacturer is not registered at all
    refused(db, r.UNKNOWN_DEVICE, hello, svc, rogue, clock, serial=rogue.serial)
    unvouched = fresh("safeco")  # registered manufacturer, but no voucher imported
    refused(db, r.UNKNOWN_DEVICE, hello, svc, unvouched, clock, serial=unvouched.serial)


def test_revoked_manufacturer(svc: OnboardingService, db: Database, clock: FixedClock,
                              fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("gadgetco")
    maker_svc.revoke_manufacturer(db, clock, "gadgetco", actor="tests@svc")
    refused(db, r.MANUFACTURER_REVOKED, hello, svc, dev, clock, serial=dev.serial,
            device_id=device_id_of(db, dev))


def test_tampered_voucher_is_invalid(svc: OnboardingService, db: Database, clock: FixedClock,
                                     fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    device_id = device_id_of(db, dev)
    doc = json.loads(dev.voucher)
    sig = doc["signature"]
    doc["signature"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    with db.transaction() as tx:
        tx._conn.execute(update(schema.vouchers)
                         .where(schema.vouchers.c.device_id == device_id)
                         .values(raw=json.dumps(doc).encode()))
    refused(db, r.VOUCHER_INVALID, hello, svc, dev, clock, serial=dev.serial,
            device_id=device_id)


def test_another_devices_serial_with_own_chain(svc: OnboardingService, db: Database,
                                               clock: FixedClock,
                                               fresh: Callable[[str], FleetDevice]) -> None:
    victim, impostor = fresh("widgetco"), fresh("widgetco")
    req = build_hello(serial=victim.serial, factory_chain=impostor.chain, random=os.urandom)
    refused(db, r.VOUCHER_MISMATCH, svc.hello, req.to_wire(),
            serial=victim.serial, device_id=device_id_of(db, victim))


def test_chain_from_an_unregistered_ca_naming_a_registered_maker(
        svc: OnboardingService, db: Database, clock: FixedClock, tmp_path: Path,
        fresh: Callable[[str], FleetDevice]) -> None:
    """A rogue CA certifies a genuine device's (public) factory key under the maker's name."""
    dev = fresh("widgetco")
    rogue = factory_svc.init_factory(tmp_path / "rogue", clock, name="widgetco",
                                     vendor_id="0x1234", product_id="sensor-1",
                                     passphrase=FACTORY_PASSPHRASE)
    issuing_key = EncryptedFileSigner.load(rogue.path / "issuing.key.pem", FACTORY_PASSPHRASE)
    forged = pki.issue_factory_certificate(
        issuing_key, rogue.issuing, serial=dev.serial, manufacturer="widgetco",
        vendor_id="0x1234", product_id="sensor-1", public_key=dev.factory_key.public_key,
        serial_number=pki.new_serial_number(os.urandom(20)), not_before=clock.now(),
        lifetime=timedelta(days=365))
    chain = (forged.public_bytes(Encoding.DER), rogue.issuing.public_bytes(Encoding.DER))
    req = build_hello(serial=dev.serial, factory_chain=chain, random=os.urandom)
    refused(db, r.CHAIN_INVALID, svc.hello, req.to_wire(), serial=dev.serial,
            device_id=device_id_of(db, dev))


def test_wrong_vendor_product(svc: OnboardingService, db: Database, clock: FixedClock,
                              fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("wrongco")
    with db.transaction() as tx:
        maker = tx.get_manufacturer("wrongco")
        tx.update_manufacturer(dataclasses.replace(maker, allowed=("0x5555:other",)))
    refused(db, r.WRONG_VENDOR_PRODUCT, hello, svc, dev, clock, serial=dev.serial,
            device_id=device_id_of(db, dev))


def test_second_live_session_is_a_clone(svc: OnboardingService, db: Database, clock: FixedClock,
                                        fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    hello(svc, dev, clock)
    refused(db, r.CLONE_SUSPECTED, hello, svc, dev, clock, serial=dev.serial,
            device_id=device_id_of(db, dev))


def test_retired_device_is_a_zombie(svc: OnboardingService, db: Database, clock: FixedClock,
                                    fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    device_id = device_id_of(db, dev)
    device_svc.retire(db, clock, device_id, RetirementReason.DECOMMISSIONED, actor="tests@svc")
    mark = head(db)
    refused(db, r.RETIRED, hello, svc, dev, clock, serial=dev.serial, device_id=device_id)
    zombies = events_since(db, mark, ev.ZOMBIE_CONTACT)
    assert [(z.device_id, z.reason) for z in zombies] == [(device_id, r.RETIRED)]


def test_rate_limit_per_serial(svc: OnboardingService, db: Database, clock: FixedClock,
                               fleet: Fleet, fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    fleet.update_domain_settings(onboarding_rate_per_serial=3)
    try:
        hello(svc, dev, clock)  # 1: accepted
        for _ in range(2):  # 2, 3: refused as a second live session, but counted
            refused(db, r.CLONE_SUSPECTED, hello, svc, dev, clock, serial=dev.serial,
                    device_id=device_id_of(db, dev))
        refused(db, r.RATE_LIMITED, hello, svc, dev, clock, serial=dev.serial,
                source="192.0.2.200")  # another source: the serial's own limit
        clock.advance(61)  # the window slides (and the first session expired): try again
        hello(svc, dev, clock)
    finally:
        fleet.update_domain_settings(onboarding_rate_per_serial=5)


def test_rate_limit_per_source(svc: OnboardingService, db: Database, clock: FixedClock,
                               fleet: Fleet) -> None:
    source = "203.0.113.99"
    fleet.update_domain_settings(onboarding_rate_per_source=3)
    try:
        for n in range(3):
            req = build_hello(serial=f"NOPE{n}", factory_chain=fleet.device(
                fleet.serials("widgetco")[0]).chain, random=os.urandom)
            with pytest.raises(TrustError):
                svc.hello(req.to_wire(), source=source)
        req = build_hello(serial="NOPE9", factory_chain=fleet.device(
            fleet.serials("widgetco")[0]).chain, random=os.urandom)
        refused(db, r.RATE_LIMITED, svc.hello, req.to_wire(), source=source, serial="NOPE9")
        other = build_hello(serial="NOPE9", factory_chain=fleet.device(
            fleet.serials("widgetco")[0]).chain, random=os.urandom)
        refused(db, r.UNKNOWN_DEVICE, svc.hello, other.to_wire(), source="203.0.113.100",
                serial="NOPE9")
    finally:
        fleet.update_domain_settings(onboarding_rate_per_source=300)


def test_unsafe_manufacturer_trust_admits_only_when_switched_on(
        svc: OnboardingService, db: Database, clock: FixedClock, fleet: Fleet,
        fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("unsafeco")
    mark = head(db)
    req = build_hello(serial=dev.serial, factory_chain=dev.chain, random=os.urandom)
    resp = svc.hello(req.to_wire(), source=SOURCE)
    assert resp.voucher == b""
    admitted = events_since(db, mark, ev.DEVICE_EXPECTED)
    assert [e.reason for e in admitted] == ["unsafe_manufacturer_trust"]
    device_id = device_id_of(db, dev)
    assert admitted[0].device_id == device_id
    with db.transaction(readonly=True) as tx:
        assert tx.get_device(device_id).unsafe_admission
    # the rest of the protocol works with an empty voucher (hash of b"")
    owner_spki = pki.spki_sha256(pki.load_certificate(fleet.root_pem.read_bytes()).public_key())
    session = DeviceSession(serial=dev.serial, device_nonce=req.device_nonce,
                            session_id=resp.session_id, server_nonce=resp.server_nonce,
                            server_id=resp.server_id, expires_at=resp.expires_at,
                            voucher_sha256=sha256(b""), owner="acme-ops",
                            owner_spki_sha256=owner_spki)
    key, onboarded = attest(svc, dev, session, clock)
    svc.confirm(build_confirm(session, onboarded, operational_signer=key).to_wire(),
                source=SOURCE)
    assert device_state(db, device_id) is DeviceState.ACTIVE
    # switched off: the next genuine but unvouched device is unknown
    with db.transaction() as tx:
        maker = tx.get_manufacturer("unsafeco")
        tx.update_manufacturer(dataclasses.replace(maker, unsafe_manufacturer_trust=False))
    other = fresh("unsafeco")
    refused(db, r.UNKNOWN_DEVICE, hello, svc, other, clock, serial=other.serial)


# --- attest refusals -------------------------------------------------------------------------

def _attest_req(dev: FleetDevice, session: DeviceSession, key: SoftKey | None = None,
                **changes: Any) -> AttestRequest:
    req = build_attest(session, factory_signer=dev.factory_key,
                       csr_der=csr_der((key or SoftKey()).private_key))
    return dataclasses.replace(req, **changes) if changes else req


def test_nonce_unknown_and_foreign(svc: OnboardingService, db: Database, clock: FixedClock,
                                   fresh: Callable[[str], FleetDevice]) -> None:
    dev, other = fresh("widgetco"), fresh("widgetco")
    _, _, session = hello(svc, dev, clock)
    bogus = _attest_req(dev, session, session_id=os.urandom(16))
    refused(db, r.NONCE_UNKNOWN, svc.attest, bogus.to_wire(), serial=dev.serial)
    wrong_nonce = _attest_req(dev, session, server_nonce=os.urandom(32))
    refused(db, r.NONCE_UNKNOWN, svc.attest, wrong_nonce.to_wire(),
            serial=dev.serial, device_id=device_id_of(db, dev))
    # the session of `dev` presented under another device's serial
    foreign = _attest_req(dev, session, serial=other.serial)
    refused(db, r.NONCE_UNKNOWN, svc.attest, foreign.to_wire(),
            serial=other.serial)
    attest(svc, dev, session, clock)  # none of that spent the nonce


def test_nonce_expired(svc: OnboardingService, db: Database, clock: FixedClock,
                       fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    _, _, session = hello(svc, dev, clock)
    clock.advance(60)
    refused(db, r.NONCE_EXPIRED, svc.attest, _attest_req(dev, session).to_wire(),
            serial=dev.serial, device_id=device_id_of(db, dev))
    hello(svc, dev, clock)  # an expired session is not live: the device may start again


def test_nonce_replayed(svc: OnboardingService, db: Database, clock: FixedClock,
                        fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    _, _, session = hello(svc, dev, clock)
    req = _attest_req(dev, session)
    svc.attest(req.to_wire(), source=SOURCE)
    refused(db, r.NONCE_REPLAYED, svc.attest, req.to_wire(), serial=dev.serial,
            device_id=device_id_of(db, dev))


def test_bad_transcript_signature_burns_the_nonce(
        svc: OnboardingService, db: Database, clock: FixedClock,
        fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    device_id = device_id_of(db, dev)
    _, _, session = hello(svc, dev, clock)
    good = _attest_req(dev, session)
    forged = dataclasses.replace(good, signature=SoftKey().sign(b"not the transcript"))
    refused(db, r.SIGNATURE_INVALID, svc.attest, forged.to_wire(),
            serial=dev.serial, device_id=device_id)
    with db.transaction(readonly=True) as tx:
        assert tx.get_session(session.session_id.hex()).state is SessionState.REFUSED
        assert tx.list_credentials(device_id=device_id) == []
    refused(db, r.NONCE_REPLAYED, svc.attest, good.to_wire(), serial=dev.serial,
            device_id=device_id)
    _, _, again = hello(svc, dev, clock)  # a refused session is not live
    attest(svc, dev, again, clock)


def _signed_attest(dev: FleetDevice, session: DeviceSession, csr: bytes) -> AttestRequest:
    return build_attest(session, factory_signer=dev.factory_key, csr_der=csr)


def test_csr_with_bad_signature(svc: OnboardingService, db: Database, clock: FixedClock,
                                fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    _, _, session = hello(svc, dev, clock)
    csr = bytearray(csr_der(SoftKey().private_key))
    csr[-3] ^= 0x01  # inside the signature value
    refused(db, r.CSR_INVALID, svc.attest, _signed_attest(dev, session, bytes(csr)).to_wire(),
            serial=dev.serial, device_id=device_id_of(db, dev))


def test_csr_for_the_factory_key(svc: OnboardingService, db: Database, clock: FixedClock,
                                 fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    _, _, session = hello(svc, dev, clock)
    csr = csr_der(dev.factory_key.private_key)
    refused(db, r.CSR_INVALID, svc.attest, _signed_attest(dev, session, csr).to_wire(),
            serial=dev.serial, device_id=device_id_of(db, dev))


def test_csr_key_seen_before_is_a_clone(svc: OnboardingService, db: Database, clock: FixedClock,
                                        fresh: Callable[[str], FleetDevice]) -> None:
    first, second = fresh("widgetco"), fresh("widgetco")
    _, _, s1 = hello(svc, first, clock)
    shared, _ = attest(svc, first, s1, clock)
    _, _, s2 = hello(svc, second, clock)
    refused(db, r.CLONE_SUSPECTED, svc.attest, _attest_req(second, s2, key=shared).to_wire(),
            serial=second.serial, device_id=device_id_of(db, second))


# --- confirm and the deadline ----------------------------------------------------------------

def test_session_context_reads_session_certificate_and_device_at_once(
        svc: OnboardingService, db: Database, clock: FixedClock,
        fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    device_id = device_id_of(db, dev)
    _, _, session = hello(svc, dev, clock)
    sid = session.session_id.hex()
    with db.transaction(readonly=True) as tx:
        assert tx.get_session_context("0" * 32) is None
        found = tx.get_session_context(sid)
        assert found is not None
        opened, binding, pem, device = found
        assert (opened, binding) == tx.get_session_and_binding(sid)
        assert pem is None  # nothing issued yet
        assert device == tx.get_device(device_id)
    _, onboarded = attest(svc, dev, session, clock)
    with db.transaction(readonly=True) as tx:
        found = tx.get_session_context(sid)
        assert found is not None
        attested, binding, pem, device = found
        assert (attested, binding) == tx.get_session_and_binding(sid)
        assert attested.credential_serial is not None
        assert pem == tx.get_credential(attested.credential_serial).certificate_pem
        assert pem is not None
        assert pki.load_certificate(pem.encode()) == onboarded.certificate
        assert device == tx.get_device(device_id)


def test_confirm_with_a_bad_signature_revokes(svc: OnboardingService, db: Database,
                                              clock: FixedClock, fleet: Fleet,
                                              fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    device_id = device_id_of(db, dev)
    _, _, session = hello(svc, dev, clock)
    key, onboarded = attest(svc, dev, session, clock)
    wrong = build_confirm(session, onboarded, operational_signer=key)
    wrong = dataclasses.replace(wrong, signature=SoftKey().sign(b"x"))
    refused(db, r.SIGNATURE_INVALID, svc.confirm, wrong.to_wire(),
            serial=dev.serial, device_id=device_id)
    with db.transaction(readonly=True) as tx:
        assert [c.state for c in tx.list_credentials(device_id=device_id)] == [
            CredentialState.REVOKED]
    assert device_state(db, device_id) is DeviceState.EXPECTED
    good = build_confirm(session, onboarded, operational_signer=key)
    refused(db, r.NONCE_UNKNOWN, svc.confirm, good.to_wire(),
            serial=dev.serial, device_id=device_id)


def test_confirm_for_another_device_id(svc: OnboardingService, db: Database, clock: FixedClock,
                                       fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    _, _, session = hello(svc, dev, clock)
    key, onboarded = attest(svc, dev, session, clock)
    req = build_confirm(session, onboarded, operational_signer=key)
    other = device_id_of(db, fresh("widgetco"))
    refused(db, r.NONCE_UNKNOWN, svc.confirm,
            ConfirmRequest(session_id=req.session_id, device_id=other,
                           server_nonce=req.server_nonce, signature=req.signature).to_wire(),
            serial=None)


def test_unconfirmed_credential_is_revoked_and_device_stays_expected(
        svc: OnboardingService, db: Database, clock: FixedClock, fleet: Fleet,
        fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    device_id = device_id_of(db, dev)
    _, _, session = hello(svc, dev, clock)
    key, onboarded = attest(svc, dev, session, clock)
    refused(db, r.CLONE_SUSPECTED, hello, svc, dev, clock, serial=dev.serial,
            device_id=device_id)  # attested before its deadline: still live
    clock.advance(301)
    mark = head(db)
    assert svc.expire_unconfirmed() >= 1  # this one and those other tests left unconfirmed
    assert svc.expire_unconfirmed() == 0
    kinds = [e.kind for e in events_since(db, mark) if e.device_id in (device_id, None)]
    assert kinds == [ev.CREDENTIAL_REVOKED, ONBOARDING_UNCONFIRMED, ev.CRL_PUBLISHED]
    with db.transaction(readonly=True) as tx:
        (cred,) = tx.list_credentials(device_id=device_id)
        assert tx.get_session(session.session_id.hex()).state is SessionState.EXPIRED
    assert cred.state is CredentialState.REVOKED
    assert device_state(db, device_id) is DeviceState.EXPECTED
    crl = pki.load_crl((fleet.settings.crl_dir / "all.crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(cred.serial_number, 16)) is not None
    refused(db, r.NONCE_EXPIRED, svc.confirm,
            build_confirm(session, onboarded, operational_signer=key).to_wire(),
            serial=dev.serial, device_id=device_id)
    onboard(svc, dev, clock)  # it may start over, with a new key
    assert device_state(db, device_id) is DeviceState.ACTIVE


def test_retired_between_attest_and_confirm(svc: OnboardingService, db: Database,
                                            clock: FixedClock,
                                            fresh: Callable[[str], FleetDevice]) -> None:
    dev = fresh("widgetco")
    device_id = device_id_of(db, dev)
    _, _, session = hello(svc, dev, clock)
    key, onboarded = attest(svc, dev, session, clock)
    device_svc.retire(db, clock, device_id, RetirementReason.LOST, actor="tests@svc")
    mark = head(db)
    refused(db, r.RETIRED, svc.confirm,
            build_confirm(session, onboarded, operational_signer=key).to_wire(),
            serial=dev.serial, device_id=device_id)
    assert [e.kind for e in events_since(db, mark, ev.ZOMBIE_CONTACT)] == [ev.ZOMBIE_CONTACT]
