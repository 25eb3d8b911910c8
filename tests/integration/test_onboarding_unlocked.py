"""Onboarding decides before its write lock: what changes in between is caught under the lock.

Each step reads in a read-only transaction and does its CPU work (signatures, the certificate)
before its write transaction (``docs/adr/0006``). These tests change the registry exactly in
that window (a hook runs right before the step's first write transaction) and check that the
step gives the answer it would have given had the change come first: the same reason, the same
``onboarding.refused`` event, nothing half-written, and a certificate built on stale facts is
never recorded or returned.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from tests.integration.fleet import PASSPHRASE, Fleet, FleetDevice, Maker, build_fleet
from tests.integration.test_onboarding_service import SoftKey, csr_der

from iotrust.adapters.sql.store import Database, Tx
from iotrust.core import events as ev
from iotrust.core import pki
from iotrust.core.lifecycle import CredentialState, DeviceState, RetirementReason
from iotrust.core.onboarding import (
    AttestRequest,
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
from iotrust.core.onboarding import reasons as r
from iotrust.core.records import CertificateAuthority, SessionState
from iotrust.errors import ConflictError, InputError, NotFoundError, TrustError
from iotrust.ports import FixedClock
from iotrust.services import devices as device_svc
from iotrust.services import manufacturers as maker_svc
from iotrust.services import onboarding as onboarding_svc
from iotrust.services import rollover
from iotrust.services.credentials import Issuer
from iotrust.services.domain import KeyBackend, active_issuing_ca
from iotrust.services.onboarding import OnboardingService

SOURCE = "203.0.113.9"
ACTOR = "tests@unlocked"

Fresh = Callable[..., FleetDevice]  # fresh(maker="widgetco")
BeforeWrite = Callable[[Callable[[], object]], None]
Started = Callable[[], tuple[FleetDevice, str, DeviceSession]]  # device, its id, its session


@pytest.fixture(scope="module")
def clock() -> FixedClock:
    return FixedClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, clock: FixedClock) -> Fleet:
    return build_fleet(tmp_path_factory.mktemp("onb-unlocked"),
                       makers=(Maker("widgetco", count=24), Maker("gadgetco", count=2,
                                                                   prefix="GA")),
                       clock=clock)


# db, svc and fresh: tests/integration/conftest.py


@pytest.fixture
def before_write(db: Database, monkeypatch: pytest.MonkeyPatch) -> BeforeWrite:
    """Run a change once, right before the next write transaction the service opens."""
    original = db.transaction

    def arm(change: Callable[[], object]) -> None:
        armed = [change]

        def transaction(*, readonly: bool = False) -> AbstractContextManager[Tx]:
            if not readonly and armed:
                armed.pop()()
            return original(readonly=readonly)

        monkeypatch.setattr(db, "transaction", transaction)

    return arm


@pytest.fixture
def started(svc: OnboardingService, db: Database, clock: FixedClock, fresh: Fresh) -> Started:
    """A fresh device, its registry id and the session its hello opened."""

    def start() -> tuple[FleetDevice, str, DeviceSession]:
        dev = fresh()
        return dev, device_id_of(db, dev), say_hello(svc, dev, clock)

    return start


# --- helpers ---------------------------------------------------------------------------------

def device_id_of(db: Database, dev: FleetDevice) -> str:
    with db.transaction(readonly=True) as tx:
        found = tx.find_device(dev.manufacturer, dev.serial)
    assert found is not None
    return found.id


def head(db: Database) -> int:
    with db.transaction(readonly=True) as tx:
        h = tx.event_head()
    return h.seq if h is not None else 0


def refused(db: Database, reason: str, fn: Callable[..., object], *args: Any,
            device_id: str | None, step: str) -> dict[str, Any]:
    """``fn`` raises ``reason`` and leaves exactly one matching ``onboarding.refused`` event."""
    mark = head(db)
    with pytest.raises((TrustError, InputError)) as info:
        fn(*args, source=SOURCE)
    assert info.value.reason == reason, info.value.diagnostics()
    with db.transaction(readonly=True) as tx:
        events = list(tx.iter_events(after_seq=mark, kind=ev.ONBOARDING_REFUSED))
    assert [(e.reason, e.device_id) for e in events] == [(reason, device_id)]
    data: dict[str, Any] = json.loads(events[0].data)
    assert data["step"] == step
    assert data["source"] == SOURCE
    return data


def say_hello(svc: OnboardingService, dev: FleetDevice, clock: FixedClock, *,
              source: str = SOURCE) -> DeviceSession:
    req = build_hello(serial=dev.serial, factory_chain=dev.chain, random=os.urandom)
    resp = HelloResponse.from_wire(svc.hello(req.to_wire(), source=source).to_wire())
    return accept_hello_response(resp, hello=req, manufacturer_anchors=(dev.manufacturer_root,),
                                 now=clock.now())


def attest_request(dev: FleetDevice, session: DeviceSession, key: SoftKey) -> AttestRequest:
    return build_attest(session, factory_signer=dev.factory_key, csr_der=csr_der(key.private_key))


def attest_wire(dev: FleetDevice, session: DeviceSession, key: SoftKey) -> bytes:
    return attest_request(dev, session, key).to_wire()


def forged(request: AttestRequest) -> AttestRequest:
    """``request`` with a signature over something else."""
    return dataclasses.replace(request, signature=SoftKey().sign(b"not the transcript"))


def accept(svc: OnboardingService, session: DeviceSession, key: SoftKey, body: bytes,
           clock: FixedClock) -> Onboarded:
    resp = AttestResponse.from_wire(svc.attest(body, source=SOURCE).to_wire())
    return accept_attest_response(resp, session=session, csr_public_key=key.public_key,
                                  now=clock.now())


def credentials_of(db: Database, device_id: str) -> list[Any]:
    with db.transaction(readonly=True) as tx:
        return tx.list_credentials(device_id=device_id)


def session_state(db: Database, session: DeviceSession) -> SessionState:
    with db.transaction(readonly=True) as tx:
        return tx.get_session(session.session_id.hex()).state


def active_ca(db: Database) -> CertificateAuthority:
    with db.transaction(readonly=True) as tx:
        return active_issuing_ca(tx)


# --- hello -----------------------------------------------------------------------------------

def test_hello_manufacturer_revoked_meanwhile(
        svc: OnboardingService, db: Database, clock: FixedClock,
        fresh: Fresh, before_write: BeforeWrite) -> None:
    dev = fresh("gadgetco")
    before_write(lambda: maker_svc.revoke_manufacturer(db, clock, "gadgetco", actor=ACTOR))
    refused(db, r.MANUFACTURER_REVOKED, say_hello, svc, dev, clock,
            device_id=device_id_of(db, dev), step="hello")


def test_hello_retired_meanwhile_is_a_zombie(
        svc: OnboardingService, db: Database, clock: FixedClock,
        fresh: Fresh, before_write: BeforeWrite) -> None:
    dev = fresh()
    device_id = device_id_of(db, dev)
    before_write(lambda: device_svc.retire(db, clock, device_id,
                                           RetirementReason.DECOMMISSIONED, actor=ACTOR))
    mark = head(db)
    refused(db, r.RETIRED, say_hello, svc, dev, clock, device_id=device_id, step="hello")
    with db.transaction(readonly=True) as tx:
        zombies = list(tx.iter_events(after_seq=mark, kind=ev.ZOMBIE_CONTACT))
    assert [z.device_id for z in zombies] == [device_id]


def test_hello_second_session_opened_meanwhile_is_a_clone(
        svc: OnboardingService, db: Database, clock: FixedClock,
        fresh: Fresh, before_write: BeforeWrite) -> None:
    dev = fresh()
    device_id = device_id_of(db, dev)
    before_write(lambda: say_hello(svc, dev, clock))
    data = refused(db, r.CLONE_SUSPECTED, say_hello, svc, dev, clock, device_id=device_id,
                   step="hello")
    assert "live onboarding session" in data["detail"]


def test_a_rate_limited_hello_is_not_decided(
        fleet: Fleet, db: Database, clock: FixedClock, fresh: Fresh,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusing a flood stays cheap: no chain or voucher signature is checked for it."""
    fleet.update_domain_settings(onboarding_rate_per_serial=1)
    try:
        svc = OnboardingService(db, clock, fleet.settings, fleet.secrets)
        dev = fresh()
        say_hello(svc, dev, clock)
        calls: list[object] = []
        real = onboarding_svc.check_hello

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return real(*args, **kwargs)

        monkeypatch.setattr(onboarding_svc, "check_hello", counting)
        refused(db, r.RATE_LIMITED, say_hello, svc, dev, clock,
                device_id=None, step="hello")
        assert calls == []
    finally:
        fleet.update_domain_settings(onboarding_rate_per_serial=5)


