"""HTTP endpoints of signed updates: the TUF repositories as files, and device status reports.

* ``GET /v1/tuf/image/metadata/{name}`` — image repository metadata (``N.root.json``,
  ``timestamp.json``, ``N.snapshot.json``, ``N.targets.json``, ``N.fw-<hw>.json``,
  ``N.config.json``);
* ``GET /v1/tuf/image/targets/{path}`` — target files by consistent name (``dir/<sha256>.name``);
* ``GET /v1/tuf/director/{device_id}/metadata/{name}`` — the director's per-device metadata
  (roots are shared). Not authenticated per device yet (see :mod:`iotrust.adapters.tuf.director`);
* ``POST /v1/updates/status`` — a device's signed status report (COSE_Sign1 envelope,
  ``application/cose``), see :mod:`iotrust.services.rollouts`.

Operator endpoints for rollouts (list, status, pause, resume, abort) need an operator token.
Every error is the API's usual ``{"error", "reason", "detail"}``; a missing file is a 404.
This module holds no logic beyond mapping requests to services.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import FileResponse

from iotrust.core.records import ApiToken
from iotrust.services import updates

if TYPE_CHECKING:
    from iotrust.api.app import AppState

MAX_STATUS_BYTES = 4096


def router(state: AppState, require: Callable[[str], Callable[..., ApiToken]]) -> APIRouter:
    """The update routes bound to ``state``."""
    api = APIRouter(tags=["updates"])
    del require  # operator routes come with rollouts

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

    @api.get("/v1/tuf/director/{device_id}/metadata/{name}", response_class=FileResponse)
    def director_metadata(device_id: str, name: str) -> FileResponse:
        """The director's metadata for one device."""
        path = updates.director_metadata_file(state.settings, state.secrets, state.clock,
                                              device_id, name)
        return FileResponse(path, media_type="application/json")

    return api
