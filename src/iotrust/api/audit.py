"""Audit endpoints: ``GET /v1/audit`` (read), suppressions (read / write).

``GET /v1/audit`` runs the checks (``?check=ID`` repeatable) in one read-only transaction and
returns the report as JSON (``iotrust.audit/v1``); being a GET it records nothing (the scheduled
``iotrust audit`` records ``audit.completed``). ``?full=true`` verifies the whole event-log chain
rather than only what was appended since the last recorded audit's checkpoint, as
``iotrust audit --full`` does. ``POST /v1/audit/suppressions`` records a
suppression with the token's name as the actor; ``GET /v1/audit/suppressions`` lists them.
Handlers only translate between HTTP and :mod:`iotrust.services.audit`.

No ``from __future__ import annotations``: FastAPI evaluates the route closures' annotations at
runtime (see :mod:`iotrust.api.operators`).
"""

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from iotrust.core.records import ApiToken
from iotrust.services import audit as svc

if TYPE_CHECKING:
    from iotrust.api.app import AppState

__all__ = ["SuppressionIn", "router"]


class SuppressionIn(BaseModel):
    """A finding target to accept, and why."""

    check_id: str = Field(min_length=1, max_length=64)
    target: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=500)
    days: float | None = Field(default=None, gt=0, le=3650)


def router(state: "AppState", require: Callable[[str], Callable[..., ApiToken]]) -> APIRouter:
    """The audit routes bound to ``state``."""
    r = APIRouter(prefix="/v1/audit", tags=["audit"])
    Reader = Annotated[ApiToken, Depends(require("read"))]  # noqa: N806
    Writer = Annotated[ApiToken, Depends(require("write"))]  # noqa: N806

    @r.get("")
    def run(_: Reader,
            check: Annotated[list[str] | None, Query(max_length=32)] = None,
            full: bool = False) -> dict[str, Any]:
        report = svc.run_audit(state.db, state.settings, state.clock, actor="api@iotrust",
                               checks=check or None, record=False, full_event_log=full)
        return report.as_dict()

    @r.get("/suppressions")
    def suppressions(_: Reader) -> list[dict[str, Any]]:
        return [row.as_dict() for row in svc.list_suppressions(state.db)]

    @r.post("/suppressions", status_code=201)
    def suppress(token: Writer, body: SuppressionIn) -> dict[str, Any]:
        expires = (state.clock.now() + timedelta(days=body.days)
                   if body.days is not None else None)
        row = svc.suppress(state.db, state.clock, body.check_id, body.target,
                           reason=body.reason, actor=f"{token.name}@api", expires_at=expires)
        return row.as_dict()

    return r
