"""Accepting a certificate signing request (PKCS#10) for issuance.

:func:`check_csr` is the gate between a device's request and the issuer: it proves possession of
the key (the request's self-signature), insists on ECDSA P-256 with SHA-256, and refuses a key
that was seen before. The subject, attributes and extensions of a request are ignored on
purpose: the issuer sets every field itself. This module does not issue (see the issuance module)
and keeps no memory of keys; the caller passes the fingerprints it must refuse.
"""

from __future__ import annotations

from collections.abc import Collection

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import SignatureAlgorithmOID

from iotrust.core.pki._encoding import is_p256, load_csr_and_key, spki_sha256
from iotrust.errors import InputError, TrustError

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def check_csr(
    data_or_csr: bytes | x509.CertificateSigningRequest,
    *,
    forbidden_spki: Collection[str] = (),
) -> ec.EllipticCurvePublicKey:
    """Return the request's P-256 public key if the request may be certified.

    Args:
        data_or_csr: the request, PEM or DER bytes or already parsed.
        forbidden_spki: :func:`spki_sha256` fingerprints that must not be certified again (the
            device's factory key, keys already seen on any device).

    Raises:
        InputError: ``csr_invalid`` for a malformed request, a signature algorithm other than
            ecdsa-with-SHA256 or a self-signature that does not verify; ``weak_key`` for any
            key other than ECDSA P-256; ``too_large`` for an oversized encoding.
        TrustError: ``csr_key_reused`` if the key's fingerprint is in ``forbidden_spki``.
    """
    if isinstance(data_or_csr, x509.CertificateSigningRequest):
        csr = data_or_csr
        try:
            public_key = csr.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:  # what cryptography raises for keys
            raise InputError("unsupported key in the request", reason="csr_invalid") from exc
    else:
        try:
            csr, public_key = load_csr_and_key(data_or_csr)
        except InputError as exc:
            if exc.reason == "too_large":
                raise
            raise InputError(
                "not a valid certificate signing request", reason="csr_invalid"
            ) from exc
    if not is_p256(public_key):
        raise InputError("only ECDSA P-256 keys are certified", reason="weak_key")
    if csr.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        raise InputError("the request must be signed with ECDSA-SHA256", reason="csr_invalid")
    # Equivalent to csr.is_signature_valid for ecdsa-with-SHA256, without decoding the key twice.
    try:
        public_key.verify(csr.signature, csr.tbs_certrequest_bytes, _ECDSA_SHA256)
    except InvalidSignature as exc:
        raise InputError("the request's signature does not verify", reason="csr_invalid") from exc
    if forbidden_spki and spki_sha256(public_key) in forbidden_spki:
        raise TrustError(
            "this key was already seen; a new key is required", reason="csr_key_reused"
        )
    return public_key
