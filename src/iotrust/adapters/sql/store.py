"""The registry's storage: a :class:`Database` handing out :class:`Tx` units of work.

The same code runs on SQLite (the embedded default: WAL, foreign keys on, every writing
transaction begins with ``BEGIN IMMEDIATE`` so writers queue instead of failing half-way) and on
PostgreSQL (READ COMMITTED; single-use nonces and lifecycle transitions are conditional
``UPDATE`` statements, the event-log head is locked with ``SELECT ... FOR UPDATE``). On a SQLite
file, writing transactions first queue on :class:`~iotrust.adapters.sql.writerlock.WriterQueue`,
a lock file handed over within about a millisecond across processes, instead of in SQLite's
busy handler, which sleeps up to 100 ms between retries (docs/adr/0004).

:class:`Tx` methods take and return core values (:class:`~iotrust.core.lifecycle.Device` and the
records of :mod:`iotrust.core.records`), never driver rows. Driver errors are translated at one
seam, :func:`_translate`: integrity violations become :class:`~iotrust.errors.ConflictError` (or
:class:`~iotrust.errors.NotFoundError` for a reference to something missing) with a precise
``reason``; anything else from the driver becomes :class:`~iotrust.errors.BackendError`
(``database_busy`` or ``database_unavailable``). Each single-row write runs in a savepoint, so a
refused write leaves the registry and the unit of work as they were.

The statements of an onboarding (the session-context read, the event append with its head read,
the inserts of sessions, hellos, credentials and keys, the conditional updates of sessions,
credentials and devices, the admission counts, the device and domain reads) are hand-written SQL
run on the driver's cursor (:mod:`~iotrust.adapters.sql.fastpath`), for speed: SQLAlchemy's
``Connection.execute`` cost ≈ 80 µs of Python per statement around ≈ 15 µs of ``sqlite3``. With
them the store's CPU per in-process onboarding fell from ≈ 3.4 ms to ≈ 1.4 ms. They keep the
Core statements' semantics, value conversions, error translation and read-only checks; the
rest of the store stays on SQLAlchemy Core.

This module does not decide anything: no lifecycle rules, no hashing of events, no clock.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Executable,
    Row,
    Table,
    Text,
    bindparam,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    StatementError,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import text

from iotrust.adapters.sql import fastpath as fp
from iotrust.adapters.sql import schema as s
from iotrust.adapters.sql.writerlock import WriterQueue
from iotrust.core.ingest import VerifiedMessage
from iotrust.core.lifecycle import (
    CredentialState,
    Device,
    DeviceState,
    KeyStorage,
    RetirementReason,
)
from iotrust.core.policy import DeviceGroup, Policy, PolicyRecord, rules_from_json, rules_to_json
from iotrust.core.records import (
    ApiToken,
    CaRole,
    CaState,
    CertificateAuthority,
    Credential,
    DeviceModel,
    EventHead,
    EventRow,
    KeyKind,
    Manufacturer,
    OnboardingSession,
    SessionState,
    TrustDomain,
    Voucher,
    as_enum,
    check_sha256_hex,
)
from iotrust.core.rotation import RotationSession
from iotrust.core.zombies import ZombieRecord
from iotrust.errors import (
    BackendError,
    ConflictError,
    InputError,
    IotrustError,
    NotFoundError,
)
from iotrust.ports import MessageCounter

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["MIGRATIONS_DIR", "Database", "SessionBinding", "Tx"]

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
LOCK_TIMEOUT_S: Final = 30.0
MAX_PAGE: Final = 10_000

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SessionBinding:
    """What an onboarding session was bound to at its hello (revision 0002).

    ``factory_spki`` is the DER SubjectPublicKeyInfo of the factory key the hello's chain
    proved, ``voucher_sha256`` the hex SHA-256 of the voucher bytes sent back (of the empty
    string for an unsafe admission), ``confirm_by`` the deadline set when the nonce was spent,
    ``key_storage`` the hello's key-storage claim (revision 0010; ``None``: none stated).
    ``None`` fields belong to sessions opened without them.
    """

    factory_spki: bytes | None
    voucher_sha256: str | None
    confirm_by: datetime | None
    key_storage: str | None = None

# --------------------------------------------------------------------------------------------
# The one seam where driver errors become iotrust errors.
# --------------------------------------------------------------------------------------------

#: What each named constraint means when a write violates it.
_CONSTRAINT_ERRORS: Final[dict[str, tuple[type[IotrustError], str]]] = {
    "pk_trust_domain": (ConflictError, "domain_exists"),
    "pk_certificate_authorities": (ConflictError, "ca_exists"),
    "pk_manufacturers": (ConflictError, "manufacturer_exists"),
    "pk_device_models": (ConflictError, "model_exists"),
    "uq_device_models_manufacturer_product_id": (ConflictError, "model_product_exists"),
    "fk_device_models_manufacturer_manufacturers": (NotFoundError, "unknown_manufacturer"),
    "pk_devices": (ConflictError, "duplicate_device_id"),
    "uq_devices_manufacturer_serial": (ConflictError, "duplicate_serial"),
    "uq_devices_factory_spki_sha256": (ConflictError, "duplicate_factory_key"),
    "fk_devices_manufacturer_manufacturers": (NotFoundError, "unknown_manufacturer"),
    "fk_devices_model_device_models": (NotFoundError, "unknown_model"),
    "pk_vouchers": (ConflictError, "duplicate_voucher"),
    "uq_vouchers_sha256": (ConflictError, "duplicate_voucher"),
    "fk_vouchers_device_id_devices": (NotFoundError, "unknown_device"),
    "pk_credentials": (ConflictError, "duplicate_credential_serial"),
    "uq_credentials_spki_sha256": (ConflictError, "duplicate_credential_key"),
    "fk_credentials_device_id_devices": (NotFoundError, "unknown_device"),
    "fk_credentials_issuer_ca_id_certificate_authorities": (NotFoundError, "unknown_ca"),
    "pk_onboarding_sessions": (ConflictError, "duplicate_session"),
    "uq_onboarding_sessions_nonce_sha256": (ConflictError, "nonce_reused"),
    "fk_onboarding_sessions_device_id_devices": (NotFoundError, "unknown_device"),
    "pk_api_tokens": (ConflictError, "duplicate_token_id"),
    "uq_api_tokens_name": (ConflictError, "token_exists"),
    "uq_api_tokens_token_sha256": (ConflictError, "duplicate_token"),
    "pk_events": (ConflictError, "event_seq_taken"),
    "pk_seen_keys": (ConflictError, "key_reused"),
    "pk_policies": (ConflictError, "policy_exists"),
    "pk_device_groups": (ConflictError, "group_exists"),
    "fk_device_groups_policy_policies": (NotFoundError, "unknown_policy"),
    "fk_device_models_policy_policies": (NotFoundError, "unknown_policy"),
    "pk_device_group_members": (ConflictError, "already_member"),
    "fk_device_group_members_group_name_device_groups": (NotFoundError, "unknown_group"),
    "fk_device_group_members_device_id_devices": (NotFoundError, "unknown_device"),
    "pk_rotation_sessions": (ConflictError, "duplicate_session"),
    "uq_rotation_sessions_nonce_sha256": (ConflictError, "nonce_reused"),
    "fk_rotation_sessions_device_id_devices": (NotFoundError, "unknown_device"),
    "fk_rotation_requests_device_id_devices": (NotFoundError, "unknown_device"),
    "pk_zombies": (ConflictError, "zombie_exists"),
}


def _unique_by_columns() -> dict[tuple[str, frozenset[str]], str]:
    """(table, columns) → constraint name, for SQLite's column-listing UNIQUE messages."""
    out: dict[tuple[str, frozenset[str]], str] = {}
    for table in s.metadata.tables.values():
        for constraint in table.constraints:
            columns = frozenset(c.name for c in getattr(constraint, "columns", ()))
            if columns and constraint.name and not hasattr(constraint, "elements"):
                out[(table.name, columns)] = str(constraint.name)
        for index in table.indexes:  # unique indexes report like unique constraints
            if index.unique and index.name:
                out[(table.name, frozenset(c.name for c in index.columns))] = str(index.name)
    return out


_UNIQUE_BY_COLUMNS: Final = _unique_by_columns()
_PG_BUSY: Final = frozenset({"40001", "40P01", "55P03", "57014"})  # serialization, deadlock,
#                                                                  lock timeout, cancelled


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:200]


def _translate(exc: DBAPIError) -> BackendError:
    """Map a driver failure that is not an integrity violation to :class:`BackendError`."""
    orig = exc.orig
    text = str(orig).lower()
    sqlstate = getattr(orig, "sqlstate", None)
    busy = sqlstate in _PG_BUSY or "database is locked" in text or "database table is locked" \
        in text or "database is busy" in text
    if busy:
        return BackendError("the database is busy; retry", reason="database_busy",
                            detail=_first_line(exc))
    return BackendError("the database is unavailable", reason="database_unavailable",
                        detail=_first_line(exc))


def _unwrap(exc: StatementError) -> BaseException:
    """A bad bound value (e.g. a naive datetime) is the caller's bug: re-raise it as itself."""
    orig = exc.orig
    return orig if isinstance(orig, (TypeError, ValueError)) else exc


def _violated_constraint(exc: IntegrityError) -> str | None:
    """The name of the violated constraint, if the driver says which."""
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    name = getattr(diag, "constraint_name", None)
    if name:
        return str(name)
    text = str(orig)
    if text.startswith("UNIQUE constraint failed:"):
        pairs = [p.strip().split(".", 1) for p in text.split(":", 1)[1].split(",")]
        tables = {p[0] for p in pairs if len(p) == 2}  # noqa: PLR2004
        if len(tables) == 1:
            return _UNIQUE_BY_COLUMNS.get((tables.pop(), frozenset(p[1] for p in pairs)))
    if text.startswith("CHECK constraint failed:"):
        return text.split(":", 1)[1].strip()
    return None


# --------------------------------------------------------------------------------------------
# Row ⇄ value mapping (hand-written: no ORM in the hot paths).
# --------------------------------------------------------------------------------------------

_DEVICE_COLUMNS: Final = (
    s.devices.c.id, s.devices.c.manufacturer, s.devices.c.serial,
    s.devices.c.factory_spki_sha256, s.devices.c.vendor_id, s.devices.c.product_id,
    s.devices.c.owner, s.devices.c.state, s.devices.c.created_at, s.devices.c.updated_at,
    s.devices.c.model, s.devices.c.retired_reason, s.devices.c.key_storage,
    s.devices.c.unsafe_admission,
)
_INSERT_DEVICE: Final = insert(s.devices)


def _device(row: Sequence[Any]) -> Device:  # a Row, or a slice of a wider one
    (id_, manufacturer, serial, spki, vendor, product, owner, state, created, updated, model,
     retired, storage, unsafe) = row
    return Device(
        id=id_, manufacturer=manufacturer, serial=serial, factory_spki_sha256=spki,
        vendor_id=vendor, product_id=product, owner=owner, state=DeviceState(state),
        created_at=created, updated_at=updated, model=model,
        retired_reason=RetirementReason(retired) if retired is not None else None,
        key_storage=KeyStorage(storage), unsafe_admission=bool(unsafe))


def _device_row(d: Device) -> dict[str, Any]:
    return {
        "id": d.id, "manufacturer": d.manufacturer, "serial": d.serial,
        "factory_spki_sha256": d.factory_spki_sha256, "vendor_id": d.vendor_id,
        "product_id": d.product_id, "owner": d.owner, "model": d.model,
        "state": d.state.value,
        "retired_reason": d.retired_reason.value if d.retired_reason is not None else None,
        "key_storage": d.key_storage.value, "unsafe_admission": d.unsafe_admission,
        "created_at": d.created_at, "updated_at": d.updated_at, "last_seen_at": None,
    }