def test_a_hello_limited_as_read_but_admitted_under_the_lock_is_decided_there(
        fleet: Fleet, db: Database, clock: FixedClock, fresh: Fresh,
        before_write: Callable[[Callable[[], object]], None]) -> None:
    fleet.update_domain_settings(onboarding_rate_per_source=1)
    try:
        svc = OnboardingService(db, clock, fleet.settings, fleet.secrets)
        first, second = fresh(), fresh()
        say_hello(svc, first, clock, source="192.0.2.77")

        def forget_attempts() -> None:
            with db.transaction() as tx:
                tx.prune_onboarding_attempts(clock.now() + timedelta(days=1))

        before_write(forget_attempts)
        session = say_hello(svc, second, clock, source="192.0.2.77")
        assert session.serial == second.serial
    finally:
        fleet.update_domain_settings(onboarding_rate_per_source=300)


# --- attest ----------------------------------------------------------------------------------

def test_attest_retired_meanwhile_issues_nothing_and_burns_the_nonce(
        svc: OnboardingService, db: Database, clock: FixedClock,
        started: Started, before_write: BeforeWrite) -> None:
    dev, device_id, session = started()
    key = SoftKey()
    before_write(lambda: device_svc.retire(db, clock, device_id, RetirementReason.LOST,
                                           actor=ACTOR))
    refused(db, r.RETIRED, svc.attest, attest_wire(dev, session, key), device_id=device_id,
            step="attest")
    assert credentials_of(db, device_id) == []
    assert session_state(db, session) is SessionState.REFUSED
    with db.transaction(readonly=True) as tx:  # the certificate built for it was dropped
        assert not tx.key_seen(pki.spki_sha256(key.public_key))


