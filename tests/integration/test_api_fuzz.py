"""Schemathesis against the published OpenAPI of a real ``iotrust serve``: no 5xx, no schema drift.

A real fleet (trust domain, a maker, minted devices, imported vouchers) is served by
``iotrust serve`` in a subprocess; schemathesis loads ``/openapi.json`` from it and, for every
operation, generates requests from the schema (positive: valid by the schema; negative: violating
it), sends them anonymously, with an admin token and with a read-only auditor token, and checks
each response:

- ``not_a_server_error``: no 5xx, ever;
- ``status_code_conformance``: the status is documented for the operation;
- ``content_type_conformance`` and ``response_schema_conformance``: the body matches the
  documented media type and schema (errors: ``{"error", "reason", "detail"}``).

The default run is bounded (``EXAMPLES`` per operation and mode); ``-m slow`` runs
``SLOW_EXAMPLES``. Generation is schemathesis 4's Python API (``schemathesis.openapi.from_url``,
``APIOperation.as_strategy``, ``Case.call``, ``Case.validate_response``) under hypothesis.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.integration.fleet import Maker, build_fleet
from tests.integration.server import Server, running_server

from iotrust.ports import SystemClock
from iotrust.services import tokens

EXAMPLES = 8
SLOW_EXAMPLES = 150
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
MIN_OPERATIONS = 30  # the API has more; fewer means the schema lost routes
pytestmark = pytest.mark.timeout(3600)


@dataclass(frozen=True)
class Service:
    server: Server
    schema: Any  # schemathesis.BaseSchema
    headers: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    base: Path = tmp_path_factory.mktemp("api-fuzz")
    fleet = build_fleet(base, makers=(Maker("widgetco", count=3),))
    db = fleet.open_db()
    try:
        secrets = {role: tokens.create_token(db, SystemClock(), name=f"fuzz-{role}", role=role,
                                             actor="tests@fuzz")[1]
                   for role in ("admin", "auditor")}
    finally:
        db.close()
    headers = {"anonymous": {},
               "admin": {"Authorization": f"Bearer {secrets['admin']}"},
               "auditor": {"Authorization": f"Bearer {secrets['auditor']}"}}
    with running_server(fleet.server_env(), log_dir=base) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        yield Service(server=server, schema=schema, headers=headers)


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def _fuzz_operation(service: Service, operation: Any, mode: GenerationMode,
                    headers: dict[str, str], examples: int) -> str | None:
    """Run one operation in one mode; the failure report, or None."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate, Phase.shrink])
    def run(case: Any) -> None:
        response = case.call(base_url=service.server.url, headers=headers or None, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers or None)

    try:
        run()
    except Unsatisfiable:  # e.g. no negative request exists for an operation without inputs
        return None
    except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a group
        return str(exc)[:3000]
    return None


def _fuzz(service: Service, who: str, examples: int) -> dict[str, str]:
    failures: dict[str, str] = {}
    for operation in _operations(service.schema):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            report = _fuzz_operation(service, operation, mode, service.headers[who], examples)
            if report is not None:
                failures[f"{operation.label} [{mode.value}]"] = report
    return failures


def _report(failures: dict[str, str], server: Server) -> str:
    text = "\n\n".join(f"=== {label}\n{report}" for label, report in failures.items())
    tail = server.output()[-4000:]
    return f"{len(failures)} failing operation(s):\n{text}\n--- server log tail:\n{tail}"


def test_the_published_schema_covers_every_operation(service: Service) -> None:
    operations = _operations(service.schema)
    assert len(operations) >= MIN_OPERATIONS, [op.label for op in operations]
    raw = service.schema.raw_schema
    for path, item in raw["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            errors = [s for s in responses if s[0] in "45"]
            assert errors, f"{method.upper()} {path} documents no error response"
            for status in errors:
                content = responses[status].get("content", {}).get("application/json", {})
                assert content.get("schema") == {"$ref": "#/components/schemas/ErrorBody"}, \
                    f"{method.upper()} {path} {status}: {responses[status]}"


@pytest.mark.parametrize("who", ["anonymous", "admin", "auditor"])
def test_api_fuzz_no_server_error_and_no_schema_violation(service: Service, who: str) -> None:
    failures = _fuzz(service, who, EXAMPLES)
    assert not failures, _report(failures, service.server)


@pytest.mark.slow
@pytest.mark.parametrize("who", ["anonymous", "admin", "auditor"])
def test_api_fuzz_long(service: Service, who: str) -> None:
    failures = _fuzz(service, who, SLOW_EXAMPLES)
    assert not failures, _report(failures, service.server)
