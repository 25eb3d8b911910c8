"""Unit tests for the X.509 core: every profile's fields, every refusal with its reason."""

from __future__ import annotations

import hashlib
import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from iotrust.core import pki
from iotrust.core.ids import new_device_id
from iotrust.core.pki import _encoding
from iotrust.errors import InputError, TrustError
from iotrust.ports import HasPrivateKey, Signer

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
YEAR = timedelta(days=365)
CRL_URL = "http://127.0.0.1:8443/v1/crl/issuing.crl"


class SoftSigner:
    """An in-process key: takes the HasPrivateKey fast path."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self._key = key or ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


class ExternalSigner:
    """Only what a token offers: a public key and ``sign``. No private key in sight."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self.__key = key or ec.generate_private_key(ec.SECP256R1())
        self.calls = 0

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.__key.public_key()

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        return self.__key.sign(data, ec.ECDSA(hashes.SHA256()))


class LyingSigner(ExternalSigner):
    """Claims one public key but signs with another (a mis-wired key store)."""

    def __init__(self) -> None:
        super().__init__()
        self._other = ec.generate_private_key(ec.SECP256R1())

    def sign(self, data: bytes) -> bytes:
        return self._other.sign(data, ec.ECDSA(hashes.SHA256()))


def _reason(exc: pytest.ExceptionInfo[InputError] | pytest.ExceptionInfo[TrustError]) -> str:
    return exc.value.reason


def _ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _csr(
    key: object, hash_algorithm: hashes.HashAlgorithm | None = None, cn: str = "ignored"
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    csr = builder.sign(key, hash_algorithm)  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def root_signer() -> SoftSigner:
    return SoftSigner()


@pytest.fixture(scope="module")
def root(root_signer: SoftSigner) -> x509.Certificate:
    return pki.build_root_ca(root_signer, "Acme Root CA", "Acme", NOW - DAY, 10 * YEAR)


@pytest.fixture(scope="module")
def issuing_signer() -> SoftSigner:
    return SoftSigner()


@pytest.fixture(scope="module")
def issuing(
    root: x509.Certificate, root_signer: SoftSigner, issuing_signer: SoftSigner
) -> x509.Certificate:
    return pki.build_issuing_ca(
        root_signer, root, issuing_signer.public_key, "Acme Issuing CA", "Acme", NOW - DAY, 5 * YEAR
    )


@pytest.fixture(scope="module")
def context(issuing: x509.Certificate, issuing_signer: SoftSigner) -> pki.IssuingContext:
    return pki.IssuingContext.from_ca(issuing, issuing_signer, crl_url=CRL_URL)


@pytest.fixture(scope="module")
def device_id() -> str:
    return new_device_id(bytes(range(16)))


def _device(context: pki.IssuingContext, device_id: str, **overrides: object) -> x509.Certificate:
    args: dict[str, object] = {
        "device_id": device_id,
        "public_key": _new_key().public_key(),
        "serial_number": 4242,
        "not_before": NOW,
        "lifetime": 30 * DAY,
    }
    args.update(overrides)
    return context.issue_device(**args)  # type: ignore[arg-type]


# --- parse boundary -------------------------------------------------------------------------


class TestLoaders:
    def test_certificate_pem_and_der(self, root: x509.Certificate) -> None:
        pem = root.public_bytes(serialization.Encoding.PEM)
        der = root.public_bytes(serialization.Encoding.DER)
        assert pki.load_certificate(pem) == root
        assert pki.load_certificate(der) == root
        assert pki.load_certificate(b"\n  " + pem) == root

    @pytest.mark.parametrize(
        ("loader", "reason"),
        [
            (pki.load_certificate, "malformed_certificate"),
            (pki.load_certificates, "malformed_certificate"),
            (pki.load_csr, "malformed_csr"),
            (pki.load_crl, "malformed_crl"),
            (pki.load_public_key, "malformed_public_key"),
        ],
    )
    @pytest.mark.parametrize(
        "data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n", b"\x30\x03\x02\x01\x01"]
    )
    def test_garbage_is_input_error(self, loader: object, reason: str, data: bytes) -> None:
        with pytest.raises(InputError) as exc:
            loader(data)  # type: ignore[operator]
        assert exc.value.reason == reason

    @pytest.mark.parametrize(
        "loader",
        [
            pki.load_certificate,
            pki.load_certificates,
            pki.load_csr,
            pki.load_public_key,
            lambda data: pki.load_crl(data, max_bytes=pki.MAX_ENCODED_BYTES),
        ],
    )
    def test_too_large(self, loader: object) -> None:
        with pytest.raises(InputError) as exc:
            loader(b"\x30" * (pki.MAX_ENCODED_BYTES + 1))  # type: ignore[operator]
        assert exc.value.reason == "too_large"

    def test_crl_bound(self) -> None:
        with pytest.raises(InputError) as exc:
            pki.load_crl(b"\x30" * (pki.MAX_CRL_BYTES + 1))
        assert exc.value.reason == "too_large"

    def test_not_bytes_is_a_bug(self) -> None:
        with pytest.raises(TypeError):
            pki.load_certificate("-----BEGIN CERTIFICATE-----")  # type: ignore[arg-type]

    def test_bundle(self, root: x509.Certificate, issuing: x509.Certificate) -> None:
        bundle = issuing.public_bytes(serialization.Encoding.PEM) + root.public_bytes(
            serialization.Encoding.PEM
        )
        assert pki.load_certificates(bundle) == [issuing, root]
        assert pki.load_certificates(root.public_bytes(serialization.Encoding.DER)) == [root]

    def test_bundle_count_is_bounded(self, root: x509.Certificate) -> None:
        pem = root.public_bytes(serialization.Encoding.PEM)
        with pytest.raises(InputError) as exc:
            pki.load_certificates(pem * (pki.MAX_BUNDLE_CERTIFICATES + 1))
        assert exc.value.reason == "too_large"

    def test_certificate_with_malformed_extension_fails_at_the_boundary(
        self, root: x509.Certificate
    ) -> None:
        # A SKI extension whose value is not an OCTET STRING parses lazily in cryptography:
        # the loader must force it.
        key = _new_key()
        bad = (
            x509.CertificateBuilder()
            .subject_name(root.subject)
            .issuer_name(root.subject)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(NOW)
            .not_valid_after(NOW + DAY)
            .add_extension(
                x509.UnrecognizedExtension(x509.SubjectKeyIdentifier.oid, b"\x02\x01\x01"),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        with pytest.raises(InputError) as exc:
            pki.load_certificate(bad.public_bytes(serialization.Encoding.DER))
        assert exc.value.reason == "malformed_certificate"

    def test_public_key_pem_and_der(self) -> None:
        public = _new_key().public_key()
        for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
            data = public.public_bytes(encoding, serialization.PublicFormat.SubjectPublicKeyInfo)
            assert pki.load_public_key(data) == public

    def test_csr_and_crl_pem_and_der(
        self, issuing: x509.Certificate, issuing_signer: SoftSigner
    ) -> None:
        csr = x509.load_der_x509_csr(_csr(_new_key(), hashes.SHA256()))
        crl = pki.build_crl(
            issuing_signer, issuing, [], crl_number=1, this_update=NOW, next_update=NOW + DAY
        )
        for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
            assert pki.load_csr(csr.public_bytes(encoding)) == csr
            assert pki.load_crl(crl.public_bytes(encoding)) == crl

    def test_spki_sha256(self) -> None:
        public = _new_key().public_key()
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        fingerprint = pki.spki_sha256(public)
        assert fingerprint == hashlib.sha256(der).hexdigest()
        assert fingerprint == fingerprint.lower()
        assert len(fingerprint) == 64


# --- the DER encoder and sign_builder ---------------------------------------------------------


class TestSigning:
    @pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 65535, 65536])
    def test_der_lengths(self, size: int) -> None:
        encoded = _encoding.der_tlv(0x04, b"\xaa" * size)
        if size < 128:
            assert encoded[:2] == bytes((0x04, size))
        else:
            octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
            assert encoded[1] == 0x80 | len(octets)
            assert encoded[2 : 2 + len(octets)] == octets
        assert encoded.endswith(b"\xaa" * size)

    def test_utf8_string_round_trip_and_refusals(self) -> None:
        assert _encoding.parse_der_utf8_string(_encoding.der_utf8_string("acme:x-1")) == "acme:x-1"
        for bad in (b"", b"\x0c", b"\x13\x01a", b"\x0c\x02a", b"\x0c\x01\xff", b"\x0c\x81\x01a"):
            with pytest.raises(InputError):
                _encoding.parse_der_utf8_string(bad)

    def test_fast_path(self, root_signer: SoftSigner, root: x509.Certificate) -> None:
        assert isinstance(root_signer, HasPrivateKey)
        root_signer.public_key.verify(
            root.signature, root.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256())
        )

    def test_external_signer_certificate(self) -> None:
        signer = ExternalSigner()
        assert isinstance(signer, Signer)
        assert not isinstance(signer, HasPrivateKey)
        root = pki.build_root_ca(signer, "Token Root", "Acme", NOW, YEAR)
        assert signer.calls == 1
        assert root.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
        signer.public_key.verify(
            root.signature, root.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256())
        )
        assert root.verify_directly_issued_by(root) is None
        # The DER we assembled is canonical: a re-encode by cryptography gives the same bytes.
        der = root.public_bytes(serialization.Encoding.DER)
        assert x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.DER) == der
        # ...and it goes through issuance with an external issuer too.
        context = pki.IssuingContext.from_ca(root, signer)
        leaf = context.issue_device(
            device_id=new_device_id(b"\x01" * 16),
            public_key=_new_key().public_key(),
            serial_number=7,
            not_before=NOW,
            lifetime=DAY,
        )
        leaf.verify_directly_issued_by(root)

    def test_external_signer_crl(self) -> None:
        signer = ExternalSigner()
        root = pki.build_root_ca(signer, "Token Root", "Acme", NOW, YEAR)
        crl = pki.build_crl(
            signer,
            root,
            [pki.RevokedEntry(99, NOW)],
            crl_number=3,
            this_update=NOW,
            next_update=NOW + DAY,
        )
        assert crl.is_signature_valid(signer.public_key)
        pki.check_crl(crl, root, NOW)
        assert pki.is_revoked(crl, 99)

    def test_external_signer_large_crl_uses_long_lengths(self) -> None:
        # > 64 KiB of tbsCertList: the outer SEQUENCE needs a three-octet long-form length,
        # and cryptography (a real DER parser) must accept what we assembled.
        signer = ExternalSigner()
        root = pki.build_root_ca(signer, "Token Root", "Acme", NOW, YEAR)
        entries = [pki.RevokedEntry(n, NOW) for n in range(1, 3501)]
        crl = pki.build_crl(
            signer, root, entries, crl_number=1, this_update=NOW, next_update=NOW + DAY
        )
        der = crl.public_bytes(serialization.Encoding.DER)
        assert len(der) > 65536
        assert der[1] == 0x83
        assert pki.load_crl(der).is_signature_valid(signer.public_key)
        assert pki.is_revoked(crl, 3500)

    def test_external_signer_that_lies_is_a_runtime_error(self) -> None:
        with pytest.raises(RuntimeError):
            pki.build_root_ca(LyingSigner(), "Broken Root", "Acme", NOW, YEAR)

    def test_sign_builder_directly(self) -> None:
        signer = ExternalSigner()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "direct")])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(signer.public_key)
            .serial_number(5)
            .not_valid_before(NOW)
            .not_valid_after(NOW + DAY)
        )
        cert = pki.sign_builder(builder, signer)
        assert isinstance(cert, x509.Certificate)
        with pytest.raises(InvalidSignature):
            _new_key().public_key().verify(
                cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256())
            )


