"""The fleet dashboard at ``/ui/``: server-rendered pages behind the operator tokens and roles.

An operator signs in with an API token (``iotrust token create``); the dashboard checks it with
:func:`iotrust.services.tokens.authenticate_request` (failed sign-ins count against the same
per-address limit as the API's) and sets a session cookie that holds the token's name,
an expiry and an HMAC (:mod:`iotrust.api.dashboard_session`), never the token. Every request
re-reads the token row, so revoking the token ends its sessions. Cookies are HttpOnly,
SameSite=Strict, and ``Secure`` with the ``__Host-`` prefix when the request came over https (or
``IOTRUST_UI_SECURE_COOKIES=1`` says a TLS proxy is in front). Every state-changing form carries
a synchronizer CSRF token tied to the session; a POST with a foreign ``Origin`` is refused too.
Auditors (``read`` only) see no action buttons and are refused on every action.

Pages: fleet overview (one ``GROUP BY`` over model and state), devices (server-side filters,
keyset pages), device (identity, credentials with expiry, assigned and effective policy, last
seen, events; quarantine/release/retire behind a confirmation page), live events (refusals
highlighted; ``/ui/events/feed?after=SEQ`` polled by ``static/dashboard.js``), and rollouts or
audit findings only when those services are installed. Lifecycle actions call the same services
as the HTTP API, broker effects included.

This module holds no state between requests beyond the cached templates, static files and the
session key, and it does not decide anything the services do not.
"""

import importlib.util
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Final
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from iotrust import __version__
from iotrust.adapters.mqtt.mosquitto import MosquittoBroker
from iotrust.adapters.sql.fleetview import DeviceFilter, FleetViewTx
from iotrust.api.dashboard_session import Session, SessionKeys, load_or_create_secret
from iotrust.core.ids import DEVICE_ID_RE, SLUG_RE
from iotrust.core.lifecycle import CredentialState, DeviceState, RetirementReason
from iotrust.core.policy import effective_policy
from iotrust.core.records import ApiToken, EventRow
from iotrust.errors import AuthError, IotrustError, NotFoundError
from iotrust.services import broker as broker_svc
from iotrust.services import policies, tokens

if TYPE_CHECKING:
    from iotrust.api.app import AppState

PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 200
EVENTS_SHOWN: Final = 100
FEED_LIMIT: Final = 200
#: A refusals-only view looks this far back in the log at most (bounded work on a huge log).
REFUSAL_WINDOW: Final = 50_000
EXPIRY_WARNING: Final = timedelta(days=7)
AUDIT_RUNS_SHOWN: Final = 30
DATA_SHOWN: Final = 300
SECURE_ENV: Final = "IOTRUST_UI_SECURE_COOKIES"
ACTIONS: Final = ("quarantine", "release", "retire")
_QUARANTINE_REASON: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # as the HTTP API's
_STATIC: Final = {"dashboard.css": "text/css; charset=utf-8",
                  "dashboard.js": "text/javascript; charset=utf-8"}
_LIVE_CREDENTIALS: Final = (CredentialState.ISSUED, CredentialState.ACTIVE,
                            CredentialState.SUPERSEDED)
