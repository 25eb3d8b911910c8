"""ReplayGuard: reservation + write-behind; what a restart (clean or crash) can re-admit.

The store here is an in-memory simulator of the CounterStore port that also counts commits; the
SQL implementation is tested against real SQLite and PostgreSQL in
tests/integration/test_message_counters.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotrust.core.freshness import ReplayWindow
from iotrust.errors import BackendError, InputError, TrustError
from iotrust.ports import FixedClock, MessageCounter
from iotrust.services.counters import ReplayGuard

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DEV = "dev-" + "a" * 26


class MemoryCounters:
    """The CounterStore port in memory; ``commits`` counts transactions."""

    def __init__(self) -> None:
        self.rows: dict[str, MessageCounter] = {}
        self.commits = 0
        self.fail_reserve = False

    def load_counters(self, device_id: str) -> MessageCounter | None:
        return self.rows.get(device_id)

    def _put(self, state: MessageCounter) -> None:
        old = self.rows.get(state.device_id)
        reserved = state.reserved
        if reserved is not None and old is not None and old.reserved is not None:
            reserved = max(reserved, old.reserved)
        self.rows[state.device_id] = MessageCounter(state.device_id, state.highest, state.bitmap,
                                                    state.window_size, reserved)

    def save_counters(self, states: Sequence[MessageCounter], at: datetime) -> None:
        assert at.tzinfo is not None
        for state in states:
            self._put(state)
        self.commits += 1

    def reserve(self, state: MessageCounter, at: datetime) -> None:
        if self.fail_reserve:
            raise BackendError("database down", reason="database_unavailable")
        self._put(state)
        self.commits += 1


class Ticker:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def guard(store: MemoryCounters, ticker: Ticker | None = None, **kw: object) -> ReplayGuard:
    return ReplayGuard(store, FixedClock(NOW), monotonic=ticker or Ticker(), **kw)  # type: ignore[arg-type]


def accept(g: ReplayGuard, counter: int, device: str = DEV) -> None:
    g.admit(device, lambda w: w.check_and_update(counter))


def refused(g: ReplayGuard, counter: int, device: str = DEV) -> bool:
    reason = None
    try:
        accept(g, counter, device)
    except TrustError as exc:
        reason = exc.reason
    assert reason in {None, "replayed"}
    return reason is not None


def test_commits_are_amortised_not_per_message() -> None:
    store = MemoryCounters()
    g = guard(store, reservation=1000, flush_every=500)
    for c in range(10_000):
        accept(g, c)
    # 10 reservations (one per 1000 counters) + 20 write-behind flushes (every 500 messages)
    assert g.reservations_written == 10
    assert g.flushes_written == 20
    assert store.commits == 30


def test_time_based_flush() -> None:
    store, ticker = MemoryCounters(), Ticker()
    g = guard(store, ticker, flush_interval_s=0.5, flush_every=10**6)
    accept(g, 1)
    assert g.dirty == 1
    ticker.t = 0.6
    accept(g, 2)
    assert g.dirty == 0
    assert store.rows[DEV].highest == 2


def test_clean_restart_restores_exact_windows() -> None:
    store = MemoryCounters()
    g = guard(store)
    for c in (1, 2, 5, 9):
        accept(g, c)
    g.close()
    assert store.rows[DEV].reserved is None
    g2 = guard(store)
    for c in (1, 2, 5, 9):
        assert refused(g2, c)
    accept(g2, 3)  # never seen, inside the window: nothing lost
    accept(g2, 10)


def test_crash_never_readmits_and_the_gap_is_bounded() -> None:
    store = MemoryCounters()
    g = guard(store, reservation=100, flush_every=10**6, flush_interval_s=10**6)
    for c in range(1, 51):
        accept(g, c)
    assert store.rows[DEV].highest == 1  # nothing written behind yet: only the reservation
    # crash: g is dropped without close()
    g2 = guard(store, reservation=100)
    for c in range(1, 51):
        assert refused(g2, c)  # nothing accepted before the crash comes back
    # the gap: genuine 51..101 are refused too (at most `reservation` counters)
    assert refused(g2, 51)
    assert refused(g2, 101)
    accept(g2, 102)


def test_window_size_change_seals_safely() -> None:
    store = MemoryCounters()
    g = guard(store, window_size=64)
    accept(g, 10)
    g.close()
    g2 = guard(store, window_size=128)
    assert refused(g2, 10)
    assert refused(g2, 5)
    accept(g2, 11)


def test_a_refused_message_writes_nothing() -> None:
    store = MemoryCounters()
    g = guard(store)
    accept(g, 5)
    commits = store.commits
    assert refused(g, 5)

    def refuse(_: ReplayWindow) -> None:
        raise TrustError("forged", reason="signature_invalid")

    with pytest.raises(TrustError):
        g.admit(DEV, refuse)
    assert store.commits == commits
    assert g.dirty == 1


def test_failed_reservation_rolls_the_window_back() -> None:
    store = MemoryCounters()
    g = guard(store, reservation=10)
    accept(g, 1)
    store.fail_reserve = True
    with pytest.raises(BackendError):
        accept(g, 50)  # above the reservation: must be durable first
    assert g.window(DEV).highest == 1
    store.fail_reserve = False
    accept(g, 50)  # the same message, redelivered, is accepted once the database is back


def test_invalid_settings() -> None:
    with pytest.raises(InputError):
        guard(MemoryCounters(), window_size=0)
    with pytest.raises(InputError):
        guard(MemoryCounters(), reservation=0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.booleans(), st.booleans()), max_size=120),
       st.integers(1, 50))
def test_no_restart_ever_readmits_an_accepted_counter(
        steps: list[tuple[int, bool, bool]], reservation: int) -> None:
    """Whatever the interleaving of messages, flushes, clean shutdowns and crashes."""
    store = MemoryCounters()
    g = guard(store, window_size=16, reservation=reservation, flush_every=7)
    accepted: set[int] = set()
    for counter, restart, clean in steps:
        if restart:
            if clean:
                g.close()
            g = guard(store, window_size=16, reservation=reservation, flush_every=7)
        was_refused = refused(g, counter)
        if counter in accepted:
            assert was_refused, counter
        if not was_refused:
            accepted.add(counter)
