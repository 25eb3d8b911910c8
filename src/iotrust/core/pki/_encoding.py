"""The parse boundary for X.509 objects, and the few DER bytes we write by hand.

Every loader takes untrusted ``bytes`` (PEM or DER), bounds their size, parses them with
cryptography and touches the lazily parsed parts (extensions, public key, signature algorithm) so
that a malformed object fails *here*, as an :class:`~iotrust.errors.InputError` with a stable
reason, and never later inside a trust decision. This module is the only place in the PKI core
allowed a broad ``except``.

It does not decide whether anything is trustworthy (see the chain, CSR and CRL modules) and it
does no I/O.
"""

from __future__ import annotations

import hashlib
import re
from typing import TypeGuard

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)

from iotrust.errors import InputError

#: Upper bound on any encoded certificate, CSR, CRL, key or bundle we accept.
MAX_ENCODED_BYTES = 64 * 1024
#: Upper bound on an encoded CRL: a fleet's CRL outgrows 64 KiB after a few thousand
#: revocations (about 20 bytes each), so CRLs get their own, larger bound.
MAX_CRL_BYTES = 32 * 1024 * 1024
#: Upper bound on the number of certificates in one PEM bundle.
MAX_BUNDLE_CERTIFICATES = 16

_PEM_MARKER = b"-----BEGIN"
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----")

# DER tags used by the hand-written encoder/decoder.
_TAG_BIT_STRING = 0x03
_TAG_UTF8_STRING = 0x0C
_TAG_SEQUENCE = 0x30
_SHORT_LENGTH_LIMIT = 0x80


def _as_bytes(data: bytes) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    return bytes(data)


def _bounded(data: bytes, what: str, limit: int = MAX_ENCODED_BYTES) -> bytes:
    raw = _as_bytes(data)
    if len(raw) > limit:
        raise InputError(f"{what} larger than {limit} bytes", reason="too_large")
    if not raw:
        raise InputError(f"empty {what}", reason=f"malformed_{what}")
    return raw


def _is_pem(raw: bytes) -> bool:
    return raw.lstrip()[: len(_PEM_MARKER)] == _PEM_MARKER


def _touch_certificate(cert: x509.Certificate) -> x509.Certificate:
    """Force every lazily parsed part so that malformed input fails inside the boundary."""
    _ = cert.extensions, cert.subject, cert.issuer, cert.serial_number
    _ = cert.not_valid_before_utc, cert.not_valid_after_utc
    _ = cert.signature_hash_algorithm
    cert.public_key()
    return cert


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse one certificate (PEM or DER); any failure is ``InputError``.

    Reasons: ``malformed_certificate``, ``too_large``.
    """
    raw = _bounded(data, "certificate")
    try:
        if _is_pem(raw):
            cert = x509.load_pem_x509_certificate(raw)
        else:
            cert = x509.load_der_x509_certificate(raw)
        return _touch_certificate(cert)
    except Exception as exc:  # the parse boundary: anything cryptography raises is bad input
        raise InputError("not a valid X.509 certificate", reason="malformed_certificate") from exc


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Parse a PEM bundle (or a single DER certificate) into at least one certificate."""
    raw = _bounded(data, "certificate")
    if not _is_pem(raw):
        return [load_certificate(raw)]
    if len(_PEM_CERTIFICATE.findall(raw)) > MAX_BUNDLE_CERTIFICATES:
        raise InputError(
            f"more than {MAX_BUNDLE_CERTIFICATES} certificates in one bundle", reason="too_large"
        )
    try:
        certs = x509.load_pem_x509_certificates(raw)
        return [_touch_certificate(cert) for cert in certs]
    except Exception as exc:  # the parse boundary
        raise InputError("not a valid certificate bundle", reason="malformed_certificate") from exc