# --- profiles ----------------------------------------------------------------------------------


class TestProfiles:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"is_ca": False, "path_length": 0},
            {"is_ca": True, "path_length": None},
            {"is_ca": True, "path_length": 9},
            {"is_ca": True, "path_length": 0, "key_usage": frozenset({"digital_signature"})},
            {"key_usage": frozenset({"key_cert_sign"})},
            {"key_usage": frozenset()},
            {"key_usage": frozenset({"sign_everything"})},
            {"max_lifetime": timedelta(0)},
            {"max_lifetime": timedelta(days=100 * 366)},
        ],
    )
    def test_inconsistent_profiles_cannot_exist(self, kwargs: dict[str, object]) -> None:
        base: dict[str, object] = {
            "name": "t",
            "is_ca": False,
            "path_length": None,
            "key_usage": frozenset({"digital_signature"}),
            "extended_key_usage": (),
            "max_lifetime": YEAR,
        }
        base.update(kwargs)
        with pytest.raises(ValueError):
            pki.CertificateProfile(**base)  # type: ignore[arg-type]

    def test_profiles_are_frozen(self) -> None:
        with pytest.raises(AttributeError):
            pki.DEVICE.max_lifetime = YEAR * 100  # type: ignore[misc]

    @pytest.mark.parametrize("lifetime", [timedelta(0), -DAY, timedelta(days=826)])
    def test_lifetime_bounds(self, lifetime: timedelta) -> None:
        with pytest.raises(InputError) as exc:
            pki.DEVICE.not_after(NOW, lifetime)
        assert exc.value.reason == "invalid_lifetime"

    def test_naive_time_is_a_bug(self) -> None:
        with pytest.raises(TypeError):
            pki.DEVICE.not_after(datetime(2026, 1, 1), DAY)  # noqa: DTZ001

    def test_before_1950(self) -> None:
        with pytest.raises(InputError) as exc:
            pki.DEVICE.not_after(datetime(1949, 1, 1, tzinfo=UTC), DAY)
        assert exc.value.reason == "invalid_lifetime"

    def test_private_oids_share_the_uuid_arc(self) -> None:
        assert pki.IOTRUST_OID_ARC.startswith("2.25.")
        assert pki.OID_DEVICE_CLASS.dotted_string.startswith(pki.IOTRUST_OID_ARC + ".")
        assert pki.OID_VOUCHER_SIGNING.dotted_string.startswith(pki.IOTRUST_OID_ARC + ".")
        assert pki.OID_DEVICE_CLASS != pki.OID_VOUCHER_SIGNING

    def test_new_serial_number(self) -> None:
        assert pki.new_serial_number(b"\xff" * 20) == 2**159 - 1
        assert pki.new_serial_number(b"\x00" * 20) == 1
        assert 0 < pki.new_serial_number(bytes(range(20))) < 2**159
        with pytest.raises(TypeError):
            pki.new_serial_number(b"\x00" * 19)


