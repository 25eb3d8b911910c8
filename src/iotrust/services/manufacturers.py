"""Registering the manufacturers whose factory identities we trust, and for which models.

A manufacturer is its trust anchors (the factory root CA certificates) plus the vendor/product ids
it may vouch for. Revoking a manufacturer refuses its vouchers and onboarding from then on.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotrust.adapters.sql.store import Database
from iotrust.core import events as ev
from iotrust.core import pki
from iotrust.core.ids import check_slug
from iotrust.core.records import Manufacturer
from iotrust.errors import InputError
from iotrust.ports import Clock
from iotrust.services import eventlog

_VP = re.compile(r"^[0-9A-Za-z_-]{1,16}:[0-9A-Za-z_-]{1,16}$")


def parse_allowed(values: list[str]) -> list[str]:
    """Validate ``vendor:product`` pairs."""
    if not values:
        raise InputError("at least one vendor:product id is required", reason="invalid_allowed")
    for v in values:
        if not _VP.fullmatch(v):
            raise InputError(f"not a vendor:product pair: {v!r:.40}", reason="invalid_allowed")
    return sorted(set(values))


def add_manufacturer(
    db: Database,
    clock: Clock,
    *,
    name: str,
    anchors_pem: bytes,
    allowed: list[str],
    actor: str,
    display_name: str | None = None,
    unsafe_manufacturer_trust: bool = False,
) -> Manufacturer:
    """Register a manufacturer by its factory root certificate(s)."""
    check_slug(name, "manufacturer")
    anchors = pki.load_certificates(anchors_pem)
    for cert in anchors:
        _check_anchor(cert)
    now = clock.now()
    m = Manufacturer(
        name=name,
        display_name=display_name or name,
        anchors_pem="".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in anchors),
        allowed=parse_allowed(allowed),
        revoked=False,
        unsafe_manufacturer_trust=unsafe_manufacturer_trust,
        created_at=now,
    )
    with db.transaction() as tx:
        tx.add_manufacturer(m)
        eventlog.record(tx, clock, ev.MANUFACTURER_ADDED, actor=actor,
                        data={"manufacturer": name, "allowed": list(m.allowed),
                              "anchors": [pki.spki_sha256(c.public_key()) for c in anchors],
                              "unsafe_manufacturer_trust": unsafe_manufacturer_trust})
    return m


def revoke_manufacturer(db: Database, clock: Clock, name: str, *, actor: str) -> None:
    """Stop trusting a manufacturer's factory identities and vouchers."""
    with db.transaction() as tx:
        tx.get_manufacturer(name)
        tx.set_manufacturer_revoked(name, revoked=True)
        eventlog.record(tx, clock, ev.MANUFACTURER_REVOKED, actor=actor,
                        data={"manufacturer": name})


def anchors_of(m: Manufacturer) -> list[x509.Certificate]:
    """The manufacturer's trust anchors as certificates."""
    return pki.load_certificates(m.anchors_pem.encode())


def _check_anchor(cert: x509.Certificate) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise InputError("a manufacturer trust anchor must be a CA certificate",
                         reason="anchor_not_ca")
