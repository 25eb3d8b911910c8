"""A ~15 s run of the soak (``benchmarks/soak.py``) on SQLite: the whole mix works and the
end-of-run invariants hold.

Marked ``slow`` (not in the default run). It drives a real ``iotrust serve --workers 2`` with
20 simulated devices onboarding, rotating and being quarantined, released and retired through
the operator API; it does not measure anything (the figures come from ``make soak``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks import soak

pytestmark = pytest.mark.slow


def test_soak_smoke_keeps_the_invariants(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    report = soak.run(minutes=0.25, devices=20, threads=4, workers=2, sqlite=True, out=out)

    assert out.exists()
    inv = report["invariants"]
    assert inv["ok"], inv
    assert inv["active_without_exactly_one_active_credential"] == []
    assert inv["credentials_without_issued_event"] == []
    assert inv["chain_breaks"] == []
    ops = {row["op"]: row for row in report["operations"]}
    # every device was onboarded and the operator and rotation paths ran
    assert ops["onboard.confirm"]["count"] == 20
    for op in ("rotate.confirm", "operator.quarantine", "operator.list"):
        assert ops[op]["count"] > 0, op
    assert report["total_errors"] == 0, [r["error_samples"] for r in report["operations"]]
    assert report["rss"]["samples"], "the server's memory was never sampled"
    assert report["pool_at_end"]["never_onboarded"] == 0
