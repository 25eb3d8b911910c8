"""The iotrust HTTP API: one ``create_app(settings)``, stateless over the registry.

Operator endpoints require a bearer token (``iotrust token create``) whose role grants the
permission the endpoint names; device endpoints (onboarding) authenticate devices by signatures.
One exception handler maps the error tree to a status code and ``{"error", "reason", "detail"}``.
The app keeps no state between requests beyond caches of immutable things (opened CA keys).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio.to_thread
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from iotrust import __version__
from iotrust.adapters.memory import limit_malloc_arenas
from iotrust.adapters.sql.store import Database
from iotrust.api import audit as audit_api
from iotrust.api import broker_hooks, dashboard, lifecycle, limits, onboarding, operators, updates
from iotrust.api import responses as api_responses
from iotrust.core import pki
from iotrust.core.onboarding.reasons import REASONS
from iotrust.core.records import ApiToken
from iotrust.errors import AuthError, InputError, IotrustError, NotFoundError, TrustError
from iotrust.ports import Clock, SystemClock
from iotrust.services import tokens
from iotrust.services.domain import Secrets, secrets_from_environment
from iotrust.services.settings import Settings


class AppState:
    """What request handlers share: the database, clock and secrets."""

    def __init__(self, settings: Settings, db: Database, clock: Clock, secrets: Secrets) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.secrets = secrets
        self.auth_limits = tokens.AuthLimits.from_environment()  # failed-token limit per source


def _status(exc: IotrustError) -> int:
    if isinstance(exc, AuthError) and exc.reason == "forbidden":
        return 403
    if exc.reason == "rate_limited":
        return 429
    if isinstance(exc, (TrustError, InputError)) and not isinstance(exc, AuthError) \
            and exc.reason in REASONS:
        return REASONS[exc.reason].http_status  # onboarding refusals (docs/protocol.md §7)
    return exc.http_status


def create_app(settings: Settings, *, clock: Clock | None = None,
               secrets: Secrets | None = None, db: Database | None = None) -> FastAPI:
    """Build the API for one trust domain."""
    app = FastAPI(title="iotrust", version=__version__,
                  description="Device lifecycle trust service: onboarding, registry, events.")
    state = AppState(settings, db or Database.open(settings.database_url), clock or SystemClock(),
                     secrets or Secrets())
    app.state.iotrust = state
    limits.install(app)  # every request body bounded (413 past IOTRUST_MAX_BODY_BYTES)

    @app.exception_handler(IotrustError)
    async def _iotrust_error(_: Request, exc: IotrustError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if _status(exc) == 401 else None  # noqa: PLR2004
        return JSONResponse(exc.as_dict(), status_code=_status(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": "InputError", "reason": "invalid_request",
                             "detail": f"{where}: {first.get('msg', 'invalid')}"[:300]},
                            status_code=422)

    def probe() -> None:
        with state.db.transaction(readonly=True) as tx:  # a probe never waits for the write lock
            tx.event_head()

    @app.get("/v1/health", tags=["service"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers and the registry is reachable."""
        # One hop to a worker thread for the registry read; a sync endpoint would take a second
        # one to serialise the reply.
        await anyio.to_thread.run_sync(probe)
        return {"status": "ok", "version": __version__}

    @app.get("/v1/crl/{ca_id}.crl", tags=["service"], response_class=Response)
    def crl(ca_id: str) -> Response:
        """The published CRL of an issuing CA (DER), as named in certificates."""
        if not ca_id.replace("-", "").isalnum():
            raise NotFoundError("no such CRL", reason="unknown_ca")
        path = state.settings.crl_dir / f"{ca_id}.crl.pem"
        if not path.exists():
            raise NotFoundError("no such CRL", reason="unknown_ca")
        crl_obj = pki.load_crl(path.read_bytes())
        return Response(crl_obj.public_bytes(serialization.Encoding.DER),
                        media_type="application/pkix-crl")

    # The device routes first: requests are matched against routes in order, and onboarding is
    # the hot path (a device request then skips matching every operator route).
    onboarding.install(app, state)
    app.include_router(operators.router(state, require))
    lifecycle.install(app, state, require)
    app.include_router(broker_hooks.router(state,
                                           secret=broker_hooks.hook_secret_from_environment()))
    app.include_router(updates.router(state, require))
    app.include_router(audit_api.router(state, require))
    dashboard.install(app, state)
    api_responses.install(app)  # every operation's error statuses and body in the OpenAPI
    return app


def require(permission: str) -> Callable[..., ApiToken]:
    """A dependency: the request's bearer token, authorised for ``permission``."""

    def dependency(request: Request) -> ApiToken:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise AuthError("a valid operator token is required", reason="unauthenticated")
        state: AppState = request.app.state.iotrust
        source = request.client.host if request.client else "unknown"
        token = tokens.authenticate_request(state.db, state.clock, value.strip(), source=source,
                                            limits=state.auth_limits)
        tokens.authorize(token, permission)
        return token

    return dependency


def app_from_environment() -> FastAPI:
    """The uvicorn factory used by ``iotrust serve``: settings and secrets from the environment."""
    limit_malloc_arenas()  # before the thread pool starts (see iotrust.adapters.memory)
    settings = Settings.from_environment()
    return create_app(settings, secrets=secrets_from_environment(settings))

