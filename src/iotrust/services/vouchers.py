"""Importing vouchers: what makes a device *expected*.

Each voucher is checked on its own (manufacturer known and not revoked, signature chains to its
anchors, owner is this trust domain, vendor/product allowed) and either creates an EXPECTED device
or is refused with a reason and an event. A second voucher for the same serial that diverges from
the first (another key, model or owner) is refused; the same voucher again is a no-op. A factory key
already bound to another device is refused as a cloned identity. Refused vouchers change nothing
but the event log. A new device gets the device model registered for its manufacturer and product
id, if there is one (``iotrust model add --product-id``); otherwise it has no model until one is
registered or an operator sets it.

Work is batched (one transaction per batch) for throughput; the per-voucher semantics do not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from cryptography import x509

from iotrust.adapters.sql.store import Database, Tx
from iotrust.core import events as ev
from iotrust.core import pki, vouchers
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import Device, DeviceState, KeyStorage, RetirementReason, readmit
from iotrust.core.records import Manufacturer
from iotrust.errors import ConflictError, IotrustError, TrustError
from iotrust.ports import Clock
from iotrust.services import eventlog
from iotrust.services.domain import require_domain, root_ca
from iotrust.services.manufacturers import anchors_of

MAX_VOUCHER_BYTES = 16 * 1024


@dataclass(slots=True)
class ImportReport:
    """What an import did, voucher by voucher."""

    imported: list[str] = field(default_factory=list)
    unchanged: int = 0
    refused: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Vouchers seen."""
        return len(self.imported) + self.unchanged + len(self.refused)


def read_voucher_lines(data: bytes) -> Iterator[bytes]:
    """Split a voucher file: one voucher (a JSON object) per non-empty line."""
    for line in data.splitlines():
        stripped = line.strip()
        if stripped:
            yield stripped


@dataclass(slots=True)
class _Batch:
    serials: dict[tuple[str, str], str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)


class _Context:
    def __init__(self, tx: Tx) -> None:
        domain = require_domain(tx)
        self.owner = domain.owner
        root = pki.load_certificate(root_ca(tx).certificate_pem.encode())
        self.owner_spki = pki.spki_sha256(root.public_key())
        self.manufacturers: dict[str, Manufacturer | None] = {}
        self.anchors: dict[str, list[x509.Certificate]] = {}
        self.models: dict[tuple[str, str], str | None] = {}

    def manufacturer(self, tx: Tx, name: str) -> Manufacturer | None:
        if name not in self.manufacturers:
            found = [m for m in tx.list_manufacturers() if m.name == name]
            self.manufacturers[name] = found[0] if found else None
        return self.manufacturers[name]

    def model(self, tx: Tx, manufacturer: str, product_id: str) -> str | None:
        """The name of the model registered for this manufacturer's product, if any."""
        key = (manufacturer, product_id)
        if key not in self.models:
            found = tx.find_model_for_product(manufacturer, product_id)
            self.models[key] = found.name if found is not None else None
        return self.models[key]


