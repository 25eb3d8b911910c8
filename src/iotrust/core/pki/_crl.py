"""Certificate revocation lists: building them, checking them, and looking a serial up.

A CRL we publish always carries an authority key identifier and a CRL number, and always has a
``nextUpdate``: a relying party (Mosquitto, openssl, our own chain check) refuses every
certificate once it has passed, so re-signing on time is the publisher's job. This module
does not fetch, store or publish CRLs, and does not pick the CRL number (the caller keeps the
counter).

Expired entries leave the CRL (RFC 5280 §3.3 and §5: an entry may go once it has appeared on a
regularly scheduled CRL issued beyond the certificate's validity period). An entry that knows its
certificate's ``notAfter`` is dropped by :func:`build_crl` only when ``notAfter`` is more than
:data:`EXPIRED_ENTRY_MARGIN` before the new CRL's ``thisUpdate``: one full CRL lifetime (a CRL
issued in between is guaranteed, otherwise the previous one lapsed and every certificate was
refused) plus a day of clock skew. A relying party that holds a CRL without the entry has a
clock past that CRL's ``thisUpdate`` (a CRL from the future is not valid yet), so past the
certificate's ``notAfter``: the certificate is refused as expired instead of as revoked.

Built entries are remembered (pure memoisation of immutable values, no I/O), so re-signing a
large CRL pays cryptography's per-entry builder only for the new entries. What is remembered is,
per issuing CA, exactly the entries of the last CRL built for it: an entry that leaves the CRL
(expired, or its CA no longer published) is forgotten with the next CRL, so the memo never holds
more than the CRLs in force (see :data:`MEMO_MAX_CAS` and :data:`MEMO_MAX_ENTRIES`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from iotrust.core.pki._issuance import IssuingContext
from iotrust.core.pki._profiles import MAX_SERIAL_NUMBER, check_serial_number
from iotrust.core.pki._signing import sign_builder
from iotrust.errors import InputError, TrustError
from iotrust.ports import Signer

_CRL_SIGNING_KEYS = (
    ec.EllipticCurvePublicKey,
    rsa.RSAPublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)

#: Upper bound on the entries of one CRL we build.
MAX_CRL_ENTRIES = 1_000_000
#: How long past its certificate's notAfter an entry stays listed: the longest CRL lifetime we
#: publish (7 days) plus one day of clock skew.
EXPIRED_ENTRY_MARGIN = timedelta(days=8)


def expired_entry_cutoff(this_update: datetime,
                         margin: timedelta = EXPIRED_ENTRY_MARGIN) -> datetime:
    """A CRL issued at ``this_update`` lists the revoked certificates with notAfter >= this."""
    if this_update.tzinfo is None:
        raise TypeError("this_update must be timezone-aware")
    if margin < timedelta(0):
        raise ValueError("the margin cannot be negative")
    return this_update - margin


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    """One revoked certificate: its serial number, when, optionally why and its notAfter.

    ``not_after`` (the certificate's) lets :func:`build_crl` drop the entry once it expired;
    ``None`` keeps it listed for ever.
    """

    serial_number: int
    revoked_at: datetime
    reason: x509.ReasonFlags | None = None
    not_after: datetime | None = None

    def __post_init__(self) -> None:
        check_serial_number(self.serial_number)
        if self.revoked_at.tzinfo is None:
            raise TypeError("revoked_at must be timezone-aware")
        if self.not_after is not None and self.not_after.tzinfo is None:
            raise TypeError("not_after must be timezone-aware")
        if self.reason is not None and not isinstance(self.reason, x509.ReasonFlags):
            raise TypeError("reason must be an x509.ReasonFlags")
        if self.reason is x509.ReasonFlags.remove_from_crl:
            raise InputError("removeFromCRL only exists in delta CRLs", reason="invalid_crl_entry")


#: Issuing CAs whose last CRL's entries are remembered (the least recently built CA goes first).
MEMO_MAX_CAS = 16
#: Remembered entries of all CAs together (≈ 0.5 KiB each); the CA just built is always kept, the
#: least recently built others go first. One CRL holds at most :data:`MAX_CRL_ENTRIES`.
MEMO_MAX_ENTRIES = MAX_CRL_ENTRIES

_Built = dict[int, tuple[RevokedEntry, x509.RevokedCertificate]]


@dataclass(frozen=True, slots=True)
class _Remembered:
    """The entries of one CA's last CRL, and that CRL's ``nextUpdate``."""

    next_update: datetime
    built: _Built


#: Per issuing CA (issuer name DER, key identifier), the entries of its last CRL: re-signing a
#: CRL of 100,000 entries then builds only the new ones (cryptography's builder costs ≈ 15 µs
#: each). Insertion order is build order. Replaced whole, never grown, so it follows the CRLs.
_memo: dict[tuple[bytes, bytes | None], _Remembered] = {}
_memo_lock = threading.Lock()


def _build_entry(entry: RevokedEntry) -> x509.RevokedCertificate:
    """The CRL entry for ``entry`` (cryptography's builder: ≈ 15 µs)."""
    builder = (x509.RevokedCertificateBuilder().serial_number(entry.serial_number)
               .revocation_date(entry.revoked_at))
    if entry.reason is not None:
        builder = builder.add_extension(x509.CRLReason(entry.reason), critical=False)
    return builder.build()


def _remember(key: tuple[bytes, bytes | None], this_update: datetime,
              remembered: _Remembered) -> None:
    """Keep ``remembered`` as ``key``'s entries; forget CAs no longer published, then the oldest.

    A CA whose last CRL's ``nextUpdate`` is before this CRL's ``thisUpdate`` was not re-signed in
    time to stay valid: it is no longer published (retired, or another domain in a test).
    """
    with _memo_lock:
        _memo.pop(key, None)
        for other in [k for k, r in _memo.items() if r.next_update < this_update]:
            del _memo[other]
        _memo[key] = remembered  # the most recently built: last in order
        total = sum(len(r.built) for r in _memo.values())
        while len(_memo) > 1 and (len(_memo) > MEMO_MAX_CAS or total > MEMO_MAX_ENTRIES):
            oldest = next(iter(_memo))
            total -= len(_memo.pop(oldest).built)


def memo_sizes() -> dict[tuple[bytes, bytes | None], int]:
    """Remembered entries per issuing CA key (issuer name DER, key identifier); for tests."""
    with _memo_lock:
        return {k: len(r.built) for k, r in _memo.items()}


def build_crl(
    ca_signer: Signer,
    ca_cert: x509.Certificate,
    revoked: Iterable[RevokedEntry],
    *,
    crl_number: int,
    this_update: datetime,
    next_update: datetime,
    expired_entry_margin: timedelta = EXPIRED_ENTRY_MARGIN,
) -> x509.CertificateRevocationList:
    """A CRL of ``ca_cert`` listing ``revoked``, signed by ``ca_signer``.

    Entries whose ``not_after`` is before :func:`expired_entry_cutoff` (``this_update`` minus
    ``expired_entry_margin``) are left out.

    Raises:
        InputError: ``not_a_ca`` / ``ca_signer_mismatch`` (see :class:`IssuingContext`),
            ``invalid_crl_window`` if ``next_update`` is not after ``this_update``,
            ``invalid_crl_number``, ``duplicate_serial`` or ``too_large``.
    """
    context = IssuingContext(ca_cert, ca_signer)
    if this_update.tzinfo is None or next_update.tzinfo is None:
        raise TypeError("CRL times must be timezone-aware")
    if next_update <= this_update:
        raise InputError("nextUpdate must be after thisUpdate", reason="invalid_crl_window")
    if isinstance(crl_number, bool) or not 0 <= crl_number <= MAX_SERIAL_NUMBER:
        raise InputError("CRL number must be in 0..2**159-1", reason="invalid_crl_number")
    cutoff = expired_entry_cutoff(this_update, expired_entry_margin)
    aki = context.authority_key_identifier
    key = (context.issuer_name.public_bytes(), aki.key_identifier)
    with _memo_lock:
        previous = _memo.get(key)
    known: _Built = previous.built if previous is not None else {}
    built: _Built = {}  # this CRL's entries only: what the memo keeps for this CA
    left_out: set[int] = set()  # expired long enough
    entries: list[x509.RevokedCertificate] = []
    for entry in revoked:
        serial = entry.serial_number
        if serial in built or serial in left_out:
            raise InputError("a serial number is listed twice", reason="duplicate_serial")
        if len(built) + len(left_out) >= MAX_CRL_ENTRIES:
            raise InputError("too many revoked certificates", reason="too_large")
        if entry.not_after is not None and entry.not_after < cutoff:
            left_out.add(serial)  # expired long enough: refused by its validity period everywhere
            continue
        found = known.get(serial)  # an int hashes faster than the whole entry
        if found is None or (found[0] is not entry and found[0] != entry):
            found = (entry, _build_entry(entry))  # new, or the same serial with other values
        built[serial] = found
        entries.append(found[1])
    # One constructor call: the builder's add_revoked_certificate copies its whole list on every
    # call, which made a 100,000-entry CRL quadratic (40 s).
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=context.issuer_name,
        last_update=this_update,
        next_update=next_update,
        extensions=[
            x509.Extension(aki.oid, False, aki),  # noqa: FBT003 - cryptography's signature
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(crl_number)),  # noqa: FBT003
        ],
        revoked_certificates=entries,
    )
    crl = sign_builder(builder, ca_signer)
    _remember(key, this_update, _Remembered(next_update=next_update, built=built))
    return crl


