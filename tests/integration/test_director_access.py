"""Director metadata is read by its own device only (threat T50), through the real app.

Four onboarded devices poll the in-process app with their update clients (signed reads, see
:mod:`iotrust.core.signed_reads`). Reads without a device signature, signed by another device,
for another file, too old, under a key that is not the credential's, or by a retired device are
refused with their reason; refusals after a verified signature are ``update.director_read_refused``
events, a retired device's read is also a zombie contact, and a quarantined device still reads
(updates are its remediation channel). An agent refused this way reports ``director_refused``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.integration.update_fleet import (
    BASE,
    AppTransport,
    UpdateDevice,
    UpdateFleet,
    build_update_fleet,
)

from iotrust.agent.updates import UpdateClient
from iotrust.core import signed_reads
from iotrust.core.lifecycle import RetirementReason
from iotrust.core.updates import ReleaseInfo
from iotrust.services import devices, director_access, rollouts, zombies

ACTOR = "tests@director"
IMAGE = b"\x7fELF director access " * 200


@pytest.fixture(scope="module")
def uf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpdateFleet]:
    fleet = build_update_fleet(tmp_path_factory.mktemp("director"), count=4)
    rollouts.add_release(fleet.db, fleet.fleet.settings, fleet.secrets, fleet.clock,
                         data=IMAGE, info=ReleaseInfo("main", ("sensor-1",), 1), actor=ACTOR)
    rollouts.create_rollout(fleet.db, fleet.fleet.settings, fleet.secrets, fleet.clock, "main-1",
                            actor=ACTOR, policy=rollouts.ro.RolloutPolicy(waves=(100,)))
    yield fleet
    fleet.close()


def _url(device_id: str, name: str) -> str:
    return f"/v1/tuf/director/{device_id}/metadata/{name}"


def _auth(signer: UpdateDevice, device_id: str, name: str, *, at_ms: int | None = None,
          kid: bytes | None = None) -> dict[str, str]:
    """``signer`` signs a read of ``device_id``'s ``name``."""
    header = signed_reads.authorization(
        signer.key, device_id=signer.device_id, kid=kid or signer.kid,
        topic=signed_reads.director_read_topic(device_id, name),
        timestamp_ms=int(time.time() * 1000) if at_ms is None else at_ms)
    return {"Authorization": header}


def _get(uf: UpdateFleet, device_id: str, name: str, headers: dict[str, str]) -> httpx.Response:
    return uf.app_client.get(_url(device_id, name), headers=headers)


def _refusals(uf: UpdateFleet) -> list[dict[str, Any]]:
    with uf.db.transaction(readonly=True) as tx:
        return [{"reason": e.reason, "device_id": e.device_id, **json.loads(e.data)}
                for e in tx.iter_events() if e.kind == director_access.DIRECTOR_READ_REFUSED]


def test_a_device_polls_and_reads_its_own_director_metadata(uf: UpdateFleet) -> None:
    device = uf.devices[0]
    outcomes = device.client.poll()  # python-tuf's Updater over the signing fetcher
    assert [o.status for o in outcomes] == ["committed"], outcomes
    assert device.client.slots.image("main") == IMAGE
    assert all("/v1/tuf/director/" not in url or device.device_id in url
               for url in device.fetcher.fetched)
    reply = _get(uf, device.device_id, "timestamp.json",
                 _auth(device, device.device_id, "timestamp.json"))
    assert reply.status_code == 200, reply.text
    assert json.loads(reply.content)["signed"]["_type"] == "timestamp"


def test_another_devices_director_metadata_is_refused_and_recorded(uf: UpdateFleet) -> None:
    reader, victim = uf.devices[1], uf.devices[0]
    before = len(_refusals(uf))
    for name in ("timestamp.json", "1.targets.json", "1.root.json"):
        reply = _get(uf, victim.device_id, name, _auth(reader, victim.device_id, name))
        assert reply.status_code == 403, reply.text
        assert reply.json()["reason"] == "device_mismatch"
        assert b"targets" not in reply.content.replace(b"targets.json", b"")
    events = _refusals(uf)[before:]
    assert [e["reason"] for e in events] == ["device_mismatch"] * 3
    assert {(e["device_id"], e["signer"], e["requested_device"], e["authenticated"])
            for e in events} == {(reader.device_id, reader.device_id, victim.device_id, True)}
    # the reader's own signature for its own path, sent to the victim's URL, is no better
    reply = _get(uf, victim.device_id, "timestamp.json",
                 _auth(reader, reader.device_id, "timestamp.json"))
    assert reply.status_code == 403
    assert reply.json()["reason"] == "device_mismatch"


