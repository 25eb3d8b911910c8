"""Registries for the posture-audit tests: a clean fleet and one that trips every check.

Everything goes through the services and the store exactly as in production (a real trust
domain with file-backed CA keys, real certificates issued from real CSRs, the published CRL);
only the mistakes are made by hand, the way a careless operator or a broken factory would.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from iotrust.adapters.sql.store import Database
from iotrust.adapters.sql.updates import ReleaseRow, RolloutDeviceRow, RolloutRow, UpdateTx
from iotrust.core import pki
from iotrust.core.events import format_anchor
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import CredentialState, Device, DeviceState, KeyStorage
from iotrust.core.policy import Action, Rule
from iotrust.core.records import Credential, Manufacturer
from iotrust.ports import FixedClock
from iotrust.services import credentials, eventlog, policies
from iotrust.services import hardware as hw_svc
from iotrust.services.credentials import Issuer
from iotrust.services.domain import KeyBackend, Secrets, init_domain
from iotrust.services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PASSPHRASE = b"audit test passphrase"
ACTOR = "tests@audit"
MAKER = "widgetco"


@dataclass(slots=True)
class AuditFleet:
    """A registry and what was done to it."""

    settings: Settings
    db: Database
    clock: FixedClock
    devices: list[str]
    serials: dict[str, str]

    @property
    def secrets(self) -> Secrets:
        return Secrets(passphrase=PASSPHRASE)


def _self_signed(key: object, cn: str, at: datetime) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(x509.random_serial_number())
            .not_valid_before(at).not_valid_after(at + timedelta(days=365))
            .sign(signer, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _device(index: int, *, state: DeviceState = DeviceState.ACTIVE, salt: str = "",
            **more: object) -> Device:
    digest = hashlib.sha256(f"audit-device:{salt}:{index}".encode()).digest()
    spki = hashlib.sha256(f"audit-factory-key:{salt}:{index}".encode()).hexdigest()
    return Device(id=new_device_id(digest[:16]), manufacturer=MAKER, serial=f"WI{salt}{index:06d}",
                  factory_spki_sha256=spki, vendor_id="0x1234", product_id="sensor-1",
                  owner="acme-ops", state=state, created_at=T0, updated_at=T0,
                  **more)  # type: ignore[arg-type]


def _base(base: Path, url: str | None, clock: FixedClock) -> tuple[Settings, Database]:
    base.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=base / "data",
                        database_url=url or f"sqlite:///{base / 'data' / 'iotrust.db'}")
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database.open(settings.database_url)
    init_domain(db, settings, clock, name="acme-fleet", owner="acme-ops",
                backend=KeyBackend(kind="file", passphrase=PASSPHRASE),
                public_url="http://127.0.0.1:8443")
    root = pki.build_root_ca(_Soft(), "Widgetco Factory Root", MAKER, T0 - timedelta(days=1),
                             timedelta(days=3650))
    with db.transaction() as tx:
        tx.add_manufacturer(Manufacturer(
            name=MAKER, display_name="Widgetco", allowed=("0x1234:sensor-1",), created_at=T0,
            anchors_pem=root.public_bytes(serialization.Encoding.PEM).decode("ascii")))
    return settings, db


class _Soft:
    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


def _issue(db: Database, issuer: Issuer, device_id: str, lifetime: timedelta) -> str:
    key = _Soft()
    csr = pki.build_csr(key)
    with db.transaction() as tx:
        issued = issuer.issue_for_device(tx, device_id=device_id, csr=csr, lifetime=lifetime,
                                         actor=ACTOR)
    return issued.credential.serial_number


def anchor(fleet: AuditFleet) -> None:
    """Export the event-log head, as ``iotrust log anchor`` does."""
    with fleet.db.transaction() as tx:
        head = tx.event_head()
    assert head is not None
    fleet.settings.anchor_file.write_text(format_anchor(head) + "\n")


def clean_fleet(base: Path, url: str | None = None, *, count: int = 4) -> AuditFleet:
    """Active devices with fresh P-256 credentials, the default policy, a feasible model,
    a current CRL and an anchored event log: no check finds anything."""
    clock = FixedClock(T0)
    settings, db = _base(base, url, clock)
    hw_svc.register_model(db, clock, name="tz-sensor", manufacturer=MAKER, actor=ACTOR,
                          profile_yaml=(ROOT / "examples/hardware/mcu-trustzone.yaml").read_bytes())
    devices = [_device(i, model="tz-sensor", key_storage=KeyStorage.SECURE_ELEMENT)
               for i in range(count)]
    with db.transaction() as tx:
        tx.add_devices(devices)
    issuer = Issuer(Secrets(passphrase=PASSPHRASE), clock)
    serials = {d.id: _issue(db, issuer, d.id, timedelta(days=90)) for d in devices}
    with db.transaction() as tx:
        for d in devices:
            tx.touch_last_seen(d.id, T0)
    credentials.publish_crls(db, settings, Secrets(passphrase=PASSPHRASE), clock, actor=ACTOR)
    fleet = AuditFleet(settings, db, clock, [d.id for d in devices], serials)
    anchor(fleet)
    return fleet


def _rollouts(db: Database, ids: list[str]) -> None:
    """fw-1 rolled out and aborted (device 1 kept it); fw-2 active, device 2 stuck, device 3
    rolled back, device 5 committed."""
    with db.transaction() as tx:
        ux = UpdateTx(tx)
        for n, (rollout, state, devices) in enumerate((
                ("ro-1", "aborted", [(ids[1], "installed")]),
                ("ro-2", "active", [(ids[2], "downloading"), (ids[3], "rolled_back"),
                                    (ids[5], "committed")]))):
            release = f"fw-{n + 1}"
            ux.add_release(ReleaseRow(id=release, component="firmware", release_counter=n + 1,
                                      hw_class_ids=("mcu-1",), min_agent_version="0.1",
                                      targets={"mcu-1": f"firmware/{release}.bin"},
                                      created_at=T0))
            ux.add_rollout(RolloutRow(id=rollout, release_id=release, state=state, policy={},
                                      wave_index=0, reason=None, created_at=T0, updated_at=T0),
                           [RolloutDeviceRow(rollout_id=rollout, device_id=d, bucket=0, wave=0,
                                             released_at=T0, status=st, reason=None)
                            for d, st in devices], T0)
        ux.accept_report(ids[1], 1, T0, installed_release="fw-1")
        ux.accept_report(ids[5], 1, T0, installed_release="fw-2")


def bad_fleet(base: Path, url: str | None = None) -> AuditFleet:
    """A fleet tripping every check; the audit runs 40 days after T0."""
    clock = FixedClock(T0)
    settings, db = _base(base, url, clock)
    hw_svc.register_model(db, clock, name="tiny-mcu", manufacturer=MAKER, actor=ACTOR,
                          profile_yaml=(ROOT / "examples/hardware/class1-mcu.yaml").read_bytes())
    with db.transaction() as tx:
        tx.update_manufacturer(dataclasses.replace(tx.get_manufacturer(MAKER),
                                                   unsafe_manufacturer_trust=True))
    devices = [_device(i, salt="b", model="tiny-mcu") for i in range(8)]
    devices[3] = dataclasses.replace(devices[3], unsafe_admission=True)
    devices[4] = dataclasses.replace(devices[4], key_storage=KeyStorage.FILE, model=None)
    with db.transaction() as tx:
        tx.add_devices(devices)
    ids = [d.id for d in devices]
    secrets = Secrets(passphrase=PASSPHRASE)
    issuer = Issuer(secrets, clock)
    serials = {d: _issue(db, issuer, d, timedelta(days=30)) for d in ids[:4]}
    # an old, long-lived credential (age) for device 5
    old_issuer = Issuer(secrets, FixedClock(T0 - timedelta(days=400)))
    serials[ids[5]] = _issue(db, old_issuer, ids[5], timedelta(days=500))
    unexpired = _issue(db, issuer, ids[1], timedelta(days=90))
    with db.transaction() as tx:
        for d in ids:
            tx.touch_last_seen(d, T0)
    credentials.publish_crls(db, settings, secrets, clock, actor=ACTOR)
    with db.transaction() as tx:
        # revoked after the CRL was published: the CRL on disk does not list it
        credentials.revoke_credential(tx, clock, unexpired, reason="key_compromise",
                                      actor=ACTOR)
        ca_id = tx.get_credential(serials[ids[1]]).issuer_ca_id
        pem = tx.get_credential(serials[ids[1]]).certificate_pem
        # device 6's operational key is device 7's factory key; its subject is device 2's id
        tx.add_credential(Credential(
            serial_number="abc123", device_id=ids[6], subject=ids[2],
            spki_sha256=devices[7].factory_spki_sha256, issuer_ca_id=ca_id,
            not_before=T0, not_after=T0 + timedelta(days=365), state=CredentialState.ACTIVE,
            certificate_pem=pem, created_at=T0))
        # device 7 holds an RSA-1024 credential
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        tx.add_credential(Credential(
            serial_number="abc124", device_id=ids[7], subject=ids[7],
            spki_sha256=pki.spki_sha256(rsa_key.public_key()), issuer_ca_id=ca_id,
            not_before=T0, not_after=T0 + timedelta(days=365), state=CredentialState.ACTIVE,
            certificate_pem=_self_signed(rsa_key, ids[7], T0), created_at=T0))
        tx.record_zombie(identity=ids[0], where="onboarding", device_id=ids[0],
                         at=T0 + timedelta(days=39), source="198.51.100.7", reason="revoked")
        eventlog.record(tx, clock, "onboarding.refused", actor=ACTOR, device_id=ids[2],
                        reason="clone_suspected", data={"source": "203.0.113.9"})
    policies.create(db, clock, "spy", [
        Rule(Action.PUBLISH, "devices/{device_id}/telemetry"),
        Rule(Action.SUBSCRIBE, "devices/+/telemetry", shared=True),
    ], actor=ACTOR)
    policies.create(db, clock, "sloppy", [
        Rule(Action.PUBLISH, "devices/{device_id}/#"),
        Rule(Action.PUBLISH, "devices/{device_id}/telemetry"),
    ], actor=ACTOR)
    _rollouts(db, ids)
    policies.add_to_group(db, clock, "spies", [ids[4]], actor=ACTOR)
    policies.assign_to_group(db, clock, "spy", "spies", actor=ACTOR)
    clock.advance(40 * 86_400)
    return AuditFleet(settings, db, clock, ids, serials)
