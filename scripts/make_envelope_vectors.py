"""Regenerate the signed-message (envelope) test vectors in tests/vectors/envelope/.

Usage: .venv/bin/python scripts/make_envelope_vectors.py [--check]

The device key is derived from a fixed scalar and every signature uses RFC 6979 deterministic
ECDSA, so two runs write identical bytes (``--check`` compares instead of writing and exits 1 on
any difference). Real devices may sign with randomized ECDSA: verifiers check signatures, they
never compare them. The private scalar is a test-only key, published on purpose.

Files:
* ``valid.json`` — envelopes with their fields, the protected header, the Sig_structure
  (``to_be_signed``) and the whole envelope in hex, plus the device public key (uncompressed
  SEC1 point, hex) and its scalar.
* ``malformed.json`` — envelope bytes that the parse boundary must refuse with
  ``malformed_envelope``, each with the reason it is malformed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from iotrust.core import envelope as e
from iotrust.core.ids import new_device_id

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "vectors" / "envelope"
DEVICE_SCALAR = 0x1D3F_5A7C_9E0B_2D4F_6A8C_0E1B_3D5F_7A9C_0E2B_4D6F_8A0C_1E3B_5D7F_9A0C_2E4B
DEVICE_ID = new_device_id(bytes(range(0x20, 0x30)))
CREDENTIAL_SERIAL = "5f3e2d1c0b0a09080706050403020100"
T = 1_767_268_800_000  # 2026-01-01T12:00:00Z in ms


class VectorSigner:
    """A test-only P-256 key from a fixed scalar, signing with RFC 6979."""

    def __init__(self, scalar: int) -> None:
        self._key = ec.derive_private_key(scalar, ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))


CASES: list[dict[str, Any]] = [
    {"name": "telemetry_json", "payload": b'{"temperature":21.5}', "counter": 1,
     "timestamp": T, "topic": f"devices/{DEVICE_ID}/telemetry", "content_type": 50},
    {"name": "status_media_type", "payload": b'{"state":"ok"}', "counter": 4_294_967_296,
     "timestamp": T + 1_500, "topic": f"devices/{DEVICE_ID}/status",
     "content_type": "application/json"},
    {"name": "empty_payload_counter_zero", "payload": b"", "counter": 0, "timestamp": 0,
     "topic": f"devices/{DEVICE_ID}/events", "content_type": 60},
    {"name": "cbor_payload_max_counter", "payload": bytes.fromhex("a1617418ff"),
     "counter": e.MAX_COUNTER, "timestamp": T, "topic": f"devices/{DEVICE_ID}/attestation",
     "content_type": "application/cbor"},
]


def build_valid(signer: VectorSigner) -> dict[str, Any]:
    kid = e.kid_for_serial(CREDENTIAL_SERIAL)
    point = signer.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    vectors = []
    for case in CASES:
        fields = {k: case[k] for k in ("counter", "timestamp", "topic", "content_type")}
        data = e.seal(case["payload"], signer=signer, device_id=DEVICE_ID, kid=kid, **fields)
        env = e.open_envelope(data)
        vectors.append({
            "name": case["name"], "device_id": DEVICE_ID, "kid": kid.hex(), **fields,
            "payload": case["payload"].hex(), "protected": env.protected.hex(),
            "to_be_signed": env.to_be_signed().hex(), "signature": env.signature.hex(),
            "envelope": data.hex(), "size": len(data),
            "overhead": len(data) - len(case["payload"]),
        })
    return {
        "description": "iotrust signed-message envelopes (docs/protocol.md, 'Signed messages')",
        "device_private_scalar": format(DEVICE_SCALAR, "064x"),
        "device_public_key": point.hex(),
        "credential_serial": CREDENTIAL_SERIAL,
        "labels": {str(k): v for k, v in e.LABELS.items()},
        "vectors": vectors,
    }


def build_malformed(valid: dict[str, Any]) -> dict[str, Any]:
    good = bytes.fromhex(valid["vectors"][0]["envelope"])
    env = e.open_envelope(good)
    prot, payload, sig = env.protected, env.payload, env.signature

    def wrap(protected: bytes, unprotected: bytes = b"\xa0", tail: bytes = b"") -> bytes:
        return (b"\xd2\x84" + bytes((0x58, len(protected))) + protected + unprotected
                + bytes((0x40 | len(payload),)) + payload + b"\x58\x40" + sig + tail)

    alg_es384 = prot.replace(b"\x01\x26", b"\x01\x38\x22", 1)
    cases = [
        ("untagged", good[1:], "COSE_Sign1 without tag 18"),
        ("wrong_tag", b"\xd1" + good[1:], "tag 17 (COSE_Mac0)"),
        ("trailing_byte", good + b"\x00", "a byte after the envelope"),
        ("unprotected_not_empty", wrap(prot, b"\xa1\x04\x41\x01"), "kid in the unprotected map"),
        ("long_form_protected_length", b"\xd2\x84\x59\x00" + good[3:],
         "protected length in a 2-byte argument where 1 byte suffices"),
        ("indefinite_array", b"\xd2\x9f" + good[2:] + b"\xff", "indefinite-length array"),
        ("short_signature", good[:-65] + b"\x58\x3f" + good[-63:], "63-byte signature"),
        ("alg_es384", wrap(alg_es384), "alg -35 instead of -7"),
        ("truncated", good[:-10], "cut short"),
        ("empty", b"", "no bytes"),
    ]
    return {"description": "envelopes the parse boundary refuses with malformed_envelope",
            "vectors": [{"name": n, "envelope": d.hex(), "why": w} for n, d, w in cases]}


def render() -> dict[str, str]:
    signer = VectorSigner(DEVICE_SCALAR)
    valid = build_valid(signer)
    malformed = build_malformed(valid)
    return {name: json.dumps(doc, indent=2, sort_keys=False) + "\n"
            for name, doc in (("valid.json", valid), ("malformed.json", malformed))}


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [n for n, text in files.items()
                 if not (OUT / n).exists() or (OUT / n).read_text() != text]
        for name in stale:
            print(f"stale: tests/vectors/envelope/{name}")
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
        print(f"wrote tests/vectors/envelope/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
