"""Property tests for the X.509 parse boundary: arbitrary or mutated bytes raise only InputError,
and what we issue survives PEM/DER round trips."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotrust.core import pki
from iotrust.core.ids import new_device_id
from iotrust.core.pki import _encoding
from iotrust.errors import InputError, IotrustError

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)

_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_LEAF_KEY = ec.generate_private_key(ec.SECP256R1())


class _Signer:
    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


_CA_SIGNER = _Signer(_CA_KEY)
_CA = pki.build_root_ca(_CA_SIGNER, "Property Root", "Acme", NOW - DAY, timedelta(days=3650))
_CONTEXT = pki.IssuingContext.from_ca(_CA, _CA_SIGNER, crl_url="http://localhost/crl")
_LEAF = _CONTEXT.issue_device(
    device_id=new_device_id(b"\x07" * 16),
    public_key=_LEAF_KEY.public_key(),
    serial_number=99,
    not_before=NOW,
    lifetime=DAY,
)
_CRL = pki.build_crl(
    _CA_SIGNER,
    _CA,
    [pki.RevokedEntry(99, NOW, x509.ReasonFlags.key_compromise), pki.RevokedEntry(5, NOW)],
    crl_number=4,
    this_update=NOW,
    next_update=NOW + DAY,
)
_CSR = (
    x509.CertificateSigningRequestBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
    .sign(_LEAF_KEY, hashes.SHA256())
)
DER = serialization.Encoding.DER
_SAMPLES: dict[str, bytes] = {
    "certificate": _LEAF.public_bytes(DER),
    "csr": _CSR.public_bytes(DER),
    "crl": _CRL.public_bytes(DER),
    "public_key": _LEAF_KEY.public_key().public_bytes(
        DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ),
}
_PEM_LABELS = {
    "certificate": "CERTIFICATE",
    "csr": "CERTIFICATE REQUEST",
    "crl": "X509 CRL",
    "public_key": "PUBLIC KEY",
}
_LOADERS: dict[str, Callable[[bytes], object]] = {
    "certificate": pki.load_certificate,
    "certificates": pki.load_certificates,
    "csr": pki.load_csr,
    "crl": pki.load_crl,
    "public_key": pki.load_public_key,
    "check_csr": pki.check_csr,
}
_KIND_OF_LOADER = {
    "certificate": "certificate",
    "certificates": "certificate",
    "csr": "csr",
    "crl": "crl",
    "public_key": "public_key",
    "check_csr": "csr",
}

_SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150)


def _only_input_error(loader: Callable[[bytes], object], data: bytes) -> None:
    try:
        loader(data)
    except InputError:
        pass
    except IotrustError as exc:  # check_csr may refuse with TrustError only via forbidden_spki
        raise AssertionError(f"unexpected {type(exc).__name__}: {exc.reason}") from exc


def _pem(label: str, body: bytes) -> bytes:
    lines = base64.encodebytes(body).decode("ascii")
    return f"-----BEGIN {label}-----\n{lines}-----END {label}-----\n".encode()


@st.composite
def _mutated(draw: st.DrawFn, kind: str) -> bytes:
    data = bytearray(_SAMPLES[kind])
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[position]
    return bytes(data)


@given(name=st.sampled_from(sorted(_LOADERS)), data=st.binary(max_size=4096))
@_SLOW
def test_arbitrary_bytes_raise_only_input_error(name: str, data: bytes) -> None:
    _only_input_error(_LOADERS[name], data)


@given(name=st.sampled_from(sorted(_LOADERS)), data=st.data())
@_SLOW
def test_mutated_encodings_raise_only_input_error(name: str, data: st.DataObject) -> None:
    kind = _KIND_OF_LOADER[name]
    mutated = data.draw(_mutated(kind))
    _only_input_error(_LOADERS[name], mutated)
    _only_input_error(_LOADERS[name], _pem(_PEM_LABELS[kind], mutated))


@given(
    name=st.sampled_from(sorted(_LOADERS)),
    body=st.binary(max_size=512),
    junk=st.binary(max_size=64),
)
@_SLOW
def test_pem_armour_with_arbitrary_contents(name: str, body: bytes, junk: bytes) -> None:
    label = _PEM_LABELS[_KIND_OF_LOADER[name]]
    _only_input_error(_LOADERS[name], _pem(label, body) + junk)


@given(value=st.binary(max_size=64))
@_SLOW
def test_factory_identity_reader_raises_only_input_error(value: bytes) -> None:
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
        .public_key(_LEAF_KEY.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.UnrecognizedExtension(pki.OID_DEVICE_CLASS, value), critical=False)
        .sign(_LEAF_KEY, hashes.SHA256())
    )
    try:
        identity = pki.read_factory_identity(cert)
    except InputError as exc:
        reason = exc.reason
    else:
        reason = "ok"
        assert f"{identity.vendor_id}:{identity.product_id}".encode() == value[2:]
    assert reason in {"ok", "factory_identity_invalid", "factory_identity_missing"}


@given(
    device_random=st.binary(min_size=16, max_size=16),
    serial=st.integers(1, pki.MAX_SERIAL_NUMBER),
    lifetime_s=st.integers(1, 825 * 86400),
)
@_SLOW
def test_device_certificate_round_trips(device_random: bytes, serial: int, lifetime_s: int) -> None:
    device_id = new_device_id(device_random)
    cert = _CONTEXT.issue_device(
        device_id=device_id,
        public_key=_LEAF_KEY.public_key(),
        serial_number=serial,
        not_before=NOW,
        lifetime=timedelta(seconds=lifetime_s),
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    der = cert.public_bytes(DER)
    from_pem = pki.load_certificate(pem)
    from_der = pki.load_certificate(der)
    assert from_pem == from_der == cert
    assert pki.load_certificate(from_pem.public_bytes(DER)).public_bytes(DER) == der
    assert from_der.serial_number == serial
    assert from_der.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device_id
    assert pki.verify_chain(from_der, [], [_CA], NOW) == [cert, _CA]


_IDS = st.from_regex(r"\A[0-9A-Za-z_-]{1,16}\Z")


@given(
    serial=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z"),
    vendor=_IDS,
    product=_IDS,
)
@_SLOW
def test_factory_identity_round_trips(serial: str, vendor: str, product: str) -> None:
    args = {
        "serial": serial,
        "manufacturer": "acme",
        "vendor_id": vendor,
        "product_id": product,
        "public_key": _LEAF_KEY.public_key(),
        "serial_number": 1,
        "not_before": NOW,
        "lifetime": DAY,
    }
    if "_" in serial:  # not a PrintableString: refused, never mis-encoded
        with pytest.raises(InputError, match="serialNumber"):
            _CONTEXT.issue_factory(**args)  # type: ignore[arg-type]
        return
    cert = _CONTEXT.issue_factory(**args)  # type: ignore[arg-type]
    reloaded = pki.load_certificate(cert.public_bytes(serialization.Encoding.PEM))
    identity = pki.read_factory_identity(reloaded)
    assert (identity.serial, identity.vendor_id, identity.product_id) == (serial, vendor, product)
    assert identity.spki_sha256 == pki.spki_sha256(_LEAF_KEY.public_key())


@given(
    serials=st.sets(st.integers(1, pki.MAX_SERIAL_NUMBER), max_size=20), probe=st.integers(1, 2**64)
)
@_SLOW
def test_crl_round_trips(serials: set[int], probe: int) -> None:
    crl = pki.build_crl(
        _CA_SIGNER,
        _CA,
        [pki.RevokedEntry(s, NOW) for s in serials],
        crl_number=len(serials),
        this_update=NOW,
        next_update=NOW + DAY,
    )
    for encoding in (serialization.Encoding.PEM, DER):
        reloaded = pki.load_crl(crl.public_bytes(encoding))
        pki.check_crl(reloaded, _CA, NOW)
        assert {entry.serial_number for entry in reloaded} == serials
        assert pki.is_revoked(reloaded, probe) == (probe in serials)


@given(text=st.text(max_size=40))
def test_der_utf8_string_round_trips(text: str) -> None:
    encoded = _encoding.der_utf8_string(text)
    if len(encoded) - 2 < 128:  # the reader only takes short-form strings
        assert _encoding.parse_der_utf8_string(encoded) == text


@given(data=st.binary(max_size=300))
def test_der_utf8_reader_raises_only_input_error(data: bytes) -> None:
    with contextlib.suppress(InputError):
        _encoding.parse_der_utf8_string(data)


@given(random20=st.binary(min_size=20, max_size=20))
def test_new_serial_numbers_are_in_range(random20: bytes) -> None:
    assert 0 < pki.new_serial_number(random20) <= pki.MAX_SERIAL_NUMBER