# --- CA certificates ----------------------------------------------------------------------------


class TestCertificateAuthorities:
    def test_root_fields(self, root: x509.Certificate, root_signer: SoftSigner) -> None:
        assert root.subject == root.issuer
        assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Acme Root CA"
        assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Acme"
        constraints = _ext(root, x509.BasicConstraints)
        assert constraints.critical
        assert constraints.value == x509.BasicConstraints(ca=True, path_length=1)
        usage = _ext(root, x509.KeyUsage)
        assert usage.critical
        assert usage.value.key_cert_sign
        assert usage.value.crl_sign
        assert not usage.value.digital_signature  # type: ignore[attr-defined]
        assert _ext(
            root, x509.SubjectKeyIdentifier
        ).value == x509.SubjectKeyIdentifier.from_public_key(root_signer.public_key)
        assert root.public_key() == root_signer.public_key
        assert root.not_valid_after_utc - root.not_valid_before_utc == 10 * YEAR
        root.verify_directly_issued_by(root)

    def test_root_serial_is_derived_or_given(self, root_signer: SoftSigner) -> None:
        a = pki.build_root_ca(root_signer, "R", "Acme", NOW, YEAR)
        b = pki.build_root_ca(root_signer, "R", "Acme", NOW, YEAR)
        c = pki.build_root_ca(root_signer, "R", "Acme", NOW, YEAR, serial_number=77)
        assert a.serial_number == b.serial_number
        assert 0 < a.serial_number < 2**159
        assert c.serial_number == 77

    def test_root_refuses_weak_key(self) -> None:
        with pytest.raises(InputError) as exc:
            pki.build_root_ca(
                SoftSigner(ec.generate_private_key(ec.SECP384R1())), "R", "A", NOW, YEAR
            )
        assert exc.value.reason == "weak_key"

    @pytest.mark.parametrize("name", ["", " padded", "x" * 65, "line\nbreak"])
    def test_ca_names_are_checked(self, root_signer: SoftSigner, name: str) -> None:
        with pytest.raises(InputError) as exc:
            pki.build_root_ca(root_signer, name, "Acme", NOW, YEAR)
        assert exc.value.reason == "invalid_name"
        with pytest.raises(InputError) as exc:
            pki.build_root_ca(root_signer, "Root", name, NOW, YEAR)
        assert exc.value.reason == "invalid_name"

    def test_root_lifetime_bound(self, root_signer: SoftSigner) -> None:
        with pytest.raises(InputError) as exc:
            pki.build_root_ca(root_signer, "R", "A", NOW, timedelta(days=31 * 366))
        assert exc.value.reason == "invalid_lifetime"

    def test_issuing_fields(
        self, root: x509.Certificate, issuing: x509.Certificate, issuing_signer: SoftSigner
    ) -> None:
        assert issuing.issuer == root.subject
        assert _ext(issuing, x509.BasicConstraints).value == x509.BasicConstraints(
            ca=True, path_length=0
        )
        assert _ext(issuing, x509.BasicConstraints).critical
        assert _ext(issuing, x509.KeyUsage).critical
        aki = _ext(issuing, x509.AuthorityKeyIdentifier).value
        ski = _ext(root, x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest  # type: ignore[attr-defined]
        assert _ext(issuing, x509.SubjectKeyIdentifier).value == (
            x509.SubjectKeyIdentifier.from_public_key(issuing_signer.public_key)
        )
        with pytest.raises(x509.ExtensionNotFound):
            _ext(issuing, x509.CRLDistributionPoints)
        issuing.verify_directly_issued_by(root)

    def test_issuing_with_crl_url(self, root: x509.Certificate, root_signer: SoftSigner) -> None:
        cert = pki.build_issuing_ca(
            root_signer, root, _new_key().public_key(), "I", "Acme", NOW, YEAR, CRL_URL
        )
        points = _ext(cert, x509.CRLDistributionPoints).value
        assert points[0].full_name == [x509.UniformResourceIdentifier(CRL_URL)]  # type: ignore[index]

    def test_issuing_ca_cannot_certify_a_ca(
        self, issuing: x509.Certificate, issuing_signer: SoftSigner
    ) -> None:
        with pytest.raises(InputError) as exc:
            pki.build_issuing_ca(
                issuing_signer, issuing, _new_key().public_key(), "Sub", "Acme", NOW, YEAR
            )
        assert exc.value.reason == "path_length_exceeded"

    def test_issuing_refuses_weak_key(
        self, root: x509.Certificate, root_signer: SoftSigner
    ) -> None:
        with pytest.raises(InputError) as exc:
            pki.build_issuing_ca(
                root_signer,
                root,
                ec.generate_private_key(ec.SECP384R1()).public_key(),
                "I",
                "A",
                NOW,
                YEAR,
            )
        assert exc.value.reason == "weak_key"

    def test_context_refuses_a_leaf(self, context: pki.IssuingContext, device_id: str) -> None:
        key = _new_key()
        leaf = _device(context, device_id, public_key=key.public_key())
        with pytest.raises(InputError) as exc:
            pki.IssuingContext.from_ca(leaf, SoftSigner(key))
        assert exc.value.reason == "not_a_ca"

    def test_context_refuses_a_ca_without_key_cert_sign(self) -> None:
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")])
        odd = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(NOW)
            .not_valid_after(NOW + YEAR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        with pytest.raises(InputError) as exc:
            pki.IssuingContext.from_ca(odd, SoftSigner(key))
        assert exc.value.reason == "not_a_ca"

    def test_context_refuses_a_mismatched_signer(self, issuing: x509.Certificate) -> None:
        with pytest.raises(InputError) as exc:
            pki.IssuingContext.from_ca(issuing, SoftSigner())
        assert exc.value.reason == "ca_signer_mismatch"

    def test_context_refuses_a_bad_crl_url(
        self, issuing: x509.Certificate, issuing_signer: SoftSigner
    ) -> None:
        for url in ("ftp://x/crl", "http://has space/", "javascript:alert(1)"):
            with pytest.raises(InputError) as exc:
                pki.IssuingContext.from_ca(issuing, issuing_signer, crl_url=url)
            assert exc.value.reason == "invalid_crl_url"

    def test_context_is_frozen(self, context: pki.IssuingContext) -> None:
        with pytest.raises(AttributeError):
            context.crl_url = None  # type: ignore[misc]


# --- leaf profiles -----------------------------------------------------------------------------


class TestDeviceCertificate:
    def test_fields(
        self, context: pki.IssuingContext, issuing: x509.Certificate, device_id: str
    ) -> None:
        key = _new_key().public_key()
        cert = _device(context, device_id, public_key=key, serial_number=123456789)
        assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
        assert cert.issuer == issuing.subject
        assert cert.serial_number == 123456789
        assert cert.not_valid_before_utc == NOW
        assert cert.not_valid_after_utc == NOW + 30 * DAY
        assert cert.public_key() == key
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
        san = _ext(cert, x509.SubjectAlternativeName)
        assert not san.critical
        assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [  # type: ignore[attr-defined]
            f"urn:iotrust:device:{device_id}"
        ]
        eku = _ext(cert, x509.ExtendedKeyUsage)
        assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
        usage = _ext(cert, x509.KeyUsage)
        assert usage.critical
        assert usage.value == x509.KeyUsage(
            True, False, False, False, False, False, False, False, False
        )
        constraints = _ext(cert, x509.BasicConstraints)
        assert constraints.critical
        assert constraints.value == x509.BasicConstraints(ca=False, path_length=None)
        assert _ext(
            cert, x509.SubjectKeyIdentifier
        ).value == x509.SubjectKeyIdentifier.from_public_key(key)
        aki = _ext(cert, x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == _ext(issuing, x509.SubjectKeyIdentifier).value.digest  # type: ignore[attr-defined]
        points = _ext(cert, x509.CRLDistributionPoints).value
        assert points[0].full_name == [x509.UniformResourceIdentifier(CRL_URL)]  # type: ignore[index]
        cert.verify_directly_issued_by(issuing)
        # Our pre-encoded extensions are exactly what cryptography would have encoded.
        for extension in cert.extensions:
            if not isinstance(extension.value, x509.UnrecognizedExtension):
                assert extension.value.public_bytes()

    def test_crl_url_per_call_and_none(
        self, issuing: x509.Certificate, issuing_signer: SoftSigner, device_id: str
    ) -> None:
        plain = pki.IssuingContext.from_ca(issuing, issuing_signer)
        cert = _device(plain, device_id)
        with pytest.raises(x509.ExtensionNotFound):
            _ext(cert, x509.CRLDistributionPoints)
        other = "https://crl.example/other.crl"
        cert = _device(plain, device_id, crl_url=other)
        points = _ext(cert, x509.CRLDistributionPoints).value
        assert points[0].full_name == [x509.UniformResourceIdentifier(other)]  # type: ignore[index]

    def test_one_shot_function(
        self, issuing: x509.Certificate, issuing_signer: SoftSigner, device_id: str
    ) -> None:
        cert = pki.issue_device_certificate(
            issuing_signer,
            issuing,
            device_id=device_id,
            public_key=_new_key().public_key(),
            serial_number=9,
            not_before=NOW,
            lifetime=DAY,
            crl_url=CRL_URL,
        )
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device_id
        assert _ext(cert, x509.CRLDistributionPoints)

    @pytest.mark.parametrize("bad", ["admin@iotrust", "dev-short", "DEV-" + "a" * 26, ""])
    def test_refuses_a_bad_device_id(self, context: pki.IssuingContext, bad: str) -> None:
        with pytest.raises(InputError) as exc:
            _device(context, bad)
        assert exc.value.reason == "invalid_device_id"

    @pytest.mark.parametrize(
        "key",
        [
            ec.generate_private_key(ec.SECP384R1()).public_key(),
            ec.generate_private_key(ec.SECP256K1()).public_key(),
            ed25519.Ed25519PrivateKey.generate().public_key(),
        ],
    )
    def test_refuses_weak_keys(
        self, context: pki.IssuingContext, device_id: str, key: object
    ) -> None:
        with pytest.raises(InputError) as exc:
            _device(context, device_id, public_key=key)
        assert exc.value.reason == "weak_key"

    @pytest.mark.parametrize("serial", [0, -1, 2**159, True])
    def test_refuses_bad_serial_numbers(
        self, context: pki.IssuingContext, device_id: str, serial: int
    ) -> None:
        with pytest.raises(InputError) as exc:
            _device(context, device_id, serial_number=serial)
        assert exc.value.reason == "invalid_serial_number"

    def test_largest_serial_number(self, context: pki.IssuingContext, device_id: str) -> None:
        assert _device(context, device_id, serial_number=2**159 - 1).serial_number == 2**159 - 1

    def test_refuses_bad_lifetimes(self, context: pki.IssuingContext, device_id: str) -> None:
        for lifetime in (timedelta(0), timedelta(days=900)):
            with pytest.raises(InputError) as exc:
                _device(context, device_id, lifetime=lifetime)
            assert exc.value.reason == "invalid_lifetime"

    def test_refuses_to_outlive_the_issuer(
        self, context: pki.IssuingContext, issuing: x509.Certificate, device_id: str
    ) -> None:
        with pytest.raises(InputError) as exc:
            _device(
                context, device_id, not_before=issuing.not_valid_after_utc - DAY, lifetime=2 * DAY
            )
        assert exc.value.reason == "outlives_issuer"

    def test_non_utc_times_are_normalised(
        self, context: pki.IssuingContext, device_id: str
    ) -> None:
        from datetime import timezone  # noqa: PLC0415

        local = NOW.astimezone(timezone(timedelta(hours=5)))
        cert = _device(context, device_id, not_before=local)
        assert cert.not_valid_before_utc == NOW


class TestServiceCertificate:
    def test_fields(self, context: pki.IssuingContext, issuing: x509.Certificate) -> None:
        cert = context.issue_service(
            service_name="broker@iotrust",
            public_key=_new_key().public_key(),
            serial_number=5,
            not_before=NOW,
            lifetime=YEAR,
            dns_names=["localhost"],
            ip_addresses=["127.0.0.1", ipaddress.IPv6Address("::1")],
        )
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "broker@iotrust"
        eku = list(_ext(cert, x509.ExtendedKeyUsage).value)  # type: ignore[call-overload]
        assert eku == [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        san = _ext(cert, x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]  # type: ignore[attr-defined]
        assert san.get_values_for_type(x509.IPAddress) == [  # type: ignore[attr-defined]
            ipaddress.IPv4Address("127.0.0.1"),
            ipaddress.IPv6Address("::1"),
        ]
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [  # type: ignore[attr-defined]
            "urn:iotrust:service:broker@iotrust"
        ]
        assert _ext(cert, x509.BasicConstraints).value.ca is False  # type: ignore[attr-defined]
        cert.verify_directly_issued_by(issuing)

    def test_one_shot_without_san_extras(
        self, issuing: x509.Certificate, issuing_signer: SoftSigner
    ) -> None:
        cert = pki.issue_service_certificate(
            issuing_signer,
            issuing,
            service_name="ingest@iotrust",
            public_key=_new_key().public_key(),
            serial_number=6,
            not_before=NOW,
            lifetime=DAY,
        )
        assert _ext(cert, x509.SubjectAlternativeName)

    @pytest.mark.parametrize(
        ("overrides", "reason"),
        [
            ({"service_name": new_device_id(b"\x02" * 16)}, "invalid_service_name"),
            ({"service_name": "noat"}, "invalid_service_name"),
            ({"dns_names": ["*.example.com"]}, "invalid_dns_name"),
            ({"dns_names": ["UPPER.example"]}, "invalid_dns_name"),
            ({"ip_addresses": ["300.1.1.1"]}, "invalid_ip_address"),
            ({"dns_names": [f"h{i}.example" for i in range(16)]}, "too_large"),
            ({"public_key": ec.generate_private_key(ec.SECP384R1()).public_key()}, "weak_key"),
        ],
    )
    def test_refusals(
        self, context: pki.IssuingContext, overrides: dict[str, object], reason: str
    ) -> None:
        args: dict[str, object] = {
            "service_name": "broker@iotrust",
            "public_key": _new_key().public_key(),
            "serial_number": 5,
            "not_before": NOW,
            "lifetime": YEAR,
        }
        args.update(overrides)
        with pytest.raises(InputError) as exc:
            context.issue_service(**args)  # type: ignore[arg-type]
        assert exc.value.reason == reason


@pytest.fixture(scope="module")
def factory_ca() -> tuple[SoftSigner, x509.Certificate]:
    signer = SoftSigner()
    return signer, pki.build_root_ca(signer, "Acme Factory CA", "acme", NOW - DAY, 20 * YEAR)


def _factory(
    factory_ca: tuple[SoftSigner, x509.Certificate], **overrides: object
) -> x509.Certificate:
    signer, cert = factory_ca
    args: dict[str, object] = {
        "serial": "SN00000001",
        "manufacturer": "acme",
        "vendor_id": "acme-01",
        "product_id": "Sensor_2",
        "public_key": _new_key().public_key(),
        "serial_number": 11,
        "not_before": NOW,
        "lifetime": 15 * YEAR,
    }
    args.update(overrides)
    return pki.issue_factory_certificate(signer, cert, **args)  # type: ignore[arg-type]


class TestFactoryCertificate:
    def test_fields_and_identity(self, factory_ca: tuple[SoftSigner, x509.Certificate]) -> None:
        key = _new_key().public_key()
        cert = _factory(factory_ca, public_key=key)
        subject = cert.subject
        assert subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "SN00000001"
        assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "SN00000001"
        assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "acme"
        extension = cert.extensions.get_extension_for_oid(pki.OID_DEVICE_CLASS)
        assert not extension.critical
        assert extension.value.value == b"\x0c\x10acme-01:Sensor_2"  # type: ignore[attr-defined]
        with pytest.raises(x509.ExtensionNotFound):
            _ext(cert, x509.ExtendedKeyUsage)
        assert _ext(cert, x509.KeyUsage).value.digital_signature  # type: ignore[attr-defined]
        cert.verify_directly_issued_by(factory_ca[1])
        identity = pki.read_factory_identity(cert)
        assert identity == pki.FactoryIdentity(
            serial="SN00000001",
            manufacturer="acme",
            vendor_id="acme-01",
            product_id="Sensor_2",
            spki_sha256=pki.spki_sha256(key),
        )

    @pytest.mark.parametrize(
        ("overrides", "reason"),
        [
            ({"serial": "bad serial"}, "invalid_serial"),
            ({"serial": "SN_1"}, "invalid_serial"),  # valid serial, but not a PrintableString
            ({"manufacturer": "Acme Corp"}, "invalid_manufacturer"),
            ({"vendor_id": ""}, "invalid_vendor_id"),
            ({"vendor_id": "x" * 17}, "invalid_vendor_id"),
            ({"product_id": "a:b"}, "invalid_product_id"),
            ({"public_key": ec.generate_private_key(ec.SECP384R1()).public_key()}, "weak_key"),
            ({"lifetime": timedelta(days=51 * 366)}, "invalid_lifetime"),
        ],
    )
    def test_refusals(
        self,
        factory_ca: tuple[SoftSigner, x509.Certificate],
        overrides: dict[str, object],
        reason: str,
    ) -> None:
        with pytest.raises(InputError) as exc:
            _factory(factory_ca, **overrides)
        assert exc.value.reason == reason

    def test_check_vendor_product(self) -> None:
        assert pki.check_vendor_product("v", "p") == ("v", "p")
        with pytest.raises(InputError) as exc:
            pki.check_vendor_product("v", "p p")
        assert exc.value.reason == "invalid_product_id"

    def test_identity_missing_on_other_certificates(
        self, context: pki.IssuingContext, device_id: str, root: x509.Certificate
    ) -> None:
        for cert in (_device(context, device_id), root):
            with pytest.raises(InputError) as exc:
                pki.read_factory_identity(cert)
            assert exc.value.reason == "factory_identity_missing"

    @pytest.mark.parametrize(
        "value", [b"\x0c\x05nocol", b"\x13\x03a:b", b"\x0c\x03a:b\x00", b"\x0c\x05a:b c"]
    )
    def test_identity_invalid(self, value: bytes) -> None:
        key = _new_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN1"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(NOW)
            .not_valid_after(NOW + DAY)
            .add_extension(x509.UnrecognizedExtension(pki.OID_DEVICE_CLASS, value), critical=False)
            .sign(key, hashes.SHA256())
        )
        with pytest.raises(InputError) as exc:
            pki.read_factory_identity(cert)
        assert exc.value.reason == "factory_identity_invalid"


class TestVoucherSigner:
    def test_fields(self, root: x509.Certificate, root_signer: SoftSigner) -> None:
        cert = pki.issue_voucher_signer_certificate(
            root_signer,
            root,
            _new_key().public_key(),
            common_name="Acme Voucher Signer",
            organization="Acme",
            not_before=NOW,
            lifetime=5 * YEAR,
            serial_number=31337,
        )
        assert cert.serial_number == 31337
        assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [pki.OID_VOUCHER_SIGNING]  # type: ignore[call-overload]
        usage = _ext(cert, x509.KeyUsage)
        assert usage.critical
        assert usage.value.digital_signature  # type: ignore[attr-defined]
        assert not usage.value.key_cert_sign  # type: ignore[attr-defined]
        assert _ext(cert, x509.BasicConstraints).value.ca is False  # type: ignore[attr-defined]
        assert _ext(cert, x509.AuthorityKeyIdentifier)
        assert pki.verify_chain(cert, [], [root], NOW + DAY) == [cert, root]


# --- CSR ---------------------------------------------------------------------------------------


class TestCheckCsr:
    def test_accepts_p256_sha256_in_every_form(self) -> None:
        key = _new_key()
        der = _csr(key, hashes.SHA256())
        csr = x509.load_der_x509_csr(der)
        pem = csr.public_bytes(serialization.Encoding.PEM)
        for form in (der, pem, csr):
            assert pki.check_csr(form) == key.public_key()

    def test_subject_is_ignored(self, context: pki.IssuingContext, device_id: str) -> None:
        public = pki.check_csr(_csr(_new_key(), hashes.SHA256(), cn="admin@iotrust"))
        cert = _device(context, device_id, public_key=public)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device_id

    @pytest.mark.parametrize(
        "key",
        [
            ec.generate_private_key(ec.SECP384R1()),
            ec.generate_private_key(ec.SECP256K1()),
        ],
    )
    def test_weak_ec_keys(self, key: ec.EllipticCurvePrivateKey) -> None:
        with pytest.raises(InputError) as exc:
            pki.check_csr(_csr(key, hashes.SHA256()))
        assert exc.value.reason == "weak_key"

    def test_ed25519_key(self) -> None:
        with pytest.raises(InputError) as exc:
            pki.check_csr(_csr(ed25519.Ed25519PrivateKey.generate()))
        assert exc.value.reason == "weak_key"

    def test_other_hash(self) -> None:
        with pytest.raises(InputError) as exc:
            pki.check_csr(_csr(_new_key(), hashes.SHA384()))
        assert exc.value.reason == "csr_invalid"

    def test_bad_signature(self) -> None:
        csr = x509.load_der_x509_csr(_csr(_new_key(), hashes.SHA256()))
        # Same request body, signature from another key: proof of possession fails.
        other = _new_key().sign(csr.tbs_certrequest_bytes, ec.ECDSA(hashes.SHA256()))
        forged = _encoding.der_signed(
            csr.tbs_certrequest_bytes, bytes.fromhex("300a06082a8648ce3d040302"), other
        )
        with pytest.raises(InputError) as exc:
            pki.check_csr(forged)
        assert exc.value.reason == "csr_invalid"
        with pytest.raises(InputError) as exc:
            pki.check_csr(x509.load_der_x509_csr(forged))
        assert exc.value.reason == "csr_invalid"

    @pytest.mark.parametrize("data", [b"", b"junk", b"\x30\x00"])
    def test_malformed(self, data: bytes) -> None:
        with pytest.raises(InputError) as exc:
            pki.check_csr(data)
        assert exc.value.reason == "csr_invalid"

    def test_too_large(self) -> None:
        with pytest.raises(InputError) as exc:
            pki.check_csr(b"\x30" * (pki.MAX_ENCODED_BYTES + 1))
        assert exc.value.reason == "too_large"

    def test_key_reuse(self) -> None:
        key = _new_key()
        data = _csr(key, hashes.SHA256())
        assert pki.check_csr(data, forbidden_spki={"0" * 64}) == key.public_key()
        with pytest.raises(TrustError) as exc:
            pki.check_csr(data, forbidden_spki={pki.spki_sha256(key.public_key())})
        assert exc.value.reason == "csr_key_reused"


# --- CRL ---------------------------------------------------------------------------------------


class TestCrl:
    def test_fields(self, issuing: x509.Certificate, issuing_signer: SoftSigner) -> None:
        entries = [
            pki.RevokedEntry(10, NOW - DAY, x509.ReasonFlags.key_compromise),
            pki.RevokedEntry(2**159 - 1, NOW - DAY),
        ]
        crl = pki.build_crl(
            issuing_signer, issuing, entries, crl_number=7, this_update=NOW, next_update=NOW + DAY
        )
        assert crl.issuer == issuing.subject
        assert crl.last_update_utc == NOW
        assert crl.next_update_utc == NOW + DAY
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == _ext(issuing, x509.SubjectKeyIdentifier).value.digest  # type: ignore[attr-defined]
        entry = crl.get_revoked_certificate_by_serial_number(10)
        assert entry is not None
        assert entry.revocation_date_utc == NOW - DAY
        assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
            x509.ReasonFlags.key_compromise
        )
        assert pki.is_revoked(crl, 10)
        assert pki.is_revoked(crl, 2**159 - 1)
        assert not pki.is_revoked(crl, 11)
        pki.check_crl(crl, issuing, NOW)
        pki.check_crl(crl, issuing, NOW + DAY)

    def test_expired_entries_leave_after_the_margin(
        self, issuing: x509.Certificate, issuing_signer: SoftSigner
    ) -> None:
        margin = pki.EXPIRED_ENTRY_MARGIN
        assert margin >= timedelta(days=7)  # at least one whole CRL lifetime
        entries = [
            pki.RevokedEntry(1, NOW - YEAR),  # no notAfter known: listed for ever
            pki.RevokedEntry(2, NOW - YEAR, not_after=NOW + DAY),  # still valid
            pki.RevokedEntry(3, NOW - YEAR, not_after=NOW - DAY),  # expired, within the margin
            pki.RevokedEntry(4, NOW - YEAR, not_after=NOW - margin),  # exactly at the cutoff
            pki.RevokedEntry(5, NOW - YEAR, not_after=NOW - margin - timedelta(seconds=1)),
        ]
        crl = pki.build_crl(
            issuing_signer, issuing, entries, crl_number=1, this_update=NOW, next_update=NOW + DAY
        )
        assert {e.serial_number for e in crl} == {1, 2, 3, 4}
        assert pki.expired_entry_cutoff(NOW) == NOW - margin
        kept = pki.build_crl(
            issuing_signer, issuing, entries, crl_number=2, this_update=NOW,
            next_update=NOW + DAY, expired_entry_margin=YEAR,
        )
        assert len(kept) == 5
        with pytest.raises(TypeError):
            pki.RevokedEntry(6, NOW, not_after=NOW.replace(tzinfo=None))
        with pytest.raises(ValueError):
            pki.expired_entry_cutoff(NOW, -DAY)

    def test_remembered_entries_never_go_stale(
        self, issuing: x509.Certificate, issuing_signer: SoftSigner
    ) -> None:
        first = pki.build_crl(
            issuing_signer, issuing, [pki.RevokedEntry(77, NOW - DAY)], crl_number=1,
            this_update=NOW, next_update=NOW + DAY,
        )
        # the same serial with another date and a reason: built afresh, not taken from memory
        changed = pki.RevokedEntry(77, NOW - YEAR, x509.ReasonFlags.key_compromise)
        second = pki.build_crl(
            issuing_signer, issuing, [changed], crl_number=2, this_update=NOW,
            next_update=NOW + DAY,
        )
        (a,), (b,) = list(first), list(second)
        assert a.revocation_date_utc == NOW - DAY
        assert b.revocation_date_utc == NOW - YEAR
        assert b.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
            x509.ReasonFlags.key_compromise
        )
        again = pki.build_crl(
            issuing_signer, issuing, [changed], crl_number=3, this_update=NOW,
            next_update=NOW + DAY,
        )
        assert next(iter(again)).revocation_date_utc == NOW - YEAR

    def _crl(
        self, signer: Signer, ca: x509.Certificate, **kw: object
    ) -> x509.CertificateRevocationList:
        args: dict[str, object] = {"crl_number": 1, "this_update": NOW, "next_update": NOW + DAY}
        args.update(kw)
        return pki.build_crl(signer, ca, [], **args)  # type: ignore[arg-type]

    def test_expired(self, issuing: x509.Certificate, issuing_signer: SoftSigner) -> None:
        crl = self._crl(issuing_signer, issuing)
        with pytest.raises(TrustError) as exc:
            pki.check_crl(crl, issuing, NOW + DAY + timedelta(seconds=1))
        assert exc.value.reason == "crl_expired"

    def test_not_yet_valid(self, issuing: x509.Certificate, issuing_signer: SoftSigner) -> None:
        crl = self._crl(issuing_signer, issuing)
        with pytest.raises(TrustError) as exc:
            pki.check_crl(crl, issuing, NOW - timedelta(seconds=1))
        assert exc.value.reason == "crl_invalid"

    def test_other_ca(
        self, issuing: x509.Certificate, issuing_signer: SoftSigner, root: x509.Certificate
    ) -> None:
        crl = self._crl(issuing_signer, issuing)
        with pytest.raises(TrustError) as exc:
            pki.check_crl(crl, root, NOW)
        assert exc.value.reason == "crl_invalid"

    def test_forged_signature(self, issuing: x509.Certificate) -> None:
        # An impostor CA with the very same name signs a CRL: the signature check catches it.
        impostor = SoftSigner()
        twin = pki.build_root_ca(impostor, "Acme Issuing CA", "Acme", NOW - DAY, YEAR)
        assert twin.subject == issuing.subject
        crl = self._crl(impostor, twin)
        with pytest.raises(TrustError) as exc:
            pki.check_crl(crl, issuing, NOW)
        assert exc.value.reason == "crl_invalid"

    def test_no_next_update(self, issuing: x509.Certificate, issuing_signer: SoftSigner) -> None:
        builder = (
            x509.CertificateRevocationListBuilder().issuer_name(issuing.subject).last_update(NOW)
        )
        with pytest.raises(ValueError):  # cryptography refuses; ours always sets it
            builder.sign(issuing_signer.private_key, hashes.SHA256())

    def test_ca_without_crl_sign(self) -> None:
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no crl")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(NOW - DAY)
            .not_valid_after(NOW + YEAR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, False, False, False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(name)
            .last_update(NOW)
            .next_update(NOW + DAY)
            .sign(key, hashes.SHA256())
        )
        with pytest.raises(TrustError) as exc:
            pki.check_crl(crl, ca, NOW)
        assert exc.value.reason == "crl_invalid"

    @pytest.mark.parametrize(
        ("kw", "reason"),
        [
            ({"next_update": NOW}, "invalid_crl_window"),
            ({"next_update": NOW - DAY}, "invalid_crl_window"),
            ({"crl_number": -1}, "invalid_crl_number"),
            ({"crl_number": 2**159}, "invalid_crl_number"),
        ],
    )
    def test_build_refusals(
        self,
        issuing: x509.Certificate,
        issuing_signer: SoftSigner,
        kw: dict[str, object],
        reason: str,
    ) -> None:
        with pytest.raises(InputError) as exc:
            self._crl(issuing_signer, issuing, **kw)
        assert exc.value.reason == reason

    def test_duplicate_serial(self, issuing: x509.Certificate, issuing_signer: SoftSigner) -> None:
        with pytest.raises(InputError) as exc:
            pki.build_crl(
                issuing_signer,
                issuing,
                [pki.RevokedEntry(5, NOW), pki.RevokedEntry(5, NOW - DAY)],
                crl_number=1,
                this_update=NOW,
                next_update=NOW + DAY,
            )
        assert exc.value.reason == "duplicate_serial"

    def test_entry_invariants(self) -> None:
        with pytest.raises(InputError) as exc:
            pki.RevokedEntry(0, NOW)
        assert exc.value.reason == "invalid_serial_number"
        with pytest.raises(InputError) as exc:
            pki.RevokedEntry(1, NOW, x509.ReasonFlags.remove_from_crl)
        assert exc.value.reason == "invalid_crl_entry"
        with pytest.raises(TypeError):
            pki.RevokedEntry(1, datetime(2026, 1, 1))  # noqa: DTZ001
        with pytest.raises(TypeError):
            pki.RevokedEntry(1, NOW, "keyCompromise")  # type: ignore[arg-type]

    def test_crl_by_a_leaf_is_refused(self, context: pki.IssuingContext, device_id: str) -> None:
        key = _new_key()
        leaf = _device(context, device_id, public_key=key.public_key())
        with pytest.raises(InputError) as exc:
            self._crl(SoftSigner(key), leaf)
        assert exc.value.reason == "not_a_ca"


# --- chain validation --------------------------------------------------------------------------


def _manual(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name,
    subject: str,
    *,
    ca: bool | None = None,
    path_length: int | None = None,
    critical_unknown: bool = False,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = key or _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + YEAR)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length), critical=True
        )
    if critical_unknown:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
            critical=True,
        )
    return key, builder.sign(issuer_key, hashes.SHA256())