def import_vouchers(
    db: Database,
    clock: Clock,
    items: Iterable[bytes],
    *,
    actor: str,
    random: Callable[[int], bytes] = os.urandom,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import vouchers; returns the per-voucher outcome. Never raises for one bad voucher."""
    rand = random
    report = ImportReport()
    chunk: list[tuple[int, bytes]] = []
    for index, raw in enumerate(items):
        chunk.append((index, raw))
        if len(chunk) >= batch_size:
            _import_batch(db, clock, chunk=chunk, actor=actor, report=report, rand=rand)
            if progress is not None:
                progress(len(chunk))
            chunk = []
    if chunk:
        _import_batch(db, clock, chunk=chunk, actor=actor, report=report, rand=rand)
        if progress is not None:
            progress(len(chunk))
    return report


def _import_batch(db: Database, clock: Clock, *, chunk: list[tuple[int, bytes]], actor: str,
                  report: ImportReport, rand: Callable[[int], bytes]) -> None:
    with db.transaction() as tx:
        ctx = _Context(tx)
        seen = _Batch()
        new_devices: list[Device] = []
        for index, raw in chunk:
            try:
                outcome = _one(tx, clock, ctx=ctx, seen=seen, raw=raw, actor=actor, rand=rand,
                               new_devices=new_devices)
            except IotrustError as exc:
                report.refused.append((index, exc.reason, exc.message))
                eventlog.record(tx, clock, ev.VOUCHER_REFUSED, actor=actor, reason=exc.reason,
                                data={"index": index,
                                      "voucher_sha256": hashlib.sha256(raw).hexdigest(),
                                      "detail": exc.message[:200]})
                continue
            if outcome is None:
                report.unchanged += 1
            else:
                report.imported.append(outcome)


def _one(tx: Tx, clock: Clock, *, ctx: _Context, seen: _Batch, raw: bytes, actor: str,
         rand: Callable[[int], bytes], new_devices: list[Device]) -> str | None:
    now = clock.now()
    signed = vouchers.decode_voucher(raw)
    claims = signed.claims
    m = ctx.manufacturer(tx, claims.manufacturer)
    if m is None:
        raise TrustError(f"voucher from unregistered manufacturer {claims.manufacturer!r}",
                         reason="unknown_manufacturer")
    if m.revoked:
        raise TrustError(f"manufacturer {m.name} is revoked", reason="manufacturer_revoked")
    if m.name not in ctx.anchors:
        ctx.anchors[m.name] = list(anchors_of(m))
    vouchers.verify_voucher(signed, anchors=ctx.anchors[m.name],
                            expected_owner=ctx.owner, expected_owner_spki=ctx.owner_spki, at=now)
    if f"{claims.vendor_id}:{claims.product_id}" not in m.allowed:
        raise TrustError(f"{claims.vendor_id}:{claims.product_id} is not allowed for {m.name}",
                         reason="wrong_vendor_product")
    key = (claims.manufacturer, claims.serial)
    if key in seen.serials or claims.factory_spki_sha256 in seen.keys:
        raise ConflictError("the same serial or factory key appears twice in this import",
                            reason="voucher_conflict")
    existing = tx.find_device(claims.manufacturer, claims.serial)
    if existing is not None:
        current = tx.get_active_voucher(existing.id)
        if current is not None and current.sha256 == signed.sha256:
            return None
        transferred = existing.retired_reason is RetirementReason.TRANSFERRED
        same_key = existing.factory_spki_sha256 == claims.factory_spki_sha256
        if existing.state is DeviceState.RETIRED and transferred and same_key:
            moved = readmit(existing, claims.owner, now)
            moved = dataclasses.replace(moved, model=moved.model or ctx.model(
                tx, existing.manufacturer, existing.product_id))
            tx.update_device(moved, expected_state=DeviceState.RETIRED)
            tx.add_voucher(existing.id, signed.sha256, raw, claims.owner, now)
            eventlog.record(tx, clock, ev.DEVICE_EXPECTED, actor=actor, device_id=existing.id,
                            reason="readmitted", data={"voucher_sha256": signed.sha256})
            return existing.id
        raise ConflictError(
            f"device {claims.manufacturer}/{claims.serial} already has a different voucher",
            reason="voucher_conflict")
    other = tx.find_device_by_factory_key(claims.factory_spki_sha256)
    if other is not None:
        raise TrustError(
            f"factory key is already bound to {other.manufacturer}/{other.serial}",
            reason="clone_suspected")
    device = Device(
        id=new_device_id(rand(16)),
        manufacturer=claims.manufacturer, serial=claims.serial,
        factory_spki_sha256=claims.factory_spki_sha256, vendor_id=claims.vendor_id,
        product_id=claims.product_id, owner=claims.owner, state=DeviceState.EXPECTED,
        created_at=now, updated_at=now, key_storage=KeyStorage.UNKNOWN,
        model=ctx.model(tx, claims.manufacturer, claims.product_id))
    tx.add_device(device)
    tx.add_voucher(device.id, signed.sha256, raw, claims.owner, now)
    tx.record_key(claims.factory_spki_sha256, "factory", device.id, now)
    seen.serials[key] = device.id
    seen.keys[claims.factory_spki_sha256] = device.id
    new_devices.append(device)
    eventlog.record(tx, clock, ev.VOUCHER_IMPORTED, actor=actor, device_id=device.id,
                    data={"manufacturer": device.manufacturer, "serial": device.serial,
                          "voucher_sha256": signed.sha256, "model": device.model})
    return device.id

