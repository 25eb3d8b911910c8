"""``iotrust serve``'s HTTP protocol over a real socket: uvicorn with httptools and uvloop.

The server runs in a thread of this process (so the test can look at its connections); requests
are written by hand on plain sockets, so what is checked is what goes over the wire: keep-alive,
chunked bodies, the body limit's 413, the request-head bound (h11's, which httptools lacks) and
TCP_NODELAY on accepted connections.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request

from iotrust.api import limits, transport

LIMIT = 1000
_PORTS: dict[int, int] = {}  # server → its port


def _app() -> FastAPI:
    app = FastAPI()
    limits.install(app, max_bytes=LIMIT)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"status": "ok"}

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[uvicorn.Server]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_app(), http=transport.NoDelayHttpToolsProtocol, loop="uvloop",
                            log_level="error", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    _PORTS[id(srv)] = sock.getsockname()[1]
    yield srv
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _connect(server: uvicorn.Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", _PORTS[id(server)]), timeout=10)


def _response(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response read from ``conn`` (Content-Length framed, as every response here is)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def _closed(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def test_keep_alive_serves_several_requests_on_one_connection(server: uvicorn.Server) -> None:
    with _connect(server) as conn:
        for _ in range(3):
            conn.sendall(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = _response(conn)
            assert status == 200
            assert body == b'{"status":"ok"}'


def test_accepted_connections_have_nagle_off(server: uvicorn.Server) -> None:
    with _connect(server) as conn:
        conn.sendall(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _response(conn)[0] == 200
        protocols = list(server.server_state.connections)
        assert protocols
        for protocol in protocols:
            sock = protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_chunked_body_is_read(server: uvicorn.Server) -> None:
    with _connect(server) as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        status, _, body = _response(conn)
        assert (status, body) == (200, b'{"size":11}')


@pytest.mark.parametrize("framing", ["declared", "chunked"])
def test_body_over_the_limit_gets_413_and_the_error_body(server: uvicorn.Server,
                                                         framing: str) -> None:
    with _connect(server) as conn:
        if framing == "declared":
            conn.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                         % (LIMIT + 1) + b"x" * (LIMIT + 1))
        else:
            chunk = b"%x\r\n%s\r\n" % (100, b"x" * 100)
            conn.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + chunk * 11 + b"0\r\n\r\n")
        status, headers, body = _response(conn)
        assert status == 413
        assert headers["connection"] == "close"
        assert json.loads(body) == {"error": "InputError", "reason": "too_large",
                                    "detail": f"request body larger than {LIMIT} bytes"}


def test_head_within_the_bound_is_served(server: uvicorn.Server) -> None:
    with _connect(server) as conn:
        filler = b"a" * (transport.MAX_HEAD_BYTES - 200)
        conn.sendall(b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Filler: " + filler + b"\r\n\r\n")
        assert _response(conn)[0] == 200


@pytest.mark.parametrize("where", ["header", "url"])
@pytest.mark.parametrize("pieces", [1, 64])
def test_head_over_the_bound_gets_400_and_is_closed(server: uvicorn.Server, where: str,
                                                    pieces: int) -> None:
    filler = b"a" * (transport.MAX_HEAD_BYTES + 100)
    if where == "url":
        head = b"GET /ok?q=" + filler + b" HTTP/1.1\r\nHost: t\r\n"
    else:
        head = b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Filler: " + filler + b"\r\n"
    with _connect(server) as conn:
        step = len(head) // pieces + 1
        try:
            for start in range(0, len(head), step):  # no blank line: the head never ends
                conn.sendall(head[start:start + step])
                time.sleep(0.001)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already answered and closed
        status, _, _ = _response(conn)
        assert status == 400
        assert _closed(conn)


@pytest.mark.parametrize("headers", [b"Content-Length: 12x\r\n",
                                     b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                                     b"Content-Length: 3\r\nContent-Length: 4\r\n"])
def test_ambiguous_or_unparsable_framing_gets_400(server: uvicorn.Server, headers: bytes) -> None:
    with _connect(server) as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\nabc")
        assert _response(conn)[0] == 400
        assert _closed(conn)


def test_a_pipelined_head_is_not_charged_for_the_request_before_it(
        server: uvicorn.Server) -> None:
    # One read holds a complete request with a 15 KiB head and the start of the next request:
    # only the incomplete head counts toward the bound (as with h11), so both are served.
    first = (b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Filler: "
             + b"a" * (transport.MAX_HEAD_BYTES - 1000) + b"\r\n\r\n")
    second = b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Filler: " + b"b" * 2000
    with _connect(server) as conn:
        conn.sendall(first + second)
        assert _response(conn)[0] == 200
        conn.sendall(b"\r\n\r\n")
        assert _response(conn)[0] == 200
