"""The agent's update client: director + image repository, A/B install, signed status reports.

One :meth:`UpdateClient.poll`:

1. a **new** ``tuf.ngclient.Updater`` for the director (python-tuf 7 allows one ``refresh()``
   per instance) refreshes this device's director metadata from the trusted director root;
   every director request is signed with the operational key (:class:`SignedReadFetcher`:
   ``Authorization: IotrustDevice <envelope>``, :mod:`iotrust.core.signed_reads`), because the
   server gives a device's director metadata to that device only;
2. for each target the director lists, the device refuses another hardware class, a release
   counter not above the installed one and a too-old agent (:mod:`iotrust.core.updates`);
3. a new ``Updater`` for the image repository refreshes and looks the same path up; both
   repositories must agree on length, hashes and every must-match field (Uptane cross-check);
4. the image is downloaded through the image ``Updater`` (python-tuf checks length and hashes),
   installed into the **inactive** slot (install hook), health-checked, then **committed** (the
   ``active`` pointer flips and the release counter is persisted) or **rolled back** (the pointer
   stays); a configuration document is applied only when signed by the configuration role and
   newer than the applied one;
5. every step is reported to ``POST /v1/updates/status`` as a COSE_Sign1 envelope signed by the
   operational key, with a persisted, strictly increasing counter.

Any refusal (expired, unsigned, rolled-back or mismatching metadata, a hash mismatch, a stale or
unsigned configuration) is reported as ``rejected`` with its reason; the device keeps running
its current image. Trusted roots come from onboarding (the ``update-root.json`` bundle); each
poll starts from the newest root verified so far, and python-tuf walks ``N.root.json`` from
there, so a device offline across several root rotations catches up.

The slots are simulated as directories (``slots/a``, ``slots/b`` and an ``active`` file);
``install`` and ``health`` hooks (callables; the CLI builds them from commands) do the real work
on a device. This module does not onboard and does not parse its command line.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Targets  # type: ignore[attr-defined]
from tuf.ngclient import (  # type: ignore[attr-defined] # re-exported without __all__
    FetcherInterface,
    Updater,
)

from iotrust import __version__
from iotrust.agent.state import write_atomic
from iotrust.agent.transport import Transport, check_reply
from iotrust.core import envelope, signed_reads
from iotrust.core import updates as u
from iotrust.errors import InputError, IotrustError, TrustError
from iotrust.ports import Signer

STATUS_PATH: Final = "/v1/updates/status"
STATUS_TOPIC: Final = "updates/status"
UPDATES_DIR: Final = "updates"
STATE_FILE: Final = "update-state.json"
MAX_STATE_BYTES: Final = 256 * 1024

#: An install hook: (image file, slot directory) → installed or raises/returns False.
InstallHook = Callable[[Path, Path], bool]
#: A health check of a freshly installed slot.
HealthHook = Callable[[Path], bool]


def _always(*_: object) -> bool:
    return True


@dataclass(slots=True)
class UpdateState:
    """What the update client persists between polls (``updates/update-state.json``)."""

    hw_class: str
    image_root: bytes
    director_root: bytes
    report_counter: int = 0
    installed: dict[str, dict[str, Any]] = field(default_factory=dict)  # component → info
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # scope → {version, path}
    rejected: dict[str, str] = field(default_factory=dict)  # target path + sha256 → reason

    def to_json(self) -> bytes:
        """File form."""
        return json.dumps({
            "version": 1, "hw_class": self.hw_class,
            "image_root": base64.b64encode(self.image_root).decode(),
            "director_root": base64.b64encode(self.director_root).decode(),
            "report_counter": self.report_counter, "installed": self.installed,
            "configs": self.configs, "rejected": self.rejected,
        }, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> UpdateState:
        """Parse the file form (``InputError(state_damaged)``)."""
        try:
            obj = json.loads(data)
            _check_version(obj)
            return cls(hw_class=str(obj["hw_class"]),
                       image_root=base64.b64decode(obj["image_root"], validate=True),
                       director_root=base64.b64decode(obj["director_root"], validate=True),
                       report_counter=int(obj["report_counter"]),
                       installed=dict(obj["installed"]), configs=dict(obj["configs"]),
                       rejected=dict(obj["rejected"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError("the update state is damaged", reason="state_damaged") from exc


def _check_version(obj: Any) -> None:  # noqa: ANN401 - parsed JSON
    if not isinstance(obj, dict) or obj.get("version") != 1:
        raise ValueError("unsupported version")


def parse_root_bundle(bundle: bytes) -> tuple[bytes, bytes]:
    """(image root, director root) from the bundle onboarding delivered."""
    if not bundle:
        raise InputError("this device received no update roots at onboarding",
                         reason="updates_not_configured")
    try:
        obj = json.loads(bundle)
        _check_version(obj)
        return (base64.b64decode(obj["image_root"], validate=True),
                base64.b64decode(obj["director_root"], validate=True))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError("the update root bundle is damaged",
                         reason="invalid_update_root") from exc


class HttpxFetcher(FetcherInterface):
    """python-tuf's fetcher seam over an ``httpx.Client`` (real HTTP or an in-process app).

    :meth:`fetch_with_headers` is what :class:`SignedReadFetcher` calls to add its
    ``Authorization`` header; python-tuf itself only calls ``fetch(url)``.
    """

    def __init__(self, client: httpx.Client, *, chunk: int = 64 * 1024) -> None:
        self._client = client
        self._chunk = chunk

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self.fetch_with_headers(url, {})

    def fetch_with_headers(self, url: str, headers: Mapping[str, str]) -> Iterator[bytes]:
        """GET ``url`` with extra ``headers``; python-tuf's errors for failures."""
        try:
            reply = self._client.get(url, headers=dict(headers))
        except httpx.HTTPError as exc:
            raise tuf_errors.DownloadError(f"cannot fetch: {type(exc).__name__}") from None
        if reply.status_code != 200:  # noqa: PLR2004
            raise tuf_errors.DownloadHTTPError(f"HTTP {reply.status_code}", reply.status_code)
        data = reply.content
        return iter([data[i:i + self._chunk] for i in range(0, len(data), self._chunk)] or [b""])


