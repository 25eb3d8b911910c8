"""The director (Uptane style): per-device TUF metadata saying which targets each device runs.

Layout of ``<base>/`` (``data/tuf/director`` in a deployment)::

    metadata/N.root.json                    one root for every device (the director's keys)
    devices/<device_id>/timestamp.json      per device: timestamp, snapshot and targets
    devices/<device_id>/N.snapshot.json     (consistent snapshots; the three share version N,
    devices/<device_id>/N.targets.json       bumped together on every change)

A device's director targets list the exact target files (path, length, hashes, custom fields)
copied from the image repository; the device checks that both repositories agree before it
installs anything. Publishing writes targets, then snapshot, then timestamp; versions ``N`` and
``N-1`` are kept (a client that fetched the old timestamp can still finish), older ones removed.
A lock file serialises writers.

Serving is per device: the API gives a device's files only to that device, proven by a request
signed with its operational key (:mod:`iotrust.services.director_access`); this module only
reads and writes the files.

This module does not decide *what* a device should run (:mod:`iotrust.services.rollouts` does)
and does not open keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from iotrust.adapters.tuf._api import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SslibSigner,
    TargetFile,
    Targets,
    Timestamp,
)
from iotrust.adapters.tuf.repository import (
    HASH_ALGORITHM,
    METADATA_NAME_RE,
    SignerSource,
    current_root_version,
    dump,
    locked,
    new_root,
    newest_root_version,
    read_metadata,
    read_root,
    rotate_root_keys,
    sign_with,
    write_file,
)
from iotrust.core.ids import DEVICE_ID_RE
from iotrust.errors import ConflictError, InputError, NotFoundError

ROLES: Final = ("root", "targets", "snapshot", "timestamp")
SYNC_BATCH: Final = 16


@dataclass(frozen=True, slots=True)
class DirectorLifetimes:
    """Validity of the director's metadata once signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class DeviceMetadata:
    """The three signed files of one device's director state."""

    version: int
    targets: bytes
    snapshot: bytes
    timestamp: bytes

    @property
    def size(self) -> int:
        """Bytes a device downloads for a full refresh of its director state (root aside)."""
        return len(self.targets) + len(self.snapshot) + len(self.timestamp)


def _check_device(device_id: str) -> None:
    if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
        raise NotFoundError("no such device", reason="unknown_device")


