"""HTTP endpoints of signed updates: the TUF repositories as files, and device status reports.

* ``GET /v1/tuf/image/metadata/{name}`` — image repository metadata (``N.root.json``,
  ``timestamp.json``, ``N.snapshot.json``, ``N.targets.json``, ``N.fw-<hw>.json``,
  ``N.config.json``);
* ``GET /v1/tuf/image/targets/{path}`` — target files by consistent name (``dir/<sha256>.name``);
* ``GET /v1/tuf/director/{device_id}/metadata/{name}`` — the director's per-device metadata
  (roots are shared), for that device only: the request carries ``Authorization: IotrustDevice
  <envelope>`` signed with the device's operational key (:mod:`iotrust.core.signed_reads`,
  checked by :mod:`iotrust.services.director_access`); anything else is a 403 with its reason
  and, once a signature verifies, an ``update.director_read_refused`` event;
* ``POST /v1/updates/status`` — a device's signed status report (COSE_Sign1 envelope,
  ``application/cose``), see :mod:`iotrust.services.rollouts`.

Operator endpoints for rollouts (list, status, pause, resume, abort) need an operator token.
Every error is the API's usual ``{"error", "reason", "detail"}``; a missing file is a 404.
This module holds no logic beyond mapping requests to services.

No ``from __future__ import annotations`` here: FastAPI evaluates the route closures'
annotations (``Reader``, ``Writer``) at runtime, and local names are only visible to it then
(with postponed annotations the rollout routes silently lost their token check).
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import FileResponse, JSONResponse

from iotrust.core.records import ApiToken
from iotrust.errors import InputError, NotFoundError
from iotrust.services import director_access, rollouts, updates

if TYPE_CHECKING:
    from iotrust.api.app import AppState

MAX_STATUS_BYTES = 4096
_DIRECTOR_READ_RESPONSES: dict[int | str, dict[str, Any]] = {403: {
    "description": "Refused: no device-signed request, or signed by another device "
                   "(`device_auth_required`, `device_mismatch`, `request_mismatch`, "
                   "`request_stale`, `unknown_credential`, `signature_invalid`, "
                   "`credential_revoked`, `credential_expired`, `retired`)."}}


def router(state: "AppState", require: Callable[[str], Callable[..., ApiToken]]) -> APIRouter:
    """The update routes bound to ``state``."""
    api = APIRouter(tags=["updates"])

    @api.get("/v1/tuf/image/metadata/{name}", response_class=FileResponse)
    def image_metadata(name: str) -> FileResponse:
        """Image repository metadata."""
        path = updates.image_metadata_file(state.settings, state.secrets, state.clock, name)
        return FileResponse(path, media_type="application/json")

    @api.get("/v1/tuf/image/targets/{served_path:path}", response_class=FileResponse)
    def image_target(served_path: str) -> FileResponse:
        """An image or configuration file, by consistent name."""
        path = updates.image_target_file(state.settings, served_path)
        return FileResponse(path, media_type="application/octet-stream")

    @api.get("/v1/tuf/director/{device_id}/metadata/{name}", response_class=FileResponse,
             responses=_DIRECTOR_READ_RESPONSES)
    def director_metadata(device_id: str, name: str,
                          authorization: Annotated[str | None, Header()] = None) -> FileResponse:
        """The director's metadata for one device, read by that device (signed request)."""
        director_access.authorize_director_read(state.db, state.clock, device_id=device_id,
                                                name=name, authorization=authorization)
        path = updates.director_metadata_file(state.settings, state.secrets, state.clock,
                                              device_id, name)
        return FileResponse(path, media_type="application/json")

    @api.post("/v1/updates/status")
    async def status(request: Request) -> JSONResponse:
        """A device's signed status report."""
        body = await request.body()
        if len(body) > MAX_STATUS_BYTES:
            raise InputError("status report too large", reason="too_large")
        result = rollouts.report_status(state.db, state.settings, state.secrets, state.clock,
                                        body)
        return JSONResponse(result)

    _operator_routes(api, state, require)
    return api


def _operator_routes(api: APIRouter, state: "AppState",
                     require: Callable[[str], Callable[..., ApiToken]]) -> None:
    """Rollout progress and pause/resume/abort for operators."""
    Reader = Annotated[ApiToken, Depends(require("read"))]  # noqa: N806
    Writer = Annotated[ApiToken, Depends(require("write"))]  # noqa: N806

    @api.get("/v1/rollouts")
    def list_rollouts(_: Reader) -> list[dict[str, Any]]:
        """Every rollout with its progress."""
        return [r.as_dict() for r in rollouts.list_rollouts(state.db)]

    @api.get("/v1/rollouts/{rollout_id}")
    def rollout_status(rollout_id: str, _: Reader) -> dict[str, Any]:
        """One rollout's progress."""
        return rollouts.status(state.db, rollout_id).as_dict()

    @api.post("/v1/rollouts/{rollout_id}/{action}")
    def rollout_action(rollout_id: str, action: str, token: Writer) -> dict[str, Any]:
        """``pause``, ``resume`` or ``abort`` a rollout."""
        if action not in ("pause", "resume", "abort"):
            raise NotFoundError("no such action", reason="not_found")
        return rollouts.act(state.db, state.settings, state.secrets, state.clock, rollout_id,
                            action=action, actor=f"token:{token.name}").as_dict()
