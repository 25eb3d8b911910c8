"""Request helpers shared by the device routes (onboarding, rotation): bounded body, client address.

Devices authenticate by signatures over the raw body, so these routes read the body themselves
instead of letting FastAPI parse it: :func:`read_body` never buffers more than the message's size
bound plus one byte (the parse boundary then refuses the excess as oversized), and
:func:`source` is the client address the services record and rate-limit on.
"""

from __future__ import annotations

from fastapi import Request

__all__ = ["read_body", "source"]


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, cut at ``max_bytes + 1`` (the parse boundary refuses the excess)."""
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > max_bytes:
            return bytes(buf[: max_bytes + 1])
    return bytes(buf)


def source(request: Request) -> str:
    """The client's address as the services record it (``"unknown"`` when the server has none)."""
    return request.client.host if request.client is not None else "unknown"
