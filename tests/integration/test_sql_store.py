"""The SQL registry store against real SQLite (WAL file) and real PostgreSQL, same tests on both."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from tests.integration.pg import _libpq, fresh_postgres_database

from iotrust.adapters.sql import Database, Tx
from iotrust.adapters.sql import schema as s
from iotrust.adapters.sql import store as store_module
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import (
    CredentialState,
    Device,
    DeviceState,
    KeyStorage,
    RetirementReason,
    onboard,
    quarantine,
    retire,
)
from iotrust.core.records import (
    ApiToken,
    CertificateAuthority,
    Credential,
    DeviceModel,
    EventHead,
    EventRow,
    Manufacturer,
    OnboardingSession,
    TrustDomain,
)
from iotrust.errors import BackendError, ConflictError, InputError, NotFoundError

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """One fresh PostgreSQL database for this module, migrated once, dropped afterwards."""
    with fresh_postgres_database() as url:
        Database.open(url).close()
        yield url


def _wipe_postgres(db: Database) -> None:
    tables = ", ".join(t.name for t in s.metadata.sorted_tables if t.name != "event_head")
    with db._engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        conn.execute(text("UPDATE event_head SET seq = 0, hash = ''"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return str(request.getfixturevalue("pg_module_url"))


@pytest.fixture
def db(db_url: str, backend: str) -> Iterator[Database]:
    database = Database.open(db_url)
    if backend == "postgres":
        _wipe_postgres(database)
    try:
        yield database
    finally:
        database.close()


# -- data --------------------------------------------------------------------------------------


def _sha(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def _device_id(n: int) -> str:
    return new_device_id(n.to_bytes(16, "big"))


def make_device(n: int, *, manufacturer: str = "acme", serial: str | None = None,
                spki: str | None = None, model: str | None = None) -> Device:
    return Device(
        id=_device_id(n), manufacturer=manufacturer, serial=serial or f"SN-{n:06d}",
        factory_spki_sha256=spki or _sha(f"factory-{n}"), vendor_id="acme", product_id="sensor",
        owner="operator", state=DeviceState.EXPECTED, created_at=T0, updated_at=T0, model=model,
        key_storage=KeyStorage.SECURE_ELEMENT)


def make_manufacturer(name: str = "acme") -> Manufacturer:
    return Manufacturer(name=name, display_name="ACME Corp", anchors_pem=PEM,
                        allowed=("acme:sensor",), created_at=T0)


def make_ca(ca_id: str = "ca-issuing-1") -> CertificateAuthority:
    return CertificateAuthority(id=ca_id, role="issuing", name="Issuing CA", certificate_pem=PEM,
                                key_ref="file:/tmp/ca.key", state="active",
                                not_after=T0 + timedelta(days=365), created_at=T0)


def make_credential(serial: str, device_id: str | None, spki: str,
                    ca_id: str = "ca-issuing-1") -> Credential:
    return Credential(serial_number=serial, device_id=device_id, subject=device_id or "svc@x",
                      spki_sha256=spki, issuer_ca_id=ca_id, not_before=T0,
                      not_after=T0 + timedelta(days=7), state=CredentialState.ISSUED,
                      certificate_pem=PEM, created_at=T0)


def seeded(db: Database, devices: int = 0) -> list[Device]:
    made = [make_device(i) for i in range(1, devices + 1)]
    with db.transaction() as tx:
        tx.add_manufacturer(make_manufacturer())
        tx.add_devices(made)
    return made


def expect(error: type[Exception], reason: str, call: Callable[[], object]) -> None:
    with pytest.raises(error) as info:
        call()
    assert getattr(info.value, "reason", None) == reason


def _all_devices(db: Database) -> list[Device]:
    with db.transaction(readonly=True) as tx:
        return tx.list_devices(limit=1000)


# -- migrations --------------------------------------------------------------------------------


def test_migrations_reach_head_and_match_the_schema(db: Database, db_url: str) -> None:
    assert db.schema_revision() == Database.head_revision()
    with db._engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                s.metadata)
    assert diff == []
    db.upgrade()  # idempotent
    again = Database.open(db_url, create=False)
    try:
        with again.transaction(readonly=True) as tx:
            assert tx.event_head() is None
            assert tx.get_domain() is None
    finally:
        again.close()


def test_unmigrated_database_is_refused_without_create(backend: str, tmp_path) -> None:
    if backend == "sqlite":
        expect(BackendError, "database_unavailable",
               lambda: Database.open(f"sqlite:///{tmp_path / 'missing.db'}", create=False))
        return
    with fresh_postgres_database() as url:
        expect(BackendError, "schema_outdated", lambda: Database.open(url, create=False))


def test_unreachable_database_is_a_backend_error(backend: str, tmp_path) -> None:
    url = (f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}" if backend == "sqlite"
           else "postgresql+psycopg://postgres:secret@127.0.0.1:1/none")
    with pytest.raises(BackendError) as info:
        Database.open(url)
    assert info.value.reason == "database_unavailable"
    assert "secret" not in info.value.diagnostics()


def test_lock_waits_are_bounded_and_reported_busy(db: Database, db_url: str,
                                                  backend: str) -> None:
    """Another session holds the event-log head: our append gives up as ``database_busy``."""
    if backend == "sqlite":
        holder: Any = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    else:
        holder = psycopg.connect(_libpq(db_url))
        holder.execute("SELECT seq FROM event_head WHERE id = 1 FOR UPDATE")
    impatient = Database.open(db_url, create=False, lock_timeout_s=0.2)
    try:
        def append() -> None:
            with impatient.transaction() as tx:
                tx.append_event(_chained("blocked"))

        expect(BackendError, "database_busy", append)
        holder.rollback() if backend == "postgres" else holder.execute("ROLLBACK")
        append()  # the lock is gone: works again
        with impatient.transaction(readonly=True) as tx:
            assert tx.count_events() == 1
    finally:
        holder.close()
        impatient.close()


def test_url_masks_password(backend: str) -> None:
    db = Database.__new__(Database)
    from sqlalchemy import create_engine  # noqa: PLC0415

    db._engine = create_engine("postgresql+psycopg://u:hunter2@h/db")
    assert "hunter2" not in db.url
    assert "hunter2" not in repr(db)


# -- uniqueness --------------------------------------------------------------------------------


def test_duplicate_serial_is_refused_and_nothing_changes(db: Database) -> None:
    (first,) = seeded(db, 1)
    clash = make_device(2, serial=first.serial)
    with db.transaction() as tx:
        expect(ConflictError, "duplicate_serial", lambda: tx.add_device(clash))
        # the unit of work stays usable after a refused write
        tx.add_device(make_device(3))
    assert [d.id for d in _all_devices(db)] == sorted([first.id, _device_id(3)])

    def unit_of_work() -> None:
        with db.transaction() as tx:
            tx.add_device(make_device(4))
            tx.add_device(clash)

    expect(ConflictError, "duplicate_serial", unit_of_work)
    assert _device_id(4) not in {d.id for d in _all_devices(db)}  # whole unit rolled back


def test_duplicate_factory_key_is_refused(db: Database) -> None:
    (first,) = seeded(db, 1)
    with db.transaction() as tx:
        expect(ConflictError, "duplicate_factory_key",
               lambda: tx.add_device(make_device(2, spki=first.factory_spki_sha256)))
        expect(ConflictError, "duplicate_device_id",
               lambda: tx.add_device(make_device(1, serial="other", spki=_sha("other"))))
    assert _all_devices(db) == [first]


def test_bulk_import_is_all_or_nothing(db: Database) -> None:
    seeded(db, 2)
    batch = [make_device(10), make_device(11), make_device(12, spki=_sha("factory-1"))]
    with db.transaction() as tx:
        expect(ConflictError, "duplicate_factory_key", lambda: tx.add_devices(batch))
    assert len(_all_devices(db)) == 2


def test_references_to_missing_rows_name_what_is_missing(db: Database) -> None:
    seeded(db)
    with db.transaction() as tx:
        expect(NotFoundError, "unknown_manufacturer",
               lambda: tx.add_device(make_device(1, manufacturer="nobody")))
        expect(NotFoundError, "unknown_model", lambda: tx.add_device(make_device(1, model="x1")))
        expect(NotFoundError, "unknown_manufacturer", lambda: tx.add_model(
            DeviceModel(name="x1", manufacturer="nobody", credential_lifetime_s=60,
                        created_at=T0)))
        tx.add_model(DeviceModel(name="x1", manufacturer="acme", credential_lifetime_s=60,
                                 created_at=T0, hardware_profile="key_storage: tpm\n"))
        tx.add_device(make_device(1, model="x1"))
        expect(NotFoundError, "unknown_ca",
               lambda: tx.add_credential(make_credential("1f", _device_id(1), _sha("k"))))
    with db.transaction(readonly=True) as tx:
        assert tx.get_device(_device_id(1)).model == "x1"
        assert tx.get_model("x1").hardware_profile == "key_storage: tpm\n"
        expect(NotFoundError, "unknown_model", lambda: tx.get_model("x2"))


def test_credential_key_and_serial_are_unique(db: Database) -> None:
    (device,) = seeded(db, 1)
    with db.transaction() as tx:
        tx.add_ca(make_ca())
        tx.add_credential(make_credential("1a2b", device.id, _sha("op-1")))
    with db.transaction() as tx:
        expect(ConflictError, "duplicate_credential_key",
               lambda: tx.add_credential(make_credential("3c4d", device.id, _sha("op-1"))))
        expect(ConflictError, "duplicate_credential_serial",
               lambda: tx.add_credential(make_credential("1a2b", device.id, _sha("op-2"))))
        expect(NotFoundError, "unknown_device",
               lambda: tx.add_credential(make_credential("5e", _device_id(99), _sha("op-3"))))
        tx.add_credential(make_credential("77", None, _sha("svc")))  # a service certificate
    with db.transaction(readonly=True) as tx:
        assert [c.serial_number for c in tx.list_credentials(device_id=device.id)] == ["1a2b"]
        assert tx.get_credential("77").device_id is None
        expect(NotFoundError, "unknown_credential", lambda: tx.get_credential("99"))


def test_domain_manufacturer_token_and_key_conflicts(db: Database) -> None:
    domain = TrustDomain(name="fleet", owner="operator", created_at=T0, server_id="srv-1",
                         settings={"nonce_ttl_s": 60})
    token = ApiToken(id="tok-1", name="ops", role="operator", token_sha256=_sha("secret"),
                     created_at=T0)
    with db.transaction() as tx:
        tx.create_domain(domain)
        tx.add_manufacturer(make_manufacturer())
        tx.add_token(token)
        tx.record_key(_sha("k1"), "csr", None, T0)
    with db.transaction() as tx:
        expect(ConflictError, "domain_exists", lambda: tx.create_domain(domain))
        expect(ConflictError, "manufacturer_exists",
               lambda: tx.add_manufacturer(make_manufacturer()))
        expect(ConflictError, "token_exists", lambda: tx.add_token(
            dataclasses.replace(token, id="tok-2", token_sha256=_sha("other"))))
        expect(ConflictError, "duplicate_token", lambda: tx.add_token(
            dataclasses.replace(token, id="tok-3", name="ops2")))
        expect(ConflictError, "key_reused", lambda: tx.record_key(_sha("k1"), "factory",
                                                                  _device_id(1), T0))
        assert tx.key_seen(_sha("k1"))
        assert not tx.key_seen(_sha("k2"))
    with db.transaction() as tx:
        got = tx.get_domain()
        assert got == domain
        assert got is not None
        assert dict(got.settings) == {"nonce_ttl_s": 60}
        tx.update_domain(dataclasses.replace(domain, root_ca_id="ca-root-1"))
        assert tx.find_token_by_hash(_sha("secret")) == token
        assert tx.find_token_by_hash(_sha("nope")) is None
        tx.revoke_token("ops", at=T0 + timedelta(hours=1))
        tx.revoke_token("ops", at=T0 + timedelta(hours=2))  # idempotent: first time wins
        expect(NotFoundError, "unknown_token", lambda: tx.revoke_token("ghost", at=T0))
        tx.set_manufacturer_revoked("acme", True)
        expect(NotFoundError, "unknown_manufacturer",
               lambda: tx.set_manufacturer_revoked("ghost", True))
    with db.transaction(readonly=True) as tx:
        assert tx.get_domain().root_ca_id == "ca-root-1"  # type: ignore[union-attr]
        (stored,) = tx.list_tokens()
        assert stored.revoked_at == T0 + timedelta(hours=1)
        assert not stored.active
        assert tx.get_manufacturer("acme").revoked
        assert tx.list_manufacturers()[0].allowed == ("acme:sensor",)
        expect(NotFoundError, "unknown_manufacturer", lambda: tx.get_manufacturer("ghost"))


# -- conditional updates -----------------------------------------------------------------------


def test_update_device_is_compare_and_set(db: Database) -> None:
    (device,) = seeded(db, 1)
    t1 = T0 + timedelta(minutes=5)
    active = onboard(device, t1)
    with db.transaction() as tx:
        tx.update_device(active, expected_state=DeviceState.EXPECTED)
    with db.transaction() as tx:
        expect(ConflictError, "concurrent_update",
               lambda: tx.update_device(active, expected_state=DeviceState.EXPECTED))
        moved = dataclasses.replace(quarantine(active, t1), serial="SN-other")
        expect(ConflictError, "identity_immutable",
               lambda: tx.update_device(moved, expected_state=DeviceState.ACTIVE))
        expect(NotFoundError, "unknown_device", lambda: tx.update_device(
            make_device(42), expected_state=DeviceState.EXPECTED))
        retired = retire(active, RetirementReason.COMPROMISED, t1)
        tx.update_device(retired, expected_state=DeviceState.ACTIVE)
    with db.transaction(readonly=True) as tx:
        stored = tx.get_device(device.id)
        assert stored == retired
        assert stored.retired_reason is RetirementReason.COMPROMISED
        assert tx.count_devices_by_state() == {DeviceState.EXPECTED: 0, DeviceState.ACTIVE: 0,
                                               DeviceState.QUARANTINED: 0,
                                               DeviceState.RETIRED: 1}
        expect(NotFoundError, "unknown_device", lambda: tx.get_device(_device_id(77)))


def test_update_device_can_also_record_a_contact(db: Database) -> None:
    (device,) = seeded(db, 1)
    t1, t2 = T0 + timedelta(minutes=5), T0 + timedelta(minutes=9)
    with db.transaction() as tx:
        assert tx.get_last_seen(device.id) is None
        tx.update_device(onboard(device, t1), expected_state=DeviceState.EXPECTED, seen_at=t2)
        assert tx.get_last_seen(device.id) == t2
        assert tx.get_device(device.id).state is DeviceState.ACTIVE
        moved = quarantine(onboard(device, t1), t1)
        tx.update_device(moved, expected_state=DeviceState.ACTIVE, seen_at=t1)  # not backwards
        assert tx.get_last_seen(device.id) == t2
        expect(ConflictError, "concurrent_update", lambda: tx.update_device(
            moved, expected_state=DeviceState.ACTIVE, seen_at=t2))


def test_credential_state_changes_and_revoked_serials(db: Database) -> None:
    (device,) = seeded(db, 1)
    with db.transaction() as tx:
        tx.add_ca(make_ca())
        for serial in ("a1", "b2", "c3"):
            tx.add_credential(make_credential(serial, device.id, _sha(serial)))
    revoked_at = T0 + timedelta(days=1)
    with db.transaction() as tx:
        tx.update_credential_state("a1", CredentialState.ACTIVE, expected=CredentialState.ISSUED)
        expect(ConflictError, "concurrent_update", lambda: tx.update_credential_state(
            "a1", CredentialState.ACTIVE, expected=CredentialState.ISSUED))
        tx.update_credential_state("b2", CredentialState.REVOKED, revoked_at=revoked_at,
                                   reason="key_compromise")
        with pytest.raises(TypeError):
            tx.update_credential_state("c3", CredentialState.REVOKED)
        expect(NotFoundError, "unknown_credential",
               lambda: tx.update_credential_state("ff", CredentialState.EXPIRED))
        assert tx.next_crl_number("ca-issuing-1") == 1
        assert tx.next_crl_number("ca-issuing-1") == 2
        expect(NotFoundError, "unknown_ca", lambda: tx.next_crl_number("ca-none"))
    with db.transaction(readonly=True) as tx:
        assert tx.revoked_serials("ca-issuing-1") == [("b2", revoked_at, "key_compromise")]
        assert [c.serial_number for c in tx.list_credentials(state=CredentialState.ACTIVE)] == [
            "a1"]
        assert tx.get_ca("ca-issuing-1").crl_number == 2
        assert [c.id for c in tx.list_cas(role="issuing", state="active")] == ["ca-issuing-1"]


def test_crl_numbers_are_unique_under_concurrency(db: Database) -> None:
    with db.transaction() as tx:
        tx.add_ca(make_ca())
    numbers = _in_threads(db, 8, lambda tx, _i: tx.next_crl_number("ca-issuing-1"))
    assert sorted(numbers) == list(range(1, 9))


def _in_threads(db: Database, n: int, work: Callable[[Tx, int], object]) -> list[object]:
    """Run ``work`` in ``n`` threads released together, each in its own transaction."""
    barrier = threading.Barrier(n)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            barrier.wait()
            with db.transaction() as tx:
                value = work(tx, i)
            with lock:
                results.append(value)
        except BaseException as exc:  # reported below, in the test's thread
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == n
    return results


# -- sessions and nonces -----------------------------------------------------------------------


def _session(device: Device, sid: str, nonce: str, expires: datetime) -> OnboardingSession:
    return OnboardingSession(id=sid, device_id=device.id, serial=device.serial,
                             nonce_sha256=_sha(nonce), device_nonce="00ff" * 8,
                             expires_at=expires, state="open", source="127.0.0.1",
                             created_at=T0)


def test_nonce_is_consumed_exactly_once_under_32_threads(db: Database) -> None:
    (device,) = seeded(db, 1)
    with db.transaction() as tx:
        tx.add_session(_session(device, "s-1", "n-1", T0 + timedelta(seconds=60)))
    at = T0 + timedelta(seconds=5)
    results = _in_threads(db, 32, lambda tx, _i: tx.consume_nonce("s-1", _sha("n-1"), at))
    assert results.count(True) == 1
    assert results.count(False) == 31
    with db.transaction(readonly=True) as tx:
        assert tx.get_session("s-1").consumed_at == at


def test_nonce_refusals(db: Database) -> None:
    (device,) = seeded(db, 1)
    expires = T0 + timedelta(seconds=60)
    with db.transaction() as tx:
        tx.add_session(_session(device, "s-1", "n-1", expires))
        tx.add_session(_session(device, "s-2", "n-2", expires))
        expect(ConflictError, "nonce_reused",
               lambda: tx.add_session(_session(device, "s-3", "n-1", expires)))
        expect(ConflictError, "duplicate_session",
               lambda: tx.add_session(_session(device, "s-1", "n-9", expires)))
    with db.transaction() as tx:
        assert not tx.consume_nonce("s-1", _sha("n-2"), T0)  # another session's nonce
        assert not tx.consume_nonce("s-9", _sha("n-1"), T0)  # unknown session
        assert not tx.consume_nonce("s-1", _sha("n-1"), expires)  # expired (not before expiry)
        assert tx.consume_nonce("s-2", _sha("n-2"), expires - timedelta(microseconds=1))
        assert not tx.consume_nonce("s-2", _sha("n-2"), T0)  # replayed
        tx.set_session_state("s-2", "attested", expected="open", credential_serial="abc")
        expect(ConflictError, "concurrent_update",
               lambda: tx.set_session_state("s-2", "confirmed", expected="open"))
        tx.set_session_state("s-1", "refused")
        assert not tx.consume_nonce("s-1", _sha("n-1"), T0)  # refused sessions are closed
        expect(NotFoundError, "unknown_session", lambda: tx.get_session("s-9"))
    with db.transaction(readonly=True) as tx:
        s2 = tx.get_session("s-2")
        assert (s2.state, s2.credential_serial) == ("attested", "abc")


# -- event log ---------------------------------------------------------------------------------


def _chained(kind: str, device_id: str | None = None) -> Callable[[EventHead | None], EventRow]:
    def make(head: EventHead | None) -> EventRow:
        seq = head.seq + 1 if head else 1
        prev = head.hash if head else ""
        return EventRow(seq=seq, at=T0, kind=kind, actor="test@iotrust", device_id=device_id,
                        reason=None, data='{"n":1}', prev_hash=prev,
                        hash=hashlib.sha256(f"{prev}{seq}".encode()).hexdigest())
    return make


def test_event_appends_from_16_threads_form_one_chain(db: Database) -> None:
    per_thread = 5

    def work(tx: Tx, i: int) -> list[int]:
        return [tx.append_event(_chained(f"k{i % 3}", _device_id(i))).seq
                for _ in range(per_thread)]

    _in_threads(db, 16, work)
    with db.transaction(readonly=True) as tx:
        rows = list(tx.iter_events(batch=7))
        head = tx.event_head()
        assert tx.count_events() == 16 * per_thread
    assert [r.seq for r in rows] == list(range(1, 16 * per_thread + 1))
    prev = ""
    for row in rows:
        assert row.prev_hash == prev
        assert row.hash == hashlib.sha256(f"{prev}{row.seq}".encode()).hexdigest()
        prev = row.hash
    assert head == EventHead(16 * per_thread, prev)


def test_event_filters_and_head_contract(db: Database) -> None:
    with db.transaction() as tx:
        assert tx.event_head() is None
        for i in range(10):
            tx.append_event(_chained("even" if i % 2 == 0 else "odd", _device_id(i % 3)))

        def stale(_head: EventHead | None) -> EventRow:
            return _chained("x")(None)  # pretends the log is empty

        with pytest.raises(RuntimeError):
            tx.append_event(stale)
    with db.transaction(readonly=True) as tx:
        assert [r.seq for r in tx.iter_events(kind="odd", batch=2)] == [2, 4, 6, 8, 10]
        assert [r.seq for r in tx.iter_events(device_id=_device_id(0))] == [1, 4, 7, 10]
        assert [r.seq for r in tx.iter_events(after_seq=8)] == [9, 10]
        assert tx.count_events() == 10
        with pytest.raises(RuntimeError):
            tx.append_event(_chained("x"))  # read-only unit of work


# -- reads -------------------------------------------------------------------------------------


def test_keyset_pagination(db: Database) -> None:
    devices = seeded(db, 25)
    with db.transaction() as tx:
        for d in devices[:4]:
            tx.update_device(onboard(d, T0), expected_state=DeviceState.EXPECTED)
    pages: list[list[str]] = []
    after: str | None = None
    with db.transaction(readonly=True) as tx:
        while True:
            page = tx.list_devices(limit=10, after_id=after)
            if not page:
                break
            pages.append([d.id for d in page])
            after = page[-1].id
        active = tx.list_devices(state=DeviceState.ACTIVE, limit=3)
        rest = tx.list_devices(state=DeviceState.ACTIVE, limit=3, after_id=active[-1].id)
        assert tx.list_devices(manufacturer="other") == []
        expect(InputError, "invalid_limit", lambda: tx.list_devices(limit=0))
    assert [len(p) for p in pages] == [10, 10, 5]
    flat = [i for p in pages for i in p]
    assert flat == sorted(d.id for d in devices)
    assert sorted(d.id for d in active + rest) == sorted(d.id for d in devices[:4])


def test_lookups_by_serial_and_factory_key(db: Database) -> None:
    devices = seeded(db, 3)
    with db.transaction(readonly=True) as tx:
        assert tx.find_device("acme", devices[1].serial) == devices[1]
        assert tx.find_device("acme", "nope") is None
        assert tx.find_device_by_factory_key(devices[2].factory_spki_sha256) == devices[2]
        assert tx.find_device_by_factory_key(_sha("none")) is None
        with pytest.raises(RuntimeError):
            tx.add_device(make_device(9))


def test_vouchers_supersede(db: Database) -> None:
    (device,) = seeded(db, 1)
    with db.transaction() as tx:
        assert tx.get_active_voucher(device.id) is None
        first = tx.add_voucher(device.id, _sha("v1"), b"\x01voucher", "operator", T0)
        second = tx.add_voucher(device.id, _sha("v2"), b"\x02voucher", "operator", T0)
        expect(ConflictError, "duplicate_voucher",
               lambda: tx.add_voucher(device.id, _sha("v1"), b"x", "operator", T0))
        expect(NotFoundError, "unknown_device",
               lambda: tx.add_voucher(_device_id(5), _sha("v5"), b"x", "operator", T0))
    assert second.id > first.id
    with db.transaction(readonly=True) as tx:
        assert tx.get_active_voucher(device.id) == second


def test_aware_datetimes_round_trip_as_utc(db: Database) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2026, 3, 1, 14, 30, 15, 987654, tzinfo=plus2)
    device = dataclasses.replace(make_device(1), created_at=local, updated_at=local)
    seeded(db)
    with db.transaction() as tx:
        tx.add_device(device)
        tx.touch_last_seen(device.id, local + timedelta(seconds=1))
        tx.touch_last_seen(device.id, local)  # never moves backwards
    with db.transaction(readonly=True) as tx:
        stored = tx.get_device(device.id)
        seen = tx.get_last_seen(device.id)
    assert stored.created_at == local
    assert stored.created_at.tzinfo is UTC
    assert stored.created_at.hour == 12
    assert stored.created_at.microsecond == 987654
    assert seen == local + timedelta(seconds=1)
    assert seen is not None
    assert seen.tzinfo is UTC
    with db.transaction() as tx, pytest.raises(TypeError):
        tx.touch_last_seen(device.id, datetime(2026, 1, 1))  # noqa: DTZ001 - the point


def test_shipped_head_agrees_with_alembic() -> None:
    assert store_module._shipped_head() == Database.head_revision()
