"""A staged rollout over 300 real agents (in-process) against the service and the API app.

Devices of wave 1 (the 10 % wave) fail their health check one time in three; once 20 devices
have finished with at least 5 % failures the rollout aborts by itself, the release is withdrawn
from every device that had not started, and no device of a later wave is ever offered it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.integration.update_fleet import UpdateFleet, build_update_fleet

from iotrust.adapters.sql.updates import UpdateTx
from iotrust.core import rollout as ro
from iotrust.core.updates import ReleaseInfo
from iotrust.services import rollouts, updates

ACTOR = "tests@rollout"
COUNT = 300
IMAGE = b"release two " * 512


@pytest.fixture(scope="module")
def uf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpdateFleet]:
    fleet = build_update_fleet(tmp_path_factory.mktemp("rollout"), count=COUNT)
    yield fleet
    fleet.close()


def _rollout_id_with_a_big_second_wave(uf: UpdateFleet) -> tuple[str, dict[str, tuple[int, int]]]:
    """The first rollout id whose wave assignment gives the abort rule its 20 finished devices.

    Device ids are random, so wave sizes vary: wave 2 holds ~27 of 300 devices and fewer than 20
    about one run in 14 (the test then failed on its own precondition).
    """
    ids = [d.device_id for d in uf.devices]
    for attempt in range(100):
        rid = f"ro-wave-abort-{attempt}"
        waves = ro.assign(rid, ids, ro.DEFAULT_WAVES)
        second = sum(w == 1 for _, w in waves.values())
        later = sum(w >= 2 for _, w in waves.values())
        if second >= 20 and later > 200:
            return rid, dict(waves)
    raise AssertionError("no rollout id gives wave 2 twenty devices")


def test_failures_in_wave_two_abort_the_rollout(uf: UpdateFleet) -> None:
    settings, secrets = uf.fleet.settings, uf.secrets
    rollouts.add_release(uf.db, settings, secrets, uf.clock, data=IMAGE,
                         info=ReleaseInfo("main", ("sensor-1",), 2), actor=ACTOR)
    rid, waves = _rollout_id_with_a_big_second_wave(uf)
    second = sorted(d for d, (_, w) in waves.items() if w == 1)
    for n, device_id in enumerate(second):
        uf.by_id(device_id).healthy = n % 3 != 0  # injected failures in wave 2
    later = {d for d, (_, w) in waves.items() if w >= 2}
    assert len(second) >= 20
    assert len(later) > 200

    view = rollouts.create_rollout(uf.db, settings, secrets, uf.clock, "main-2", actor=ACTOR,
                                   rollout_id=rid)
    assert view.rollout.wave_index == 0
    director = updates.open_director(settings, secrets)
    offered_ever: set[str] = set()
    for _ in range(6):  # polling rounds: every device polls once per round
        for device in uf.devices:
            if director.device_targets(device.device_id):
                offered_ever.add(device.device_id)
            device.client.poll()
        if rollouts.status(uf.db, rid).rollout.state != "active":
            break

    final = rollouts.status(uf.db, rid)
    assert final.rollout.state == "aborted"
    assert final.rollout.reason == "failure_threshold"
    assert final.rollout.wave_index == 1
    assert final.counts.get("rolled_back", 0) >= 1
    assert not offered_ever & later  # later waves were never offered the release
    for device_id in later:
        assert director.device_targets(device_id) == {}
        client = uf.by_id(device_id).client
        assert client.slots.image("main") is None
        assert "main" not in client.load().installed
    with uf.db.transaction(readonly=True) as tx:
        rows = {r.device_id: r for r in UpdateTx(tx).rollout_devices(rid)}
        aborted = [e for e in tx.iter_events() if e.kind == rollouts.ROLLOUT_ABORTED]
    assert len(aborted) == 1
    assert aborted[0].reason == "failure_threshold"
    assert all(rows[d].released_at is None and rows[d].status == "pending" for d in later)
    withdrawn = [d for d in second if rows[d].status == "pending"]
    for device_id in withdrawn:  # released, not started, then withdrawn
        assert rows[device_id].released_at is None
        assert director.device_targets(device_id) == {}
    committed = [d for d, r in rows.items() if r.status == "committed"]
    for device_id in committed:
        assert uf.by_id(device_id).client.slots.image("main") == IMAGE
    for device_id in (d for d in second if rows[d].status == "rolled_back"):
        assert uf.by_id(device_id).client.slots.image("main") is None
    progress = ro.Progress({ro.DeviceStatus(k): v for k, v in final.counts.items()})
    assert progress.finished >= 20
