"""iotrust benchmarks: each operation measured next to its physical floor, in the same run.

A benchmark module exposes ``run(config) -> list[Result]``. A :class:`Result` carries the rate of
the operation, the rate of its floor (the unavoidable work: ECDSA operations, a bare SQLite
lookup) measured in the same process a moment before or after, and their ratio. Comparing
ratios instead of raw rates keeps numbers meaningful across machines.

This package measures and reports; it asserts nothing about speed (the smoke test only checks
that results are well formed). See ``benchmarks/README.md`` for what each line means.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


class Skipped(Exception):  # noqa: N818 - a skip is not an error condition
    """A benchmark that cannot run here (a missing component); the message says why."""


@dataclass(frozen=True, slots=True)
class Config:
    """How big and how often: ``quick`` sizes, or one ``size`` forced on every benchmark."""

    quick: bool = False
    size: int | None = None
    rounds: int = 3
    cache_dir: Path = Path(__file__).resolve().parent / ".cache"
    http_workers: int = 2

    def pick(self, full: int, quick: int) -> int:
        """The size for this run: the forced ``size``, else ``quick`` or ``full``."""
        if self.size is not None:
            return self.size
        return quick if self.quick else full


@dataclass(frozen=True, slots=True)
class Result:
    """One printed line: an operation rate, its floor rate (if any) and their ratio.

    ``target`` is a minimum ratio when there is a floor, else a minimum rate.
    """

    name: str
    rate: float
    n: int
    floor: str | None = None
    floor_rate: float | None = None
    target: float | None = None
    note: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """Operation rate over floor rate (``None`` without a floor)."""
        if self.floor_rate is None or self.floor_rate <= 0:
            return None
        return self.rate / self.floor_rate

    @property
    def meets_target(self) -> bool | None:
        """Whether the ratio (or the rate, without a floor) reaches the target."""
        if self.target is None:
            return None
        value = self.ratio if self.floor_rate is not None else self.rate
        return value is not None and value >= self.target

    def as_json(self) -> dict[str, Any]:
        """The JSON form written to the results file."""
        return {
            "name": self.name,
            "rate_per_s": self.rate,
            "n": self.n,
            "floor": self.floor,
            "floor_rate_per_s": self.floor_rate,
            "ratio": self.ratio,
            "target": self.target,
            "meets_target": self.meets_target,
            "note": self.note,
            "details": self.details,
        }


class SoftKey:
    """An in-memory ECDSA P-256 signer (the ``Signer`` and ``HasPrivateKey`` protocols)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self._private_key = private_key or ec.generate_private_key(ec.SECP256R1())
        self._public_key = self._private_key.public_key()

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._private_key

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data, ECDSA_SHA256)


def seconds(work: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``work`` (a collection first, so garbage from set-up
    is not charged to it)."""
    gc.collect()
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def per_second(n: int, elapsed: float) -> float:
    """``n`` operations in ``elapsed`` seconds as a rate (never infinite)."""
    return n / max(elapsed, 1e-9)


def best(rates: list[float]) -> float:
    """The best of several rounds: the least disturbed by the rest of the machine."""
    finite = [r for r in rates if math.isfinite(r) and r > 0]
    if not finite:
        raise RuntimeError("no usable measurement")
    return max(finite)
