"""The hand-written statements of the store's hot path store and read what Core would.

Same backends as ``test_sql_store`` (real SQLite file, real PostgreSQL). Stored datetimes must
match SQLAlchemy's byte for byte, so rows written either way compare and sort alike.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import sqlite
from tests.integration.test_sql_store import (  # noqa: F401 - fixtures
    T0,
    _chained,
    _device_id,
    _session,
    _sha,
    backend,
    db,
    db_url,
    expect,
    make_ca,
    make_credential,
    pg_module_url,
    seeded,
)

from iotrust.adapters.sql import Database
from iotrust.adapters.sql import fastpath as fp
from iotrust.adapters.sql import schema as s
from iotrust.errors import ConflictError, NotFoundError

_SAMPLES = [
    T0,
    datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC),  # no microseconds: still six digits
    datetime(1999, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
    datetime(2026, 3, 1, 14, 30, 15, 987654, tzinfo=timezone(timedelta(hours=2))),
    datetime(2026, 3, 1, 1, 0, 0, 500000, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
]


def test_sqlite_datetime_text_is_sqlalchemys() -> None:
    dialect = sqlite.dialect()
    impl = s.UtcDateTime().dialect_impl(dialect)
    bind = impl.bind_processor(dialect)
    result = impl.result_processor(dialect, None)
    assert bind is not None
    assert result is not None
    for value in _SAMPLES:
        stored = fp.dialect_for("sqlite").dt_in(value)
        assert stored == bind(value)
        back = fp.dialect_for("sqlite").dt_out(stored)
        assert back == result(stored) == value
        assert back is not None
        assert back.tzinfo is UTC
    for name in ("sqlite", "postgresql"):
        assert fp.dialect_for(name).dt_in(None) is None
        with pytest.raises(TypeError):
            fp.dialect_for(name).dt_in(datetime(2026, 1, 1))  # noqa: DTZ001 - the point


def test_rows_written_by_hand_and_by_core_are_identical(db: Database) -> None:  # noqa: F811
    (device,) = seeded(db, 1)
    local = datetime(2026, 3, 1, 14, 30, 15, 987654, tzinfo=timezone(timedelta(hours=2)))
    by_core = dataclasses.replace(_session(device, "s-core", "n-1", local), created_at=local)
    by_hand = dataclasses.replace(by_core, id="s-hand", nonce_sha256=_sha("n-2"))
    with db.transaction() as tx:
        tx.add_session(by_core)  # Core
        tx.open_session(by_hand, factory_spki=b"\x30\x01", voucher_sha256=_sha("v"))  # by hand
        tx.add_ca(make_ca())
        tx.add_credential(make_credential("a1", device.id, _sha("k")))
        tx.append_event(_chained("e"))
        tx.add_onboarding_attempt(device.serial, "10.0.0.1", local)
        tx.record_key(_sha("k2"), "credential", device.id, local)
    with db._engine.connect() as conn:
        sessions = conn.execute(text(
            "SELECT expires_at, created_at, consumed_at, state FROM onboarding_sessions "
            "ORDER BY id")).all()
        assert sessions[0] == sessions[1]
        stored = [conn.execute(text(q)).scalar_one() for q in (
            "SELECT at FROM onboarding_attempts", "SELECT first_seen_at FROM seen_keys",
            "SELECT not_before FROM credentials", "SELECT at FROM events")]
    if db.dialect == "sqlite":
        assert sessions[0][0] == "2026-03-01 12:30:15.987654"
        assert stored == ["2026-03-01 12:30:15.987654", "2026-03-01 12:30:15.987654",
                          "2026-01-01 12:00:00.123456", "2026-01-01 12:00:00.123456"]
    else:
        assert stored == [local, local, T0, T0]
    with db.transaction(readonly=True) as tx:
        context = tx.get_session_context("s-hand")
        assert context is not None
        session, binding, pem, dev = context
        assert session == tx.get_session("s-hand")
        assert session.expires_at == local
        assert session.expires_at.tzinfo is UTC
        assert binding == tx.session_binding("s-hand")
        assert pem is None
        assert dev == tx.list_devices()[0] == tx.get_device(device.id)
        before = local - timedelta(seconds=1)
        assert tx.onboarding_admission(since=local, serial=device.serial, source="10.0.0.1",
                                       at=before) == (1, 1, False)
        assert tx.onboarding_admission(since=local, serial=None, source="10.0.0.2",
                                       at=local) == (0, 0, True)  # its nonce expired at local
        assert tx.live_session_exists(device.id, local - timedelta(seconds=1))
        assert tx.key_seen(_sha("k2"))
        assert tx.get_domain() is None


def test_hand_written_writes_refuse_like_core_ones(db: Database) -> None:  # noqa: F811
    (device,) = seeded(db, 1)
    expires = T0 + timedelta(seconds=60)

    def open_(sid: str, nonce: str, device_id: str = device.id) -> None:
        session = dataclasses.replace(_session(device, sid, nonce, expires), device_id=device_id)
        tx.open_session(session, factory_spki=b"\x30\x01", voucher_sha256=_sha("v"))

    with db.transaction() as tx:
        open_("s-1", "n-1")
        expect(ConflictError, "nonce_reused", lambda: open_("s-2", "n-1"))
        expect(ConflictError, "duplicate_session", lambda: open_("s-1", "n-3"))
        expect(NotFoundError, "unknown_device", lambda: open_("s-4", "n-4", _device_id(99)))
        tx.record_key(_sha("k"), "credential", device.id, T0)
        expect(ConflictError, "key_reused",
               lambda: tx.record_key(_sha("k"), "credential", device.id, T0))
        open_("s-5", "n-5")  # the unit of work is still usable after the refusals
        with pytest.raises(TypeError):
            tx.add_onboarding_attempt("SN", "10.0.0.1", datetime(2026, 1, 1))  # noqa: DTZ001
        assert tx.attest_session("s-5", _sha("n-5"), T0, expires)
        assert not tx.attest_session("s-5", _sha("n-5"), T0, expires)  # spent
    with db.transaction(readonly=True) as tx:
        assert {tx.get_session(i).state for i in ("s-1", "s-5")} == {"open", "attested"}
        with pytest.raises(RuntimeError):
            tx.attest_session("s-1", _sha("n-1"), T0, expires)
        with pytest.raises(RuntimeError):
            tx.record_key(_sha("k9"), "credential", device.id, T0)
    with pytest.raises(RuntimeError):
        tx.get_domain()  # the unit of work is over


def test_device_columns_agree_with_the_core_mapper() -> None:
    from iotrust.adapters.sql import store  # noqa: PLC0415

    assert tuple(c.name for c in store._DEVICE_COLUMNS) == fp.DEVICE_FIELDS
