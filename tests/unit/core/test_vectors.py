"""The committed onboarding vectors agree with the code and with their generator.

* byte-exact: every file equals what scripts/make_vectors.py generates now (all of it is
  deterministic: fixed keys, nonces and time, RFC 6979 signatures);
* independently of the generator: messages decode and re-encode to the same bytes, transcripts
  and hashes are recomputed from the listed inputs, signatures verify with the listed keys, and
  every malformed body is refused with ``malformed_request``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.core import pki
from iotrust.core.onboarding import attest_transcript, confirm_transcript
from iotrust.core.onboarding import messages as m
from iotrust.errors import InputError

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "tests" / "vectors" / "onboarding"
CLASSES: dict[str, Any] = {
    "hello": m.HelloRequest, "hello_request": m.HelloRequest,
    "hello_response": m.HelloResponse,
    "attest": m.AttestRequest, "attest_request": m.AttestRequest,
    "attest_response": m.AttestResponse,
    "confirm": m.ConfirmRequest, "confirm_request": m.ConfirmRequest,
}


def _load_make_vectors() -> ModuleType:
    if "make_vectors" in sys.modules:
        return sys.modules["make_vectors"]
    path = ROOT / "scripts" / "make_vectors.py"
    spec = importlib.util.spec_from_file_location("make_vectors", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_vectors"] = module
    spec.loader.exec_module(module)
    return module


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def test_committed_vectors_are_what_the_generator_writes() -> None:
    generated = _load_make_vectors().generate()
    committed = sorted(p.name for p in VECTORS.glob("*.json"))
    assert committed == sorted(generated), "run scripts/make_vectors.py and commit the result"
    for name, data in generated.items():
        assert (VECTORS / name).read_bytes() == data, f"{name} is stale: run make_vectors.py"


def test_happy_path_messages_round_trip() -> None:
    vector = load("happy_path.json")
    for name, text in vector["messages"].items():
        wire = text.encode("utf-8")
        assert CLASSES[name].from_wire(wire).to_wire() == wire, name


def test_happy_path_attest_transcript_and_signature() -> None:
    vector = load("happy_path.json")
    inputs, t = vector["inputs"], vector["attest_transcript"]
    csr = unb64(inputs["csr_der_b64url"])
    voucher = unb64(inputs["voucher_b64url"])
    assert hashlib.sha256(csr).hexdigest() == t["csr_sha256_hex"]
    assert hashlib.sha256(voucher).hexdigest() == t["voucher_sha256_hex"]
    transcript = attest_transcript(
        session_id=bytes.fromhex(inputs["session_id_hex"]),
        server_nonce=bytes.fromhex(inputs["server_nonce_hex"]),
        device_nonce=bytes.fromhex(inputs["device_nonce_hex"]), serial=inputs["serial"],
        server_id=inputs["server_id"], csr_sha256=hashlib.sha256(csr).digest(),
        voucher_sha256=hashlib.sha256(voucher).digest(), key_storage=inputs["key_storage"])
    assert transcript.hex() == t["cbor_hex"]
    hello = m.HelloRequest.from_wire(vector["messages"]["hello"].encode())
    assert hello.key_storage == inputs["key_storage"]
    assert hashlib.sha256(transcript).hexdigest() == t["sha256_hex"]
    leaf = x509.load_der_x509_certificate(unb64(inputs["factory_chain_der_b64url"][0]))
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(unb64(t["signature_der_b64url"]), transcript, ec.ECDSA(hashes.SHA256()))
    scalar = int(vector["test_only_private_scalars_hex"]["factory_key"], 16)
    assert ec.derive_private_key(scalar, ec.SECP256R1()).public_key() == key
    attest = m.AttestRequest.from_wire(vector["messages"]["attest"].encode())
    assert attest.signature == unb64(t["signature_der_b64url"])
    assert attest.csr == csr


def test_happy_path_confirm_transcript_and_signature() -> None:
    vector = load("happy_path.json")
    inputs, t = vector["inputs"], vector["confirm_transcript"]
    cert_der = unb64(inputs["certificate_der_b64url"])
    assert hashlib.sha256(cert_der).hexdigest() == t["certificate_sha256_hex"]
    transcript = confirm_transcript(session_id=bytes.fromhex(inputs["session_id_hex"]),
                                    server_nonce=bytes.fromhex(inputs["server_nonce_hex"]),
                                    certificate_sha256=hashlib.sha256(cert_der).digest())
    assert transcript.hex() == t["cbor_hex"]
    key = x509.load_der_x509_certificate(cert_der).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(unb64(t["signature_der_b64url"]), transcript, ec.ECDSA(hashes.SHA256()))
    response = m.AttestResponse.from_wire(vector["messages"]["attest_response"].encode())
    assert response.certificate == cert_der
    root = x509.load_der_x509_certificate(response.ca_chain[-1])
    assert pki.spki_sha256(root.public_key()) == inputs["owner_spki_sha256"]
    assert hashlib.sha256(bytes.fromhex(inputs["server_nonce_hex"])).hexdigest() == \
        vector["server_nonce_sha256_hex"]


@pytest.mark.parametrize("case", load("transcripts.json")["cases"], ids=lambda c: c["name"])
def test_transcript_cases(case: dict[str, str]) -> None:
    if case["kind"] == "attest":
        data = attest_transcript(
            session_id=bytes.fromhex(case["session_id_hex"]),
            server_nonce=bytes.fromhex(case["server_nonce_hex"]),
            device_nonce=bytes.fromhex(case["device_nonce_hex"]), serial=case["serial"],
            server_id=case["server_id"], csr_sha256=bytes.fromhex(case["csr_sha256_hex"]),
            voucher_sha256=bytes.fromhex(case["voucher_sha256_hex"]),
            key_storage=case.get("key_storage"))
    else:
        data = confirm_transcript(
            session_id=bytes.fromhex(case["session_id_hex"]),
            server_nonce=bytes.fromhex(case["server_nonce_hex"]),
            certificate_sha256=bytes.fromhex(case["certificate_sha256_hex"]))
    assert data.hex() == case["cbor_hex"]


def test_attest_transcript_layout_by_hand() -> None:
    """The layout in docs/protocol.md, written out byte by byte (no CBOR library)."""
    case = next(c for c in load("transcripts.json")["cases"] if c["name"].startswith("24-byte"))
    label = b"iotrust-onboarding-attest-v1"
    expected = (b"\x88" + b"\x78" + bytes([len(label)]) + label
                + b"\x50" + bytes.fromhex(case["session_id_hex"])
                + b"\x58\x20" + bytes.fromhex(case["server_nonce_hex"])
                + b"\x58\x20" + bytes.fromhex(case["device_nonce_hex"])
                + b"\x78\x18" + case["serial"].encode()
                + bytes([0x60 + len(case["server_id"])]) + case["server_id"].encode()
                + b"\x58\x20" + bytes.fromhex(case["csr_sha256_hex"])
                + b"\x58\x20" + bytes.fromhex(case["voucher_sha256_hex"]))
    assert expected.hex() == case["cbor_hex"]


def test_attest_transcript_with_key_storage_by_hand() -> None:
    """With a key-storage claim: array head 0x89 and the claim as a ninth text string."""
    cases = load("transcripts.json")["cases"]
    bare = next(c for c in cases if c["name"].startswith("24-byte"))
    claimed = next(c for c in cases if c["name"].startswith("key_storage file"))
    assert {k: v for k, v in claimed.items() if k not in {"name", "cbor_hex", "key_storage"}} \
        == {k: v for k, v in bare.items() if k not in {"name", "cbor_hex"}}
    expected = b"\x89" + bytes.fromhex(bare["cbor_hex"])[1:] + b"\x64file"
    assert expected.hex() == claimed["cbor_hex"]


@pytest.mark.parametrize("case", load("malformed.json")["cases"],
                         ids=lambda c: f'{c["message"]}: {c["name"]}')
def test_malformed_bodies_are_refused(case: dict[str, str]) -> None:
    with pytest.raises(InputError) as info:
        CLASSES[case["message"]].from_wire(unb64(case["body_b64url"]))
    assert info.value.reason == case["reason"]
