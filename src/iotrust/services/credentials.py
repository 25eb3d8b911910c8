"""Issuing, revoking and publishing: operational credentials and the CRL.

Issuance checks the CSR (signature, P-256, key never seen before), sets the subject itself and
records the credential, the key and an event in the caller's transaction; onboarding builds the
certificate before its write transaction (:meth:`Issuer.build`) and records it inside
(:meth:`Issuer.record`), so the signing does not hold the database's write lock.
``publish_crl`` builds a CRL from the registry, verifies it, and replaces the published file
atomically: a garbage, empty or missing CRL at a broker reload fails open, so nothing unverified
is ever written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.adapters.files import write_atomic
from iotrust.adapters.sql.store import Database, Tx
from iotrust.core import events as ev
from iotrust.core import pki
from iotrust.core.lifecycle import CredentialState
from iotrust.core.records import CertificateAuthority, Credential
from iotrust.errors import ConflictError
from iotrust.ports import Clock
from iotrust.services import eventlog, faults
from iotrust.services.domain import Secrets, active_issuing_ca, crl_url_for, require_domain
from iotrust.services.settings import Settings

DEFAULT_CREDENTIAL_LIFETIME = timedelta(days=30)
CRL_VALIDITY = timedelta(days=7)
_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
}


@dataclass(frozen=True, slots=True)
class Built:
    """A certificate built and signed but not recorded: not a credential until recorded."""

    credential: Credential
    certificate: x509.Certificate
    ca: CertificateAuthority


@dataclass(frozen=True, slots=True)
class Issued:
    """A freshly issued credential and its certificate."""

    credential: Credential
    certificate: x509.Certificate
    ca: CertificateAuthority


class Issuer:
    """Issues device credentials from the active issuing CA, caching the opened CA key."""

    def __init__(self, secrets: Secrets, clock: Clock) -> None:
        self._secrets = secrets
        self._clock = clock
        self._contexts: dict[str, pki.IssuingContext] = {}

    def context(self, ca: CertificateAuthority) -> pki.IssuingContext:
        """The issuing context for ``ca`` (opened once per process)."""
        ctx = self._contexts.get(ca.id)
        if ctx is None:
            cert = pki.load_certificate(ca.certificate_pem.encode())
            ctx = pki.IssuingContext.from_ca(cert, self._secrets.open(ca.key_ref))
            self._contexts[ca.id] = ctx
        return ctx

    def issue_for_device(
        self,
        tx: Tx,
        *,
        device_id: str,
        csr: x509.CertificateSigningRequest | bytes,
        lifetime: timedelta = DEFAULT_CREDENTIAL_LIFETIME,
        actor: str,
        crl_url: str | None = None,
    ) -> Issued:
        """Check ``csr`` and issue an operational certificate for ``device_id`` within ``tx``."""
        return self.issue_for_key(tx, device_id=device_id, public_key=pki.check_csr(csr),
                                  lifetime=lifetime, actor=actor, crl_url=crl_url)

    def issue_for_key(
        self,
        tx: Tx,
        *,
        device_id: str,
        public_key: ec.EllipticCurvePublicKey,
        lifetime: timedelta = DEFAULT_CREDENTIAL_LIFETIME,
        actor: str,
        crl_url: str | None = None,
    ) -> Issued:
        """:meth:`issue_for_device` for a key the caller took from a CSR it already checked.

        ``public_key`` must come from :func:`iotrust.core.pki.check_csr` (proof of possession,
        P-256), as onboarding's ``check_attest`` does; everything after that check is the same:
        the key is recorded (``ConflictError(key_reused)`` if ever seen), the certificate issued,
        the credential stored and the event recorded, all within ``tx``. It is :meth:`build`
        then :meth:`record` in one transaction.
        """
        ca = active_issuing_ca(tx)
        if crl_url is None:
            crl_url = crl_url_for(require_domain(tx), ca.id)
        built = self.build(ca, device_id=device_id, public_key=public_key, lifetime=lifetime,
                           crl_url=crl_url)
        return self.record(tx, built, actor=actor)

    def build(
        self,
        ca: CertificateAuthority,
        *,
        device_id: str,
        public_key: ec.EllipticCurvePublicKey,
        lifetime: timedelta = DEFAULT_CREDENTIAL_LIFETIME,
        crl_url: str | None,
        now: datetime | None = None,
    ) -> Built:
        """Build and sign a certificate for a checked key, *outside* any transaction.

        Nothing is recorded: the result is only a credential once :meth:`record` stored it in
        a committed transaction; a built certificate that is never recorded must be discarded
        (never handed out). ``ca`` is the active issuing CA the caller read (``record`` checks
        it is still the active one), ``crl_url`` what the certificate names as its CRL
        (``None``: none), ``public_key`` as for :meth:`issue_for_key`.
        """
        now = self._clock.now() if now is None else now
        serial = pki.new_serial_number(os.urandom(20))
        cert = self.context(ca).issue_device(
            device_id=device_id, public_key=public_key, serial_number=serial,
            not_before=now - timedelta(minutes=5), lifetime=lifetime, crl_url=crl_url)
        spki = pki.spki_sha256(public_key)
        cred = Credential(
            serial_number=f"{serial:x}", device_id=device_id, subject=device_id, spki_sha256=spki,
            issuer_ca_id=ca.id, not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc, state=CredentialState.ISSUED,
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            revoked_at=None, revocation_reason=None, created_at=now)
        return Built(credential=cred, certificate=cert, ca=ca)

    def record(self, tx: Tx, built: Built, *, actor: str) -> Issued:
        """Record a :meth:`build` result within ``tx``: key, credential and event.

        ``ConflictError(key_reused)`` if the key was ever seen (recorded first, so nothing else
        is written), ``ConflictError(issuing_ca_changed)`` if ``built.ca`` is no longer the
        active issuing CA (build again from the current one).
        """
        cred = built.credential
        tx.record_key(cred.spki_sha256, "credential", cred.device_id, cred.created_at)
        if active_issuing_ca(tx).id != built.ca.id:
            raise ConflictError("the issuing CA changed since the certificate was built",
                                reason="issuing_ca_changed")
        tx.add_credential(cred)
        eventlog.record(tx, self._clock, ev.CREDENTIAL_ISSUED, actor=actor,
                        device_id=cred.device_id,
                        data={"serial": cred.serial_number, "ca": built.ca.id,
                              "not_after": cred.not_after.isoformat(),
                              "spki_sha256": cred.spki_sha256})
        return Issued(credential=cred, certificate=built.certificate, ca=built.ca)


def revoke_credential(tx: Tx, clock: Clock, serial_hex: str, *, reason: str, actor: str) -> bool:
    """Revoke one credential within ``tx``; returns False if it was already revoked."""
    cred = tx.get_credential(serial_hex)
    if cred.state is CredentialState.REVOKED:
        return False
    tx.update_credential_state(serial_hex, CredentialState.REVOKED, revoked_at=clock.now(),
                               reason=reason)
    eventlog.record(tx, clock, ev.CREDENTIAL_REVOKED, actor=actor, device_id=cred.device_id,
                    reason=reason, data={"serial": serial_hex, "ca": cred.issuer_ca_id})
    return True


def build_crl_for(tx: Tx, secrets: Secrets, ca: CertificateAuthority, now: datetime,
                  validity: timedelta = CRL_VALIDITY) -> x509.CertificateRevocationList:
    """Build and verify a fresh CRL of ``ca`` from the registry within ``tx``.

    Credentials that expired more than :data:`iotrust.core.pki.EXPIRED_ENTRY_MARGIN` before
    ``now`` are left out (refused by their validity period everywhere).
    """
    ca_cert = pki.load_certificate(ca.certificate_pem.encode())
    entries = [
        pki.RevokedEntry(serial_number=int(serial_hex, 16), revoked_at=at,
                         reason=_REASONS.get(reason or "", x509.ReasonFlags.unspecified))
        for serial_hex, at, reason in tx.revoked_serials(
            ca.id, not_after_from=pki.expired_entry_cutoff(now))
    ]
    number = tx.next_crl_number(ca.id)
    crl = pki.build_crl(secrets.open(ca.key_ref), ca_cert, entries, crl_number=number,
                        this_update=now, next_update=now + validity)
    pki.check_crl(crl, ca_cert, now)  # never publish what we could not verify ourselves
    return crl


def publish_crls(db: Database, settings: Settings, secrets: Secrets, clock: Clock, *,
                 actor: str) -> list[str]:
    """Re-sign the CRL of every non-retired issuing CA and replace the published files atomically.

    Writes ``crl/<ca-id>.crl.pem`` per CA and ``crl/all.crl.pem`` (every CA's CRL, the form
    Mosquitto's ``crlfile`` and ``openssl -CRLfile`` take). Returns the CA ids published.
    """
    with crl_lock(settings):  # one publication at a time: an older CRL never replaces a newer
        now = clock.now()
        published: list[tuple[str, bytes]] = []
        with db.transaction() as tx:
            for ca in tx.list_cas(role="issuing"):
                if ca.state == "retired":
                    continue
                crl = build_crl_for(tx, secrets, ca, now)
                pem = crl.public_bytes(serialization.Encoding.PEM)
                published.append((ca.id, pem))
                eventlog.record(tx, clock, ev.CRL_PUBLISHED, actor=actor,
                                data={"ca": ca.id, "entries": len(crl),
                                      "next_update": (now + CRL_VALIDITY).isoformat()})
        for ca_id, pem in published:
            write_atomic(settings.crl_dir / f"{ca_id}.crl.pem", pem, mode=0o644)
        faults.checkpoint("crl.publish.before_bundle")
        write_atomic(settings.crl_dir / "all.crl.pem", b"".join(p for _, p in published),
                     mode=0o644)
        return [ca_id for ca_id, _ in published]


@contextlib.contextmanager
def crl_lock(settings: Settings) -> Iterator[None]:
    """An exclusive ``flock`` on ``DATA/.crl.lock``: one publication of the CRL folder at a time.

    Outside ``crl/`` (served and backed up). Not re-entrant: a second ``flock`` from the same
    thread on a new descriptor waits.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(settings.data_dir / ".crl.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