def load_csr_and_key(
    data: bytes,
) -> tuple[x509.CertificateSigningRequest, CertificatePublicKeyTypes]:
    """Parse a PKCS#10 request and its public key (decoded once; see :func:`load_csr`)."""
    raw = _bounded(data, "csr")
    try:
        csr = x509.load_pem_x509_csr(raw) if _is_pem(raw) else x509.load_der_x509_csr(raw)
        _ = csr.signature_algorithm_oid, csr.tbs_certrequest_bytes, csr.signature
        public_key = csr.public_key()
    except Exception as exc:  # the parse boundary
        raise InputError("not a valid certificate signing request", reason="malformed_csr") from exc
    return csr, public_key


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PKCS#10 request (PEM or DER); failure is ``InputError("malformed_csr")``.

    Only the parts the issuer uses are forced (public key, signature algorithm): the subject,
    attributes and extensions of a request are ignored by design, the issuer sets them.
    """
    return load_csr_and_key(data)[0]


def load_crl(data: bytes, *, max_bytes: int = MAX_CRL_BYTES) -> x509.CertificateRevocationList:
    """Parse a CRL (PEM or DER); failure is ``InputError("malformed_crl")`` or ``too_large``.

    Every entry is parsed here, so the cost is linear in the CRL's size: lower ``max_bytes``
    for CRLs from parties you do not run.
    """
    raw = _bounded(data, "crl", max_bytes)
    try:
        crl = x509.load_pem_x509_crl(raw) if _is_pem(raw) else x509.load_der_x509_crl(raw)
        _ = crl.extensions, crl.issuer, crl.signature_hash_algorithm
        _ = crl.last_update_utc, crl.next_update_utc
        for entry in crl:
            _ = entry.serial_number, entry.revocation_date_utc, entry.extensions
    except Exception as exc:  # the parse boundary
        raise InputError("not a valid certificate revocation list", reason="malformed_crl") from exc
    return crl


def load_public_key(data: bytes) -> PublicKeyTypes:
    """Parse a SubjectPublicKeyInfo (PEM or DER); failure is ``InputError``.

    Reasons: ``malformed_public_key``, ``too_large``.
    """
    raw = _bounded(data, "public_key")
    try:
        if _is_pem(raw):
            return serialization.load_pem_public_key(raw)
        return serialization.load_der_public_key(raw)
    except Exception as exc:  # the parse boundary
        raise InputError("not a valid public key", reason="malformed_public_key") from exc


def spki_der(public_key: PublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo of ``public_key``."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_sha256(public_key: PublicKeyTypes) -> str:
    """Lowercase hex SHA-256 over the DER SubjectPublicKeyInfo: the key's stable fingerprint."""
    return hashlib.sha256(spki_der(public_key)).hexdigest()


def is_p256(public_key: object) -> TypeGuard[ec.EllipticCurvePublicKey]:
    """Whether ``public_key`` is an ECDSA P-256 public key (the only kind we certify)."""
    return isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    )


# --- the tiny DER encoder/decoder -----------------------------------------------------------


def der_tlv(tag: int, content: bytes) -> bytes:
    """Encode one DER tag-length-value with a definite (short or long form) length."""
    size = len(content)
    if size < _SHORT_LENGTH_LIMIT:
        return bytes((tag, size)) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + content


def der_utf8_string(text: str) -> bytes:
    """Encode ``text`` as a DER UTF8String."""
    return der_tlv(_TAG_UTF8_STRING, text.encode("utf-8"))


def parse_der_utf8_string(value: bytes) -> str:
    """Decode a short DER UTF8String (< 128 bytes of content); anything else is ``InputError``."""
    if (
        len(value) < 2  # noqa: PLR2004 - tag and length octets
        or value[0] != _TAG_UTF8_STRING
        or value[1] >= _SHORT_LENGTH_LIMIT
        or value[1] != len(value) - 2
    ):
        raise InputError("not a short DER UTF8String", reason="malformed_extension")
    try:
        return value[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("not valid UTF-8", reason="malformed_extension") from exc


def der_signed(tbs: bytes, algorithm_identifier: bytes, signature: bytes) -> bytes:
    """Assemble ``SEQUENCE { tbs, AlgorithmIdentifier, BIT STRING signature }``.

    This is the outer shape of both a Certificate and a CertificateList (RFC 5280 §4.1, §5.1).
    """
    bit_string = der_tlv(_TAG_BIT_STRING, b"\x00" + signature)
    return der_tlv(_TAG_SEQUENCE, tbs + algorithm_identifier + bit_string)
