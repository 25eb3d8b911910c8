"""Releases and staged rollouts: who is offered which image, and device status reports (§8).

* :func:`add_release` publishes an image in the image repository and records the release
  (monotonic release counter per component, checked against the registry and the repository);
* :func:`create_rollout` assigns every eligible device (active, hardware class among the
  release's) to a wave by :func:`iotrust.core.rollout.assign` and offers the release to wave 0;
* :func:`report_status` accepts a device's signed, counter-stamped status report, moves its
  progress forward and re-evaluates the rollout: advancing releases the next wave, an automatic
  abort withdraws the release from every released device that has not started;
* :func:`act` pauses, resumes or aborts by hand; :func:`tick` re-evaluates active rollouts
  (the maximum rate releases more devices as time passes);
* :func:`sync_devices` rewrites the director state of devices from what they are offered now
  (releases by rollouts, configuration for the device and its groups).

Status reports are COSE_Sign1 envelopes (:mod:`iotrust.core.envelope`) signed by the device's
operational key, topic ``updates/status``, payload ``{"release", "status", "reason"}`` as JSON;
the counter must be above every counter accepted from that device before.

This module does not sign TUF metadata itself (:mod:`iotrust.services.updates` and the TUF
adapter do) and does not talk HTTP.
"""

from __future__ import annotations

import json
import secrets as pysecrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.adapters.sql.store import Database, Tx
from iotrust.adapters.sql.updates import ReleaseRow, RolloutDeviceRow, RolloutRow, UpdateTx
from iotrust.adapters.tuf._api import TargetFile
from iotrust.core import envelope, pki
from iotrust.core import rollout as ro
from iotrust.core import updates as u
from iotrust.core.lifecycle import CredentialState, DeviceState
from iotrust.errors import ConflictError, InputError, IotrustError, NotFoundError, TrustError
from iotrust.ports import Clock
from iotrust.services import eventlog, faults, updates, zombies
from iotrust.services.domain import Secrets
from iotrust.services.settings import Settings

STATUS_TOPIC: Final = "updates/status"
STATUS_CONTENT_TYPE: Final = "application/json"
ACTOR_DEVICE: Final = "device@iotrust"
ACTOR_SYSTEM: Final = "system@iotrust"
PAGE: Final = 10_000
_USABLE: Final = frozenset({CredentialState.ACTIVE, CredentialState.SUPERSEDED})

RELEASE_ADDED: Final = "release.added"
ROLLOUT_CREATED: Final = "rollout.created"
ROLLOUT_ADVANCED: Final = "rollout.advanced"
ROLLOUT_COMPLETED: Final = "rollout.completed"
ROLLOUT_ABORTED: Final = "rollout.aborted"
ROLLOUT_PAUSED: Final = "rollout.paused"
ROLLOUT_RESUMED: Final = "rollout.resumed"
UPDATE_REPORTED: Final = "update.reported"
UPDATE_REPORT_REFUSED: Final = "update.report_refused"


@dataclass(frozen=True, slots=True)
class RolloutView:
    """What ``iotrust rollout status`` shows."""

    rollout: RolloutRow
    devices: int
    by_wave: Mapping[int, int]
    counts: Mapping[str, int]

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        r = self.rollout
        progress = ro.Progress({ro.DeviceStatus(k): v for k, v in self.counts.items()})
        return {"id": r.id, "release": r.release_id, "state": r.state,
                "wave": r.wave_index, "waves": list(r.policy.get("waves", [])),
                "reason": r.reason, "devices": self.devices,
                "devices_per_wave": {str(k): v for k, v in sorted(self.by_wave.items())},
                "released": progress.released, "finished": progress.finished,
                "failed": progress.failed, "committed": progress.committed,
                "status_counts": dict(sorted(self.counts.items())),
                "policy": dict(r.policy), "updated_at": r.updated_at.isoformat()}


