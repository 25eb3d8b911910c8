"""Voucher import: ``services.vouchers.import_vouchers`` next to ECDSA P-256 verification.

A real supply chain is made outside the timed region: ``init_factory``, ``mint`` (one factory
key file and IDevID per device) and, per round, a fresh trust domain (``init_domain``) with the
manufacturer registered and ``write_vouchers`` signing one voucher per device for that domain's
owner root. Only ``import_vouchers`` is timed (decode, verify, owner and vendor checks, device,
voucher, key and event rows; one transaction per batch).

The floor is one ECDSA P-256 verification per voucher on a message of the voucher's size: every
voucher needs at least that; anything above it is parsing, checks and storage.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from benchmarks import Config, Result, best, per_second, seconds
from benchmarks.crypto import verify_rate
from benchmarks.registry import ACTOR, MANUFACTURER, PASSPHRASE, PRODUCT_ID, VENDOR_ID, open_domain
from iotrust.adapters.sql.store import Database
from iotrust.ports import SystemClock
from iotrust.services import factory as factory_service
from iotrust.services import manufacturers
from iotrust.services.domain import root_ca
from iotrust.services.vouchers import ImportReport, import_vouchers


def _timed_import(db: Database, vouchers: list[bytes]) -> tuple[float, ImportReport]:
    reports: list[ImportReport] = []

    def work() -> None:
        reports.append(import_vouchers(db, SystemClock(), vouchers, actor=ACTOR))

    return per_second(len(vouchers), seconds(work)), reports[0]


def bench_voucher_import(config: Config) -> list[Result]:
    """Vouchers imported per second, next to ECDSA verifications per second."""
    n = config.pick(5_000, 500)
    clock = SystemClock()
    with tempfile.TemporaryDirectory(prefix="iotrust-bench-") as tmp:
        base = Path(tmp)
        made = factory_service.init_factory(base / "factory", clock, name=MANUFACTURER,
                                            vendor_id=VENDOR_ID, product_id=PRODUCT_ID,
                                            passphrase=PASSPHRASE)
        factory_service.mint(made, clock, n, passphrase=PASSPHRASE)
        folders = factory_service.device_folders(made)
        anchor = made.root.public_bytes(serialization.Encoding.PEM)
        ours: list[float] = []
        floor: list[float] = []
        voucher_bytes = 0
        for r in range(config.rounds):
            domain = open_domain(base / f"domain-{r}", clock=clock)
            try:
                manufacturers.add_manufacturer(domain.db, clock, name=MANUFACTURER,
                                               anchors_pem=anchor,
                                               allowed=[f"{VENDOR_ID}:{PRODUCT_ID}"], actor=ACTOR)
                with domain.db.transaction(readonly=True) as tx:
                    owner_root = root_ca(tx).certificate_pem.encode()
                vouchers = factory_service.write_vouchers(
                    made, clock, folders, owner=domain.owner, owner_root_pem=owner_root,
                    passphrase=PASSPHRASE)
                voucher_bytes = max(len(v) for v in vouchers)
                floor.append(verify_rate(n, voucher_bytes))
                rate, report = _timed_import(domain.db, vouchers)
                ours.append(rate)
                if len(report.imported) != n:
                    raise RuntimeError(f"not every voucher was imported: {report.refused[:3]}")
            finally:
                domain.db.close()
    return [Result(
        name="voucher_import", rate=best(ours), n=n, floor="ECDSA verify", floor_rate=best(floor),
        details={"rounds_per_s": ours, "floor_rounds_per_s": floor,
                 "voucher_bytes": voucher_bytes})]