def test_director_reads_need_a_device_signature(uf: UpdateFleet) -> None:
    device = uf.devices[0]
    before = len(_refusals(uf))
    for headers, status, reason in (
            ({}, 403, "device_auth_required"),
            ({"Authorization": "Bearer abc"}, 403, "device_auth_required"),
            ({"Authorization": "IotrustDevice"}, 403, "device_auth_required"),
            ({"Authorization": "IotrustDevice !!!not-base64"}, 422, "malformed_envelope"),
            ({"Authorization": "IotrustDevice AAAA"}, 422, "malformed_envelope")):
        reply = _get(uf, device.device_id, "timestamp.json", headers)
        assert (reply.status_code, reply.json()["reason"]) == (status, reason), headers
    assert len(_refusals(uf)) == before  # nothing authenticated: no event per anonymous probe
    # an unknown device id is no oracle: the same refusal as for a real one
    unknown = "dev-" + "a" * 26
    reply = _get(uf, unknown, "timestamp.json", {})
    assert (reply.status_code, reply.json()["reason"]) == (403, "device_auth_required")


def test_a_signed_read_is_bound_to_one_file_one_key_and_the_present(uf: UpdateFleet) -> None:
    device, other = uf.devices[0], uf.devices[1]
    old = int(time.time() * 1000) - signed_reads.MAX_SKEW_MS - 60_000
    cases = (
        (_auth(device, device.device_id, "timestamp.json"), "1.root.json", "request_mismatch"),
        (_auth(device, device.device_id, "timestamp.json", at_ms=old), "timestamp.json",
         "request_stale"),
        (_auth(device, device.device_id, "timestamp.json",
               at_ms=int(time.time() * 1000) + signed_reads.MAX_SKEW_MS + 60_000),
         "timestamp.json", "request_stale"),
        # the device's name and credential, another device's key: a forgery
        (_auth(UpdateDevice(device.device_id, other.key, device.kid, device.client,
                            device.fetcher), device.device_id, "timestamp.json"),
         "timestamp.json", "signature_invalid"),
        # another device's credential under this device's name
        (_auth(UpdateDevice(device.device_id, other.key, other.kid, device.client,
                            device.fetcher), device.device_id, "timestamp.json"),
         "timestamp.json", "unknown_credential"),
    )
    for headers, name, reason in cases:
        reply = _get(uf, device.device_id, name, headers)
        assert reply.status_code == 403, (reason, reply.text)
        assert reply.json()["reason"] == reason
    assert [e["reason"] for e in _refusals(uf)[-len(cases):]] == [c[2] for c in cases]


def test_a_quarantined_device_still_reads_its_director_metadata(uf: UpdateFleet) -> None:
    device = uf.devices[2]
    devices.quarantine(uf.db, uf.clock, device.device_id, actor=ACTOR)
    reply = _get(uf, device.device_id, "timestamp.json",
                 _auth(device, device.device_id, "timestamp.json"))
    assert reply.status_code == 200, reply.text
    assert [o.status for o in device.client.poll()] == ["committed"]


def test_a_retired_device_reading_its_director_metadata_is_a_zombie(uf: UpdateFleet) -> None:
    device = uf.devices[3]
    devices.retire(uf.db, uf.clock, device.device_id, RetirementReason.COMPROMISED, actor=ACTOR)
    reply = _get(uf, device.device_id, "timestamp.json",
                 _auth(device, device.device_id, "timestamp.json"))
    assert reply.status_code == 403
    assert reply.json()["reason"] == "retired"
    assert _refusals(uf)[-1]["reason"] == "retired"
    found = {z.identity: z for z in zombies.list_zombies(uf.db)}[device.device_id]
    assert found.channels.get("update") == 1
    outcomes = device.client.poll()  # the agent sees a refusal, and keeps its current image
    assert [(o.status, o.reason) for o in outcomes] == [("rejected", "director_refused")]


def test_an_agent_whose_clock_is_off_is_refused_and_says_so(uf: UpdateFleet) -> None:
    device = uf.devices[1]
    skewed = UpdateClient(device.client.base.parent, device_id=device.device_id,
                          server_url=BASE, signer=device.key, kid=device.kid,
                          transport=AppTransport(uf.app_client), fetcher=device.fetcher,
                          now_ms=lambda: int(time.time() * 1000) - 3_600_000)
    outcomes = skewed.poll()
    assert [(o.status, o.reason) for o in outcomes] == [("rejected", "director_refused")]
    assert _refusals(uf)[-1]["reason"] == "request_stale"
    assert _refusals(uf)[-1]["device_id"] == device.device_id
    assert skewed.slots.image("main") is None  # nothing installed on a refused read