def test_attest_nonce_spent_meanwhile_returns_nothing(
        svc: OnboardingService, db: Database, clock: FixedClock,
        started: Started, before_write: BeforeWrite) -> None:
    dev, device_id, session = started()
    winner_key, loser_key = SoftKey(), SoftKey()
    won: list[Onboarded] = []
    before_write(lambda: won.append(
        accept(svc, session, winner_key, attest_wire(dev, session, winner_key), clock)))
    data = refused(db, r.NONCE_REPLAYED, svc.attest, attest_wire(dev, session, loser_key),
                   device_id=device_id, step="attest")
    assert "already attested" in data["detail"]
    (cred,) = credentials_of(db, device_id)
    assert int(cred.serial_number, 16) == won[0].certificate.serial_number
    assert cred.spki_sha256 == pki.spki_sha256(winner_key.public_key)
    assert session_state(db, session) is SessionState.ATTESTED  # the winner's, not burned


def test_attest_key_recorded_meanwhile_is_a_clone(
        svc: OnboardingService, db: Database, clock: FixedClock,
        fresh: Fresh, before_write: BeforeWrite) -> None:
    first, second = fresh(), fresh()
    shared = SoftKey()
    s1, s2 = say_hello(svc, first, clock), say_hello(svc, second, clock)
    before_write(lambda: accept(svc, s1, shared, attest_wire(first, s1, shared), clock))
    second_id = device_id_of(db, second)
    refused(db, r.CLONE_SUSPECTED, svc.attest, attest_wire(second, s2, shared),
            device_id=second_id, step="attest")
    assert credentials_of(db, second_id) == []
    assert session_state(db, s2) is SessionState.REFUSED


