"""Operator endpoints: manufacturers, vouchers, devices, device models, lifecycle actions, events.

Every route depends on a bearer token with the permission it names (``read`` for auditors,
``write`` for operators, ``admin`` for administrators). Handlers only translate between HTTP and
the services.

No ``from __future__ import annotations`` here: FastAPI evaluates the route closures'
annotations (``Reader``, ``Writer``) at runtime, and local names are only visible to it then.
"""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, Field

from iotrust.adapters.mqtt.mosquitto import MosquittoBroker
from iotrust.core.lifecycle import Device, RetirementReason
from iotrust.core.records import ApiToken
from iotrust.errors import IotrustError
from iotrust.services import broker as broker_svc
from iotrust.services import devices, manufacturers
from iotrust.services import hardware as hw_svc
from iotrust.services import vouchers as voucher_svc
from iotrust.services.policies import PolicyChange

if TYPE_CHECKING:
    from iotrust.api.app import AppState

_log = logging.getLogger(__name__)


class DeviceOut(BaseModel):
    """A device as the API shows it."""

    id: str
    manufacturer: str
    serial: str
    state: str
    retired_reason: str | None
    owner: str
    vendor_id: str
    product_id: str
    model: str | None
    factory_spki_sha256: str
    key_storage: str
    unsafe_admission: bool
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, d: Device) -> "DeviceOut":
        """Convert a core device."""
        return cls(id=d.id, manufacturer=d.manufacturer, serial=d.serial, state=d.state.value,
                   retired_reason=d.retired_reason.value if d.retired_reason else None,
                   owner=d.owner, vendor_id=d.vendor_id, product_id=d.product_id,
                   model=d.model, factory_spki_sha256=d.factory_spki_sha256,
                   key_storage=d.key_storage.value,
                   unsafe_admission=d.unsafe_admission, created_at=d.created_at.isoformat(),
                   updated_at=d.updated_at.isoformat())


class DevicePage(BaseModel):
    """A page of devices; pass ``next`` as ``after`` for the following page."""

    items: list[DeviceOut]
    next: str | None


class ManufacturerIn(BaseModel):
    """A manufacturer to register."""

    name: str = Field(max_length=63)
    anchors_pem: str = Field(max_length=64 * 1024)
    allowed: list[str] = Field(min_length=1, max_length=256)
    unsafe_manufacturer_trust: bool = False


class ImportOut(BaseModel):
    """The outcome of a voucher import."""

    imported: list[str]
    unchanged: int
    refused: list[dict[str, Any]]


class RetireIn(BaseModel):
    """Why a device is retired."""

    reason: RetirementReason


class ModelIn(BaseModel):
    """The device model to set on a device (a registered model of its manufacturer)."""

    model: str = Field(min_length=1, max_length=64)


class QuarantineIn(BaseModel):
    """Why a device is quarantined."""

    reason: str = Field(default="operator", pattern=r"^[a-z][a-z0-9_]{0,63}$")


class EventOut(BaseModel):
    """One event-log record."""

    seq: int
    at: str
    kind: str
    actor: str
    device_id: str | None
    reason: str | None
    data: str
    hash: str


@contextmanager
def _broker(state: "AppState") -> Iterator[MosquittoBroker | None]:
    """The data folder's broker, if one is configured (its admin session closed after use)."""
    broker = broker_svc.open_broker(state.settings, state.clock)
    try:
        yield broker
    finally:
        if broker is not None:
            broker.close()


