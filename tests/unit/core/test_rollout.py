"""Pure rollout rules: stable wave assignment, progress, advance/abort thresholds, rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from iotrust.core import rollout as ro
from iotrust.errors import InputError

S = ro.DeviceStatus
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEVICES = [f"dev-{i:026d}" for i in range(10_000)]


def test_assignment_is_stable_and_depends_on_the_rollout() -> None:
    first = ro.assign("ro-1", DEVICES[:500], ro.DEFAULT_WAVES)
    again = ro.assign("ro-1", list(reversed(DEVICES[:500])), ro.DEFAULT_WAVES)
    assert first == again
    other = ro.assign("ro-2", DEVICES[:500], ro.DEFAULT_WAVES)
    assert first != other


def test_waves_are_cumulative_percentages() -> None:
    assigned = ro.assign("ro-sizes", DEVICES, ro.DEFAULT_WAVES)
    counts = [sum(1 for _, w in assigned.values() if w == i) for i in range(4)]
    assert sum(counts) == len(DEVICES)
    cumulative = [sum(counts[: i + 1]) / len(DEVICES) for i in range(4)]
    for got, want in zip(cumulative, (0.01, 0.10, 0.50, 1.0), strict=True):
        assert got == pytest.approx(want, abs=0.01)


def test_wave_boundaries() -> None:
    waves = ro.DEFAULT_WAVES
    assert ro.wave_of(0, waves) == 0
    assert ro.wave_of(ro.BUCKETS // 100 - 1, waves) == 0
    assert ro.wave_of(ro.BUCKETS // 100 + 1, waves) == 1
    assert ro.wave_of(ro.BUCKETS - 1, waves) == 3


@pytest.mark.parametrize("waves", [(), (50,), (10, 5, 100), (0, 100), (100, 100)])
def test_bad_waves_are_refused(waves: tuple[int, ...]) -> None:
    with pytest.raises(InputError) as info:
        ro.RolloutPolicy(waves=waves)
    assert info.value.reason == "invalid_waves"


def test_policy_round_trips() -> None:
    policy = ro.RolloutPolicy(waves=(5, 100), success_percent=80, abort_failure_percent=10,
                              abort_min_finished=5, max_per_hour=100)
    assert ro.RolloutPolicy.from_json(policy.to_json()) == policy


def _p(**counts: int) -> ro.Progress:
    return ro.Progress({S(k): v for k, v in counts.items()})


def test_abort_needs_enough_finished_devices() -> None:
    policy = ro.RolloutPolicy()
    assert ro.decide(_p(committed=10, rolled_back=9), policy, 1) is ro.Decision.HOLD
    assert ro.decide(_p(committed=19, rolled_back=1), policy, 1) is ro.Decision.ABORT
    assert ro.decide(_p(committed=19, rejected=1), policy, 1) is ro.Decision.ABORT
    assert ro.decide(_p(committed=40, rolled_back=1), policy, 1) is ro.Decision.ADVANCE


def test_advance_needs_the_success_threshold() -> None:
    policy = ro.RolloutPolicy()
    assert ro.decide(_p(committed=8, pending=2), policy, 0) is ro.Decision.HOLD
    assert ro.decide(_p(committed=9, downloading=1), policy, 0) is ro.Decision.ADVANCE
    assert ro.decide(_p(), policy, 0) is ro.Decision.ADVANCE  # an empty wave
    assert ro.decide(_p(committed=10), policy, 3) is ro.Decision.COMPLETE


def test_status_never_moves_backwards() -> None:
    assert ro.may_move(S.PENDING, S.DOWNLOADING)
    assert ro.may_move(S.DOWNLOADING, S.ROLLED_BACK)
    assert ro.may_move(S.INSTALLED, S.INSTALLED)
    assert not ro.may_move(S.INSTALLED, S.DOWNLOADING)
    assert not ro.may_move(S.COMMITTED, S.ROLLED_BACK)
    assert ro.may_move(S.COMMITTED, S.COMMITTED)


def test_release_quota_follows_the_maximum_rate() -> None:
    policy = ro.RolloutPolicy(max_per_hour=100)
    assert ro.release_quota(ro.RolloutPolicy(), T0, T0, 0) is None
    assert ro.release_quota(policy, T0, T0, 0) == 100
    assert ro.release_quota(policy, T0, T0 + timedelta(hours=3), 250) == 50
    assert ro.release_quota(policy, T0, T0 + timedelta(hours=1), 150) == 0