class TestVerifyChain:
    def test_valid_path(
        self,
        context: pki.IssuingContext,
        issuing: x509.Certificate,
        root: x509.Certificate,
        device_id: str,
    ) -> None:
        leaf = _device(context, device_id)
        decoy = pki.build_root_ca(SoftSigner(), "Decoy", "Acme", NOW - DAY, YEAR)
        path = pki.verify_chain(leaf, [decoy, issuing], [decoy, root], NOW + DAY)
        assert path == [leaf, issuing, root]

    def test_anchor_itself(self, root: x509.Certificate) -> None:
        assert pki.verify_chain(root, [], [root], NOW) == [root]

    def test_no_anchor(
        self, context: pki.IssuingContext, issuing: x509.Certificate, device_id: str
    ) -> None:
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(_device(context, device_id), [issuing], [], NOW)
        assert exc.value.reason == "chain_invalid"

    def test_missing_intermediate(
        self, context: pki.IssuingContext, root: x509.Certificate, device_id: str
    ) -> None:
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(_device(context, device_id), [], [root], NOW + DAY)
        assert exc.value.reason == "chain_invalid"

    def test_wrong_anchor(
        self, context: pki.IssuingContext, issuing: x509.Certificate, device_id: str
    ) -> None:
        other = pki.build_root_ca(SoftSigner(), "Acme Root CA", "Acme", NOW - DAY, YEAR)
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(_device(context, device_id), [issuing], [other], NOW + DAY)
        assert exc.value.reason == "chain_invalid"

    def test_forged_leaf(self, issuing: x509.Certificate, root: x509.Certificate) -> None:
        # Right issuer name, wrong key.
        _, forged = _manual(_new_key(), issuing.subject, "forged", ca=False)
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(forged, [issuing], [root], NOW)
        assert exc.value.reason == "chain_invalid"

    def test_expired_and_not_yet_valid(
        self,
        context: pki.IssuingContext,
        issuing: x509.Certificate,
        root: x509.Certificate,
        device_id: str,
    ) -> None:
        leaf = _device(context, device_id, lifetime=DAY)
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [issuing], [root], NOW + 2 * DAY)
        assert exc.value.reason == "certificate_expired"
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [issuing], [root], NOW - timedelta(seconds=1))
        assert exc.value.reason == "chain_invalid"

    def test_expired_anchor(
        self,
        context: pki.IssuingContext,
        issuing: x509.Certificate,
        root: x509.Certificate,
        device_id: str,
    ) -> None:
        leaf = _device(context, device_id, lifetime=DAY)
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [issuing], [root], root.not_valid_after_utc + DAY)
        assert exc.value.reason == "certificate_expired"

    def test_naive_time_is_a_bug(self, root: x509.Certificate) -> None:
        with pytest.raises(TypeError):
            pki.verify_chain(root, [], [root], datetime(2026, 1, 1))  # noqa: DTZ001

    def test_issuer_not_a_ca(self, root: x509.Certificate, root_signer: SoftSigner) -> None:
        mid_key, mid = _manual(root_signer.private_key, root.subject, "not a ca", ca=False)
        _, leaf = _manual(mid_key, mid.subject, "leaf")
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [mid], [root], NOW)
        assert exc.value.reason == "chain_invalid"
        mid_key, mid = _manual(root_signer.private_key, root.subject, "no constraints")
        _, leaf = _manual(mid_key, mid.subject, "leaf")
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [mid], [root], NOW)
        assert exc.value.reason == "chain_invalid"

    def test_path_length(
        self, issuing: x509.Certificate, issuing_signer: SoftSigner, root: x509.Certificate
    ) -> None:
        # issuing CA has pathlen 0: a CA below it is fine as a leaf, but not as an issuer.
        sub_key, sub = _manual(issuing_signer.private_key, issuing.subject, "sub", ca=True)
        assert pki.verify_chain(sub, [issuing], [root], NOW) == [sub, issuing, root]
        _, leaf = _manual(sub_key, sub.subject, "leaf", ca=False)
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [issuing, sub], [root], NOW)
        assert exc.value.reason == "chain_invalid"

    def test_unknown_critical_extension(
        self, issuing: x509.Certificate, issuing_signer: SoftSigner, root: x509.Certificate
    ) -> None:
        _, leaf = _manual(issuing_signer.private_key, issuing.subject, "odd", critical_unknown=True)
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [issuing], [root], NOW)
        assert exc.value.reason == "chain_invalid"

    def test_too_many_intermediates(self, root: x509.Certificate) -> None:
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(root, [root] * 17, [root], NOW)
        assert exc.value.reason == "chain_invalid"

    def test_loop_is_bounded(self) -> None:
        # Two CAs that certify each other, neither anchored: path building must stop.
        key_a, key_b = _new_key(), _new_key()
        name_a = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")])
        name_b = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "b")])
        _, a = _manual(key_b, name_b, "a", ca=True, key=key_a)
        _, b = _manual(key_a, name_a, "b", ca=True, key=key_b)
        _, leaf = _manual(key_a, name_a, "leaf")
        anchor = pki.build_root_ca(SoftSigner(), "Elsewhere", "Acme", NOW - DAY, YEAR)
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [a, b, a, b], [anchor], NOW)
        assert exc.value.reason == "chain_invalid"

    def test_factory_chain_without_san_or_eku(
        self, factory_ca: tuple[SoftSigner, x509.Certificate]
    ) -> None:
        cert = _factory(factory_ca)
        assert pki.verify_chain(cert, [], [factory_ca[1]], NOW + DAY) == [cert, factory_ca[1]]


