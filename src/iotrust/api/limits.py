"""A bound on every HTTP request body: an ASGI middleware that answers 413 past ``max_bytes``.

uvicorn and FastAPI put no limit on a request body: an endpoint that calls ``request.body()`` or
parses a JSON model buffers whatever the client sends. :class:`BodyLimit` refuses a body whose
declared ``Content-Length`` is over the limit before the app sees it, and counts the bytes of a
body sent without one (chunked), stopping the app as soon as the count passes the limit. The
refusal is the API's usual error body: ``{"error": "InputError", "reason": "too_large",
"detail": ...}`` with status 413.

The limit is configurable (``IOTRUST_MAX_BODY_BYTES``, default 1 MiB). Endpoints keep their own,
smaller bounds (onboarding messages, status reports, broker hooks); this is the outer fence for
every route, present and future. This module does not limit headers, URLs or response sizes
(``iotrust serve``'s HTTP protocol bounds the first two: :mod:`iotrust.api.transport`) and does not
rate-limit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iotrust.errors import InputError

__all__ = ["DEFAULT_MAX_BODY_BYTES", "MAX_BODY_ENV", "BodyLimit", "install",
           "max_body_bytes_from_environment"]

DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
MAX_BODY_ENV: Final = "IOTRUST_MAX_BODY_BYTES"
_STATUS: Final = 413


class _BodyTooLargeError(HTTPException):
    """Raised from the wrapped ``receive`` once the body passes the limit (private signal).

    An ``HTTPException`` so that FastAPI's body parsing lets it through (it turns any other
    exception into a 400); :func:`install` registers the handler that renders it.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(status_code=_STATUS, detail=f"request body larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


def install(app: FastAPI, max_bytes: int | None = None) -> None:
    """Bound every request body of ``app`` (default: from the environment, see module doc)."""
    limit = max_body_bytes_from_environment() if max_bytes is None else max_bytes
    app.add_middleware(BodyLimit, max_bytes=limit)

    async def too_large(_: Request, exc: Exception) -> JSONResponse:
        size = exc.max_bytes if isinstance(exc, _BodyTooLargeError) else limit
        return JSONResponse(_refusal_dict(size), status_code=_STATUS,
                            headers={"connection": "close"})

    app.add_exception_handler(_BodyTooLargeError, too_large)


def max_body_bytes_from_environment(env: Mapping[str, str] | None = None) -> int:
    """The configured body limit: ``IOTRUST_MAX_BODY_BYTES`` (a positive integer) or 1 MiB.

    ``InputError(reason="invalid_body_limit")`` if the variable is set but not a positive integer.
    """
    source = os.environ if env is None else env
    value = source.get(MAX_BODY_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_BODY_BYTES
    if not (value.isascii() and value.isdigit()) or int(value) <= 0:
        raise InputError(f"{MAX_BODY_ENV} must be a positive integer (bytes)",
                         reason="invalid_body_limit")
    return int(value)


def _refusal_dict(max_bytes: int) -> dict[str, str]:
    return {"error": "InputError", "reason": "too_large",
            "detail": f"request body larger than {max_bytes} bytes"}


def _refusal(max_bytes: int) -> bytes:
    return json.dumps(_refusal_dict(max_bytes)).encode()


class BodyLimit:
    """ASGI middleware: HTTP request bodies over ``max_bytes`` get 413 and never reach the app."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, then count the received bytes."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = _framing(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        if declared is not None and not chunked:
            # The server frames the body by its Content-Length: the app can never receive more
            # than was declared, so there is nothing to count (the common case, left unwrapped).
            await self.app(scope, receive, send)
        else:
            await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app on a ``receive`` that stops it once the body passes the limit."""
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLargeError(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLargeError:
            if not started:  # otherwise the response is cut short: the server closes it
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = _refusal(self.max_bytes)
        await send({"type": "http.response.start", "status": _STATUS,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The ``Content-Length`` header as an integer, and whether ``Transfer-Encoding`` is present.

    The length is ``None`` if absent or unparsable; with a ``Transfer-Encoding`` the body is
    counted whatever was declared. An unparsable value is left to the server (its parser refuses
    it with 400 before the app runs).
    """
    declared: int | None = None
    seen_length = chunked = False
    for name, value in scope.get("headers", ()):
        lowered = name.lower()
        if lowered == b"content-length" and not seen_length:
            seen_length = True
            text = value.decode("latin-1").strip()
            # ASCII digits only: "²" is a str.isdigit() digit that int() refuses
            declared = int(text) if text.isascii() and text.isdigit() else None
        elif lowered == b"transfer-encoding":
            chunked = True
    return declared, chunked