_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class UiRefusal(Exception):  # noqa: N818 - a refusal page, not a programming error
    """Stop handling a dashboard request: show an error page, or redirect (``location``)."""

    def __init__(self, status: int, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.location = location

    @classmethod
    def of(cls, exc: IotrustError) -> "UiRefusal":
        """The page for an error from the services."""
        status = 403 if isinstance(exc, AuthError) and exc.reason == "forbidden" \
            else exc.http_status
        return cls(status, f"{exc} ({exc.reason})")


@dataclass(frozen=True, slots=True)
class Operator:
    """The signed-in operator of a request."""

    token: ApiToken
    session: Session
    csrf: str

    @property
    def can_write(self) -> bool:
        """Whether the role may take lifecycle actions."""
        return "write" in tokens.PERMISSIONS.get(self.token.role, frozenset())

    @property
    def actor(self) -> str:
        """How the event log names this operator's actions."""
        return f"{self.token.name}@ui"


def _is_refusal(kind: str) -> bool:
    return "refused" in kind or kind.startswith("zombie.")


def _event_view(e: EventRow) -> dict[str, Any]:
    data = e.data if len(e.data) <= DATA_SHOWN else e.data[:DATA_SHOWN] + "…"
    return {"seq": e.seq, "at": e.at.strftime("%Y-%m-%d %H:%M:%S"), "kind": e.kind,
            "actor": e.actor, "device_id": e.device_id, "reason": e.reason, "data": data,
            "refusal": _is_refusal(e.kind)}


def _slug_or_none(value: str | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not SLUG_RE.fullmatch(value):
        raise UiRefusal(400, f"not a valid {what}")
    return value


def _safe_next(value: str | None) -> str:
    """Where to go after login: a dashboard path on this site, else the overview."""
    if not value or not value.startswith("/ui/") or "\\" in value or len(value) > 512:  # noqa: PLR2004
        return "/ui/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/ui/"
    return value


class _Dashboard:
    """Templates, static files, session keys and the request helpers shared by the routes."""

    def __init__(self, state: "AppState") -> None:
        self.state = state
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("iotrust.api", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True)
        self.static = {name: resources.files("iotrust.api").joinpath("static", name).read_bytes()
                       for name in _STATIC}
        self.force_secure = os.environ.get(SECURE_ENV, "").lower() in ("1", "true", "yes")
        self.has_rollouts = importlib.util.find_spec("iotrust.services.rollouts") is not None
        self.has_audit = importlib.util.find_spec("iotrust.services.audit") is not None
        self._keys: SessionKeys | None = None

    # -- keys, cookies, time -----------------------------------------------------------------

    @property
    def keys(self) -> SessionKeys:
        if self._keys is None:
            self._keys = SessionKeys(load_or_create_secret(self.state.settings.data_dir))
        return self._keys

    def secure(self, request: Request) -> bool:
        return self.force_secure or request.url.scheme == "https"

    def cookie_names(self, request: Request) -> tuple[str, str]:
        """(session cookie, pre-login cookie) names for this request's transport."""
        if self.secure(request):
            return "__Host-iotrust_session", "__Host-iotrust_login"
        return "iotrust_session", "iotrust_login"

    def set_cookie(self, request: Request, response: Response, name: str, value: str, *,
                   max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/",
                            secure=self.secure(request), httponly=True, samesite="strict")

    def now(self) -> int:
        return int(self.state.clock.now().timestamp())

    # -- who is asking -----------------------------------------------------------------------

    def operator(self, request: Request) -> Operator | None:
        """The request's operator, if its session is valid and its token live."""
        session = SessionKeys.parse(request.cookies.get(self.cookie_names(request)[0]))
        if session is None:
            return None
        with self.state.db.transaction(readonly=True) as tx:
            token = FleetViewTx(tx).token_by_name(session.token_name)
        if token is None or token.revoked_at is not None:
            return None
        if not self.keys.verify(session, token.token_sha256, now=self.now()):
            return None
        if "read" not in tokens.PERMISSIONS.get(token.role, frozenset()):
            return None
        return Operator(token=token, session=session, csrf=self.keys.csrf_token(session))

    def check_post(self, request: Request, csrf: str, *, write: bool = True) -> Operator:
        """The operator of a state-changing request: session, same origin, CSRF, role."""
        origin = request.headers.get("origin")
        if origin is not None and origin != "null" and \
                urlsplit(origin).netloc != request.headers.get("host", ""):
            raise UiRefusal(403, "cross-origin form submission refused")
        who = self.operator(request)
        if who is None:
            raise UiRefusal(403, "sign in first: no valid dashboard session")
        if not self.keys.check_csrf(who.session, csrf):
            raise UiRefusal(403, "the form's CSRF token is missing or wrong; reload the page")
        if write and not who.can_write:
            raise UiRefusal(403, f"role {who.token.role} may not change devices")
        return who

    # -- responses ---------------------------------------------------------------------------

    def page(self, template: str, who: Operator | None, *, status: int = 200,
             **context: Any) -> HTMLResponse:  # noqa: ANN401 - template values
        body = self.env.get_template(template).render(
            user=who, version=__version__, has_rollouts=self.has_rollouts,
            has_audit=self.has_audit, **context)
        return HTMLResponse(body, status_code=status, headers=_HEADERS)

    @staticmethod
    def redirect(location: str) -> RedirectResponse:
        return RedirectResponse(location, status_code=303, headers=_HEADERS)

    @contextmanager
    def broker(self) -> Iterator[MosquittoBroker | None]:
        broker = broker_svc.open_broker(self.state.settings, self.state.clock)
        try:
            yield broker
        finally:
            if broker is not None:
                broker.close()


def _ui(request: Request) -> _Dashboard:
    ui: _Dashboard = request.app.state.iotrust_ui
    return ui


def viewer(request: Request) -> Operator:
    """A dependency: the signed-in operator, or a redirect to the login page."""
    who = _ui(request).operator(request)
    if who is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise UiRefusal(303, "sign in", location="/ui/login?" + urlencode({"next": target}))
    return who


def writer(request: Request) -> Operator:
    """A dependency: the signed-in operator, whose role may take lifecycle actions."""
    who = viewer(request)
    if not who.can_write:
        raise UiRefusal(403, f"role {who.token.role} may not change devices")
    return who


Viewer = Annotated[Operator, Depends(viewer)]
Writer = Annotated[Operator, Depends(writer)]
CsrfField = Annotated[str, Form(max_length=200)]


def install(app: FastAPI, state: "AppState") -> None:
    """Add the dashboard routes (and their error page) to ``app``."""
    ui = _Dashboard(state)
    app.state.iotrust_ui = ui

    @app.exception_handler(UiRefusal)
    async def _refusal(request: Request, exc: UiRefusal) -> Response:
        if exc.location is not None:
            return ui.redirect(exc.location)
        if request.url.path.startswith("/ui/events/feed"):
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=_HEADERS)
        return ui.page("error.html", None, status=exc.status, message=exc.message)

    app.include_router(_router(ui))


def _router(ui: _Dashboard) -> APIRouter:  # noqa: C901, PLR0915 - one closure per route
    r = APIRouter(prefix="/ui", include_in_schema=False)
    state = ui.state

    # -- static files and sign-in ------------------------------------------------------------

    @r.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in _STATIC:
            raise UiRefusal(404, "no such file")
        return Response(ui.static[name], media_type=_STATIC[name],
                        headers={"Cache-Control": "public, max-age=3600",
                                 "X-Content-Type-Options": "nosniff"})

    @r.get("")
    def root() -> Response:
        return ui.redirect("/ui/")

    @r.get("/login")
    def login_form(request: Request, next_: Annotated[str | None, Query(alias="next")] = None,
                   ) -> Response:
        if ui.operator(request) is not None:
            return ui.redirect(_safe_next(next_))
        return _login_page(request, next_=_safe_next(next_))

    def _login_page(request: Request, *, next_: str, error: str | None = None,
                    status: int = 200) -> Response:
        login_cookie = ui.keys.login_nonce(now=ui.now())
        response = ui.page("login.html", None, status=status, next=next_, error=error,
                           csrf=ui.keys.login_csrf(login_cookie))
        ui.set_cookie(request, response, ui.cookie_names(request)[1], login_cookie,
                      max_age=15 * 60)
        return response

    @r.post("/login")
    def login(request: Request, token: Annotated[str, Form(max_length=200)] = "",
              csrf: CsrfField = "", next_: Annotated[str, Form(alias="next")] = "/ui/",
              ) -> Response:
        session_name, login_name = ui.cookie_names(request)
        if not ui.keys.check_login_csrf(request.cookies.get(login_name), csrf, now=ui.now()):
            raise UiRefusal(403, "the login form expired or did not come from this site; "
                                 "reload the login page")
        source = request.client.host if request.client else "unknown"
        try:
            record = tokens.authenticate_request(state.db, state.clock, token.strip(),
                                                 source=source, limits=state.auth_limits)
            tokens.authorize(record, "read")
        except AuthError as exc:
            if exc.reason == "rate_limited":
                raise UiRefusal(429, "too many failed sign-ins from this address; "
                                     "try again later") from None
            return _login_page(request, next_=_safe_next(next_), status=401,
                               error="That token was not accepted.")
        response = ui.redirect(_safe_next(next_))
        value = ui.keys.issue(record.name, record.token_sha256, now=ui.now())
        ui.set_cookie(request, response, session_name, value, max_age=8 * 3600)
        response.delete_cookie(login_name, path="/", secure=ui.secure(request), httponly=True,
                               samesite="strict")
        return response

    @r.post("/logout")
    def logout(request: Request, csrf: CsrfField = "") -> Response:
        ui.check_post(request, csrf, write=False)
        response = ui.redirect("/ui/login")
        response.delete_cookie(ui.cookie_names(request)[0], path="/", secure=ui.secure(request),
                               httponly=True, samesite="strict")
        return response

    # -- overview and devices ----------------------------------------------------------------

    @r.get("/")
    def overview(who: Viewer) -> Response:
        with state.db.transaction(readonly=True) as tx:
            fv = FleetViewTx(tx)
            rows = fv.counts_by_model_and_state()
            makers = fv.model_manufacturers()
            per_manufacturer = fv.counts_by_manufacturer()
        states = list(DeviceState)
        totals = dict.fromkeys(states, 0)
        models: dict[str | None, dict[DeviceState, int]] = {}
        for model, st, n in rows:
            totals[st] += n
            models.setdefault(model, dict.fromkeys(states, 0))[st] += n
        ordered = sorted(models.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
        return ui.page("overview.html", who, states=states, totals=totals,
                       total=sum(totals.values()), models=ordered, makers=makers,
                       manufacturers=sorted(per_manufacturer.items()))

    @r.get("/devices")
    def device_list(  # noqa: PLR0917 - one query parameter per filter
            who: Viewer,
            state_: Annotated[str | None, Query(alias="state", max_length=16)] = None,
            manufacturer: Annotated[str | None, Query(max_length=64)] = None,
            model: Annotated[str | None, Query(max_length=64)] = None,
            q: Annotated[str | None, Query(max_length=64)] = None,
            after: Annotated[str | None, Query(max_length=64)] = None,
            limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE) -> Response:
        try:
            st = DeviceState(state_) if state_ else None
        except ValueError:
            raise UiRefusal(400, "unknown lifecycle state") from None
        if after is not None and after != "" and not DEVICE_ID_RE.fullmatch(after):
            raise UiRefusal(400, "not a device id")
        query = (q or "").strip() or None
        where = DeviceFilter(state=st, manufacturer=_slug_or_none(manufacturer, "manufacturer"),
                             model=_slug_or_none(model, "model"), query=query)
        with state.db.transaction(readonly=True) as tx:
            fv = FleetViewTx(tx)
            rows = fv.devices_page(where, limit=limit + 1, after_id=after or None)
            manufacturer_names = fv.manufacturer_names()
            model_names = sorted(fv.model_manufacturers())
        more = len(rows) > limit
        rows = rows[:limit]
        filters = {k: v for k, v in (("state", st.value if st else None),
                                     ("manufacturer", where.manufacturer),
                                     ("model", where.model), ("q", query)) if v}
        if limit != PAGE_SIZE:
            filters["limit"] = str(limit)
        next_url = ("/ui/devices?" + urlencode({**filters, "after": rows[-1].id})
                    if more and rows else None)
        first_url = "/ui/devices?" + urlencode(filters) if after else None
        return ui.page("devices.html", who, devices=rows, filters=filters, states=list(DeviceState),
                       manufacturer_names=manufacturer_names, model_names=model_names,
                       next_url=next_url, first_url=first_url, state=st, query=query or "",
                       manufacturer=where.manufacturer or "", model=where.model or "")

    def _device_id(device_id: str) -> str:
        if not DEVICE_ID_RE.fullmatch(device_id):
            raise UiRefusal(404, "no such device")
        return device_id

    @r.get("/devices/{device_id}")
    def device_page(who: Viewer, device_id: str,
                    done: Annotated[str | None, Query(max_length=16)] = None) -> Response:
        device_id = _device_id(device_id)
        now = state.clock.now()
        try:
            with state.db.transaction(readonly=True) as tx:
                device = tx.get_device(device_id)
                model = tx.get_model(device.model) if device.model else None
                credentials = tx.list_credentials(device_id=device_id)
                last_seen = tx.get_last_seen(device_id)
                groups = tx.groups_of_device(device_id)
                events = FleetViewTx(tx).recent_events(limit=EVENTS_SHOWN, device_id=device_id)
            assigned = policies.resolve(state.db, device_id)
        except IotrustError as exc:
            raise UiRefusal.of(exc) from None
        effective = effective_policy(device.state, assigned)
        creds = [{"c": c, "expired": c.not_after <= now,
                  "expiring": now < c.not_after <= now + EXPIRY_WARNING,
                  "live": c.state in _LIVE_CREDENTIALS} for c in credentials]
        actions = [a for a, ok in (("quarantine", device.state is DeviceState.ACTIVE),
                                   ("release", device.state is DeviceState.QUARANTINED),
                                   ("retire", device.state is not DeviceState.RETIRED)) if ok]
        return ui.page("device.html", who, device=device, model=model, credentials=creds,
                       last_seen=last_seen, groups=groups, assigned=assigned,
                       effective=effective, events=[_event_view(e) for e in events],
                       actions=actions if who.can_write else [],
                       done=done if done in ACTIONS else None)

    def _action(action: str) -> str:
        if action not in ACTIONS:
            raise UiRefusal(404, "no such action")
        return action

    @r.get("/devices/{device_id}/{action}")
    def confirm_action(who: Writer, device_id: str, action: str) -> Response:
        device_id, action = _device_id(device_id), _action(action)
        try:
            with state.db.transaction(readonly=True) as tx:
                device = tx.get_device(device_id)
        except IotrustError as exc:
            raise UiRefusal.of(exc) from None
        return ui.page("confirm.html", who, device=device, action=action,
                       reasons=[r.value for r in RetirementReason])

    @r.post("/devices/{device_id}/{action}")
    def take_action(request: Request, device_id: str, action: str, csrf: CsrfField = "",
                    reason: Annotated[str, Form(max_length=64)] = "") -> Response:
        who = ui.check_post(request, csrf)
        device_id, action = _device_id(device_id), _action(action)
        try:
            with ui.broker() as broker:
                if action == "quarantine":
                    why = reason or "operator"
                    if not _QUARANTINE_REASON.fullmatch(why):
                        raise UiRefusal(400, "a quarantine reason is lowercase letters, digits "
                                             "and underscores")
                    broker_svc.quarantine(state.db, state.clock, broker, device_id,
                                          actor=who.actor, reason=why)
                elif action == "release":
                    broker_svc.release(state.db, state.clock, broker, device_id,
                                       actor=who.actor)
                else:
                    try:
                        retirement = RetirementReason(reason)
                    except ValueError:
                        raise UiRefusal(400, "choose why the device is retired") from None
                    broker_svc.retire(state.db, state.settings, state.secrets, state.clock,
                                      device_id, broker=broker, reason=retirement,
                                      actor=who.actor)
        except IotrustError as exc:
            raise UiRefusal.of(exc) from None
        return ui.redirect(f"/ui/devices/{device_id}?done={action}")

    # -- events ------------------------------------------------------------------------------

    def _events(refusals: bool) -> tuple[list[EventRow], int]:
        with state.db.transaction(readonly=True) as tx:
            head = tx.event_head()
            last = head.seq if head is not None else 0
            fv = FleetViewTx(tx)
            rows = fv.recent_events(limit=EVENTS_SHOWN, refusals_only=refusals,
                                    after_seq=max(0, last - REFUSAL_WINDOW) if refusals else 0)
        return rows, last

    @r.get("/events")
    def events_page(who: Viewer, refusals: Annotated[bool, Query()] = False) -> Response:
        rows, last = _events(refusals)
        return ui.page("events.html", who, events=[_event_view(e) for e in rows], last=last,
                       refusals=refusals, window=REFUSAL_WINDOW)

    @r.get("/events/feed")
    def events_feed(request: Request, after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                    refusals: Annotated[bool, Query()] = False) -> Response:
        if ui.operator(request) is None:
            return JSONResponse({"error": "sign in"}, status_code=401, headers=_HEADERS)
        with state.db.transaction(readonly=True) as tx:
            rows = FleetViewTx(tx).events_after(after, limit=FEED_LIMIT, refusals_only=refusals)
            head = tx.event_head()
        last = max([after, *(e.seq for e in rows)]) if rows else after
        if not refusals and head is not None and len(rows) < FEED_LIMIT:
            last = max(last, head.seq)
        return JSONResponse({"events": [_event_view(e) for e in rows], "last": last},
                            headers=_HEADERS)

    # -- optional pages ----------------------------------------------------------------------

    if ui.has_audit:
        _audit_routes(r, ui)

    if ui.has_rollouts:
        _rollout_routes(r, ui)

    return r


def _audit_routes(r: APIRouter, ui: _Dashboard) -> None:
    """The audit page (only when the audit service is installed): past runs and suppressions.

    Findings themselves come from running the audit (``iotrust audit``, on a schedule); the page
    shows what the recorded runs found and what operators accepted, and does not run checks.
    """
    from iotrust.core import audit_checks  # noqa: PLC0415 - optional service
    from iotrust.services import audit  # noqa: PLC0415 - optional service

    state = ui.state

    @r.get("/audit")
    def audit_page(who: Viewer) -> Response:
        try:
            runs = list(reversed(audit.audit_history(state.db, limit=AUDIT_RUNS_SHOWN)))
            suppressions = audit.list_suppressions(state.db)
        except IotrustError as exc:
            raise UiRefusal.of(exc) from None
        return ui.page("audit.html", who, runs=runs, suppressions=suppressions,
                       now=state.clock.now(), checks=[c.id for c in audit_checks.ALL_CHECKS],
                       mitigations=audit.MITIGATIONS, done=None)

    @r.post("/audit/suppress")
    def suppress(request: Request, csrf: CsrfField = "",
                 check: Annotated[str, Form(max_length=64)] = "",
                 target: Annotated[str, Form(max_length=200)] = "",
                 reason: Annotated[str, Form(max_length=200)] = "") -> Response:
        who = ui.check_post(request, csrf)
        if not reason.strip():
            raise UiRefusal(400, "say why the finding is accepted")
        try:
            audit.suppress(state.db, state.clock, check, target.strip(), reason=reason.strip(),
                           actor=who.actor)
        except IotrustError as exc:
            raise UiRefusal.of(exc) from None
        return ui.redirect("/ui/audit")

    @r.post("/audit/mitigate")
    def mitigate(request: Request, csrf: CsrfField = "",
                 check: Annotated[str, Form(max_length=64)] = "",
                 target: Annotated[str, Form(max_length=200)] = "",
                 action: Annotated[str, Form(max_length=32)] = "") -> Response:
        who = ui.check_post(request, csrf)
        try:
            with ui.broker() as broker:
                audit.mitigate(state.db, state.clock, check, target.strip(), action=action,
                               actor=who.actor, broker=broker)
        except IotrustError as exc:
            raise UiRefusal.of(exc) from None
        return ui.redirect("/ui/audit")


def _rollout_routes(r: APIRouter, ui: _Dashboard) -> None:
    """The rollouts list and its abort action (only when the rollouts service is installed)."""
    from iotrust.services import rollouts  # noqa: PLC0415 - optional service

    state = ui.state

    @r.get("/rollouts")
    def rollout_list(who: Viewer) -> Response:
        try:
            views = [v.as_dict() for v in rollouts.list_rollouts(state.db)]
        except IotrustError as exc:
            raise UiRefusal.of(exc) from None
        return ui.page("rollouts.html", who, rollouts=views)

    @r.get("/rollouts/{rollout_id}/abort")
    def confirm_abort(who: Writer, rollout_id: str) -> Response:
        try:
            view = rollouts.status(state.db, rollout_id[:64]).as_dict()
        except IotrustError as exc:
            raise UiRefusal.of(exc) from None
        return ui.page("confirm_abort.html", who, rollout=view)

    @r.post("/rollouts/{rollout_id}/abort")
    def abort(request: Request, rollout_id: str,
              csrf: CsrfField = "") -> Response:
        who = ui.check_post(request, csrf)
        try:
            rollouts.act(state.db, state.settings, state.secrets, state.clock, rollout_id[:64],
                         "abort", actor=who.actor)
        except NotFoundError:
            raise UiRefusal(404, "no such rollout") from None
        except IotrustError as exc:
            raise UiRefusal.of(exc) from None
        return ui.redirect("/ui/rollouts")


__all__ = ["Operator", "UiRefusal", "install"]
