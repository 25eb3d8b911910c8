"""Making a certificate signing request (PKCS#10) with any :class:`~iotrust.ports.Signer`.

A device asks for its operational certificate with a CSR signed by the key it wants certified
(proof of possession). That key often lives where cryptography cannot reach it (a PKCS#11 token,
a secure element), so :func:`build_csr` works with any signer, like :func:`.sign_builder` does for
certificates and CRLs.

The subject is left empty on purpose: the issuer ignores a request's subject and sets every
field itself (see :func:`.check_csr`). This module does not accept or judge requests (that is
:mod:`._csr`) and does no I/O besides calling the signer it is given.
"""

from __future__ import annotations

import hmac

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from iotrust.core.pki._encoding import der_signed, is_p256, spki_der
from iotrust.core.pki._signing import _ECDSA_WITH_SHA256, _placeholder_key
from iotrust.ports import HasPrivateKey, Signer


def _unsigned_builder() -> x509.CertificateSigningRequestBuilder:
    return x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))


def build_csr(signer: Signer) -> x509.CertificateSigningRequest:
    """A PKCS#10 request for ``signer``'s P-256 key, self-signed with ecdsa-with-SHA256.

    * ``HasPrivateKey`` signer: cryptography's builder signs with the key directly.
    * Any other signer: cryptography (48) cannot sign a request with an external key, and the
      to-be-signed ``CertificationRequestInfo`` contains the public key itself. So the builder
      signs once with a throwaway P-256 key; in its ``tbs_certrequest_bytes`` the throwaway
      key's SubjectPublicKeyInfo (91 bytes, as for every uncompressed P-256 key) is replaced by
      the signer's (same length, so no DER length changes), the signer signs those bytes, and
      ``SEQUENCE { info, AlgorithmIdentifier, BIT STRING }`` is assembled by hand.

    Either way the result is parsed back and must carry the signer's key and a valid signature.

    Raises:
        TypeError: the signer's key is not ECDSA P-256.
        RuntimeError: the signer's signature does not verify (a broken or mismatched key store:
            a bug or an outage, not bad input).
    """
    if not is_p256(signer.public_key):
        raise TypeError("only ECDSA P-256 keys can request a certificate")
    wanted = spki_der(signer.public_key)
    if isinstance(signer, HasPrivateKey):
        csr = _unsigned_builder().sign(signer.private_key, hashes.SHA256())
    else:
        placeholder = _placeholder_key()
        template = _unsigned_builder().sign(placeholder, hashes.SHA256())
        theirs = spki_der(placeholder.public_key())
        info = template.tbs_certrequest_bytes
        if len(theirs) != len(wanted) or info.count(theirs) != 1:
            raise RuntimeError("unexpected CertificationRequestInfo layout")
        info = info.replace(theirs, wanted)
        der = der_signed(info, _ECDSA_WITH_SHA256, signer.sign(info))
        csr = x509.load_der_x509_csr(der)
    if not hmac.compare_digest(spki_der(csr.public_key()), wanted):
        raise RuntimeError("the request does not carry the signer's key")
    if not csr.is_signature_valid:
        raise RuntimeError("the signer's signature does not verify against its public key")
    return csr
