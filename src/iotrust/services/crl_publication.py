"""Publishing the CRL on the request path: only the CAs that changed, many revocations at once.

:func:`publish_and_install` is what ``retire``, ``rotate confirm``, fleet retirement and the
rotation sweep call after their revocations committed. It promises, when it returns without an
error: every serial in ``revoked`` is listed by the CRL of its CA that is **published**
(``crl/<ca>.crl.pem`` and ``crl/all.crl.pem``) and, with a broker, **installed** in it (verified,
atomic replace, SIGHUP processed: every new handshake meets it). Its cost:

* **Only the CAs that changed are re-signed.** The other CAs' published CRLs are reused as they
  are when they verify and are not due for refresh (less than :data:`REFRESH_THRESHOLD` left);
  a missing, unverifiable or expiring one is re-signed too.
* **Concurrent requests coalesce.** Publications are serialised by an exclusive ``flock`` (the
  broker folder's when a broker is configured, then ``DATA/.crl.lock``), across threads and
  processes, so an older CRL can never replace a newer one. A request that waited for the lock
  first looks at the CRL in force (the broker's installed bundle, else the published one): if it
  already lists every serial the request revoked, a publication that read the registry after
  the request's commit has covered it, and nothing is signed or reloaded. One re-signing thus
  serves every revocation committed before it started.

``revoked=None`` re-signs every CA's CRL (what :func:`iotrust.services.credentials.publish_crls`
does), for callers that do not know which serials they revoked. This module does not decide who
is revoked (the registry does) and does not run the broker.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotrust.adapters.files import write_atomic
from iotrust.adapters.sql.store import Database
from iotrust.core import events as ev
from iotrust.core import pki
from iotrust.core.lifecycle import CredentialState
from iotrust.core.records import CertificateAuthority
from iotrust.errors import BackendError, IotrustError
from iotrust.ports import Clock
from iotrust.services import eventlog, faults
from iotrust.services.credentials import CRL_VALIDITY, build_crl_for, crl_lock
from iotrust.services.domain import Secrets
from iotrust.services.settings import Settings

__all__ = ["REFRESH_THRESHOLD", "Publication", "crl_lock", "publish_and_install",
           "revoked_of_devices"]

#: A published CRL with less than this left is re-signed whenever its bundle is rewritten.
REFRESH_THRESHOLD: Final = timedelta(days=3)
BUNDLE: Final = "all.crl.pem"
_PEM_CRL: Final = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Publication:
    """What one call did: the CAs re-signed (empty when coalesced) and whether it installed."""

    resigned: tuple[str, ...]
    installed: bool

    @property
    def coalesced(self) -> bool:
        """Whether an earlier publication already covered this request."""
        return not self.resigned and not self.installed


def revoked_of_devices(db: Database, clock: Clock,
                       device_ids: Collection[str]) -> dict[str, set[str]]:
    """``{ca_id: serials}`` of the revoked credentials of ``device_ids`` a new CRL must list.

    Credentials expired for longer than :data:`iotrust.core.pki.EXPIRED_ENTRY_MARGIN` are left
    out: they leave the CRL (:func:`iotrust.core.pki.expired_entry_cutoff`).
    """
    cutoff = pki.expired_entry_cutoff(clock.now())
    out: dict[str, set[str]] = {}
    with db.transaction(readonly=True) as tx:
        for device_id in device_ids:
            for cred in tx.list_credentials(device_id=device_id):
                if cred.state is CredentialState.REVOKED and cred.not_after >= cutoff:
                    out.setdefault(cred.issuer_ca_id, set()).add(cred.serial_number)
    return out


def _own_crls(pem: bytes | None) -> dict[x509.Name, x509.CertificateRevocationList]:
    """Our own published CRLs by issuer, parsed lazily.

    No per-entry parse: we wrote them after verifying them. Anything unreadable gives an empty
    result (and so a re-signing).
    """
    out: dict[x509.Name, x509.CertificateRevocationList] = {}
    for block in _PEM_CRL.findall(pem or b""):
        try:
            crl = x509.load_pem_x509_crl(block)
            out[crl.issuer] = crl
        except ValueError:
            return {}
    return out


def _lists(crl: x509.CertificateRevocationList | None, serials: Collection[str]) -> bool:
    return crl is not None and all(
        crl.get_revoked_certificate_by_serial_number(int(s, 16)) is not None for s in serials)


def _token(settings: Settings) -> tuple[int, int, int] | None:
    """Identifies the published bundle (atomic replaces change the inode)."""
    try:
        st = (settings.crl_dir / BUNDLE).stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _reusable(pem: bytes | None, ca_cert: x509.Certificate, now: datetime) -> bool:
    """Whether a published per-CA CRL can go into the new bundle unchanged."""
    if not pem:
        return False
    try:
        crl = x509.load_pem_x509_crl(pem)  # ours; the signature check below covers it all
        pki.check_crl(crl, ca_cert, now)
    except (ValueError, IotrustError):
        return False
    next_update = crl.next_update_utc
    return next_update is not None and next_update - now > REFRESH_THRESHOLD


def _lists_all(pem: bytes | None, cas: list[CertificateAuthority],
               revoked: Mapping[str, Collection[str]]) -> bool:
    """Whether the bundle ``pem`` lists every serial of ``revoked`` (live CAs only)."""
    if not pem:
        return False
    by_issuer = _own_crls(pem)
    subjects = {ca.id: pki.load_certificate(ca.certificate_pem.encode()).subject for ca in cas}
    for ca_id, serials in revoked.items():
        subject = subjects.get(ca_id)
        if subject is None or not serials:
            continue  # a retired CA: nothing of it is trusted any more
        if not _lists(by_issuer.get(subject), serials):
            return False
    return True


def _resign(db: Database, settings: Settings, secrets: Secrets, clock: Clock, *,
            cas: list[CertificateAuthority], wanted: set[str] | None,
            actor: str) -> tuple[str, ...]:
    """Re-sign ``wanted`` (``None``: all) and every CA whose file is not reusable.

    Writes the per-CA files, then the bundle. Returns the CA ids re-signed.
    """
    now = clock.now()
    pems: dict[str, bytes] = {}
    for ca in cas:
        if wanted is not None and ca.id not in wanted:
            existing = _read(settings.crl_dir / f"{ca.id}.crl.pem")
            if existing is not None and _reusable(
                    existing, pki.load_certificate(ca.certificate_pem.encode()), now):
                pems[ca.id] = existing
    fresh: dict[str, bytes] = {}
    with db.transaction() as tx:
        for ca in cas:
            if ca.id in pems:
                continue
            crl = build_crl_for(tx, secrets, ca, now)
            fresh[ca.id] = crl.public_bytes(serialization.Encoding.PEM)
            eventlog.record(tx, clock, ev.CRL_PUBLISHED, actor=actor,
                            data={"ca": ca.id, "entries": len(crl),
                                  "next_update": (now + CRL_VALIDITY).isoformat()})
    for ca_id, pem in fresh.items():
        write_atomic(settings.crl_dir / f"{ca_id}.crl.pem", pem, mode=0o644)
    faults.checkpoint("crl.publish.before_bundle")
    pems |= fresh
    write_atomic(settings.crl_dir / BUNDLE, b"".join(pems[ca.id] for ca in cas), mode=0o644)
    return tuple(fresh)


def _plan(settings: Settings, broker: Any, cas: list[CertificateAuthority],  # noqa: ANN401
          revoked: Mapping[str, Collection[str]], seen: tuple[int, int, int] | None,
          ) -> set[str] | None:
    """The CAs to re-sign for ``revoked``, or ``None`` when the CRL in force lists them all.

    ``seen`` identified the published bundle right after the caller's commit: if it is still
    the same file, no publication finished since, and parsing it would be wasted work.
    """
    wanted = {ca for ca, serials in revoked.items() if serials}
    published = _read(settings.crl_dir / BUNDLE)
    installed = published if broker is None else _read(broker.layout.crl)
    if installed != published:
        # published but never installed (a crash in between): install it, re-signing only if
        # it misses a serial
        return set() if _lists_all(published, cas, revoked) else wanted
    if _token(settings) != seen and _lists_all(published, cas, revoked):
        return None
    return wanted


def publish_and_install(db: Database, settings: Settings, secrets: Secrets, clock: Clock,
                        broker: Any, *, actor: str,  # noqa: ANN401 - a BrokerControl or None
                        revoked: Mapping[str, Collection[str]] | None = None,
                        checkpoint: str | None = None,
                        on_published: Callable[[], None] | None = None) -> Publication:
    """Publish the CRLs that ``revoked`` changed and install the bundle in ``broker``.

    ``revoked`` maps CA ids to the serials (hex) that must be listed; ``None`` re-signs every
    CA. ``checkpoint`` names the fault-injection point between publication and installation,
    where ``on_published`` is also called (a stopwatch lap).
    A broker that is not running gets the file (it reads it at its next start).
    """
    if revoked is not None and not any(revoked.values()):
        return Publication((), installed=False)
    seen = _token(settings)  # after the caller's commit
    lock = broker.exclusive() if broker is not None else contextlib.nullcontext()
    with lock, crl_lock(settings):
        with db.transaction(readonly=True) as tx:
            cas = [ca for ca in tx.list_cas(role="issuing") if ca.state != "retired"]
        wanted: set[str] | None = None
        if revoked is not None:
            wanted = _plan(settings, broker, cas, revoked, seen)
            if wanted is None:  # a publication that finished while this one waited lists them
                if on_published is not None:
                    on_published()
                return Publication((), installed=False)
        resigned = _resign(db, settings, secrets, clock, cas=cas, wanted=wanted, actor=actor)
        if on_published is not None:
            on_published()
        if checkpoint is not None:
            faults.checkpoint(checkpoint)
        if broker is None:
            return Publication(resigned, installed=False)
        try:
            broker.install_crl((settings.crl_dir / BUNDLE).read_bytes())
        except BackendError as exc:
            if exc.reason != "broker_not_running":
                raise
        return Publication(resigned, installed=True)
