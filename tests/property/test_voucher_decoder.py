"""Properties: the voucher and JSON decoders raise only InputError; canonical JSON round-trips."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotrust.core.canonical import canonical_json, parse_json_object
from iotrust.core.vouchers import VoucherClaims, decode_voucher, encode_claims, sign_voucher
from iotrust.errors import InputError

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


class _Signer:
    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


def _signer_and_cert() -> tuple[_Signer, bytes]:
    signer = _Signer()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signer.public_key)
        .serial_number(1)
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=1))
        .sign(signer._key, hashes.SHA256())
    )
    return signer, cert.public_bytes(serialization.Encoding.DER)


SIGNER, SIGNER_DER = _signer_and_cert()
VALID = sign_voucher(
    VoucherClaims(
        manufacturer="acme",
        serial="SN-1",
        vendor_id="acme",
        product_id="p1",
        factory_spki_sha256="ab" * 32,
        owner="fleet",
        owner_spki_sha256="cd" * 32,
        created_at=T0,
    ),
    SIGNER,
    SIGNER_DER,
)


JSON_REASONS = {None, "malformed_json", "too_large", "too_deep"}


def _refusal(call: Callable[[], object]) -> str | None:
    """Run ``call``; the reason of its InputError, or None. Any other exception propagates."""
    try:
        call()
    except InputError as exc:
        return exc.reason
    return None


def _decodes_or_input_error(data: bytes) -> None:
    assert _refusal(lambda: decode_voucher(data)) in {None, "voucher_malformed"}


@given(st.binary(max_size=2048))
def test_decode_voucher_arbitrary_bytes(data: bytes) -> None:
    _decodes_or_input_error(data)


@given(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(0, 255))
def test_decode_voucher_single_byte_mutations(index: int, value: int) -> None:
    mutated = bytearray(VALID)
    mutated[index] = value
    _decodes_or_input_error(bytes(mutated))


@given(st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_decode_voucher_mutated_fields(data: st.DataObject) -> None:
    """Well-formed envelopes with arbitrary (base64url) field contents."""
    envelope = json.loads(VALID)
    field = data.draw(st.sampled_from(["payload", "signature", "signer"]))
    raw = base64.urlsafe_b64decode(envelope[field] + "==")
    cut = data.draw(st.integers(0, len(raw)))
    replacement = data.draw(st.binary(max_size=64))
    changed = raw[:cut] + replacement + raw[cut + len(replacement) :]
    envelope[field] = base64.urlsafe_b64encode(changed).rstrip(b"=").decode()
    _decodes_or_input_error(canonical_json(envelope))


b64url_text = st.binary(max_size=80).map(
    lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
)
envelopes = st.dictionaries(
    st.sampled_from(["payload", "signature", "signer", "other"]),
    json_values | b64url_text,
    max_size=4,
)


@given(envelopes)
def test_decode_voucher_arbitrary_envelopes(obj: dict[str, object]) -> None:
    _decodes_or_input_error(canonical_json(obj))


@given(
    st.fixed_dictionaries(
        {
            "version": st.integers(0, 3),
            "manufacturer": st.text(max_size=10),
            "serial": st.text(max_size=10),
            "created_at": st.sampled_from(["2026-01-01T00:00:00Z", "2026-02-30T00:00:00Z", "x"]),
        }
    )
)
def test_decode_voucher_arbitrary_payload(claims: dict[str, object]) -> None:
    envelope = json.loads(VALID)
    envelope["payload"] = base64.urlsafe_b64encode(canonical_json(claims)).rstrip(b"=").decode()
    _decodes_or_input_error(canonical_json(envelope))


def test_valid_voucher_round_trips() -> None:
    v = decode_voucher(VALID)
    assert encode_claims(v.claims) == v.payload


@given(st.binary(max_size=512), st.integers(1, 600), st.integers(1, 10))
def test_parse_json_object_arbitrary_bytes(data: bytes, max_bytes: int, max_depth: int) -> None:
    results: list[dict[str, object]] = []
    reason = _refusal(
        lambda: results.append(parse_json_object(data, max_bytes=max_bytes, max_depth=max_depth))
    )
    assert reason in JSON_REASONS
    assert reason is not None or isinstance(results[0], dict)


@given(st.text(alphabet='{}[]":,\\0123 abtrufelsn\ud800', max_size=200))
def test_parse_json_object_json_like_text(text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    assert _refusal(lambda: parse_json_object(data, max_bytes=4096, max_depth=4)) in JSON_REASONS


@given(json_objects)
def test_canonical_round_trip(obj: dict[str, object]) -> None:
    encoded = canonical_json(obj)
    assert parse_json_object(encoded, max_bytes=1 << 20, max_depth=64) == obj
    assert canonical_json(json.loads(encoded)) == encoded


@given(json_objects)
def test_canonical_is_independent_of_key_order(obj: dict[str, object]) -> None:
    reversed_obj = dict(reversed(list(obj.items())))
    assert canonical_json(reversed_obj) == canonical_json(obj)


@given(json_objects)
def test_reformatted_json_parses_to_the_same_value(obj: dict[str, object]) -> None:
    pretty = json.dumps(obj, indent=2, ensure_ascii=True).encode()
    assert parse_json_object(pretty, max_bytes=1 << 20, max_depth=64) == obj


def test_canonical_examples() -> None:
    assert (
        canonical_json({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()
    )
    assert canonical_json(MappingProxyType({"t": (1, 2)})) == b'{"t":[1,2]}'
    for bad in (1.0, {"x": float("inf")}, {1: 2}, {"x": {1, 2}}, b"x", {"x": object()}):
        with pytest.raises(TypeError):
            canonical_json(bad)
    with pytest.raises(ValueError, match="surrogate"):
        canonical_json({"x": "\ud800"})


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a":1}', None),
        (b" " * 101, "too_large"),
        (b'{"a":' * 9 + b"1" + b"}" * 9, "too_deep"),
        (b'{"a":"[[[[[[[[[[[["}', None),
        (b'{"a":1,"a":1}', "malformed_json"),
        (b'{"a":1e3}', "malformed_json"),
        (b'{"a":Infinity}', "malformed_json"),
        (rb'{"a":"\\ud800"}', None),  # an escaped backslash, then text
        (rb'{"a":"\ud800"}', "malformed_json"),  # a lone surrogate escape
        (b"\xef\xbb\xbf{}", "malformed_json"),
        (b"[1]", "malformed_json"),
        (b"", "malformed_json"),
    ],
)
def test_parse_json_object_examples(data: bytes, reason: str | None) -> None:
    assert _refusal(lambda: parse_json_object(data, max_bytes=100)) == reason
