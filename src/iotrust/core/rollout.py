"""Staged rollout rules: stable wave assignment, progress, advance and abort decisions (§8).

* Each device of a rollout gets a **bucket**: the first 8 bytes of
  ``SHA-256(rollout id || 0x00 || device id)`` as an integer in ``[0, 2^64)``. The same device in
  the same rollout always lands in the same bucket; another rollout reshuffles the fleet.
* **Waves** are cumulative percentages (default 1 → 10 → 50 → 100): a device is in wave ``i``
  when its bucket is below ``waves[i]`` percent of ``2^64`` and not below ``waves[i-1]``.
* **Progress** counts the devices released so far by status. A device is *finished* once it
  reports ``committed``, ``rolled_back`` or ``rejected``; the last two are *failures*.
* :func:`decide` says what to do next: **abort** when at least ``abort_min_finished`` devices
  finished and at least ``abort_failure_percent`` % of them failed; **advance** to the next
  wave when at least ``success_percent`` % of the devices released so far committed;
  **complete** when the last wave reached that threshold; otherwise **hold**.
* :func:`release_quota` applies the maximum rate (devices released per hour since the start).

Everything here is pure: no clock (``now`` is an argument), no storage.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from iotrust.errors import InputError

DEFAULT_WAVES: Final = (1, 10, 50, 100)
BUCKETS: Final = 2**64


class DeviceStatus(enum.StrEnum):
    """Where one device is in a rollout (``pending``: released or not, nothing reported yet)."""

    PENDING = "pending"
    DOWNLOADING = "downloading"
    INSTALLED = "installed"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"


FINISHED: Final = frozenset({DeviceStatus.COMMITTED, DeviceStatus.ROLLED_BACK,
                             DeviceStatus.REJECTED})
FAILED: Final = frozenset({DeviceStatus.ROLLED_BACK, DeviceStatus.REJECTED})
_ORDER: Final = {DeviceStatus.PENDING: 0, DeviceStatus.DOWNLOADING: 1, DeviceStatus.INSTALLED: 2,
                 DeviceStatus.COMMITTED: 3, DeviceStatus.ROLLED_BACK: 3,
                 DeviceStatus.REJECTED: 3}


class RolloutState(enum.StrEnum):
    """The rollout's own state."""

    ACTIVE = "active"
    PAUSED = "paused"
    ABORTED = "aborted"
    COMPLETED = "completed"


class Decision(enum.StrEnum):
    """What :func:`decide` advises."""

    HOLD = "hold"
    ADVANCE = "advance"
    COMPLETE = "complete"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """The rules of one rollout."""

    waves: tuple[int, ...] = DEFAULT_WAVES
    success_percent: int = 90
    abort_failure_percent: int = 5
    abort_min_finished: int = 20
    max_per_hour: int | None = None

    def __post_init__(self) -> None:
        w = self.waves
        increasing = all(a < b for a, b in zip((0, *w), w, strict=False))
        if not w or w[-1] != 100 or not increasing:  # noqa: PLR2004 - percent
            raise InputError("waves are increasing percentages ending at 100",
                             reason="invalid_waves")
        if not 0 < self.success_percent <= 100 or not 0 < self.abort_failure_percent <= 100:  # noqa: PLR2004
            raise InputError("thresholds are percentages in (0, 100]",
                             reason="invalid_threshold")
        if self.abort_min_finished < 1:
            raise InputError("abort needs at least one finished device",
                             reason="invalid_threshold")
        if self.max_per_hour is not None and self.max_per_hour < 1:
            raise InputError("the maximum rate is at least 1 device per hour",
                             reason="invalid_rate")

    def to_json(self) -> dict[str, object]:
        """A JSON-able form."""
        return {"waves": list(self.waves), "success_percent": self.success_percent,
                "abort_failure_percent": self.abort_failure_percent,
                "abort_min_finished": self.abort_min_finished, "max_per_hour": self.max_per_hour}

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> RolloutPolicy:
        """The inverse of :meth:`to_json`."""
        waves = obj["waves"]
        if not isinstance(waves, list):
            raise InputError("waves are a list", reason="invalid_waves")
        rate = obj.get("max_per_hour")
        return cls(waves=tuple(int(w) for w in waves),
                   success_percent=int(str(obj["success_percent"])),
                   abort_failure_percent=int(str(obj["abort_failure_percent"])),
                   abort_min_finished=int(str(obj["abort_min_finished"])),
                   max_per_hour=None if rate is None else int(str(rate)))


def bucket(rollout_id: str, device_id: str) -> int:
    """The device's stable position in ``[0, 2^64)`` for this rollout."""
    digest = hashlib.sha256(rollout_id.encode() + b"\x00" + device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big")


def wave_of(position: int, waves: tuple[int, ...]) -> int:
    """The index of the wave a bucket position falls in."""
    for i, percent in enumerate(waves):
        if position * 100 < percent * BUCKETS:
            return i
    return len(waves) - 1


def assign(rollout_id: str, device_ids: Iterable[str],
           waves: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """Device id → (bucket, wave) for every device of a rollout."""
    out = {}
    for device_id in device_ids:
        b = bucket(rollout_id, device_id)
        out[device_id] = (b, wave_of(b, waves))
    return out


def may_move(current: DeviceStatus, new: DeviceStatus) -> bool:
    """Whether a report may move a device from ``current`` to ``new`` (never backwards).

    A finished device stays finished; the same status again is accepted (idempotent).
    """
    if current in FINISHED:
        return new == current
    return _ORDER[new] >= _ORDER[current]


@dataclass(frozen=True, slots=True)
class Progress:
    """Counts of released devices by status."""

    counts: Mapping[DeviceStatus, int] = field(default_factory=dict)

    @property
    def released(self) -> int:
        """Devices released so far."""
        return sum(self.counts.values())

    @property
    def finished(self) -> int:
        """Devices that committed, rolled back or rejected."""
        return sum(self.counts.get(s, 0) for s in FINISHED)

    @property
    def failed(self) -> int:
        """Devices that rolled back or rejected."""
        return sum(self.counts.get(s, 0) for s in FAILED)

    @property
    def committed(self) -> int:
        """Devices running the release."""
        return self.counts.get(DeviceStatus.COMMITTED, 0)


def decide(progress: Progress, policy: RolloutPolicy, wave_index: int) -> Decision:
    """Abort, advance, complete or hold, from the progress of the devices released so far."""
    if progress.finished >= policy.abort_min_finished and \
            progress.failed * 100 >= policy.abort_failure_percent * progress.finished:
        return Decision.ABORT
    released = progress.released
    if released and progress.committed * 100 < policy.success_percent * released:
        return Decision.HOLD
    return Decision.COMPLETE if wave_index >= len(policy.waves) - 1 else Decision.ADVANCE


def release_quota(policy: RolloutPolicy, started_at: datetime, now: datetime,
                  already_released: int) -> int | None:
    """How many more devices may be released now under the maximum rate (``None``: no cap)."""
    if policy.max_per_hour is None:
        return None
    hours = max((now - started_at).total_seconds(), 0.0) / 3600
    allowed = policy.max_per_hour * max(hours, 1.0)
    return max(int(allowed) - already_released, 0)
