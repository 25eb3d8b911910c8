"""Valid inputs to start the fuzzers from: vectors from ``tests/vectors`` and objects made here.

Imported by the targets *inside* ``atheris.instrument_imports()`` (it imports iotrust). Keys are
generated per run; nothing here is a secret or is written anywhere but the corpus folder.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iotrust.core import pki
from iotrust.core.ids import new_device_id
from iotrust.core.vouchers import VoucherClaims, sign_voucher

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "vectors"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


class _Signer:
    """A software P-256 signer (the Signer and HasPrivateKey ports)."""

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


def pki_samples() -> dict[str, x509.Certificate | x509.CertificateSigningRequest
                          | x509.CertificateRevocationList]:
    """A CA certificate, a device certificate, a CSR and a CRL."""
    ca_signer, leaf_signer = _Signer(), _Signer()
    ca = pki.build_root_ca(ca_signer, "Fuzz Root", "Acme", NOW - DAY, timedelta(days=3650))
    context = pki.IssuingContext.from_ca(ca, ca_signer, crl_url="http://localhost/crl")
    leaf = context.issue_device(device_id=new_device_id(b"\x07" * 16),
                                public_key=leaf_signer.public_key, serial_number=99,
                                not_before=NOW, lifetime=DAY)
    crl = pki.build_crl(ca_signer, ca, [pki.RevokedEntry(99, NOW)], crl_number=4,
                        this_update=NOW, next_update=NOW + DAY)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .sign(leaf_signer.private_key, hashes.SHA256()))
    return {"ca": ca, "leaf": leaf, "crl": crl, "csr": csr}


def both_encodings(obj: x509.Certificate | x509.CertificateSigningRequest
                   | x509.CertificateRevocationList) -> list[bytes]:
    """DER and PEM of one object."""
    return [obj.public_bytes(DER), obj.public_bytes(PEM)]


def onboarding_messages() -> dict[str, bytes]:
    """The happy-path onboarding messages (tests/vectors/onboarding/happy_path.json)."""
    happy = json.loads((VECTORS / "onboarding" / "happy_path.json").read_text("utf-8"))
    return {name: text.encode() for name, text in happy["messages"].items()}


def envelopes() -> list[bytes]:
    """Valid signed-message envelopes (tests/vectors/envelope/valid.json)."""
    doc = json.loads((VECTORS / "envelope" / "valid.json").read_text("utf-8"))
    return [bytes.fromhex(v["envelope"]) for v in doc["vectors"]]


def voucher() -> bytes:
    """A signed voucher."""
    signer = _Signer()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "maker")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(signer.public_key).serial_number(1)
            .not_valid_before(NOW).not_valid_after(NOW + DAY)
            .sign(signer.private_key, hashes.SHA256()))
    claims = VoucherClaims(manufacturer="acme", serial="SN-1", vendor_id="acme",
                           product_id="p1", factory_spki_sha256="ab" * 32, owner="fleet",
                           owner_spki_sha256="cd" * 32, created_at=NOW)
    return sign_voucher(claims, signer, cert.public_bytes(DER))


def hardware_profiles() -> list[bytes]:
    """The example hardware profiles (examples/hardware/*.yaml)."""
    return [p.read_bytes() for p in sorted((ROOT / "examples" / "hardware").glob("*.yaml"))]
