"""Issuing-CA rollover (DESIGN.md §8): a new issuing CA without stranding a single device.

1. :func:`rollover` — the root signs a new issuing CA (the root key must be online for this one
   step: bring the exported copy back, see ``docs/operations.md``). The new CA becomes the
   *active* one (new credentials come from it); the previous active CAs become *retiring*: still
   trusted, still publishing CRLs. The CA files, every CRL and (if configured) the broker's CA
   bundle and CRL are updated together — bundle first, then a CRL that covers every CA in it,
   then one reload — so no handshake ever meets a CA without its CRL.
2. Devices move to the new CA as they rotate (``iotrust rotate --all`` speeds that up).
3. :func:`retire_old` — once no live (unexpired issued, active or superseded) credential of a
   retiring CA remains, it is retired: dropped from the bundle and the CRL set, after the
   broker's own server certificate was re-issued by the new CA.

This module does not rotate device credentials (see :mod:`iotrust.services.rotation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import serialization

from iotrust.adapters.sql.store import Database
from iotrust.core import events as ev
from iotrust.core import pki
from iotrust.core.records import CertificateAuthority
from iotrust.errors import BackendError, ConflictError, NotFoundError
from iotrust.ports import Clock
from iotrust.services import broker as broker_svc
from iotrust.services import eventlog
from iotrust.services.credentials import publish_crls
from iotrust.services.domain import (
    ISSUING_LIFETIME,
    KeyBackend,
    Secrets,
    active_issuing_ca,
    require_domain,
    root_ca,
    write_ca_files,
)
from iotrust.services.settings import Settings

__all__ = ["CA_RETIRED", "CA_ROLLOVER", "RolloverReport", "apply_to_broker", "retire_old",
           "rollover"]

CA_ROLLOVER: Final = "ca.rollover"
CA_RETIRED: Final = "ca.retired"


@dataclass(frozen=True, slots=True)
class RolloverReport:
    """The CA that became active, the ones now retiring, and what the broker did."""

    new: CertificateAuthority
    retiring: list[str]
    broker: str  # none | applied | not_running


def _open_root(secrets: Secrets, root: CertificateAuthority) -> Any:  # noqa: ANN401 - a Signer
    try:
        return secrets.open(root.key_ref)
    except NotFoundError as exc:
        raise NotFoundError(
            "the root CA key is not online (it was exported for offline keeping): copy it back "
            "to the path in its key reference for the rollover, then remove it again "
            "(docs/operations.md, 'Issuing-CA rollover')", reason="root_key_offline") from exc


def rollover(db: Database, settings: Settings, secrets: Secrets, clock: Clock, *,
             backend: KeyBackend, actor: str, broker: Any = None) -> RolloverReport:  # noqa: ANN401
    """Introduce a new issuing CA signed by the root; the current ones become retiring."""
    now = clock.now()
    with db.transaction(readonly=True) as tx:
        domain = require_domain(tx)
        root = root_ca(tx)
        current = [c for c in tx.list_cas(role="issuing") if c.state == "active"]
        existing = {c.id for c in tx.list_cas()}
    root_signer = _open_root(secrets, root)
    root_cert = pki.load_certificate(root.certificate_pem.encode())
    stamp = now.strftime("%Y%m%d%H%M%S")
    ca_id = f"issuing-{stamp}"
    if ca_id in existing:
        raise ConflictError("a CA was created this second; retry", reason="ca_exists")
    signer, key_ref = backend.create(settings, ca_id)
    cert = pki.build_issuing_ca(root_signer, root_cert, signer.public_key,
                                f"{domain.name} Issuing CA {stamp}", domain.name, now,
                                ISSUING_LIFETIME, None)
    new = CertificateAuthority(
        id=ca_id, role="issuing", name=f"{domain.name} Issuing CA {stamp}",
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        key_ref=key_ref, state="active", not_after=cert.not_valid_after_utc, crl_number=0,
        created_at=now)
    with db.transaction() as tx:
        tx.add_ca(new)
        for old in current:
            tx.set_ca_state(old.id, "retiring")
        eventlog.record(tx, clock, ev.CA_CREATED, actor=actor,
                        data={"ca": new.id, "role": "issuing",
                              "not_after": new.not_after.isoformat()})
        eventlog.record(tx, clock, CA_ROLLOVER, actor=actor,
                        data={"new": new.id, "retiring": [c.id for c in current]})
    write_ca_files(db, settings)
    state = apply_to_broker(db, settings, secrets, clock, broker, actor=actor)
    return RolloverReport(new=new, retiring=[c.id for c in current], broker=state)


def apply_to_broker(db: Database, settings: Settings, secrets: Secrets, clock: Clock,
                    broker: Any, *, actor: str, renew_server_certificate: bool = False,  # noqa: ANN401
                    ) -> str:
    """Publish every CRL; give the broker the CA bundle, then the CRLs, then one reload.

    With ``renew_server_certificate`` the broker's TLS certificate is re-issued by the active
    issuing CA first. Returns ``none`` (no broker), ``applied`` or ``not_running``.
    """
    if broker is None:
        publish_crls(db, settings, secrets, clock, actor=actor)
        return "none"
    with broker.exclusive():
        cas = broker_svc.ca_bundle(db)
        chain = broker.layout.cert.read_bytes()
        if renew_server_certificate:
            _, chain = broker_svc.issue_service_certificate(
                db, secrets, clock, name=broker_svc.BROKER_SERVICE_NAME,
                public_key=broker.server_public_key(), dns_names=["localhost"],
                ip_addresses=["127.0.0.1"])
        publish_crls(db, settings, secrets, clock, actor=actor)
        broker.install_server_certificate(chain, cas)
        broker.write_crl((settings.crl_dir / "all.crl.pem").read_bytes())
        try:
            broker.reload()
        except BackendError as exc:
            if exc.reason != "broker_not_running":
                raise
            return "not_running"
    return "applied"


def retire_old(db: Database, settings: Settings, secrets: Secrets, clock: Clock, *,
               actor: str, broker: Any = None) -> list[str]:  # noqa: ANN401
    """Retire every retiring issuing CA that no live credential depends on any more.

    Raises ``ConflictError(ca_in_use)`` naming how many live credentials hold a retiring CA
    back (rotate them first: ``iotrust rotate --all``); ``NotFoundError(nothing_to_retire)``.
    """
    now = clock.now()
    with db.transaction(readonly=True) as tx:
        retiring = [c for c in tx.list_cas(role="issuing") if c.state == "retiring"]
        if not retiring:
            raise NotFoundError("no issuing CA is retiring (run `iotrust ca rollover` first)",
                                reason="nothing_to_retire")
        active_issuing_ca(tx)  # there must be a successor
        blocking = {c.id: tx.count_live_credentials(c.id, now) for c in retiring}
    held = {k: v for k, v in blocking.items() if v}
    if held:
        detail = ", ".join(f"{k}: {v}" for k, v in held.items())
        raise ConflictError(f"live credentials still depend on retiring CAs ({detail}); rotate "
                            "them first (`iotrust rotate --all`)", reason="ca_in_use")
    with db.transaction() as tx:
        for ca in retiring:
            tx.set_ca_state(ca.id, "retired")
            eventlog.record(tx, clock, CA_RETIRED, actor=actor,
                            data={"ca": ca.id, "not_after": ca.not_after.isoformat()})
    write_ca_files(db, settings)
    apply_to_broker(db, settings, secrets, clock, broker, actor=actor,
                    renew_server_certificate=True)
    return [c.id for c in retiring]
