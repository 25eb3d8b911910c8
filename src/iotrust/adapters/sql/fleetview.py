"""Read-only queries behind the fleet dashboard: aggregates, filtered keyset pages, recent events.

:class:`FleetViewTx` wraps one open :class:`~iotrust.adapters.sql.store.Tx` (the same unit of
work, the same error seam: its statements run through the ``Tx``'s executor, so driver errors
become :class:`~iotrust.errors.BackendError` exactly as they do in the store). Every query is
bounded: counts are SQL aggregates (``GROUP BY``), lists are keyset pages of at most
:data:`MAX_PAGE` rows ordered by a unique key (device id, event sequence), never ``OFFSET`` and
never a Python loop over the whole fleet.

This module writes nothing and decides nothing (what counts as a refusal is the caller's
:data:`REFUSAL_KINDS` pattern, stated here only so the SQL and the page agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import func, or_, select

from iotrust.adapters.sql import schema as s
from iotrust.adapters.sql.store import _DEVICE_COLUMNS, _device, _event, _token
from iotrust.core.lifecycle import Device, DeviceState
from iotrust.errors import InputError

if TYPE_CHECKING:
    from iotrust.adapters.sql.store import Tx
    from iotrust.core.records import ApiToken, EventRow

__all__ = ["MAX_PAGE", "REFUSAL_KINDS", "DeviceFilter", "FleetViewTx"]

MAX_PAGE: Final = 500
MAX_QUERY: Final = 64
#: ``LIKE`` patterns of event kinds that record a refusal (the dashboard highlights them).
REFUSAL_KINDS: Final = ("%refused%", "zombie.%")
_TOP: Final = "\U0010ffff"


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """What the device list is narrowed to (``query``: an id or a serial prefix)."""

    state: DeviceState | None = None
    manufacturer: str | None = None
    model: str | None = None
    query: str | None = None

    def __post_init__(self) -> None:
        if self.query is not None and len(self.query) > MAX_QUERY:
            raise InputError(f"search text is limited to {MAX_QUERY} characters",
                             reason="invalid_query")


def _check(limit: int) -> None:
    if isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise InputError(f"limit must be between 1 and {MAX_PAGE}", reason="invalid_limit")


class FleetViewTx:
    """The dashboard's read queries within one transaction."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx
        self._sqlite = tx._conn.dialect.name == "sqlite"  # noqa: SLF001 - same adapter

    def _exec(self, stmt: Any, params: Any = None) -> Any:  # noqa: ANN401 - SQLAlchemy objects
        return self._tx._exec(stmt, params)  # noqa: SLF001 - same adapter, shared error seam

    def counts_by_model_and_state(self) -> list[tuple[str | None, DeviceState, int]]:
        """``(model, state, devices)`` for every pair present (one ``GROUP BY``)."""
        t = s.devices
        rows = self._exec(select(t.c.model, t.c.state, func.count())
                          .group_by(t.c.model, t.c.state))
        return [(model, DeviceState(state), int(n)) for model, state, n in rows]

    def counts_by_manufacturer(self) -> dict[str, int]:
        """Devices per manufacturer (one ``GROUP BY``)."""
        t = s.devices
        rows = self._exec(select(t.c.manufacturer, func.count()).group_by(t.c.manufacturer))
        return {str(m): int(n) for m, n in rows}

    def model_manufacturers(self) -> dict[str, str]:
        """Each registered model's manufacturer."""
        t = s.device_models
        return {str(n): str(m) for n, m in self._exec(select(t.c.name, t.c.manufacturer))}

    def manufacturer_names(self) -> list[str]:
        """Registered manufacturers by name."""
        t = s.manufacturers
        return [str(r[0]) for r in self._exec(select(t.c.name).order_by(t.c.name))]

    def devices_page(self, where: DeviceFilter, *, limit: int, after_id: str | None = None,
                     ) -> list[Device]:
        """Up to ``limit`` devices matching ``where``, ordered by id, after ``after_id``."""
        _check(limit)
        t = s.devices
        stmt = select(*_DEVICE_COLUMNS).order_by(t.c.id).limit(limit)
        if where.state is not None:
            stmt = stmt.where(t.c.state == where.state.value)
        if where.manufacturer is not None:
            stmt = stmt.where(t.c.manufacturer == where.manufacturer)
        if where.model is not None:
            stmt = stmt.where(t.c.model == where.model)
        if where.query:
            column = t.c.id if where.query.startswith("dev-") else t.c.serial
            stmt = stmt.where(column.startswith(where.query, autoescape=True))
            if self._sqlite:
                # The same prefix as a range the indexes can serve (SQLite compares text with
                # memcmp, so every string with the prefix is in [q, q + U+10FFFF)); the serial
                # index is (manufacturer, serial), hence the manufacturer list in front of it.
                stmt = stmt.where(column >= where.query, column < where.query + _TOP)
                if column is t.c.serial and where.manufacturer is None:
                    stmt = stmt.where(t.c.manufacturer.in_(select(s.manufacturers.c.name)))
        if after_id is not None:
            stmt = stmt.where(t.c.id > after_id)
        return [_device(r) for r in self._exec(stmt)]

    def recent_events(self, *, limit: int, before_seq: int | None = None, after_seq: int = 0,
                      device_id: str | None = None, refusals_only: bool = False,
                      ) -> list[EventRow]:
        """The newest ``limit`` events (newest first) between ``after_seq`` and ``before_seq``."""
        _check(limit)
        t = s.events
        stmt = select(t).order_by(t.c.seq.desc()).limit(limit)
        if before_seq is not None:
            stmt = stmt.where(t.c.seq < before_seq)
        if after_seq > 0:
            stmt = stmt.where(t.c.seq > after_seq)
        if device_id is not None:
            stmt = stmt.where(t.c.device_id == device_id)
        if refusals_only:
            stmt = stmt.where(or_(*(t.c.kind.like(p) for p in REFUSAL_KINDS)))
        return [_event(r) for r in self._exec(stmt)]

    def events_after(self, after_seq: int, *, limit: int, refusals_only: bool = False,
                     ) -> list[EventRow]:
        """Up to ``limit`` events after ``after_seq``, oldest first (what a live view appends)."""
        _check(limit)
        t = s.events
        stmt = select(t).where(t.c.seq > after_seq).order_by(t.c.seq).limit(limit)
        if refusals_only:
            stmt = stmt.where(or_(*(t.c.kind.like(p) for p in REFUSAL_KINDS)))
        return [_event(r) for r in self._exec(stmt)]

    def token_by_name(self, name: str) -> ApiToken | None:
        """The operator token called ``name`` (revoked or not), if any."""
        t = s.api_tokens
        row = self._exec(select(t).where(t.c.name == name)).first()
        return _token(row) if row is not None else None