def _domain(row: Row[Any]) -> TrustDomain:
    settings = row.settings if isinstance(row.settings, dict) else json.loads(row.settings)
    return TrustDomain(name=row.name, owner=row.owner, created_at=row.created_at,
                       server_id=row.server_id, root_ca_id=row.root_ca_id, settings=settings)


def _ca(row: Row[Any]) -> CertificateAuthority:
    return CertificateAuthority(
        id=row.id, role=CaRole(row.role), name=row.name, certificate_pem=row.certificate_pem,
        key_ref=row.key_ref, state=CaState(row.state), not_after=row.not_after,
        created_at=row.created_at, crl_number=int(row.crl_number))


def _manufacturer(row: Row[Any]) -> Manufacturer:
    return Manufacturer(
        name=row.name, display_name=row.display_name, anchors_pem=row.anchors_pem,
        allowed=tuple(row.allowed), created_at=row.created_at, revoked=bool(row.revoked),
        unsafe_manufacturer_trust=bool(row.unsafe_manufacturer_trust))


def _model(row: Row[Any]) -> DeviceModel:
    return DeviceModel(name=row.name, manufacturer=row.manufacturer,
                       credential_lifetime_s=int(row.credential_lifetime_s),
                       created_at=row.created_at, hardware_profile=row.hardware_profile,
                       product_id=row.product_id)


def _voucher(row: Row[Any]) -> Voucher:
    return Voucher(id=int(row.id), device_id=row.device_id, sha256=row.sha256,
                   raw=bytes(row.raw), owner=row.owner, imported_at=row.imported_at,
                   superseded=bool(row.superseded))


def _credential(row: Row[Any]) -> Credential:
    return Credential(
        serial_number=row.serial_number, device_id=row.device_id, subject=row.subject,
        spki_sha256=row.spki_sha256, issuer_ca_id=row.issuer_ca_id, not_before=row.not_before,
        not_after=row.not_after, state=CredentialState(row.state),
        certificate_pem=row.certificate_pem, created_at=row.created_at,
        revoked_at=row.revoked_at, revocation_reason=row.revocation_reason)


def _credential_row(c: Credential) -> dict[str, Any]:
    return {
        "serial_number": c.serial_number, "device_id": c.device_id, "subject": c.subject,
        "spki_sha256": c.spki_sha256, "issuer_ca_id": c.issuer_ca_id,
        "not_before": c.not_before, "not_after": c.not_after, "state": c.state.value,
        "certificate_pem": c.certificate_pem, "revoked_at": c.revoked_at,
        "revocation_reason": c.revocation_reason, "created_at": c.created_at,
    }


def _session(row: Row[Any]) -> OnboardingSession:
    return OnboardingSession(
        id=row.id, device_id=row.device_id, serial=row.serial, nonce_sha256=row.nonce_sha256,
        device_nonce=row.device_nonce, expires_at=row.expires_at,
        state=SessionState(row.state), source=row.source, created_at=row.created_at,
        consumed_at=row.consumed_at, credential_serial=row.credential_serial)


def _token(row: Row[Any]) -> ApiToken:
    return ApiToken(id=row.id, name=row.name, role=row.role, token_sha256=row.token_sha256,
                    created_at=row.created_at, revoked_at=row.revoked_at)


def _event(row: Row[Any]) -> EventRow:
    return EventRow(seq=int(row.seq), at=row.at, kind=row.kind, actor=row.actor,
                    device_id=row.device_id, reason=row.reason, data=row.data,
                    prev_hash=row.prev_hash, hash=row.hash)


def _policy(name: str, rules: Any) -> Policy:  # noqa: ANN401 - JSON from the driver
    value = json.loads(rules) if isinstance(rules, str) else rules
    return Policy(name, rules_from_json(value))


@functools.lru_cache(maxsize=4096)
def _parse_policy(name: str, rules_text: str) -> Policy:
    """A stored policy from its rules' JSON text, memoised (the hot path of broker hooks)."""
    try:
        value = json.loads(rules_text)
    except ValueError:
        raise InputError(f"stored rules of policy {name!r:.80} are not JSON",
                         reason="policy_invalid") from None
    return Policy(name, rules_from_json(value))


def _policies_for_device_statement() -> Executable:
    p, g, m, dm, d = (s.policies, s.device_groups, s.device_group_members, s.device_models,
                      s.devices)
    rules_text = cast(p.c.rules, Text).label("rules")
    groups = (select(literal(0).label("o"), g.c.name.label("k"), p.c.name, rules_text)
              .select_from(m.join(g, g.c.name == m.c.group_name).join(p, p.c.name == g.c.policy))
              .where(m.c.device_id == bindparam("device_id")))
    model = (select(literal(1).label("o"), dm.c.name.label("k"), p.c.name, rules_text)
             .select_from(d.join(dm, dm.c.name == d.c.model).join(p, p.c.name == dm.c.policy))
             .where(d.c.id == bindparam("device_id")))
    union = groups.union_all(model).subquery()
    return select(union.c.name, union.c.rules).order_by(union.c.o, union.c.k)


_POLICIES_FOR_DEVICE: Final = _policies_for_device_statement()
_DEVICE_STATE: Final = select(s.devices.c.state).where(s.devices.c.id == bindparam("id"))
_GET_MODEL: Final = select(s.device_models).where(s.device_models.c.name == bindparam("name"))
_LOCK_DEVICE: Final = select(s.devices.c.id).where(
    s.devices.c.id == bindparam("id")).with_for_update()
_GET_CREDENTIAL: Final = select(s.credentials).where(
    s.credentials.c.serial_number == bindparam("serial"))
_GET_SESSION: Final = select(s.onboarding_sessions).where(
    s.onboarding_sessions.c.id == bindparam("id"))
_SESSION_BINDING: Final = select(
    s.onboarding_sessions.c.factory_spki, s.onboarding_sessions.c.voucher_sha256,
    s.onboarding_sessions.c.confirm_by, s.onboarding_sessions.c.key_storage,
).where(s.onboarding_sessions.c.id == bindparam("id"))


def _policy_record(row: Row[Any]) -> PolicyRecord:
    return PolicyRecord(policy=_policy(row.name, row.rules), version=int(row.version),
                        created_at=row.created_at, updated_at=row.updated_at)


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise InputError(f"limit must be between 1 and {MAX_PAGE}", reason="invalid_limit")


_SAVEPOINT: Final = fp.Sql("SAVEPOINT iotrust_write")
_ROLLBACK_TO_SAVEPOINT: Final = fp.Sql("ROLLBACK TO SAVEPOINT iotrust_write")
_RELEASE_SAVEPOINT: Final = fp.Sql("RELEASE SAVEPOINT iotrust_write")


class _Unread:
    """Marks a per-transaction memo that was not read yet (``None`` is a real value)."""


_UNREAD: Final = _Unread()


@functools.cache
def _insert_into(table: Table) -> Executable:
    """The one ``INSERT`` statement per table (built once; its compiled form is cached)."""
    return insert(table)


# --------------------------------------------------------------------------------------------
# Database
# --------------------------------------------------------------------------------------------


