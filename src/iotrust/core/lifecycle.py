"""The device lifecycle state machine (DESIGN.md §3) and the credential states.

Transitions are explicit functions on immutable :class:`Device` values; anything not listed is a
:class:`~iotrust.errors.ConflictError`. Persisting the new value and its event in one transaction
is the services' job, not this module's.

```
 EXPECTED ──onboard──▶ ACTIVE ◀──release── QUARANTINED
     │                   │  └──quarantine──▶     │
     │                   └──────retire────────────┴──▶ RETIRED (terminal)
     └──retire (never onboarded)──────────────────▶
```
The only way out of RETIRED is :func:`readmit` with a new owner's voucher after a transfer: an
explicit, evented act, never an automatic path.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from datetime import datetime

from iotrust.core.ids import check_device_id, check_serial, check_slug
from iotrust.errors import ConflictError, InputError


class DeviceState(enum.StrEnum):
    """Where a device is in its life."""

    EXPECTED = "expected"
    ACTIVE = "active"
    QUARANTINED = "quarantined"
    RETIRED = "retired"


class RetirementReason(enum.StrEnum):
    """Why a device's trust was ended."""

    DECOMMISSIONED = "decommissioned"
    LOST = "lost"
    COMPROMISED = "compromised"
    TRANSFERRED = "transferred"


class CredentialState(enum.StrEnum):
    """The life of one operational certificate; several may overlap during rotation."""

    ISSUED = "issued"
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    REVOKED = "revoked"
    EXPIRED = "expired"


class KeyStorage(enum.StrEnum):
    """Where a device keeps its keys, as the device (or its model) declares."""

    UNKNOWN = "unknown"
    NONE = "none"
    FILE = "file"
    SOFTWARE = "software"
    SECURE_ELEMENT = "secure_element"
    TPM = "tpm"
    PKCS11 = "pkcs11"


@dataclass(frozen=True, slots=True)
class Device:
    """One device's identity and lifecycle state. Invalid values cannot be constructed."""

    id: str
    manufacturer: str
    serial: str
    factory_spki_sha256: str
    vendor_id: str
    product_id: str
    owner: str
    state: DeviceState
    created_at: datetime
    updated_at: datetime
    model: str | None = None
    retired_reason: RetirementReason | None = None
    key_storage: KeyStorage = KeyStorage.UNKNOWN
    unsafe_admission: bool = False

    def __post_init__(self) -> None:
        check_device_id(self.id)
        check_slug(self.manufacturer, "manufacturer")
        check_serial(self.serial)
        check_slug(self.owner, "owner")
        if self.model is not None:
            check_slug(self.model, "model")
        if len(self.factory_spki_sha256) != 64 or not _is_hex(self.factory_spki_sha256):  # noqa: PLR2004
            raise InputError("factory key hash must be 64 lowercase hex characters",
                             reason="invalid_key_hash")
        if (self.state is DeviceState.RETIRED) != (self.retired_reason is not None):
            raise InputError("a retirement reason is required exactly when a device is retired",
                             reason="invalid_state")
        if self.created_at.tzinfo is None or self.updated_at.tzinfo is None:
            raise TypeError("device timestamps must be timezone-aware")


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _is_hex(value: str) -> bool:
    return _HEX64.fullmatch(value) is not None


def _move(device: Device, to: DeviceState, at: datetime, allowed_from: set[DeviceState],
          action: str, **changes: object) -> Device:
    if device.state not in allowed_from:
        raise ConflictError(
            f"cannot {action} device {device.id}: it is {device.state.value}",
            reason=f"illegal_transition_{device.state.value}_to_{to.value}",
        )
    return dataclasses.replace(device, state=to, updated_at=at, **changes)  # type: ignore[arg-type]


def onboard(device: Device, at: datetime) -> Device:
    """EXPECTED → ACTIVE: the device proved genuine, expected and fresh, and confirmed."""
    return _move(device, DeviceState.ACTIVE, at, {DeviceState.EXPECTED}, "onboard")


def quarantine(device: Device, at: datetime) -> Device:
    """ACTIVE → QUARANTINED: keep only the remediation channel."""
    return _move(device, DeviceState.QUARANTINED, at, {DeviceState.ACTIVE}, "quarantine")


def release(device: Device, at: datetime) -> Device:
    """QUARANTINED → ACTIVE."""
    return _move(device, DeviceState.ACTIVE, at, {DeviceState.QUARANTINED}, "release")


def unconfirm(device: Device, at: datetime) -> Device:
    """ACTIVE → EXPECTED: onboarding was not confirmed in time; its credential is revoked."""
    return _move(device, DeviceState.EXPECTED, at, {DeviceState.ACTIVE}, "reset")


def retire(device: Device, reason: RetirementReason, at: datetime) -> Device:
    """Any state but RETIRED → RETIRED (one-way)."""
    return _move(device, DeviceState.RETIRED, at,
                 {DeviceState.EXPECTED, DeviceState.ACTIVE, DeviceState.QUARANTINED},
                 "retire", retired_reason=reason)


def readmit(device: Device, new_owner: str, at: datetime) -> Device:
    """RETIRED(transferred) → EXPECTED under a new owner's voucher: the explicit way back."""
    check_slug(new_owner, "owner")
    transferred = device.retired_reason is RetirementReason.TRANSFERRED
    if device.state is DeviceState.RETIRED and not transferred:
        raise ConflictError(
            f"device {device.id} was retired as {device.retired_reason}; only a transferred "
            "device can be readmitted", reason="retired")
    return _move(device, DeviceState.EXPECTED, at, {DeviceState.RETIRED}, "readmit",
                 retired_reason=None, owner=new_owner)
