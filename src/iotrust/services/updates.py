"""Signed updates: the update keys, the image repository, the director and releases (DESIGN.md §8).

* :func:`init_updates` creates the update keys (where the CA keys live: encrypted files or a
  PKCS#11 token), the image repository and the director under ``DATA/tuf/``;
* :func:`publish_release` publishes a firmware image for one or more hardware classes (monotonic
  release counter per component, checked against every published target and the registry);
* :func:`publish_config` publishes a versioned configuration document for a device or a group;
* :func:`update_root_bundle` is what onboarding hands a device: both trusted roots;
* :func:`sync_director` rewrites the director state of devices from the registry's wishes;
* :func:`rotate_key` rotates a top-level role's keys through new root versions.

Serving (read-only, any worker) is :func:`image_metadata_file`, :func:`image_target_file` and
:func:`director_metadata_file`; they re-sign a timestamp that is past half-life on the way.

This module does not decide who gets a release (that is :mod:`iotrust.services.rollouts`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from iotrust.adapters.tuf._api import TargetFile
from iotrust.adapters.tuf.director import Director, DirectorLifetimes
from iotrust.adapters.tuf.keyring import (
    DIRECTOR_ROLES,
    IMAGE_ROLES,
    Keyring,
    RoleKeys,
    RoleSigners,
)
from iotrust.adapters.tuf.repository import ImageRepository, Lifetimes
from iotrust.adapters.tuf.signer import PortSigner
from iotrust.core import updates as u
from iotrust.errors import ConflictError, InputError, IotrustError
from iotrust.ports import Clock
from iotrust.services.domain import KeyBackend, Secrets
from iotrust.services.settings import Settings

BUNDLE_VERSION: Final = 1
MAX_IMAGE_BYTES: Final = 512 * 1024 * 1024
MAX_CONFIG_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class UpdatePaths:
    """Where the update repositories live in a data folder."""

    base: Path

    @classmethod
    def of(cls, settings: Settings) -> UpdatePaths:
        """The paths under ``settings.data_dir``."""
        return cls(settings.data_dir / "tuf")

    @property
    def keyring(self) -> Path:
        """The keyring file (key references and thresholds, no secret)."""
        return self.base / "keys.json"

    @property
    def image(self) -> Path:
        """The image repository."""
        return self.base / "image"

    @property
    def director(self) -> Path:
        """The director."""
        return self.base / "director"


@dataclass(frozen=True, slots=True)
class Published:
    """One published target: its path and the signed description."""

    path: str
    target: TargetFile


def initialised(settings: Settings) -> bool:
    """Whether updates were initialised in this data folder."""
    return UpdatePaths.of(settings).keyring.is_file()


def init_updates(settings: Settings, backend: KeyBackend, clock: Clock, *,
                 thresholds: Mapping[str, int] | None = None,
                 key_counts: Mapping[str, int] | None = None,
                 image_lifetimes: Lifetimes | None = None,
                 director_lifetimes: DirectorLifetimes | None = None) -> Keyring:
    """Create the update keys, the image repository and the director.

    ``key_counts`` and ``thresholds`` (by role name, the same for both repositories) default
    to one key, threshold one. Refuses if updates exist here.
    """
    paths = UpdatePaths.of(settings)
    if paths.keyring.exists():
        raise ConflictError("updates are already initialised here", reason="repository_exists")
    now = clock.now()
    stamp = now.strftime("%Y%m%d%H%M%S")
    counts = dict(key_counts or {})
    thr = dict(thresholds or {})
    roles: dict[str, dict[str, RoleKeys]] = {}
    opened: dict[str, Any] = {}
    for repo, names in (("image", IMAGE_ROLES), ("director", DIRECTOR_ROLES)):
        roles[repo] = {}
        for role in names:
            refs = []
            for i in range(counts.get(role, 1)):
                signer, ref = backend.create(settings, f"tuf-{repo}-{role}-{i}-{stamp}")
                opened[ref] = signer
                refs.append(ref)
            roles[repo][role] = RoleKeys(thr.get(role, 1), tuple(refs))
    keyring = Keyring(roles)
    paths.base.mkdir(parents=True, exist_ok=True, mode=0o700)

    def open_key(ref: str) -> Any:  # noqa: ANN401 - a Signer just created
        return opened[ref]

    ImageRepository.create(paths.image, RoleSigners(keyring, "image", open_key), now,
                           thresholds=thr, lifetimes=image_lifetimes)
    Director.create(paths.director, RoleSigners(keyring, "director", open_key), now,
                    thresholds=thr, lifetimes=director_lifetimes)
    from iotrust.adapters.tuf.repository import write_file  # noqa: PLC0415

    write_file(paths.keyring, keyring.to_json())
    return keyring


_OPENED: dict[tuple[Secrets, str], Any] = {}
_OPENED_MAX: Final = 64


def _open_cached(secrets: Secrets) -> Any:  # noqa: ANN401 - a key opener
    """Open update keys once per process (like the API's CA key cache): decrypting is slow."""

    def open_key(ref: str) -> Any:  # noqa: ANN401 - a Signer
        key = (secrets, ref)
        if key not in _OPENED:
            if len(_OPENED) >= _OPENED_MAX:
                _OPENED.clear()
            _OPENED[key] = secrets.open(ref)
        return _OPENED[key]

    return open_key


def open_image(settings: Settings, secrets: Secrets, *,
               lifetimes: Lifetimes | None = None) -> ImageRepository:
    """The image repository, its keys opened on demand with ``secrets``."""
    paths = UpdatePaths.of(settings)
    keyring = Keyring.load(paths.keyring)
    return ImageRepository(paths.image, RoleSigners(keyring, "image", _open_cached(secrets)),
                           lifetimes=lifetimes)


def open_director(settings: Settings, secrets: Secrets, *,
                  lifetimes: DirectorLifetimes | None = None) -> Director:
    """The director, its keys opened on demand with ``secrets``."""
    paths = UpdatePaths.of(settings)
    keyring = Keyring.load(paths.keyring)
    return Director(paths.director, RoleSigners(keyring, "director", _open_cached(secrets)),
                    lifetimes=lifetimes)


# -- what a device is given at onboarding -------------------------------------------------------


def update_root_bundle(settings: Settings) -> bytes:
    """Both trusted roots for a device (``b""`` if updates are not initialised here).

    The form is JSON ``{"version": 1, "image_root": b64, "director_root": b64}``; the roots are
    carried as their exact served bytes.
    """
    paths = UpdatePaths.of(settings)
    if not paths.keyring.is_file():
        return b""
    image = ImageRepository(paths.image, _no_signers).root_bytes()
    director = Director(paths.director, _no_signers).root_bytes()
    doc = {"version": BUNDLE_VERSION, "image_root": base64.b64encode(image).decode(),
           "director_root": base64.b64encode(director).decode()}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _no_signers(role: str) -> list[PortSigner]:
    raise RuntimeError(f"no key may sign {role} here (read-only)")


# -- publishing -------------------------------------------------------------------------------


def highest_counter(image: ImageRepository, component: str) -> int | None:
    """The highest release counter published for ``component`` in any hardware class."""
    best: int | None = None
    for role in image.roles():
        if not role.startswith("fw-"):
            continue
        for target in image.targets_of(role).values():
            custom = target.unrecognized_fields.get("custom")
            if isinstance(custom, dict) and custom.get("component") == component:
                counter = custom.get("release_counter")
                if isinstance(counter, int) and (best is None or counter > best):
                    best = counter
    return best


def release_path(hw_class: str, component: str, counter: int) -> str:
    """Where a release is published for one hardware class."""
    return f"fw/{hw_class}/{component}-{counter}.img"


def publish_release(image: ImageRepository, data: bytes, info: u.ReleaseInfo,
                    now: datetime) -> list[Published]:
    """Publish ``data`` under every hardware class of ``info``; refuse a non-newer counter."""
    if not isinstance(data, bytes) or not 0 < len(data) <= MAX_IMAGE_BYTES:
        raise InputError("an image is 1 byte to 512 MiB", reason="invalid_image")
    u.check_counter_is_newer(info.release_counter, highest_counter(image, info.component),
                             info.component)
    out = []
    for hw in info.hw_class_ids:
        path = release_path(hw, info.component, info.release_counter)
        out.append(Published(path, image.add_target(path, data, info.to_custom(), now)))
    return out


def config_path(scope: str, version: int) -> str:
    """Where version ``version`` of ``scope``'s configuration document is published."""
    return f"config/{scope}/config-v{version}.json"


def highest_config_version(image: ImageRepository, scope: str) -> int | None:
    """The highest configuration version published for ``scope``."""
    best: int | None = None
    for target in image.targets_of("config").values():
        custom = target.unrecognized_fields.get("custom")
        if isinstance(custom, dict) and custom.get("scope") == scope:
            version = custom.get("config_version")
            if isinstance(version, int) and (best is None or version > best):
                best = version
    return best


def publish_config(image: ImageRepository, document: Mapping[str, Any], *, scope: str,
                   version: int, now: datetime) -> Published:
    """Publish configuration ``document`` for ``scope`` (a device id or ``groups/<g>``).

    The signed document is ``{"scope", "version", "settings"}``: a per-device document names its
    device, so no two devices ever share one (configuration holding device-specific secrets must
    be per device; a later audit check relies on it). The version must be above every version
    published for ``scope`` (``ConflictError(config_version_not_newer)``).
    """
    info = u.ConfigInfo(scope, version)
    highest = highest_config_version(image, scope)
    if highest is not None and version <= highest:
        raise ConflictError(f"configuration version {version} is not above {highest}",
                            reason="config_version_not_newer")
    body = {"scope": scope, "version": version, "settings": dict(document)}
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    if len(data) > MAX_CONFIG_BYTES:
        raise InputError("a configuration document is at most 64 KiB", reason="too_large")
    path = config_path(scope, version)
    return Published(path, image.add_target(path, data, info.to_custom(), now))


def sync_director(director: Director, wishes: Iterable[tuple[str, Sequence[Published]]],
                  now: datetime) -> dict[str, int]:
    """Publish each device's director state: exactly the targets in its wish list."""
    return director.publish_many(
        ((device_id, {p.path: p.target for p in published}) for device_id, published in wishes),
        now)


def rotate_key(settings: Settings, backend: KeyBackend, secrets: Secrets, clock: Clock, *,
               repo: str, role: str, threshold: int = 1, count: int = 1) -> int:
    """Replace ``role``'s keys in ``repo`` (``image`` or ``director``) by new ones.

    Creates ``count`` new keys where ``backend`` says, signs a new root version with the old and
    new root keys, re-signs what the role signs, and saves the keyring. Returns the new root
    version. Devices offline meanwhile walk every intermediate root when they come back.
    """
    paths = UpdatePaths.of(settings)
    keyring = Keyring.load(paths.keyring)
    if role not in ("root", "targets", "snapshot", "timestamp"):
        raise InputError("only root, targets, snapshot and timestamp keys rotate this way",
                         reason="unknown_role")
    now = clock.now()
    stamp = now.strftime("%Y%m%d%H%M%S%f")
    old_root = RoleSigners(keyring, repo, secrets.open)("root")
    created: dict[str, Any] = {}
    refs = []
    for i in range(count):
        signer, ref = backend.create(settings, f"tuf-{repo}-{role}-{i}-{stamp}")
        created[ref] = signer
        refs.append(ref)
    new_ring = keyring.replace(repo, role, RoleKeys(threshold, tuple(refs)))

    def open_key(ref: str) -> Any:  # noqa: ANN401 - a Signer
        return created[ref] if ref in created else secrets.open(ref)

    signers = RoleSigners(new_ring, repo, open_key)
    if repo == "image":
        version = ImageRepository(paths.image, signers).rotate(
            role, now, previous_root=old_root, threshold=threshold)
    elif repo == "director":
        director = Director(paths.director, signers)
        version = director.rotate(role, now, previous_root=old_root, threshold=threshold)
        if role != "root":
            director.publish_many(((d, director.device_targets(d))
                                   for d in director.device_ids()), now)
    else:
        raise InputError("the repository is image or director", reason="unknown_repository")
    from iotrust.adapters.tuf.repository import write_file  # noqa: PLC0415

    write_file(paths.keyring, new_ring.to_json())
    return version


# -- serving ------------------------------------------------------------------------------------


def image_metadata_file(settings: Settings, secrets: Secrets, clock: Clock, name: str) -> Path:
    """The image metadata file ``name``; the timestamp is refreshed first if it is due."""
    image = open_image(settings, secrets)
    if name == "timestamp.json":
        _refresh_quietly(lambda: image.refresh_expiring(clock.now()))
    return image.metadata_file(name)


def image_target_file(settings: Settings, served_path: str) -> Path:
    """The target file served as ``served_path``."""
    return ImageRepository(UpdatePaths.of(settings).image, _no_signers).target_file(served_path)


def director_metadata_file(settings: Settings, secrets: Secrets, clock: Clock, device_id: str,
                           name: str) -> Path:
    """The director metadata ``name`` for ``device_id`` (timestamp refreshed if due)."""
    director = open_director(settings, secrets)
    if name == "timestamp.json":
        _refresh_quietly(lambda: director.refresh_if_expiring(device_id, clock.now()))
    return director.metadata_file(device_id, name)


def _refresh_quietly(refresh: Any) -> None:  # noqa: ANN401 - a callable
    """Refresh on the serving path; if keys cannot be opened, serve what is there.

    Clients then see metadata expire and refuse it, which is the safe outcome.
    """
    try:
        refresh()
    except (IotrustError, OSError):
        return
