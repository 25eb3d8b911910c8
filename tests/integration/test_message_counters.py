"""SqlCounterStore and ReplayGuard on real SQLite and PostgreSQL: counters survive a restart."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text
from tests.integration.pg import fresh_postgres_database

from iotrust.adapters.sql import Database
from iotrust.adapters.sql import schema as s
from iotrust.adapters.sql.counters import SqlCounterStore
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import Device, DeviceState, KeyStorage
from iotrust.core.records import Manufacturer
from iotrust.errors import IotrustError, TrustError
from iotrust.ports import FixedClock, MessageCounter
from iotrust.services.counters import ReplayGuard

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
BACKENDS = [pytest.param("sqlite", id="sqlite"),
            pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database.open(f"sqlite:///{tmp_path / 'registry.db'}")
        try:
            yield database
        finally:
            database.close()
        return
    with fresh_postgres_database() as url:
        database = Database.open(url)
        try:
            yield database
        finally:
            database.close()


def devices(db: Database, n: int) -> list[str]:
    ids = [new_device_id(i.to_bytes(16, "big")) for i in range(1, n + 1)]
    with db.transaction() as tx:
        tx.add_manufacturer(Manufacturer(name="acme", display_name="ACME", anchors_pem=PEM,
                                         allowed=("acme:sensor",), created_at=T0))
        tx.add_devices([Device(id=d, manufacturer="acme", serial=f"SN-{i}",
                               factory_spki_sha256=f"{i:064x}", vendor_id="acme",
                               product_id="sensor", owner="op", state=DeviceState.ACTIVE,
                               created_at=T0, updated_at=T0,
                               key_storage=KeyStorage.SECURE_ELEMENT)
                        for i, d in enumerate(ids, start=1)])
    return ids


def accept(g: ReplayGuard, device: str, counter: int) -> bool:
    reason = None
    try:
        g.admit(device, lambda w: w.check_and_update(counter))
    except TrustError as exc:
        reason = exc.reason
    assert reason in {None, "replayed"}
    return reason is None


def test_round_trip_of_states_including_a_1024_bit_window(db: Database) -> None:
    a, b = devices(db, 2)
    store = SqlCounterStore(db)
    big = MessageCounter(a, 2**63 - 2, (1 << 1024) - 1, 1024, 2**63 - 1)
    small = MessageCounter(b, 5, 0b101001, 64, None)
    store.save_counters([big, small], T0)
    assert store.load_counters(a) == big
    assert store.load_counters(b) == small
    assert store.load_counters(new_device_id(bytes(16))) is None
    # a reservation is never lowered by a later write; a clean write clears it
    store.save_counters([MessageCounter(a, 2**63 - 2, 1, 1024, 2**63 - 2)], T0)
    assert store.load_counters(a).reserved == 2**63 - 1  # type: ignore[union-attr]
    store.save_counters([MessageCounter(a, 7, 1, 1024, None)], T0)
    assert store.load_counters(a).reserved is None  # type: ignore[union-attr]


def test_counters_survive_clean_and_crashed_restarts(db: Database) -> None:
    ids = devices(db, 20)
    store = SqlCounterStore(db)
    clock = FixedClock(T0)
    g = ReplayGuard(store, clock, reservation=100, flush_every=50)
    for c in range(1, 41):
        for d in ids:
            assert accept(g, d, c)
    g.close()
    g = ReplayGuard(store, clock, reservation=100, flush_every=50)
    for d in ids:
        assert not accept(g, d, 40)
        assert not accept(g, d, 7)
        assert accept(g, d, 41)
    # crash: drop g without close
    g = ReplayGuard(store, clock, reservation=100)
    for d in ids:
        assert not accept(g, d, 41)
        assert not accept(g, d, 42)  # the gap: refused, bounded by the reservation
        assert accept(g, d, 41 + 100 + 1)
    g.close()
    with db.transaction(readonly=True) as tx:
        rows = tx._exec(select(func.count()).select_from(s.message_counters)).scalar_one()
        assert rows == 20
        assert tx._exec(text("SELECT COUNT(*) FROM message_counters WHERE reserved IS NULL")
                        ).scalar_one() == 20


def test_counters_need_a_known_device(db: Database) -> None:
    store = SqlCounterStore(db)
    with pytest.raises(IotrustError):
        store.save_counters([MessageCounter(new_device_id(bytes(16)), 1, 1, 64, 65)], T0)
