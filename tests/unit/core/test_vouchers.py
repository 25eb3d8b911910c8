"""Vouchers: wire form, decoding refusals, verification refusals with their exact reasons."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotrust.core.canonical import canonical_json
from iotrust.core.vouchers import (
    MAX_VOUCHER_BYTES,
    OID_VOUCHER_SIGNING,
    SignedVoucher,
    VoucherClaims,
    check_voucher_matches,
    decode_voucher,
    encode_claims,
    sign_voucher,
    spki_sha256_of,
    verify_voucher,
    vouchers_diverge,
)
from iotrust.errors import InputError, TrustError
from iotrust.ports import Signer

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
FACTORY_SPKI = "ab" * 32
OWNER_SPKI = "cd" * 32


class KeySigner:
    """A real in-memory P-256 signer implementing the Signer port."""

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


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_root(cn: str = "Acme Manufacturer Root", *, key=None, days: int = 3650) -> tuple:
    key = key or ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0 - timedelta(days=1))
        .not_valid_after(T0 + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_signer_cert(
    root_key,
    root_cert: x509.Certificate,
    public_key,
    *,
    digital_signature: bool = True,
    key_usage: bool = True,
    ca: bool = False,
    eku: tuple[x509.ObjectIdentifier, ...] | None = (OID_VOUCHER_SIGNING,),
    not_before: datetime = T0 - timedelta(days=1),
    not_after: datetime = T0 + timedelta(days=365),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("Acme Voucher Signer"))
        .issuer_name(root_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=not digital_signature,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(root_key, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def make_claims(**changes) -> VoucherClaims:
    fields = {
        "manufacturer": "acme",
        "serial": "SN-0001",
        "vendor_id": "acme",
        "product_id": "sensor-1",
        "factory_spki_sha256": FACTORY_SPKI,
        "owner": "example-fleet",
        "owner_spki_sha256": OWNER_SPKI,
        "created_at": T0,
        "expires_at": T0 + timedelta(days=30),
    }
    fields.update(changes)
    return VoucherClaims(**fields)


@dataclasses.dataclass
class Supply:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    signer: KeySigner
    signer_cert: x509.Certificate

    def voucher(self, claims: VoucherClaims | None = None) -> bytes:
        return sign_voucher(claims or make_claims(), self.signer, der(self.signer_cert))


@pytest.fixture(scope="module")
def supply() -> Supply:
    root_key, root = make_root()
    signer = KeySigner()
    return Supply(root_key, root, signer, make_signer_cert(root_key, root, signer.public_key))


def verify(v: SignedVoucher, supply: Supply, **kwargs) -> VoucherClaims:
    args = {
        "anchors": [supply.root],
        "expected_owner": "example-fleet",
        "expected_owner_spki": OWNER_SPKI,
        "at": T0 + timedelta(hours=1),
    }
    args.update(kwargs)
    return verify_voucher(v, **args)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def envelope(wire: bytes) -> dict:
    return json.loads(wire)


def rewrap(wire: bytes, **changes: str) -> bytes:
    env = envelope(wire)
    env.update(changes)
    return canonical_json(env)


# --- claims --------------------------------------------------------------------------------


def test_signer_port_is_satisfied() -> None:
    assert isinstance(KeySigner(), Signer)


def test_claims_normalise_times_to_utc_seconds() -> None:
    local = datetime(2026, 1, 1, 13, 0, 0, 999_999, tzinfo=UTC).astimezone(
        timezone(timedelta(hours=1))
    )
    claims = make_claims(created_at=local, expires_at=None)
    assert claims.created_at == datetime(2026, 1, 1, 13, 0, 0, tzinfo=UTC)
    assert claims.created_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("manufacturer", "Acme Corp", "invalid_manufacturer"),
        ("owner", "", "invalid_owner"),
        ("serial", "bad serial", "invalid_serial"),
        ("vendor_id", "x" * 17, "invalid_vendor_id"),
        ("product_id", "a/b", "invalid_product_id"),
        ("factory_spki_sha256", "AB" * 32, "invalid_factory_spki_sha256"),
        ("owner_spki_sha256", "ab" * 31, "invalid_owner_spki_sha256"),
        ("version", 2, "unsupported_voucher_version"),
        ("version", True, "unsupported_voucher_version"),
        ("expires_at", T0, "invalid_expires_at"),
    ],
)
def test_invalid_claims_cannot_exist(field: str, value: object, reason: str) -> None:
    with pytest.raises(InputError) as info:
        make_claims(**{field: value})
    assert info.value.reason == reason


def test_naive_time_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        make_claims(created_at=datetime(2026, 1, 1))  # noqa: DTZ001


def test_payload_is_canonical_and_stable() -> None:
    payload = encode_claims(make_claims())
    assert payload == (
        b'{"created_at":"2026-01-01T12:00:00Z","expires_at":"2026-01-31T12:00:00Z",'
        b'"factory_spki_sha256":"' + FACTORY_SPKI.encode() + b'","manufacturer":"acme",'
        b'"owner":"example-fleet","owner_spki_sha256":"' + OWNER_SPKI.encode() + b'",'
        b'"product_id":"sensor-1","serial":"SN-0001","vendor_id":"acme","version":1}'
    )


# --- sign / decode -------------------------------------------------------------------------


def test_round_trip(supply: Supply) -> None:
    claims = make_claims()
    wire = supply.voucher(claims)
    v = decode_voucher(wire)
    assert v.claims == claims
    assert v.raw == wire
    assert v.payload == encode_claims(claims)
    assert v.signer == supply.signer_cert
    assert len(v.sha256) == 64
    assert verify(v, supply) == claims
    assert set(envelope(wire)) == {"payload", "signature", "signer"}


def test_round_trip_without_expiry(supply: Supply) -> None:
    claims = make_claims(expires_at=None)
    assert verify(decode_voucher(supply.voucher(claims)), supply) == claims


def test_sign_refuses_a_certificate_for_another_key(supply: Supply) -> None:
    with pytest.raises(InputError) as info:
        sign_voucher(make_claims(), KeySigner(), der(supply.signer_cert))
    assert info.value.reason == "voucher_signer_mismatch"


def test_sign_refuses_garbage_certificate(supply: Supply) -> None:
    with pytest.raises(InputError) as info:
        sign_voucher(make_claims(), supply.signer, b"not a certificate")
    assert info.value.reason == "invalid_certificate"


def _malformed(data: bytes) -> InputError:
    with pytest.raises(InputError) as info:
        decode_voucher(data)
    assert info.value.reason == "voucher_malformed"
    return info.value


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b"{}",
        b"\xff\xfe",
        b'{"payload":"a","signature":"b"}',
        b'{"payload":"a","signature":"b","signer":"c","extra":"d"}',
        b"{" * 50,
        b" " * (MAX_VOUCHER_BYTES + 1),
    ],
)
def test_decode_refuses_garbage(data: bytes) -> None:
    _malformed(data)


def test_decode_refuses_non_canonical_envelope(supply: Supply) -> None:
    wire = supply.voucher()
    spaced = json.dumps(envelope(wire), indent=1).encode()
    assert "not canonical" in _malformed(spaced).message


def test_decode_refuses_padded_base64(supply: Supply) -> None:
    wire = supply.voucher()
    env = envelope(wire)
    padded = env["payload"] + "=" * (-len(env["payload"]) % 4 or 4)
    _malformed(rewrap(wire, payload=padded))


def test_decode_refuses_standard_base64_alphabet(supply: Supply) -> None:
    wire = supply.voucher()
    env = envelope(wire)
    std = base64.b64encode(base64.urlsafe_b64decode(env["signer"] + "==")).decode().rstrip("=")
    if std == env["signer"]:  # no '-' or '_' in this certificate's encoding: force one
        std = env["signer"][:-1] + "+"
    _malformed(rewrap(wire, signer=std))


def test_decode_refuses_non_canonical_payload(supply: Supply) -> None:
    wire = supply.voucher()
    payload = json.dumps(json.loads(encode_claims(make_claims())), indent=2).encode()
    _malformed(rewrap(wire, payload=b64(payload)))


def test_decode_refuses_unknown_claim(supply: Supply) -> None:
    body = json.loads(encode_claims(make_claims()))
    body["unsafe"] = True
    _malformed(rewrap(supply.voucher(), payload=b64(canonical_json(body))))


def test_decode_refuses_invalid_claim_value(supply: Supply) -> None:
    body = json.loads(encode_claims(make_claims()))
    body["serial"] = "has space"
    error = _malformed(rewrap(supply.voucher(), payload=b64(canonical_json(body))))
    assert "serial" in error.message


@pytest.mark.parametrize(
    "when",
    ["2026-01-01T12:00:00.5Z", "2026-01-01T12:00:00+00:00", "2026-13-01T12:00:00Z", 1767268800],
)
def test_decode_refuses_bad_times(supply: Supply, when: object) -> None:
    body = json.loads(encode_claims(make_claims()))
    body["created_at"] = when
    _malformed(rewrap(supply.voucher(), payload=b64(canonical_json(body))))


def test_decode_refuses_garbage_signature_and_certificate(supply: Supply) -> None:
    wire = supply.voucher()
    _malformed(rewrap(wire, signature=b64(b"\x30\x03junk")))
    _malformed(rewrap(wire, signer=b64(b"\x30\x03junk")))


# --- verify --------------------------------------------------------------------------------


def _refused(v: SignedVoucher, supply: Supply, reason: str, **kwargs) -> str:
    with pytest.raises(TrustError) as info:
        verify(v, supply, **kwargs)
    assert info.value.reason == reason
    return info.value.message


def test_tampered_payload_is_refused(supply: Supply) -> None:
    wire = supply.voucher()
    other = encode_claims(make_claims(serial="SN-0002"))
    v = decode_voucher(rewrap(wire, payload=b64(other)))
    assert "signature" in _refused(v, supply, "voucher_invalid")


def test_signature_by_another_key_is_refused(supply: Supply) -> None:
    payload = encode_claims(make_claims())
    forged = KeySigner().sign(payload)
    v = decode_voucher(rewrap(supply.voucher(), signature=b64(forged)))
    assert "signature" in _refused(v, supply, "voucher_invalid")


def test_unknown_root_is_refused(supply: Supply) -> None:
    _, other_root = make_root("Acme Manufacturer Root")  # same name, other key
    v = decode_voucher(supply.voucher())
    assert "not issued" in _refused(v, supply, "voucher_invalid", anchors=[other_root])


def test_no_anchors_fails_closed(supply: Supply) -> None:
    v = decode_voucher(supply.voucher())
    _refused(v, supply, "voucher_invalid", anchors=[])


def test_any_listed_anchor_may_issue(supply: Supply) -> None:
    _, other_root = make_root("Other Root")
    v = decode_voucher(supply.voucher())
    assert verify(v, supply, anchors=[other_root, supply.root]).serial == "SN-0001"


def test_self_issued_signer_is_refused(supply: Supply) -> None:
    """A signer certificate not issued by the root (self-signed, same subject) is refused."""
    key = ec.generate_private_key(ec.SECP256R1())
    _, self_signed = make_root("Acme Manufacturer Root", key=key)
    signer = KeySigner(key)
    v = decode_voucher(sign_voucher(make_claims(), signer, der(self_signed)))
    _refused(v, supply, "voucher_invalid")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"not_before": T0 + timedelta(days=2)}, "not valid at this time"),
        ({"not_after": T0}, "not valid at this time"),
        ({"digital_signature": False}, "digital signatures"),
        ({"key_usage": False}, "no key usage"),
        ({"ca": True}, "is a CA"),
        ({"eku": None}, "voucher signing"),
        ({"eku": (ExtendedKeyUsageOID.CLIENT_AUTH,)}, "voucher signing"),
    ],
)
def test_bad_signer_certificate_is_refused(supply: Supply, changes: dict, fragment: str) -> None:
    signer = KeySigner()
    cert = make_signer_cert(supply.root_key, supply.root, signer.public_key, **changes)
    v = decode_voucher(sign_voucher(make_claims(), signer, der(cert)))
    assert fragment in _refused(v, supply, "voucher_invalid")


def test_factory_certificate_cannot_vouch(supply: Supply) -> None:
    """A device's factory identity (digitalSignature, same root, no voucher EKU) cannot vouch."""
    device_key = KeySigner()
    factory_cert = make_signer_cert(supply.root_key, supply.root, device_key.public_key, eku=None)
    v = decode_voucher(sign_voucher(make_claims(), device_key, der(factory_cert)))
    _refused(v, supply, "voucher_invalid")