def _view(ux: UpdateTx, rollout_id: str) -> RolloutView:
    rollout = ux.get_rollout(rollout_id)
    rows = ux.rollout_devices(rollout_id)
    by_wave: dict[int, int] = {}
    for row in rows:
        by_wave[row.wave] = by_wave.get(row.wave, 0) + 1
    return RolloutView(rollout, len(rows), by_wave, ux.status_counts(rollout_id))


# -- releases -----------------------------------------------------------------------------------


def add_release(db: Database, settings: Settings, secrets: Secrets, clock: Clock, *,
                data: bytes, info: u.ReleaseInfo, actor: str) -> ReleaseRow:
    """Publish ``data`` for ``info``'s hardware classes and record the release."""
    with db.transaction(readonly=True) as tx:
        u.check_counter_is_newer(info.release_counter,
                                 UpdateTx(tx).highest_counter(info.component), info.component)
    image = updates.open_image(settings, secrets)
    now = clock.now()
    published = updates.publish_release(image, data, info, now)
    release = ReleaseRow(
        id=f"{info.component}-{info.release_counter}", component=info.component,
        release_counter=info.release_counter, hw_class_ids=info.hw_class_ids,
        min_agent_version=info.min_agent_version,
        targets={hw: p.path for hw, p in zip(info.hw_class_ids, published, strict=True)},
        created_at=now)
    with db.transaction() as tx:
        UpdateTx(tx).add_release(release)
        eventlog.record(tx, clock, RELEASE_ADDED, actor=actor, data={
            "release": release.id, "component": info.component,
            "release_counter": info.release_counter, "hw_class_ids": list(info.hw_class_ids),
            "sha256": published[0].target.hashes["sha256"], "length": len(data)})
    return release


def list_releases(db: Database) -> list[ReleaseRow]:
    """Every recorded release."""
    with db.transaction(readonly=True) as tx:
        return UpdateTx(tx).list_releases()


# -- rollouts -----------------------------------------------------------------------------------


def _eligible(tx: Tx, release: ReleaseRow) -> list[str]:
    out: list[str] = []
    after: str | None = None
    while True:
        page = tx.list_devices(state=DeviceState.ACTIVE, limit=PAGE, after_id=after)
        out.extend(d.id for d in page if d.product_id in release.hw_class_ids)
        if len(page) < PAGE:
            return out
        after = page[-1].id


def create_rollout(db: Database, settings: Settings, secrets: Secrets, clock: Clock,
                   release_id: str, *, actor: str, policy: ro.RolloutPolicy | None = None,
                   device_ids: Sequence[str] | None = None,
                   rollout_id: str | None = None) -> RolloutView:
    """Create a rollout of ``release_id`` and offer it to wave 0.

    Devices: ``device_ids`` if given (each must be active and of a matching hardware class),
    else every active device whose hardware class (product id) the release lists.
    """
    policy = policy or ro.RolloutPolicy()
    rid = rollout_id or f"ro-{pysecrets.token_hex(6)}"
    now = clock.now()
    with db.transaction() as tx:
        ux = UpdateTx(tx)
        release = ux.get_release(release_id)
        if device_ids is None:
            chosen = _eligible(tx, release)
        else:
            chosen = []
            for device_id in device_ids:
                device = tx.get_device(device_id)
                if device.state is not DeviceState.ACTIVE or \
                        device.product_id not in release.hw_class_ids:
                    raise ConflictError(f"{device_id} cannot take {release_id}",
                                        reason="device_not_eligible")
                chosen.append(device_id)
        if not chosen:
            raise ConflictError("no eligible device for this release", reason="no_devices")
        assigned = ro.assign(rid, chosen, policy.waves)
        rollout = RolloutRow(id=rid, release_id=release_id, state=ro.RolloutState.ACTIVE.value,
                             policy=policy.to_json(), wave_index=0, reason=None,
                             created_at=now, updated_at=now)
        ux.add_rollout(rollout, [RolloutDeviceRow(rid, d, b, w, None, "pending", None)
                                 for d, (b, w) in assigned.items()], now)
        eventlog.record(tx, clock, ROLLOUT_CREATED, actor=actor, data={
            "rollout": rid, "release": release_id, "devices": len(chosen),
            "waves": list(policy.waves)})
        touched = _release_up_to(ux, rollout, policy, now)
        touched += _evaluate(tx, clock, rid, actor=ACTOR_SYSTEM)
        view = _view(ux, rid)
    sync_devices(db, settings, secrets, clock, touched)
    return view