def test_attest_bad_signature_loses_to_a_spent_nonce(
        svc: OnboardingService, db: Database, clock: FixedClock,
        started: Started, before_write: BeforeWrite) -> None:
    """As before ADR 0006: a nonce another attest spent is ``nonce_replayed``, whatever else."""
    dev, device_id, session = started()
    key = SoftKey()
    good = attest_request(dev, session, key)
    before_write(lambda: accept(svc, session, key, good.to_wire(), clock))
    refused(db, r.NONCE_REPLAYED, svc.attest, forged(good).to_wire(), device_id=device_id,
            step="attest")
    assert session_state(db, session) is SessionState.ATTESTED


def test_attest_with_a_damaged_stored_factory_key_burns_the_nonce(
        svc: OnboardingService, db: Database, started: Started) -> None:
    """A binding whose factory key no longer parses is refused after the spend, as before."""
    dev, device_id, session = started()
    with db.transaction() as tx:
        tx._conn.execute(  # damage the stored row on purpose
            text("UPDATE onboarding_sessions SET factory_spki = :bad WHERE id = :id"),
            {"bad": b"not a key", "id": session.session_id.hex()})
    refused(db, "malformed_public_key", svc.attest, attest_wire(dev, session, SoftKey()),
            device_id=device_id, step="attest")
    assert session_state(db, session) is SessionState.REFUSED


