"""Device onboarding endpoints: ``POST /v1/onboarding/{hello,attest,confirm}`` (docs/protocol.md).

Devices authenticate by signatures, not tokens. Handlers read the body (never more than the
message's size bound plus one byte, so an oversized body is refused without being buffered),
hand the bytes and the client address to :class:`~iotrust.services.onboarding.OnboardingService`
in a worker thread, and write the reply's canonical JSON. Refusals propagate as the error tree to
the app's one exception handler (403 / 422 / 429 with ``{"error", "reason", "detail"}``).

The app also runs :func:`~iotrust.services.onboarding.expire_unconfirmed` periodically in every
worker (the conditional updates make concurrent sweeps safe), and, when a broker is configured
for the data folder, re-applies the broker's rules shortly after devices confirm (a confirmed
device leaves the deny-all block of EXPECTED devices). Resyncs are coalesced: at most one per
:data:`BROKER_RESYNC_S` however many devices confirm, since each is a broker reload. No session
state lives here.

On SQLite, each worker runs at most one onboarding call at a time (:class:`_Calls`): every call
writes, SQLite writers take one database lock in turn (``BEGIN IMMEDIATE``, after the writer
queue of :mod:`~iotrust.adapters.sql.writerlock`), and Python runs one thread at a time anyway,
so a second concurrent call per process could only wait for that lock and add thread switches
(the CPU work each step does before its write transaction, ``docs/adr/0006``, would not run any
faster either). Queued requests wait on the event loop instead, in arrival order. On PostgreSQL
(row locks, network round trips that release the interpreter) calls share the default thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio.to_thread
from fastapi import APIRouter, FastAPI, Request, Response

from iotrust.api.device_http import read_body, source
from iotrust.api.routes import RequestRoute
from iotrust.core.onboarding.messages import AttestRequest, ConfirmRequest, HelloRequest
from iotrust.errors import IotrustError
from iotrust.services import broker as broker_svc
from iotrust.services.onboarding import OnboardingService

if TYPE_CHECKING:
    from iotrust.api.app import AppState

__all__ = ["SWEEP_INTERVAL_S", "install"]

SWEEP_INTERVAL_S: Final = 30.0
BROKER_RESYNC_S: Final = 0.5
_JSON: Final = "application/json"
_log = logging.getLogger(__name__)
_T = TypeVar("_T")

_REFUSALS: Final[dict[int | str, dict[str, Any]]] = {
    403: {"description": "Refused; `reason` says why (docs/protocol.md §7)."},
    422: {"description": "Malformed message (`malformed_request`)."},
    429: {"description": "Too many attempts (`rate_limited`)."},
}


async def _in_thread(fn: Callable[[], _T]) -> _T:
    return await anyio.to_thread.run_sync(fn)


class _Calls:
    """Runs the service's calls in worker threads, at most ``limit`` at once per event loop.

    ``limit=None`` means the default thread pool's own bound. A limiter belongs to the event loop
    it was made in (a test client may run the app on several loops in turn): one per loop.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                  anyio.CapacityLimiter] = (
            weakref.WeakKeyDictionary())

    @classmethod
    def for_dialect(cls, dialect: str) -> _Calls:
        """One call at a time per worker on SQLite (see the module doc), else the default."""
        return cls(1 if dialect == "sqlite" else None)

    async def run(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` in a worker thread, once a slot is free."""
        if self.limit is None:
            return await _in_thread(fn)
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None:
            limiter = self._limiters[loop] = anyio.CapacityLimiter(self.limit)
        return await anyio.to_thread.run_sync(fn, limiter=limiter)


class _Resync:
    """A wake-up for the broker resync task, bound to the event loop the app runs in."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None

    def request(self) -> None:
        if self.event is not None:
            self.event.set()


def router(service: OnboardingService, resync: _Resync | None = None,
           calls: _Calls | None = None) -> APIRouter:
    """The three onboarding routes over ``service``; ``resync`` is woken after each confirm.

    ``calls`` bounds how many service calls run at once (default: the thread pool's bound).
    """
    resync = resync or _Resync()
    calls = calls or _Calls(None)
    # RequestRoute: each handler takes the request and returns its Response, so FastAPI's
    # generic handler (dependencies, validation, serialisation) is skipped (iotrust.api.routes).
    r = APIRouter(prefix="/v1/onboarding", tags=["onboarding"], route_class=RequestRoute)

    @r.post("/hello", response_class=Response, responses=_REFUSALS)
    async def hello(request: Request) -> Response:
        """Step 1: serial, factory chain and device nonce → session, server nonce, voucher."""
        body = await read_body(request, HelloRequest.MAX_BYTES)
        reply = await calls.run(functools.partial(service.hello, body,
                                                  source=source(request)))
        return Response(reply.to_wire(), media_type=_JSON)

    @r.post("/attest", response_class=Response, responses=_REFUSALS)
    async def attest(request: Request) -> Response:
        """Step 2: CSR signed over the transcript by the factory key → operational credential."""
        body = await read_body(request, AttestRequest.MAX_BYTES)
        reply = await calls.run(functools.partial(service.attest, body,
                                                  source=source(request)))
        return Response(reply.to_wire(), media_type=_JSON)

    @r.post("/confirm", status_code=204, response_class=Response, responses=_REFUSALS)
    async def confirm(request: Request) -> Response:
        """Step 3: the new key signs the confirm transcript → the device is ACTIVE."""
        body = await read_body(request, ConfirmRequest.MAX_BYTES)
        await calls.run(functools.partial(service.confirm, body, source=source(request)))
        resync.request()
        return Response(status_code=204)

    return r


async def _resync_broker_forever(state: AppState, resync: _Resync) -> None:
    """Apply the registry's rules to the broker after confirmations, coalescing bursts."""
    pending = resync.event = asyncio.Event()  # created inside the loop that will wait on it
    while True:
        await pending.wait()
        await asyncio.sleep(BROKER_RESYNC_S)
        pending.clear()
        try:
            await _in_thread(functools.partial(broker_svc.sync_configured, state.db,
                                               state.settings, state.clock))
        except IotrustError as exc:  # the next confirmation (or `iotrust broker sync`) retries
            _log.warning("broker resync after onboarding failed: %s", exc.reason)


async def _sweep_forever(service: OnboardingService, calls: _Calls, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await calls.run(service.expire_unconfirmed)
        except IotrustError as exc:  # keep sweeping; the next round retries
            _log.warning("onboarding sweep failed: %s", exc.reason)


def install(app: FastAPI, state: AppState, *, sweep_interval_s: float = SWEEP_INTERVAL_S,
            ) -> OnboardingService:
    """Add the onboarding routes to ``app`` and sweep unconfirmed sessions while it runs."""
    service = OnboardingService(state.db, state.clock, state.settings, state.secrets)
    resync = _Resync()
    calls = _Calls.for_dialect(state.db.dialect)
    app.include_router(router(service, resync, calls))
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:  # noqa: ANN401 - Starlette's app type
        tasks = [asyncio.create_task(_sweep_forever(service, calls, sweep_interval_s)),
                 asyncio.create_task(_resync_broker_forever(state, resync))]
        try:
            async with inner(a) as value:
                yield value
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan
    return service