def test_voucher_signing_oid_is_the_pki_profiles_oid() -> None:
    from iotrust.core import pki  # noqa: PLC0415 - only this consistency check needs pki

    assert pki.OID_VOUCHER_SIGNING == OID_VOUCHER_SIGNING


def test_expired_root_is_refused(supply: Supply) -> None:
    v = decode_voucher(supply.voucher())
    message = _refused(v, supply, "voucher_invalid", at=T0 + timedelta(days=4000))
    assert "root" in message


def test_non_p256_signer_is_refused(supply: Supply) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = make_signer_cert(supply.root_key, supply.root, rsa_key.public_key())
    payload = encode_claims(make_claims())
    wire = canonical_json(
        {
            "payload": b64(payload),
            "signature": b64(supply.signer.sign(payload)),
            "signer": b64(der(cert)),
        }
    )
    assert "P-256" in _refused(decode_voucher(wire), supply, "voucher_invalid")


def test_expired_voucher_is_refused(supply: Supply) -> None:
    v = decode_voucher(supply.voucher())
    assert "expired" in _refused(v, supply, "voucher_invalid", at=T0 + timedelta(days=30))
    assert verify(v, supply, at=T0 + timedelta(days=30) - timedelta(seconds=1))


def test_voucher_from_the_future_is_refused(supply: Supply) -> None:
    v = decode_voucher(supply.voucher(make_claims(created_at=T0 + timedelta(hours=1))))
    assert "future" in _refused(v, supply, "voucher_invalid", at=T0)
    assert verify(v, supply, at=T0 + timedelta(minutes=56))  # within the clock-skew allowance