class SignedReadFetcher(FetcherInterface):
    """A python-tuf fetcher whose every request carries a device-signed ``Authorization``.

    ``headers(url)`` returns the headers for one URL (signed at the moment of the request);
    ``inner`` does the transfer and must offer ``fetch_with_headers(url, headers)`` (as
    :class:`HttpxFetcher` and wrappers of it do). An inner fetcher without it (a test double
    reading files) gets a plain ``fetch(url)``: the server would then refuse the read.
    """

    def __init__(self, inner: FetcherInterface,
                 headers: Callable[[str], Mapping[str, str]]) -> None:
        self.inner = inner
        self._headers = headers

    def _fetch(self, url: str) -> Iterator[bytes]:
        send = getattr(self.inner, "fetch_with_headers", None)
        if send is None:
            return self.inner.fetch(url)
        chunks: Iterator[bytes] = send(url, self._headers(url))
        return chunks


def _reason(exc: Exception) -> str:
    """The stable refusal reason for a python-tuf failure."""
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        return "metadata_expired"
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return "metadata_unsigned"
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        return "metadata_rollback"
    if isinstance(exc, (tuf_errors.LengthOrHashMismatchError,
                        tuf_errors.DownloadLengthMismatchError)):
        return "hash_mismatch"
    if isinstance(exc, tuf_errors.DownloadError):
        return "download_failed"
    return "metadata_invalid"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one target in one poll."""

    path: str
    status: str  # committed, rolled_back, rejected, current
    reason: str | None = None


class Slots:
    """Directory-based A/B slots: ``slots/a``, ``slots/b`` and an ``active`` pointer file."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def active(self) -> str:
        """``a`` or ``b``."""
        try:
            name = (self.base / "active").read_text().strip()
        except FileNotFoundError:
            return "a"
        return name if name in ("a", "b") else "a"

    def inactive(self) -> str:
        """The slot an update installs into."""
        return "b" if self.active() == "a" else "a"

    def path(self, name: str) -> Path:
        """The directory of slot ``name``."""
        return self.base / name

    def stage(self, image: Path, component: str) -> Path:
        """Copy ``image`` into the inactive slot (emptied first); return the slot directory."""
        slot = self.path(self.inactive())
        shutil.rmtree(slot, ignore_errors=True)
        slot.mkdir(parents=True, mode=0o700)
        shutil.copyfile(image, slot / f"{component}.img")
        return slot

    def commit(self, name: str) -> None:
        """Make slot ``name`` the active one (atomically)."""
        write_atomic(self.base / "active", name.encode() + b"\n", mode=0o600)

    def image(self, component: str) -> bytes | None:
        """The active slot's image of ``component``."""
        try:
            return (self.path(self.active()) / f"{component}.img").read_bytes()
        except FileNotFoundError:
            return None


