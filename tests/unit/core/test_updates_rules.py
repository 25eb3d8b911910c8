"""Must-match and anti-rollback rules of firmware and configuration targets."""

from __future__ import annotations

import pytest

from iotrust.core import updates as u
from iotrust.errors import ConflictError, InputError, TrustError

INFO = u.ReleaseInfo("main", ("sensor-1", "sensor-2"), 7, "0.1")


def _refused(reason: str, fn: object, *args: object, **kwargs: object) -> None:
    with pytest.raises(TrustError) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    assert info.value.reason == reason


def test_custom_round_trip() -> None:
    assert u.parse_custom(INFO.to_custom()) == INFO
    config = u.ConfigInfo("groups/lab", 3)
    assert u.parse_custom(config.to_custom()) == config


@pytest.mark.parametrize("custom", [None, [], {}, {"kind": "firmware"},
                                    {**INFO.to_custom(), "extra": 1},
                                    {**INFO.to_custom(), "release_counter": -1},
                                    {**INFO.to_custom(), "release_counter": True},
                                    {**INFO.to_custom(), "hw_class_ids": []},
                                    {**INFO.to_custom(), "hw_class_ids": "sensor-1"},
                                    {"kind": "config", "scope": "nobody", "config_version": 1}])
def test_malformed_custom_is_refused(custom: object) -> None:
    _refused("invalid_custom", u.parse_custom, custom)


def test_device_checks() -> None:
    u.check_release_for_device(INFO, hw_class="sensor-2", installed_counter=6,
                               agent_version="0.1.0")
    _refused("wrong_hw_class", u.check_release_for_device, INFO, hw_class="hub",
             installed_counter=None, agent_version="1")
    _refused("release_rollback", u.check_release_for_device, INFO, hw_class="sensor-1",
             installed_counter=7, agent_version="1")
    _refused("agent_too_old", u.check_release_for_device, INFO, hw_class="sensor-1",
             installed_counter=None, agent_version="0.0.9")


def test_agreement() -> None:
    custom = INFO.to_custom()
    u.check_agreement((10, {"sha256": "ab"}, custom), (10, {"sha256": "ab"}, dict(custom)))
    _refused("mix_and_match", u.check_agreement, (11, {"sha256": "ab"}, custom),
             (10, {"sha256": "ab"}, custom))
    _refused("mix_and_match", u.check_agreement, (10, {"sha256": "ab"}, custom),
             (10, {"sha256": "cd"}, custom))
    _refused("mix_and_match", u.check_agreement, (10, {"sha512": "ab"}, custom),
             (10, {"sha256": "ab"}, custom))
    _refused("mix_and_match", u.check_agreement, (10, {"sha256": "ab"}, custom),
             (10, {"sha256": "ab"}, {**custom, "release_counter": 8}))


def test_counters_and_configs() -> None:
    u.check_counter_is_newer(3, None, "main")
    u.check_counter_is_newer(3, 2, "main")
    with pytest.raises(ConflictError):
        u.check_counter_is_newer(2, 2, "main")
    u.check_config_newer(u.ConfigInfo("groups/lab", 2), 1)
    _refused("config_stale", u.check_config_newer, u.ConfigInfo("groups/lab", 1), 1)
    with pytest.raises(InputError):
        u.parse_version("1.x")