def check_crl(crl: x509.CertificateRevocationList, ca_cert: x509.Certificate, at: datetime) -> None:
    """Return if ``crl`` is ``ca_cert``'s current CRL at time ``at``; raise otherwise.

    Raises:
        TrustError: ``crl_invalid`` if the issuer differs, the CA may not sign CRLs, the
            signature does not verify or ``thisUpdate`` is in the future; ``crl_expired`` if
            the CRL has no ``nextUpdate`` or ``at`` is past it.
    """
    if crl.issuer != ca_cert.subject:
        raise TrustError("the CRL was issued by another CA", reason="crl_invalid")
    try:
        usage = ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.crl_sign:
        raise TrustError("the CA may not sign CRLs", reason="crl_invalid")
    public_key = ca_cert.public_key()
    if not isinstance(public_key, _CRL_SIGNING_KEYS) or not crl.is_signature_valid(public_key):
        raise TrustError("the CRL signature does not verify", reason="crl_invalid")
    if crl.last_update_utc > at:
        raise TrustError("the CRL is not valid yet", reason="crl_invalid")
    next_update = crl.next_update_utc
    if next_update is None or at > next_update:
        raise TrustError("the CRL is past its nextUpdate", reason="crl_expired")


def is_revoked(crl: x509.CertificateRevocationList, serial_number: int) -> bool:
    """Whether ``serial_number`` is listed in ``crl`` (check the CRL first: :func:`check_crl`)."""
    return crl.get_revoked_certificate_by_serial_number(serial_number) is not None
