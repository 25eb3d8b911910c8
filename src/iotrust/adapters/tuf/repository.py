"""The TUF image repository on disk, built with python-tuf's Metadata API (``tuf.api.metadata``).

Layout of ``<base>/`` (``data/tuf/image`` here)::

    metadata/N.root.json          every root version ever signed (clients walk them in order)
    metadata/timestamp.json       the one unversioned file
    metadata/N.snapshot.json      consistent snapshots: every other role is fetched by version
    metadata/N.targets.json       top-level targets: delegations only
    metadata/N.fw-<hw>.json       one delegated role per hardware class, paths ``fw/<hw>/*``
    metadata/N.config.json        the configuration role (``config/*/*``, ``config/groups/*/*``)
    targets/<dir>/<sha256>.<name> target files, named by content (consistent snapshots)

Roles and keys: ``root`` and ``targets`` are offline-capable (``targets`` signs only when a
hardware class is added or keys rotate); ``snapshot`` and ``timestamp`` are online; the
``release`` keys sign every ``fw-<hw>`` role and the ``config`` keys the configuration role. All
delegations are terminating. Every change publishes new versions of the roles it touches, a new
snapshot and a new timestamp, in that order, so a reader always finds a complete consistent
state; a lock file serialises writers (readers never wait). Target files carry our custom fields
under ``custom`` (see :mod:`iotrust.core.updates`).

Old versions are kept: a client that started a refresh against the previous snapshot can finish.
This module does not decide release rules (counters, hardware classes: the services and the core
do), does not talk HTTP and does not open keys (signers come from a :data:`SignerSource`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from tuf.api.serialization.json import JSONSerializer

from iotrust.adapters.tuf._api import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SslibSigner,
    TargetFile,
    Targets,
    Timestamp,
)
from iotrust.errors import BackendError, ConflictError, InputError, NotFoundError

#: role name → the signers of that role (all of them sign; at least the threshold).
SignerSource = Callable[[str], Sequence[SslibSigner]]

HW_CLASS_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_NAME: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
FW_PATH_RE: Final = re.compile(rf"fw/({HW_CLASS_RE.pattern})/{_NAME}")
CONFIG_PATH_RE: Final = re.compile(
    rf"config/(dev-[a-z2-7]{{26}}|groups/[a-z0-9][a-z0-9-]{{0,63}})/{_NAME}")
METADATA_NAME_RE: Final = re.compile(
    r"(?:[1-9][0-9]{0,9}\.[a-z0-9][a-z0-9._-]{0,80}|timestamp)\.json")
CONFIG_ROLE: Final = "config"
HASH_ALGORITHM: Final = "sha256"
_SERIALIZER: Final = JSONSerializer(compact=True)
_T = TypeVar("_T", Root, Timestamp, Snapshot, Targets)


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """How long each role's metadata is valid once signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    delegated: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def for_role(self, role: str) -> timedelta:
        """The lifetime of ``role`` (delegated roles share one)."""
        return {"root": self.root, "targets": self.targets, "snapshot": self.snapshot,
                "timestamp": self.timestamp}.get(role, self.delegated)


def role_for_path(path: str) -> str:
    """The role that may sign target ``path``: ``fw-<hw>`` or ``config``; else ``InputError``."""
    fw = FW_PATH_RE.fullmatch(path)
    if fw:
        return f"fw-{fw.group(1)}"
    if CONFIG_PATH_RE.fullmatch(path):
        return CONFIG_ROLE
    raise InputError("a target path is fw/<hw_class>/<name> or config/<device|groups/g>/<name>",
                     reason="invalid_target_path")


def key_role_for(role: str) -> str:
    """The keyring role whose keys sign metadata role ``role``."""
    if role.startswith("fw-"):
        return "release"
    return role


def dump(md: Metadata[Any]) -> bytes:
    """The bytes we publish for ``md`` (compact JSON; signatures cover canonical JSON)."""
    return md.to_bytes(_SERIALIZER)


def sign_with(md: Metadata[Any], signers: Sequence[SslibSigner]) -> None:
    """Replace ``md``'s signatures by those of ``signers``."""
    if not signers:
        raise RuntimeError("no signer for this role")
    for i, signer in enumerate(signers):
        md.sign(signer, append=i > 0)