def router(  # noqa: C901 - one closure per route, each trivial
    state: "AppState",
    require: Callable[[str], Callable[..., ApiToken]],
) -> APIRouter:
    """The operator routes bound to ``state``."""
    r = APIRouter(prefix="/v1", tags=["operators"])
    Reader = Annotated[ApiToken, Depends(require("read"))]  # noqa: N806
    Writer = Annotated[ApiToken, Depends(require("write"))]  # noqa: N806

    def actor(token: ApiToken) -> str:
        return f"{token.name}@api"

    @r.get("/devices")
    def list_devices(_: Reader, state_: Annotated[str | None, Query(alias="state")] = None,
                     manufacturer: str | None = None,
                     model: Annotated[str | None, Query(max_length=64)] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     after: Annotated[str | None, Query(max_length=64)] = None) -> DevicePage:
        rows = devices.list_devices(state.db, state=state_, manufacturer=manufacturer,
                                    model=model, limit=limit, after=after)
        nxt = rows[-1].id if len(rows) == limit else None
        return DevicePage(items=[DeviceOut.of(d) for d in rows], next=nxt)

    @r.get("/devices/{device_id}")
    def get_device(_: Reader, device_id: str) -> DeviceOut:
        return DeviceOut.of(devices.show(state.db, device_id, events=0).device)

    @r.post("/devices/{device_id}/quarantine")
    def quarantine(token: Writer, device_id: str,
                   body: Annotated[QuarantineIn | None, Body()] = None) -> DeviceOut:
        reason = body.reason if body else "operator"
        with _broker(state) as broker:
            result = broker_svc.quarantine(state.db, state.clock, broker, device_id,
                                           actor=actor(token), reason=reason)
        return DeviceOut.of(result.device)

    @r.post("/devices/{device_id}/release")
    def release(token: Writer, device_id: str) -> DeviceOut:
        with _broker(state) as broker:
            result = broker_svc.release(state.db, state.clock, broker, device_id,
                                        actor=actor(token))
        return DeviceOut.of(result.device)

    @r.post("/devices/{device_id}/retire")
    def retire(token: Writer, device_id: str, body: RetireIn) -> DeviceOut:
        with _broker(state) as broker:
            result = broker_svc.retire(state.db, state.settings, state.secrets, state.clock,
                                       device_id, broker=broker, reason=body.reason,
                                       actor=actor(token))
        return DeviceOut.of(result.device)

    @r.put("/devices/{device_id}/model")
    def set_model(token: Writer, device_id: str, body: ModelIn) -> DeviceOut:
        def resync(_change: PolicyChange) -> None:
            try:
                broker_svc.sync_configured(state.db, state.settings, state.clock)
            except IotrustError as exc:  # stored; `iotrust broker sync` or the next change
                _log.warning("broker resync after a model change failed: %s", exc.reason)

        result = hw_svc.set_device_model(state.db, state.clock, device_id, body.model,
                                         actor=actor(token), changed=resync)
        return DeviceOut.of(result.device)

    @r.get("/manufacturers")
    def list_manufacturers(_: Reader) -> list[dict[str, Any]]:
        with state.db.transaction() as tx:
            rows = tx.list_manufacturers()
        return [{"name": m.name, "allowed": m.allowed, "revoked": m.revoked,
                 "unsafe_manufacturer_trust": m.unsafe_manufacturer_trust} for m in rows]

    @r.post("/manufacturers", status_code=201)
    def add_manufacturer(token: Annotated[ApiToken, Depends(require("admin"))],
                         body: ManufacturerIn) -> dict[str, Any]:
        m = manufacturers.add_manufacturer(
            state.db, state.clock, name=body.name, anchors_pem=body.anchors_pem.encode(),
            allowed=body.allowed, actor=actor(token),
            unsafe_manufacturer_trust=body.unsafe_manufacturer_trust)
        return {"name": m.name, "allowed": m.allowed}

    @r.post("/vouchers")
    def import_vouchers(token: Writer,
                        body: Annotated[list[str], Body(max_length=10_000)]) -> ImportOut:
        report = voucher_svc.import_vouchers(state.db, state.clock,
                                             [v.encode() for v in body], actor=actor(token))
        return ImportOut(imported=report.imported, unchanged=report.unchanged,
                         refused=[{"index": i, "reason": rs, "detail": d}
                                  for i, rs, d in report.refused])

    @r.get("/events")
    def list_events(_: Reader, after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                    device_id: Annotated[str | None, Query(max_length=64)] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[EventOut]:
        out: list[EventOut] = []
        with state.db.transaction() as tx:
            for e in tx.iter_events(after_seq=after, device_id=device_id):
                out.append(EventOut(seq=e.seq, at=e.at.isoformat(), kind=e.kind, actor=e.actor,
                                    device_id=e.device_id, reason=e.reason, data=e.data,
                                    hash=e.hash))
                if len(out) >= limit:
                    break
        return out

    return r
