"""Ending trust at fleet scale, the operator's way back, and dormant devices (DESIGN.md §9).

* :func:`retire_many` — retire every device of a model or a group (or a list): one transaction
  and one event per device (each revokes all its credentials), then one rules sync and a kick
  per device (the sessions are cut without waiting for the CRL), **one** CRL publication of
  the CAs that issued them and broker install (verified, atomic, reload), and a second kick.
  When it returns, the broker refuses every new handshake of those credentials.
* :func:`reset` — the explicit recovery path for a device whose credential lapsed without
  rotation: ACTIVE → EXPECTED with a ``device.reset`` event, any remaining credential revoked,
  so it can onboard again with its factory identity **if its voucher still allows it**. Only an
  operator calls this; nothing in iotrust does it automatically.
* :func:`dormant` — devices not seen for N days (``last_seen_at``, kept by onboarding,
  rotation, the broker-log scan and ingest), optionally quarantined or retired (``lost``),
  each with a ``device.dormant`` event.

This module does not decide lifecycle rules (the core does) or run the broker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from iotrust.adapters.sql.store import Database
from iotrust.core import lifecycle
from iotrust.core.lifecycle import CredentialState, Device, DeviceState, RetirementReason
from iotrust.errors import BackendError, ConflictError, InputError, NotFoundError
from iotrust.ports import Clock
from iotrust.services import broker as broker_svc
from iotrust.services import devices, eventlog
from iotrust.services.credentials import revoke_credential
from iotrust.services.crl_publication import revoked_of_devices
from iotrust.services.domain import Secrets
from iotrust.services.rotation import publish_and_install
from iotrust.services.settings import Settings

__all__ = ["DEVICE_DORMANT", "DEVICE_RESET", "DormantDevice", "dormant", "reset",
           "retire_many", "select_devices"]

DEVICE_RESET: Final = "device.reset"
DEVICE_DORMANT: Final = "device.dormant"
_LIVE: Final = (CredentialState.ISSUED, CredentialState.ACTIVE, CredentialState.SUPERSEDED)


def select_devices(db: Database, *, model: str | None = None, group: str | None = None,
                   device_ids: list[str] | None = None) -> list[str]:
    """The non-retired devices of a model, a group or an explicit list (exactly one)."""
    if sum(x is not None for x in (model, group, device_ids)) != 1:
        raise InputError("choose exactly one of a model, a group or devices",
                         reason="invalid_selection")
    with db.transaction(readonly=True) as tx:
        if device_ids is not None:
            found = [tx.get_device(d) for d in device_ids]
        elif group is not None:
            tx.get_group(group)
            found = [tx.get_device(d) for d in tx.group_members(group)]
        else:
            tx.get_model(str(model))
            found, after = [], None
            while True:
                page = tx.list_devices(model=model, limit=10_000, after_id=after)
                found += page
                if len(page) < 10_000:  # noqa: PLR2004
                    break
                after = page[-1].id
    return [d.id for d in found if d.state is not DeviceState.RETIRED]


def retire_many(db: Database, settings: Settings, secrets: Secrets, clock: Clock, *,
                device_ids: list[str], reason: RetirementReason, actor: str,
                broker: Any = None,  # noqa: ANN401 - a BrokerControl
                progress: Callable[[int], None] | None = None) -> list[Device]:
    """Retire ``device_ids`` (each its own transaction and event), then enforce once."""
    retired: list[Device] = []
    for device_id in device_ids:
        try:
            retired.append(devices.retire(db, clock, device_id, reason, actor=actor))
        except ConflictError as exc:
            if exc.reason != "illegal_transition_retired_to_retired":
                raise
        if progress is not None:
            progress(1)
    live = broker is not None and bool(retired)
    if live:  # cut first (rules deny, kick), without waiting for the CRL to be signed
        live = _deny_and_kick(db, broker, retired)
    publish_and_install(db, settings, secrets, clock, broker, actor=actor,
                        revoked=revoked_of_devices(db, clock, device_ids))
    if live:  # a session re-opened meanwhile has no rights; the CRL now refuses the handshake
        _deny_and_kick(db, broker, retired, rules=False)
    return retired


def _deny_and_kick(db: Database, broker: Any, retired: list[Device], *,  # noqa: ANN401
                   rules: bool = True) -> bool:
    """Apply the rules (unless ``rules`` is false) and kick; False if the broker is not running."""
    try:
        if rules:
            broker_svc.sync(db, broker)
        for device in retired:
            broker.kick(device.id)
    except BackendError as exc:
        if exc.reason != "broker_not_running":
            raise
        return False
    return True


def reset(db: Database, clock: Clock, device_id: str, *, actor: str) -> Device:
    """ACTIVE → EXPECTED for a device whose credential lapsed; the operator's explicit act.

    Refuses (``ConflictError(credential_live)``) while the device still holds an unexpired,
    unrevoked credential: rotation is the way for those. Needs the device's voucher
    (``NotFoundError(no_voucher)``). Revokes whatever credential is left, in the same step.
    """
    now = clock.now()
    with db.transaction() as tx:
        device = tx.get_device(device_id)
        if tx.get_active_voucher(device_id) is None:
            raise NotFoundError("the device has no voucher to onboard with again",
                                reason="no_voucher")
        creds = tx.list_credentials(device_id=device_id)
        if any(c.state in _LIVE and c.not_after > now for c in creds):
            raise ConflictError("the device still holds a live credential; rotate it instead",
                                reason="credential_live")
        moved = lifecycle.unconfirm(device, now)
        tx.update_device(moved, expected_state=device.state)
        for cred in creds:
            if cred.state in _LIVE:
                revoke_credential(tx, clock, cred.serial_number, reason="unspecified",
                                  actor=actor)
        eventlog.record(tx, clock, DEVICE_RESET, actor=actor, device_id=device_id,
                        reason="operator_reset",
                        data={"from": device.state.value, "to": moved.state.value})
        return moved


@dataclass(frozen=True, slots=True)
class DormantDevice:
    """A device not seen for a while, and what was done about it."""

    device: Device
    last_seen_at: datetime | None
    action: str  # reported | quarantined | retired

    def as_dict(self) -> dict[str, Any]:
        """For the CLI and the API."""
        return {"id": self.device.id, "state": self.device.state.value,
                "model": self.device.model,
                "last_seen_at": self.last_seen_at.isoformat() if self.last_seen_at else None,
                "action": self.action}


def dormant(db: Database, settings: Settings, secrets: Secrets, clock: Clock, *, days: float,
            action: str | None = None, actor: str,
            broker: Any = None, limit: int = 10_000) -> list[DormantDevice]:  # noqa: ANN401
    """ACTIVE/QUARANTINED devices not seen for ``days``; ``action`` quarantine or retire them."""
    if not 0 < days <= 36_500:  # noqa: PLR2004
        raise InputError("days must be in (0, 36500]", reason="invalid_days")
    if action not in (None, "quarantine", "retire"):
        raise InputError("the action is quarantine or retire", reason="invalid_action")
    now = clock.now()
    with db.transaction(readonly=True) as tx:
        found = tx.dormant_devices(now - timedelta(days=days), limit=limit)
    out: list[DormantDevice] = []
    to_retire: list[str] = []
    for found_device, seen in found:
        device, done = found_device, "reported"
        if action == "quarantine" and device.state is DeviceState.ACTIVE:
            result = broker_svc.quarantine(db, clock, broker, device.id, actor=actor,
                                           reason="dormant")
            device, done = result.device, "quarantined"
        elif action == "retire":
            to_retire.append(device.id)
            done = "retired"
        if done != "reported":
            eventlog.record_refusal(db, clock, DEVICE_DORMANT, actor=actor, reason="dormant",
                                    device_id=device.id,
                                    data={"days": str(days), "action": done,
                                          "last_seen_at": seen.isoformat() if seen else None})
        out.append(DormantDevice(device, seen, done))
    if to_retire:
        retired = {d.id: d for d in retire_many(db, settings, secrets, clock,
                                                device_ids=to_retire,
                                                reason=RetirementReason.LOST, actor=actor,
                                                broker=broker)}
        out = [DormantDevice(retired.get(d.device.id, d.device), d.last_seen_at, d.action)
               for d in out]
    return out
