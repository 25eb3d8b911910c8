"""Sustaining and ending trust: rotation throughput, CRL size/time, retire-to-refused.

* ``lifecycle.rotation`` — whole rotations (begin, complete, confirm with real ECDSA signatures,
  a new certificate issued and the old one revoked) per second through the service layer, on
  SQLite, in process; CRL republication per confirmation switched off (the campaign's cost is
  then the registry and the crypto; the CRL is republished once per sweep or batch).
* ``lifecycle.crl_build`` — building, signing and verifying one CRL with 100,000 revoked
  certificates (quick: 10,000): time and DER/PEM size, the core operation behind every
  ``publish_crls``.
* ``lifecycle.retire_to_refused`` — from ``retire_many([device])`` (registry transition, CRL
  published, verified and installed, reload, rules, kick) to (a) the device's live session being
  cut and (b) its next TLS handshake being refused, with the other devices connected to a real
  Mosquitto over mTLS (full: 200 devices, 20 runs; quick: 20 devices, 5 runs).

``run(quick)`` returns rows ``{name, n, ..., extra}``; ``python -m benchmarks.lifecycle
[--quick]`` prints them.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _rotation(quick: bool) -> dict[str, Any]:
    from tests.integration.fleet import build_fleet  # noqa: PLC0415
    from tests.integration.lifecycle_helpers import RotatingDevice  # noqa: PLC0415
    from tests.integration.mqtt import add_active_devices  # noqa: PLC0415

    from iotrust.ports import SystemClock  # noqa: PLC0415
    from iotrust.services.rotation import RotationService  # noqa: PLC0415

    n = 50 if quick else 500
    base = Path(tempfile.mkdtemp(prefix="iotrust-rotation-"))
    try:
        clock = SystemClock()
        fleet = build_fleet(base, makers=(), clock=clock)
        db = fleet.open_db()
        try:
            idents = add_active_devices(fleet, db, clock, n, base / "clients")
            svc = RotationService(db, clock, fleet.settings, fleet.secrets, publish=False)
            devs = [RotatingDevice(i.name, i.cert, i.key) for i in idents]
            t0 = time.perf_counter()
            for dev in devs:
                dev.rotate(svc)
            elapsed = time.perf_counter() - t0
        finally:
            db.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"name": "lifecycle.rotation", "n": n, "devices_per_s": round(n / elapsed, 1),
            "mean_ms": round(elapsed / n * 1000, 2),
            "extra": {"store": "sqlite", "crl_per_confirm": False,
                      "includes": "device-side keygen, CSR and 3 signatures"}}


def _crl(quick: bool) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from iotrust.adapters.keys.file import DeviceFileKey  # noqa: PLC0415
    from iotrust.core import pki  # noqa: PLC0415

    n = 10_000 if quick else 100_000
    base = Path(tempfile.mkdtemp(prefix="iotrust-crl-"))
    try:
        key = DeviceFileKey.generate(base / "ca.pem")
        now = datetime.now(UTC)
        root = pki.build_root_ca(key, "Bench Root", "bench", now, timedelta(days=365))
        entries = [pki.RevokedEntry(serial_number=int.from_bytes(os.urandom(19), "big") | 1,
                                    revoked_at=now) for _ in range(n)]
        t0 = time.perf_counter()
        crl = pki.build_crl(key, root, entries, crl_number=1, this_update=now,
                            next_update=now + timedelta(days=7))
        t_build = time.perf_counter() - t0
        t1 = time.perf_counter()
        pki.check_crl(crl, root, now)
        t_check = time.perf_counter() - t1
        der = crl.public_bytes(serialization.Encoding.DER)
        pem = crl.public_bytes(serialization.Encoding.PEM)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"name": "lifecycle.crl_build", "n": n, "build_ms": round(t_build * 1000, 1),
            "verify_ms": round(t_check * 1000, 1), "der_bytes": len(der),
            "pem_bytes": len(pem), "extra": {"bytes_per_entry_der": round(len(der) / n, 1),
                                             "serials": "152-bit random"}}


def _retire(quick: bool) -> list[dict[str, Any]]:
    from tests.integration.mqtt import build_testbed  # noqa: PLC0415

    from iotrust.core.lifecycle import RetirementReason  # noqa: PLC0415
    from iotrust.services import retirement  # noqa: PLC0415

    devices, runs = (20, 5) if quick else (200, 20)
    base = Path(tempfile.mkdtemp(prefix="iotrust-retire-"))
    cut: list[float] = []
    refused: list[float] = []
    others_lost = 0
    try:
        tb = build_testbed(base, devices=devices)
        with tb.running() as broker:
            clients = {d.name: tb.client(d) for d in tb.devices}
            if not all(c.connect() for c in clients.values()):
                raise RuntimeError("not every device connected")
            db = tb.db()
            try:
                for ident in tb.devices[:runs]:
                    c = clients[ident.name]
                    t0 = time.monotonic()
                    retirement.retire_many(db, tb.settings, tb.fleet.secrets, tb.clock,
                                           device_ids=[ident.name],
                                           reason=RetirementReason.DECOMMISSIONED,
                                           actor="bench@lifecycle", broker=broker)
                    if c.wait(lambda c=c: bool(c.disconnects), 10.0):
                        cut.append((time.monotonic() - t0) * 1000)
                    probe = tb.client(ident)
                    if not probe.connect():
                        refused.append((time.monotonic() - t0) * 1000)
                    probe.close()
            finally:
                db.close()
            others_lost = sum(1 for d in tb.devices[runs:] if clients[d.name].disconnects)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    extra = {"devices": devices, "runs": runs, "other_devices_lost_session": others_lost,
             "target_ms": {"p99": 2000}}
    rows = []
    for name, values in (("lifecycle.retire_to_session_cut", cut),
                         ("lifecycle.retire_to_refused_handshake", refused)):
        rows.append({"name": name, "n": len(values),
                     "p50_ms": round(statistics.median(values), 1) if values else None,
                     "p99_ms": round(_pct(values, 0.99), 1) if values else None,
                     "extra": extra})
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """The lifecycle benchmark rows."""
    return [_rotation(quick), _crl(quick), *_retire(quick)]


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(json.dumps(row))
