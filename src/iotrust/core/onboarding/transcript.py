"""The byte strings the device signs during onboarding, and their verification.

Both transcripts are a CBOR array encoded deterministically (RFC 8949 §4.2 core deterministic
encoding: definite lengths, shortest heads; ``cbor2.dumps(..., canonical=True)``). The first element
is a context label that separates the two signatures (and any future one) from each other and from
every other use of the same key:

* attest (factory key): ``["iotrust-onboarding-attest-v1", session_id, server_nonce, device_nonce,
  serial, server_id, SHA-256(CSR DER), SHA-256(voucher wire bytes)]``, followed by a ninth
  element, the ``key_storage`` text, exactly when the hello stated one (an 8-element array is a
  hello without it). Stripping or adding the claim in flight changes what the server verifies,
  so the factory key's signature fails (``signature_invalid``).
* confirm (new operational key): ``["iotrust-onboarding-confirm-v1", session_id, server_nonce,
  SHA-256(issued certificate DER)]``

Byte strings are CBOR major type 2, text strings major type 3 (UTF-8). The signature is ECDSA P-256
over SHA-256 of these bytes, DER-encoded. This module builds and checks bytes; it does not decide
which key is the right one (see :mod:`.server` and :mod:`.device`).
"""

from __future__ import annotations

import hashlib
from typing import Final

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.core.onboarding.reasons import SIGNATURE_INVALID, refuse

ATTEST_CONTEXT: Final = "iotrust-onboarding-attest-v1"
CONFIRM_CONTEXT: Final = "iotrust-onboarding-confirm-v1"
_DIGEST: Final = 32


def sha256(data: bytes) -> bytes:
    """SHA-256 of ``data`` (raw 32 bytes, as the transcripts carry it)."""
    return hashlib.sha256(data).digest()


def _exact(value: bytes, length: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{what} must be exactly {length} bytes")
    return value


def _text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return value


def attest_transcript(*, session_id: bytes, server_nonce: bytes, device_nonce: bytes,
                      serial: str, server_id: str, csr_sha256: bytes,
                      voucher_sha256: bytes, key_storage: str | None = None) -> bytes:
    """The bytes the factory key signs in ``attest``: deterministic CBOR (RFC 8949 §4.2).

    ``key_storage`` is the hello's claim, appended as a ninth element when the hello carried one.
    Raises ``ValueError`` for wrong lengths: the values come from validated messages, so a wrong
    length here is a programming error, not bad input.
    """
    items: list[object] = [
        ATTEST_CONTEXT,
        _exact(session_id, 16, "session_id"),
        _exact(server_nonce, 32, "server_nonce"),
        _exact(device_nonce, 32, "device_nonce"),
        _text(serial, "serial"),
        _text(server_id, "server_id"),
        _exact(csr_sha256, _DIGEST, "csr_sha256"),
        _exact(voucher_sha256, _DIGEST, "voucher_sha256"),
    ]
    if key_storage is not None:
        items.append(_text(key_storage, "key_storage"))
    return cbor2.dumps(items, canonical=True)


def confirm_transcript(*, session_id: bytes, server_nonce: bytes,
                       certificate_sha256: bytes) -> bytes:
    """The bytes the operational key signs in ``confirm``: deterministic CBOR (RFC 8949 §4.2)."""
    return cbor2.dumps([
        CONFIRM_CONTEXT,
        _exact(session_id, 16, "session_id"),
        _exact(server_nonce, 32, "server_nonce"),
        _exact(certificate_sha256, _DIGEST, "certificate_sha256"),
    ], canonical=True)


def verify_transcript_signature(public_key: ec.EllipticCurvePublicKey, signature: bytes,
                                transcript: bytes, *, what: str) -> None:
    """Return if ``signature`` is a valid ECDSA-SHA256 signature; raise ``signature_invalid``."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) \
            or not isinstance(public_key.curve, ec.SECP256R1):
        raise refuse(SIGNATURE_INVALID, f"the {what} key is not an ECDSA P-256 key")
    try:
        public_key.verify(signature, transcript, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise refuse(SIGNATURE_INVALID,
                     f"the {what} signature does not verify over the transcript") from exc
