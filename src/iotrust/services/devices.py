"""Looking at devices and moving them through their lifecycle.

Each transition is one transaction: the conditional state update (so two concurrent operators
cannot both win), the credential changes it implies, and one event. Effects outside the database
(CRL publication, broker reload and kick) are the caller's next step, taken after the commit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from iotrust.adapters.sql.store import Database
from iotrust.core import events as ev
from iotrust.core import lifecycle
from iotrust.core.lifecycle import CredentialState, Device, DeviceState, RetirementReason
from iotrust.core.records import Credential, EventRow
from iotrust.errors import InputError
from iotrust.ports import Clock
from iotrust.services import eventlog, faults
from iotrust.services.credentials import revoke_credential

_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
_LIVE = (CredentialState.ISSUED, CredentialState.ACTIVE, CredentialState.SUPERSEDED)


@dataclass(frozen=True, slots=True)
class DeviceDetail:
    """A device with its credentials and most recent events."""

    device: Device
    credentials: list[Credential]
    events: list[EventRow]


def list_devices(db: Database, *, state: str | None = None, manufacturer: str | None = None,
                 model: str | None = None, limit: int = 100,
                 after: str | None = None) -> list[Device]:
    """A page of devices (keyset pagination on the device id), optionally of one model."""
    if not 1 <= limit <= 10_000:  # noqa: PLR2004
        raise InputError("limit must be between 1 and 10000", reason="invalid_limit")
    st = _state(state) if state else None
    with db.transaction() as tx:
        return tx.list_devices(state=st, manufacturer=manufacturer, model=model, limit=limit,
                               after_id=after)


def show(db: Database, device_id: str, *, events: int = 50) -> DeviceDetail:
    """One device, its credentials and its latest events."""
    with db.transaction() as tx:
        device = tx.get_device(device_id)
        creds = tx.list_credentials(device_id=device_id)
        rows = list(tx.iter_events(device_id=device_id))[-events:]
    return DeviceDetail(device=device, credentials=creds, events=rows)


def _state(value: str) -> DeviceState:
    try:
        return DeviceState(value)
    except ValueError:
        raise InputError(f"unknown state {value!r:.20}", reason="invalid_state") from None


def _transition(db: Database, clock: Clock, device_id: str, *, kind: str, actor: str,
                move: Callable[[Device], Device], reason: str | None = None,
                revoke_reason: str | None = None) -> Device:
    with db.transaction() as tx:
        device = tx.get_device(device_id)
        moved = move(device)
        tx.update_device(moved, expected_state=device.state)
        if revoke_reason is not None:
            for cred in tx.list_credentials(device_id=device_id):
                if cred.state in _LIVE:
                    revoke_credential(tx, clock, cred.serial_number, reason=revoke_reason,
                                      actor=actor)
        eventlog.record(tx, clock, kind, actor=actor, device_id=device_id, reason=reason,
                        data={"from": device.state.value, "to": moved.state.value})
        faults.checkpoint("devices.transition.before_commit")
        return moved


def quarantine(db: Database, clock: Clock, device_id: str, *, actor: str,
               reason: str = "operator") -> Device:
    """ACTIVE → QUARANTINED; ``reason`` is a snake_case code recorded on the event."""
    if not _REASON.fullmatch(reason):
        raise InputError("a quarantine reason is a snake_case code such as suspicious_traffic",
                         reason="invalid_reason")
    return _transition(db, clock, device_id, kind=ev.DEVICE_QUARANTINED, actor=actor,
                       move=lambda d: lifecycle.quarantine(d, clock.now()), reason=reason)


def release(db: Database, clock: Clock, device_id: str, *, actor: str) -> Device:
    """QUARANTINED → ACTIVE."""
    return _transition(db, clock, device_id, kind=ev.DEVICE_RELEASED, actor=actor,
                       move=lambda d: lifecycle.release(d, clock.now()))


def retire(db: Database, clock: Clock, device_id: str, reason: RetirementReason, *,
           actor: str) -> Device:
    """Any state → RETIRED; every live credential of the device is revoked in the same step."""
    compromised = reason is RetirementReason.COMPROMISED
    revoke = "key_compromise" if compromised else "cessation_of_operation"
    return _transition(db, clock, device_id, kind=ev.DEVICE_RETIRED, actor=actor,
                       move=lambda d: lifecycle.retire(d, reason, clock.now()), reason=reason.value,
                       revoke_reason=revoke)
