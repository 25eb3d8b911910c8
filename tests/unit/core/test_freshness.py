"""The anti-replay window and the age check."""

from __future__ import annotations

import pytest

from iotrust.core.freshness import MAX_WINDOW, ReplayWindow, check_age
from iotrust.errors import InputError, TrustError


def refused(window: ReplayWindow, counter: int) -> str:
    with pytest.raises(TrustError) as exc:
        window.check_and_update(counter)
    return exc.value.reason


def test_in_order_counters_are_accepted_once() -> None:
    w = ReplayWindow(64)
    for c in range(200):
        assert w.would_accept(c)
        w.check_and_update(c)
        assert refused(w, c) == "replayed"
    assert w.highest == 199


def test_reordering_within_the_window_is_accepted() -> None:
    w = ReplayWindow(64)
    w.check_and_update(100)
    for c in (99, 37, 80, 98):
        w.check_and_update(c)
    for c in (99, 37, 80, 98, 100):
        assert refused(w, c) == "replayed"
    assert w.highest == 100


def test_older_than_the_window_is_refused_as_replayed() -> None:
    w = ReplayWindow(64)
    w.check_and_update(100)
    assert refused(w, 36) == "replayed"  # 100 - 64
    w.check_and_update(37)  # the oldest counter still inside the window
    assert not w.would_accept(36)


def test_a_jump_larger_than_the_window_clears_it() -> None:
    w = ReplayWindow(8)
    for c in range(8):
        w.check_and_update(c)
    w.check_and_update(1_000)
    assert w.bitmap == 1
    w.check_and_update(999)
    assert refused(w, 992) == "replayed"  # 1000 - 8


def test_first_counter_may_be_anything() -> None:
    w = ReplayWindow()
    assert w.highest == -1
    w.check_and_update(2**63 - 1)
    assert refused(w, 0) == "replayed"


@pytest.mark.parametrize("size", [1, 2, 64, 65, 1024])
def test_window_sizes(size: int) -> None:
    w = ReplayWindow(size)
    w.check_and_update(5000)
    if size > 1:
        w.check_and_update(5000 - size + 1)
    assert refused(w, 5000 - size) == "replayed"


def test_restore_and_sealed_window() -> None:
    w = ReplayWindow(64)
    for c in (10, 12, 15):
        w.check_and_update(c)
    copy = ReplayWindow(64, highest=w.highest, bitmap=w.bitmap)
    for c in (10, 12, 15):
        assert not copy.would_accept(c)
    copy.check_and_update(11)
    sealed = ReplayWindow.sealed_at(1000, 64)
    assert not sealed.would_accept(1000)
    assert not sealed.would_accept(990)
    sealed.check_and_update(1001)


@pytest.mark.parametrize(("args", "kwargs"), [
    ((0,), {}), ((MAX_WINDOW + 1,), {}), ((64,), {"highest": -2}), ((8,), {"bitmap": 256}),
    ((8,), {"highest": -1, "bitmap": 1}), ((8,), {"highest": 5, "bitmap": 2}),
    ((8,), {"bitmap": -1}), (("64",), {}),
])
def test_invalid_windows_cannot_be_built(args: tuple[object, ...], kwargs: dict[str, object],
                                         ) -> None:
    with pytest.raises(InputError) as exc:
        ReplayWindow(*args, **kwargs)  # type: ignore[arg-type]
    assert exc.value.reason == "invalid_replay_window"


def test_age_bounds_are_inclusive() -> None:
    now = 1_000_000
    check_age(now - 300_000, now, 300_000, 30_000)
    check_age(now + 30_000, now, 300_000, 30_000)
    with pytest.raises(TrustError) as exc:
        check_age(now - 300_001, now, 300_000, 30_000)
    assert exc.value.reason == "too_old"
    with pytest.raises(TrustError) as exc:
        check_age(now + 30_001, now, 300_000, 30_000)
    assert exc.value.reason == "from_future"
