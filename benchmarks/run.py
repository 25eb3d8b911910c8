"""Run the benchmarks, print one line per operation (rate, floor, ratio), write a JSON file.

``python -m benchmarks.run [--quick] [--only NAME[,NAME]] [--out PATH]`` (``make bench``), or
``iotrust bench``, which calls :func:`main`. Benchmarks whose component is missing are reported as
skipped with the reason, never silently dropped. Nothing here judges the numbers beyond printing
whether a stated target is met.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import Config, Result, Skipped

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.json"
_LIBRARIES = ("iotrust", "cryptography", "SQLAlchemy", "alembic", "fastapi", "uvicorn", "httpx",
              "cbor2", "pydantic")


def _crypto_floor(config: Config) -> list[Result]:
    from benchmarks.crypto import bench_crypto_floor  # noqa: PLC0415 - each loads what it needs

    return bench_crypto_floor(config)


def _issuance(config: Config) -> list[Result]:
    from benchmarks.crypto import bench_issuance  # noqa: PLC0415

    return bench_issuance(config)


def _registry(config: Config) -> list[Result]:
    from benchmarks.registry import bench_registry_lookup  # noqa: PLC0415

    return bench_registry_lookup(config)


def _vouchers(config: Config) -> list[Result]:
    from benchmarks.vouchers import bench_voucher_import  # noqa: PLC0415

    return bench_voucher_import(config)


def _onboarding(config: Config) -> list[Result]:
    from benchmarks import onboarding  # noqa: PLC0415

    missing = onboarding.missing_service()
    if missing:
        raise Skipped(missing)
    return onboarding.bench_onboarding(config)


def _onboarding_core(config: Config) -> list[Result]:
    from benchmarks import onboarding  # noqa: PLC0415

    missing = onboarding.missing_service()
    if missing:
        raise Skipped(missing)
    return onboarding.bench_onboarding_core(config)


def _onboarding_http(config: Config) -> list[Result]:
    from benchmarks import onboarding, onboarding_http  # noqa: PLC0415

    missing = onboarding.missing_service() or onboarding_http.missing_http()
    if missing:
        raise Skipped(missing)
    return onboarding_http.bench_onboarding_http(config)


def _rows(module: str) -> Callable[[Config], list[Result]]:
    """Adapt a module exposing ``run(quick) -> list[dict]`` (the later benchmarks) to Result lines.

    Rows carry ``name`` and either ``rate`` (+ optional ``floor``/``ratio``/``target``) or
    latency percentiles (``p50_ms``/``p99_ms``), shown in the note; everything lands in details.
    """

    def bench(config: Config) -> list[Result]:
        mod = importlib.import_module(f"benchmarks.{module}")
        out: list[Result] = []
        for row in mod.run(config.quick):
            extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
            latency = {k: row[k] for k in ("p50_ms", "p99_ms", "max_ms") if k in row}
            note_parts = [f"{k} {v:,.1f}" for k, v in latency.items()]
            if row.get("unit"):
                note_parts.append(f"unit {row['unit']}")
            target = row.get("target", extra.get("target") if extra else None)
            if isinstance(target, (int, float)) and row.get("floor") and target > 1:
                # An absolute-rate target next to a floor: state it, judge it by the rate.
                met = "met" if float(row.get("rate") or 0) >= target else "NOT met"
                note_parts.append(f"target >= {target:,.0f}/s: {met}")
                target = None
            out.append(Result(
                name=str(row["name"])[:40], rate=float(row.get("rate") or 0.0),
                n=int(row.get("n") or 0),
                floor="same run" if row.get("floor") else None,
                floor_rate=float(row["floor"]) if row.get("floor") else None,
                target=float(target) if isinstance(target, (int, float)) else None,
                note=", ".join(note_parts) or None, details=dict(row)))
        return out

    return bench


BENCHMARKS: dict[str, Callable[[Config], list[Result]]] = {
    "crypto_floor": _crypto_floor,
    "issuance_from_csr": _issuance,
    "registry_lookup": _registry,
    "voucher_import": _vouchers,
    "onboarding": _onboarding,
    "onboarding_core": _onboarding_core,
    "onboarding_http": _onboarding_http,
    "decide": _rows("decide"),
    "envelope": _rows("envelope"),
    "contain": _rows("contain"),
    "ingest": _rows("ingest"),
    "updates": _rows("updates"),
}
for _optional in ("lifecycle", "audit", "dashboard"):
    if (Path(__file__).resolve().parent / f"{_optional}.py").exists():
        BENCHMARKS[_optional] = _rows(_optional)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    versions: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    from cryptography.hazmat.backends.openssl import backend  # noqa: PLC0415

    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "openssl": backend.openssl_version_text(),
        "sqlite": sqlite3.sqlite_version,
        "libraries": versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _rate(value: float) -> str:
    return f"{value:,.0f}/s"


def format_line(result: Result) -> str:
    """``issuance_from_csr     3,950/s   floor 8,700/s   ratio 0.45   (target >= 0.40: met)``."""
    line = f"{result.name:<20} {_rate(result.rate):>12}"
    if result.floor_rate is not None and result.ratio is not None:
        line += f"   floor {_rate(result.floor_rate):>10}   ratio {result.ratio:5.2f}"
    else:
        line += " " * 35
    if result.target is not None:
        verdict = "met" if result.meets_target else "NOT met"
        if result.floor_rate is not None:
            shown = f"{result.target:.2f}"
        else:
            shown = f"{result.target:,.0f}/s"
        line += f"   (target >= {shown}: {verdict})"
    return line.rstrip()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names: "
                        + ", ".join(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON results file (default {DEFAULT_OUTPUT})")
    parser.add_argument("--size", type=int, default=None,
                        help="force one size on every benchmark (e.g. 50 for a smoke run)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="measurement rounds per benchmark, best kept (default 3, quick 2)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where big registries are cached (default benchmarks/.cache)")
    parser.add_argument("--workers", type=int, default=None,
                        help="server workers for onboarding_http (default: CPU count)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if args.size is not None and args.size < 1:
        parser.error("--size must be at least 1")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.names = names or list(BENCHMARKS)
    return args


def main(argv: list[str] | None = None, output: Path | None = None) -> int:
    """Run the selected benchmarks; print the table; write the JSON file. Returns 0."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    defaults = Config()
    config = Config(
        quick=args.quick,
        size=args.size,
        rounds=args.rounds or (2 if args.quick else 3),
        cache_dir=args.cache_dir or defaults.cache_dir,
        http_workers=args.workers or os.cpu_count() or 1,
    )
    out_path: Path = args.out or output or DEFAULT_OUTPUT
    results: list[Result] = []
    skipped: list[dict[str, str]] = []
    timings: dict[str, float] = {}
    print(f"iotrust benchmarks ({'quick' if args.quick else 'full'}"
          f"{f', size {args.size}' if args.size else ''}, best of {config.rounds} rounds)",
          flush=True)
    for name in args.names:
        start = time.perf_counter()
        try:
            produced = BENCHMARKS[name](config)
        except Skipped as exc:
            skipped.append({"name": name, "reason": str(exc)})
            print(f"{name:<20} skipped: {exc}", flush=True)
            continue
        finally:
            timings[name] = time.perf_counter() - start
        for result in produced:
            results.append(result)
            print(format_line(result), flush=True)
            if result.note:
                print(f"{'':<20}   {result.note}", flush=True)
    report = {
        "generated_at": datetime.now(UTC).isoformat(),
        "mode": "quick" if args.quick else "full",
        "size": args.size,
        "rounds": config.rounds,
        "machine": machine_info(),
        "results": [r.as_json() for r in results],
        "skipped": skipped,
        "wall_seconds": timings,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    tmp.replace(out_path)
    print(f"results written to {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
