"""Signed-message envelope and replay-window throughput, next to their floors.

* ``envelope_verify``: :func:`~iotrust.core.envelope.open_envelope` plus
  :func:`~iotrust.core.envelope.verify_signature` on a typical telemetry envelope, against raw
  ECDSA P-256 verifications (``cryptography``, DER signature, same message length) measured in
  alternating rounds of the same run; the best round of each is kept. Target ratio >= 0.8.
* ``ingest_verify``: the whole ingest decision (:func:`~iotrust.core.ingest.verify_message`:
  credential, signature, state, topic and policy, age, replay window), same floor.
* ``replay_window``: :meth:`~iotrust.core.freshness.ReplayWindow.check_and_update` calls per
  second on in-order counters with some reordering, against a bare Python function call as the
  floor (so the ratio says how close the window is to "nothing"). Target >= 1,000,000/s.

``run(quick) -> list[dict]`` returns rows ``{name, rate, floor, ratio, unit, extra}``;
``bench_envelope(config) -> list[Result]`` is the same for the :mod:`benchmarks.run` harness.
Nothing here asserts a speed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks import Config, Result
from iotrust.core import envelope as e
from iotrust.core.freshness import ReplayWindow
from iotrust.core.ids import new_device_id
from iotrust.core.ingest import DeviceCredential, to_millis, verify_message
from iotrust.core.lifecycle import CredentialState, DeviceState

ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ENVELOPE_TARGET = 0.8
WINDOW_TARGET = 1_000_000.0


class _Key:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ECDSA_SHA256)


def _timed(fn: Any, n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return n / max(time.perf_counter() - start, 1e-9)


def _envelope_rates(n: int, rounds: int) -> dict[str, float]:
    key = _Key()
    device = new_device_id(bytes(range(16)))
    topic = f"devices/{device}/telemetry"
    serial = "5f3e2d1c0b0a09080706050403020100"
    payload = b'{"temperature":21.5,"humidity":40}'
    fields: dict[str, Any] = {"device_id": device, "timestamp": to_millis(NOW), "topic": topic,
                              "content_type": 50, "kid": e.kid_for_serial(serial)}
    one = e.seal(payload, signer=key, counter=1, **fields)
    many = [e.seal(payload, signer=key, counter=c, **fields) for c in range(1, n + 1)]
    tbs = e.open_envelope(one).to_be_signed()
    der = key.key.sign(tbs, ECDSA_SHA256)
    public = key.public_key
    cred = DeviceCredential(serial=serial, device_id=device, public_key=public,
                            state=CredentialState.ACTIVE, not_before=NOW - timedelta(days=1),
                            not_after=NOW + timedelta(days=30))
    lookup = {serial: cred}.get

    def raw(k: int) -> None:
        for _ in range(k):
            public.verify(der, tbs, ECDSA_SHA256)

    def envelope(k: int) -> None:
        for _ in range(k):
            e.verify_signature(e.open_envelope(one), public)

    def ingest(k: int) -> None:
        window = ReplayWindow()
        for data in many[:k]:
            verify_message(e.open_envelope(data), arrived_topic=topic, now=NOW,
                           credential_lookup=lookup, device_state=DeviceState.ACTIVE,
                           window=window)

    # Many short alternating slices, best slice of each kept: on a shared machine this keeps
    # the operation and its floor under the same conditions.
    chunk = max(50, n // 10)
    best = {"raw": 0.0, "envelope": 0.0, "ingest": 0.0}
    for _ in range(rounds * 10):
        for name, fn in (("raw", raw), ("envelope", envelope), ("raw", raw), ("ingest", ingest)):
            best[name] = max(best[name], _timed(fn, chunk))
    best["size"] = float(len(one))
    best["payload"] = float(len(payload))
    return best


def _window_rates(n: int, rounds: int) -> dict[str, float]:
    # in-order counters with every 8th pair swapped: realistic light reordering
    counters = list(range(n))
    for i in range(0, n - 1, 8):
        counters[i], counters[i + 1] = counters[i + 1], counters[i]

    def window_run(_: int) -> None:
        check = ReplayWindow(64).check_and_update
        for c in counters:
            check(c)

    def floor_run(_: int) -> None:
        def nothing(_c: int) -> None:
            return None

        for c in counters:
            nothing(c)

    best = {"window": 0.0, "call": 0.0}
    for _ in range(rounds):
        best["window"] = max(best["window"], _timed(window_run, n))
        best["call"] = max(best["call"], _timed(floor_run, n))
    return best


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure and return rows ``{name, rate, floor, ratio, unit, extra}``."""
    n, rounds = (300, 2) if quick else (3000, 3)
    env = _envelope_rates(n, rounds)
    win = _window_rates(20_000 if quick else 1_000_000, rounds)
    extra = {"envelope_bytes": int(env["size"]), "payload_bytes": int(env["payload"]),
             "n": n, "rounds": rounds}
    return [
        {"name": "envelope_verify", "rate": env["envelope"], "floor": env["raw"],
         "ratio": env["envelope"] / env["raw"], "unit": "verifications/s",
         "extra": {**extra, "floor": "raw ECDSA P-256 verify", "target_ratio": ENVELOPE_TARGET}},
        {"name": "ingest_verify", "rate": env["ingest"], "floor": env["raw"],
         "ratio": env["ingest"] / env["raw"], "unit": "messages/s",
         "extra": {**extra, "floor": "raw ECDSA P-256 verify"}},
        {"name": "replay_window", "rate": win["window"], "floor": win["call"],
         "ratio": win["window"] / win["call"], "unit": "checks/s",
         "extra": {"floor": "empty Python function call", "target_rate": WINDOW_TARGET}},
    ]


def bench_envelope(config: Config) -> list[Result]:
    """The same measurements as :class:`benchmarks.Result` lines for :mod:`benchmarks.run`."""
    rows = run(config.quick or (config.size is not None and config.size < 1000))
    results = []
    for row in rows:
        if row["name"] == "replay_window":
            results.append(Result(name=row["name"], rate=row["rate"], n=1, target=WINDOW_TARGET,
                                  note="floor in details: empty function call",
                                  details={"call_rate": row["floor"], **row["extra"]}))
        else:
            target = ENVELOPE_TARGET if row["name"] == "envelope_verify" else None
            results.append(Result(name=row["name"], rate=row["rate"], n=row["extra"]["n"],
                                  floor="ecdsa_p256_verify", floor_rate=row["floor"],
                                  target=target, details=row["extra"]))
    return results


if __name__ == "__main__":
    import sys

    for r in run("--quick" in sys.argv):
        print(f"{r['name']:18} {r['rate']:>12,.0f} {r['unit']:18} floor {r['floor']:>12,.0f} "
              f"ratio {r['ratio']:.2f}")
