"""The body limit: declared and streamed bodies over the limit get 413 with the error body."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.types import Message, Scope

from iotrust.api import limits
from iotrust.errors import InputError

LIMIT = 1000


class Item(BaseModel):
    text: str


def _app() -> FastAPI:
    app = FastAPI()
    limits.install(app, max_bytes=LIMIT)

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.post("/model")
    def model(item: Item) -> dict[str, int]:
        return {"size": len(item.text)}

    return app


@pytest.fixture
def client() -> TestClient:
    return TestClient(_app())


def _chunks(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(100, total - sent)
        sent += 100


@pytest.mark.parametrize("path", ["/raw", "/model"])
def test_declared_length_over_the_limit_is_refused(client: TestClient, path: str) -> None:
    r = client.post(path, content=b"x" * (LIMIT + 1))
    assert r.status_code == 413
    assert r.json() == {"error": "InputError", "reason": "too_large",
                        "detail": f"request body larger than {LIMIT} bytes"}


@pytest.mark.parametrize("path", ["/raw", "/model"])
def test_streamed_body_over_the_limit_is_refused(client: TestClient, path: str) -> None:
    r = client.post(path, content=_chunks(LIMIT + 50),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["reason"] == "too_large"


def test_bodies_within_the_limit_pass(client: TestClient) -> None:
    assert client.post("/raw", content=b"x" * LIMIT).json() == {"size": LIMIT}
    assert client.post("/raw", content=_chunks(LIMIT)).json() == {"size": LIMIT}
    assert client.post("/model", json={"text": "y" * 100}).json() == {"size": 100}


def test_limit_from_environment() -> None:
    assert limits.max_body_bytes_from_environment({}) == limits.DEFAULT_MAX_BODY_BYTES
    assert limits.max_body_bytes_from_environment({limits.MAX_BODY_ENV: "2048"}) == 2048
    for bad in ("0", "-1", "1e6", "lots", "\u00b2"):
        with pytest.raises(InputError) as info:
            limits.max_body_bytes_from_environment({limits.MAX_BODY_ENV: bad})
        assert info.value.reason == "invalid_body_limit"


@pytest.mark.parametrize("headers", [
    [(b"transfer-encoding", b"chunked")],
    [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")],  # a parser may ignore CL
    [(b"content-length", b"ten")],
    [(b"content-length", "\u00b2".encode("latin-1"))],  # "²": str.isdigit() yet not an int
])
def test_bodies_not_framed_by_a_valid_length_alone_are_counted(
        headers: list[tuple[bytes, bytes]]) -> None:
    """Only a body framed by a valid Content-Length alone skips the count (the server bounds it)."""
    middleware = limits.BodyLimit(_app(), max_bytes=LIMIT)
    chunks: list[Message] = [{"type": "http.request", "body": b"x" * 100, "more_body": True}] * 11
    chunks.append({"type": "http.request", "body": b"", "more_body": False})
    sent: list[Message] = []

    async def receive() -> Message:
        return chunks.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/raw", "raw_path": b"/raw",
             "query_string": b"", "headers": headers, "root_path": "", "scheme": "http",
             "http_version": "1.1", "server": ("t", 80), "client": ("c", 1),
             "asgi": {"version": "3.0"}}
    anyio.run(middleware, scope, receive, send)
    assert sent[0]["status"] == 413
