"""EMQX 5 HTTP authentication and authorization hooks, answered by the same ``decide`` (§7).

``POST /v1/broker/emqx/authn`` and ``POST /v1/broker/emqx/authz`` speak the request and response
shapes of EMQX 5's HTTP authenticator and HTTP authorizer (see ``docs/deploy-cluster.md``):

- authz body (configured in EMQX): ``{"clientid": "${clientid}", "username": "${username}",
  "topic": "${topic}", "action": "${action}", "peerhost": "${peerhost}"}``; answer: HTTP 200 with
  ``{"result": "allow"}`` or ``{"result": "deny"}``. Never ``ignore``, never an error status:
  EMQX treats any status other than 200/204 (and a malformed body) as *ignore*, which falls
  through to the next authorizer or ``no_match``; so a malformed request, a missing secret or a
  database failure is answered ``deny`` with HTTP 200.
- authn body: ``{"clientid": "${clientid}", "username": "${username}",
  "peerhost": "${peerhost}"}`` (optionally ``"cert_common_name": "${cert_common_name}"``); the
  username is the device certificate's CN (EMQX ``peer_cert_as_username = cn``). Allowed only for
  a device that exists and is ACTIVE or QUARANTINED, connecting with its device id as client id
  (another client id could take over a device's session): ``{"result": "allow",
  "is_superuser": false}``, else ``{"result": "deny"}``.

These endpoints are for the broker, not for operators or devices: every request must carry the
shared secret configured at startup (``IOTRUST_BROKER_HOOK_SECRET`` or the file named by
``IOTRUST_BROKER_HOOK_SECRET_FILE``) in the ``x-iotrust-broker-secret`` header, compared in
constant time. Without a configured secret the hooks deny everything.

This module parses and answers; the decision is :func:`iotrust.services.policies.decide_for`.
It does not kick sessions or publish CRLs (the broker adapter and the CRL endpoint do).
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from iotrust.core.policy import Action
from iotrust.errors import InputError, IotrustError
from iotrust.services import policies

if TYPE_CHECKING:
    from iotrust.api.app import AppState

__all__ = [
    "HOOK_SECRET_ENV",
    "HOOK_SECRET_FILE_ENV",
    "HOOK_SECRET_HEADER",
    "MIN_SECRET_BYTES",
    "hook_secret_from_environment",
    "router",
]

HOOK_SECRET_ENV: Final = "IOTRUST_BROKER_HOOK_SECRET"  # noqa: S105 - a variable name
HOOK_SECRET_FILE_ENV: Final = "IOTRUST_BROKER_HOOK_SECRET_FILE"  # noqa: S105 - a variable name
HOOK_SECRET_HEADER: Final = "x-iotrust-broker-secret"  # noqa: S105 - a header name
MIN_SECRET_BYTES: Final = 16
MAX_BODY_BYTES: Final = 8 * 1024
MAX_FIELD_CHARS: Final = 4096

_ALLOW: Final = b'{"result":"allow"}'
_ALLOW_LOGIN: Final = b'{"result":"allow","is_superuser":false}'
_DENY: Final = b'{"result":"deny"}'
_ACTIONS: Final = {"publish": Action.PUBLISH, "subscribe": Action.SUBSCRIBE}
_ACTOR: Final = "emqx@broker"


def hook_secret_from_environment(env: dict[str, str] | None = None) -> bytes | None:
    """The broker-hook secret from the environment (``None`` if not configured).

    ``InputError(reason="weak_broker_hook_secret")`` if it is shorter than
    :data:`MIN_SECRET_BYTES`; ``InputError(reason="broker_hook_secret_unreadable")`` if the
    named file cannot be read. The secret itself never appears in a message.
    """
    source = os.environ if env is None else env
    value = source.get(HOOK_SECRET_ENV)
    path = source.get(HOOK_SECRET_FILE_ENV)
    if value is None and path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise InputError("cannot read the broker-hook secret file",
                             reason="broker_hook_secret_unreadable") from None
    if not value:
        return None
    secret = value.encode("utf-8")
    if len(secret) < MIN_SECRET_BYTES:
        raise InputError(f"the broker-hook secret must be at least {MIN_SECRET_BYTES} bytes",
                         reason="weak_broker_hook_secret")
    return secret


def _json(content: bytes) -> Response:
    return Response(content=content, media_type="application/json")


def _authorised(request: Request, secret: bytes | None) -> bool:
    if secret is None:
        return False
    given = request.headers.get(HOOK_SECRET_HEADER)
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret)


async def _fields(request: Request, required: tuple[str, ...]) -> dict[str, str] | None:
    """The JSON object's string fields, or ``None`` for anything malformed or oversized."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    out = {key: value for key, value in data.items()
           if isinstance(value, str) and len(value) <= MAX_FIELD_CHARS}
    if any(key not in out for key in required):
        return None
    return out


async def _authz(state: AppState, secret: bytes | None, request: Request) -> bytes:
    if not _authorised(request, secret):
        return _DENY
    fields = await _fields(request, ("username", "topic", "action"))
    if fields is None:
        return _DENY
    username, action = fields["username"], _ACTIONS.get(fields["action"])
    if action is None or fields.get("clientid", username) != username:
        return _DENY
    try:
        decision = await run_in_threadpool(policies.decide_for, state.db, username, action,
                                           fields["topic"])
    except IotrustError:  # the registry is unavailable: deny, never "ignore"
        return _DENY
    return _ALLOW if decision.allowed else _DENY


async def _authn(state: AppState, secret: bytes | None, request: Request) -> bytes:
    if not _authorised(request, secret):
        return _DENY
    fields = await _fields(request, ("username",))
    if fields is None:
        return _DENY
    username = fields["username"]
    common_name = fields.get("cert_common_name") or username
    if fields.get("clientid", username) != username or common_name != username:
        return _DENY
    try:
        decision = await run_in_threadpool(
            policies.broker_login, state.db, state.clock, username,
            source=fields.get("peerhost", "")[:200], actor=_ACTOR)
    except IotrustError:
        return _DENY
    return _ALLOW_LOGIN if decision.allowed else _DENY


def router(state: AppState, *, secret: bytes | None) -> APIRouter:
    """The broker-hook routes over ``state``'s registry, guarded by ``secret``."""
    api = APIRouter(prefix="/v1/broker/emqx", tags=["broker"])

    @api.post("/authz", response_class=Response, responses={200: {
        "description": '{"result": "allow"} or {"result": "deny"}'}})
    async def emqx_authz(request: Request) -> Response:
        """EMQX 5 HTTP authorization: may this client publish/subscribe this topic?"""
        return _json(await _authz(state, secret, request))

    @api.post("/authn", response_class=Response, responses={200: {
        "description": '{"result": "allow", "is_superuser": false} or {"result": "deny"}'}})
    async def emqx_authn(request: Request) -> Response:
        """EMQX 5 HTTP authentication: may this certificate identity connect?"""
        return _json(await _authn(state, secret, request))

    return api