def write_file(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``path`` atomically (temporary file, fsync, rename); ``BackendError`` on failure.

    ``durable=False`` skips the per-file fsync: for batches that end with one ``os.sync()``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            Path(tmp).replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise
    except OSError as exc:
        raise BackendError(f"cannot write {path.name}: {exc.strerror}",
                           reason="repository_io") from None


@contextlib.contextmanager
def locked(base: Path) -> Iterator[None]:
    """Hold the repository's writer lock (an exclusive ``flock`` on ``<base>/.lock``)."""
    base.mkdir(parents=True, exist_ok=True)
    with (base / ".lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_metadata(path: Path, kind: type[_T]) -> Metadata[_T]:
    """Load one metadata file we wrote; a damaged one is a ``BackendError``."""
    try:
        md = Metadata[_T].from_bytes(path.read_bytes())
    except FileNotFoundError:
        raise NotFoundError(f"no metadata {path.name}", reason="metadata_missing") from None
    except Exception as exc:  # noqa: BLE001 - python-tuf raises several types on bad input
        raise BackendError(f"metadata {path.name} is damaged", reason="repository_damaged",
                           detail=type(exc).__name__) from None
    if not isinstance(md.signed, kind):
        raise BackendError(f"{path.name} is not {kind.type} metadata",
                           reason="repository_damaged")
    return md


def newest_root_version(metadata_dir: Path) -> int:
    """The highest ``N`` of ``N.root.json`` in ``metadata_dir`` (0 if none)."""
    versions = [int(p.name.split(".", 1)[0]) for p in metadata_dir.glob("*.root.json")
                if p.name.split(".", 1)[0].isdigit()]
    return max(versions, default=0)


def current_root_version(metadata_dir: Path, missing: str) -> int:
    """The newest root version in ``metadata_dir``; ``NotFoundError(missing)`` if there is none."""
    version = newest_root_version(metadata_dir)
    if version == 0:
        raise NotFoundError(missing, reason="updates_not_initialised")
    return version


def read_root(metadata_dir: Path, version: int) -> bytes:
    """The served bytes of root ``version``; ``NotFoundError(metadata_missing)`` if absent."""
    try:
        return (metadata_dir / f"{version}.root.json").read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no root version {version}", reason="metadata_missing") from None


def new_root(signers: SignerSource, thresholds: Mapping[str, int], roles: Sequence[str],
             expires: datetime) -> Metadata[Root]:
    """A version-1 root for ``roles`` (keys from ``signers``, consistent snapshots on)."""
    root = Root(expires=expires, consistent_snapshot=True)
    for role in roles:
        for signer in signers(role):
            root.add_key(signer.public_key, role)
        root.roles[role].threshold = thresholds.get(role, 1)
    return Metadata(root)


def rotate_root_keys(root: Metadata[Root], role: str, new_signers: Sequence[SslibSigner],
                     threshold: int) -> None:
    """Replace ``role``'s keys in ``root`` by ``new_signers``'s (old keys are revoked)."""
    if not 1 <= threshold <= len(new_signers):
        raise InputError("threshold must be between 1 and the number of keys",
                         reason="invalid_threshold")
    for keyid in list(root.signed.roles[role].keyids):
        root.signed.revoke_key(keyid, role)
    for signer in new_signers:
        root.signed.add_key(signer.public_key, role)
    root.signed.roles[role].threshold = threshold


class ImageRepository:
    """The image repository under ``base``; see the module docstring for the layout."""

    def __init__(self, base: Path, signers: SignerSource, *,
                 lifetimes: Lifetimes | None = None) -> None:
        self.base = base
        self.metadata_dir = base / "metadata"
        self.targets_dir = base / "targets"
        self._signers = signers
        self._lifetimes = lifetimes or Lifetimes()

    # -- creation ----------------------------------------------------------------------------

    @classmethod
    def create(cls, base: Path, signers: SignerSource, now: datetime, *,
               thresholds: Mapping[str, int] | None = None,
               lifetimes: Lifetimes | None = None) -> ImageRepository:
        """Create a new repository: root v1, targets (delegating ``config``), snapshot, timestamp.

        Refuses (``ConflictError(repository_exists)``) if ``base`` already holds one.
        """
        repo = cls(base, signers, lifetimes=lifetimes)
        with locked(base):
            if newest_root_version(repo.metadata_dir) > 0:
                raise ConflictError("an image repository exists here",
                                    reason="repository_exists")
            thresholds = dict(thresholds or {})
            root = new_root(signers, thresholds, ("root", "targets", "snapshot", "timestamp"),
                            now + repo._lifetimes.root)
            sign_with(root, signers("root"))
            write_file(repo.metadata_dir / "1.root.json", dump(root))
            config_signers = signers("config")
            role = DelegatedRole(CONFIG_ROLE, [s.public_key.keyid for s in config_signers],
                                 thresholds.get("config", 1), terminating=True,
                                 paths=["config/*/*", "config/groups/*/*"])
            delegations = Delegations(keys={s.public_key.keyid: s.public_key
                                            for s in config_signers},
                                      roles={CONFIG_ROLE: role})
            top = Metadata(Targets(version=1, expires=now, delegations=delegations))
            config = Metadata(Targets(version=1, expires=now))
            repo._publish({"targets": top, CONFIG_ROLE: config}, now, bump=False,
                          snapshot=Metadata(Snapshot(version=1, expires=now, meta={})),
                          timestamp_version=1)
        return repo

    # -- reading -----------------------------------------------------------------------------

    def root_version(self) -> int:
        """The newest root version."""
        return current_root_version(self.metadata_dir, "no image repository here")

    def root_bytes(self, version: int | None = None) -> bytes:
        """The bytes of root ``version`` (default: the newest), as served."""
        return read_root(self.metadata_dir, version or self.root_version())

    def root(self) -> Metadata[Root]:
        """The newest root metadata."""
        return read_metadata(self.metadata_dir / f"{self.root_version()}.root.json", Root)

    def timestamp(self) -> Metadata[Timestamp]:
        """The current timestamp."""
        return read_metadata(self.metadata_dir / "timestamp.json", Timestamp)

    def snapshot(self) -> Metadata[Snapshot]:
        """The current snapshot (the one the timestamp names)."""
        version = self.timestamp().signed.snapshot_meta.version
        return read_metadata(self.metadata_dir / f"{version}.snapshot.json", Snapshot)

    def role(self, role: str, snapshot: Metadata[Snapshot] | None = None) -> Metadata[Targets]:
        """The current metadata of targets role ``role``."""
        snap = snapshot or self.snapshot()
        meta = snap.signed.meta.get(f"{role}.json")
        if meta is None:
            raise NotFoundError(f"no role {role!r}", reason="unknown_role")
        return read_metadata(self.metadata_dir / f"{meta.version}.{role}.json", Targets)

    def roles(self) -> list[str]:
        """The targets roles the current snapshot lists."""
        return sorted(name.removesuffix(".json") for name in self.snapshot().signed.meta)

    def get_target(self, path: str) -> TargetFile | None:
        """The target ``path`` as its role lists it now, or ``None``."""
        try:
            role = self.role(role_for_path(path))
        except NotFoundError:
            return None
        return role.signed.targets.get(path)

    def targets_of(self, role: str) -> dict[str, TargetFile]:
        """Every target of ``role``."""
        return dict(self.role(role).signed.targets)

    def metadata_file(self, name: str) -> Path:
        """The file served as metadata ``name`` (``NotFoundError`` if not one of ours)."""
        if not METADATA_NAME_RE.fullmatch(name):
            raise NotFoundError("no such metadata", reason="metadata_missing")
        path = self.metadata_dir / name
        if not path.is_file():
            raise NotFoundError("no such metadata", reason="metadata_missing")
        return path

    def target_file(self, served_path: str) -> Path:
        """The file served as target ``served_path`` (``dir/<sha256>.<name>``)."""
        directory, _, name = served_path.rpartition("/")
        digest, _, plain = name.partition(".")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise NotFoundError("no such target", reason="target_missing")
        try:
            role_for_path(f"{directory}/{plain}")
        except InputError:
            raise NotFoundError("no such target", reason="target_missing") from None
        path = self.targets_dir / served_path
        if not path.is_file():
            raise NotFoundError("no such target", reason="target_missing")
        return path

    # -- writing -----------------------------------------------------------------------------

    def add_target(self, path: str, data: bytes, custom: Mapping[str, Any], now: datetime, *,
                   threshold: int = 1) -> TargetFile:
        """Publish ``data`` as target ``path`` with ``custom`` fields, signed by its role.

        A new hardware class first gets its ``fw-<hw>`` delegation (this needs the
        ``targets`` key). ``ConflictError(target_exists)`` if ``path`` is already published.
        """
        role_name = role_for_path(path)
        target = TargetFile.from_data(path, data, [HASH_ALGORITHM])
        target.unrecognized_fields["custom"] = dict(custom)
        with locked(self.base):
            snap = self.snapshot()
            changed: dict[str, Metadata[Targets]] = {}
            if f"{role_name}.json" in snap.signed.meta:
                role = self.role(role_name, snap)
            else:
                top = self.role("targets", snap)
                release = self._signers("release")
                hw = role_name.removeprefix("fw-")
                delegations = top.signed.delegations
                if delegations is None or delegations.roles is None:
                    raise BackendError("the top-level targets lost its delegations",
                                       reason="repository_damaged")
                delegations.roles[role_name] = DelegatedRole(
                    role_name, [], threshold, terminating=True, paths=[f"fw/{hw}/*"])
                for signer in release:
                    top.signed.add_key(signer.public_key, role_name)
                changed["targets"] = top
                role = Metadata(Targets(version=1, expires=now))
                role.signed.version = 0  # _publish bumps it to 1
            if path in role.signed.targets:
                raise ConflictError(f"target {path} is already published",
                                    reason="target_exists")
            role.signed.targets[path] = target
            changed[role_name] = role
            directory, _, name = path.rpartition("/")
            write_file(self.targets_dir / directory / f"{target.hashes[HASH_ALGORITHM]}.{name}",
                       data)
            self._publish(changed, now)
        return target

    def refresh_expiring(self, now: datetime) -> list[str]:
        """Re-sign every role that expires within a quarter of its lifetime (timestamp: half).

        Returns the roles re-signed (the snapshot and timestamp follow any change).
        """
        with locked(self.base):
            snap = self.snapshot()
            changed: dict[str, Metadata[Targets]] = {}
            for name in snap.signed.meta:
                role = name.removesuffix(".json")
                md = self.role(role, snap)
                if md.signed.expires - now < self._lifetimes.for_role(role) / 4:
                    changed[role] = md
            ts = self.timestamp()
            due = (changed or snap.signed.expires - now < self._lifetimes.snapshot / 4
                   or ts.signed.expires - now < self._lifetimes.timestamp / 2)
            if not due:
                return []
            self._publish(changed, now)
            return [*sorted(changed), "snapshot", "timestamp"]

    def rotate(self, role: str, now: datetime, *, previous_root: Sequence[SslibSigner],
               threshold: int = 1) -> int:
        """Put the keys the signer source now gives for ``role`` into a new root version.

        ``role`` is ``root``, ``targets``, ``snapshot`` or ``timestamp``. The new root is signed
        by ``previous_root`` (the keys the devices trust now) and by the new root keys, so a
        device walks from any older root to it. The rotated role is re-signed with its new keys
        and a new snapshot and timestamp follow. Returns the new root version.
        """
        if role not in ("root", "targets", "snapshot", "timestamp"):
            raise InputError("only top-level roles rotate through root", reason="unknown_role")
        with locked(self.base):
            root = self.root()
            rotate_root_keys(root, role, list(self._signers(role)), threshold)
            root.signed.version += 1
            root.signed.expires = now + self._lifetimes.root
            sign_with(root, list(previous_root))
            for signer in self._signers("root"):
                if signer.public_key.keyid not in root.signatures:
                    root.sign(signer, append=True)
            write_file(self.metadata_dir / f"{root.signed.version}.root.json", dump(root))
            changed = {"targets": self.role("targets")} if role == "targets" else {}
            self._publish(changed, now)
            return root.signed.version

    def _publish(self, changed: Mapping[str, Metadata[Targets]], now: datetime, *,
                 bump: bool = True, snapshot: Metadata[Snapshot] | None = None,
                 timestamp_version: int | None = None) -> None:
        """Write new versions of ``changed`` roles, then a new snapshot, then a new timestamp."""
        snap = snapshot or self.snapshot()
        for name, md in changed.items():
            if bump:
                md.signed.version += 1
            md.signed.expires = now + self._lifetimes.for_role(name)
            sign_with(md, self._signers(key_role_for(name)))
            write_file(self.metadata_dir / f"{md.signed.version}.{name}.json", dump(md))
            snap.signed.meta[f"{name}.json"] = MetaFile(version=md.signed.version)
        if snapshot is None:
            snap.signed.version += 1
        snap.signed.expires = now + self._lifetimes.snapshot
        sign_with(snap, self._signers("snapshot"))
        snap_bytes = dump(snap)
        write_file(self.metadata_dir / f"{snap.signed.version}.snapshot.json", snap_bytes)
        if timestamp_version is None:
            timestamp_version = self.timestamp().signed.version + 1
        ts = Metadata(Timestamp(version=timestamp_version, expires=now + self._lifetimes.timestamp,
                                snapshot_meta=MetaFile.from_data(snap.signed.version, snap_bytes,
                                                                 [HASH_ALGORITHM])))
        sign_with(ts, self._signers("timestamp"))
        write_file(self.metadata_dir / "timestamp.json", dump(ts))