class TestRevocationInChains:
    def _crl(
        self, signer: Signer, ca: x509.Certificate, serials: list[int], *, at: datetime = NOW
    ) -> x509.CertificateRevocationList:
        return pki.build_crl(
            signer,
            ca,
            [pki.RevokedEntry(s, at) for s in serials],
            crl_number=1,
            this_update=at,
            next_update=at + DAY,
        )

    def test_revoked(
        self,
        context: pki.IssuingContext,
        issuing: x509.Certificate,
        issuing_signer: SoftSigner,
        root: x509.Certificate,
        device_id: str,
    ) -> None:
        leaf = _device(context, device_id, serial_number=555)
        clean = self._crl(issuing_signer, issuing, [1, 2])
        assert pki.verify_chain(leaf, [issuing], [root], NOW, crls=[clean], require_crl=True)
        revoked = self._crl(issuing_signer, issuing, [555])
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [issuing], [root], NOW, crls=[revoked])
        assert exc.value.reason == "certificate_revoked"

    def test_newest_crl_wins(
        self,
        context: pki.IssuingContext,
        issuing: x509.Certificate,
        issuing_signer: SoftSigner,
        root: x509.Certificate,
        device_id: str,
    ) -> None:
        leaf = _device(context, device_id, serial_number=556)
        old = self._crl(issuing_signer, issuing, [], at=NOW - timedelta(hours=2))
        new = self._crl(issuing_signer, issuing, [556], at=NOW - timedelta(hours=1))
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [issuing], [root], NOW, crls=[new, old])
        assert exc.value.reason == "certificate_revoked"

    def test_missing_crl(
        self,
        context: pki.IssuingContext,
        issuing: x509.Certificate,
        root: x509.Certificate,
        root_signer: SoftSigner,
        device_id: str,
    ) -> None:
        leaf = _device(context, device_id)
        root_crl = self._crl(root_signer, root, [])
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [issuing], [root], NOW, crls=[root_crl], require_crl=True)
        assert exc.value.reason == "crl_missing"
        # Without require_crl, the absent CRL of the issuing CA is tolerated.
        assert pki.verify_chain(leaf, [issuing], [root], NOW, crls=[root_crl])

    def test_revoked_intermediate(
        self,
        issuing: x509.Certificate,
        root: x509.Certificate,
        root_signer: SoftSigner,
        issuing_signer: SoftSigner,
        device_id: str,
    ) -> None:
        leaf = _device(pki.IssuingContext.from_ca(issuing, issuing_signer), device_id)
        crls = [
            self._crl(root_signer, root, [issuing.serial_number]),
            self._crl(issuing_signer, issuing, []),
        ]
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [issuing], [root], NOW, crls=crls, require_crl=True)
        assert exc.value.reason == "certificate_revoked"

    def test_expired_crl_fails_closed(
        self,
        context: pki.IssuingContext,
        issuing: x509.Certificate,
        root: x509.Certificate,
        issuing_signer: SoftSigner,
        device_id: str,
    ) -> None:
        leaf = _device(context, device_id)
        crl = self._crl(issuing_signer, issuing, [])
        for require in (True, False):
            with pytest.raises(TrustError) as exc:
                pki.verify_chain(
                    leaf, [issuing], [root], NOW + 2 * DAY, crls=[crl], require_crl=require
                )
            assert exc.value.reason == "crl_expired"

    def test_forged_crl_fails_closed(
        self,
        context: pki.IssuingContext,
        issuing: x509.Certificate,
        root: x509.Certificate,
        device_id: str,
    ) -> None:
        leaf = _device(context, device_id)
        impostor = SoftSigner()
        twin = pki.build_root_ca(impostor, "Acme Issuing CA", "Acme", NOW - DAY, YEAR)
        crl = self._crl(impostor, twin, [])
        with pytest.raises(TrustError) as exc:
            pki.verify_chain(leaf, [issuing], [root], NOW, crls=[crl], require_crl=True)
        assert exc.value.reason == "crl_invalid"