def test_wrong_owner_is_refused(supply: Supply) -> None:
    v = decode_voucher(supply.voucher())
    _refused(v, supply, "voucher_wrong_owner", expected_owner="someone-else")
    _refused(v, supply, "voucher_wrong_owner", expected_owner_spki="ef" * 32)
    assert verify(v, supply, expected_owner=None, expected_owner_spki=None).owner == (
        "example-fleet"
    )


def test_forgery_beats_owner_check(supply: Supply) -> None:
    """Authenticity is checked before ownership: a forged voucher is invalid, not misdirected."""
    payload = encode_claims(make_claims(owner="someone-else"))
    v = decode_voucher(rewrap(supply.voucher(), payload=b64(payload)))
    _refused(v, supply, "voucher_invalid")


def test_naive_time_in_verify_is_a_programming_error(supply: Supply) -> None:
    v = decode_voucher(supply.voucher())
    with pytest.raises(TypeError):
        verify(v, supply, at=datetime(2026, 1, 1))  # noqa: DTZ001


# --- matching and divergence ---------------------------------------------------------------


def test_matching_device_passes() -> None:
    check_voucher_matches(
        make_claims(),
        serial="SN-0001",
        factory_spki_sha256=FACTORY_SPKI,
        vendor_id="acme",
        product_id="sensor-1",
    )


