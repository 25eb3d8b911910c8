"""RequestRoute: the endpoint is called directly only when FastAPI would do nothing else."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.testclient import TestClient

from iotrust.api.routes import RequestRoute
from iotrust.errors import AuthError


async def raw(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


async def with_query(request: Request, n: int) -> Response:
    return Response(str(n))


def _deny() -> None:
    raise AuthError("no", reason="unauthenticated")


def _app(router: APIRouter, **include: object) -> TestClient:
    app = FastAPI()

    @app.exception_handler(AuthError)
    async def _auth(_: Request, exc: AuthError) -> Response:
        return Response(exc.reason, status_code=401)

    app.include_router(router, **include)  # type: ignore[arg-type]
    return TestClient(app)


def test_a_request_only_endpoint_is_its_own_handler() -> None:
    route = RequestRoute("/raw", raw, methods=["POST"])
    assert route.get_route_handler() is raw


def test_direct_routes_serve_and_stay_in_the_openapi_document() -> None:
    router = APIRouter(prefix="/d", route_class=RequestRoute)
    router.add_api_route("/raw", raw, methods=["POST"], response_class=Response,
                         responses={403: {"description": "refused"}})
    client = _app(router)
    r = client.post("/d/raw", content=b"abc")
    assert (r.status_code, r.content) == (200, b"abc")
    op = client.get("/openapi.json").json()["paths"]["/d/raw"]["post"]
    assert "403" in op["responses"]


def test_parameters_keep_fastapi_validation() -> None:
    route = RequestRoute("/q", with_query, methods=["GET"])
    assert route.get_route_handler() is not with_query  # type: ignore[comparison-overlap]
    router = APIRouter(route_class=RequestRoute)
    router.add_api_route("/q", with_query, methods=["GET"])
    client = _app(router)
    assert client.get("/q", params={"n": "3"}).text == "3"
    assert client.get("/q", params={"n": "x"}).status_code == 422


def test_dependencies_are_never_skipped() -> None:
    route = RequestRoute("/raw", raw, methods=["POST"], dependencies=[Depends(_deny)])
    assert route.get_route_handler() is not raw
    router = APIRouter(route_class=RequestRoute)
    router.add_api_route("/raw", raw, methods=["POST"])
    # Dependencies added when the router is included apply too.
    client = _app(router, dependencies=[Depends(_deny)])
    r = client.post("/raw", content=b"abc")
    assert (r.status_code, r.text) == (401, "unauthenticated")