def _release_up_to(ux: UpdateTx, rollout: RolloutRow, policy: ro.RolloutPolicy,
                   now: Any) -> list[str]:  # noqa: ANN401 - a datetime
    """Offer the release to unreleased devices of waves <= the current one (rate permitting)."""
    rows = [r for r in ux.rollout_devices(rollout.id)
            if r.released_at is None and r.status == "pending" and r.wave <= rollout.wave_index]
    released = sum(1 for r in ux.rollout_devices(rollout.id) if r.released_at is not None)
    quota = ro.release_quota(policy, rollout.created_at, now, released)
    rows.sort(key=lambda r: r.bucket)
    if quota is not None:
        rows = rows[:quota]
    ids = [r.device_id for r in rows]
    ux.release_devices(rollout.id, ids, now)
    return ids


def _evaluate(tx: Tx, clock: Clock, rollout_id: str, *, actor: str) -> list[str]:
    """Advance, complete or abort an active rollout as its progress says; devices touched."""
    ux = UpdateTx(tx)
    touched: list[str] = []
    now = clock.now()
    for _ in range(16):  # waves are few; each pass moves at most one wave
        rollout = ux.get_rollout(rollout_id)
        if rollout.state != ro.RolloutState.ACTIVE:
            return touched
        policy = ro.RolloutPolicy.from_json(rollout.policy)
        progress = ro.Progress({ro.DeviceStatus(k): v
                                for k, v in ux.status_counts(rollout_id).items()})
        decision = ro.decide(progress, policy, rollout.wave_index)
        if decision is ro.Decision.ABORT:
            withdrawn = ux.withdraw_unstarted(rollout_id, now)
            ux.set_rollout(rollout_id, state=ro.RolloutState.ABORTED.value,
                           wave_index=rollout.wave_index, reason="failure_threshold", at=now)
            eventlog.record(tx, clock, ROLLOUT_ABORTED, actor=actor, reason="failure_threshold",
                            data={"rollout": rollout_id, "wave": rollout.wave_index,
                                  "finished": progress.finished, "failed": progress.failed,
                                  "withdrawn": len(withdrawn)})
            return touched + withdrawn
        if decision is ro.Decision.COMPLETE:
            ux.set_rollout(rollout_id, state=ro.RolloutState.COMPLETED.value,
                           wave_index=rollout.wave_index, reason=None, at=now)
            eventlog.record(tx, clock, ROLLOUT_COMPLETED, actor=actor,
                            data={"rollout": rollout_id, "committed": progress.committed})
            return touched
        if decision is ro.Decision.HOLD:
            touched += _release_up_to(ux, rollout, policy, now)
            return touched
        if any(r.released_at is None and r.wave <= rollout.wave_index
               for r in ux.rollout_devices(rollout_id)):
            touched += _release_up_to(ux, rollout, policy, now)  # rate-limited: not yet
            return touched
        ux.set_rollout(rollout_id, state=rollout.state, wave_index=rollout.wave_index + 1,
                       reason=None, at=now)
        eventlog.record(tx, clock, ROLLOUT_ADVANCED, actor=actor,
                        data={"rollout": rollout_id, "wave": rollout.wave_index + 1})
        touched += _release_up_to(ux, ux.get_rollout(rollout_id), policy, now)
    return touched


def status(db: Database, rollout_id: str) -> RolloutView:
    """One rollout's progress."""
    with db.transaction(readonly=True) as tx:
        return _view(UpdateTx(tx), rollout_id)


