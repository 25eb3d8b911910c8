"""Signing certificate and CRL builders with any :class:`~iotrust.ports.Signer`.

A signer that holds its key in this process (:class:`~iotrust.ports.HasPrivateKey`) is handed
straight to cryptography's builder (the fast path). Any other signer (PKCS#11 token, secure
element, remote KMS) only exposes ``sign(data)``: cryptography has no hook for an external
signer, so we let the builder produce the to-be-signed bytes, have the signer sign them, and
assemble the final DER ourselves (see :func:`sign_builder`).

This module does not choose what goes into a certificate (see the issuance module) and does no
I/O besides calling the signer it is given.
"""

from __future__ import annotations

import functools
from typing import overload

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.core.pki._encoding import der_signed
from iotrust.ports import HasPrivateKey, Signer

#: DER ``AlgorithmIdentifier { ecdsa-with-SHA256 }`` (OID 1.2.840.10045.4.3.2, no parameters,
#: RFC 5758 §3.2).
_ECDSA_WITH_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")


@functools.cache
def _placeholder_key() -> ec.EllipticCurvePrivateKey:
    """A process-wide throwaway P-256 key.

    It only makes cryptography emit the to-be-signed bytes with the ecdsa-with-SHA256 algorithm
    identifier inside them; its signature is discarded and nothing it signs is ever published.
    """
    return ec.generate_private_key(ec.SECP256R1())


@overload
def sign_builder(builder: x509.CertificateBuilder, signer: Signer) -> x509.Certificate: ...


@overload
def sign_builder(
    builder: x509.CertificateRevocationListBuilder, signer: Signer
) -> x509.CertificateRevocationList: ...


def sign_builder(
    builder: x509.CertificateBuilder | x509.CertificateRevocationListBuilder, signer: Signer
) -> x509.Certificate | x509.CertificateRevocationList:
    """Sign a certificate or CRL builder with ECDSA P-256 / SHA-256.

    * ``HasPrivateKey`` signer: ``builder.sign(signer.private_key, SHA256)``.
    * Any other signer: cryptography (48) offers no way to plug an external signer into a builder.
      We therefore sign the builder once with a cached placeholder P-256 key, which yields the exact
      ``tbsCertificate`` / ``tbsCertList`` DER (the signature algorithm inside it is already
      ecdsa-with-SHA256), ask ``signer.sign(tbs)`` for the real DER ``Ecdsa-Sig-Value``, and wrap
      both in ``SEQUENCE { tbs, AlgorithmIdentifier, BIT STRING }`` with a ten-line DER encoder.
      The result is parsed back and its signature verified against ``signer.public_key``.

    Raises:
        RuntimeError: the external signer produced a signature that does not verify (a broken or
            mismatched key store: a bug or an outage, not bad input).
    """
    if isinstance(signer, HasPrivateKey):
        return builder.sign(signer.private_key, hashes.SHA256())
    placeholder = builder.sign(_placeholder_key(), hashes.SHA256())
    if isinstance(placeholder, x509.Certificate):
        tbs = placeholder.tbs_certificate_bytes
        der = der_signed(tbs, _ECDSA_WITH_SHA256, signer.sign(tbs))
        signed: x509.Certificate | x509.CertificateRevocationList
        signed = x509.load_der_x509_certificate(der)
        signature, signed_tbs = signed.signature, signed.tbs_certificate_bytes
    else:
        tbs = placeholder.tbs_certlist_bytes
        der = der_signed(tbs, _ECDSA_WITH_SHA256, signer.sign(tbs))
        signed = x509.load_der_x509_crl(der)
        signature, signed_tbs = signed.signature, signed.tbs_certlist_bytes
    try:
        signer.public_key.verify(signature, signed_tbs, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise RuntimeError("the signer's signature does not verify against its public key") from exc
    return signed
