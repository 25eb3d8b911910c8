"""Registry storage for signed updates: releases, rollouts, rollout devices, report counters.

:class:`UpdateTx` wraps one open :class:`~iotrust.adapters.sql.store.Tx` (the same unit of work,
the same error seam: it runs its statements through the ``Tx``'s guarded executor, so driver
errors become the error tree exactly as for every other table). It takes and returns plain
values (:class:`ReleaseRow`, :class:`RolloutRow`, :class:`RolloutDeviceRow`).

This module decides nothing: wave rules and abort thresholds are :mod:`iotrust.core.rollout`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, bindparam, func, select, update

from iotrust.adapters.sql import schema as s
from iotrust.adapters.sql.store import Tx
from iotrust.errors import ConflictError, NotFoundError


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    """A published release as recorded."""

    id: str
    component: str
    release_counter: int
    hw_class_ids: tuple[str, ...]
    min_agent_version: str
    targets: Mapping[str, str]  # hardware class → published target path
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RolloutRow:
    """A rollout as recorded."""

    id: str
    release_id: str
    state: str
    policy: Mapping[str, Any]
    wave_index: int
    reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RolloutDeviceRow:
    """One device of a rollout."""

    rollout_id: str
    device_id: str
    bucket: int
    wave: int
    released_at: datetime | None
    status: str
    reason: str | None


def _json(value: Any) -> Any:  # noqa: ANN401 - JSON column values differ per driver
    return json.loads(value) if isinstance(value, str) else value


def _release(row: Row[Any]) -> ReleaseRow:
    return ReleaseRow(id=row.id, component=row.component,
                      release_counter=int(row.release_counter),
                      hw_class_ids=tuple(_json(row.hw_class_ids)),
                      min_agent_version=row.min_agent_version, targets=_json(row.targets),
                      created_at=row.created_at)


def _rollout(row: Row[Any]) -> RolloutRow:
    return RolloutRow(id=row.id, release_id=row.release_id, state=row.state,
                      policy=_json(row.policy), wave_index=int(row.wave_index),
                      reason=row.reason, created_at=row.created_at, updated_at=row.updated_at)


def _device(row: Row[Any]) -> RolloutDeviceRow:
    return RolloutDeviceRow(rollout_id=row.rollout_id, device_id=row.device_id,
                            bucket=int(row.bucket), wave=int(row.wave),
                            released_at=row.released_at, status=row.status, reason=row.reason)


class UpdateTx:
    """Update tables within one registry transaction."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx

    def _exec(self, stmt: Any, params: Any = None) -> Any:  # noqa: ANN401 - SQLAlchemy objects
        return self._tx._exec(stmt, params)  # noqa: SLF001 - same adapter, shared error seam

    def _insert(self, table: Any, rows: Any) -> None:  # noqa: ANN401
        self._tx._insert(table, rows)  # noqa: SLF001 - same adapter, shared error seam

    # -- releases ----------------------------------------------------------------------------

    def add_release(self, r: ReleaseRow) -> None:
        """Record a release; ``ConflictError(release_exists)`` on a duplicate id or counter."""
        t = s.releases
        taken = self._exec(select(t.c.id).where(
            (t.c.id == r.id) | and_(t.c.component == r.component,
                                    t.c.release_counter == r.release_counter))).first()
        if taken is not None:
            raise ConflictError(f"release {r.id} exists", reason="release_exists")
        self._insert(t, {"id": r.id, "component": r.component,
                         "release_counter": r.release_counter,
                         "hw_class_ids": list(r.hw_class_ids),
                         "min_agent_version": r.min_agent_version, "targets": dict(r.targets),
                         "created_at": r.created_at})

    def get_release(self, release_id: str) -> ReleaseRow:
        """One release; ``NotFoundError(unknown_release)``."""
        row = self._exec(select(s.releases).where(s.releases.c.id == release_id)).first()
        if row is None:
            raise NotFoundError(f"no release {release_id!r}", reason="unknown_release")
        return _release(row)

    def list_releases(self) -> list[ReleaseRow]:
        """Every release, oldest first."""
        t = s.releases
        return [_release(r) for r in self._exec(select(t).order_by(t.c.created_at, t.c.id))]

    def highest_counter(self, component: str) -> int | None:
        """The highest recorded release counter of ``component``."""
        t = s.releases
        value = self._exec(select(func.max(t.c.release_counter))
                           .where(t.c.component == component)).scalar()
        return None if value is None else int(value)

    # -- rollouts ----------------------------------------------------------------------------

    def add_rollout(self, r: RolloutRow, devices: Sequence[RolloutDeviceRow],
                    at: datetime) -> None:
        """Record a rollout and its devices."""
        if self._exec(select(s.rollouts.c.id).where(s.rollouts.c.id == r.id)).first():
            raise ConflictError(f"rollout {r.id} exists", reason="rollout_exists")
        self._insert(s.rollouts, {"id": r.id, "release_id": r.release_id, "state": r.state,
                                  "policy": dict(r.policy), "wave_index": r.wave_index,
                                  "reason": r.reason, "created_at": r.created_at,
                                  "updated_at": r.updated_at})
        if devices:
            self._insert(s.rollout_devices, [
                {"rollout_id": d.rollout_id, "device_id": d.device_id, "bucket": str(d.bucket),
                 "wave": d.wave, "released_at": d.released_at, "status": d.status,
                 "reason": d.reason, "updated_at": at} for d in devices])

    def get_rollout(self, rollout_id: str, *, for_update: bool = False) -> RolloutRow:
        """One rollout; ``NotFoundError(unknown_rollout)``."""
        stmt = select(s.rollouts).where(s.rollouts.c.id == rollout_id)
        if for_update:
            stmt = stmt.with_for_update()
        row = self._exec(stmt).first()
        if row is None:
            raise NotFoundError(f"no rollout {rollout_id!r}", reason="unknown_rollout")
        return _rollout(row)

    def list_rollouts(self) -> list[RolloutRow]:
        """Every rollout, oldest first."""
        t = s.rollouts
        return [_rollout(r) for r in self._exec(select(t).order_by(t.c.created_at, t.c.id))]

    def set_rollout(self, rollout_id: str, *, state: str, wave_index: int, reason: str | None,
                    at: datetime) -> None:
        """Change a rollout's state, wave and reason."""
        t = s.rollouts
        self._exec(update(t).where(t.c.id == rollout_id).values(
            state=state, wave_index=wave_index, reason=reason, updated_at=at))

    def rollout_devices(self, rollout_id: str) -> list[RolloutDeviceRow]:
        """Every device of a rollout."""
        t = s.rollout_devices
        return [_device(r) for r in self._exec(select(t).where(t.c.rollout_id == rollout_id)
                                               .order_by(t.c.device_id))]

    def status_counts(self, rollout_id: str) -> dict[str, int]:
        """Status → number of *released* devices of the rollout."""
        t = s.rollout_devices
        rows = self._exec(select(t.c.status, func.count()).where(
            t.c.rollout_id == rollout_id, t.c.released_at.is_not(None)).group_by(t.c.status))
        return {status: int(n) for status, n in rows}

    def release_devices(self, rollout_id: str, device_ids: Iterable[str], at: datetime) -> None:
        """Mark devices as offered the release."""
        ids = list(device_ids)
        if not ids:
            return
        t = s.rollout_devices
        self._exec(update(t).where(t.c.rollout_id == rollout_id,
                                   t.c.device_id == bindparam("key"))
                   .values(released_at=at, updated_at=at), [{"key": i} for i in ids])

    def withdraw_unstarted(self, rollout_id: str, at: datetime) -> list[str]:
        """Withdraw the release from released devices that reported nothing; their ids."""
        t = s.rollout_devices
        ids = [r[0] for r in self._exec(select(t.c.device_id).where(
            t.c.rollout_id == rollout_id, t.c.released_at.is_not(None),
            t.c.status == "pending"))]
        if ids:
            self._exec(update(t).where(t.c.rollout_id == rollout_id,
                                       t.c.device_id == bindparam("key"))
                       .values(released_at=None, updated_at=at), [{"key": i} for i in ids])
        return ids

    def device_row(self, rollout_id: str, device_id: str) -> RolloutDeviceRow | None:
        """One device of one rollout, or ``None``."""
        t = s.rollout_devices
        row = self._exec(select(t).where(t.c.rollout_id == rollout_id,
                                         t.c.device_id == device_id)).first()
        return None if row is None else _device(row)

    def set_device_status(self, rollout_id: str, device_id: str, status: str,
                          reason: str | None, at: datetime) -> None:
        """Record a device's reported status."""
        t = s.rollout_devices
        self._exec(update(t).where(t.c.rollout_id == rollout_id, t.c.device_id == device_id)
                   .values(status=status, reason=reason, updated_at=at))

    def rollouts_of_device(self, device_id: str) -> list[tuple[RolloutRow, RolloutDeviceRow]]:
        """Every rollout the device belongs to, with its row."""
        d, r = s.rollout_devices, s.rollouts
        rows = self._exec(select(d, r.c.release_id, r.c.state.label("rollout_state"))
                          .select_from(d.join(r, r.c.id == d.c.rollout_id))
                          .where(d.c.device_id == device_id))
        return [(self.get_rollout(row.rollout_id), _device(row)) for row in rows]

    def offered_releases(self, device_ids: Sequence[str]) -> dict[str, list[str]]:
        """Device → ids of the releases currently offered to it (by any rollout)."""
        d, r = s.rollout_devices, s.rollouts
        out: dict[str, list[str]] = {i: [] for i in device_ids}
        for start in range(0, len(device_ids), 500):
            chunk = list(device_ids[start:start + 500])
            rows = self._exec(select(d.c.device_id, r.c.release_id)
                              .select_from(d.join(r, r.c.id == d.c.rollout_id))
                              .where(d.c.device_id.in_(chunk), d.c.released_at.is_not(None)))
            for device_id, release_id in rows:
                out[device_id].append(release_id)
        return out

    # -- report counters ---------------------------------------------------------------------

    def report_counter(self, device_id: str) -> int:
        """The highest accepted status-report counter of a device (-1: none)."""
        t = s.device_updates
        value = self._exec(select(t.c.report_counter).where(t.c.device_id == device_id)).scalar()
        return -1 if value is None else int(value)

    def accept_report(self, device_id: str, counter: int, at: datetime, *,
                      installed_release: str | None = None) -> bool:
        """Raise the device's report counter to ``counter`` if it is higher; False otherwise."""
        t = s.device_updates
        values: dict[str, Any] = {"report_counter": counter, "updated_at": at}
        if installed_release is not None:
            values["installed_release"] = installed_release
        done = self._exec(update(t).where(t.c.device_id == device_id,
                                          t.c.report_counter < counter).values(**values))
        if done.rowcount == 1:
            return True
        if self._exec(select(t.c.device_id).where(t.c.device_id == device_id)).first():
            return False
        self._insert(t, {"device_id": device_id, "report_counter": counter,
                         "installed_release": installed_release, "updated_at": at})
        return True

    def installed_release(self, device_id: str) -> str | None:
        """The release the device last reported committed."""
        t = s.device_updates
        value = self._exec(select(t.c.installed_release)
                           .where(t.c.device_id == device_id)).scalar()
        return None if value is None else str(value)