@pytest.mark.parametrize("field", ["serial", "factory_spki_sha256", "vendor_id", "product_id"])
def test_mismatch_names_the_field(field: str) -> None:
    device = {
        "serial": "SN-0001",
        "factory_spki_sha256": FACTORY_SPKI,
        "vendor_id": "acme",
        "product_id": "sensor-1",
    }
    device[field] = "ef" * 32 if field == "factory_spki_sha256" else "other"
    with pytest.raises(TrustError) as info:
        check_voucher_matches(make_claims(), **device)
    assert info.value.reason == "voucher_mismatch"
    assert field in info.value.message


def test_divergence() -> None:
    a = make_claims()
    assert not vouchers_diverge(a, a)
    assert not vouchers_diverge(a, make_claims(created_at=T0 + timedelta(days=1)))
    assert not vouchers_diverge(a, make_claims(serial="SN-0002", factory_spki_sha256="ef" * 32))
    for change in (
        {"factory_spki_sha256": "ef" * 32},
        {"vendor_id": "other"},
        {"product_id": "other"},
        {"owner": "other"},
        {"owner_spki_sha256": "ef" * 32},
    ):
        assert vouchers_diverge(a, make_claims(**change)), change


def test_spki_hash_of_signer(supply: Supply) -> None:
    der_spki = supply.signer.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_sha256_of(supply.signer.public_key) == hashlib.sha256(der_spki).hexdigest()


def test_certificates_from_the_pki_profiles() -> None:
    """The manufacturer certificates iotrust's own factory tool issues work as documented here."""
    from iotrust.core import pki  # noqa: PLC0415 - only this compatibility check needs pki

    root_signer = KeySigner()
    root = pki.build_root_ca(root_signer, "Acme Root", "Acme", T0, timedelta(days=3650))
    voucher_signer = KeySigner()
    signer_cert = pki.issue_voucher_signer_certificate(
        root_signer,
        root,
        voucher_signer.public_key,
        "Acme Vouchers",
        "Acme",
        T0,
        timedelta(days=365),
    )
    supply = Supply(root_signer.private_key, root, voucher_signer, signer_cert)
    assert verify(decode_voucher(supply.voucher()), supply).serial == "SN-0001"

    device_key = KeySigner()
    factory_cert = pki.issue_factory_certificate(
        root_signer,
        root,
        serial="SN-0001",
        manufacturer="acme",
        vendor_id="acme",
        product_id="sensor-1",
        public_key=device_key.public_key,
        serial_number=7,
        not_before=T0,
        lifetime=timedelta(days=3650),
    )
    forged = sign_voucher(make_claims(owner="mallory"), device_key, der(factory_cert))
    _refused(decode_voucher(forged), supply, "voucher_invalid", expected_owner="mallory")
