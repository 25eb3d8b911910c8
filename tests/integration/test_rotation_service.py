"""Credential rotation through the service layer on a real registry (SQLite), no broker.

Happy path with overlap (both credentials valid between complete and confirm; the old one
revoked with reason ``superseded`` at confirm and listed in the published CRL); refusals with a
revoked, expired, superseded or retired current credential (each recorded as a zombie contact);
a reused nonce; a CSR key seen before; an unconfirmed rotation revoked by the sweep; the expiry
sweep; a campaign's renewal flag and progress; the lifetime from the model's hardware profile.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.integration.fleet import ACTOR, Fleet, build_fleet
from tests.integration.lifecycle_helpers import RotatingDevice
from tests.integration.mqtt import add_active_devices

from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.adapters.sql.store import Database
from iotrust.core import pki
from iotrust.core.lifecycle import CredentialState, RetirementReason
from iotrust.errors import TrustError
from iotrust.ports import Clock
from iotrust.services import devices, zombies
from iotrust.services import rotation as rotation_svc
from iotrust.services.credentials import revoke_credential


class ShiftedClock:
    """The system clock plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Fleet, Database, ShiftedClock, list[RotatingDevice]]]:
    clock = ShiftedClock()
    fleet = build_fleet(tmp_path, makers=(), clock=clock)
    db = fleet.open_db()
    idents = add_active_devices(fleet, db, clock, 4, tmp_path / "clients")
    devs = [RotatingDevice(i.name, i.cert, i.key) for i in idents]
    try:
        yield fleet, db, clock, devs
    finally:
        db.close()


def service(fleet: Fleet, db: Database, clock: Clock) -> rotation_svc.RotationService:
    return rotation_svc.RotationService(db, clock, fleet.settings, fleet.secrets)


def creds(db: Database, device_id: str) -> dict[str, CredentialState]:
    with db.transaction() as tx:
        return {c.serial_number: c.state for c in tx.list_credentials(device_id=device_id)}


def refused(fn: object, reason: str) -> TrustError:
    with pytest.raises(TrustError) as info:
        fn()  # type: ignore[operator]
    assert info.value.reason == reason, info.value
    return info.value


def events(db: Database, kind: str, device_id: str | None = None) -> list[object]:
    with db.transaction() as tx:
        return list(tx.iter_events(kind=kind, device_id=device_id))