class Director:
    """The director repository under ``base``."""

    def __init__(self, base: Path, signers: SignerSource, *,
                 lifetimes: DirectorLifetimes | None = None) -> None:
        self.base = base
        self.metadata_dir = base / "metadata"
        self.devices_dir = base / "devices"
        self._signers = signers
        self._lifetimes = lifetimes or DirectorLifetimes()

    @classmethod
    def create(cls, base: Path, signers: SignerSource, now: datetime, *,
               thresholds: Mapping[str, int] | None = None,
               lifetimes: DirectorLifetimes | None = None) -> Director:
        """Create the director's root (v1); ``ConflictError(repository_exists)`` if present."""
        director = cls(base, signers, lifetimes=lifetimes)
        with locked(base):
            if newest_root_version(director.metadata_dir) > 0:
                raise ConflictError("a director exists here", reason="repository_exists")
            root = new_root(signers, dict(thresholds or {}), ROLES,
                            now + director._lifetimes.root)
            sign_with(root, signers("root"))
            write_file(director.metadata_dir / "1.root.json", dump(root))
        return director

    # -- reading -----------------------------------------------------------------------------

    def root_version(self) -> int:
        """The newest root version."""
        return current_root_version(self.metadata_dir, "no director here")

    def root_bytes(self, version: int | None = None) -> bytes:
        """Root ``version`` (default: newest) as served."""
        return read_root(self.metadata_dir, version or self.root_version())

    def device_version(self, device_id: str) -> int:
        """The current version of ``device_id``'s director state (0: never published)."""
        _check_device(device_id)
        try:
            raw = (self.devices_dir / device_id / "timestamp.json").read_bytes()
        except FileNotFoundError:
            return 0
        return int(json.loads(raw)["signed"]["version"])

    def device_targets(self, device_id: str) -> dict[str, TargetFile]:
        """What the director currently tells ``device_id`` to run (empty if nothing)."""
        version = self.device_version(device_id)
        if version == 0:
            return {}
        md = read_metadata(self.devices_dir / device_id / f"{version}.targets.json", Targets)
        return dict(md.signed.targets)

    def device_expires(self, device_id: str) -> datetime | None:
        """When ``device_id``'s timestamp expires (``None`` if never published)."""
        if self.device_version(device_id) == 0:
            return None
        return read_metadata(self.devices_dir / device_id / "timestamp.json",
                             Timestamp).signed.expires

    def metadata_file(self, device_id: str, name: str) -> Path:
        """The file served as ``name`` for ``device_id`` (roots are shared by every device)."""
        _check_device(device_id)
        if not METADATA_NAME_RE.fullmatch(name):
            raise NotFoundError("no such metadata", reason="metadata_missing")
        device_dir = self.devices_dir / device_id
        if not (device_dir / "timestamp.json").is_file():
            raise NotFoundError("no director metadata for this device", reason="unknown_device")
        path = (self.metadata_dir if name.endswith(".root.json") else device_dir) / name
        if not path.is_file():
            raise NotFoundError("no such metadata", reason="metadata_missing")
        return path

    # -- writing -----------------------------------------------------------------------------

    def sign_device(self, device_id: str, targets: Mapping[str, TargetFile], version: int,
                    now: datetime) -> DeviceMetadata:
        """Sign (without writing) version ``version`` of ``device_id``'s director state."""
        _check_device(device_id)
        life = self._lifetimes
        tmd = Metadata(Targets(version=version, expires=now + life.targets,
                               targets=dict(targets)))
        sign_with(tmd, self._signers("targets"))
        targets_bytes = dump(tmd)
        smd = Metadata(Snapshot(version=version, expires=now + life.targets,
                                meta={"targets.json": MetaFile(version=version)}))
        sign_with(smd, self._signers("snapshot"))
        snapshot_bytes = dump(smd)
        ts = Metadata(Timestamp(version=version, expires=now + life.timestamp,
                                snapshot_meta=MetaFile.from_data(version, snapshot_bytes,
                                                                 [HASH_ALGORITHM])))
        sign_with(ts, self._signers("timestamp"))
        return DeviceMetadata(version, targets_bytes, snapshot_bytes, dump(ts))

    def _write(self, device_id: str, signed: DeviceMetadata, *, durable: bool = True) -> None:
        device_dir = self.devices_dir / device_id
        v = signed.version
        write_file(device_dir / f"{v}.targets.json", signed.targets, durable=durable)
        write_file(device_dir / f"{v}.snapshot.json", signed.snapshot, durable=durable)
        write_file(device_dir / "timestamp.json", signed.timestamp, durable=durable)
        for old in (v - 2, v - 3):
            if old > 0:
                for role in ("targets", "snapshot"):
                    (device_dir / f"{old}.{role}.json").unlink(missing_ok=True)

    def publish(self, device_id: str, targets: Mapping[str, TargetFile],
                now: datetime) -> int:
        """Publish a new version of ``device_id``'s director state; return its version."""
        return self.publish_many([(device_id, targets)], now)[device_id]

    def publish_many(self, items: Iterable[tuple[str, Mapping[str, TargetFile]]],
                     now: datetime) -> dict[str, int]:
        """Publish new director states for many devices under one lock; device → version.

        A batch of more than :data:`SYNC_BATCH` devices skips the per-file fsync and ends with
        one ``os.sync()``: a crash in between can leave some devices' files incomplete, which
        their clients refuse (hash mismatch) until the next regeneration rewrites them.
        """
        out: dict[str, int] = {}
        batch = list(items)
        durable = len(batch) <= SYNC_BATCH
        with locked(self.base):
            for device_id, targets in batch:
                version = self.device_version(device_id) + 1
                self._write(device_id, self.sign_device(device_id, targets, version, now),
                            durable=durable)
                out[device_id] = version
            if not durable:
                os.sync()
        return out

    def refresh_if_expiring(self, device_id: str, now: datetime) -> bool:
        """Re-sign ``device_id``'s state (same targets) if its timestamp is past half-life."""
        expires = self.device_expires(device_id)
        if expires is None or expires - now >= self._lifetimes.timestamp / 2:
            return False
        with locked(self.base):
            expires = self.device_expires(device_id)
            if expires is None or expires - now >= self._lifetimes.timestamp / 2:
                return False
            targets = self.device_targets(device_id)
            version = self.device_version(device_id) + 1
            self._write(device_id, self.sign_device(device_id, targets, version, now))
        return True

    def rotate(self, role: str, now: datetime, *, previous_root: Sequence[SslibSigner],
               threshold: int = 1) -> int:
        """New root version with the signer source's current keys for ``role``.

        Signed by ``previous_root`` and the new root keys. Device states signed with a
        rotated key must be republished (``publish_many``) by the caller.
        """
        if role not in ROLES:
            raise InputError("only top-level roles rotate through root", reason="unknown_role")
        with locked(self.base):
            root = read_metadata(self.metadata_dir / f"{self.root_version()}.root.json", Root)
            rotate_root_keys(root, role, list(self._signers(role)), threshold)
            root.signed.version += 1
            root.signed.expires = now + self._lifetimes.root
            sign_with(root, list(previous_root))
            for signer in self._signers("root"):
                if signer.public_key.keyid not in root.signatures:
                    root.sign(signer, append=True)
            write_file(self.metadata_dir / f"{root.signed.version}.root.json", dump(root))
            return root.signed.version

    def device_ids(self) -> list[str]:
        """Every device with a published director state."""
        if not self.devices_dir.is_dir():
            return []
        return sorted(p.name for p in self.devices_dir.iterdir()
                      if DEVICE_ID_RE.fullmatch(p.name))
