"""The service republishes its CRLs at start when a revocation was committed but never published."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.adapters.sql.store import Database
from iotrust.core import pki
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import Device, DeviceState
from iotrust.core.records import Manufacturer
from iotrust.ports import SystemClock
from iotrust.services import broker as broker_svc
from iotrust.services import credentials, domain
from iotrust.services.settings import Settings

PASS = b"correct horse battery staple"


def test_unpublished_revocation_is_published_at_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'r.db'}")
    settings.data_dir.mkdir()
    db = Database.open(settings.database_url)
    clock = SystemClock()
    secrets = domain.Secrets(passphrase=PASS)
    domain.init_domain(db, settings, clock, name="fleet", owner="owner",
                       backend=domain.KeyBackend(kind="file", passphrase=PASS),
                       public_url="http://127.0.0.1:8443")
    # Nothing published yet: the first start publishes.
    assert broker_svc.ensure_published_crls(db, settings, secrets, clock) is True
    assert broker_svc.ensure_published_crls(db, settings, secrets, clock) is False
    now = clock.now()
    device = Device(id=new_device_id(b"\x02" * 16), manufacturer="acme", serial="S1",
                    factory_spki_sha256="ab" * 32, vendor_id="1", product_id="2", owner="owner",
                    state=DeviceState.EXPECTED, created_at=now, updated_at=now)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    with db.transaction() as tx:
        tx.add_manufacturer(Manufacturer(
            name="acme", display_name="acme", allowed=("1:2",), revoked=False,
            anchors_pem=(settings.ca_dir / "root.pem").read_text(),
            unsafe_manufacturer_trust=False, created_at=now))
        tx.add_device(device)
        issued = credentials.Issuer(secrets, clock).issue_for_device(
            tx, device_id=device.id, csr=csr, actor="test@iotrust")
    # A revocation committed, then the process "died" before publishing.
    with db.transaction() as tx:
        credentials.revoke_credential(tx, clock, issued.credential.serial_number,
                                      reason="key_compromise", actor="test@iotrust")
    assert broker_svc.ensure_published_crls(db, settings, secrets, clock) is True
    crls = [pki.load_crl(part) for part in
            (settings.crl_dir / f"{issued.ca.id}.crl.pem").read_bytes().split(b"\n\n") if part]
    assert any(pki.is_revoked(c, issued.certificate.serial_number) for c in crls)
    db.close()
