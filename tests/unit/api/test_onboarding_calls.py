"""How many onboarding service calls a worker runs at once: one on SQLite, the pool's bound else."""

from __future__ import annotations

import asyncio
import threading
import time

from iotrust.api.onboarding import _Calls


def _peak_concurrency(calls: _Calls, n: int) -> int:
    """Run ``n`` overlapping calls through ``calls``; the most that were inside at once."""
    lock = threading.Lock()
    inside = 0
    peak = 0

    def work() -> None:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        time.sleep(0.05)  # long enough for the others to start if they may
        with lock:
            inside -= 1

    async def main() -> None:
        await asyncio.gather(*(calls.run(work) for _ in range(n)))

    asyncio.run(main())
    return peak


def test_sqlite_runs_one_call_at_a_time() -> None:
    calls = _Calls.for_dialect("sqlite")
    assert calls.limit == 1
    assert _peak_concurrency(calls, 4) == 1


def test_postgresql_calls_overlap() -> None:
    calls = _Calls.for_dialect("postgresql")
    assert calls.limit is None
    assert _peak_concurrency(calls, 4) > 1


def test_one_limiter_per_event_loop() -> None:
    calls = _Calls(1)
    # Two event loops in turn (as a test client may run the app): each gets a working limiter.
    assert _peak_concurrency(calls, 3) == 1
    assert _peak_concurrency(calls, 3) == 1
