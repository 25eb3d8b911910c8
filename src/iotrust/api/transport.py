"""The HTTP protocol ``iotrust serve`` runs uvicorn with: httptools, TCP_NODELAY, a head bound.

Why httptools (with uvloop as the event loop, chosen in ``iotrust serve``): uvicorn's default h11
parser is pure Python and, with asyncio's own loop, cost about 1.6 ms of server CPU per onboarding
request, about half of what the server spends on a device; httptools (llhttp, in C) and uvloop
(libuv) do the same work for a fraction of that (benchmarks/README.md, ``onboarding_http``).

What this class adds to uvicorn's ``HttpToolsProtocol``:

- ``TCP_NODELAY`` on every connection. With ``--workers N`` uvicorn binds the listening socket
  itself without naming the protocol, so asyncio's default loop does not recognise accepted
  connections as TCP and never disables Nagle's algorithm: every response then waits for a delayed
  ACK (about 40 ms on Linux). uvloop already sets it; setting it here keeps the fix whatever loop
  runs the server.
- A bound on the request head (request line and headers): :data:`MAX_HEAD_BYTES`, the bound h11
  applies (16 KiB). httptools has none: it would buffer a URL or header section of any size. As
  with h11, which checks its buffer only while it waits for the end of a head, a head still
  incomplete after more than the bound gets uvicorn's usual ``400 Invalid HTTP request
  received.`` and the connection is closed. Bytes are counted per read, so the parser never holds
  more than the bound plus one read (a complete head within one read is parsed, as with h11).
  A read in which a request ended and the next one's head began (pipelining) is not counted:
  which of its bytes belong to the new head is unknown, and charging the whole read would refuse
  a small head behind a large request, which h11 serves; counting resumes with the next read.

Request bodies are bounded by the app (:mod:`iotrust.api.limits`), not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEAD_BYTES", "NoDelayHttpToolsProtocol"]

MAX_HEAD_BYTES: Final = 16 * 1024  # h11's DEFAULT_MAX_INCOMPLETE_EVENT_SIZE


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP connection (a socket that cannot take it still works)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with Nagle off and the request head bounded (module doc)."""

    _in_head = False  # a request has begun and its headers are not complete yet
    _head_bytes = 0  # bytes read while that head was incomplete
    _began_in_read = False  # a request began during the current read
    _ended_in_read = False  # a request ended during the current read

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Disable Nagle on the connection, then hand over to uvicorn."""
        set_nodelay(transport)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """Parse as uvicorn does, then refuse a request head that grew past the bound."""
        self._began_in_read = self._ended_in_read = False
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # The whole read is this head's unless the head began after a request that ended
            # in this same read (pipelined): then its share is unknown (module doc).
            if not (self._began_in_read and self._ended_in_read):
                self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._in_head = False
                self.logger.warning("Request head larger than %d bytes.", MAX_HEAD_BYTES)
                self.send_400_response("Invalid HTTP request received.")

    def on_message_begin(self) -> None:
        """A new request: its head is counted until the headers are complete."""
        self._in_head = True
        self._head_bytes = 0
        self._began_in_read = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        """The head is complete: stop counting."""
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """A request ended (its body too): a head beginning later in this read is pipelined."""
        self._ended_in_read = True
        super().on_message_complete()