def _install_sqlite_hooks(engine: Engine, lock_timeout_s: float) -> None:
    """WAL, foreign keys, busy timeout; our own BEGIN (IMMEDIATE unless read-only)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:  # noqa: ANN401 - DBAPI object
        dbapi_connection.isolation_level = None  # pysqlite must not emit BEGIN itself
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(lock_timeout_s * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before the caller answers (docs/adr/0004).
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    # Our BEGIN goes in the dialect, not in a "begin" event: any engine-level connection event
    # makes SQLAlchemy dispatch (empty) before/after hooks around every statement, which cost
    # about a tenth of each statement's Python time. The read-only mark is one-shot on the
    # pooled connection (see _begin_readonly); without it the unit of work takes the write lock.
    def _do_begin(dbapi_connection: Any) -> None:  # noqa: ANN401 - pooled DBAPI connection
        readonly = dbapi_connection.info.pop(_READONLY_BEGIN, False)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
        finally:
            cursor.close()

    engine.dialect.do_begin = _do_begin  # type: ignore[method-assign]

    @event.listens_for(engine, "checkin")  # a pool event: no per-statement cost
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:  # noqa: ANN401
        record.info.pop(_READONLY_BEGIN, None)  # never outlives the checkout that set it


#: Key in a pooled connection's ``info``: its next BEGIN is a read-only (deferred) one.
_READONLY_BEGIN: Final = "iotrust_readonly_begin"


def _begin_readonly(conn: Connection) -> None:
    """Make ``conn``'s next transaction read-only (``BEGIN`` instead of ``BEGIN IMMEDIATE``).

    Set right before the transaction begins; SQLite's dialect hook consumes it, other backends
    ignore it.
    """
    conn.connection.info[_READONLY_BEGIN] = True


def _writer_queue(url: URL, lock_timeout_s: float) -> WriterQueue | None:
    """The writer queue of a SQLite file database (``None`` in memory or for URI filenames)."""
    name = url.database
    if name is None or name in ("", ":memory:") or name.startswith("file:") \
            or url.query.get("uri"):
        return None
    path = Path(name).absolute()
    return WriterQueue(path.with_name(path.name + ".writer-lock"), lock_timeout_s)


def _engine_options(url: URL, *, create: bool, lock_timeout_s: float) -> dict[str, Any]:
    """Pool and driver settings per backend (and the checks that need no connection)."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):  # one shared connection: tests only
            return {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        if not create and not Path(str(url.database)).exists():
            raise BackendError("no registry database at that path", reason="database_unavailable")
        return {"pool_size": 10, "max_overflow": 30, "pool_timeout": 60,
                "connect_args": {"timeout": lock_timeout_s}}
    if backend == "postgresql":
        return {"pool_size": 10, "max_overflow": 30, "pool_timeout": 60,
                "connect_args": {"options": f"-c lock_timeout={int(lock_timeout_s * 1000)}"}}
    raise InputError(f"unsupported database backend {backend!r}", reason="unsupported_database")


_REVISION_RE = re.compile(r'^(down_revision|revision)\s*(?::[^=]*)?=\s*["\']?([\w-]+|None)["\']?',
                          re.MULTILINE)


@functools.cache
def _shipped_head() -> str | None:
    """The newest migration shipped, read from the version files without importing Alembic.

    Alembic costs about 0.3 s to import; every CLI call opens the registry, and the schema is
    almost always current already, so the full machinery is loaded only when an upgrade is due.
    A test checks this agrees with Alembic's own idea of the head.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for kind, value in _REVISION_RE.findall(path.read_text(encoding="utf-8")):
            if kind == "revision":
                revisions.add(value)
            elif value != "None":
                parents.add(value)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _alembic_config() -> Config:
    from alembic.config import Config  # noqa: PLC0415 - Alembic is loaded only to migrate

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


class Database:
    """A registry database (SQLite file or PostgreSQL); thread-safe, one engine per process.

    Use :meth:`open`, then :meth:`transaction` for every unit of work.
    """

    def __init__(self, engine: Engine, writers: WriterQueue | None = None) -> None:
        self._engine = engine
        self._writers = writers  # SQLite files only: the cross-process writer queue

    @classmethod
    def open(cls, url: str, *, create: bool = True,
             lock_timeout_s: float = LOCK_TIMEOUT_S) -> Database:
        """Connect to ``url`` (``sqlite:///path``, ``postgresql+psycopg://...``).

        With ``create`` the schema is migrated to the newest revision; without, the database must
        already be at it (``BackendError(reason="schema_outdated")`` otherwise). A statement that
        waits longer than ``lock_timeout_s`` for a lock fails with
        ``BackendError(reason="database_busy")`` (SQLite: the writer queue, then
        ``busy_timeout``, each waited for at most this long; PostgreSQL ``lock_timeout``).
        """
        if not 0 < lock_timeout_s <= 3600:  # noqa: PLR2004 - an hour is already absurd
            raise InputError("lock timeout must be in (0, 3600] seconds",
                             reason="invalid_lock_timeout")
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise InputError("not a database URL", reason="invalid_database_url") from None
        backend = parsed.get_backend_name()
        kwargs = _engine_options(parsed, create=create, lock_timeout_s=lock_timeout_s)
        try:
            engine = create_engine(parsed, **kwargs)
        except (ArgumentError, NoSuchModuleError):
            raise InputError("unusable database URL", reason="invalid_database_url") from None
        writers = None
        if backend == "sqlite":
            _install_sqlite_hooks(engine, lock_timeout_s)
            writers = _writer_queue(parsed, lock_timeout_s)
        db = cls(engine, writers)
        try:
            if create:
                if db._current_revision_fast() != _shipped_head() or _shipped_head() is None:
                    db.upgrade()
            else:
                db._check_schema()
        except BaseException:
            engine.dispose()
            raise
        return db

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    def _current_revision_fast(self) -> str | None:
        """The ``alembic_version`` row, read with plain SQL (None if absent)."""
        try:
            with self._engine.connect() as conn:
                _begin_readonly(conn)
                row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except DBAPIError:
            return None
        return None if row is None else str(row[0])

    def upgrade(self) -> None:
        """Run the Alembic migrations up to the newest revision (idempotent)."""
        from alembic import command  # noqa: PLC0415 - Alembic is loaded only to migrate

        config = _alembic_config()
        if self._writers is not None:
            self._writers.acquire()
        try:
            with self._engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except DBAPIError as exc:
            raise _translate(exc) from None
        finally:
            if self._writers is not None:
                self._writers.release()

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (``None`` if never migrated)."""
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        try:
            with self._engine.connect() as conn:
                _begin_readonly(conn)
                return MigrationContext.configure(conn).get_current_revision()
        except DBAPIError as exc:
            raise _translate(exc) from None

    @staticmethod
    def head_revision() -> str | None:
        """The newest revision shipped with this version of iotrust."""
        from alembic.script import ScriptDirectory  # noqa: PLC0415

        return ScriptDirectory.from_config(_alembic_config()).get_current_head()

    def _check_schema(self) -> None:
        current, head = self.schema_revision(), self.head_revision()
        if current != head:
            raise BackendError(
                f"registry schema is at {current or 'nothing'}, this iotrust needs {head}; "
                "run the migrations", reason="schema_outdated")

    def close(self) -> None:
        """Close every pooled connection (and the writer queue's lock file)."""
        self._engine.dispose()
        if self._writers is not None:
            self._writers.close()

    @contextmanager
    def transaction(self, *, readonly: bool = False) -> Iterator[Tx]:
        """One unit of work: committed when the block ends, rolled back if it raises.

        ``readonly`` transactions may not write; on SQLite they do not take the write lock, so
        readers never wait for each other. Writing ones on a SQLite file first queue for the
        writer lock (:mod:`~iotrust.adapters.sql.writerlock`), held until after the commit or
        rollback.
        """
        try:
            conn = self._engine.connect()
        except DBAPIError as exc:
            raise _translate(exc) from None
        tx: Tx | None = None
        queued: WriterQueue | None = None
        try:
            if readonly:
                _begin_readonly(conn)
            elif self._writers is not None:
                self._writers.acquire()
                queued = self._writers
            with conn.begin():
                tx = Tx(conn, readonly=readonly)
                yield tx
        except DBAPIError as exc:
            raise _translate(exc) from None
        finally:
            try:
                if tx is not None:
                    tx._end()  # noqa: SLF001 - the Database owns its transactions
                conn.close()
            finally:
                if queued is not None:
                    queued.release()


# --------------------------------------------------------------------------------------------
# Tx
# --------------------------------------------------------------------------------------------


class Tx:
    """One open unit of work. Obtain it from :meth:`Database.transaction`; do not keep it."""

    def __init__(self, conn: Connection, *, readonly: bool) -> None:
        self._conn = conn
        self._readonly = readonly
        self._closed = False
        # SQLite rolls back only the failing statement: a one-row, one-statement write needs no
        # savepoint to leave the unit of work usable (PostgreSQL aborts the whole transaction).
        self._sqlite = conn.dialect.name == "sqlite"
        # Read once per unit of work, forgotten by this Tx's own writes to them:
        self._domain_memo: TrustDomain | _Unread | None = _UNREAD
        self._cas_memo: list[CertificateAuthority] | None = None
        # The event-log head, once locked by this transaction (it cannot move under the lock).
        self._head_memo: EventHead | _Unread | None = _UNREAD
        # The hand-written statements' dialect and the driver cursor they run on (fastpath).
        self._fp = fp.dialect_for(conn.dialect.name)
        self._dt = self._fp.dt_in
        self._cursor: Any = None

    def _end(self) -> None:
        """The unit of work is over (committed or rolled back): nothing runs on it any more."""
        self._closed = True
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            with suppress(Exception):  # the connection may be gone already
                cursor.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _run(self, sql: fp.Sql, params: Mapping[str, Any] | None, *, rows: bool) -> Any:  # noqa: ANN401
        """Run a hand-written statement on the driver's cursor (:mod:`.fastpath`).

        Returns its rows (``rows``) or its row count. An integrity violation comes out as
        SQLAlchemy's ``IntegrityError`` (for the caller to make precise), any other driver error
        translated (:func:`_translate`), as from ``_exec``.
        """
        if self._closed:
            raise RuntimeError("transaction already ended")
        cursor = self._cursor
        if cursor is None:
            driver = self._conn.connection.driver_connection
            if driver is None:
                raise RuntimeError("transaction already ended")
            cursor = self._cursor = driver.cursor()
        text_ = sql.text(self._fp)
        dialect = self._conn.dialect
        try:
            cursor.execute(text_, params if params is not None else {})
            if rows:
                return sql.rows(cursor.fetchall(), self._fp)
        except dialect.loaded_dbapi.Error as exc:
            invalidated = not self._sqlite and dialect.is_disconnect(
                exc, self._conn.connection.dbapi_connection, cursor)
            if invalidated:
                self._cursor = None
                self._conn.invalidate(exc)
            wrapped = DBAPIError.instance(text_, None, exc, dialect.loaded_dbapi.Error,
                                          hide_parameters=True,
                                          connection_invalidated=invalidated, dialect=dialect)
            if isinstance(wrapped, DBAPIError) and not isinstance(wrapped, IntegrityError):
                raise _translate(wrapped) from None
            raise wrapped from None
        return cursor.rowcount

    def _query(self, sql: fp.Sql, params: Mapping[str, Any] | None = None) -> list[Any]:
        """A hand-written query's rows (named tuples for :class:`~.fastpath.Sql` with fields)."""
        return self._run(sql, params, rows=True)  # type: ignore[no-any-return]

    def _update(self, sql: fp.Sql, params: Mapping[str, Any]) -> int:
        """A hand-written write's row count (integrity violations are not expected: re-raised)."""
        return int(self._run(sql, params, rows=False))

    def _insert_raw(self, table: Table, sql: fp.Sql, params: Mapping[str, Any],
                    row: Mapping[str, Any]) -> None:
        """:meth:`_write_row` for a hand-written one-row write (``row``: the values, unconverted).

        Bare on SQLite, in a savepoint on PostgreSQL; a refused write raises the same precise
        error and leaves the unit of work as it was.
        """
        self._writable()
        try:
            if self._sqlite:
                self._run(sql, params, rows=False)
                return
            self._run(_SAVEPOINT, None, rows=False)
            try:
                self._run(sql, params, rows=False)
            except BaseException:
                self._run(_ROLLBACK_TO_SAVEPOINT, None, rows=False)
                raise
            self._run(_RELEASE_SAVEPOINT, None, rows=False)
        except IntegrityError as exc:
            raise self._integrity(exc, table, row) from None

    def _exec(self, stmt: Executable, params: Any = None) -> CursorResult[Any]:  # noqa: ANN401
        if self._closed:
            raise RuntimeError("transaction already ended")
        try:
            return self._conn.execute(stmt, params)
        except IntegrityError:
            raise
        except DBAPIError as exc:
            raise _translate(exc) from None
        except StatementError as exc:
            raise _unwrap(exc) from None

    def _writable(self) -> None:
        if self._readonly:
            raise RuntimeError("write attempted in a read-only transaction")

    def _guarded(self, table: Table, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                 write: Callable[[], _T]) -> _T:
        """Run ``write`` in a savepoint; map an integrity violation to a precise error."""
        self._writable()
        if self._closed:
            raise RuntimeError("transaction already ended")
        try:
            with self._conn.begin_nested():
                return write()
        except IntegrityError as exc:
            raise self._integrity(exc, table, rows) from None
        except DBAPIError as exc:
            raise _translate(exc) from None
        except StatementError as exc:
            raise _unwrap(exc) from None

    def _insert(self, table: Table, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                ) -> None:
        stmt = _insert_into(table)
        if isinstance(rows, Mapping):
            self._write_row(table, rows, stmt)
        else:
            self._guarded(table, rows, lambda: self._conn.execute(stmt, rows))

    def _write_row(self, table: Table, row: Mapping[str, Any], stmt: Executable,
                   ) -> CursorResult[Any]:
        """One statement writing one row: in a savepoint on PostgreSQL, bare on SQLite."""
        if self._sqlite:
            return self._write_one(table, row, stmt)
        return self._guarded(table, row, lambda: self._conn.execute(stmt, row))

    def _write_one(self, table: Table, row: Mapping[str, Any], stmt: Executable,
                   ) -> CursorResult[Any]:
        """One statement writing one row, without a savepoint (SQLite only, see ``__init__``).

        A refused write raises the same precise error as :meth:`_guarded` and, SQLite undoing
        just the failed statement, leaves the unit of work as it was.
        """
        self._writable()
        if self._closed:
            raise RuntimeError("transaction already ended")
        try:
            return self._conn.execute(stmt, row)
        except IntegrityError as exc:
            raise self._integrity(exc, table, row) from None
        except DBAPIError as exc:
            raise _translate(exc) from None
        except StatementError as exc:
            raise _unwrap(exc) from None

    def _integrity(self, exc: IntegrityError, table: Table,
                   rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> IotrustError:
        name = _violated_constraint(exc)
        if name is None and "FOREIGN KEY" in str(exc.orig):
            name = self._missing_reference(table, rows)
        if name is not None and name in _CONSTRAINT_ERRORS:
            cls, reason = _CONSTRAINT_ERRORS[name]
            return cls(f"{table.name}: refused by {name}", reason=reason)
        return ConflictError(f"{table.name}: integrity violation ({_first_line(exc)})",
                             reason="integrity_violation")

    def _missing_reference(self, table: Table,
                           rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str | None:
        """Find which foreign key a write broke (SQLite does not say)."""
        batch = [rows] if isinstance(rows, Mapping) else list(rows)
        for fk in sorted(table.foreign_key_constraints, key=lambda c: str(c.name)):
            (column,) = fk.columns
            (element,) = fk.elements
            values = {r.get(column.name) for r in batch} - {None}
            for value in values:
                found = self._exec(select(literal(1)).where(element.column == value)).first()
                if found is None:
                    return str(fk.name)
        return None

    # -- trust domain and CAs ----------------------------------------------------------------

    def get_domain(self) -> TrustDomain | None:
        """The trust domain, or ``None`` before ``iotrust init`` (read once per transaction)."""
        if isinstance(self._domain_memo, _Unread):
            rows = self._query(fp.GET_DOMAIN)
            self._domain_memo = _domain(rows[0]) if rows else None
        return self._domain_memo

    def create_domain(self, domain: TrustDomain) -> None:
        """Create the (single) trust domain; ``ConflictError(domain_exists)`` if there is one."""
        self._domain_memo = _UNREAD
        self._insert(s.trust_domain, {
            "id": 1, "name": domain.name, "owner": domain.owner, "created_at": domain.created_at,
            "root_ca_id": domain.root_ca_id, "server_id": domain.server_id,
            "settings": dict(domain.settings)})

    def update_domain(self, domain: TrustDomain) -> None:
        """Replace the trust domain's fields (``created_at`` is kept)."""
        self._writable()
        self._domain_memo = _UNREAD
        result = self._exec(update(s.trust_domain).where(s.trust_domain.c.id == 1).values(
            name=domain.name, owner=domain.owner, root_ca_id=domain.root_ca_id,
            server_id=domain.server_id, settings=dict(domain.settings)))
        if result.rowcount != 1:
            raise NotFoundError("no trust domain yet", reason="no_domain")

    def add_ca(self, ca: CertificateAuthority) -> None:
        """Store a CA; ``ConflictError(ca_exists)`` if the id is taken."""
        self._cas_memo = None
        self._insert(s.certificate_authorities, {
            "id": ca.id, "role": str(ca.role), "name": ca.name,
            "certificate_pem": ca.certificate_pem, "key_ref": ca.key_ref,
            "state": str(ca.state), "not_after": ca.not_after, "crl_number": ca.crl_number,
            "created_at": ca.created_at})

    def _all_cas(self) -> list[CertificateAuthority]:
        """Every CA, oldest first: one read per transaction, forgotten by this Tx's CA writes."""
        if self._cas_memo is None:
            self._cas_memo = [_ca(r) for r in self._query(fp.ALL_CAS)]
        return self._cas_memo

    def get_ca(self, ca_id: str) -> CertificateAuthority:
        """One CA; ``NotFoundError(unknown_ca)``."""
        for ca in self._all_cas():
            if ca.id == ca_id:
                return ca
        raise NotFoundError(f"no CA {ca_id!r:.80}", reason="unknown_ca")

    def list_cas(self, role: CaRole | str | None = None, state: CaState | str | None = None,
                 ) -> list[CertificateAuthority]:
        """CAs, oldest first, optionally filtered."""
        want_role = as_enum(CaRole, role, "ca_role") if role is not None else None
        want_state = as_enum(CaState, state, "ca_state") if state is not None else None
        return [ca for ca in self._all_cas()
                if (want_role is None or ca.role is want_role)
                and (want_state is None or ca.state is want_state)]

    def set_ca_state(self, ca_id: str, state: CaState | str) -> None:
        """Move a CA to ``state``; ``NotFoundError(unknown_ca)``."""
        self._writable()
        self._cas_memo = None
        t = s.certificate_authorities
        value = as_enum(CaState, state, "ca_state").value
        result = self._exec(update(t).where(t.c.id == ca_id).values(state=value))
        if result.rowcount != 1:
            raise NotFoundError(f"no CA {ca_id!r:.80}", reason="unknown_ca")

    def set_ca_key_ref(self, ca_id: str, key_ref: str) -> None:
        """Point a CA at its key somewhere else (a restore into a new data folder)."""
        self._writable()
        t = s.certificate_authorities
        if not self._exec(update(t).where(t.c.id == ca_id).values(key_ref=key_ref)).rowcount:
            raise NotFoundError(f"no CA {ca_id!r:.80}", reason="unknown_ca")
        self._cas_memo = None

    def next_crl_number(self, ca_id: str) -> int:
        """Atomically increment and return the CA's CRL number (1 for the first CRL)."""
        self._writable()
        self._cas_memo = None
        t = s.certificate_authorities
        row = self._exec(update(t).where(t.c.id == ca_id)
                         .values(crl_number=t.c.crl_number + 1)
                         .returning(t.c.crl_number)).first()
        if row is None:
            raise NotFoundError(f"no CA {ca_id!r:.80}", reason="unknown_ca")
        return int(row[0])

    # -- manufacturers and models ------------------------------------------------------------

    def add_manufacturer(self, m: Manufacturer) -> None:
        """Register a manufacturer; ``ConflictError(manufacturer_exists)``."""
        self._insert(s.manufacturers, {
            "name": m.name, "display_name": m.display_name, "anchors_pem": m.anchors_pem,
            "allowed": list(m.allowed), "revoked": m.revoked,
            "unsafe_manufacturer_trust": m.unsafe_manufacturer_trust,
            "created_at": m.created_at})

    def update_manufacturer(self, m: Manufacturer) -> None:
        """Replace a manufacturer's anchors, allowed list and flags (``created_at`` kept)."""
        self._writable()
        t = s.manufacturers
        result = self._exec(update(t).where(t.c.name == m.name).values(
            display_name=m.display_name, anchors_pem=m.anchors_pem, allowed=list(m.allowed),
            revoked=m.revoked, unsafe_manufacturer_trust=m.unsafe_manufacturer_trust))
        if result.rowcount != 1:
            raise NotFoundError(f"no manufacturer {m.name!r}", reason="unknown_manufacturer")

    def get_manufacturer(self, name: str) -> Manufacturer:
        """One manufacturer; ``NotFoundError(unknown_manufacturer)``."""
        rows = self._query(fp.GET_MANUFACTURER, {"name": name})
        if not rows:
            raise NotFoundError(f"no manufacturer {name!r:.80}", reason="unknown_manufacturer")
        return _manufacturer(rows[0])

    def list_manufacturers(self) -> list[Manufacturer]:
        """All manufacturers by name."""
        stmt = select(s.manufacturers).order_by(s.manufacturers.c.name)
        return [_manufacturer(r) for r in self._exec(stmt)]

    def set_manufacturer_revoked(self, name: str, revoked: bool) -> None:
        """Revoke (or reinstate) trust in a manufacturer."""
        self._writable()
        t = s.manufacturers
        result = self._exec(update(t).where(t.c.name == name).values(revoked=bool(revoked)))
        if result.rowcount != 1:
            raise NotFoundError(f"no manufacturer {name!r:.80}", reason="unknown_manufacturer")

    def add_model(self, model: DeviceModel) -> None:
        """Register a model: ``ConflictError(model_exists)``, ``NotFoundError``."""
        self._insert(s.device_models, {
            "name": model.name, "manufacturer": model.manufacturer,
            "hardware_profile": model.hardware_profile,
            "credential_lifetime_s": model.credential_lifetime_s,
            "created_at": model.created_at, "product_id": model.product_id})

    def get_model(self, name: str) -> DeviceModel:
        """One model; ``NotFoundError(unknown_model)``."""
        row = self._exec(_GET_MODEL, {"name": name}).first()
        if row is None:
            raise NotFoundError(f"no device model {name!r:.80}", reason="unknown_model")
        return _model(row)

    def find_model_for_product(self, manufacturer: str, product_id: str) -> DeviceModel | None:
        """The model bound to this manufacturer's product id, if one is registered."""
        t = s.device_models
        row = self._exec(select(t).where(t.c.manufacturer == manufacturer,
                                         t.c.product_id == product_id)).first()
        return _model(row) if row is not None else None

    def assign_model_to_product(self, model: DeviceModel, at: datetime) -> int:
        """Give ``model`` to every not yet retired, model-less device of its product.

        Devices that already have a model (an operator's explicit choice) keep it. Returns how
        many devices were assigned; a model bound to no product assigns none.
        """
        self._writable()
        if model.product_id is None:
            return 0
        t = s.devices
        result = self._exec(update(t).where(
            t.c.manufacturer == model.manufacturer, t.c.product_id == model.product_id,
            t.c.model.is_(None), t.c.state != DeviceState.RETIRED.value,
        ).values(model=model.name, updated_at=at))
        return int(result.rowcount)

    def list_models(self, manufacturer: str | None = None) -> list[DeviceModel]:
        """Models by name, optionally of one manufacturer."""
        t = s.device_models
        stmt = select(t).order_by(t.c.name)
        if manufacturer is not None:
            stmt = stmt.where(t.c.manufacturer == manufacturer)
        return [_model(r) for r in self._exec(stmt)]

    # -- devices -----------------------------------------------------------------------------

    def add_device(self, device: Device) -> None:
        """Register a device.

        Raises ``ConflictError`` with ``duplicate_serial``, ``duplicate_factory_key`` or
        ``duplicate_device_id``; ``NotFoundError`` with ``unknown_manufacturer``/``unknown_model``.
        """
        self._write_row(s.devices, _device_row(device), _INSERT_DEVICE)

    def add_devices(self, devices: Sequence[Device]) -> None:
        """Register many devices in one executemany (bulk import); all or none."""
        if not devices:
            return
        rows = [_device_row(d) for d in devices]
        self._guarded(s.devices, rows, lambda: self._conn.execute(_INSERT_DEVICE, rows))

    def get_device(self, device_id: str) -> Device:
        """One device by id; ``NotFoundError(unknown_device)``."""
        rows = self._query(fp.GET_DEVICE, {"id": device_id})
        if not rows:
            raise NotFoundError(f"no device {device_id!r:.80}", reason="unknown_device")
        return _device(rows[0])

    def find_device(self, manufacturer: str, serial: str) -> Device | None:
        """The device with this manufacturer serial, if any."""
        rows = self._query(fp.FIND_DEVICE, {"manufacturer": manufacturer, "serial": serial})
        return _device(rows[0]) if rows else None

    def find_device_for_update(self, manufacturer: str, serial: str) -> Device | None:
        """:meth:`find_device` and hold the device's row until the transaction ends.

        One statement: ``FOR UPDATE`` on PostgreSQL (which returns the row as it is once the
        lock is granted); SQLite's ``BEGIN IMMEDIATE`` already serialises writers.
        """
        self._writable()
        rows = self._query(fp.FIND_DEVICE_FOR_UPDATE,
                           {"manufacturer": manufacturer, "serial": serial})
        return _device(rows[0]) if rows else None

    def find_device_by_factory_key(self, spki_sha256: str) -> Device | None:
        """The device whose factory key has this SPKI SHA-256, if any."""
        rows = self._query(fp.FIND_DEVICE_BY_KEY, {"spki": spki_sha256})
        return _device(rows[0]) if rows else None

    def update_device(self, new: Device, *, expected_state: DeviceState,
                      seen_at: datetime | None = None) -> None:
        """Store ``new`` if the device is still in ``expected_state`` (compare-and-set).

        Identity fields (manufacturer, serial, factory key, vendor/product, created_at) never
        change. Raises ``ConflictError(concurrent_update)`` if the state moved meanwhile,
        ``ConflictError(identity_immutable)`` if ``new`` differs in identity,
        ``NotFoundError(unknown_device)`` if there is no such device. With ``seen_at`` the same
        statement also does :meth:`touch_last_seen` (the change came from the device itself).
        """
        self._writable()
        params: dict[str, Any] = {
            "key_id": new.id, "expected_state": DeviceState(expected_state).value,
            "key_manufacturer": new.manufacturer, "key_serial": new.serial,
            "key_spki": new.factory_spki_sha256, "key_vendor": new.vendor_id,
            "key_product": new.product_id, "new_owner": new.owner, "new_model": new.model,
            "new_state": new.state.value,
            "new_retired": (new.retired_reason.value
                            if new.retired_reason is not None else None),
            "new_storage": new.key_storage.value, "new_unsafe": new.unsafe_admission,
            "new_updated_at": self._dt(new.updated_at)}
        if seen_at is None:
            done = self._update(fp.UPDATE_DEVICE, params)
        else:
            params["new_seen_at"] = self._dt(seen_at)
            done = self._update(fp.UPDATE_DEVICE_SEEN, params)
        if done == 1:
            return
        current = self.get_device(new.id)
        if current.state is not expected_state:
            raise ConflictError(
                f"device {new.id} is {current.state.value}, not {expected_state.value}",
                reason="concurrent_update")
        raise ConflictError(f"identity of device {new.id} cannot change",
                            reason="identity_immutable")

    def list_devices(self, *, state: DeviceState | None = None, manufacturer: str | None = None,
                     model: str | None = None, limit: int = 100, after_id: str | None = None,
                     ) -> list[Device]:
        """One page of devices ordered by id; pass the last id seen as ``after_id``."""
        _check_limit(limit)
        t = s.devices
        stmt = select(*_DEVICE_COLUMNS).order_by(t.c.id).limit(limit)
        if state is not None:
            stmt = stmt.where(t.c.state == DeviceState(state).value)
        if manufacturer is not None:
            stmt = stmt.where(t.c.manufacturer == manufacturer)
        if model is not None:
            stmt = stmt.where(t.c.model == model)
        if after_id is not None:
            stmt = stmt.where(t.c.id > after_id)
        return [_device(r) for r in self._exec(stmt)]

    def count_devices_by_state(self) -> dict[DeviceState, int]:
        """How many devices are in each state (every state present, zeros included)."""
        t = s.devices
        counts = dict.fromkeys(DeviceState, 0)
        for state, n in self._exec(select(t.c.state, func.count()).group_by(t.c.state)):
            counts[DeviceState(state)] = int(n)
        return counts

    def touch_last_seen(self, device_id: str, at: datetime) -> None:
        """Record a contact by the device (only moves forward; unknown ids are ignored)."""
        self._writable()
        self._update(fp.TOUCH_LAST_SEEN, {"id": device_id, "at": self._dt(at)})

    def get_last_seen(self, device_id: str) -> datetime | None:
        """When the device was last seen; ``NotFoundError(unknown_device)``."""
        row = self._exec(select(s.devices.c.last_seen_at)
                         .where(s.devices.c.id == device_id)).first()
        if row is None:
            raise NotFoundError(f"no device {device_id!r:.80}", reason="unknown_device")
        return row[0]  # type: ignore[no-any-return]

    # -- vouchers ----------------------------------------------------------------------------

    def add_voucher(self, device_id: str, sha256: str, raw: bytes, owner: str,
                    at: datetime) -> Voucher:
        """Store a voucher for the device; it supersedes the device's earlier vouchers.

        ``ConflictError(duplicate_voucher)`` if this exact voucher was imported before.
        """
        Voucher(0, device_id, sha256, raw, owner, at)  # validate before touching the database
        t = s.vouchers

        def write() -> int:
            self._conn.execute(update(t).where(t.c.device_id == device_id,
                                               t.c.superseded.is_(False))
                               .values(superseded=True))
            new_id = self._conn.execute(insert(t).returning(t.c.id), {
                "device_id": device_id, "sha256": sha256, "raw": raw, "owner": owner,
                "imported_at": at, "superseded": False}).scalar_one()
            return int(new_id)

        voucher_id = self._guarded(t, {"device_id": device_id}, write)
        return Voucher(voucher_id, device_id, sha256, raw, owner, at)

    def get_active_voucher(self, device_id: str) -> Voucher | None:
        """The device's current (not superseded) voucher, if any."""
        rows = self._query(fp.ACTIVE_VOUCHER, {"device_id": device_id})
        return _voucher(rows[0]) if rows else None

    # -- credentials -------------------------------------------------------------------------

    def add_credential(self, c: Credential) -> None:
        """Store an issued certificate.

        ``ConflictError`` with ``duplicate_credential_serial`` or ``duplicate_credential_key``;
        ``NotFoundError`` with ``unknown_device`` or ``unknown_ca``.
        """
        row = _credential_row(c)
        dt = self._dt
        self._insert_raw(s.credentials, fp.INSERT_CREDENTIAL, row | {
            "not_before": dt(c.not_before), "not_after": dt(c.not_after),
            "revoked_at": dt(c.revoked_at), "created_at": dt(c.created_at)}, row)

    def get_credential(self, serial_hex: str) -> Credential:
        """One credential by certificate serial (lowercase hex); ``NotFoundError``."""
        row = self._exec(_GET_CREDENTIAL, {"serial": serial_hex}).first()
        if row is None:
            raise NotFoundError(f"no credential {serial_hex!r:.80}", reason="unknown_credential")
        return _credential(row)

    def list_credentials(self, device_id: str | None = None,
                         state: CredentialState | None = None) -> list[Credential]:
        """Credentials, oldest first, optionally of one device and/or in one state."""
        t = s.credentials
        stmt = select(t).order_by(t.c.created_at, t.c.serial_number)
        if device_id is not None:
            stmt = stmt.where(t.c.device_id == device_id)
        if state is not None:
            stmt = stmt.where(t.c.state == CredentialState(state).value)
        return [_credential(r) for r in self._exec(stmt)]

    def update_credential_state(self, serial_hex: str, new_state: CredentialState, *,
                                expected: CredentialState | None = None,
                                revoked_at: datetime | None = None,
                                reason: str | None = None) -> None:
        """Move a credential to ``new_state`` (compare-and-set when ``expected`` is given).

        ``revoked_at`` is required exactly when revoking. Raises
        ``ConflictError(concurrent_update)`` if the state is not ``expected``.
        """
        self._writable()
        new_state = CredentialState(new_state)
        revoking = new_state is CredentialState.REVOKED
        if revoking != (revoked_at is not None):
            raise TypeError("revoked_at is required exactly when revoking")
        if expected is not None and not revoking:  # the confirm's hand-written form
            done = self._update(fp.SET_CREDENTIAL_STATE, {
                "serial": serial_hex, "expected": CredentialState(expected).value,
                "state": new_state.value})
            if done == 1:
                return
            current = self.get_credential(serial_hex)
            raise ConflictError(f"credential {serial_hex} is {current.state.value}",
                                reason="concurrent_update")
        t = s.credentials
        stmt = update(t).where(t.c.serial_number == serial_hex)
        if expected is not None:
            stmt = stmt.where(t.c.state == CredentialState(expected).value)
        values: dict[str, Any] = {"state": new_state.value}
        if revoking:
            values |= {"revoked_at": revoked_at, "revocation_reason": reason}
        if self._exec(stmt.values(**values)).rowcount == 1:
            return
        current = self.get_credential(serial_hex)
        raise ConflictError(f"credential {serial_hex} is {current.state.value}",
                            reason="concurrent_update")

    def revoked_serials(self, issuer_ca_id: str, *, not_after_from: datetime | None = None,
                        ) -> list[tuple[str, datetime, str | None]]:
        """``(serial_hex, revoked_at, reason)`` of every revoked credential of a CA (for CRLs).

        ``not_after_from`` leaves out the credentials that expired before it (see
        :func:`iotrust.core.pki.expired_entry_cutoff`).
        """
        t = s.credentials
        stmt = (select(t.c.serial_number, t.c.revoked_at, t.c.revocation_reason)
                .where(t.c.issuer_ca_id == issuer_ca_id,
                       t.c.state == CredentialState.REVOKED.value)
                .order_by(t.c.revoked_at, t.c.serial_number))
        if not_after_from is not None:
            stmt = stmt.where(t.c.not_after >= not_after_from)
        return [(r[0], r[1], r[2]) for r in self._exec(stmt)]

    # -- keys seen ---------------------------------------------------------------------------

    def record_key(self, spki_sha256: str, kind: KeyKind | str, device_id: str | None,
                   at: datetime) -> None:
        """Remember a public key; ``ConflictError(key_reused)`` if it was ever seen before."""
        check_sha256_hex(spki_sha256, "key hash")
        row = {"spki_sha256": spki_sha256, "kind": as_enum(KeyKind, kind, "key_kind").value,
               "device_id": device_id, "first_seen_at": at}
        self._insert_raw(s.seen_keys, fp.INSERT_KEY, row | {"first_seen_at": self._dt(at)}, row)

    def record_keys(self, keys: Sequence[tuple[str, KeyKind | str, str | None, datetime]],
                    ) -> None:
        """Bulk :meth:`record_key` (all or none)."""
        if not keys:
            return
        rows = [{"spki_sha256": check_sha256_hex(k, "key hash"),
                 "kind": as_enum(KeyKind, kind, "key_kind").value,
                 "device_id": d, "first_seen_at": at} for k, kind, d, at in keys]
        self._insert(s.seen_keys, rows)

    def key_seen(self, spki_sha256: str) -> bool:
        """Whether this public key was ever recorded."""
        return bool(self._query(fp.KEY_SEEN, {"spki": spki_sha256})[0][0])

    # -- onboarding sessions -----------------------------------------------------------------

    def add_session(self, session: OnboardingSession) -> None:
        """Open an onboarding session; ``ConflictError(nonce_reused)`` for a repeated nonce."""
        self._insert(s.onboarding_sessions, {
            "id": session.id, "device_id": session.device_id, "serial": session.serial,
            "nonce_sha256": session.nonce_sha256, "device_nonce": session.device_nonce,
            "expires_at": session.expires_at, "consumed_at": session.consumed_at,
            "state": str(session.state), "source": session.source,
            "credential_serial": session.credential_serial, "created_at": session.created_at})

    def get_session(self, session_id: str) -> OnboardingSession:
        """One session; ``NotFoundError(unknown_session)``."""
        row = self._exec(_GET_SESSION, {"id": session_id}).first()
        if row is None:
            raise NotFoundError("no such onboarding session", reason="unknown_session")
        return _session(row)

    def consume_nonce(self, session_id: str, nonce_sha256: str, at: datetime) -> bool:
        """Spend a session's nonce: ``True`` for exactly one caller, ever.

        One conditional ``UPDATE``: the session must be open, the nonce hash must match, unspent
        and unexpired at ``at``. ``False`` means unknown, replayed or expired: the caller tells
        them apart with :meth:`get_session` if it needs the reason.
        """
        self._writable()
        t = s.onboarding_sessions
        result = self._exec(
            update(t).where(t.c.id == session_id, t.c.nonce_sha256 == nonce_sha256,
                            t.c.consumed_at.is_(None), t.c.expires_at > at,
                            t.c.state == SessionState.OPEN.value)
            .values(consumed_at=at))
        return result.rowcount == 1

    def set_session_state(self, session_id: str, state: SessionState | str, *,
                          expected: SessionState | str | None = None,
                          credential_serial: str | None = None) -> None:
        """Move a session to ``state`` (compare-and-set with ``expected``)."""
        self._writable()
        if expected is not None and credential_serial is not None:  # the attest's form
            done = self._update(fp.SET_SESSION_STATE_WITH_CREDENTIAL, {
                "id": session_id, "serial": credential_serial,
                "expected": as_enum(SessionState, expected, "session_state").value,
                "state": as_enum(SessionState, state, "session_state").value})
            if done == 1:
                return
            current = self.get_session(session_id)
            raise ConflictError(f"onboarding session is {current.state}",
                                reason="concurrent_update")
        t = s.onboarding_sessions
        stmt = update(t).where(t.c.id == session_id)
        if expected is not None:
            stmt = stmt.where(t.c.state == as_enum(SessionState, expected, "session_state").value)
        values: dict[str, Any] = {"state": as_enum(SessionState, state, "session_state").value}
        if credential_serial is not None:
            values["credential_serial"] = credential_serial
        if self._exec(stmt.values(**values)).rowcount == 1:
            return
        current = self.get_session(session_id)
        raise ConflictError(f"onboarding session is {current.state}",
                            reason="concurrent_update")

    # -- operator tokens ---------------------------------------------------------------------

    def add_token(self, token: ApiToken) -> None:
        """Store a token (hash only); ``ConflictError(token_exists)`` for a taken name."""
        self._insert(s.api_tokens, {
            "id": token.id, "name": token.name, "role": str(token.role),
            "token_sha256": token.token_sha256, "created_at": token.created_at,
            "revoked_at": token.revoked_at})

    def find_token_by_hash(self, token_sha256: str) -> ApiToken | None:
        """The token with this hash, revoked or not (check :attr:`ApiToken.active`)."""
        t = s.api_tokens
        row = self._exec(select(t).where(t.c.token_sha256 == token_sha256)).first()
        return _token(row) if row is not None else None

    def list_tokens(self) -> list[ApiToken]:
        """All tokens by name."""
        return [_token(r) for r in self._exec(select(s.api_tokens)
                                              .order_by(s.api_tokens.c.name))]

    def revoke_token(self, name: str, *, at: datetime | None = None) -> None:
        """Revoke a token by name (idempotent); ``NotFoundError(unknown_token)``.

        ``at`` should come from the service's clock; without it the system clock is used.
        """
        self._writable()
        at = at if at is not None else datetime.now(UTC)
        t = s.api_tokens
        self._exec(update(t).where(t.c.name == name, t.c.revoked_at.is_(None))
                   .values(revoked_at=at))
        if self._exec(select(t.c.id).where(t.c.name == name)).first() is None:
            raise NotFoundError(f"no token {name!r:.80}", reason="unknown_token")

    def rotate_token(self, name: str, token_sha256: str) -> None:
        """Replace a live token's hash (the old secret stops working at commit).

        ``NotFoundError(unknown_token)``; ``ConflictError(token_revoked)`` for a revoked token.
        """
        self._writable()
        check_sha256_hex(token_sha256, "token hash")
        t = s.api_tokens
        done = self._exec(update(t).where(t.c.name == name, t.c.revoked_at.is_(None))
                          .values(token_sha256=token_sha256)).rowcount
        if done:
            return
        if self._exec(select(t.c.id).where(t.c.name == name)).first() is None:
            raise NotFoundError(f"no token {name!r:.80}", reason="unknown_token")
        raise ConflictError(f"token {name!r:.80} is revoked", reason="token_revoked")

    # -- event log ---------------------------------------------------------------------------

    def append_event(self, make: Callable[[EventHead | None], EventRow]) -> EventRow:
        """Append the record ``make(current_head)`` returns, serialised with other appenders.

        The head row is locked (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE``
        already holds the write lock) until the transaction ends, so ``make`` sees the true
        head. ``make`` must return ``seq = head.seq + 1`` (1 for the first) and link
        ``prev_hash`` to ``head.hash``; anything else is a ``RuntimeError``.
        """
        self._writable()
        head = self._head_memo
        if isinstance(head, _Unread):  # first append of this unit of work: lock and read
            (locked,) = self._query(fp.LOCK_EVENT_HEAD)
            head = EventHead(int(locked[0]), locked[1]) if locked[0] else None
            self._head_memo = head
        row = make(head)
        expected_seq = head.seq + 1 if head is not None else 1
        if row.seq != expected_seq or (head is not None and row.prev_hash != head.hash):
            raise RuntimeError("event record does not extend the current head")
        values = {"seq": row.seq, "at": row.at, "kind": row.kind, "actor": row.actor,
                  "device_id": row.device_id, "reason": row.reason, "data": row.data,
                  "prev_hash": row.prev_hash, "hash": row.hash}
        self._head_memo = _UNREAD  # re-read after a failure below
        # No savepoint even on PostgreSQL: under the head lock the sequence number cannot be
        # taken, so a failure here is a bug that must end the unit of work anyway.
        try:
            self._run(fp.INSERT_EVENT, values | {"at": self._dt(row.at)}, rows=False)
        except IntegrityError as exc:
            raise self._integrity(exc, s.events, values) from None
        except DBAPIError as exc:
            raise _translate(exc) from None
        self._update(fp.MOVE_EVENT_HEAD, {"seq": row.seq, "hash": row.hash})
        self._head_memo = EventHead(row.seq, row.hash)
        return row

    def event_head(self) -> EventHead | None:
        """The last record's sequence number and hash (``None`` for an empty log)."""
        h = s.event_head
        row = self._exec(select(h.c.seq, h.c.hash).where(h.c.id == 1)).first()
        if row is None or not row.seq:
            return None
        return EventHead(int(row.seq), row.hash)

    def iter_events(self, *, after_seq: int = 0, device_id: str | None = None,
                    kind: str | None = None, batch: int = 1000) -> Iterator[EventRow]:
        """Events in sequence order, fetched ``batch`` at a time (consume inside the Tx)."""
        _check_limit(batch)
        t = s.events
        last = after_seq
        while True:
            stmt = select(t).where(t.c.seq > last).order_by(t.c.seq).limit(batch)
            if device_id is not None:
                stmt = stmt.where(t.c.device_id == device_id)
            if kind is not None:
                stmt = stmt.where(t.c.kind == kind)
            rows = [_event(r) for r in self._exec(stmt)]
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1].seq

    def count_events(self) -> int:
        """How many records the log holds."""
        return int(self._exec(select(func.count()).select_from(s.events)).scalar_one())

    # -- onboarding service (revision 0002) --------------------------------------------------

    def open_session(self, session: OnboardingSession, *, factory_spki: bytes,
                     voucher_sha256: str, key_storage: str | None = None) -> None:
        """Open an onboarding session bound to what its hello proved.

        ``factory_spki`` is the factory key's DER SubjectPublicKeyInfo, ``voucher_sha256`` the
        hex SHA-256 of the voucher sent back, ``key_storage`` the hello's key-storage claim
        (``None``: none stated). ``ConflictError(nonce_reused)``.
        """
        check_sha256_hex(voucher_sha256, "voucher hash")
        if not isinstance(factory_spki, bytes) or not 0 < len(factory_spki) <= 1024:  # noqa: PLR2004
            raise InputError("factory key must be 1..1024 bytes of DER", reason="invalid_key")
        if key_storage is not None and (not isinstance(key_storage, str)
                                        or not 0 < len(key_storage) <= 16):  # noqa: PLR2004
            raise InputError("key storage must be 1..16 characters", reason="invalid_key_storage")
        row = {
            "id": session.id, "device_id": session.device_id, "serial": session.serial,
            "nonce_sha256": session.nonce_sha256, "device_nonce": session.device_nonce,
            "expires_at": session.expires_at, "consumed_at": session.consumed_at,
            "state": str(session.state), "source": session.source,
            "credential_serial": session.credential_serial, "created_at": session.created_at,
            "factory_spki": factory_spki, "voucher_sha256": voucher_sha256, "confirm_by": None,
            "key_storage": key_storage}
        dt = self._dt
        self._insert_raw(s.onboarding_sessions, fp.INSERT_SESSION, row | {
            "expires_at": dt(session.expires_at), "consumed_at": dt(session.consumed_at),
            "created_at": dt(session.created_at)}, row)

    def get_session_and_binding(self, session_id: str,
                                ) -> tuple[OnboardingSession, SessionBinding] | None:
        """:meth:`get_session` and :meth:`session_binding` in one read (``None``: no session)."""
        row = self._exec(_GET_SESSION, {"id": session_id}).first()
        if row is None:
            return None
        spki = bytes(row.factory_spki) if row.factory_spki is not None else None
        return _session(row), SessionBinding(factory_spki=spki,
                                             voucher_sha256=row.voucher_sha256,
                                             confirm_by=row.confirm_by,
                                             key_storage=row.key_storage)

    def get_session_context(
            self, session_id: str,
    ) -> tuple[OnboardingSession, SessionBinding, str | None, Device | None] | None:
        """:meth:`get_session_and_binding`, its credential's PEM certificate and its device.

        One read (onboarding's attest and confirm); the last two are ``None`` when absent.
        """
        rows = self._query(fp.SESSION_CONTEXT, {"id": session_id})
        if not rows:
            return None
        row = rows[0]
        width = len(fp.DEVICE_FIELDS)
        device = _device(row[:width]) if row[0] is not None else None
        spki = bytes(row.factory_spki) if row.factory_spki is not None else None
        return (_session(row), SessionBinding(factory_spki=spki,
                                              voucher_sha256=row.voucher_sha256,
                                              confirm_by=row.confirm_by,
                                              key_storage=row.key_storage),
                row.credential_pem, device)

    def session_binding(self, session_id: str) -> SessionBinding | None:
        """What the hello bound a session to and its deadline (``None``: no such session)."""
        row = self._exec(_SESSION_BINDING, {"id": session_id}).first()
        if row is None:
            return None
        spki = bytes(row.factory_spki) if row.factory_spki is not None else None
        return SessionBinding(factory_spki=spki, voucher_sha256=row.voucher_sha256,
                              confirm_by=row.confirm_by, key_storage=row.key_storage)

    def lock_device(self, device_id: str) -> None:
        """Hold the device's row until the transaction ends; unknown ids are ignored.

        ``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises writers.
        """
        self._writable()
        self._exec(_LOCK_DEVICE, {"id": device_id})

    def live_session_exists(self, device_id: str, at: datetime) -> bool:
        """Whether the device has a live session at ``at``.

        Live: open and unexpired, or attested and not past its confirmation deadline.
        """
        return bool(self._query(fp.LIVE_SESSION, {"device_id": device_id,
                                                   "at": self._dt(at)})[0][0])

    def attest_session(self, session_id: str, nonce_sha256: str, at: datetime,
                       confirm_by: datetime) -> bool:
        """Spend the session's nonce and move it open → attested with its confirmation deadline.

        One conditional ``UPDATE`` (id, nonce hash, state open, unspent, ``expires_at > at``):
        ``True`` for exactly one caller, ever.
        """
        self._writable()
        return self._update(fp.ATTEST_SESSION, {"id": session_id, "nonce": nonce_sha256,
                                                "at": self._dt(at),
                                                "deadline": self._dt(confirm_by)}) == 1

    def confirm_session(self, session_id: str, at: datetime) -> bool:
        """Move attested → confirmed unless the deadline passed; ``True`` for one caller only."""
        self._writable()
        return self._update(fp.CONFIRM_SESSION, {"id": session_id, "at": self._dt(at)}) == 1

    def refuse_session(self, session_id: str, *, expected: SessionState) -> bool:
        """``expected`` → refused (compare-and-set); ``False`` if the session moved on."""
        self._writable()
        t = s.onboarding_sessions
        result = self._exec(
            update(t).where(t.c.id == session_id,
                            t.c.state == as_enum(SessionState, expected, "session_state").value)
            .values(state=SessionState.REFUSED.value))
        return result.rowcount == 1

    def unconfirmed_sessions(self, at: datetime, *, limit: int = 100) -> list[OnboardingSession]:
        """Attested sessions whose confirmation deadline passed before ``at``, oldest first."""
        _check_limit(limit)
        t = s.onboarding_sessions
        stmt = (select(t).where(t.c.state == SessionState.ATTESTED.value,
                                t.c.confirm_by.is_(None) | (t.c.confirm_by < at))
                .order_by(t.c.confirm_by, t.c.id).limit(limit))
        return [_session(r) for r in self._exec(stmt)]

    def expire_unconfirmed_session(self, session_id: str, at: datetime) -> bool:
        """Move attested → expired if its deadline passed before ``at``; ``True`` for one caller."""
        self._writable()
        t = s.onboarding_sessions
        result = self._exec(
            update(t).where(t.c.id == session_id, t.c.state == SessionState.ATTESTED.value,
                            t.c.confirm_by.is_(None) | (t.c.confirm_by < at))
            .values(state=SessionState.EXPIRED.value))
        return result.rowcount == 1

    def expire_open_sessions(self, at: datetime) -> int:
        """Mark every open session whose nonce expired at or before ``at`` as expired."""
        self._writable()
        t = s.onboarding_sessions
        result = self._exec(update(t).where(t.c.state == SessionState.OPEN.value,
                                            t.c.expires_at <= at)
                            .values(state=SessionState.EXPIRED.value))
        return int(result.rowcount)

    def add_onboarding_attempt(self, serial: str | None, source: str, at: datetime) -> None:
        """Count one onboarding hello (``serial`` is ``None`` for a malformed one)."""
        if not isinstance(source, str) or not 0 < len(source) <= 200:  # noqa: PLR2004
            raise InputError("source must be 1..200 characters", reason="invalid_source")
        row = {"serial": serial, "source": source, "at": at}
        self._insert_raw(s.onboarding_attempts, fp.INSERT_ATTEMPT, row | {"at": self._dt(at)},
                         row)

    def count_onboarding_attempts(self, *, since: datetime, serial: str | None = None,
                                  source: str | None = None) -> int:
        """Hellos at or after ``since`` for one serial and/or one source."""
        if serial is None and source is None:
            raise TypeError("count attempts of a serial or of a source")
        t = s.onboarding_attempts
        stmt = select(func.count()).select_from(t).where(t.c.at >= since)
        if serial is not None:
            stmt = stmt.where(t.c.serial == serial)
        if source is not None:
            stmt = stmt.where(t.c.source == source)
        return int(self._exec(stmt).scalar_one())

    def onboarding_admission(self, *, since: datetime, serial: str | None, source: str,
                             at: datetime) -> tuple[int, int, bool]:
        """What admitting one hello needs, in one read.

        ``(hellos of serial since, hellos of source since, sweep due)``: the two counts of
        :meth:`count_onboarding_attempts` (0 for a ``None`` serial), and whether an open session's
        nonce expired or an attested session's confirmation deadline passed by ``at`` (the work
        of the unconfirmed-session sweep).
        """
        (row,) = self._query(fp.ADMISSION, {"since": self._dt(since), "serial": serial,
                                            "source": source, "at": self._dt(at)})
        return int(row[0]), int(row[1]), bool(row[2])

    def prune_onboarding_attempts(self, before: datetime) -> int:
        """Forget hellos older than ``before`` (they no longer count); returns how many."""
        self._writable()
        t = s.onboarding_attempts
        return int(self._exec(delete(t).where(t.c.at < before)).rowcount)

    # -- policies and device groups (revision 0004) ------------------------------------------

    def add_policy(self, policy: Policy, at: datetime) -> PolicyRecord:
        """Store a new policy at version 1; ``ConflictError(policy_exists)``."""
        self._insert(s.policies, {"name": policy.name, "rules": rules_to_json(policy.rules),
                                  "version": 1, "created_at": at, "updated_at": at})
        return PolicyRecord(policy, 1, at, at)

    def replace_policy(self, policy: Policy, at: datetime) -> PolicyRecord:
        """Replace a policy's rules and bump its version; ``NotFoundError(unknown_policy)``."""
        self._writable()
        t = s.policies
        self._exec(update(t).where(t.c.name == policy.name).values(
            rules=rules_to_json(policy.rules), version=t.c.version + 1, updated_at=at))
        return self.get_policy(policy.name)

    def get_policy(self, name: str) -> PolicyRecord:
        """One stored policy; ``NotFoundError(unknown_policy)``."""
        row = self._exec(select(s.policies).where(s.policies.c.name == name)).first()
        if row is None:
            raise NotFoundError(f"no policy {name!r:.80}", reason="unknown_policy")
        return _policy_record(row)

    def list_policies(self) -> list[PolicyRecord]:
        """Every stored policy, by name."""
        return [_policy_record(r) for r in self._exec(select(s.policies)
                                                       .order_by(s.policies.c.name))]

    def set_model_policy(self, model: str, policy: str | None) -> None:
        """Attach ``policy`` to a device model (``None`` detaches it).

        ``NotFoundError`` with ``unknown_model`` or ``unknown_policy``.
        """
        t = s.device_models

        def write() -> int:
            return self._conn.execute(update(t).where(t.c.name == model)
                                      .values(policy=policy)).rowcount

        if self._guarded(t, {"policy": policy}, write) != 1:
            raise NotFoundError(f"no device model {model!r:.80}", reason="unknown_model")

    def models_with_policy(self, policy: str) -> list[str]:
        """The device models a policy is attached to."""
        t = s.device_models
        return [r[0] for r in self._exec(select(t.c.name).where(t.c.policy == policy)
                                         .order_by(t.c.name))]

    def add_group(self, group: DeviceGroup) -> None:
        """Create a device group; ``ConflictError(group_exists)``, ``unknown_policy``."""
        self._insert(s.device_groups, {"name": group.name, "policy": group.policy,
                                       "created_at": group.created_at})

    def get_group(self, name: str) -> DeviceGroup:
        """One group with its member count; ``NotFoundError(unknown_group)``."""
        groups = self._groups(s.device_groups.c.name == name)
        if not groups:
            raise NotFoundError(f"no device group {name!r:.80}", reason="unknown_group")
        return groups[0]

    def list_groups(self) -> list[DeviceGroup]:
        """Every group with its member count, by name."""
        return self._groups(None)

    def _groups(self, where: Any) -> list[DeviceGroup]:  # noqa: ANN401 - a SQL expression
        g, m = s.device_groups, s.device_group_members
        members = (select(func.count()).select_from(m).where(m.c.group_name == g.c.name)
                   .scalar_subquery())
        stmt = select(g.c.name, g.c.policy, g.c.created_at, members).order_by(g.c.name)
        if where is not None:
            stmt = stmt.where(where)
        return [DeviceGroup(name=r[0], policy=r[1], created_at=r[2], members=int(r[3]))
                for r in self._exec(stmt)]

    def set_group_policy(self, group: str, policy: str | None) -> None:
        """Attach ``policy`` to a group (``None`` detaches).

        ``NotFoundError`` with ``unknown_group`` or ``unknown_policy``.
        """
        t = s.device_groups

        def write() -> int:
            return self._conn.execute(update(t).where(t.c.name == group)
                                      .values(policy=policy)).rowcount

        if self._guarded(t, {"policy": policy}, write) != 1:
            raise NotFoundError(f"no device group {group!r:.80}", reason="unknown_group")

    def groups_with_policy(self, policy: str) -> list[str]:
        """The groups a policy is attached to."""
        t = s.device_groups
        return [r[0] for r in self._exec(select(t.c.name).where(t.c.policy == policy)
                                         .order_by(t.c.name))]

    def add_group_member(self, group: str, device_id: str, at: datetime) -> bool:
        """Put a device in a group; ``False`` if it already was.

        ``NotFoundError`` with ``unknown_group`` or ``unknown_device``.
        """
        t = s.device_group_members
        if self._exec(select(literal(1)).where(t.c.group_name == group,
                                               t.c.device_id == device_id)).first():
            return False
        self._insert(t, {"group_name": group, "device_id": device_id, "added_at": at})
        return True

    def remove_group_member(self, group: str, device_id: str) -> bool:
        """Take a device out of a group; ``False`` if it was not in it."""
        self._writable()
        t = s.device_group_members
        return bool(self._exec(delete(t).where(t.c.group_name == group,
                                               t.c.device_id == device_id)).rowcount)

    def group_members(self, group: str) -> list[str]:
        """The device ids in a group, sorted."""
        t = s.device_group_members
        return [r[0] for r in self._exec(select(t.c.device_id).where(t.c.group_name == group)
                                         .order_by(t.c.device_id))]

    def groups_of_device(self, device_id: str) -> list[str]:
        """The groups a device belongs to, sorted."""
        t = s.device_group_members
        return [r[0] for r in self._exec(select(t.c.group_name).where(t.c.device_id == device_id)
                                         .order_by(t.c.group_name))]

    def policies_for_device(self, device_id: str) -> list[Policy]:
        """The policies that apply to a device: its groups' (by group name), then its model's.

        Duplicates are removed; an empty list means the default policy applies. One prebuilt
        statement; parsed policies are memoised by (name, stored rules text).
        """
        seen: dict[str, Policy] = {}
        for name, rules in self._exec(_POLICIES_FOR_DEVICE, {"device_id": device_id}):
            if name not in seen:
                seen[name] = _parse_policy(name, rules)
        return list(seen.values())

    def device_state(self, device_id: str) -> DeviceState | None:
        """The device's lifecycle state, or ``None`` if the registry does not know it."""
        row = self._exec(_DEVICE_STATE, {"id": device_id}).first()
        return DeviceState(row[0]) if row is not None else None

    def policy_assignments(self) -> list[tuple[str, str]]:
        """``(device_id, policy name)`` for every device that has a group or model policy."""
        p_g, m, dm, d = s.device_groups, s.device_group_members, s.device_models, s.devices
        groups = (select(m.c.device_id.label("device_id"), p_g.c.policy.label("policy"))
                  .select_from(m.join(p_g, p_g.c.name == m.c.group_name))
                  .where(p_g.c.policy.is_not(None)))
        model = (select(d.c.id.label("device_id"), dm.c.policy.label("policy"))
                 .select_from(d.join(dm, dm.c.name == d.c.model))
                 .where(dm.c.policy.is_not(None)))
        stmt = groups.union(model).order_by("device_id", "policy")
        return [(r[0], r[1]) for r in self._exec(stmt)]

    # -- message counters (signed-message replay windows) ------------------------------------

    def load_message_counter(self, device_id: str) -> MessageCounter | None:
        """The persisted replay state of one device, or ``None``."""
        t = s.message_counters
        row = self._exec(select(t).where(t.c.device_id == device_id)).first()
        return None if row is None else _message_counter(row)

    def save_message_counters(self, states: Sequence[MessageCounter], at: datetime) -> None:
        """Write the states of many devices (insert or update), keeping any higher reservation.

        Three statements whatever the batch size: which rows exist, one executemany update, one
        executemany insert. A stored reservation is never lowered, except to ``NULL`` by a
        state whose ``reserved`` is ``None`` (the clean-shutdown flush).
        """
        self._writable()
        if not states:
            return
        t = s.message_counters
        ids = [state.device_id for state in states]
        existing = dict(self._exec(select(t.c.device_id, t.c.reserved)
                                   .where(t.c.device_id.in_(ids))).tuples().all())
        updates, inserts = [], []
        for state in states:
            row = _message_counter_row(state, at)
            if state.device_id in existing:
                stored = existing[state.device_id]
                if state.reserved is not None and stored is not None:
                    row["reserved"] = max(stored, state.reserved)
                updates.append({**row, "key": row["device_id"]})
            else:
                inserts.append(row)
        if updates:
            self._exec(update(t).where(t.c.device_id == bindparam("key")).values(
                highest=bindparam("highest"), bitmap=bindparam("bitmap"),
                window_size=bindparam("window_size"), reserved=bindparam("reserved"),
                updated_at=bindparam("updated_at")), updates)
        if inserts:
            self._insert(t, inserts)

    # -- ingested messages (the ingest service's database sink, revision 0005) ---------------

    def add_ingested_messages(self, messages: Sequence[tuple[VerifiedMessage, datetime]]) -> None:
        """Insert accepted messages with the time each was received (one executemany)."""
        self._writable()
        if messages:
            self._insert(s.ingested_messages, [_ingested_row(m, at) for m, at in messages])

    def count_ingested_messages(self, device_id: str | None = None) -> int:
        """How many accepted messages are stored (of one device, or in total)."""
        t = s.ingested_messages
        stmt = select(func.count()).select_from(t)
        if device_id is not None:
            stmt = stmt.where(t.c.device_id == device_id)
        return int(self._exec(stmt).scalar_one())

    def list_ingested_messages(self, device_id: str | None = None, *, after_id: int = 0,
                               limit: int = 100) -> list[tuple[int, datetime, VerifiedMessage]]:
        """Stored messages in insertion order: ``(id, received_at, message)``."""
        _check_limit(limit)
        t = s.ingested_messages
        stmt = select(t).where(t.c.id > after_id).order_by(t.c.id).limit(limit)
        if device_id is not None:
            stmt = stmt.where(t.c.device_id == device_id)
        return [(int(r.id), r.received_at, _ingested(r)) for r in self._exec(stmt)]

    # -- credential lifecycle: rotation, campaigns, zombies, expiry (revision 0005) ---------

    def add_rotation_session(self, session: RotationSession) -> None:
        """Open a rotation session; ``ConflictError(nonce_reused)`` for a repeated nonce."""
        self._insert(s.rotation_sessions, _rotation_row(session))

    def get_rotation_session(self, session_id: str) -> RotationSession | None:
        """One rotation session, or ``None``."""
        t = s.rotation_sessions
        row = self._exec(select(t).where(t.c.id == session_id)).first()
        return None if row is None else _rotation(row)

    def complete_rotation_session(self, session_id: str, nonce_sha256: str, at: datetime,
                                  confirm_by: datetime) -> bool:
        """Spend the nonce: open → completed, conditional on hash, state and expiry.

        ``True`` for exactly one caller, ever.
        """
        self._writable()
        t = s.rotation_sessions
        result = self._exec(update(t).where(
            t.c.id == session_id, t.c.nonce_sha256 == nonce_sha256, t.c.state == "open",
            t.c.consumed_at.is_(None), t.c.expires_at > at).values(
            state="completed", consumed_at=at, confirm_by=confirm_by))
        return result.rowcount == 1

    def set_rotation_credential(self, session_id: str, serial_hex: str) -> None:
        """Record the credential a completed rotation issued."""
        self._writable()
        t = s.rotation_sessions
        self._exec(update(t).where(t.c.id == session_id, t.c.state == "completed")
                   .values(new_credential_serial=serial_hex))

    def confirm_rotation_session(self, session_id: str, at: datetime) -> bool:
        """Completed → confirmed unless past its deadline; ``True`` for one caller only."""
        self._writable()
        t = s.rotation_sessions
        result = self._exec(update(t).where(
            t.c.id == session_id, t.c.state == "completed", t.c.confirm_by >= at,
            t.c.new_credential_serial.is_not(None)).values(state="confirmed", confirmed_at=at))
        return result.rowcount == 1

    def end_rotation_session(self, session_id: str, state: str, *, expected: str) -> bool:
        """``expected`` → ``state`` (refused or expired), compare-and-set."""
        self._writable()
        if state not in ("refused", "expired"):
            raise ValueError("a rotation session ends refused or expired")
        t = s.rotation_sessions
        return self._exec(update(t).where(t.c.id == session_id, t.c.state == expected)
                          .values(state=state)).rowcount == 1

    def expire_open_rotations(self, at: datetime) -> int:
        """Mark every open rotation whose nonce expired at or before ``at`` as expired."""
        self._writable()
        t = s.rotation_sessions
        return int(self._exec(update(t).where(t.c.state == "open", t.c.expires_at <= at)
                              .values(state="expired")).rowcount)

    def unconfirmed_rotations(self, at: datetime, *, limit: int = 100) -> list[RotationSession]:
        """Completed rotations whose confirmation deadline passed before ``at``."""
        _check_limit(limit)
        t = s.rotation_sessions
        stmt = (select(t).where(t.c.state == "completed", t.c.confirm_by < at)
                .order_by(t.c.confirm_by, t.c.id).limit(limit))
        return [_rotation(r) for r in self._exec(stmt)]

    def superseded_due(self, confirmed_before: datetime, *,
                       limit: int = 1000) -> list[RotationSession]:
        """Confirmed rotations before ``confirmed_before`` whose old credential is superseded."""
        _check_limit(limit)
        t, c = s.rotation_sessions, s.credentials
        stmt = (select(t).join(c, c.c.serial_number == t.c.credential_serial)
                .where(t.c.state == "confirmed", t.c.confirmed_at < confirmed_before,
                       c.c.state == CredentialState.SUPERSEDED.value)
                .order_by(t.c.confirmed_at).limit(limit))
        return [_rotation(r) for r in self._exec(stmt)]

    def request_rotations(self, device_ids: Sequence[str], campaign: str, at: datetime) -> int:
        """Ask devices to renew early (a new request replaces a completed one); returns how many."""
        self._writable()
        if not device_ids:
            return 0
        t = s.rotation_requests
        existing = set(self._exec(select(t.c.device_id).where(t.c.device_id.in_(device_ids)))
                       .scalars())
        fresh = [d for d in device_ids if d not in existing]
        if existing:
            self._exec(update(t).where(t.c.device_id.in_(list(existing))).values(
                campaign=campaign, requested_at=at, completed_at=None))
        if fresh:
            self._insert(t, [{"device_id": d, "campaign": campaign, "requested_at": at,
                              "completed_at": None} for d in fresh])
        return len(device_ids)

    def rotation_requested(self, device_id: str) -> datetime | None:
        """When an open renewal request for the device was made, or ``None``."""
        t = s.rotation_requests
        row = self._exec(select(t.c.requested_at).where(
            t.c.device_id == device_id, t.c.completed_at.is_(None))).first()
        return None if row is None else row[0]

    def complete_rotation_request(self, device_id: str, at: datetime) -> bool:
        """Mark the device's open renewal request done."""
        self._writable()
        t = s.rotation_requests
        return self._exec(update(t).where(t.c.device_id == device_id,
                                          t.c.completed_at.is_(None))
                          .values(completed_at=at)).rowcount == 1

    def rotation_progress(self, campaign: str | None = None) -> tuple[int, int]:
        """``(requested, completed)`` renewal requests (of one campaign, or all)."""
        t = s.rotation_requests
        stmt = select(func.count(), func.count(t.c.completed_at)).select_from(t)
        if campaign is not None:
            stmt = stmt.where(t.c.campaign == campaign)
        total, done = self._exec(stmt).one()
        return int(total), int(done)

    def record_zombie(self, *, identity: str, where: str, device_id: str | None, at: datetime,
                      source: str, reason: str) -> int:
        """Count one contact of ``identity`` through ``where``; returns the new count."""
        t = s.zombies
        key = (t.c.identity == identity) & (t.c.where == where)
        values = {"last_seen_at": at, "last_source": source[:200], "last_reason": reason[:64]}

        def bump() -> int:
            self._conn.execute(update(t).where(key).values(count=t.c.count + 1, **values))
            row = self._conn.execute(select(t.c.count).where(key)).first()
            return 0 if row is None else int(row[0])

        count = self._guarded(t, {}, bump)
        if count:
            return count
        try:
            self._insert(t, {"identity": identity, "where": where, "device_id": device_id,
                             "count": 1, "first_seen_at": at, **values})
        except ConflictError:  # a concurrent first contact won the insert
            return self._guarded(t, {}, bump)
        return 1

    def list_zombies(self, *, limit: int = 1000, device_id: str | None = None,
                     ) -> list[ZombieRecord]:
        """Zombie contacts, most recently seen first."""
        _check_limit(limit)
        t = s.zombies
        # column order of the table: identity, where, device_id, count (r.count is tuple.count)
        stmt = select(t).order_by(t.c.last_seen_at.desc(), t.c.identity).limit(limit)
        if device_id is not None:
            stmt = stmt.where(t.c.device_id == device_id)
        return [ZombieRecord(identity=r.identity, where=r.where, device_id=r.device_id,
                             count=int(r[3]), first_seen_at=r.first_seen_at,
                             last_seen_at=r.last_seen_at, last_source=r.last_source,
                             last_reason=r.last_reason) for r in self._exec(stmt)]

    def lapsed_credentials(self, at: datetime, *, limit: int = 1000) -> list[Credential]:
        """Issued, active or superseded credentials whose ``not_after`` is at or before ``at``."""
        _check_limit(limit)
        t = s.credentials
        live = [st.value for st in (CredentialState.ISSUED, CredentialState.ACTIVE,
                                    CredentialState.SUPERSEDED)]
        stmt = (select(t).where(t.c.state.in_(live), t.c.not_after <= at)
                .order_by(t.c.not_after, t.c.serial_number).limit(limit))
        return [_credential(r) for r in self._exec(stmt)]

    def count_live_credentials(self, issuer_ca_id: str, at: datetime) -> int:
        """Unexpired issued/active/superseded credentials a CA issued (devices and services)."""
        t = s.credentials
        live = [st.value for st in (CredentialState.ISSUED, CredentialState.ACTIVE,
                                    CredentialState.SUPERSEDED)]
        return int(self._exec(select(func.count()).select_from(t).where(
            t.c.issuer_ca_id == issuer_ca_id, t.c.state.in_(live), t.c.not_after > at))
            .scalar_one())

    def dormant_devices(self, before: datetime, *, limit: int = 1000,
                        ) -> list[tuple[Device, datetime | None]]:
        """ACTIVE or QUARANTINED devices not seen since ``before`` (never seen: by update time)."""
        _check_limit(limit)
        t = s.devices
        stmt = (select(*_DEVICE_COLUMNS, t.c.last_seen_at)
                .where(t.c.state.in_([DeviceState.ACTIVE.value, DeviceState.QUARANTINED.value]),
                       ((t.c.last_seen_at.is_not(None)) & (t.c.last_seen_at < before))
                       | ((t.c.last_seen_at.is_(None)) & (t.c.updated_at < before)))
                .order_by(t.c.id).limit(limit))
        return [(_device(r[:-1]), r[-1]) for r in self._exec(stmt)]


def _rotation_row(r: RotationSession) -> dict[str, Any]:
    return {"id": r.id, "device_id": r.device_id, "credential_serial": r.credential_serial,
            "nonce_sha256": r.nonce_sha256, "state": r.state, "source": r.source,
            "created_at": r.created_at, "expires_at": r.expires_at,
            "consumed_at": r.consumed_at, "confirm_by": r.confirm_by,
            "confirmed_at": r.confirmed_at, "new_credential_serial": r.new_credential_serial}


def _rotation(row: Row[Any]) -> RotationSession:
    return RotationSession(
        id=row.id, device_id=row.device_id, credential_serial=row.credential_serial,
        nonce_sha256=row.nonce_sha256, state=row.state, source=row.source,
        created_at=row.created_at, expires_at=row.expires_at, consumed_at=row.consumed_at,
        confirm_by=row.confirm_by, confirmed_at=row.confirmed_at,
        new_credential_serial=row.new_credential_serial)


def _ingested_row(m: VerifiedMessage, at: datetime) -> dict[str, Any]:
    return {"device_id": m.device_id, "counter": m.counter, "device_time_ms": m.timestamp,
            "topic": m.topic, "content_type": str(m.content_type), "payload": m.payload,
            "credential_serial": m.credential_serial, "device_state": m.device_state.value,
            "received_at": at}


def _ingested(row: Row[Any]) -> VerifiedMessage:
    content_type: str | int = row.content_type
    if row.content_type.isdigit():  # a CoAP Content-Format number (media types contain "/")
        content_type = int(row.content_type)
    return VerifiedMessage(device_id=row.device_id, counter=int(row.counter),
                           timestamp=int(row.device_time_ms), topic=row.topic,
                           content_type=content_type, payload=bytes(row.payload),
                           credential_serial=row.credential_serial,
                           device_state=DeviceState(row.device_state))


def _message_counter(row: Row[Any]) -> MessageCounter:
    return MessageCounter(device_id=row.device_id, highest=int(row.highest),
                          bitmap=int.from_bytes(row.bitmap, "big"),
                          window_size=int(row.window_size),
                          reserved=None if row.reserved is None else int(row.reserved))


def _message_counter_row(state: MessageCounter, at: datetime) -> dict[str, Any]:
    return {"device_id": state.device_id, "highest": state.highest,
            "bitmap": state.bitmap.to_bytes((state.window_size + 7) // 8, "big"),
            "window_size": state.window_size, "reserved": state.reserved, "updated_at": at}
