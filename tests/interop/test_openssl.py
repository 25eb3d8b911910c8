"""openssl, an independent X.509 implementation, judges our certificates, CRLs and signatures.

Every check pins the verification time with ``-attime`` so the results do not depend on the clock.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.conftest import missing_component

from iotrust.core import pki
from iotrust.core.ids import new_device_id
from iotrust.errors import InputError, TrustError
from iotrust.ports import HasPrivateKey

pytestmark = pytest.mark.interop

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
AT = NOW + timedelta(hours=1)
DAY = timedelta(days=1)
YEAR = timedelta(days=365)
OPENSSL = "/usr/bin/openssl"


class SoftSigner:
    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


class ExternalSigner:
    """A signer with no private key attribute: exercises the hand-assembled DER path."""

    def __init__(self) -> None:
        self.__key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.__key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.__key.sign(data, ec.ECDSA(hashes.SHA256()))


@pytest.fixture(scope="module")
def openssl() -> str:
    path = shutil.which("openssl") or (OPENSSL if Path(OPENSSL).exists() else None)
    if path is None:
        missing_component("openssl")
    assert path is not None
    return path


def _run(openssl: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [openssl, *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )


def _write(path: Path, obj: x509.Certificate | x509.CertificateRevocationList) -> Path:
    path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass(frozen=True)
class Domain:
    root: x509.Certificate
    root_signer: SoftSigner | ExternalSigner
    issuing: x509.Certificate
    issuing_signer: SoftSigner | ExternalSigner


def _domain(signer_type: type[SoftSigner | ExternalSigner]) -> Domain:
    root_signer, issuing_signer = signer_type(), signer_type()
    root = pki.build_root_ca(root_signer, "Interop Root CA", "Acme", NOW - DAY, 10 * YEAR)
    issuing = pki.build_issuing_ca(
        root_signer,
        root,
        issuing_signer.public_key,
        "Interop Issuing CA",
        "Acme",
        NOW - DAY,
        5 * YEAR,
        "http://127.0.0.1:8443/v1/crl/root.crl",
    )
    return Domain(root, root_signer, issuing, issuing_signer)


def _verify(
    openssl: str,
    tmp_path: Path,
    domain: Domain,
    leaf: x509.Certificate,
    revoked: list[int],
    *,
    purpose: str = "sslclient",
) -> subprocess.CompletedProcess[str]:
    crl = pki.build_crl(
        domain.issuing_signer,
        domain.issuing,
        [pki.RevokedEntry(serial, NOW, x509.ReasonFlags.key_compromise) for serial in revoked],
        crl_number=len(revoked) + 1,
        this_update=NOW,
        next_update=NOW + DAY,
    )
    return _run(
        openssl,
        "verify",
        "-attime",
        str(int(AT.timestamp())),
        "-purpose",
        purpose,
        "-CAfile",
        _write(tmp_path / "root.pem", domain.root),
        "-untrusted",
        _write(tmp_path / "issuing.pem", domain.issuing),
        "-crl_check",
        "-CRLfile",
        _write(tmp_path / "crl.pem", crl),
        _write(tmp_path / "device.pem", leaf),
    )


@pytest.mark.parametrize("signer_type", [SoftSigner, ExternalSigner], ids=["fast", "external"])
def test_device_certificate_and_revocation(
    openssl: str, tmp_path: Path, signer_type: type[SoftSigner | ExternalSigner]
) -> None:
    domain = _domain(signer_type)
    assert isinstance(domain.issuing_signer, HasPrivateKey) == (signer_type is SoftSigner)
    context = pki.IssuingContext.from_ca(
        domain.issuing, domain.issuing_signer, crl_url="http://127.0.0.1:8443/v1/crl/i.crl"
    )
    device_key = ec.generate_private_key(ec.SECP256R1())
    serial = pki.new_serial_number(bytes(range(20)))
    device = context.issue_device(
        device_id=new_device_id(b"\x42" * 16),
        public_key=device_key.public_key(),
        serial_number=serial,
        not_before=NOW,
        lifetime=30 * DAY,
    )
    ok = _verify(openssl, tmp_path, domain, device, revoked=[12345])
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert ok.stdout.strip().endswith(": OK")
    # Our own chain check agrees with openssl on both outcomes, from the very same files.
    clean_crl = pki.load_crl((tmp_path / "crl.pem").read_bytes())
    path = pki.verify_chain(
        pki.load_certificate((tmp_path / "device.pem").read_bytes()),
        pki.load_certificates((tmp_path / "issuing.pem").read_bytes()),
        pki.load_certificates((tmp_path / "root.pem").read_bytes()),
        AT,
        crls=[clean_crl],
        require_crl=True,
    )
    assert path == [device, domain.issuing, domain.root]

    refused = _verify(openssl, tmp_path, domain, device, revoked=[12345, serial])
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stdout + refused.stderr
    revoking_crl = pki.load_crl((tmp_path / "crl.pem").read_bytes())
    with pytest.raises(TrustError) as exc:
        pki.verify_chain(
            device, [domain.issuing], [domain.root], AT, crls=[revoking_crl], require_crl=True
        )
    assert exc.value.reason == "certificate_revoked"


def test_openssl_parses_our_crl_and_checks_its_signature(openssl: str, tmp_path: Path) -> None:
    domain = _domain(ExternalSigner)
    crl = pki.build_crl(
        domain.issuing_signer,
        domain.issuing,
        [pki.RevokedEntry(77, NOW)],
        crl_number=9,
        this_update=NOW,
        next_update=NOW + DAY,
    )
    result = _run(
        openssl,
        "crl",
        "-in",
        _write(tmp_path / "crl.pem", crl),
        "-CAfile",
        _write(tmp_path / "issuing.pem", domain.issuing),
        "-noout",
        "-text",
    )
    assert result.returncode == 0, result.stderr
    assert "verify OK" in result.stderr + result.stdout
    assert "X509v3 CRL Number" in result.stdout
    assert "X509v3 Authority Key Identifier" in result.stdout
    assert "Serial Number: 4D" in result.stdout


def test_service_certificate_is_a_tls_server(openssl: str, tmp_path: Path) -> None:
    domain = _domain(SoftSigner)
    cert = pki.issue_service_certificate(
        domain.issuing_signer,
        domain.issuing,
        service_name="broker@iotrust",
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        serial_number=5,
        not_before=NOW,
        lifetime=YEAR,
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    )
    for purpose in ("sslserver", "sslclient"):
        result = _verify(openssl, tmp_path, domain, cert, revoked=[], purpose=purpose)
        assert result.returncode == 0, result.stdout + result.stderr
    hosts = _run(
        openssl,
        "verify",
        "-attime",
        str(int(AT.timestamp())),
        "-CAfile",
        tmp_path / "root.pem",
        "-untrusted",
        tmp_path / "issuing.pem",
        "-verify_hostname",
        "localhost",
        "-verify_ip",
        "127.0.0.1",
        tmp_path / "device.pem",
    )
    assert hosts.returncode == 0, hosts.stdout + hosts.stderr


def test_factory_and_voucher_signer_chains(openssl: str, tmp_path: Path) -> None:
    signer = ExternalSigner()
    root = pki.build_root_ca(signer, "Acme Factory Root", "acme", NOW - DAY, 20 * YEAR)
    factory = pki.issue_factory_certificate(
        signer,
        root,
        serial="SN00000042",
        manufacturer="acme",
        vendor_id="acme",
        product_id="sensor-1",
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        serial_number=42,
        not_before=NOW,
        lifetime=15 * YEAR,
    )
    voucher = pki.issue_voucher_signer_certificate(
        signer,
        root,
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        "Acme Voucher Signer",
        "acme",
        NOW,
        5 * YEAR,
    )
    for cert in (factory, voucher):
        result = _run(
            openssl,
            "verify",
            "-attime",
            str(int(AT.timestamp())),
            "-CAfile",
            _write(tmp_path / "root.pem", root),
            _write(tmp_path / "leaf.pem", cert),
        )
        assert result.returncode == 0, result.stdout + result.stderr
    text = _run(openssl, "x509", "-in", tmp_path / "leaf.pem", "-noout", "-text").stdout
    assert pki.OID_VOUCHER_SIGNING.dotted_string in text


def test_openssl_csr_is_accepted_and_issued(openssl: str, tmp_path: Path) -> None:
    key = tmp_path / "device.key"
    csr = tmp_path / "device.csr"
    made = _run(
        openssl,
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
        "-subj",
        "/CN=whatever",
        "-sha256",
        "-out",
        csr,
    )
    assert made.returncode == 0, made.stderr
    public_key = pki.check_csr(csr.read_bytes())
    domain = _domain(SoftSigner)
    device = pki.issue_device_certificate(
        domain.issuing_signer,
        domain.issuing,
        device_id=new_device_id(b"\x43" * 16),
        public_key=public_key,
        serial_number=8,
        not_before=NOW,
        lifetime=DAY,
    )
    result = _verify(openssl, tmp_path, domain, device, revoked=[])
    assert result.returncode == 0, result.stdout + result.stderr
    # The device's own key matches the certificate openssl was given.
    match = _run(openssl, "x509", "-in", tmp_path / "device.pem", "-noout", "-pubkey")
    mine = _run(openssl, "pkey", "-in", key, "-pubout")
    assert match.stdout == mine.stdout


def test_openssl_refuses_a_p384_csr_like_we_do(openssl: str, tmp_path: Path) -> None:
    csr = tmp_path / "weak.csr"
    made = _run(
        openssl,
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-nodes",
        "-keyout",
        tmp_path / "weak.key",
        "-subj",
        "/CN=x",
        "-out",
        csr,
    )
    assert made.returncode == 0, made.stderr
    with pytest.raises(InputError) as exc:
        pki.check_csr(csr.read_bytes())
    assert exc.value.reason == "weak_key"
