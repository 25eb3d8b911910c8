"""A lean FastAPI route for endpoints that take the raw ``Request`` and return a ``Response``.

FastAPI runs every request of an ``APIRoute`` through a generic handler: it reads and parses the
body for body parameters, solves the dependency graph, validates parameters, calls the endpoint
and serialises a non-``Response`` return value through the response model. For an endpoint whose
only parameter is the ``Request``, that has no dependencies and that returns its own ``Response``
(the device onboarding routes, which read and bound their bodies themselves), all that work ends
in the same call, ``await endpoint(request)``: :class:`RequestRoute` makes that call directly,
which saves about a fifth of the app's own CPU per request on those routes.

It stays an ``APIRoute``: the OpenAPI document lists it as before (path, responses, tags), and
FastAPI's ``request_response`` still wraps the call, so the app's exception handlers, middleware
and body limit apply unchanged. The direct call is used only when it is provably the same call:
the route's own dependant (and, for a route included into another router, the dependant FastAPI
builds with the include's dependencies) has the request as its only input and no dependencies;
otherwise, or if FastAPI no longer exposes the include's dependant, the route falls back to
FastAPI's handler. What the direct call skips besides is FastAPI's per-operation OpenTelemetry
detail (request, dependency and serialisation spans), which only matters when an OpenTelemetry
SDK is configured; iotrust configures none.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi import routing as fastapi_routing
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

__all__ = ["RequestRoute"]

_Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class RequestRoute(APIRoute):
    """An ``APIRoute`` calling ``endpoint(request)`` directly when that is all FastAPI would do."""

    def get_route_handler(self) -> _Handler:
        """The endpoint itself if it qualifies (module doc), else FastAPI's handler."""
        dependant = _effective_dependant(self)
        if dependant is not None and _request_only(dependant) and _takes_request(self.endpoint):
            handler: _Handler = self.endpoint
            return handler
        return super().get_route_handler()


def _effective_dependant(route: APIRoute) -> Dependant | None:
    """The dependant FastAPI would use for ``route`` now; ``None`` if that cannot be known."""
    context_var = getattr(fastapi_routing, "_effective_route_context_var", None)
    if context_var is None:
        return None  # FastAPI changed: use its handler
    context = context_var.get()
    if context is not None and getattr(context, "original_route", None) is route:
        dependant = getattr(context, "dependant", None)
        return dependant if isinstance(dependant, Dependant) else None
    return route.dependant


def _request_only(dependant: Dependant) -> bool:
    """The request is the dependant's only input: no parameters, body or dependencies."""
    return (dependant.request_param_name is not None
            and not (dependant.path_params or dependant.query_params or dependant.header_params
                     or dependant.cookie_params or dependant.body_params
                     or dependant.dependencies)
            and dependant.websocket_param_name is None
            and dependant.http_connection_param_name is None
            and dependant.response_param_name is None
            and dependant.background_tasks_param_name is None
            and dependant.security_scopes_param_name is None)


def _takes_request(endpoint: Callable[..., Any]) -> bool:
    """``endpoint`` is a coroutine function of exactly one positional parameter."""
    if not inspect.iscoroutinefunction(endpoint):
        return False
    params = list(inspect.signature(endpoint).parameters.values())
    return len(params) == 1 and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD)
