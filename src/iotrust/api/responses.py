"""The error responses of every operation: one body for all of them, and their OpenAPI entries.

Every error the API returns has one body, ``{"error", "reason", "detail"}`` (:class:`ErrorBody`):
the app's exception handler for the error tree, its request-validation handler and the body limit
(:mod:`iotrust.api.limits`) all write it. FastAPI knows none of this: it documents only the success
status and, for operations with parameters, a 422 whose body is its own ``HTTPValidationError``.
So a client generated from the schema, or a fuzzer checking responses against it (schemathesis),
sees undocumented 401/404/413 responses and 422 bodies that do not match.

:func:`install` wraps ``app.openapi`` so that, once, after FastAPI generated the document, each
operation gets the statuses the edges can actually produce for it:

- operator operations (a bearer-token dependency from ``iotrust.api.app.require``): 401
  (``unauthenticated``), 403 (``forbidden``), 429 (``rate_limited``), and 409 for a POST
  (illegal transition, duplicate); they are also marked with the ``bearer`` security scheme;
- an operation with path parameters: 404;
- an operation with parameters or a body, or a POST: 422 (malformed request), replacing
  FastAPI's ``HTTPValidationError`` body with :class:`ErrorBody`;
- every POST: 413 (body over the limit);
- device POSTs (no token, authenticated by signatures): 403 (refusal reason) and 422;
- every operation but the broker hooks: 503 (the registry is unavailable).

The broker hooks answer every decision with 200 by design (see :mod:`iotrust.api.broker_hooks`);
only the body limit applies to them. Statuses an operation already declares keep their
description; they get the error body schema if they had none.

:func:`install` also gives the errors FastAPI and Starlette raise themselves (``HTTPException``:
an unknown path, a wrong method, a JSON body that is not UTF-8) the same body, so that no response
of the API has another error shape. FastAPI's 400 for an unparsable body becomes a 422
``invalid_request``, like every other malformed request. This module does not map the iotrust
error tree (the app's one handler does) and does not change any success response.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

__all__ = ["ErrorBody", "install"]

_TOKEN_DEPENDENCY: Final = "require.<locals>.dependency"  # noqa: S105 - a function name
_BODY_METHODS: Final = frozenset({"post", "put", "patch", "delete"})
_BROKER_TAG: Final = "broker"
_DESCRIPTIONS: Final[dict[str, str]] = {
    "401": "No valid operator token (`unauthenticated`).",
    "403": "Refused: the token's role lacks the permission, or a trust decision refused the "
           "device; `reason` says which.",
    "404": "No such resource (`not_found`, or a more specific reason).",
    "409": "Conflicts with the current state (illegal lifecycle transition, duplicate).",
    "413": "Request body larger than the configured limit (`too_large`).",
    "422": "Malformed request (`invalid_request`, `malformed_request` or a field's reason).",
    "429": "Too many attempts from this source (`rate_limited`).",
    "503": "The registry or another backend is unavailable.",
}
_ERROR_REF: Final = {"$ref": "#/components/schemas/ErrorBody"}
_HTTP_REASONS: Final[dict[int, str]] = {
    400: "invalid_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "too_large", 422: "invalid_request", 429: "rate_limited",
}
_HTTP_ERRORS: Final[dict[int, str]] = {401: "AuthError", 403: "AuthError", 404: "NotFoundError"}


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    reason: str
    detail: str


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's and Starlette's own ``HTTPException`` as an :class:`ErrorBody`."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    if status == 400:  # noqa: PLR2004 - FastAPI's "error parsing the body": a malformed request
        status = 422
    reason = _HTTP_REASONS.get(status, "http_error")
    headers = getattr(exc, "headers", None)
    error = _HTTP_ERRORS.get(status, "InputError" if status < 500 else "IotrustError")  # noqa: PLR2004
    body = ErrorBody(error=error, reason=reason, detail=str(detail)[:300])
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Document every operation's error responses and give HTTP errors the error body."""
    app.add_exception_handler(HTTPException, _http_error)
    generate = app.openapi
    done = False

    def openapi() -> dict[str, Any]:
        nonlocal done
        schema = generate()
        if not done:
            _document(schema, dict(_route_index(app.routes)))
            done = True
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _route_index(routes: list[Any]) -> Iterator[tuple[tuple[str, str], APIRoute]]:
    """``(path, method) → APIRoute``, through included routers (FastAPI keeps them lazily)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _route_index(list(inner.routes))
        elif isinstance(route, APIRoute) and route.include_in_schema:
            for method in route.methods or ():
                yield (route.path_format, method.lower()), route


def _calls(route: APIRoute) -> Iterator[Callable[..., Any]]:
    stack = list(route.dependant.dependencies)
    while stack:
        dependant = stack.pop()
        if dependant.call is not None:
            yield dependant.call
        stack.extend(dependant.dependencies)


def _needs_token(route: APIRoute | None) -> bool:
    return route is not None and any(
        getattr(call, "__qualname__", "").endswith(_TOKEN_DEPENDENCY) for call in _calls(route))


def _statuses(method: str, operation: dict[str, Any], route: APIRoute | None) -> set[str]:
    params = operation.get("parameters", [])
    has_input = bool(params) or "requestBody" in operation
    is_post = method in _BODY_METHODS
    if _BROKER_TAG in operation.get("tags", ()):
        return {"413"} if is_post else set()
    out = {"503"}
    if any(p.get("in") == "path" for p in params):
        out.add("404")
    if has_input or is_post:
        out.add("422")
    if is_post:
        out.add("413")
    if _needs_token(route):
        out |= {"401", "403", "429"}
        if is_post:
            # an operator's body names registry objects (a model, a group, devices) that may
            # not exist: 404 as for a path parameter
            out |= {"404", "409"}
    elif is_post:
        out |= {"403", "422"}
    return out


def _document(schema: dict[str, Any], routes: dict[tuple[str, str], APIRoute]) -> None:
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["ErrorBody"] = ErrorBody.model_json_schema()
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer",
        "description": "An operator token from `iotrust token create`."}
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            route = routes.get((path, method))
            if _needs_token(route):
                operation["security"] = [{"bearer": []}]
            responses: dict[str, Any] = operation["responses"]
            for status in sorted(_statuses(method, operation, route)):
                responses.setdefault(status, {"description": _DESCRIPTIONS[status]})
            for status, entry in responses.items():
                if not status.startswith(("4", "5")):
                    continue
                content = entry.get("content", {}).get("application/json", {})
                if status == "422" or not content.get("schema"):
                    entry["content"] = {"application/json": {"schema": dict(_ERROR_REF)}}
