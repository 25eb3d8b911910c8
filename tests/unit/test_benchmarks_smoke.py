"""The benchmark harness runs end to end at tiny sizes and writes well-formed results.

No timing assertions: only that every line has a positive rate, a positive floor and ratio where a
floor applies, and that the JSON file carries the machine description.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from benchmarks import Result, onboarding
from benchmarks.run import BENCHMARKS, format_line, main

IN_PROCESS = ["crypto_floor", "issuance_from_csr", "registry_lookup", "voucher_import",
              "onboarding", "onboarding_core"]


def _positive(value: object) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("bench")
    out = base / "results.json"
    code = main(["--size", "50", "--rounds", "1", "--cache-dir", str(base / "cache"),
                 "--only", ",".join(IN_PROCESS)], output=out)
    assert code == 0
    data: dict[str, object] = json.loads(out.read_text())
    return data


def test_every_result_has_positive_rates_and_ratios(report: dict[str, object]) -> None:
    results = report["results"]
    assert isinstance(results, list)
    by_name = {r["name"]: r for r in results}
    expected = {"crypto_floor", "issuance_from_csr", "issuance_service", "registry_lookup",
                "voucher_import"}
    if onboarding.missing_service() is None:
        expected |= {"onboarding", "onboarding_core"}
    assert expected <= set(by_name)
    for r in results:
        assert _positive(r["rate_per_s"]), r
        assert isinstance(r["n"], int)
        assert r["n"] >= 1
        if r["floor"] is not None:
            assert _positive(r["floor_rate_per_s"]), r
            assert _positive(r["ratio"]), r
            assert r["ratio"] == pytest.approx(r["rate_per_s"] / r["floor_rate_per_s"])
    assert by_name["crypto_floor"]["floor"] is None
    for name in expected - {"crypto_floor"}:
        assert by_name[name]["floor"], name


def test_a_skipped_benchmark_says_why(report: dict[str, object]) -> None:
    skipped = report["skipped"]
    assert isinstance(skipped, list)
    for entry in skipped:
        assert entry["name"] in BENCHMARKS
        assert entry["reason"].strip()


def test_machine_description_is_recorded(report: dict[str, object]) -> None:
    machine = report["machine"]
    assert isinstance(machine, dict)
    assert isinstance(machine["cpu_count"], int)
    assert machine["python"].count(".") == 2
    libraries = machine["libraries"]
    assert libraries["cryptography"]
    assert libraries["SQLAlchemy"]
    assert report["size"] == 50
    assert report["rounds"] == 1


def test_registry_is_cached_under_the_given_folder(report: dict[str, object]) -> None:
    results = report["results"]
    assert isinstance(results, list)
    (lookup,) = [r for r in results if r["name"] == "registry_lookup"]
    details = lookup["details"]
    assert details["devices"] == 50
    path = Path(details["database"])
    assert path.exists()
    assert path.parent.name == "cache"
    assert _positive(details["build_seconds"])


def test_line_format_shows_rate_floor_ratio_and_target() -> None:
    line = format_line(Result(name="issuance_from_csr", rate=3950.2, n=10, floor="x",
                              floor_rate=8700.0, target=0.40))
    assert line.split() == ["issuance_from_csr", "3,950/s", "floor", "8,700/s", "ratio", "0.45",
                            "(target", ">=", "0.40:", "met)"]
    bare = format_line(Result(name="crypto_floor", rate=1234.0, n=1))
    assert bare.split() == ["crypto_floor", "1,234/s"]
    absolute = format_line(Result(name="onboarding_http", rate=900.0, n=1, target=1000.0))
    assert absolute.endswith("(target >= 1,000/s: NOT met)")


def test_unknown_benchmark_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--only", "nope"], output=tmp_path / "r.json")
    assert exc.value.code == 2
    assert not (tmp_path / "r.json").exists()
