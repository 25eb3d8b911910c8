"""The ingest service on a real registry (SQLite), without a broker: restart, zombies, events.

Messages are handed to :meth:`IngestService.handle` as the MQTT loop would; the clock of the
aggregation is a test clock, so intervals are crossed without sleeping.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.integration.fleet import Fleet, build_fleet
from tests.integration.mqtt import Identity, add_active_devices

from iotrust.adapters.keys import DeviceFileKey
from iotrust.adapters.sql.store import Database
from iotrust.core import pki
from iotrust.core.envelope import kid_for_serial, seal
from iotrust.core.ingest import to_millis
from iotrust.core.lifecycle import CredentialState, RetirementReason
from iotrust.core.records import Credential
from iotrust.ports import SystemClock
from iotrust.services import devices
from iotrust.services import ingest as ingest_svc


class Mono:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def bed(tmp_path: Path) -> Any:
    clock = SystemClock()
    fleet = build_fleet(tmp_path, makers=(), clock=clock)
    db = fleet.open_db()
    idents = add_active_devices(fleet, db, clock, 2, tmp_path / "clients")
    with db.transaction() as tx:
        for ident in idents:
            for cred in tx.list_credentials(ident.name, CredentialState.ISSUED):
                tx.update_credential_state(cred.serial_number, CredentialState.ACTIVE,
                                           expected=CredentialState.ISSUED)
    try:
        yield fleet, db, clock, idents
    finally:
        db.close()


def credential_of(db: Database, ident: Identity) -> Credential:
    with db.transaction(readonly=True) as tx:
        return tx.list_credentials(ident.name)[0]


def sealed(ident: Identity, counter: int, *, topic: str | None = None, key: Any = None,
           serial: str | None = None) -> bytes:
    cert = pki.load_certificate(ident.cert.read_bytes())
    return seal(b'{"v":1}', signer=key or DeviceFileKey.load(ident.key), device_id=ident.name,
                counter=counter, timestamp=to_millis(datetime.now(UTC)),
                topic=topic or f"devices/{ident.name}/telemetry",
                content_type="application/json",
                kid=kid_for_serial(serial or format(cert.serial_number, "x")))


def service(db: Database, clock: Any, **kwargs: Any) -> ingest_svc.IngestService:
    return ingest_svc.IngestService(db, clock, [ingest_svc.DatabaseSink(db)], **kwargs)


def events(db: Database, kind: str) -> list[tuple[str | None, str | None, dict[str, Any]]]:
    with db.transaction(readonly=True) as tx:
        return [(e.device_id, e.reason, json.loads(e.data)) for e in tx.iter_events(kind=kind)]


def test_a_crash_never_readmits_and_a_clean_restart_is_exact(bed: Any) -> None:
    _fleet, db, clock, (dev, _) = bed
    topic = f"devices/{dev.name}/telemetry"
    first = service(db, clock)
    for i in range(3):
        assert first.handle(topic, sealed(dev, i)) is not None
    first.flush_sinks()  # then the process dies: no close(), counters only reserved
    after_crash = service(db, clock)
    assert after_crash.handle(topic, sealed(dev, 1)) is None
    assert after_crash.handle(topic, sealed(dev, 3)) is None  # inside the reserved gap
    assert after_crash.stats.refused == {"replayed": 2}
    assert after_crash.handle(topic, sealed(dev, 5000)) is not None  # past the reservation
    after_crash.close()  # clean: exact windows from now on
    clean = service(db, clock)
    assert clean.handle(topic, sealed(dev, 5000)) is None
    assert clean.handle(topic, sealed(dev, 4999)) is not None  # within the window, unseen
    clean.close()
    with db.transaction(readonly=True) as tx:
        assert [m.counter for _, _, m in tx.list_ingested_messages(dev.name)] == [
            0, 1, 2, 5000, 4999]


def test_a_revoked_identity_is_a_zombie_as_soon_as_its_revocation_is_logged(bed: Any) -> None:
    _fleet, db, clock, (dev, other) = bed
    topic = f"devices/{dev.name}/telemetry"
    ing = service(db, clock)
    assert ing.handle(topic, sealed(dev, 0)) is not None  # its credential is now cached
    devices.retire(db, clock, dev.name, RetirementReason.COMPROMISED, actor="tests@ingest")
    assert ing.registry.poll_changes(force=True) >= 1
    assert ing.handle(topic, sealed(dev, 1)) is None
    # a forgery naming the revoked credential is not the zombie itself: an ordinary refusal
    assert ing.handle(topic, sealed(dev, 2, key=DeviceFileKey.load(other.key))) is None
    ing.close()
    assert ing.stats.zombies == 1
    assert ing.stats.refused == {"unknown_credential": 2}
    zombies = events(db, "zombie.contact")
    assert [(d, r) for d, r, _ in zombies] == [(dev.name, "revoked")]
    assert zombies[0][2]["channel"] == "ingest"
    assert zombies[0][2]["count"] == 1
    refused = events(db, ingest_svc.INGEST_REFUSED)
    assert [(d, r, x["authenticated"]) for d, r, x in refused] == [
        (dev.name, "unknown_credential", False)]
    with db.transaction(readonly=True) as tx:
        (record,) = tx.list_zombies(device_id=dev.name)
    assert record.where == "ingest"


def test_repeated_refusals_become_one_event_per_interval(bed: Any) -> None:
    _fleet, db, clock, (dev, _) = bed
    mono = Mono()
    registry = ingest_svc.RegistryView(db, monotonic=mono)
    ing = service(db, clock, aggregate_interval_s=10.0, monotonic=mono, registry=registry)
    topic = f"devices/{dev.name}/telemetry"
    for _ in range(50):
        ing.handle(topic, b"\xd2\x84garbage")
    assert [x["count"] for _, _, x in events(db, ingest_svc.INGEST_REFUSED)] == [1]
    mono.t += 10.0
    ing.tick()
    got = events(db, ingest_svc.INGEST_REFUSED)
    assert [(d, r, x["count"]) for d, r, x in got] == [
        (dev.name, "malformed_envelope", 1), (dev.name, "malformed_envelope", 49)]
    assert got[1][2]["window_ms"] == 10_000
    mono.t += 10.0
    ing.tick()  # a quiet interval: nothing written, the key is forgotten
    assert len(events(db, ingest_svc.INGEST_REFUSED)) == 2
    ing.handle(topic, b"junk")
    assert len(events(db, ingest_svc.INGEST_REFUSED)) == 3  # the first of a new burst: at once
    ing.handle(topic, b"junk")
    ing.close()  # pending counts are written on shutdown
    assert [x["count"] for _, _, x in events(db, ingest_svc.INGEST_REFUSED)] == [1, 49, 1, 1]
    assert ing.stats.refused == {"malformed_envelope": 52}
    assert ing.stats.accepted == 0


def test_sinks_get_the_accepted_messages_in_batches(bed: Any, tmp_path: Path) -> None:
    fleet: Fleet = bed[0]
    _, db, clock, (dev, _) = bed
    assert fleet.settings.data_dir.exists()
    jsonl = ingest_svc.JsonlSink(tmp_path / "out" / "m.jsonl")
    ing = ingest_svc.IngestService(db, clock, [ingest_svc.DatabaseSink(db), jsonl],
                                   batch_size=4)
    topic = f"devices/{dev.name}/telemetry"
    for i in range(10):
        assert ing.handle(topic, sealed(dev, i)) is not None
    assert ing.stats.batches == 2
    ing.close()
    assert ing.stats.batches == 3
    lines = (tmp_path / "out" / "m.jsonl").read_text().splitlines()
    assert [json.loads(x)["counter"] for x in lines] == list(range(10))
    with db.transaction(readonly=True) as tx:
        assert tx.count_ingested_messages(dev.name) == 10