def list_rollouts(db: Database) -> list[RolloutView]:
    """Every rollout's progress."""
    with db.transaction(readonly=True) as tx:
        ux = UpdateTx(tx)
        return [_view(ux, r.id) for r in ux.list_rollouts()]


def act(db: Database, settings: Settings, secrets: Secrets, clock: Clock,  # noqa: PLR0917 - callers pass the action positionally
        rollout_id: str, action: str, *, actor: str) -> RolloutView:
    """``pause``, ``resume`` or ``abort`` a rollout (an abort withdraws unstarted devices)."""
    now = clock.now()
    touched: list[str] = []
    with db.transaction() as tx:
        ux = UpdateTx(tx)
        rollout = ux.get_rollout(rollout_id, for_update=True)
        state = ro.RolloutState(rollout.state)
        if action == "pause" and state is ro.RolloutState.ACTIVE:
            ux.set_rollout(rollout_id, state="paused", wave_index=rollout.wave_index,
                           reason="paused", at=now)
            eventlog.record(tx, clock, ROLLOUT_PAUSED, actor=actor, data={"rollout": rollout_id})
        elif action == "resume" and state is ro.RolloutState.PAUSED:
            ux.set_rollout(rollout_id, state="active", wave_index=rollout.wave_index,
                           reason=None, at=now)
            eventlog.record(tx, clock, ROLLOUT_RESUMED, actor=actor, data={"rollout": rollout_id})
            touched = _evaluate(tx, clock, rollout_id, actor=actor)
        elif action == "abort" and state in (ro.RolloutState.ACTIVE, ro.RolloutState.PAUSED):
            touched = ux.withdraw_unstarted(rollout_id, now)
            ux.set_rollout(rollout_id, state="aborted", wave_index=rollout.wave_index,
                           reason="operator", at=now)
            eventlog.record(tx, clock, ROLLOUT_ABORTED, actor=actor, reason="operator",
                            data={"rollout": rollout_id, "withdrawn": len(touched)})
        elif action not in ("pause", "resume", "abort"):
            raise InputError("the action is pause, resume or abort", reason="invalid_action")
        else:
            raise ConflictError(f"cannot {action} a rollout that is {state.value}",
                                reason="invalid_transition")
        view = _view(ux, rollout_id)
    sync_devices(db, settings, secrets, clock, touched)
    return view


def tick(db: Database, settings: Settings, secrets: Secrets, clock: Clock) -> int:
    """Re-evaluate every active rollout; the number of devices whose offer changed.

    Also rewrites the director state of released devices that have not started and whose
    director state lacks what the registry offers them: a process that died between a
    rollout's commit and the director rewrite leaves them so, and nothing else would repair it.
    """
    touched: list[str] = []
    waiting: list[str] = []
    with db.transaction() as tx:
        ux = UpdateTx(tx)
        for rollout in ux.list_rollouts():
            if rollout.state == ro.RolloutState.ACTIVE:
                touched += _evaluate(tx, clock, rollout.id, actor=ACTOR_SYSTEM)
                waiting += [r.device_id for r in ux.rollout_devices(rollout.id)
                            if r.released_at is not None and r.status == "pending"]
    touched += _missing_offers(db, settings, secrets, sorted(set(waiting) - set(touched)))
    sync_devices(db, settings, secrets, clock, touched)
    return len(touched)


def _missing_offers(db: Database, settings: Settings, secrets: Secrets,
                    device_ids: Sequence[str]) -> list[str]:
    """The devices among ``device_ids`` whose director state differs from their offer."""
    if not device_ids:
        return []
    targets = _image_targets(settings, secrets)
    with db.transaction(readonly=True) as tx:
        wishes = device_wishes(tx, targets, device_ids)
    director = updates.open_director(settings, secrets)
    return [device_id for device_id, wished in wishes
            if set(director.device_targets(device_id)) != {p.path for p in wished}]


