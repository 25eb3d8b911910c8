"""Sustaining and ending trust over HTTP: rotation (devices), zombies, fleet retirement, campaigns.

Device routes (authenticated by signatures, see :mod:`iotrust.core.rotation`):
``POST /v1/rotation/begin``, ``/complete``, ``/confirm``. Operator routes (bearer token):
``GET /v1/zombies`` (read), ``POST /v1/retirements`` (retire by model, group or list; write),
``POST /v1/rotation/campaigns`` and ``GET /v1/rotation/progress`` (write / read).

The app also runs :func:`iotrust.services.rotation.sweep` periodically in every worker (every
change it makes is a conditional update, so concurrent sweeps are safe). No state lives here.
"""

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any, Final

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from pydantic import BaseModel, Field

from iotrust.api.device_http import read_body, source
from iotrust.core import rotation as rot
from iotrust.core.lifecycle import RetirementReason
from iotrust.core.records import ApiToken
from iotrust.errors import IotrustError
from iotrust.services import broker as broker_svc
from iotrust.services import retirement, zombies
from iotrust.services import rotation as rotation_svc

if TYPE_CHECKING:
    from iotrust.api.app import AppState

__all__ = ["SWEEP_INTERVAL_S", "install"]

SWEEP_INTERVAL_S: Final = 30.0
_JSON: Final = "application/json"
_log = logging.getLogger(__name__)
_REFUSALS: Final[dict[int | str, dict[str, Any]]] = {
    403: {"description": "Refused; `reason` says why (docs/protocol.md, rotation)."},
    422: {"description": "Malformed message (`malformed_request`)."},
}


class RetireIn(BaseModel):
    """Which devices to retire, and why."""

    reason: RetirementReason
    model: str | None = Field(default=None, max_length=64)
    group: str | None = Field(default=None, max_length=64)
    devices: list[str] | None = Field(default=None, max_length=10_000)


class CampaignIn(BaseModel):
    """Which devices to ask for early renewal."""

    model: str | None = Field(default=None, max_length=64)
    group: str | None = Field(default=None, max_length=64)
    all: bool = False


def _broker(state: "AppState") -> Any:  # noqa: ANN401 - a MosquittoBroker or None
    return broker_svc.open_broker(state.settings, state.clock)


def router(state: "AppState", service: rotation_svc.RotationService,
           require: Callable[[str], Callable[..., ApiToken]]) -> APIRouter:
    """The rotation, zombie, retirement and campaign routes."""
    r = APIRouter(prefix="/v1")
    reader = Annotated[ApiToken, Depends(require("read"))]
    writer = Annotated[ApiToken, Depends(require("write"))]

    @r.post("/rotation/begin", response_class=Response, responses=_REFUSALS, tags=["rotation"])
    async def begin(request: Request) -> Response:
        """Signed with the current key → a single-use nonce bound to the current credential."""
        body = await read_body(request, rot.MAX_REQUEST_BYTES)
        reply = await anyio.to_thread.run_sync(
            functools.partial(service.begin, body, source=source(request)))
        return Response(reply.to_wire(), media_type=_JSON)

    @r.post("/rotation/complete", response_class=Response, responses=_REFUSALS,
            tags=["rotation"])
    async def complete(request: Request) -> Response:
        """CSR for a new key, signed with the current key over the transcript → new credential."""
        body = await read_body(request, rot.MAX_REQUEST_BYTES)
        reply = await anyio.to_thread.run_sync(
            functools.partial(service.complete, body, source=source(request)))
        return Response(reply.to_wire(), media_type=_JSON)

    @r.post("/rotation/confirm", status_code=204, response_class=Response,
            responses=_REFUSALS, tags=["rotation"])
    async def confirm(request: Request) -> Response:
        """Proof with the new key → the old credential is superseded and revoked."""
        body = await read_body(request, rot.MAX_REQUEST_BYTES)
        await anyio.to_thread.run_sync(
            functools.partial(service.confirm, body, source=source(request)))
        return Response(status_code=204)

    @r.get("/zombies", tags=["operators"])
    def list_zombies(_: reader, limit: int = 1000) -> list[dict[str, Any]]:
        """Retired, revoked or expired identities that still make contact."""
        return [z.as_dict() for z in zombies.list_zombies(state.db, limit=min(limit, 10_000))]

    @r.post("/retirements", tags=["operators"])
    def retire(token: writer, body: RetireIn) -> dict[str, Any]:
        """Retire every device of a model, a group or a list (one-way)."""
        ids = retirement.select_devices(state.db, model=body.model, group=body.group,
                                        device_ids=body.devices)
        broker = _broker(state)
        try:
            done = retirement.retire_many(state.db, state.settings, state.secrets, state.clock,
                                          device_ids=ids, reason=body.reason,
                                          actor=f"{token.name}@api", broker=broker)
        finally:
            if broker is not None:
                broker.close()
        return {"retired": [d.id for d in done], "reason": body.reason.value}

    @r.post("/rotation/campaigns", tags=["operators"])
    def campaign(token: writer, body: CampaignIn) -> dict[str, Any]:
        """Ask devices to renew early (they see it in their next rotation begin)."""
        report = rotation_svc.request_renewal(state.db, state.clock, actor=f"{token.name}@api",
                                              model=body.model, group=body.group,
                                              all_devices=body.all)
        return {"campaign": report.campaign, "requested": report.requested}

    @r.get("/rotation/progress", tags=["operators"])
    def progress(_: reader, campaign: str | None = None) -> dict[str, int]:
        """How many devices were asked to renew and how many did."""
        return rotation_svc.campaign_progress(state.db, campaign)

    return r


async def _sweep_forever(state: "AppState", interval_s: float) -> None:
    def once() -> None:
        broker = _broker(state)
        try:
            rotation_svc.sweep(state.db, state.clock, state.settings, state.secrets,
                               broker=broker)
        finally:
            if broker is not None:
                broker.close()

    while True:
        await asyncio.sleep(interval_s)
        try:
            await anyio.to_thread.run_sync(once)
        except (IotrustError, OSError) as exc:  # keep sweeping; the next round retries
            _log.warning("rotation sweep failed: %s", exc)


def install(app: FastAPI, state: "AppState", require: Callable[[str], Callable[..., ApiToken]],
            *, sweep_interval_s: float = SWEEP_INTERVAL_S) -> rotation_svc.RotationService:
    """Add the routes to ``app`` and sweep while it runs."""
    service = rotation_svc.RotationService(state.db, state.clock, state.settings, state.secrets,
                                           broker=lambda: _broker(state))
    app.include_router(router(state, service, require))
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:  # noqa: ANN401 - Starlette's app type
        task = asyncio.create_task(_sweep_forever(state, sweep_interval_s))
        try:
            async with inner(a) as value:
                yield value
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.router.lifespan_context = lifespan
    return service
