"""Memory of the soak's processes (:mod:`benchmarks.soak`): RSS samples and a boundedness verdict.

:func:`sample` reads ``VmRSS`` from ``/proc`` for every process of the run: the ``iotrust serve``
supervisor and each of its descendants (the uvicorn workers, labelled ``serve.worker.1``...
in pid order; other helpers by their command name), the broker and the ingest process.

:func:`verdict` judges one series: the mean of the last third of the samples against the mean
of the middle third (the first third is warm-up: imports, pools, caches filling), and the
least-squares slope over the second half in MiB per hour. A series is **bounded** when the
last third is at most ``max(2 MiB, 2 %)`` above the middle third *and* the slope, extended
over the second half, adds no more than that; otherwise **growing**; with fewer than nine
samples it is **too short** to say.

With ``since_s`` (``soak --churn-minutes``), :func:`verdicts` judges only the samples taken from
then on (the steady phase, once revocations stopped growing the CRL); ``first_mib`` stays the
run's first sample, ``steady_first_mib`` is the first one judged. :func:`file_sizes` samples the
broker's files that grow with the registry (CRL, dynamic-security configuration, ACL), so a
growing broker can be told apart from a growing configuration.
"""

from __future__ import annotations

import statistics
from contextlib import suppress
from pathlib import Path
from typing import Any

MIN_SAMPLES = 9
TOLERANCE_MIB = 2.0
TOLERANCE_FRACTION = 0.02


def _children(pid: int) -> list[int]:
    out = []
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def rss_kib(pid: int) -> int:
    """``VmRSS`` of ``pid`` in KiB (0 when it is gone)."""
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cmdline(pid: int) -> str:
    with suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    return ""


def descendants(root: int) -> list[int]:
    """Every descendant of ``root`` (not ``root`` itself), in pid order."""
    seen: set[int] = set()
    todo = _children(root)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += _children(pid)
    return sorted(seen)


def sample(serve_pid: int, others: dict[str, int]) -> dict[str, float]:
    """RSS in MiB per labelled process right now."""
    out = {"serve.main": rss_kib(serve_pid) / 1024}
    worker = 0
    for pid in descendants(serve_pid):
        cmd = _cmdline(pid)
        if "resource_tracker" in cmd:
            label = "serve.resource_tracker"
        else:
            worker += 1
            label = f"serve.worker.{worker}"
        out[label] = rss_kib(pid) / 1024
    for label, pid in others.items():
        out[label] = rss_kib(pid) / 1024
    return {k: round(v, 1) for k, v in out.items()}


def file_sizes(files: dict[str, Path]) -> dict[str, int]:
    """Size in bytes of each labelled file right now (0 when it is missing)."""
    out = {}
    for label, path in files.items():
        try:
            out[label] = path.stat().st_size
        except OSError:
            out[label] = 0
    return out


def verdict(points: list[tuple[float, float]]) -> dict[str, Any]:
    """Judge one series of ``(seconds, MiB)`` samples (see the module docstring)."""
    n = len(points)
    values = [v for _, v in points]
    base: dict[str, Any] = {"samples": n, "first_mib": values[0] if values else None,
                            "last_mib": values[-1] if values else None,
                            "max_mib": max(values) if values else None}
    if n < MIN_SAMPLES:
        return {**base, "verdict": "too short"}
    middle = statistics.fmean(values[n // 3: 2 * n // 3])
    last = statistics.fmean(values[2 * n // 3:])
    half = points[n // 2:]
    hours = [t / 3600 for t, _ in half]
    slope = statistics.linear_regression(hours, [v for _, v in half]).slope
    span_h = hours[-1] - hours[0]
    tolerance = max(TOLERANCE_MIB, TOLERANCE_FRACTION * middle)
    growth = last - middle
    bounded = growth <= tolerance and slope * span_h <= tolerance
    return {**base, "middle_third_mean_mib": round(middle, 1),
            "last_third_mean_mib": round(last, 1), "growth_mib": round(growth, 1),
            "slope_second_half_mib_per_hour": round(slope, 1),
            "tolerance_mib": round(tolerance, 1),
            "verdict": "bounded" if bounded else "growing"}


def verdicts(samples: list[dict[str, Any]], since_s: float = 0.0) -> dict[str, dict[str, Any]]:
    """A verdict per process label and for their total (``samples``: ``t_s`` and ``mib``).

    Only the samples at ``t_s >= since_s`` are judged (see the module docstring).
    """
    labels = sorted({label for s in samples for label in s["mib"]})
    judged = [s for s in samples if s["t_s"] >= since_s]

    def series(label: str | None, of: list[dict[str, Any]]) -> list[tuple[float, float]]:
        if label is None:
            return [(s["t_s"], round(sum(s["mib"].values()), 1)) for s in of]
        return [(s["t_s"], s["mib"][label]) for s in of if label in s["mib"]]

    out = {}
    for label in [*labels, None]:
        whole, steady = series(label, samples), series(label, judged)
        v = verdict(steady)
        if since_s > 0:
            v = {**v, "steady_first_mib": v["first_mib"], "since_s": since_s,
                 "first_mib": whole[0][1] if whole else None,
                 "max_mib": max((m for _, m in whole), default=None)}
        out[label or "total"] = v
    return out