# -- what each device is offered -> director ---------------------------------------------------


def device_wishes(tx: Tx, image_targets: Mapping[str, TargetFile],
                  device_ids: Sequence[str]) -> list[tuple[str, list[updates.Published]]]:
    """Each device's director targets: its newest offered release per component + configs."""
    ux = UpdateTx(tx)
    offered = ux.offered_releases(device_ids)
    releases: dict[str, ReleaseRow] = {}
    configs: dict[str, tuple[int, str]] = {}
    for path, target in image_targets.items():
        custom = target.unrecognized_fields.get("custom")
        if isinstance(custom, dict) and custom.get("kind") == u.CONFIG:
            scope, version = str(custom.get("scope")), int(custom.get("config_version", 0))
            if scope not in configs or configs[scope][0] < version:
                configs[scope] = (version, path)
    out = []
    for device_id in device_ids:
        device = tx.get_device(device_id)
        best: dict[str, ReleaseRow] = {}
        for rid in offered[device_id]:
            if rid not in releases:
                releases[rid] = ux.get_release(rid)
            rel = releases[rid]
            if rel.component not in best or best[rel.component].release_counter < \
                    rel.release_counter:
                best[rel.component] = rel
        wished = []
        for rel in best.values():
            rel_path = rel.targets.get(device.product_id)
            if rel_path is not None and rel_path in image_targets:
                wished.append(updates.Published(rel_path, image_targets[rel_path]))
        scopes = [device_id] + [f"groups/{g}" for g in tx.groups_of_device(device_id)]
        wished.extend(updates.Published(configs[sc][1], image_targets[configs[sc][1]])
                      for sc in scopes if sc in configs)
        out.append((device_id, wished))
    return out


def _image_targets(settings: Settings, secrets: Secrets) -> dict[str, TargetFile]:
    image = updates.open_image(settings, secrets)
    out: dict[str, TargetFile] = {}
    for role in image.roles():
        if role != "targets":
            out.update(image.targets_of(role))
    return out


def sync_devices(db: Database, settings: Settings, secrets: Secrets, clock: Clock,
                 device_ids: Iterable[str]) -> int:
    """Rewrite the director state of ``device_ids`` from what they are offered now."""
    ids = sorted(set(device_ids))
    if not ids:
        return 0
    targets = _image_targets(settings, secrets)
    with db.transaction(readonly=True) as tx:
        wishes = device_wishes(tx, targets, ids)
    director = updates.open_director(settings, secrets)
    return len(updates.sync_director(director, wishes, clock.now()))


# -- device status reports ------------------------------------------------------------------


def _credential_key(tx: Tx, env: envelope.Envelope, now: Any) -> Any:  # noqa: ANN401
    try:
        cred = tx.get_credential(env.credential_serial)
    except NotFoundError:
        raise TrustError("unknown credential", reason="unknown_credential") from None
    if cred.device_id != env.device_id or cred.state not in _USABLE or \
            not cred.not_before <= now <= cred.not_after:
        raise TrustError("unknown credential", reason="unknown_credential")
    return pki.load_certificate(cred.certificate_pem.encode()).public_key()


def _parse_report_object(payload: bytes) -> tuple[str, ro.DeviceStatus, str | None]:
    obj = json.loads(payload)
    if not isinstance(obj, dict) or set(obj) - {"release", "status", "reason"}:
        raise ValueError("unexpected fields")
    release, status_text, reason = obj["release"], obj["status"], obj.get("reason")
    st = ro.DeviceStatus(status_text)
    if not isinstance(release, str) or len(release) > 128 or st is ro.DeviceStatus.PENDING:  # noqa: PLR2004
        raise ValueError("bad release or status")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 64):  # noqa: PLR2004
        raise ValueError("bad reason")
    return release, st, reason


