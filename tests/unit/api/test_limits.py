"""The body limit: declared and streamed bodies over the limit get 413 with the error body."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

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
    for bad in ("0", "-1", "1e6", "lots"):
        with pytest.raises(InputError) as info:
            limits.max_body_bytes_from_environment({limits.MAX_BODY_ENV: bad})
        assert info.value.reason == "invalid_body_limit"
