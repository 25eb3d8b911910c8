"""``iotrust release`` and ``iotrust rollout``: signed firmware, configuration, staged rollouts.

Commands::

    iotrust release init [--key-backend file|pkcs11]     update keys, image repository, director
    iotrust release add IMAGE --component C --hw-class H [--hw-class H2] --counter N
                        [--min-agent-version V]
    iotrust release list
    iotrust release config FILE.json --device ID | --group G --version N
    iotrust release rotate-key --repo image|director --role root|targets|snapshot|timestamp
    iotrust rollout create RELEASE [--waves 1,10,50,100] [--success 90] [--abort-failures 5]
                                   [--abort-min-finished 20] [--max-per-hour N] [--id ID]
    iotrust rollout status [ID]
    iotrust rollout pause|resume|abort ID
    iotrust rollout tick                                  re-evaluate (rate-limited waves)

Parses arguments, calls :mod:`iotrust.services.updates` and :mod:`iotrust.services.rollouts`,
prints a table or JSON. Keys are unlocked with ``IOTRUST_PASSPHRASE[_FILE]`` /
``IOTRUST_PKCS11_PIN`` like the CA keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from iotrust.cli.common import ACTOR_CLI, STATE, emit, emit_object, errors
from iotrust.core import rollout as ro
from iotrust.core import updates as u
from iotrust.errors import InputError, NotFoundError
from iotrust.ports import SystemClock
from iotrust.services import rollouts, updates
from iotrust.services.domain import KeyBackend

release_app = typer.Typer(help="Signed firmware releases and configuration (TUF).",
                          no_args_is_help=True)
rollout_app = typer.Typer(help="Staged rollouts of releases.", no_args_is_help=True)

CLOCK = SystemClock()
MAX_IMAGE_READ = updates.MAX_IMAGE_BYTES + 1


def _backend(kind: str, module: str | None, token: str | None) -> KeyBackend:
    sec = STATE.secrets()
    if kind == "file" and sec.passphrase is None:
        raise InputError("set IOTRUST_PASSPHRASE or IOTRUST_PASSPHRASE_FILE to encrypt the "
                         "update keys", reason="passphrase_missing")
    return KeyBackend(kind=kind, passphrase=sec.passphrase, pkcs11_module=module,
                      pkcs11_token=token, pkcs11_pin=sec.pin)


def _read(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist", reason="file_missing") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", reason="file_unreadable") from None
    if len(data) > limit:
        raise InputError(f"{path} is too large", reason="too_large")
    return data


@release_app.command("init")
def release_init(
    key_backend: str = typer.Option("file", help="file (encrypted PEM) or pkcs11."),
    pkcs11_module: str | None = typer.Option(None, envvar="IOTRUST_PKCS11_MODULE"),
    pkcs11_token: str | None = typer.Option(None, envvar="IOTRUST_PKCS11_TOKEN"),
) -> None:
    """Create the update keys, the image repository and the director."""
    with errors():
        keyring = updates.init_updates(STATE.settings,
                                       _backend(key_backend, pkcs11_module, pkcs11_token), CLOCK)
        emit_object({"initialised": str(updates.UpdatePaths.of(STATE.settings).base),
                     "image_roles": sorted(keyring.roles["image"]),
                     "director_roles": sorted(keyring.roles["director"])})


@release_app.command("add")
def release_add(
    image: Path = typer.Argument(..., dir_okay=False, help="The firmware image file."),
    component: str = typer.Option(..., "--component", help="Component name (slug)."),
    hw_class: list[str] = typer.Option(..., "--hw-class", help="Hardware class (repeatable)."),
    counter: int = typer.Option(..., "--counter",
                                help="Release counter: above every earlier one of the "
                                     "component (a downgrade is a new, higher counter)."),
    min_agent_version: str = typer.Option("0", "--min-agent-version"),
) -> None:
    """Publish a firmware image in the image repository and record the release."""
    with errors():
        info = u.ReleaseInfo(component, tuple(hw_class), counter, min_agent_version)
        db = STATE.db()
        try:
            release = rollouts.add_release(db, STATE.settings, STATE.secrets(), CLOCK,
                                           data=_read(image, MAX_IMAGE_READ), info=info,
                                           actor=ACTOR_CLI)
        finally:
            db.close()
        emit_object({"release": release.id, "component": release.component,
                     "release_counter": release.release_counter,
                     "targets": dict(release.targets)})


@release_app.command("list")
def release_list() -> None:
    """Every recorded release."""
    with errors():
        db = STATE.db()
        try:
            rows = [{"release": r.id, "component": r.component, "counter": r.release_counter,
                     "hw_classes": ",".join(r.hw_class_ids),
                     "created_at": r.created_at.isoformat()} for r in rollouts.list_releases(db)]
        finally:
            db.close()
        emit(rows, ["release", "component", "counter", "hw_classes", "created_at"],
             title="Releases")


@release_app.command("config")
def release_config(
    document: Path = typer.Argument(..., dir_okay=False, help="A JSON object."),
    device: str | None = typer.Option(None, "--device", help="For one device."),
    group: str | None = typer.Option(None, "--group", help="For a device group."),
    version: int = typer.Option(..., "--version", help="Above every earlier version."),
) -> None:
    """Publish a versioned configuration document and tell the director."""
    with errors():
        if (device is None) == (group is None):
            raise InputError("give exactly one of --device and --group", reason="invalid_scope")
        try:
            body = json.loads(_read(document, updates.MAX_CONFIG_BYTES))
        except ValueError:
            raise InputError("the configuration is not JSON", reason="malformed_json") from None
        if not isinstance(body, dict):
            raise InputError("the configuration is a JSON object", reason="malformed_json")
        scope = device if device is not None else f"groups/{group}"
        settings, secrets = STATE.settings, STATE.secrets()
        published = updates.publish_config(updates.open_image(settings, secrets), body,
                                           scope=scope, version=version, now=CLOCK.now())
        db = STATE.db()
        try:
            if device is not None:
                targets = [device]
            else:
                with db.transaction(readonly=True) as tx:
                    targets = tx.group_members(str(group))
            synced = rollouts.sync_devices(db, settings, secrets, CLOCK, targets)
        finally:
            db.close()
        emit_object({"published": published.path, "devices": synced})


@release_app.command("rotate-key")
def release_rotate_key(
    repo: str = typer.Option(..., "--repo", help="image or director."),
    role: str = typer.Option(..., "--role", help="root, targets, snapshot or timestamp."),
    threshold: int = typer.Option(1, "--threshold"),
    count: int = typer.Option(1, "--count", help="How many new keys."),
    key_backend: str = typer.Option("file", help="Where new keys live: file or pkcs11."),
    pkcs11_module: str | None = typer.Option(None, envvar="IOTRUST_PKCS11_MODULE"),
    pkcs11_token: str | None = typer.Option(None, envvar="IOTRUST_PKCS11_TOKEN"),
) -> None:
    """Replace a role's keys through a new root version (devices walk every root)."""
    with errors():
        version = updates.rotate_key(STATE.settings,
                                     _backend(key_backend, pkcs11_module, pkcs11_token),
                                     STATE.secrets(), CLOCK, repo=repo, role=role,
                                     threshold=threshold, count=count)
        emit_object({"repository": repo, "role": role, "root_version": version})


