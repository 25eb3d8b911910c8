"""Signed-update costs: a poll with nothing new, director regeneration, metadata per device.

* ``update_poll_idle``: one :meth:`~iotrust.agent.updates.UpdateClient.poll` of a device whose
  director state says "keep running what you run" — a fresh python-tuf ``Updater`` for the
  director (root, timestamp, snapshot, targets), nothing downloaded from the image repository.
  Files come from the repositories on disk through a counting fetcher, so the figure is the
  client's verification and bookkeeping, not HTTP; ``extra.requests`` is the number of requests
  a poll makes. Floor: one ECDSA P-256 verification per signed file fetched.
* ``director_regeneration``: :meth:`~iotrust.adapters.tuf.director.Director.publish_many` for a
  wave of 100,000 devices (quick: 10,000): per device, targets + snapshot + timestamp signed
  and written. Floor: three raw ECDSA P-256 signatures per device.
* ``director_metadata_size``: bytes a device downloads for its director state (targets,
  snapshot, timestamp) against one shared, signed targets file listing every device's target at
  the same fleet size (what a single-repository design would make every device download).

``run(quick) -> list[dict]`` returns rows ``{name, rate, floor, ratio, unit, extra}``. Nothing
here asserts a speed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import FetcherInterface

from iotrust.adapters.tuf.director import Director
from iotrust.adapters.tuf.repository import ImageRepository, dump, sign_with
from iotrust.adapters.tuf.signer import PortSigner
from iotrust.agent.updates import UpdateClient
from iotrust.core.ids import new_device_id
from iotrust.core.updates import ReleaseInfo
from iotrust.services import updates

ECDSA = ec.ECDSA(hashes.SHA256())
MESSAGE = b"x" * 600  # about the size of a signed director file's canonical form


class _Key:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ECDSA)


class _FileFetcher(FetcherInterface):
    """Serves ``/v1/tuf/...`` URLs from the repositories on disk, counting requests."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.requests = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.requests += 1
        path = url.split("/v1/tuf/", 1)[1]
        if path.startswith("director/"):
            _, device_id, _, name = path.split("/", 3)
            folder = "metadata" if name.endswith(".root.json") else f"devices/{device_id}"
            file = self.base / "director" / folder / name
        else:
            file = self.base / "image" / path.removeprefix("image/")
        try:
            return iter([file.read_bytes()])
        except FileNotFoundError:
            raise tuf_errors.DownloadHTTPError("not found", 404) from None


class _NoTransport:
    def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        del path, body
        return 200, b"{}"


def _signers() -> Any:
    keys = {role: [PortSigner(_Key())] for role in
            ("root", "targets", "snapshot", "timestamp", "release", "config")}
    return lambda role: keys[role]


def _raw_verify_rate(n: int) -> float:
    key = ec.generate_private_key(ec.SECP256R1())
    sig = key.sign(MESSAGE, ECDSA)
    pub = key.public_key()
    start = time.perf_counter()
    for _ in range(n):
        pub.verify(sig, MESSAGE, ECDSA)
    return n / (time.perf_counter() - start)


def _raw_sign_rate(n: int) -> float:
    key = ec.generate_private_key(ec.SECP256R1())
    start = time.perf_counter()
    for _ in range(n):
        key.sign(MESSAGE, ECDSA)
    return n / (time.perf_counter() - start)


