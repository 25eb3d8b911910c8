"""The HTTP protocol class ``iotrust serve`` runs uvicorn with: h11, plus TCP_NODELAY.

With ``--workers N`` uvicorn binds the listening socket itself without naming the protocol, so
asyncio does not recognise accepted connections as TCP and never disables Nagle's algorithm:
every response then waits for a delayed ACK (about 40 ms on Linux). Setting ``TCP_NODELAY`` when a
connection is made restores sub-millisecond responses. Nothing else of uvicorn's h11 protocol
changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with Nagle's algorithm turned off on every connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Disable Nagle on the connection, then hand over to uvicorn."""
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A socket that cannot take the option still works, only slower.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
