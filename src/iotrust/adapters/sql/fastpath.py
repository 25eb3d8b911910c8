"""Hand-written SQL for the statements of an onboarding, run on the driver's cursor directly.

An onboarding runs about 30 statements. Through SQLAlchemy's ``Connection.execute`` each cost
≈ 80 µs of Python (compiled-cache lookup, ``construct_params``, bind and result processors,
result setup) around ≈ 15 µs in ``sqlite3``'s own ``execute``: ≈ 2.5 ms of the 5 to 8 ms of service
CPU per device. :class:`~iotrust.adapters.sql.store.Tx` runs the hot ones (the session-context
read, the event append and its head read, the inserts of sessions, hellos, credentials and keys,
the conditional updates of sessions, credentials and devices, the admission counts) through the
texts below instead; everything else stays on SQLAlchemy Core.

Each :class:`Sql` holds one statement's text in both dialects, derived from one source text with
``:name`` placeholders (``sqlite3``'s named style; ``%(name)s`` for psycopg), ``{false}`` and
``{for_update}`` (``0`` and nothing on SQLite, ``false`` and `` FOR UPDATE`` on PostgreSQL).
The texts say what the Core statements they replace said, and the values are converted exactly
as :class:`~iotrust.adapters.sql.schema.UtcDateTime` and SQLAlchemy's types convert them:

* datetimes: only aware ones (``TypeError`` otherwise), converted to UTC; on SQLite stored as
  SQLAlchemy's text form ``YYYY-MM-DD HH:MM:SS.ffffff`` (naive UTC, fixed width, so existing rows
  and comparisons in SQL still match byte for byte) and read back tagged UTC;
* JSON columns are parsed on SQLite (psycopg parses them itself); booleans and bytes go as the
  drivers take them (``sqlite3`` stores ``True`` as 1, as SQLAlchemy does).

A test checks these conversions against SQLAlchemy's own. This module runs no SQL itself.
"""

# ruff: noqa: S608 - every text here is built from schema constants only, never from input

from __future__ import annotations

import json
import re
from collections import namedtuple
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from iotrust.adapters.sql import schema as s

__all__ = ["Dialect", "Sql", "dialect_for"]

_PARAM: Final = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