def _poll(base: Path, polls: int) -> dict[str, float]:
    now = datetime.now(UTC)
    tuf = base / "tuf"
    image = ImageRepository.create(tuf / "image", _signers(), now)
    published = updates.publish_release(image, b"firmware" * 512,
                                        ReleaseInfo("main", ("sensor-1",), 1), now)
    director = Director.create(tuf / "director", _signers(), now)
    device_id = new_device_id(os.urandom(16))
    director.publish(device_id, {p.path: p.target for p in published}, now)
    fetcher = _FileFetcher(tuf)
    client = UpdateClient(base / "agent", device_id=device_id, server_url="http://bench",
                          signer=_Key(), kid=b"\x01", transport=_NoTransport(), fetcher=fetcher)
    import base64  # noqa: PLC0415
    import json  # noqa: PLC0415

    bundle = json.dumps({"version": 1,
                         "image_root": base64.b64encode(image.root_bytes()).decode(),
                         "director_root": base64.b64encode(director.root_bytes()).decode()})
    client.initialise(bundle.encode(), "sensor-1")
    first = client.poll()  # installs the release; later polls have nothing new
    assert [o.status for o in first] == ["committed"], first
    fetcher.requests = 0
    start = time.perf_counter()
    for _ in range(polls):
        outcomes = client.poll()
    elapsed = time.perf_counter() - start
    assert [o.status for o in outcomes] == ["current"], outcomes
    return {"rate": polls / elapsed, "requests": fetcher.requests / polls,
            "ms": 1000 * elapsed / polls}


def _regenerate(base: Path, n: int) -> dict[str, float]:
    now = datetime.now(UTC)
    director = Director.create(base / "director", _signers(), now)
    target = TargetFile.from_data("fw/sensor-1/main-2.img", b"firmware" * 512, ["sha256"])
    target.unrecognized_fields["custom"] = ReleaseInfo("main", ("sensor-1",), 2).to_custom()
    ids = [new_device_id(os.urandom(16)) for _ in range(n)]
    start = time.perf_counter()
    director.publish_many(((d, {target.path: target}) for d in ids), now)
    elapsed = time.perf_counter() - start
    one = director.sign_device(ids[0], {target.path: target}, 2, now)
    shared = Targets(expires=now, targets={f"devices/{d}/{target.path}": target for d in ids})
    md = Metadata(shared)
    sign_with(md, _signers()("targets"))
    return {"rate": n / elapsed, "seconds": elapsed, "per_device_bytes": one.size,
            "shared_bytes": len(dump(md))}


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure and return rows ``{name, rate, floor, ratio, unit, extra}``."""
    n = 10_000 if quick else 100_000
    polls = 20 if quick else 100
    base = Path(tempfile.mkdtemp(prefix="iotrust-bench-updates-"))
    try:
        poll = _poll(base / "poll", polls)
        regen = _regenerate(base / "regen", n)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    verify = _raw_verify_rate(2000)
    sign = _raw_sign_rate(2000)
    signed_files = 3  # timestamp, snapshot, targets (the root is cached)
    poll_floor = verify / signed_files
    regen_floor = sign / 3
    return [
        {"name": "update_poll_idle", "rate": poll["rate"], "floor": poll_floor,
         "ratio": poll["rate"] / poll_floor, "unit": "polls/s",
         "extra": {"requests_per_poll": poll["requests"], "ms_per_poll": poll["ms"],
                   "polls": polls, "floor": "3 raw ECDSA P-256 verifications"}},
        {"name": "director_regeneration", "rate": regen["rate"], "floor": regen_floor,
         "ratio": regen["rate"] / regen_floor, "unit": "devices/s",
         "extra": {"devices": n, "seconds": regen["seconds"],
                   "floor": "3 raw ECDSA P-256 signatures per device"}},
        {"name": "director_metadata_size", "rate": float(regen["per_device_bytes"]),
         "floor": float(regen["shared_bytes"]),
         "ratio": regen["per_device_bytes"] / regen["shared_bytes"], "unit": "bytes/device",
         "extra": {"devices": n, "per_device_bytes": regen["per_device_bytes"],
                   "shared_targets_bytes": regen["shared_bytes"],
                   "floor": "one shared targets file listing every device (what each device "
                            "would download instead)"}},
    ]


if __name__ == "__main__":
    import json
    import sys

    for row in run(quick="--quick" in sys.argv):
        sys.stdout.write(json.dumps(row) + "\n")
