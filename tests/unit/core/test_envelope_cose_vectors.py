"""Our COSE_Sign1 primitives against the COSE working group's published examples.

The vectors (tests/vectors/cose/, source in its README) carry a P-256 key, the expected
``ToBeSign`` (Sig_structure) bytes and the message. We check that our Sig_structure is
byte-identical, that their ES256 signatures verify through our decoder, and that their failure
cases are refused for the documented reason.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.core import envelope as e
from iotrust.errors import InputError, TrustError

VECTORS = Path(__file__).resolve().parents[3] / "tests" / "vectors" / "cose"
PASSING = ["ecdsa-sig-01.json", "sign-pass-02.json", "sign-pass-03.json"]


def _b64u(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return doc


def _key(doc: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    jwk = doc["input"]["sign0"]["key"]
    assert jwk["crv"] == "P-256"
    return ec.EllipticCurvePublicNumbers(_b64u(jwk["x"]), _b64u(jwk["y"]),
                                         ec.SECP256R1()).public_key()


def _external(doc: dict[str, Any]) -> bytes:
    return bytes.fromhex(doc["input"]["sign0"].get("external", ""))


@pytest.mark.parametrize("name", PASSING)
def test_sig_structure_matches_and_signature_verifies(name: str) -> None:
    doc = _load(name)
    data = bytes.fromhex(doc["output"]["cbor"])
    msg = e.decode_cose_sign1(data, require_tag="RemoveCBORTag" not in doc["input"].get(
        "failures", {}))
    assert msg.payload == doc["input"]["plaintext"].encode()
    tbs = e.sig_structure(msg.protected, msg.payload, _external(doc))
    assert tbs.hex().upper() == doc["intermediates"]["ToBeSign_hex"]
    e.verify_cose_sign1(msg, _key(doc), external_aad=_external(doc))


def test_external_aad_is_bound() -> None:
    doc = _load("sign-pass-02.json")
    msg = e.decode_cose_sign1(bytes.fromhex(doc["output"]["cbor"]))
    with pytest.raises(TrustError) as exc:
        e.verify_cose_sign1(msg, _key(doc))  # without the external data
    assert exc.value.reason == "signature_invalid"


def test_untagged_is_refused_when_the_tag_is_required() -> None:
    doc = _load("sign-pass-03.json")
    with pytest.raises(InputError) as exc:
        e.decode_cose_sign1(bytes.fromhex(doc["output"]["cbor"]))
    assert exc.value.reason == "malformed_cose"


def test_wrong_tag_is_refused() -> None:
    doc = _load("sign-fail-01.json")
    assert doc["fail"] is True
    with pytest.raises(InputError) as exc:
        e.decode_cose_sign1(bytes.fromhex(doc["output"]["cbor"]))
    assert exc.value.reason == "malformed_cose"


def test_changed_content_fails_verification() -> None:
    doc = _load("sign-fail-02.json")
    msg = e.decode_cose_sign1(bytes.fromhex(doc["output"]["cbor"]))
    with pytest.raises(TrustError) as exc:
        e.verify_cose_sign1(msg, _key(doc))
    assert exc.value.reason == "signature_invalid"


def test_generic_decoder_refuses_trailing_bytes() -> None:
    data = bytes.fromhex(_load("ecdsa-sig-01.json")["output"]["cbor"])
    with pytest.raises(InputError):
        e.decode_cose_sign1(data + b"\x00")
    with pytest.raises(InputError):
        e.decode_cose_sign1(data, max_bytes=len(data) - 1)