class UpdateClient:
    """Polls the director and the image repository and applies what both agree on."""

    def __init__(self, state_dir: Path, *, device_id: str, server_url: str, signer: Signer,
                 kid: bytes, transport: Transport, fetcher: FetcherInterface | None = None,
                 install: InstallHook = _always, health: HealthHook = _always,
                 agent_version: str = __version__,
                 now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.base = state_dir / UPDATES_DIR
        self.device_id = device_id
        self.server_url = server_url.rstrip("/")
        self._signer = signer
        self._kid = kid
        self._transport = transport
        self._fetcher = fetcher
        self._install = install
        self._health = health
        self._agent_version = agent_version
        self._now_ms = now_ms
        self.slots = Slots(self.base / "slots")

    # -- state -------------------------------------------------------------------------------

    @property
    def _state_file(self) -> Path:
        return self.base / STATE_FILE

    def initialise(self, bundle: bytes, hw_class: str) -> UpdateState:
        """Create the update state from the onboarding root bundle (once)."""
        if self._state_file.exists():
            return self.load()
        if not u.HW_CLASS_RE.fullmatch(hw_class):
            raise InputError("a hardware class is a lowercase slug", reason="invalid_hw_class")
        image_root, director_root = parse_root_bundle(bundle)
        state = UpdateState(hw_class=hw_class, image_root=image_root,
                            director_root=director_root)
        self._save(state)
        return state

    def load(self) -> UpdateState:
        """The persisted update state."""
        try:
            data = self._state_file.read_bytes()
        except FileNotFoundError:
            raise InputError("updates are not initialised on this device",
                             reason="updates_not_configured") from None
        if len(data) > MAX_STATE_BYTES:
            raise InputError("the update state is too large", reason="state_damaged")
        return UpdateState.from_json(data)

    def _save(self, state: UpdateState) -> None:
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self._state_file, state.to_json(), mode=0o600)

    # -- reporting ---------------------------------------------------------------------------

    def _report(self, state: UpdateState, release: str, status: str,
                reason: str | None = None) -> None:
        state.report_counter += 1
        self._save(state)  # the counter is spent before it is used
        payload = json.dumps({"release": release, "status": status, "reason": reason},
                             sort_keys=True, separators=(",", ":")).encode()
        body = envelope.seal(payload, signer=self._signer, device_id=self.device_id,
                             counter=state.report_counter, timestamp=self._now_ms(),
                             topic=STATUS_TOPIC, content_type="application/json", kid=self._kid)
        try:
            code, reply = self._transport.post_json(STATUS_PATH, body)
            check_reply(code, reply)
        except IotrustError:
            return  # a lost report is retried by the next poll's reports; never blocks updates

    # -- polling -----------------------------------------------------------------------------

    def _updater(self, name: str, metadata_url: str, root: bytes,
                 targets_url: str | None = None,
                 fetcher: FetcherInterface | None = None) -> Updater:
        meta = self.base / "tuf" / name
        meta.mkdir(parents=True, exist_ok=True, mode=0o700)
        targets = self.base / "downloads"
        targets.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Updater(str(meta), metadata_url, str(targets), targets_url,
                       fetcher or self._fetcher, bootstrap=root)

    def _director_headers(self, url: str) -> dict[str, str]:
        """The signed ``Authorization`` for one director URL (``.../metadata/<name>``)."""
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
        topic = signed_reads.director_read_topic(self.device_id, name)
        return {"Authorization": signed_reads.authorization(
            self._signer, device_id=self.device_id, kid=self._kid, topic=topic,
            timestamp_ms=self._now_ms())}

    def _director_fetcher(self) -> FetcherInterface:
        if self._fetcher is None:  # python-tuf's default fetcher cannot add headers
            self._fetcher = HttpxFetcher(httpx.Client(timeout=30.0))
        return SignedReadFetcher(self._fetcher, self._director_headers)

    def _trusted_root(self, name: str) -> bytes:
        return (self.base / "tuf" / name / "root.json").read_bytes()

    def poll(self) -> list[Outcome]:
        """One update cycle; what happened to each target the director lists."""
        state = self.load()
        director = self._updater(
            "director", f"{self.server_url}/v1/tuf/director/{self.device_id}/metadata/",
            state.director_root, fetcher=self._director_fetcher())
        try:
            director.refresh()
            targets = Metadata[Targets].from_bytes(
                (self.base / "tuf" / "director" / "targets.json").read_bytes()).signed.targets
        except tuf_errors.DownloadHTTPError as exc:
            if exc.status_code == 404:  # noqa: PLR2004 - the director has nothing for us yet
                return []
            # 403: the server refused this device's signed read (its clock, its credential)
            reason = "director_refused" if exc.status_code == 403 else "download_failed"  # noqa: PLR2004
            self._report(state, "-", "rejected", reason)
            return [Outcome("director", "rejected", reason)]
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            reason = _reason(exc)
            self._report(state, "-", "rejected", reason)
            return [Outcome("director", "rejected", reason)]
        finally:
            with contextlib.suppress(OSError):
                state.director_root = self._trusted_root("director")
                self._save(state)
        todo = {p: t for p, t in targets.items() if not self._current(state, p, t)}
        if not todo:
            return [Outcome(p, "current") for p in targets]
        image = self._updater("image", f"{self.server_url}/v1/tuf/image/metadata/",
                              state.image_root, f"{self.server_url}/v1/tuf/image/targets/")
        try:
            image.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            reason = _reason(exc)
            outcomes = []
            for path, target in todo.items():
                outcomes.append(self._reject(state, path, target, reason))
            return outcomes
        finally:
            with contextlib.suppress(OSError):
                state.image_root = self._trusted_root("image")
                self._save(state)
        return [self._apply(state, image, path, target) for path, target in sorted(todo.items())]

    @staticmethod
    def _key(path: str, target: Any) -> str:  # noqa: ANN401 - a TargetFile
        return f"{path}#{target.hashes.get('sha256', '')}"

    def _current(self, state: UpdateState, path: str, target: Any) -> bool:  # noqa: ANN401
        """Whether ``target`` is already applied or was already refused (nothing new)."""
        if self._key(path, target) in state.rejected:
            return True
        custom = target.unrecognized_fields.get("custom")
        if isinstance(custom, dict) and custom.get("kind") == u.CONFIG:
            return state.configs.get(str(custom.get("scope")), {}).get("path") == path
        if isinstance(custom, dict):
            installed = state.installed.get(str(custom.get("component")), {})
            return installed.get("path") == path and \
                installed.get("sha256") == target.hashes.get("sha256")
        return False

    def _release_id(self, path: str, info: u.ReleaseInfo | u.ConfigInfo | None) -> str:
        if isinstance(info, u.ReleaseInfo):
            return f"{info.component}-{info.release_counter}"
        return path

    def _reject(self, state: UpdateState, path: str, target: Any, reason: str,  # noqa: ANN401
                info: u.ReleaseInfo | u.ConfigInfo | None = None) -> Outcome:
        if info is None:
            with contextlib.suppress(TrustError):
                info = u.parse_custom(target.unrecognized_fields.get("custom"))
        state.rejected[self._key(path, target)] = reason
        self._report(state, self._release_id(path, info), "rejected", reason)
        return Outcome(path, "rejected", reason)

    def _vet(self, state: UpdateState, image: Updater, path: str,
             target: Any) -> tuple[u.ReleaseInfo | u.ConfigInfo, Any]:  # noqa: ANN401
        """Every check before a download; ``TrustError`` with the refusal reason."""
        info = u.parse_custom(target.unrecognized_fields.get("custom"))
        if isinstance(info, u.ReleaseInfo):
            installed = state.installed.get(info.component, {}).get("release_counter")
            u.check_release_for_device(info, hw_class=state.hw_class,
                                       installed_counter=installed,
                                       agent_version=self._agent_version)
        else:
            u.check_config_newer(info, state.configs.get(info.scope, {}).get("version"))
        try:
            signed = image.get_targetinfo(path)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise TrustError("image metadata refused", reason=_reason(exc)) from None
        if signed is None:
            reason = "config_unsigned" if isinstance(info, u.ConfigInfo) \
                else "not_in_image_repository"
            raise TrustError("not signed by the image repository", reason=reason)
        u.check_agreement((target.length, target.hashes, target.custom),
                          (signed.length, signed.hashes, signed.custom))
        return info, signed

    def _apply(self, state: UpdateState, image: Updater, path: str,
               target: Any) -> Outcome:  # noqa: ANN401 - a TargetFile
        try:
            info, signed = self._vet(state, image, path, target)
        except TrustError as exc:
            return self._reject(state, path, target, exc.reason)
        release = self._release_id(path, info)
        if isinstance(info, u.ReleaseInfo):
            self._report(state, release, "downloading")
        try:
            downloaded = Path(image.download_target(signed))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            return self._reject(state, path, target, _reason(exc), info)
        if isinstance(info, u.ConfigInfo):
            return self._apply_config(state, info, path, target, downloaded)
        return self._install_image(state, info, path, signed, downloaded)

    def _apply_config(self, state: UpdateState, info: u.ConfigInfo, path: str,
                      target: Any, downloaded: Path) -> Outcome:  # noqa: ANN401
        try:
            doc = json.loads(downloaded.read_bytes())
            ok = isinstance(doc, dict) and doc.get("scope") == info.scope and \
                doc.get("version") == info.config_version and isinstance(doc.get("settings"),
                                                                         dict)
        except ValueError:
            ok = False
        if not ok:
            return self._reject(state, path, target, "invalid_custom", info)
        safe_scope = info.scope.replace("/", "_")
        config_dir = self.base / "config"
        config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(config_dir / f"{safe_scope}.json", downloaded.read_bytes(), mode=0o600)
        state.configs[info.scope] = {"version": info.config_version, "path": path}
        self._save(state)
        self._report(state, path, "committed")
        return Outcome(path, "committed")

    def _install_image(self, state: UpdateState, info: u.ReleaseInfo, path: str,
                       signed: Any, downloaded: Path) -> Outcome:  # noqa: ANN401
        release = self._release_id(path, info)
        slot_name = self.slots.inactive()
        try:
            slot = self.slots.stage(downloaded, info.component)
            installed_ok = self._install(downloaded, slot)
        except (OSError, IotrustError):
            installed_ok = False
        if not installed_ok:
            state.rejected[self._key(path, signed)] = "install_failed"
            self._report(state, release, "rolled_back", "install_failed")
            return Outcome(path, "rolled_back", "install_failed")
        self._report(state, release, "installed")
        try:
            healthy = self._health(slot)
        except (OSError, IotrustError):
            healthy = False
        if not healthy:
            state.rejected[self._key(path, signed)] = "health_check_failed"
            self._report(state, release, "rolled_back", "health_check_failed")
            return Outcome(path, "rolled_back", "health_check_failed")
        self.slots.commit(slot_name)
        state.installed[info.component] = {"release_counter": info.release_counter,
                                           "path": path, "sha256": signed.hashes["sha256"]}
        self._save(state)
        self._report(state, release, "committed")
        return Outcome(path, "committed")


