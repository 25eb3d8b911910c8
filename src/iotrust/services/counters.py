"""Replay windows that survive a restart, without one commit per message.

:class:`ReplayGuard` keeps every device's :class:`~iotrust.core.freshness.ReplayWindow` in
memory and persists it through a :class:`~iotrust.ports.CounterStore` with two mechanisms:

* **Reservation (synchronous, rare).** Before a message whose counter is above the device's
  durable *reservation* is forwarded, the reservation is raised to ``counter + reservation`` and
  committed. So the stored reservation is always at or above every counter ever accepted. A
  device that counts up by one costs one small commit per ``reservation`` messages (default 1024).
* **Write-behind (batched).** The exact ``highest`` and bitmap of every changed window are written
  in one transaction every ``flush_interval_s`` seconds or every ``flush_every`` accepted messages,
  whichever comes first, and on :meth:`close` (the clean shutdown, which also clears the
  reservations: the stored windows are then exact).

What a restart re-admits:

* After a **clean shutdown** (``close``): nothing. Windows come back exactly; nothing is lost.
* After a **crash**: nothing that was accepted, ever. The stored reservation bounds every counter
  the dead process may have accepted, so the window is restored *sealed* at the reservation
  (every counter at or below it counts as seen). In particular nothing older than the persisted
  ``highest - window`` can come back — nor anything newer.
* **The gap**: genuine messages whose counters lie between the last counter actually accepted and
  the reservation are refused as ``replayed`` after a crash, at most ``reservation`` counters per
  device (about ``reservation`` messages for a device that counts by one); the device is accepted
  again as soon as its counter passes the reservation. A smaller ``reservation`` shrinks the gap
  and costs more commits. The write-behind state does not narrow the gap (what was accepted after
  the last flush is unknowable); it gives exact windows after a clean shutdown and an up-to-date
  ``highest`` for operators.

A reservation is only ever made for a message that passed every check (signature included), so a
forger cannot push a device's reservation up or cause writes. If the reservation cannot be
written (database down) the window is rolled back and the message is not accepted.

Assumes one writer per device (one ingest process, or devices sharded across processes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, TypeVar

from iotrust.core.freshness import DEFAULT_WINDOW, MAX_WINDOW, ReplayWindow
from iotrust.errors import InputError
from iotrust.ports import Clock, CounterStore, MessageCounter

DEFAULT_RESERVATION: Final = 1024
DEFAULT_FLUSH_INTERVAL_S: Final = 1.0
DEFAULT_FLUSH_EVERY: Final = 5000
_MAX_COUNTER: Final = 2**63 - 1

T = TypeVar("T")


class ReplayGuard:
    """Every device's replay window, persisted by reservation plus write-behind."""

    def __init__(self, store: CounterStore, clock: Clock, *, window_size: int = DEFAULT_WINDOW,
                 reservation: int = DEFAULT_RESERVATION,
                 flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
                 flush_every: int = DEFAULT_FLUSH_EVERY,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= window_size <= MAX_WINDOW:
            raise InputError(f"window size must be 1..{MAX_WINDOW}",
                             reason="invalid_replay_window")
        if reservation < 1 or flush_every < 1 or flush_interval_s <= 0:
            raise InputError("reservation, flush_every and flush_interval_s must be positive",
                             reason="invalid_counter_persistence")
        self._store = store
        self._clock = clock
        self._size = window_size
        self._reservation = reservation
        self._flush_interval = flush_interval_s
        self._flush_every = flush_every
        self._monotonic = monotonic
        self._windows: dict[str, ReplayWindow] = {}
        self._reserved: dict[str, int | None] = {}
        self._dirty: set[str] = set()
        self._since_flush = 0
        self._last_flush = monotonic()
        self.reservations_written = 0
        self.flushes_written = 0

    # -- loading --------------------------------------------------------------------------------

    def window(self, device_id: str) -> ReplayWindow:
        """The device's window, loaded from the store on first use."""
        window = self._windows.get(device_id)
        if window is None:
            window = self._load(device_id)
        return window

    def _load(self, device_id: str) -> ReplayWindow:
        stored = self._store.load_counters(device_id)
        if stored is None:
            window, reserved = ReplayWindow(self._size), None
        elif stored.reserved is not None:
            # crashed (or still running elsewhere): anything up to the reservation may have been
            # accepted, so all of it counts as seen.
            window, reserved = ReplayWindow.sealed_at(stored.reserved, self._size), stored.reserved
        elif stored.window_size != self._size:
            ceiling = stored.highest
            window = (ReplayWindow.sealed_at(ceiling, self._size) if ceiling >= 0
                      else ReplayWindow(self._size))
            reserved = None
        else:
            window = ReplayWindow(self._size, highest=stored.highest, bitmap=stored.bitmap)
            reserved = None
        self._windows[device_id] = window
        self._reserved[device_id] = reserved
        return window

    # -- accepting ------------------------------------------------------------------------------

    def admit(self, device_id: str, decide: Callable[[ReplayWindow], T]) -> T:
        """Run ``decide`` (which checks and updates the window, or raises) and make it durable.

        ``decide`` is typically ``lambda w: verify_message(..., window=w)``. If it raises, the
        window is unchanged (the verifier updates it last). If it accepts a counter above the
        reservation, the reservation is committed before this returns; if that fails, the window
        is rolled back and the error propagates (the message must not be forwarded).
        """
        window = self.window(device_id)
        highest, bitmap = window.highest, window.bitmap
        result = decide(window)
        if window.highest == highest and window.bitmap == bitmap:
            return result
        reserved = self._reserved.get(device_id)
        if reserved is None or window.highest > reserved:
            ceiling = min(window.highest + self._reservation, _MAX_COUNTER)
            try:
                self._store.reserve(self._state(device_id, window, ceiling), self._clock.now())
            except BaseException:
                self._windows[device_id] = ReplayWindow(self._size, highest=highest,
                                                        bitmap=bitmap)
                raise
            self._reserved[device_id] = ceiling
            self.reservations_written += 1
        self._dirty.add(device_id)
        self._since_flush += 1
        self.maybe_flush()
        return result

    # -- writing behind -------------------------------------------------------------------------

    def _state(self, device_id: str, window: ReplayWindow, reserved: int | None,
               ) -> MessageCounter:
        return MessageCounter(device_id=device_id, highest=window.highest, bitmap=window.bitmap,
                              window_size=window.size, reserved=reserved)

    def maybe_flush(self) -> int:
        """Flush if ``flush_every`` messages or ``flush_interval_s`` passed; how many written."""
        due = (self._since_flush >= self._flush_every
               or self._monotonic() - self._last_flush >= self._flush_interval)
        return self.flush() if due and self._dirty else 0

    def flush(self) -> int:
        """Write every changed window now (one transaction); returns how many were written."""
        states = [self._state(d, self._windows[d], self._reserved[d]) for d in sorted(self._dirty)]
        if states:
            self._store.save_counters(states, self._clock.now())
            self.flushes_written += 1
        self._dirty.clear()
        self._since_flush = 0
        self._last_flush = self._monotonic()
        return len(states)

    def close(self) -> None:
        """Clean shutdown: write every window exactly and clear the reservations."""
        states = [self._state(d, w, None) for d, w in sorted(self._windows.items())
                  if w.highest >= 0]
        if states:
            self._store.save_counters(states, self._clock.now())
        self._dirty.clear()
        self._windows.clear()
        self._reserved.clear()

    @property
    def dirty(self) -> int:
        """How many windows changed since the last flush."""
        return len(self._dirty)
