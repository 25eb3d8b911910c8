"""X.509 for iotrust: parse, issue, sign, revoke and verify, with no I/O.

The public surface of the PKI core:

* parse boundary: :func:`load_certificate`, :func:`load_certificates`, :func:`load_csr`,
  :func:`load_crl`, :func:`load_public_key` (any failure is an ``InputError``) and
  :func:`spki_sha256`, the key fingerprint used across iotrust;
* signing with any :class:`~iotrust.ports.Signer`: :func:`sign_builder`;
* issuance: :func:`build_root_ca`, :func:`build_issuing_ca`, :class:`IssuingContext` and the
  ``issue_*`` functions for device (LDevID), service, factory (IDevID) and voucher-signing
  certificates, :func:`read_factory_identity`, :func:`new_serial_number`;
* requests: :func:`build_csr` (any signer) and :func:`check_csr`;
* revocation: :class:`RevokedEntry`, :func:`build_crl`, :func:`check_crl`, :func:`is_revoked`,
  :func:`expired_entry_cutoff`;
* path validation: :func:`verify_chain`.

Only ECDSA P-256 with SHA-256 is issued. Time, randomness and serial numbers come from the
caller. Nothing here reads files, talks to a network or keeps state beyond a throwaway key used
to obtain to-be-signed bytes for external signers.
"""

from __future__ import annotations

from iotrust.core.pki._chain import MAX_INTERMEDIATES, verify_chain
from iotrust.core.pki._crl import (
    EXPIRED_ENTRY_MARGIN,
    MAX_CRL_ENTRIES,
    RevokedEntry,
    build_crl,
    check_crl,
    expired_entry_cutoff,
    is_revoked,
)
from iotrust.core.pki._csr import check_csr
from iotrust.core.pki._encoding import (
    MAX_BUNDLE_CERTIFICATES,
    MAX_CRL_BYTES,
    MAX_ENCODED_BYTES,
    load_certificate,
    load_certificates,
    load_crl,
    load_csr,
    load_public_key,
    spki_sha256,
)
from iotrust.core.pki._factory import FactoryIdentity, read_factory_identity
from iotrust.core.pki._issuance import (
    DEVICE_URN_PREFIX,
    SERVICE_URN_PREFIX,
    IssuingContext,
    build_issuing_ca,
    build_root_ca,
    issue_device_certificate,
    issue_factory_certificate,
    issue_service_certificate,
    issue_voucher_signer_certificate,
    new_serial_number,
)
from iotrust.core.pki._profiles import (
    DEVICE,
    FACTORY,
    IOTRUST_OID_ARC,
    ISSUING_CA,
    MAX_SERIAL_NUMBER,
    OID_DEVICE_CLASS,
    OID_VOUCHER_SIGNING,
    ROOT_CA,
    SERVICE,
    VOUCHER_SIGNER,
    CertificateProfile,
    check_vendor_product,
)
from iotrust.core.pki._request import build_csr
from iotrust.core.pki._signing import sign_builder

__all__ = [
    "DEVICE",
    "DEVICE_URN_PREFIX",
    "EXPIRED_ENTRY_MARGIN",
    "FACTORY",
    "IOTRUST_OID_ARC",
    "ISSUING_CA",
    "MAX_BUNDLE_CERTIFICATES",
    "MAX_CRL_BYTES",
    "MAX_CRL_ENTRIES",
    "MAX_ENCODED_BYTES",
    "MAX_INTERMEDIATES",
    "MAX_SERIAL_NUMBER",
    "OID_DEVICE_CLASS",
    "OID_VOUCHER_SIGNING",
    "ROOT_CA",
    "SERVICE",
    "SERVICE_URN_PREFIX",
    "VOUCHER_SIGNER",
    "CertificateProfile",
    "FactoryIdentity",
    "IssuingContext",
    "RevokedEntry",
    "build_crl",
    "build_csr",
    "build_issuing_ca",
    "build_root_ca",
    "check_crl",
    "check_csr",
    "check_vendor_product",
    "expired_entry_cutoff",
    "is_revoked",
    "issue_device_certificate",
    "issue_factory_certificate",
    "issue_service_certificate",
    "issue_voucher_signer_certificate",
    "load_certificate",
    "load_certificates",
    "load_crl",
    "load_csr",
    "load_public_key",
    "new_serial_number",
    "read_factory_identity",
    "sign_builder",
    "spki_sha256",
    "verify_chain",
]
