"""Quarantine and release on live sessions, with the rest of the fleet untouched (§7)."""

from __future__ import annotations

import threading
import time

import pytest
from tests.integration.mqtt import NOT_AUTHORIZED, build_testbed

from iotrust.core.lifecycle import DeviceState
from iotrust.services import broker as broker_svc

pytestmark = pytest.mark.mqtt


def test_quarantine_cuts_one_session_keeps_the_others_and_release_restores(tmp_path):  # noqa: PLR0915 - one scenario, told in order
    tb = build_testbed(tmp_path, devices=4)
    with tb.running() as broker:
        ingest = tb.subscriber()
        target, *others = tb.devices
        tc = tb.client(target, reconnect=True)
        assert tc.connect()
        peers = [tb.client(o) for o in others]
        assert all(p.connect() for p in peers)
        stop = threading.Event()
        refused: list[int | None] = []

        def traffic():
            while not stop.is_set():
                for o, p in zip(others, peers, strict=True):
                    rc = p.publish(f"devices/{o.name}/telemetry", b"t", timeout=2)
                    if rc != 0:
                        refused.append(rc)
                time.sleep(0.02)

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            db = tb.db()
            try:
                result = broker_svc.quarantine(db, tb.clock, broker, target.name,
                                               actor="tests@broker", reason="suspicious")
            finally:
                db.close()
            assert result.device.state is DeviceState.QUARANTINED
            assert result.broker == "applied"
            assert result.timings_ms["total"] > 0  # measured in benchmarks/contain.py, not here
            assert tc.wait(lambda: tc.disconnects, 15), "live session not cut"
            assert tc.wait(lambda: tc.connected and len(tc.connects) >= 2, 20), "no reconnect"
            assert tc.publish(f"devices/{target.name}/telemetry") == NOT_AUTHORIZED
            assert tc.publish(f"devices/{target.name}/status") == NOT_AUTHORIZED
            assert tc.publish(f"devices/{target.name}/attestation", b"quote") == 0
            assert tc.publish(f"devices/{target.name}/quarantine/status", b"q") == 0
            deadline = time.monotonic() + 10
            while not ingest.delivered(f"devices/{target.name}/attestation") \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ingest.delivered(f"devices/{target.name}/attestation") == [b"quote"]

            db = tb.db()
            try:
                back = broker_svc.release(db, tb.clock, broker, target.name, actor="tests@broker")
            finally:
                db.close()
            assert back.device.state is DeviceState.ACTIVE
            assert tc.wait(lambda: len(tc.disconnects) >= 2, 15)
            assert tc.wait(lambda: tc.connected and len(tc.connects) >= 3, 20)
            assert tc.publish(f"devices/{target.name}/telemetry", b"back") == 0
        finally:
            stop.set()
            worker.join()
        assert refused == []
        assert all(p.disconnects == [] and len(p.connects) == 1 for p in peers)
        for o in others:
            assert ingest.delivered(f"devices/{o.name}/telemetry")
        deadline = time.monotonic() + 15  # delivery to the subscriber is asynchronous
        while not ingest.delivered(f"devices/{target.name}/telemetry") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ingest.delivered(f"devices/{target.name}/telemetry") == [b"back"]
