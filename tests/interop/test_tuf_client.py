"""python-tuf's own client (``tuf.ngclient.Updater``) consumes what a real ``iotrust serve`` serves.

The image repository and the director are created through the services on a real fleet, served
by uvicorn in a subprocess, and fetched over HTTP by python-tuf's default fetcher. Every file is
also loaded with python-tuf's Metadata API and its signatures checked role by role.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from tests.integration.fleet import PASSPHRASE, Fleet, build_fleet
from tests.integration.server import Server, running_server
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from tuf.ngclient import Updater

from iotrust.core.ids import new_device_id
from iotrust.core.updates import ReleaseInfo
from iotrust.ports import SystemClock
from iotrust.services import updates
from iotrust.services.domain import KeyBackend, Secrets

pytestmark = pytest.mark.interop

IMAGE = b"\x7fELF firmware image for sensor-1, release 7 " * 300


@dataclass(frozen=True, slots=True)
class Served:
    fleet: Fleet
    server: Server
    device_id: str
    path: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    fleet = build_fleet(tmp_path_factory.mktemp("tuf"))
    clock = SystemClock()
    updates.init_updates(fleet.settings, KeyBackend("file", passphrase=PASSPHRASE), clock)
    secrets = Secrets(passphrase=PASSPHRASE)
    image = updates.open_image(fleet.settings, secrets)
    published = updates.publish_release(image, IMAGE, ReleaseInfo("main", ("sensor-1",), 7),
                                        clock.now())
    device_id = new_device_id(os.urandom(16))
    updates.sync_director(updates.open_director(fleet.settings, secrets),
                          [(device_id, published)], clock.now())
    with running_server(fleet.server_env()) as server:
        yield Served(fleet, server, device_id, published[0].path)


def _roots(fleet: Fleet) -> tuple[bytes, bytes]:
    bundle = json.loads(updates.update_root_bundle(fleet.settings))
    return (base64.b64decode(bundle["image_root"]), base64.b64decode(bundle["director_root"]))


def test_python_tuf_updater_downloads_and_verifies_a_target(served: Served,
                                                             tmp_path: Path) -> None:
    image_root, _ = _roots(served.fleet)
    base = f"{served.server.url}/v1/tuf/image"
    updater = Updater(str(tmp_path / "meta"), f"{base}/metadata/", str(tmp_path / "targets"),
                      f"{base}/targets/", bootstrap=image_root)
    updater.refresh()
    info = updater.get_targetinfo(served.path)
    assert info is not None
    assert info.length == len(IMAGE)
    assert info.custom == {"kind": "firmware", "component": "main", "hw_class_ids": ["sensor-1"],
                           "release_counter": 7, "min_agent_version": "0"}
    downloaded = Path(updater.download_target(info))
    assert downloaded.read_bytes() == IMAGE
    assert updater.get_targetinfo("fw/sensor-1/absent.img") is None
    assert updater.get_targetinfo("fw/other/main-7.img") is None


def test_python_tuf_updater_reads_the_director_for_one_device(served: Served,
                                                               tmp_path: Path) -> None:
    _, director_root = _roots(served.fleet)
    base = f"{served.server.url}/v1/tuf/director/{served.device_id}"
    updater = Updater(str(tmp_path / "meta"), f"{base}/metadata/", bootstrap=director_root)
    updater.refresh()
    info = updater.get_targetinfo(served.path)
    assert info is not None
    assert info.length == len(IMAGE)
    assert info.custom["release_counter"] == 7
    other = new_device_id(os.urandom(16))
    reply = httpx.get(f"{served.server.url}/v1/tuf/director/{other}/metadata/timestamp.json")
    assert reply.status_code == 404
    assert reply.json()["reason"] == "unknown_device"


def _fetch(server: Server, url: str) -> bytes:
    reply = httpx.get(server.url + url)
    assert reply.status_code == 200, reply.text
    return reply.content


def test_served_metadata_passes_python_tuf_validation(served: Served) -> None:
    server = served.server
    root = Metadata[Root].from_bytes(_fetch(server, "/v1/tuf/image/metadata/1.root.json"))
    root.verify_delegate("root", root)
    assert root.signed.consistent_snapshot
    timestamp = Metadata[Timestamp].from_bytes(
        _fetch(server, "/v1/tuf/image/metadata/timestamp.json"))
    root.verify_delegate("timestamp", timestamp)
    assert not timestamp.signed.is_expired(datetime.now(UTC))
    raw_snapshot = _fetch(server, f"/v1/tuf/image/metadata/"
                                  f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
    timestamp.signed.snapshot_meta.verify_length_and_hashes(raw_snapshot)
    snapshot = Metadata[Snapshot].from_bytes(raw_snapshot)
    root.verify_delegate("snapshot", snapshot)
    top = Metadata[Targets].from_bytes(_fetch(
        server, f"/v1/tuf/image/metadata/{snapshot.signed.meta['targets.json'].version}"
                f".targets.json"))
    root.verify_delegate("targets", top)
    assert top.signed.delegations is not None
    assert top.signed.delegations.roles is not None
    assert set(top.signed.delegations.roles) == {"config", "fw-sensor-1"}
    for name, role in top.signed.delegations.roles.items():
        assert role.terminating
        version = snapshot.signed.meta[f"{name}.json"].version
        delegated = Metadata[Targets].from_bytes(
            _fetch(server, f"/v1/tuf/image/metadata/{version}.{name}.json"))
        top.verify_delegate(name, delegated)
    assert top.signed.delegations.roles["fw-sensor-1"].paths == ["fw/sensor-1/*"]


def test_only_repository_files_are_served(served: Served) -> None:
    for url in ("/v1/tuf/image/metadata/..%2Fkeys.json", "/v1/tuf/image/metadata/keys.json",
                "/v1/tuf/image/targets/..%2F..%2Fkeys.json", "/v1/tuf/image/targets/fw/x.img",
                f"/v1/tuf/director/{served.device_id}/metadata/..%2F..%2Fkeys.json",
                "/v1/tuf/director/not-a-device/metadata/1.root.json"):
        reply = httpx.get(served.server.url + url)
        assert reply.status_code == 404, url