def test_attest_signature_refusal_comes_before_a_failing_issuance(
        svc: OnboardingService, db: Database, started: Started,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Working out the issuance (CA, model) early must not change the order of the checks."""
    dev, device_id, session = started()
    bad = forged(attest_request(dev, session, SoftKey()))

    def no_issuance(*_args: object) -> None:
        raise NotFoundError("no such device model", reason="model_not_found")

    monkeypatch.setattr(onboarding_svc, "_issuance_of", no_issuance)
    refused(db, r.SIGNATURE_INVALID, svc.attest, bad.to_wire(), device_id=device_id,
            step="attest")
    assert session_state(db, session) is SessionState.REFUSED


def test_attest_issuing_ca_changed_meanwhile_is_issued_by_the_new_one(
        svc: OnboardingService, *, fleet: Fleet, db: Database, clock: FixedClock,
        started: Started, before_write: BeforeWrite) -> None:
    dev, device_id, session = started()
    key = SoftKey()
    old = active_ca(db)
    before_write(lambda: roll_over(fleet, db, clock))
    onboarded = accept(svc, session, key, attest_wire(dev, session, key), clock)
    new = active_ca(db)
    (cred,) = credentials_of(db, device_id)
    assert new.id != old.id
    assert cred.issuer_ca_id == new.id
    issuer_cert = pki.load_certificate(new.certificate_pem.encode())
    assert onboarded.certificate.issuer == issuer_cert.subject
    assert onboarded.certificate.serial_number == int(cred.serial_number, 16)


def roll_over(fleet: Fleet, db: Database, clock: FixedClock) -> None:
    """A new active issuing CA (CA ids are per second: the fixed clock moves on first)."""
    clock.advance(1)
    rollover.rollover(db, fleet.settings, fleet.secrets, clock, actor=ACTOR,
                      backend=KeyBackend(kind="file", passphrase=PASSPHRASE))


# --- confirm ---------------------------------------------------------------------------------

@pytest.fixture
def attested(svc: OnboardingService, clock: FixedClock, started: Started,
             ) -> Callable[[], tuple[str, DeviceSession, SoftKey, Onboarded]]:
    """A fresh device's id, its session, its operational key and its attest's answer."""

    def attest() -> tuple[str, DeviceSession, SoftKey, Onboarded]:
        dev, device_id, session = started()
        key = SoftKey()
        return device_id, session, key, accept(svc, session, key,
                                               attest_wire(dev, session, key), clock)

    return attest


def test_confirm_confirmed_meanwhile_is_replayed_even_with_a_bad_signature(
        svc: OnboardingService, db: Database, clock: FixedClock,
        attested: Callable[[], tuple[str, DeviceSession, SoftKey, Onboarded]],
        before_write: BeforeWrite) -> None:
    device_id, session, key, onboarded = attested()
    good = build_confirm(session, onboarded, operational_signer=key)
    bad = dataclasses.replace(good, signature=SoftKey().sign(b"x"))
    before_write(lambda: svc.confirm(good.to_wire(), source=SOURCE))
    refused(db, r.NONCE_REPLAYED, svc.confirm, bad.to_wire(), device_id=device_id,
            step="confirm")
    with db.transaction(readonly=True) as tx:
        assert tx.get_device(device_id).state is DeviceState.ACTIVE
        assert [c.state for c in tx.list_credentials(device_id=device_id)] == [
            CredentialState.ACTIVE]  # the bad confirm revoked nothing


def test_confirm_revoked_meanwhile_is_expired(
        svc: OnboardingService, db: Database, clock: FixedClock,
        attested: Callable[[], tuple[str, DeviceSession, SoftKey, Onboarded]],
        before_write: BeforeWrite) -> None:
    device_id, session, key, onboarded = attested()

    def revoke() -> None:
        with db.transaction() as tx:
            (cred,) = tx.list_credentials(device_id=device_id)
            tx.update_credential_state(cred.serial_number, CredentialState.REVOKED,
                                       revoked_at=clock.now(), reason="unspecified")

    before_write(revoke)
    refused(db, r.NONCE_EXPIRED, svc.confirm,
            build_confirm(session, onboarded, operational_signer=key).to_wire(),
            device_id=device_id, step="confirm")
    with db.transaction(readonly=True) as tx:
        assert tx.get_device(device_id).state is DeviceState.EXPECTED
        assert tx.get_session(session.session_id.hex()).state is SessionState.ATTESTED


# --- the issuer's two halves -----------------------------------------------------------------

def to_issue(fleet: Fleet, db: Database, clock: FixedClock,
             dev: FleetDevice) -> tuple[Issuer, str, SoftKey, CertificateAuthority]:
    """An issuer, ``dev``'s id, a new key for it and the active issuing CA."""
    return Issuer(fleet.secrets, clock), device_id_of(db, dev), SoftKey(), active_ca(db)


def test_issuer_build_then_record(fleet: Fleet, db: Database, clock: FixedClock,
                                  fresh: Fresh) -> None:
    issuer, device_id, key, ca = to_issue(fleet, db, clock, fresh())
    built = issuer.build(ca, device_id=device_id, public_key=key.public_key,
                         lifetime=timedelta(days=2), crl_url=None)
    assert credentials_of(db, device_id) == []  # built is not issued
    assert built.certificate.public_key() == key.public_key
    assert built.credential.not_after - built.credential.not_before == timedelta(days=2)
    with db.transaction() as tx:
        issued = issuer.record(tx, built, actor=ACTOR)
    assert issued.credential == built.credential
    assert [c.serial_number for c in credentials_of(db, device_id)] == [
        built.credential.serial_number]
    again = issuer.build(ca, device_id=device_id, public_key=key.public_key, crl_url=None)
    with pytest.raises(ConflictError) as info, db.transaction() as tx:
        issuer.record(tx, again, actor=ACTOR)
    assert info.value.reason == "key_reused"


def test_issuer_record_refuses_a_ca_no_longer_active(
        fleet: Fleet, db: Database, clock: FixedClock,
        fresh: Fresh) -> None:
    issuer, device_id, key, ca = to_issue(fleet, db, clock, fresh())
    built = issuer.build(ca, device_id=device_id, public_key=key.public_key, crl_url=None)
    roll_over(fleet, db, clock)
    with pytest.raises(ConflictError) as info, db.transaction() as tx:
        issuer.record(tx, built, actor=ACTOR)
    assert info.value.reason == "issuing_ca_changed"
    assert credentials_of(db, device_id) == []
    with db.transaction(readonly=True) as tx:  # rolled back with it: the key may be certified
        assert not tx.key_seen(pki.spki_sha256(key.public_key))