def _dt_in_sqlite(value: datetime | None) -> str | None:
    value = s.utc_for_storage(value)
    return None if value is None else value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _dt_out_sqlite(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _json_out_sqlite(value: Any) -> Any:  # noqa: ANN401 - JSON
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _same(value: Any) -> Any:  # noqa: ANN401 - psycopg already parsed it
    return value


class Dialect:
    """What differs per backend: the statement text and the datetime/JSON conversions."""

    __slots__ = ("dt_in", "dt_out", "json_out", "name", "sqlite")

    def __init__(self, name: str) -> None:
        self.name = name
        self.sqlite = name == "sqlite"
        self.dt_in: Callable[[datetime | None], Any] = (
            _dt_in_sqlite if self.sqlite else s.utc_for_storage)
        self.dt_out: Callable[[Any], datetime | None] = (
            _dt_out_sqlite if self.sqlite else s.utc_from_storage)
        self.json_out: Callable[[Any], Any] = _json_out_sqlite if self.sqlite else _same


_DIALECTS: Final = {"sqlite": Dialect("sqlite"), "postgresql": Dialect("postgresql")}


def dialect_for(name: str) -> Dialect:
    """The :class:`Dialect` of ``sqlite`` or ``postgresql``."""
    return _DIALECTS[name]


class Sql:
    """One statement in both dialects and, for a query, how to turn its rows into records.

    ``fields`` name the result columns (rows come back as named tuples, so the record mappers
    of the store read them like SQLAlchemy rows); ``dt`` and ``json`` name the columns that need
    converting.
    """

    __slots__ = ("_dt", "_json", "_row", "postgresql", "sqlite")

    def __init__(self, text: str, fields: Sequence[str] = (), *, dt: Sequence[str] = (),
                 json: Sequence[str] = ()) -> None:
        text = " ".join(text.split())
        self.sqlite = text.format(false="0", for_update="")
        self.postgresql = _PARAM.sub(r"%(\1)s",
                                     text.format(false="false", for_update=" FOR UPDATE"))
        self._row: Any = namedtuple("Row", fields) if fields else None  # noqa: PYI024
        self._dt = tuple(fields.index(f) for f in dt)
        self._json = tuple(fields.index(f) for f in json)

    def text(self, dialect: Dialect) -> str:
        """The statement's text for ``dialect``."""
        return self.sqlite if dialect.sqlite else self.postgresql

    def rows(self, raw: Sequence[Sequence[Any]], dialect: Dialect) -> list[Any]:
        """The driver's rows as named tuples with converted values (as they are: no fields)."""
        if self._row is None:
            return list(raw)
        make = self._row._make
        if not (self._dt or self._json):
            return [make(r) for r in raw]
        dt_out, json_out = dialect.dt_out, dialect.json_out
        out = []
        for r in raw:
            values = list(r)
            for i in self._dt:
                values[i] = dt_out(values[i])
            for i in self._json:
                values[i] = json_out(values[i])
            out.append(make(values))
        return out


def _cols(table: Any, names: Sequence[str] | None = None, *, prefix: str = "",  # noqa: ANN401
          label: str = "") -> str:
    """A column list of ``table`` (all, or ``names``), checked against the schema."""
    columns = [c.name for c in table.columns] if names is None else list(names)
    for name in columns:
        table.c[name]  # a KeyError here is a typo in this module
    return ", ".join(f"{prefix}{n} AS {label}{n}" if label else f"{prefix}{n}" for n in columns)


def _insert(table: Any, names: Sequence[str]) -> Sql:  # noqa: ANN401 - a Table
    return Sql(f"INSERT INTO {table.name} ({_cols(table, names)}) "
               f"VALUES ({', '.join(':' + n for n in names)})")


def _dt_fields(table: Any, names: Sequence[str]) -> list[str]:  # noqa: ANN401 - a Table
    return [n for n in names if isinstance(table.c[n].type, s.UtcDateTime)]


# -- reads ------------------------------------------------------------------------------------

DEVICE_FIELDS: Final = ("id", "manufacturer", "serial", "factory_spki_sha256", "vendor_id",
                        "product_id", "owner", "state", "created_at", "updated_at", "model",
                        "retired_reason", "key_storage", "unsafe_admission")
SESSION_FIELDS: Final = tuple(c.name for c in s.onboarding_sessions.columns)
CA_FIELDS: Final = tuple(c.name for c in s.certificate_authorities.columns)
DOMAIN_FIELDS: Final = ("name", "owner", "created_at", "server_id", "root_ca_id", "settings")
MANUFACTURER_FIELDS: Final = tuple(c.name for c in s.manufacturers.columns)
VOUCHER_FIELDS: Final = tuple(c.name for c in s.vouchers.columns)

GET_DOMAIN: Final = Sql(f"SELECT {_cols(s.trust_domain, DOMAIN_FIELDS)} FROM trust_domain "
                        "WHERE id = 1", DOMAIN_FIELDS, dt=("created_at",), json=("settings",))
ALL_CAS: Final = Sql(f"SELECT {_cols(s.certificate_authorities)} FROM certificate_authorities "
                     "ORDER BY created_at, id", CA_FIELDS,
                     dt=_dt_fields(s.certificate_authorities, CA_FIELDS))
GET_MANUFACTURER: Final = Sql(
    f"SELECT {_cols(s.manufacturers)} FROM manufacturers WHERE name = :name",
    MANUFACTURER_FIELDS, dt=_dt_fields(s.manufacturers, MANUFACTURER_FIELDS), json=("allowed",))
ACTIVE_VOUCHER: Final = Sql(
    f"SELECT {_cols(s.vouchers)} FROM vouchers WHERE device_id = :device_id "
    "AND superseded = {false} ORDER BY id DESC LIMIT 1", VOUCHER_FIELDS,
    dt=_dt_fields(s.vouchers, VOUCHER_FIELDS))
GET_DEVICE: Final = Sql(f"SELECT {_cols(s.devices, DEVICE_FIELDS)} FROM devices WHERE id = :id",
                        DEVICE_FIELDS, dt=("created_at", "updated_at"))
FIND_DEVICE: Final = Sql(
    f"SELECT {_cols(s.devices, DEVICE_FIELDS)} FROM devices "
    "WHERE manufacturer = :manufacturer AND serial = :serial",
    DEVICE_FIELDS, dt=("created_at", "updated_at"))
FIND_DEVICE_BY_KEY: Final = Sql(
    f"SELECT {_cols(s.devices, DEVICE_FIELDS)} FROM devices WHERE factory_spki_sha256 = :spki",
    DEVICE_FIELDS, dt=("created_at", "updated_at"))
FIND_DEVICE_FOR_UPDATE: Final = Sql(
    f"SELECT {_cols(s.devices, DEVICE_FIELDS)} FROM devices "
    "WHERE manufacturer = :manufacturer AND serial = :serial{for_update}",
    DEVICE_FIELDS, dt=("created_at", "updated_at"))
# attest's and confirm's one read: the device's columns first (positional for the store's
# _device), then the session's credential certificate, then the session's columns.
_CONTEXT_FIELDS: Final = (*(f"dev_{n}" for n in DEVICE_FIELDS), "credential_pem",
                          *SESSION_FIELDS)
SESSION_CONTEXT: Final = Sql(
    f"SELECT {_cols(s.devices, DEVICE_FIELDS, prefix='d.', label='dev_')}, "
    f"c.certificate_pem AS credential_pem, {_cols(s.onboarding_sessions, prefix='o.')} "
    "FROM onboarding_sessions o "
    "LEFT OUTER JOIN credentials c ON c.serial_number = o.credential_serial "
    "LEFT OUTER JOIN devices d ON d.id = o.device_id WHERE o.id = :id",
    _CONTEXT_FIELDS,
    dt=("dev_created_at", "dev_updated_at",
        *_dt_fields(s.onboarding_sessions, SESSION_FIELDS)))
LIVE_SESSION: Final = Sql(
    "SELECT EXISTS (SELECT 1 FROM onboarding_sessions WHERE device_id = :device_id "
    "AND ((state = 'open' AND expires_at > :at) OR (state = 'attested' AND confirm_by >= :at)))")
KEY_SEEN: Final = Sql("SELECT EXISTS (SELECT 1 FROM seen_keys WHERE spki_sha256 = :spki)")
ADMISSION: Final = Sql(
    "SELECT (SELECT count(*) FROM onboarding_attempts WHERE serial = :serial AND at >= :since), "
    "(SELECT count(*) FROM onboarding_attempts WHERE source = :source AND at >= :since), "
    "(EXISTS (SELECT 1 FROM onboarding_sessions WHERE state = 'attested' "
    "AND (confirm_by IS NULL OR confirm_by < :at)) "
    "OR EXISTS (SELECT 1 FROM onboarding_sessions WHERE state = 'open' AND expires_at <= :at))")
LOCK_EVENT_HEAD: Final = Sql("SELECT seq, hash FROM event_head WHERE id = 1{for_update}")

# -- writes -----------------------------------------------------------------------------------

INSERT_EVENT: Final = _insert(s.events, ("seq", "at", "kind", "actor", "device_id", "reason",
                                         "data", "prev_hash", "hash"))
MOVE_EVENT_HEAD: Final = Sql("UPDATE event_head SET seq = :seq, hash = :hash WHERE id = 1")
SESSION_INSERT_FIELDS: Final = ("id", "device_id", "serial", "nonce_sha256", "device_nonce",
                                "expires_at", "consumed_at", "state", "source",
                                "credential_serial", "created_at", "factory_spki",
                                "voucher_sha256", "confirm_by", "key_storage")
INSERT_SESSION: Final = _insert(s.onboarding_sessions, SESSION_INSERT_FIELDS)
INSERT_ATTEMPT: Final = _insert(s.onboarding_attempts, ("serial", "source", "at"))
CREDENTIAL_FIELDS: Final = ("serial_number", "device_id", "subject", "spki_sha256",
                            "issuer_ca_id", "not_before", "not_after", "state",
                            "certificate_pem", "revoked_at", "revocation_reason", "created_at")
INSERT_CREDENTIAL: Final = _insert(s.credentials, CREDENTIAL_FIELDS)
INSERT_KEY: Final = _insert(s.seen_keys, ("spki_sha256", "kind", "device_id", "first_seen_at"))
ATTEST_SESSION: Final = Sql(
    "UPDATE onboarding_sessions SET state = 'attested', consumed_at = :at, "
    "confirm_by = :deadline WHERE id = :id AND nonce_sha256 = :nonce AND consumed_at IS NULL "
    "AND expires_at > :at AND state = 'open'")
CONFIRM_SESSION: Final = Sql(
    "UPDATE onboarding_sessions SET state = 'confirmed' "
    "WHERE id = :id AND state = 'attested' AND confirm_by >= :at")
SET_SESSION_STATE_WITH_CREDENTIAL: Final = Sql(
    "UPDATE onboarding_sessions SET state = :state, credential_serial = :serial "
    "WHERE id = :id AND state = :expected")
SET_CREDENTIAL_STATE: Final = Sql(
    "UPDATE credentials SET state = :state WHERE serial_number = :serial AND state = :expected")
_UPDATE_DEVICE: Final = (
    "UPDATE devices SET owner = :new_owner, model = :new_model, state = :new_state, "
    "retired_reason = :new_retired, key_storage = :new_storage, "
    "unsafe_admission = :new_unsafe, updated_at = :new_updated_at{seen} "
    "WHERE id = :key_id AND state = :expected_state AND manufacturer = :key_manufacturer "
    "AND serial = :key_serial AND factory_spki_sha256 = :key_spki "
    "AND vendor_id = :key_vendor AND product_id = :key_product")
UPDATE_DEVICE: Final = Sql(_UPDATE_DEVICE.replace("{seen}", ""))
UPDATE_DEVICE_SEEN: Final = Sql(_UPDATE_DEVICE.replace(
    "{seen}", ", last_seen_at = CASE WHEN last_seen_at IS NULL OR last_seen_at < :new_seen_at "
    "THEN :new_seen_at ELSE last_seen_at END"))
TOUCH_LAST_SEEN: Final = Sql(
    "UPDATE devices SET last_seen_at = :at "
    "WHERE id = :id AND (last_seen_at IS NULL OR last_seen_at < :at)")
