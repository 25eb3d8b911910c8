"""A trust domain whose CA keys live in a PKCS#11 token (SoftHSM2), checked by openssl.

The root and issuing CA keys are generated inside the token; certificates and CRLs they sign must
verify with ``openssl verify -crl_check``, and a revocation must show up in the next CRL.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.conftest import missing_component
from tests.integration.softhsm import softhsm_token, unique_key_label

from iotrust.adapters.keys.refs import open_signer, parse_key_ref
from iotrust.adapters.sql.store import Database
from iotrust.core import pki
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import Device, DeviceState
from iotrust.core.records import Manufacturer
from iotrust.ports import SystemClock
from iotrust.services import credentials, domain, factory
from iotrust.services.settings import Settings

pytestmark = [pytest.mark.hsm, pytest.mark.interop]


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("openssl")
    if exe is None:
        missing_component("openssl")
    return subprocess.run([exe or "openssl", *args], capture_output=True, text=True, check=False)


def test_pkcs11_domain_issues_and_revokes_verifiably(tmp_path: Path) -> None:
    token = softhsm_token()
    settings = Settings(data_dir=tmp_path / "data",
                        database_url=f"sqlite:///{tmp_path / 'reg.db'}")
    settings.data_dir.mkdir()
    db = Database.open(settings.database_url)
    clock = SystemClock()
    backend = domain.KeyBackend(kind="pkcs11", pkcs11_module=token.module,
                                pkcs11_token=token.label, pkcs11_pin=token.pin)
    suffix = unique_key_label("dom")[-8:]
    domain.init_domain(db, settings, clock, name=f"hsm-{suffix}", owner="hsm-owner",
                       backend=backend, public_url="http://127.0.0.1:8443")
    with db.transaction() as tx:
        cas = tx.list_cas()
    assert {parse_key_ref(c.key_ref).kind.value for c in cas} == {"pkcs11"}
    assert not settings.keys_dir.exists() or not list(settings.keys_dir.iterdir())

    secrets = domain.Secrets(pin=token.pin)
    now = clock.now()
    device = Device(id=new_device_id(b"\x01" * 16), manufacturer="acme", serial="HSM1",
                    factory_spki_sha256="ab" * 32, vendor_id="1", product_id="2",
                    owner="hsm-owner", state=DeviceState.EXPECTED, created_at=now,
                    updated_at=now)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .sign(key, hashes.SHA256()))
    issuer = credentials.Issuer(secrets, clock)
    root_pem = (settings.ca_dir / "root.pem").read_text()  # any CA certificate will do here
    with db.transaction() as tx:
        tx.add_manufacturer(Manufacturer(name="acme", display_name="acme",
                                         anchors_pem=root_pem,
                                         allowed=("1:2",), revoked=False,
                                         unsafe_manufacturer_trust=False, created_at=now))
        tx.add_device(device)
        issued = issuer.issue_for_device(tx, device_id=device.id, csr=csr, actor="test@iotrust")
    credentials.publish_crls(db, settings, secrets, clock, actor="test@iotrust")

    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
    root = settings.ca_dir / "root.pem"
    issuing = settings.ca_dir / f"{issued.ca.id}.pem"
    crl = settings.crl_dir / "all.crl.pem"
    ok = _openssl("verify", "-CAfile", str(root), "-untrusted", str(issuing), "-crl_check",
                  "-CRLfile", str(crl), str(leaf))
    assert ok.returncode == 0, ok.stdout + ok.stderr

    with db.transaction() as tx:
        assert credentials.revoke_credential(tx, clock, issued.credential.serial_number,
                                             reason="key_compromise", actor="test@iotrust")
    credentials.publish_crls(db, settings, secrets, clock, actor="test@iotrust")
    bad = _openssl("verify", "-CAfile", str(root), "-untrusted", str(issuing), "-crl_check",
                   "-CRLfile", str(crl), str(leaf))
    assert bad.returncode != 0
    assert "revoked" in (bad.stdout + bad.stderr)
    db.close()


def test_export_root_moves_the_key_offline(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data",
                        database_url=f"sqlite:///{tmp_path / 'reg.db'}")
    settings.data_dir.mkdir()
    db = Database.open(settings.database_url)
    clock = SystemClock()
    backend = domain.KeyBackend(kind="file", passphrase=b"correct horse battery")
    domain.init_domain(db, settings, clock, name="fileco", owner="owner", backend=backend,
                       public_url="http://127.0.0.1:8443")
    written = domain.export_root(db, tmp_path / "offline", remove_online_key=True)
    assert len(written) == 2
    assert written[1].stat().st_mode & 0o777 == 0o600
    assert not list(settings.keys_dir.glob("root-*.key.pem"))
    # The issuing CA keeps working without the root key online.
    credentials.publish_crls(db, settings, domain.Secrets(passphrase=b"correct horse battery"),
                             clock, actor="test@iotrust")
    with pytest.raises(Exception, match="not online"):
        domain.export_root(db, tmp_path / "again")
    db.close()


def test_factory_mints_device_keys_inside_the_token(tmp_path: Path) -> None:
    token = softhsm_token()
    clock = SystemClock()
    f = factory.init_factory(tmp_path / "factory", clock, name="hsmco", vendor_id="0x1",
                             product_id="se-1", passphrase=b"factory passphrase 0123")
    store = factory.DeviceKeyStore(kind="pkcs11", module=token.module, token=token.label,
                                   pin=token.pin)
    prefix = "P" + unique_key_label("m")[-6:].upper()
    minted = factory.mint(f, clock, 3, passphrase=b"factory passphrase 0123", keystore=store,
                          prefix=prefix)
    for m in minted:
        assert m.key_ref.startswith("pkcs11:")
        assert not (m.folder / "factory.key.pem").exists()
        cert = pki.load_certificate((m.folder / "factory.crt.pem").read_bytes())
        signer = open_signer(m.key_ref, pin=token.pin)
        assert pki.spki_sha256(signer.public_key) == pki.spki_sha256(cert.public_key())
        ident = pki.read_factory_identity(cert)
        assert (ident.serial, ident.vendor_id, ident.product_id) == (m.serial, "0x1", "se-1")
