"""python-tuf's own client (``tuf.ngclient.Updater``) consumes what a real ``iotrust serve`` serves.

The image repository and the director are created through the services on a real fleet, served
by uvicorn in a subprocess, and fetched over HTTP: the image repository by python-tuf's default
fetcher, a device's director metadata by python-tuf's ``Updater`` over the agent's signing
fetcher (director reads are for the device itself only, signed with its operational key). Every
file is also loaded with python-tuf's Metadata API and its signatures checked role by role.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from tests.integration.fleet import PASSPHRASE, Fleet, build_fleet
from tests.integration.server import Server, running_server
from tests.integration.test_onboarding_service import SoftKey, attest, hello
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from tuf.ngclient import Updater

from iotrust.agent.updates import HttpxFetcher, SignedReadFetcher
from iotrust.core import envelope, signed_reads
from iotrust.core.ids import new_device_id
from iotrust.core.onboarding.device import build_confirm
from iotrust.core.updates import ReleaseInfo
from iotrust.ports import SystemClock
from iotrust.services import updates
from iotrust.services.domain import KeyBackend, Secrets
from iotrust.services.onboarding import OnboardingService

pytestmark = pytest.mark.interop

IMAGE = b"\x7fELF firmware image for sensor-1, release 7 " * 300


@dataclass(frozen=True, slots=True)
class Served:
    fleet: Fleet
    server: Server
    device_id: str
    path: str
    key: SoftKey
    kid: bytes


def _onboarded(fleet: Fleet, clock: SystemClock) -> tuple[str, SoftKey, bytes]:
    """Onboard the fleet's first device: its id, operational key and envelope ``kid``."""
    db = fleet.open_db()
    try:
        svc = OnboardingService(db, clock, fleet.settings, fleet.secrets)
        dev = fleet.device(fleet.serials("widgetco")[0])
        _, _, session = hello(svc, dev, clock)  # type: ignore[arg-type]
        key, onboarded = attest(svc, dev, session, clock)  # type: ignore[arg-type]
        svc.confirm(build_confirm(session, onboarded, operational_signer=key).to_wire(),
                    source="192.0.2.1")
    finally:
        db.close()
    kid = envelope.kid_for_serial(f"{onboarded.certificate.serial_number:x}")
    return onboarded.device_id, key, kid


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    fleet = build_fleet(tmp_path_factory.mktemp("tuf"))
    clock = SystemClock()
    updates.init_updates(fleet.settings, KeyBackend("file", passphrase=PASSPHRASE), clock)
    secrets = Secrets(passphrase=PASSPHRASE)
    image = updates.open_image(fleet.settings, secrets)
    published = updates.publish_release(image, IMAGE, ReleaseInfo("main", ("sensor-1",), 7),
                                        clock.now())
    device_id, key, kid = _onboarded(fleet, clock)
    updates.sync_director(updates.open_director(fleet.settings, secrets),
                          [(device_id, published)], clock.now())
    with running_server(fleet.server_env()) as server:
        yield Served(fleet, server, device_id, published[0].path, key, kid)


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


def _signed(served: Served, device_id: str | None = None) -> Callable[[str], dict[str, str]]:
    """The device's signed ``Authorization`` for a director URL (of ``device_id``'s path)."""
    def headers(url: str) -> dict[str, str]:
        name = url.rsplit("/", 1)[-1]
        topic = signed_reads.director_read_topic(device_id or served.device_id, name)
        return {"Authorization": signed_reads.authorization(
            served.key, device_id=served.device_id, kid=served.kid, topic=topic,
            timestamp_ms=int(datetime.now(UTC).timestamp() * 1000))}
    return headers


def test_python_tuf_updater_reads_the_director_for_one_device(served: Served,
                                                               tmp_path: Path) -> None:
    _, director_root = _roots(served.fleet)
    base = f"{served.server.url}/v1/tuf/director/{served.device_id}"
    with httpx.Client(timeout=10) as http:
        fetcher = SignedReadFetcher(HttpxFetcher(http), _signed(served))
        updater = Updater(str(tmp_path / "meta"), f"{base}/metadata/", fetcher=fetcher,
                          bootstrap=director_root)
        updater.refresh()
    info = updater.get_targetinfo(served.path)
    assert info is not None
    assert info.length == len(IMAGE)
    assert info.custom["release_counter"] == 7
    # python-tuf's own fetcher sends no device signature: refused
    plain = Updater(str(tmp_path / "plain"), f"{base}/metadata/", bootstrap=director_root)
    with pytest.raises(tuf_errors.DownloadHTTPError) as refused:
        plain.refresh()
    assert refused.value.status_code == 403
    # the device signing a read of another device's metadata: refused, whether it exists or not
    other = new_device_id(os.urandom(16))
    url = f"{served.server.url}/v1/tuf/director/{other}/metadata/timestamp.json"
    reply = httpx.get(url, headers=_signed(served, other)(url))
    assert reply.status_code == 403
    assert reply.json()["reason"] == "device_mismatch"


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
                "/v1/tuf/image/targets/..%2F..%2Fkeys.json", "/v1/tuf/image/targets/fw/x.img"):
        reply = httpx.get(served.server.url + url)
        assert reply.status_code == 404, url
    # the device itself, with a valid signature for exactly that name, gets no other file
    director = f"/v1/tuf/director/{served.device_id}/metadata/"
    for name in ("..%2F..%2Fkeys.json", "keys.json", "..%2F..%2F..%2Fiotrust.db"):
        url = served.server.url + director + name
        signed_name = name.replace("%2F", "/")
        headers = _signed(served)(url.rsplit("/", 1)[0] + "/" + signed_name)
        reply = httpx.get(url, headers=headers)
        assert reply.status_code == 404, (name, reply.text)
    reply = httpx.get(served.server.url + "/v1/tuf/director/not-a-device/metadata/1.root.json")
    assert reply.status_code == 403, reply.text
