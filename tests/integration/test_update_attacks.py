"""Update attacks against real agents and the real service: each is refused and reported, and the
device keeps running the image it had.

The device side is :class:`~iotrust.agent.updates.UpdateClient` with python-tuf's ``Updater``; the
server side is the API app over the registry and the on-disk repositories. A compromised director
is played by publishing director metadata directly (its keys are online); a network attacker by
:class:`~tests.integration.update_fleet.TamperingFetcher`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from tests.integration.update_fleet import UpdateDevice, UpdateFleet, build_update_fleet
from tuf.api.metadata import Metadata, MetaFile, TargetFile, Timestamp

from iotrust.adapters.sql.updates import UpdateTx
from iotrust.adapters.tuf.repository import dump
from iotrust.adapters.tuf.signer import PortSigner
from iotrust.core.updates import ReleaseInfo
from iotrust.services import rollouts, updates
from iotrust.services.domain import KeyBackend

ACTOR = "tests@updates"
IMAGES = {n: bytes([n]) * 2048 + b"image %d" % n for n in range(1, 12)}


@pytest.fixture(scope="module")
def uf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpdateFleet]:
    fleet = build_update_fleet(tmp_path_factory.mktemp("attacks"), count=9)
    for n in (1, 2):
        rollouts.add_release(fleet.db, fleet.fleet.settings, fleet.secrets, fleet.clock,
                             data=IMAGES[n], info=ReleaseInfo("main", ("sensor-1",), n),
                             actor=ACTOR)
    rollouts.add_release(fleet.db, fleet.fleet.settings, fleet.secrets, fleet.clock,
                         data=IMAGES[3], info=ReleaseInfo("main", ("hub-2",), 3), actor=ACTOR)
    view = rollouts.create_rollout(
        fleet.db, fleet.fleet.settings, fleet.secrets, fleet.clock, "main-2", actor=ACTOR,
        policy=rollouts.ro.RolloutPolicy(waves=(100,)))
    assert view.rollout.state == "active"
    for device in fleet.devices:
        outcomes = device.client.poll()
        assert [o.status for o in outcomes] == ["committed"], outcomes
        assert device.client.slots.image("main") == IMAGES[2]
    assert rollouts.status(fleet.db, view.rollout.id).rollout.state == "completed"
    yield fleet
    fleet.close()


def _director(uf: UpdateFleet, device: UpdateDevice, *targets: updates.Published) -> None:
    """A compromised director tells ``device`` to run ``targets``."""
    updates.sync_director(updates.open_director(uf.fleet.settings, uf.secrets),
                          [(device.device_id, list(targets))], uf.clock.now())


def _published(uf: UpdateFleet, path: str) -> updates.Published:
    target = updates.open_image(uf.fleet.settings, uf.secrets).get_target(path)
    assert target is not None
    return updates.Published(path, target)


def _last_report(uf: UpdateFleet, device: UpdateDevice) -> tuple[str | None, dict[str, object]]:
    with uf.db.transaction(readonly=True) as tx:
        events = [e for e in tx.iter_events(device_id=device.device_id)
                  if e.kind == rollouts.UPDATE_REPORTED]
    return events[-1].reason, json.loads(events[-1].data)


def _refused(uf: UpdateFleet, device: UpdateDevice, reason: str) -> None:
    outcomes = device.client.poll()
    assert [(o.status, o.reason) for o in outcomes] == [("rejected", reason)], outcomes
    got, data = _last_report(uf, device)
    assert got == reason
    assert data["status"] == "rejected"
    assert device.client.slots.image("main") == IMAGES[2]
    assert device.client.load().installed["main"]["release_counter"] == 2


def test_rollback_to_a_lower_counter(uf: UpdateFleet) -> None:
    device = uf.devices[0]
    _director(uf, device, _published(uf, "fw/sensor-1/main-1.img"))
    _refused(uf, device, "release_rollback")


def test_image_for_another_hardware_class(uf: UpdateFleet) -> None:
    device = uf.devices[1]
    _director(uf, device, _published(uf, "fw/hub-2/main-3.img"))
    _refused(uf, device, "wrong_hw_class")


def test_mix_and_match_director_disagrees_with_image(uf: UpdateFleet) -> None:
    device = uf.devices[2]
    genuine = _published(uf, "fw/sensor-1/main-1.img")
    forged = TargetFile.from_data("fw/sensor-1/main-1.img", IMAGES[9], ["sha256"])
    forged.unrecognized_fields["custom"] = dict(ReleaseInfo("main", ("sensor-1",), 9).to_custom())
    _director(uf, device, updates.Published(genuine.path, forged))
    _refused(uf, device, "mix_and_match")


def test_director_target_the_image_repository_never_signed(uf: UpdateFleet) -> None:
    device = uf.devices[3]
    forged = TargetFile.from_data("fw/sensor-1/main-10.img", IMAGES[10], ["sha256"])
    forged.unrecognized_fields["custom"] = ReleaseInfo("main", ("sensor-1",), 10).to_custom()
    _director(uf, device, updates.Published(forged.path, forged))
    _refused(uf, device, "not_in_image_repository")


def test_arbitrary_image_hash_mismatch(uf: UpdateFleet) -> None:
    device = uf.devices[4]
    release = rollouts.add_release(uf.db, uf.fleet.settings, uf.secrets, uf.clock, data=IMAGES[4],
                                   info=ReleaseInfo("main", ("sensor-1",), 4), actor=ACTOR)
    published = _published(uf, release.targets["sensor-1"])
    device.fetcher.replace = {".main-4.img": IMAGES[11][:len(IMAGES[4])]}
    _director(uf, device, published)
    try:
        _refused(uf, device, "hash_mismatch")
    finally:
        device.fetcher.replace = {}


def _timestamp_signer(uf: UpdateFleet) -> PortSigner:
    image = updates.open_image(uf.fleet.settings, uf.secrets)
    return next(iter(image._signers("timestamp")))


def _forged_timestamp(uf: UpdateFleet, signer: PortSigner, *, expires_in: timedelta) -> bytes:
    image = updates.open_image(uf.fleet.settings, uf.secrets)
    current = image.timestamp()
    ts = Metadata(Timestamp(version=current.signed.version + 50,
                            expires=uf.clock.now() + expires_in,
                            snapshot_meta=MetaFile(current.signed.snapshot_meta.version,
                                                   current.signed.snapshot_meta.length,
                                                   current.signed.snapshot_meta.hashes)))
    ts.sign(signer)
    return dump(ts)


def test_freeze_stale_timestamp(uf: UpdateFleet) -> None:
    device = uf.devices[5]
    stale = _forged_timestamp(uf, _timestamp_signer(uf), expires_in=timedelta(minutes=-5))
    release_path = _published(uf, "fw/sensor-1/main-1.img")  # anything new to look up
    device.fetcher.replace = {"/v1/tuf/image/metadata/timestamp.json": stale}
    _director(uf, device, release_path)
    try:
        _refused(uf, device, "metadata_expired")
    finally:
        device.fetcher.replace = {}


def test_metadata_signed_by_a_revoked_key(uf: UpdateFleet) -> None:
    device = uf.devices[6]
    old_key = _timestamp_signer(uf)
    version = updates.rotate_key(uf.fleet.settings,
                                 KeyBackend("file", passphrase=uf.secrets.passphrase),
                                 uf.secrets, uf.clock, repo="image", role="timestamp")
    assert version == 2
    forged = _forged_timestamp(uf, old_key, expires_in=timedelta(days=1))
    device.fetcher.replace = {"/v1/tuf/image/metadata/timestamp.json": forged}
    _director(uf, device, _published(uf, "fw/sensor-1/main-1.img"))
    try:
        _refused(uf, device, "metadata_unsigned")
    finally:
        device.fetcher.replace = {}


def test_offline_device_catches_up_over_several_root_rotations(uf: UpdateFleet) -> None:
    device = uf.devices[7]
    backend = KeyBackend("file", passphrase=uf.secrets.passphrase)
    for role in ("root", "snapshot", "timestamp", "targets", "root"):
        updates.rotate_key(uf.fleet.settings, backend, uf.secrets, uf.clock, repo="image",
                           role=role)
    updates.rotate_key(uf.fleet.settings, backend, uf.secrets, uf.clock, repo="director",
                       role="root")
    updates.rotate_key(uf.fleet.settings, backend, uf.secrets, uf.clock, repo="director",
                       role="timestamp")
    release = rollouts.add_release(uf.db, uf.fleet.settings, uf.secrets, uf.clock, data=IMAGES[5],
                                   info=ReleaseInfo("main", ("sensor-1",), 5), actor=ACTOR)
    _director(uf, device, _published(uf, release.targets["sensor-1"]))
    outcomes = device.client.poll()
    assert [o.status for o in outcomes] == ["committed"], outcomes
    assert device.client.slots.image("main") == IMAGES[5]
    fetched = [u.rsplit("/", 1)[1] for u in device.fetcher.fetched if ".root.json" in u]
    assert {"3.root.json", "4.root.json", "5.root.json", "6.root.json"} <= set(fetched)


def test_signed_configuration_newer_only(uf: UpdateFleet) -> None:
    device = uf.devices[8]
    settings, secrets = uf.fleet.settings, uf.secrets
    image = updates.open_image(settings, secrets)
    first = updates.publish_config(image, {"interval_s": 60}, scope=device.device_id,
                                   version=1, now=uf.clock.now())
    rollouts.sync_devices(uf.db, settings, secrets, uf.clock, [device.device_id])
    assert [o.status for o in device.client.poll()] == ["committed"]
    updates.publish_config(image, {"interval_s": 30}, scope=device.device_id, version=2,
                           now=uf.clock.now())
    rollouts.sync_devices(uf.db, settings, secrets, uf.clock, [device.device_id])
    assert [o.status for o in device.client.poll()] == ["committed"]
    applied = device.client.base / "config" / f"{device.device_id}.json"
    assert json.loads(applied.read_bytes())["settings"] == {"interval_s": 30}
    _director(uf, device, first)  # a stale configuration
    _refused(uf, device, "config_stale")
    forged = TargetFile.from_data(f"config/{device.device_id}/config-v9.json", b"{}", ["sha256"])
    forged.unrecognized_fields["custom"] = {"kind": "config", "scope": device.device_id,
                                            "config_version": 9}
    _director(uf, device, updates.Published(forged.path, forged))  # never signed by config
    _refused(uf, device, "config_unsigned")
    assert json.loads(applied.read_bytes())["settings"] == {"interval_s": 30}


def test_replayed_status_report_is_refused(uf: UpdateFleet) -> None:
    device = uf.devices[0]
    with uf.db.transaction(readonly=True) as tx:
        counter = UpdateTx(tx).report_counter(device.device_id)
    assert counter == device.client.load().report_counter
    from iotrust.core import envelope  # noqa: PLC0415

    body = envelope.seal(b'{"release":"main-2","status":"committed"}', signer=device.key,
                         device_id=device.device_id, counter=counter, timestamp=1,
                         topic="updates/status", content_type="application/json",
                         kid=device.kid)
    reply = uf.app_client.post("/v1/updates/status", content=body)
    assert reply.status_code == 403
    assert reply.json()["reason"] == "replayed"
    other = uf.devices[1]
    body = envelope.seal(b'{"release":"main-2","status":"committed"}', signer=other.key,
                         device_id=device.device_id, counter=counter + 100, timestamp=1,
                         topic="updates/status", content_type="application/json",
                         kid=device.kid)
    reply = uf.app_client.post("/v1/updates/status", content=body)
    assert reply.status_code == 403
    assert reply.json()["reason"] == "signature_invalid"


def test_rollout_routes_need_an_operator_token(uf: UpdateFleet) -> None:
    for method, url in (("GET", "/v1/rollouts"), ("GET", "/v1/rollouts/x"),
                        ("POST", "/v1/rollouts/x/abort")):
        reply = uf.app_client.request(method, url)
        assert reply.status_code == 401, (method, url, reply.text)
        assert reply.json()["reason"] == "unauthenticated"


def test_status_report_from_a_retired_device_is_a_zombie_contact(uf: UpdateFleet) -> None:
    from iotrust.core import envelope  # noqa: PLC0415
    from iotrust.core.lifecycle import RetirementReason  # noqa: PLC0415
    from iotrust.services import devices, zombies  # noqa: PLC0415

    device = uf.devices[-1]  # the last device: the other tests use the first ones
    devices.retire(uf.db, uf.clock, device.device_id, RetirementReason.COMPROMISED,
                   actor="tests@iotrust")
    body = envelope.seal(b'{"release":"main-2","status":"committed"}', signer=device.key,
                         device_id=device.device_id, counter=10_000, timestamp=1,
                         topic="updates/status", content_type="application/json",
                         kid=device.kid)
    reply = uf.app_client.post("/v1/updates/status", content=body)
    assert reply.status_code == 403
    assert reply.json()["reason"] == "unknown_credential"
    found = {z.identity: z for z in zombies.list_zombies(uf.db)}[device.device_id]
    assert found.channels.get("update") == 1
    # A forger without the device's key cannot make it look like a zombie again.
    other = uf.devices[0]
    forged = envelope.seal(b'{"release":"main-2","status":"committed"}', signer=other.key,
                           device_id=device.device_id, counter=10_001, timestamp=1,
                           topic="updates/status", content_type="application/json",
                           kid=device.kid)
    assert uf.app_client.post("/v1/updates/status", content=forged).status_code == 403
    again = {z.identity: z for z in zombies.list_zombies(uf.db)}[device.device_id]
    assert again.channels.get("update") == 1