def test_rotation_with_overlap_then_old_revoked(env: tuple) -> None:
    fleet, db, clock, devs = env
    svc = service(fleet, db, clock)
    dev = devs[0]
    old = dev.serial
    begun = svc.begin(dev.begin_request().to_wire(), source="10.0.0.1")
    assert not begun.renewal_requested
    new_key = DeviceFileKey.generate(dev.key.with_name("new.key.pem"))
    done = svc.complete(dev.complete_request(begun, new_key).to_wire(), source="10.0.0.1")
    new = f"{pki.load_certificate(done.certificate).serial_number:x}"
    # the overlap: both valid
    states = creds(db, dev.device_id)  # the test fleet's credentials were never confirmed
    assert states[old] in {CredentialState.ISSUED, CredentialState.ACTIVE}
    assert states[new] is CredentialState.ISSUED
    svc.confirm(dev.confirm_request(begun, done, new_key, dev.device_id).to_wire(),
                source="10.0.0.1")
    with db.transaction() as tx:
        old_cred = tx.get_credential(old)
    assert old_cred.state is CredentialState.REVOKED
    assert old_cred.revocation_reason == "superseded"
    assert creds(db, dev.device_id)[new] is CredentialState.ACTIVE
    crl = pki.load_crl((fleet.settings.crl_dir / "all.crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(old, 16)) is not None
    assert events(db, rotation_svc.ROTATION_CONFIRMED, dev.device_id)
    # the new certificate is for the new key and names the device
    cert = pki.load_certificate(done.certificate)
    assert pki.spki_sha256(cert.public_key()) == pki.spki_sha256(new_key.public_key)
    # the old credential cannot rotate again: revoked → zombie
    refused(lambda: svc.begin(dev.begin_request().to_wire(), source="10.0.0.1"),
            "credential_revoked")
    z = {s.identity: s for s in zombies.list_zombies(db)}
    assert z[dev.device_id].channels == {"rotation": 1}


def test_refusals_revoked_expired_retired_and_replay(env: tuple) -> None:
    fleet, db, clock, devs = env
    svc = service(fleet, db, clock)
    # revoked current credential
    with db.transaction() as tx:
        revoke_credential(tx, clock, devs[0].serial, reason="key_compromise", actor=ACTOR)
    refused(lambda: svc.begin(devs[0].begin_request().to_wire(), source="s"),
            "credential_revoked")
    # retired device
    devices.retire(db, clock, devs[1].device_id, RetirementReason.DECOMMISSIONED, actor=ACTOR)
    refused(lambda: svc.begin(devs[1].begin_request().to_wire(), source="s"), "retired")
    # a signature by another key
    other = DeviceFileKey.generate(devs[2].key.with_name("other.pem"))
    refused(lambda: svc.begin(devs[2].begin_request(other).to_wire(), source="s"),
            "signature_invalid")
    # a reused nonce
    begun = svc.begin(devs[2].begin_request().to_wire(), source="s")
    k1 = DeviceFileKey.generate(devs[2].key.with_name("k1.pem"))
    svc.complete(devs[2].complete_request(begun, k1).to_wire(), source="s")
    k2 = DeviceFileKey.generate(devs[2].key.with_name("k2.pem"))
    refused(lambda: svc.complete(devs[2].complete_request(begun, k2).to_wire(), source="s"),
            "nonce_replayed")
    # a CSR key seen before (device 2's current key on device 3)
    begun3 = svc.begin(devs[3].begin_request().to_wire(), source="s")
    stolen = DeviceFileKey.load(devs[2].key)
    refused(lambda: svc.complete(devs[3].complete_request(begun3, stolen).to_wire(),
                                 source="s"), "clone_suspected")
    # expired: 31 days later (default lifetime 30 days)
    clock.offset = timedelta(days=31)
    refused(lambda: svc.begin(devs[3].begin_request().to_wire(), source="s"),
            "credential_expired")
    report = rotation_svc.sweep(db, clock, fleet.settings, fleet.secrets)
    assert report.credentials_expired >= 1
    assert creds(db, devs[3].device_id)[devs[3].serial] is CredentialState.EXPIRED
    assert events(db, rotation_svc.CREDENTIAL_EXPIRED, devs[3].device_id)
    summary = {s.identity: s for s in zombies.list_zombies(db)}
    for dev, reason in ((devs[0], "credential_revoked"), (devs[1], "retired"),
                        (devs[3], "credential_expired")):
        assert summary[dev.device_id].last_reason == reason
        assert summary[dev.device_id].channels["rotation"] == 1


def test_unconfirmed_rotation_is_revoked_by_the_sweep(env: tuple) -> None:
    fleet, db, clock, devs = env
    svc = service(fleet, db, clock)
    dev = devs[0]
    begun = svc.begin(dev.begin_request().to_wire(), source="s")
    k = DeviceFileKey.generate(dev.key.with_name("k.pem"))
    done = svc.complete(dev.complete_request(begun, k).to_wire(), source="s")
    new = f"{pki.load_certificate(done.certificate).serial_number:x}"
    clock.offset = timedelta(seconds=400)
    report = rotation_svc.sweep(db, clock, fleet.settings, fleet.secrets)
    assert report.unconfirmed_revoked == 1
    states = creds(db, dev.device_id)
    assert states[new] is CredentialState.REVOKED
    assert states[dev.serial] in {CredentialState.ISSUED, CredentialState.ACTIVE}  # kept
    refused(lambda: svc.confirm(RotatingDevice.confirm_request(begun, done, k, dev.device_id)
                                .to_wire(), source="s"), "nonce_expired")


def test_campaign_flag_progress_and_lifetime_from_model(env: tuple) -> None:
    fleet, db, clock, devs = env
    svc = service(fleet, db, clock)
    marked: list[int] = []
    report = rotation_svc.request_renewal(db, clock, actor=ACTOR, all_devices=True, rate=1000,
                                          progress=marked.append, sleep=lambda _s: None)
    assert report.requested == 4
    assert sum(marked) == 4
    begun = svc.begin(devs[0].begin_request().to_wire(), source="s")
    assert begun.renewal_requested
    devs[0].rotate(svc)
    assert rotation_svc.campaign_progress(db, report.campaign) == {
        "requested": 4, "renewed": 1, "pending": 3}
    assert not svc.begin(devs[0].begin_request().to_wire(), source="s").renewal_requested
    # the renewal point is 2/3 of the lifetime by default
    cert = pki.load_certificate(devs[1].cert.read_bytes())
    b1 = svc.begin(devs[1].begin_request().to_wire(), source="s")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    expected = cert.not_valid_before_utc + lifetime * 2 / 3
    assert abs((b1.renew_at - expected).total_seconds()) <= 1