def _parse_report(payload: bytes) -> tuple[str, ro.DeviceStatus, str | None]:
    """The report payload (the parse boundary: ``InputError(malformed_report)``)."""
    try:
        return _parse_report_object(payload)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError("malformed status report", reason="malformed_report",
                         detail=str(exc)[:100]) from None


def _record_zombie(db: Database, clock: Clock, env: envelope.Envelope, now: Any) -> None:  # noqa: ANN401
    """A report really signed by a dead identity (revoked/expired credential, retired device).

    Only a valid signature under the device's own (dead) credential counts: an unauthenticated
    sender cannot make a device look like a zombie.
    """
    with db.transaction(readonly=True) as tx:
        try:
            cred = tx.get_credential(env.credential_serial)
            device = tx.get_device(env.device_id)
        except NotFoundError:
            return
    expired = not cred.not_before <= now <= cred.not_after
    dead = cred.state in {CredentialState.REVOKED, CredentialState.EXPIRED} or expired \
        or device.state is DeviceState.RETIRED
    if cred.device_id != env.device_id or not dead:
        return
    key = pki.load_certificate(cred.certificate_pem.encode()).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return
    try:
        envelope.verify_signature(env, key)
    except IotrustError:
        return
    reason = "retired" if device.state is DeviceState.RETIRED else (
        "expired" if expired or cred.state is CredentialState.EXPIRED else "revoked")
    zombies.record_contact(db, clock, identity=env.device_id, where="update",
                           source=f"cred:{env.credential_serial}", reason=reason)


def report_status(db: Database, settings: Settings, secrets: Secrets, clock: Clock,
                  body: bytes) -> dict[str, Any]:
    """Accept one signed status report; re-evaluate the rollout it belongs to.

    Refusals (``TrustError``: ``unknown_credential``, ``signature_invalid``, ``topic_mismatch``,
    ``replayed``, ``retired``; ``InputError``: ``malformed_envelope``, ``malformed_report``) are
    recorded as ``update.report_refused`` events.
    """
    env = envelope.open_envelope(body)
    now = clock.now()
    touched: list[str] = []
    try:
        with db.transaction() as tx:
            ux = UpdateTx(tx)
            envelope.verify_signature(env, _credential_key(tx, env, now))
            if env.topic != STATUS_TOPIC:
                raise TrustError("not a status report", reason="topic_mismatch")
            if tx.get_device(env.device_id).state is DeviceState.RETIRED:
                raise TrustError("the device is retired", reason="retired")
            release_id, st, reason = _parse_report(env.payload)
            if not ux.accept_report(env.device_id, env.counter, now,
                                    installed_release=release_id
                                    if st is ro.DeviceStatus.COMMITTED else None):
                raise TrustError("the report counter was already used", reason="replayed")
            rollout_ids = []
            for rollout, row in ux.rollouts_of_device(env.device_id):
                if rollout.release_id != release_id:
                    continue
                if ro.may_move(ro.DeviceStatus(row.status), st):
                    ux.set_device_status(rollout.id, env.device_id, st.value, reason, now)
                    rollout_ids.append(rollout.id)
            eventlog.record(tx, clock, UPDATE_REPORTED, actor=ACTOR_DEVICE,
                            device_id=env.device_id, reason=reason,
                            data={"release": release_id, "status": st.value,
                                  "counter": env.counter, "rollouts": ",".join(rollout_ids)})
            for rid in rollout_ids:
                touched += _evaluate(tx, clock, rid, actor=ACTOR_SYSTEM)
    except IotrustError as exc:
        eventlog.record_refusal(db, clock, UPDATE_REPORT_REFUSED, actor=ACTOR_DEVICE,
                                reason=exc.reason, data={"counter": env.counter})
        if exc.reason in {"unknown_credential", "retired"}:
            _record_zombie(db, clock, env, now)
        raise
    faults.checkpoint("rollouts.report.committed")
    sync_devices(db, settings, secrets, clock, touched)
    return {"accepted": True, "counter": env.counter}
