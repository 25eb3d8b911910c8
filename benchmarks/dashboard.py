"""The fleet dashboard at 100,000 devices: how long each page takes to render, server side.

A trust domain in a temporary folder gets a registry of 100,000 devices (quick: 20,000)
bulk-inserted with ``Tx.add_devices`` (states and models spread over the fleet) and 20,000 events;
an operator signs in through the real login form, then the FastAPI app (``TestClient``, in process:
routing, session check, SQL, Jinja rendering, no network) serves:

* ``overview``: the fleet overview (one ``GROUP BY`` over model and state);
* ``list_first``: the first devices page;
* ``list_deep``: a keyset page near the end of the id order (``after=`` the 99,000th id);
* ``list_filtered``: state + model filter, the first page;
* ``search_serial``: a serial-prefix search matching one device;
* ``search_miss``: a serial-prefix search that matches nothing;
* ``search_broad``: a serial prefix every device has (the worst case: all matches sorted by id);
* ``device``: one device page (identity, credentials, policy, events);
* ``events`` and ``events_feed``: the live event page and one poll of its feed.

Each line reports the median and the worst of the rounds in milliseconds; the floor is the same
request for ``/v1/health`` (routing and one tiny query), so the ratio shows what the page itself
costs. Nothing here asserts a speed; the target (each page well under a second) is printed.

``run(quick) -> list[dict]`` (rows in the shape ``benchmarks.run._rows`` adapts: ``rate`` in pages
per second, ``p50_ms``/``max_ms``); ``python -m benchmarks.dashboard [--quick]``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient

from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.adapters.sql.store import Database
from iotrust.api.app import create_app
from iotrust.core import pki
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import Device, DeviceState, RetirementReason
from iotrust.core.records import DeviceModel
from iotrust.ports import SystemClock
from iotrust.services import domain, eventlog, manufacturers, tokens
from iotrust.services.settings import Settings

PASSPHRASE: Final = b"iotrust dashboard benchmark passphrase, not a secret"
MAKER: Final = "benchco"
MODELS: Final = ("sensor-a", "sensor-b", "gateway-c", None)
STATES: Final = (DeviceState.ACTIVE,) * 6 + (DeviceState.EXPECTED, DeviceState.EXPECTED,
                                             DeviceState.QUARANTINED, DeviceState.RETIRED)
TARGET_MS: Final = 1000.0
_CHUNK: Final = 20_000


def _devices(start: int, count: int, now: datetime) -> list[Device]:
    out = []
    for i in range(start, start + count):
        digest = hashlib.sha256(b"iotrust-dashboard-bench:%d" % i).digest()
        state = STATES[i % len(STATES)]
        out.append(Device(
            id=new_device_id(digest[:16]), manufacturer=MAKER, serial=f"SN{i:09d}",
            factory_spki_sha256=hashlib.sha256(digest).hexdigest(), vendor_id="0xbe",
            product_id="s1", owner="bench-ops", state=state, created_at=now, updated_at=now,
            model=MODELS[i % len(MODELS)],
            retired_reason=RetirementReason.DECOMMISSIONED
            if state is DeviceState.RETIRED else None))
    return out


def _seed(folder: Path, size: int, events: int) -> tuple[Settings, Database, str, list[str]]:
    clock = SystemClock()
    settings = Settings(data_dir=folder, database_url=f"sqlite:///{folder / 'iotrust.db'}")
    db = Database.open(settings.database_url)
    domain.init_domain(db, settings, clock, name="bench", owner="bench-ops",
                       backend=domain.KeyBackend(kind="file", passphrase=PASSPHRASE),
                       public_url="https://iotrust.example")
    now = clock.now()
    root = pki.build_root_ca(DeviceFileKey.generate(folder / "maker.key"), "Bench Root", MAKER,
                             now - timedelta(days=1), timedelta(days=3650))
    manufacturers.add_manufacturer(db, clock, name=MAKER,
                                   anchors_pem=root.public_bytes(serialization.Encoding.PEM),
                                   allowed=["0xbe:s1"], actor="bench@iotrust")
    with db.transaction() as tx:
        for model in MODELS:
            if model is not None:
                tx.add_model(DeviceModel(name=model, manufacturer=MAKER,
                                         credential_lifetime_s=86400 * 30, created_at=now))
    ids: list[str] = []
    for start in range(0, size, _CHUNK):
        chunk = _devices(start, min(_CHUNK, size - start), now)
        ids += [d.id for d in chunk]
        with db.transaction() as tx:
            tx.add_devices(chunk)
    for start in range(0, events, 1000):
        with db.transaction() as tx:
            for i in range(start, min(events, start + 1000)):
                refused = i % 10 == 0
                eventlog.record(tx, clock, "onboarding.refused" if refused else "device.seen",
                                actor="bench@iotrust", device_id=ids[i % len(ids)],
                                reason="not_enrolled" if refused else None, data={"n": i})
    _, secret = tokens.create_token(db, clock, name="bench-operator", role="operator",
                                    actor="bench@iotrust")
    return settings, db, secret, sorted(ids)


def _login(client: TestClient, secret: str) -> None:
    page = client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    if csrf is None:
        raise RuntimeError("no login form")
    r = client.post("/ui/login", data={"token": secret, "csrf": csrf.group(1)})
    if r.status_code != 303:
        raise RuntimeError(f"login failed: {r.status_code}")


def _time(client: TestClient, url: str, rounds: int) -> list[float]:
    client.get(url)  # warm: templates compiled, pages cached by SQLite
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        r = client.get(url)
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}")
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    """One row per page: median and worst milliseconds over the rounds."""
    size, events, rounds = (20_000, 5_000, 5) if quick else (100_000, 20_000, 15)
    folder = Path(tempfile.mkdtemp(prefix="iotrust-dashboard-bench-"))
    try:
        t0 = time.perf_counter()
        settings, db, secret, ids = _seed(folder, size, events)
        build_s = time.perf_counter() - t0
        app = create_app(settings, secrets=domain.Secrets(passphrase=PASSPHRASE), db=db)
        client = TestClient(app, follow_redirects=False)
        _login(client, secret)
        deep = ids[int(size * 0.99)]
        pages = {
            "overview": "/ui/",
            "list_first": "/ui/devices",
            "list_deep": f"/ui/devices?after={deep}",
            "list_filtered": "/ui/devices?state=active&model=sensor-b",
            "search_serial": f"/ui/devices?q=SN{size // 2:09d}",
            "search_miss": "/ui/devices?q=SNX",
            "search_broad": "/ui/devices?q=SN",
            "device": f"/ui/devices/{ids[size // 3]}",
            "events": "/ui/events",
            "events_refusals": "/ui/events?refusals=true",
            "events_feed": f"/ui/events/feed?after={events - 50}",
        }
        floor = statistics.median(_time(client, "/v1/health", rounds))
        rows: list[dict[str, Any]] = []
        for name, url in pages.items():
            times = _time(client, url, rounds)
            median = statistics.median(times)
            rows.append({
                "name": f"dashboard_{name}", "unit": "pages/s", "n": rounds,
                "rate": round(1000 / median, 1) if median else 0.0,
                "p50_ms": round(median, 2), "max_ms": round(max(times), 2),
                "median_ms": round(median, 2), "worst_ms": round(max(times), 2),
                "floor_ms": round(floor, 2),
                "ratio": round(median / floor, 1) if floor else None, "devices": size,
                "events": events, "rounds": rounds, "url": url.replace(secret, "…"),
                "target_ms": TARGET_MS, "meets_target": max(times) < TARGET_MS,
                "build_seconds": round(build_s, 1)})
        db.close()
        return rows
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    for row in run("--quick" in sys.argv[1:]):
        verdict = "met" if row["meets_target"] else "NOT met"
        print(f"{row['name']:<28} median {row['median_ms']:8.1f} ms   worst "
              f"{row['worst_ms']:8.1f} ms   floor {row['floor_ms']:6.2f} ms   "
              f"({row['devices']:,} devices; < {row['target_ms']:.0f} ms: {verdict})")
    print(f"registry built in {row['build_seconds']} s", file=sys.stderr)

