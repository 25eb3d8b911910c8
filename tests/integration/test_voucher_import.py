"""Voucher import on a real registry (SQLite and PostgreSQL): what makes a device expected.

Each refusal asserts its exact reason, that the registry did not change, and the event it logged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.conftest import T0
from tests.integration.pg import fresh_postgres_database

from iotrust.adapters.keys.file import EncryptedFileSigner
from iotrust.adapters.sql.store import Database
from iotrust.core import vouchers as vcore
from iotrust.ports import FixedClock
from iotrust.services import domain, factory, manufacturers
from iotrust.services import vouchers as vsvc
from iotrust.services.settings import Settings

PASS = b"correct horse battery staple"
FPASS = b"factory passphrase 0123456789"
ACTOR = "test@iotrust"


@dataclass
class World:
    db: Database
    clock: FixedClock
    settings: Settings
    factory: factory.Factory
    minted: list[factory.MintedDevice]
    vouchers: list[bytes]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    clock = FixedClock(T0)
    settings = Settings(data_dir=tmp_path / "data", database_url="")
    settings.data_dir.mkdir()

    def build(url: str) -> World:
        db = Database.open(url)
        domain.init_domain(db, settings, clock, name="fleet", owner="acme-ops",
                           backend=domain.KeyBackend(kind="file", passphrase=PASS),
                           public_url="http://127.0.0.1:8443")
        f = factory.init_factory(tmp_path / "factory", clock, name="widgetco",
                                 vendor_id="0x1234", product_id="sensor-1", passphrase=FPASS)
        minted = factory.mint(f, clock, 5, passphrase=FPASS)
        manufacturers.add_manufacturer(db, clock, name="widgetco",
                                       anchors_pem=(f.path / "root.crt.pem").read_bytes(),
                                       allowed=["0x1234:sensor-1", "0x1234:sensor-2"], actor=ACTOR)
        signed = factory.write_vouchers(f, clock, [m.folder for m in minted], owner="acme-ops",
                                        owner_root_pem=(settings.ca_dir / "root.pem").read_bytes(),
                                        passphrase=FPASS)
        return World(db, clock, settings, f, minted, signed)

    if request.param == "sqlite":
        w = build(f"sqlite:///{tmp_path / 'reg.db'}")
        yield w
        w.db.close()
    else:
        with fresh_postgres_database() as url:
            w = build(url)
            yield w
            w.db.close()


def _count(db: Database) -> int:
    with db.transaction() as tx:
        return sum(tx.count_devices_by_state().values())


def _last_event(db: Database) -> tuple[str, str | None]:
    with db.transaction() as tx:
        rows = list(tx.iter_events())
    return rows[-1].kind, rows[-1].reason


def _resign(w: World, **changes: object) -> bytes:
    """A voucher the manufacturer really signed, with some claims changed."""
    base = vcore.decode_voucher(w.vouchers[0]).claims
    fields = {f: getattr(base, f) for f in ("manufacturer", "serial", "vendor_id", "product_id",
                                            "factory_spki_sha256", "owner", "owner_spki_sha256",
                                            "created_at")}
    fields.update(changes)
    claims = vcore.VoucherClaims(**fields)  # type: ignore[arg-type]
    key = EncryptedFileSigner.load(w.factory.path / "voucher-signer.key.pem", FPASS)
    der = w.factory.voucher_signer_cert.public_bytes(serialization.Encoding.DER)
    return vcore.sign_voucher(claims, key, der)


def test_import_then_reimport(world: World) -> None:
    report = vsvc.import_vouchers(world.db, world.clock, world.vouchers, actor=ACTOR)
    assert len(report.imported) == 5
    assert not report.refused
    again = vsvc.import_vouchers(world.db, world.clock, world.vouchers, actor=ACTOR)
    assert (len(again.imported), again.unchanged) == (0, 5)
    assert _count(world.db) == 5
    with world.db.transaction() as tx:
        kinds = [e.kind for e in tx.iter_events()]
    assert kinds.count("voucher.imported") == 5


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"product_id": "sensor-2"}, "voucher_conflict"),            # diverging second voucher
        ({"serial": "SN99999999"}, "clone_suspected"),              # same factory key, new serial
        ({"owner": "someone-else"}, "voucher_wrong_owner"),
    ],
)
def test_refusals_leave_registry_unchanged(world: World, change: dict[str, object],
                                           reason: str) -> None:
    vsvc.import_vouchers(world.db, world.clock, world.vouchers, actor=ACTOR)
    bad = _resign(world, **change)
    report = vsvc.import_vouchers(world.db, world.clock, [bad], actor=ACTOR)
    assert [r[1] for r in report.refused] == [reason]
    assert _count(world.db) == 5
    assert _last_event(world.db) == ("voucher.refused", reason)


def test_wrong_vendor_product_and_revoked_manufacturer(world: World) -> None:
    bad = _resign(world, product_id="sensor-9", serial="SN77777777",
                  factory_spki_sha256="cd" * 32)
    report = vsvc.import_vouchers(world.db, world.clock, [bad], actor=ACTOR)
    assert [r[1] for r in report.refused] == ["wrong_vendor_product"]
    manufacturers.revoke_manufacturer(world.db, world.clock, "widgetco", actor=ACTOR)
    report = vsvc.import_vouchers(world.db, world.clock, world.vouchers[:1], actor=ACTOR)
    assert [r[1] for r in report.refused] == ["manufacturer_revoked"]
    assert _count(world.db) == 0
    assert _last_event(world.db) == ("voucher.refused", "manufacturer_revoked")


def test_unregistered_manufacturer_and_garbage(world: World, tmp_path: Path) -> None:
    other = factory.init_factory(tmp_path / "other", world.clock, name="rogueco",
                                 vendor_id="0x1234", product_id="sensor-1", passphrase=FPASS)
    minted = factory.mint(other, world.clock, 1, passphrase=FPASS, prefix="RG")
    rogue = factory.write_vouchers(other, world.clock, [minted[0].folder], owner="acme-ops",
                                   owner_root_pem=(world.settings.ca_dir / "root.pem").read_bytes(),
                                   passphrase=FPASS)
    report = vsvc.import_vouchers(world.db, world.clock, [*rogue, b"{not json", b"\x00" * 40],
                                  actor=ACTOR)
    assert [r[1] for r in report.refused] == ["unknown_manufacturer", "voucher_malformed",
                                              "voucher_malformed"]
    assert _count(world.db) == 0


def test_voucher_signed_by_another_makers_key_is_invalid(world: World, tmp_path: Path) -> None:
    # A second maker claims to be widgetco: its signer does not chain to widgetco's anchor.
    impostor = factory.init_factory(tmp_path / "impostor", world.clock, name="widgetco",
                                    vendor_id="0x1234", product_id="sensor-1", passphrase=FPASS)
    minted = factory.mint(impostor, world.clock, 1, passphrase=FPASS, prefix="IM")
    fake = factory.write_vouchers(impostor, world.clock, [minted[0].folder], owner="acme-ops",
                                  owner_root_pem=(world.settings.ca_dir / "root.pem").read_bytes(),
                                  passphrase=FPASS)
    report = vsvc.import_vouchers(world.db, world.clock, fake, actor=ACTOR)
    assert [r[1] for r in report.refused] == ["voucher_invalid"]
    assert _count(world.db) == 0


def test_expired_voucher_is_refused(world: World) -> None:
    folder = world.minted[0].folder
    short = factory.write_vouchers(world.factory, world.clock, [folder], owner="acme-ops",
                                   owner_root_pem=(world.settings.ca_dir / "root.pem").read_bytes(),
                                   passphrase=FPASS, lifetime=timedelta(hours=1))
    world.clock.advance(7200)
    report = vsvc.import_vouchers(world.db, world.clock, short, actor=ACTOR)
    assert [r[1] for r in report.refused] == ["voucher_invalid"]
    assert json.loads(json.dumps(report.refused))  # serialisable for --json output
