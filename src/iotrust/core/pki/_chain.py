"""Certificate path validation for our private PKIs (operator and manufacturer chains).

:func:`verify_chain` builds the path leaf → intermediate(s) → trust anchor and checks it. It is
written by hand rather than with ``cryptography.x509.verification``: that verifier implements
the CA/Browser-Forum-flavoured web profile (it expects a SAN on every leaf and serverAuth or
clientAuth EKUs, which factory and voucher-signing certificates do not carry) and has no
revocation checking, while our paths are short, our profiles are few and revocation is the
point. The rules checked are the ones of RFC 5280 §6 that matter for these paths: signatures,
validity windows, CA bit, keyCertSign, path length, unknown critical extensions, and CRLs.

Signatures of certificates directly under a trust anchor are remembered in a small bounded LRU
(pure memoisation of an immutable fact, no I/O). Not done here: name constraints and policy
processing (a critical extension of that kind is refused as not understood), fetching CRLs, and
any decision about *which* anchors to trust.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID

from iotrust.core.pki._crl import check_crl, is_revoked
from iotrust.errors import TrustError

#: At most this many intermediates between a leaf and its anchor.
MAX_INTERMEDIATES = 4

_UNDERSTOOD_CRITICAL = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    }
)


#: How many verified (certificate, trust anchor) signatures are remembered.
ANCHOR_SIGNATURE_CACHE_SIZE = 256


class _VerifiedUnderAnchor:
    """A bounded LRU of certificates whose signature by a trust anchor's key verified.

    Both certificates are immutable and the key is their full DER encodings (certificates
    compare and hash by DER), so a hit stands for exactly the verification it replaces. Only
    successes directly under an anchor are kept: mostly a manufacturer's issuing CAs, met again
    at every onboarding (a leaf under its issuing CA is always verified). Validity windows,
    extensions and revocation are still checked on every path, every time.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[x509.Certificate, x509.Certificate], None] = (
            OrderedDict())
        self._lock = threading.Lock()

    def verified(self, cert: x509.Certificate, anchor: x509.Certificate) -> bool:
        key = (cert, anchor)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return True
        return False

    def remember(self, cert: x509.Certificate, anchor: x509.Certificate) -> None:
        with self._lock:
            self._entries[(cert, anchor)] = None
            self._entries.move_to_end((cert, anchor))
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


_UNDER_ANCHOR = _VerifiedUnderAnchor(ANCHOR_SIGNATURE_CACHE_SIZE)


def _issued_by(cert: x509.Certificate, candidates: Sequence[x509.Certificate], *,
               anchors: bool = False) -> int | None:
    """Index of the first candidate whose name matches and whose key verifies ``cert``.

    With ``anchors`` the candidates are trust anchors and successes are remembered.
    """
    for index, candidate in enumerate(candidates):
        if candidate.subject != cert.issuer:
            continue
        if anchors and _UNDER_ANCHOR.verified(cert, candidate):
            return index
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        if anchors:
            _UNDER_ANCHOR.remember(cert, candidate)
        return index
    return None


def _build_path(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
) -> list[x509.Certificate]:
    """Leaf first, anchor last. Anchors are preferred over intermediates at every step."""
    if leaf in anchors:
        return [leaf]
    path = [leaf]
    unused = list(intermediates)
    while True:
        current = path[-1]
        found = _issued_by(current, anchors, anchors=True)
        if found is not None:
            path.append(anchors[found])
            return path
        found = _issued_by(current, unused)
        if found is None or len(path) > MAX_INTERMEDIATES:
            raise TrustError("no valid path to a trust anchor", reason="chain_invalid")
        path.append(unused.pop(found))


def _check_certificate(cert: x509.Certificate, at: datetime) -> None:
    if at > cert.not_valid_after_utc:
        raise TrustError("a certificate of the chain has expired", reason="certificate_expired")
    if at < cert.not_valid_before_utc:
        raise TrustError("a certificate of the chain is not valid yet", reason="chain_invalid")
    for extension in cert.extensions:
        if extension.critical and extension.oid not in _UNDERSTOOD_CRITICAL:
            raise TrustError(
                f"unsupported critical extension {extension.oid.dotted_string}",
                reason="chain_invalid",
            )


def _check_issuer(issuer: x509.Certificate, certificates_below: int) -> None:
    """``issuer`` signed a certificate with ``certificates_below`` CA certificates under it."""
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise TrustError("an issuer in the chain is not a CA", reason="chain_invalid")
    if constraints.path_length is not None and certificates_below > constraints.path_length:
        raise TrustError("the chain exceeds a CA's path length", reason="chain_invalid")
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise TrustError("an issuer may not sign certificates", reason="chain_invalid")


def _check_revocation(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: Sequence[x509.CertificateRevocationList],
    at: datetime,
    *,
    required: bool,
) -> None:
    own = [crl for crl in crls if crl.issuer == issuer.subject]
    if not own:
        if required:
            raise TrustError("no CRL for the issuing CA", reason="crl_missing")
        return
    latest = max(own, key=lambda crl: crl.last_update_utc)
    check_crl(latest, issuer, at)
    if is_revoked(latest, cert.serial_number):
        raise TrustError("a certificate of the chain is revoked", reason="certificate_revoked")


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    at: datetime,
    *,
    crls: Sequence[x509.CertificateRevocationList] = (),
    require_crl: bool = False,
) -> list[x509.Certificate]:
    """Validate ``leaf`` up to one of ``anchors`` at time ``at``; return the path (leaf first).

    The path is built from ``intermediates`` (any order, unused ones ignored). Every certificate
    on it, the anchor included, must be within its validity window at ``at`` and carry no
    critical extension we do not understand; every issuer must be a CA allowed to sign
    certificates, within its path length. For each certificate below the anchor, the newest CRL
    of its issuer among ``crls`` (if any) must be valid at ``at`` and must not list it. With
    ``require_crl`` the leaf's issuing CA must have a CRL among ``crls`` (fail closed); CRLs of
    higher CAs are checked whenever they are given.

    Raises:
        TrustError: ``chain_invalid`` (no path, bad signature, not a CA, path length, not yet
            valid, unknown critical extension), ``certificate_expired``, ``certificate_revoked``,
            ``crl_missing``, ``crl_invalid`` or ``crl_expired``.
    """
    if at.tzinfo is None:
        raise TypeError("verify_chain needs a timezone-aware time")
    if not anchors:
        raise TrustError("no trust anchor configured", reason="chain_invalid")
    if len(intermediates) > MAX_INTERMEDIATES * 4:
        raise TrustError("too many intermediate certificates", reason="chain_invalid")
    path = _build_path(leaf, intermediates, anchors)
    for cert in path:
        _check_certificate(cert, at)
    for position in range(1, len(path)):
        _check_issuer(path[position], certificates_below=position - 1)
    for position in range(len(path) - 1):
        _check_revocation(
            path[position], path[position + 1], crls, at, required=require_crl and position == 0
        )
    return path