@rollout_app.command("create")
def rollout_create(
    release: str = typer.Argument(..., help="Release id (component-counter)."),
    waves: str = typer.Option("1,10,50,100", "--waves", help="Cumulative percentages."),
    success: int = typer.Option(90, "--success", help="% committed to advance."),
    abort_failures: int = typer.Option(5, "--abort-failures", help="% failed to abort."),
    abort_min_finished: int = typer.Option(20, "--abort-min-finished"),
    max_per_hour: int | None = typer.Option(None, "--max-per-hour"),
    rollout_id: str | None = typer.Option(None, "--id"),
) -> None:
    """Start a staged rollout of a release to every eligible device."""
    with errors():
        try:
            wave_list = tuple(int(w) for w in waves.split(","))
        except ValueError:
            raise InputError("waves are comma-separated integers", reason="invalid_waves") \
                from None
        policy = ro.RolloutPolicy(waves=wave_list, success_percent=success,
                                  abort_failure_percent=abort_failures,
                                  abort_min_finished=abort_min_finished,
                                  max_per_hour=max_per_hour)
        db = STATE.db()
        try:
            view = rollouts.create_rollout(db, STATE.settings, STATE.secrets(), CLOCK, release,
                                           actor=ACTOR_CLI, policy=policy,
                                           rollout_id=rollout_id)
        finally:
            db.close()
        emit_object(view.as_dict())


@rollout_app.command("status")
def rollout_status(rollout_id: str | None = typer.Argument(None)) -> None:
    """One rollout's progress, or a table of all."""
    with errors():
        db = STATE.db()
        try:
            if rollout_id is not None:
                emit_object(rollouts.status(db, rollout_id).as_dict())
                return
            rows = [v.as_dict() for v in rollouts.list_rollouts(db)]
        finally:
            db.close()
        emit(rows, ["id", "release", "state", "wave", "devices", "released", "committed",
                    "failed", "reason"], title="Rollouts")


def _act(rollout_id: str, action: str) -> None:
    with errors():
        db = STATE.db()
        try:
            view = rollouts.act(db, STATE.settings, STATE.secrets(), CLOCK, rollout_id,
                                action=action, actor=ACTOR_CLI)
        finally:
            db.close()
        emit_object(view.as_dict())


@rollout_app.command("pause")
def rollout_pause(rollout_id: str = typer.Argument(...)) -> None:
    """Stop releasing more devices (devices already offered keep their offer)."""
    _act(rollout_id, "pause")


@rollout_app.command("resume")
def rollout_resume(rollout_id: str = typer.Argument(...)) -> None:
    """Resume a paused rollout."""
    _act(rollout_id, "resume")


@rollout_app.command("abort")
def rollout_abort(rollout_id: str = typer.Argument(...)) -> None:
    """Abort: withdraw the release from every device that has not started."""
    _act(rollout_id, "abort")


@rollout_app.command("tick")
def rollout_tick() -> None:
    """Re-evaluate active rollouts (releases more devices as the maximum rate allows)."""
    with errors():
        db = STATE.db()
        try:
            changed = rollouts.tick(db, STATE.settings, STATE.secrets(), CLOCK)
        finally:
            db.close()
        emit_object({"devices_changed": changed})