def command_hook(command: str | None, *, timeout_s: float = 600.0) -> Callable[..., bool]:
    """A hook that runs ``command`` (split like a shell, no shell) and succeeds on exit 0.

    The image file and the slot directory are passed as ``IOTRUST_IMAGE`` and ``IOTRUST_SLOT``.
    ``None`` is a hook that always succeeds (the directory simulation is the install).
    """
    if command is None:
        return _always
    argv = shlex.split(command)
    if not argv:
        raise InputError("an empty hook command", reason="invalid_hook")

    def hook(*paths: Path) -> bool:
        env = dict(os.environ)
        if len(paths) == 2:  # noqa: PLR2004 - install: (image, slot)
            env["IOTRUST_IMAGE"], env["IOTRUST_SLOT"] = str(paths[0]), str(paths[1])
        else:
            env["IOTRUST_SLOT"] = str(paths[0])
        try:
            return subprocess.run(argv, env=env, check=False, timeout=timeout_s,  # noqa: S603
                                  capture_output=True).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    return hook


def client_for(state_dir: Path, *, server_url: str, verify: bool | str, pin: str | None,
               install_command: str | None = None, health_command: str | None = None,
               timeout: float = 30.0) -> tuple[UpdateClient, Callable[[], None]]:
    """An update client for an onboarded agent's state folder over real HTTP; and a closer."""
    from iotrust.agent.keys import open_operational_signer  # noqa: PLC0415
    from iotrust.agent.state import load_state  # noqa: PLC0415
    from iotrust.agent.transport import HttpTransport  # noqa: PLC0415

    agent = load_state(state_dir)
    signer = open_operational_signer(agent.operational_key_ref, pin=pin)
    kid = envelope.kid_for_serial(f"{agent.certificate.serial_number:x}")
    transport = HttpTransport(server_url, timeout=timeout, verify=verify)
    tls = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
    http = httpx.Client(timeout=timeout, verify=tls)
    client = UpdateClient(state_dir, device_id=agent.device_id, server_url=server_url,
                          signer=signer, kid=kid, transport=transport,
                          fetcher=HttpxFetcher(http), install=command_hook(install_command),
                          health=command_hook(health_command))

    def close() -> None:
        transport.close()
        http.close()

    return client, close
