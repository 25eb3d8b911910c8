"""Full posture audit over a synthetic registry: 1,000,000 devices (quick: 50,000).

The registry is real (``init_domain``: CA keys, published CRL; models registered from the
example hardware profiles; policies and groups through the policy service) and the fleet is
bulk-inserted: devices with ``Tx.add_devices``, then credentials, seen keys and zombie rows with
SQLAlchemy ``executemany`` in chunks. Its shape, per 1,000 devices: 900 active, 50 quarantined,
30 expected, 20 retired; one live credential per active/quarantined device (certificates drawn
from a pool of 256 real certificates, 1 in 10,000 an RSA-1024 one), 10 revoked, 50 expiring
within a week, 20 older than a year; 5 in a "spy" group with a shared ``devices/+/telemetry``
subscription; 100 gateways (quick: 10) with 10 named downstream devices each; 30 devices not
seen for 60 days; zombie rows for the retired ones.

The event log holds the set-up events plus two chained records per device (``device.expected``
and ``device.onboarded``, bulk-inserted; 2,000,000 at 1M devices), and configuration is
published for :data:`CONFIG_DEVICES` devices (one in ten a copy of another's) and one group.

``run(quick)`` returns, per backend (SQLite, and PostgreSQL when ``scripts/postgres.sh`` or
``IOTRUST_BENCH_POSTGRES_URL`` provides one), one row with the total audit time and the time of
every check, plus the build time. The audit runs twice, as a scheduler would: the first run
has no checkpoint and verifies the whole event log (``extra.full``, the cost of every audit
before incremental verification), then :data:`APPENDED` events are appended and the second run
verifies only those from the first run's checkpoint (``extra.incremental``; the row's
``seconds``). ``extra.event_log_before_s`` is the event-log check as it was before checkpoints
(``verify_chain`` over ``Tx.iter_events``, at every audit) on the same log, and
``extra.event_log_floor_s`` the floor of any full verification measured in the same run: one
``hashlib.sha256`` of a 300-byte string per record, nothing else.
``python -m benchmarks.audit [--quick] [--sqlite] [--postgresql]`` prints each row as soon as
its backend is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, insert, update

from benchmarks.registry import MANUFACTURER, OWNER, PRODUCT_ID, VENDOR_ID, add_manufacturer
from iotrust.adapters.sql import schema as s
from iotrust.adapters.sql.store import Database
from iotrust.core.events import EventDraft, chain_next, verify_chain
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import Device, DeviceState, KeyStorage, RetirementReason
from iotrust.core.policy import Action, Rule
from iotrust.core.records import EventHead
from iotrust.ports import FixedClock
from iotrust.services import audit as audit_svc
from iotrust.services import credentials, policies, updates
from iotrust.services import hardware as hw_svc
from iotrust.services.domain import KeyBackend, Secrets, init_domain
from iotrust.services.gateways import authorize_gateway
from iotrust.services.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PASSPHRASE = b"iotrust audit benchmark passphrase"
ACTOR = "bench@iotrust"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CHUNK = 20_000
POOL = 256
#: Records appended between the two audits (a busy day at 1M devices is of this order).
APPENDED = 10_000
#: Devices that get a configuration document (every tenth a copy of the previous one's).
CONFIG_DEVICES = 200
MODELS = (("tiny-mcu", "class1-mcu.yaml"), ("se-sensor", "mcu-secure-element.yaml"),
          ("tz-sensor", "mcu-trustzone.yaml"), ("gw-tpm", "linux-gateway-tpm.yaml"))
STORAGE = (KeyStorage.SECURE_ELEMENT, KeyStorage.SECURE_ELEMENT, KeyStorage.TPM,
           KeyStorage.FILE, KeyStorage.SOFTWARE, KeyStorage.UNKNOWN)


def _id(i: int) -> str:
    return new_device_id(hashlib.sha256(b"audit-bench:%d" % i).digest()[:16])


def _state(i: int) -> DeviceState:
    r = i % 1000
    if r < 900:
        return DeviceState.ACTIVE
    if r < 950:
        return DeviceState.QUARANTINED
    if r < 980:
        return DeviceState.EXPECTED
    return DeviceState.RETIRED


def _certificate_pool() -> list[str]:
    out = []
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench issuing CA")])
    signer = ec.generate_private_key(ec.SECP256R1())
    for i in range(POOL):
        key: Any = (rsa.generate_private_key(public_exponent=65537, key_size=1024) if i == 0
                    else ec.generate_private_key(ec.SECP256R1()))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _id(i))])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(NOW - timedelta(days=30))
                .not_valid_after(NOW + timedelta(days=335)).sign(signer, hashes.SHA256()))
        out.append(cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    return out


def _devices(start: int, count: int) -> list[Device]:
    out = []
    for i in range(start, start + count):
        state = _state(i)
        model, _ = MODELS[i % len(MODELS)]
        out.append(Device(
            id=_id(i), manufacturer=MANUFACTURER, serial=f"AB{i:09d}",
            factory_spki_sha256=hashlib.sha256(b"factory:%d" % i).hexdigest(),
            vendor_id=VENDOR_ID, product_id=PRODUCT_ID, owner=OWNER, state=state,
            created_at=NOW - timedelta(days=200), updated_at=NOW - timedelta(days=100),
            model=model, key_storage=STORAGE[i % len(STORAGE)],
            retired_reason=RetirementReason.DECOMMISSIONED if state is DeviceState.RETIRED
            else None, unsafe_admission=i % 5000 == 1))
    return out


def _credential_rows(start: int, count: int, ca_id: str, pool: list[str]) -> list[dict[str, Any]]:
    rows = []
    for i in range(start, start + count):
        if _state(i) not in (DeviceState.ACTIVE, DeviceState.QUARANTINED):
            continue
        r = i % 1000
        not_after = NOW + timedelta(days=30 + (i % 300))
        if r < 50:
            not_after = NOW + timedelta(hours=1 + (i % 150))
        not_before = not_after - timedelta(days=365)
        if 50 <= r < 70:
            not_before = NOW - timedelta(days=400)
        revoked = 70 <= r < 80
        rows.append({
            "serial_number": f"{i + 1:x}", "device_id": _id(i), "subject": _id(i),
            "spki_sha256": hashlib.sha256(b"credential:%d" % i).hexdigest(),
            "issuer_ca_id": ca_id, "not_before": not_before, "not_after": not_after,
            "state": "revoked" if revoked else "active",
            "certificate_pem": pool[(i * 7919) % POOL if i % 10_000 else 0],
            "revoked_at": NOW - timedelta(days=1) if revoked else None,
            "revocation_reason": "key_compromise" if revoked else None,
            "created_at": not_before})
    return rows


def _event_rows(head: EventHead | None, start: int, count: int,
                ) -> tuple[list[dict[str, Any]], EventHead | None]:
    """Two chained records per device ``start .. start+count-1``, after ``head``."""
    rows = []
    for i in range(start, start + count):
        device = _id(i)
        for draft in (EventDraft(kind="device.expected", actor="vouchers@iotrust",
                                 device_id=device, data={"serial": f"AB{i:09d}",
                                                         "voucher_sha256": f"{i:064x}"}),
                      EventDraft(kind="device.onboarded", actor="onboarding@iotrust",
                                 device_id=device, data={"credential": f"{i + 1:x}"})):
            row = chain_next(head, draft, NOW - timedelta(days=100))
            head = row.head
            rows.append({"seq": row.seq, "at": row.at, "kind": row.kind, "actor": row.actor,
                         "device_id": row.device_id, "reason": row.reason, "data": row.data,
                         "prev_hash": row.prev_hash, "hash": row.hash})
    return rows, head


def append_events(db: Database, settings: Settings, count: int, start: int = 0) -> None:
    """Bulk-append ``count`` device records (two per device from ``start``) to the chain."""
    with db.transaction(readonly=True) as tx:
        head = tx.event_head()
    engine = create_engine(settings.database_url)
    try:
        for first in range(start, start + count // 2, CHUNK):
            rows, head = _event_rows(head, first, min(CHUNK, start + count // 2 - first))
            with engine.begin() as conn:
                conn.execute(insert(s.events), rows)
        assert head is not None
        with engine.begin() as conn:
            conn.execute(update(s.event_head).where(s.event_head.c.id == 1)
                         .values(seq=head.seq, hash=head.hash))
    finally:
        engine.dispose()


def publish_configs(settings: Settings, devices: int) -> None:
    """One group document and ``devices`` device documents, every tenth a copy."""
    clock = FixedClock(NOW)
    updates.init_updates(settings, KeyBackend(kind="file", passphrase=PASSPHRASE), clock)
    image = updates.open_image(settings, Secrets(passphrase=PASSPHRASE))
    updates.publish_config(image, {"interval_s": 60, "broker": "mqtt.example"},
                           scope="groups/all", version=1, now=NOW)
    for i in range(devices):
        source = i - 1 if i % 10 == 9 else i
        updates.publish_config(image, {"device_token": hashlib.sha256(
            b"token:%d" % source).hexdigest(), "name": f"pump-{source}"}, scope=_id(i),
            version=1, now=NOW)


def build(folder: Path, size: int, url: str | None) -> tuple[Database, Settings, float]:
    """Create the synthetic registry; returns it and the build time."""
    t0 = time.perf_counter()
    settings = Settings(data_dir=folder, database_url=url or f"sqlite:///{folder / 'iotrust.db'}")
    folder.mkdir(parents=True, exist_ok=True)
    clock = FixedClock(NOW)
    db = Database.open(settings.database_url)
    init_domain(db, settings, clock, name="bench-fleet", owner=OWNER,
                backend=KeyBackend(kind="file", passphrase=PASSPHRASE),
                public_url="https://iotrust.example")
    add_manufacturer(db, clock)
    for name, profile in MODELS:
        hw_svc.register_model(db, clock, name=name, manufacturer=MANUFACTURER, actor=ACTOR,
                              profile_yaml=(ROOT / "examples" / "hardware" / profile).read_bytes())
    for start in range(0, size, CHUNK):
        with db.transaction() as tx:
            tx.add_devices(_devices(start, min(CHUNK, size - start)))
    append_events(db, settings, 2 * size)
    publish_configs(settings, min(CONFIG_DEVICES, size))
    with db.transaction() as tx:
        ca_id = next(c.id for c in tx.list_cas(role="issuing"))
    pool = _certificate_pool()
    engine = create_engine(settings.database_url)
    try:
        for start in range(0, size, CHUNK):
            n = min(CHUNK, size - start)
            creds = _credential_rows(start, n, ca_id, pool)
            keys = [{"spki_sha256": hashlib.sha256(b"factory:%d" % i).hexdigest(),
                     "kind": "factory", "device_id": _id(i), "first_seen_at": NOW}
                    for i in range(start, start + n)]
            keys += [{"spki_sha256": c["spki_sha256"], "kind": "credential",
                      "device_id": c["device_id"], "first_seen_at": NOW} for c in creds]
            zombies = [{"identity": _id(i), "where": "broker", "device_id": _id(i), "count": 3,
                        "first_seen_at": NOW - timedelta(days=9), "last_seen_at": NOW
                        - timedelta(days=i % 14), "last_source": "198.51.100.1",
                        "last_reason": "retired"}
                       for i in range(start, start + n) if _state(i) is DeviceState.RETIRED]
            with engine.begin() as conn:
                conn.execute(insert(s.credentials), creds)
                conn.execute(insert(s.seen_keys), keys)
                if zombies:
                    conn.execute(insert(s.zombies), zombies)
        with engine.begin() as conn:  # last seen: recently, except 3 in 100
            d = s.devices
            conn.execute(update(d).where(d.c.state.in_(("active", "quarantined")))
                         .values(last_seen_at=NOW - timedelta(hours=2)))
            stale = [_id(i) for i in range(0, size, 33)]
            for i in range(0, len(stale), 10_000):
                conn.execute(update(d).where(d.c.id.in_(stale[i:i + 10_000]))
                             .values(last_seen_at=NOW - timedelta(days=60)))
    finally:
        engine.dispose()
    credentials.publish_crls(db, settings, Secrets(passphrase=PASSPHRASE), clock, actor=ACTOR)
    policies.create(db, clock, "spy", [Rule(Action.SUBSCRIBE, "devices/+/telemetry", shared=True),
                                        Rule(Action.PUBLISH, "devices/{device_id}/telemetry")],
                    actor=ACTOR)
    policies.add_to_group(db, clock, "spies", [_id(i) for i in range(0, 5000, 1000)], actor=ACTOR)
    policies.assign_to_group(db, clock, "spy", "spies", actor=ACTOR)
    gateways = 10 if size < 200_000 else 100
    for g in range(gateways):
        gateway = (g * 9973) % size
        while _state(gateway) is not DeviceState.ACTIVE:
            gateway += 1
        downstream = [_id((gateway + 1 + k) % size) for k in range(10)]
        authorize_gateway(db, clock, _id(gateway), downstream, actor=ACTOR)
    return db, settings, time.perf_counter() - t0


def _once(db: Database, settings: Settings) -> dict[str, Any]:
    report = audit_svc.run_audit(db, settings, FixedClock(NOW), actor=ACTOR)
    by_check = {r.check_id: round(r.seconds, 3) for r in report.runs}
    chain_s = by_check.get("event-log-integrity", 0.0)
    log = report.event_log or {}
    return {"seconds": round(report.seconds, 3), "checks": by_check,
            "event_log": log,
            "event_log_records_per_s": round(log.get("records", 0) / chain_s) if chain_s
            else None,
            "findings": {f.check_id: f.evidence.get("count", len(f.affected))
                         for f in report.findings},
            "by_severity": report.by_severity, "devices": sum(report.device_states.values())}


def _floor(records: int) -> float:
    """One SHA-256 of a 300-byte string per record: what no verification can go below."""
    data = [b"%0300d" % i for i in range(min(records, 100_000))]
    t0 = time.perf_counter()
    for item in data:
        hashlib.sha256(item).hexdigest()
    return (time.perf_counter() - t0) * records / len(data)


def _before(db: Database) -> float:
    """The event-log check as it was: ``verify_chain`` over ``Tx.iter_events``, every audit."""
    with db.transaction(readonly=True) as tx:
        t0 = time.perf_counter()
        verify_chain(tx.iter_events())
        return time.perf_counter() - t0


def _audit(db: Database, settings: Settings, size: int) -> dict[str, Any]:
    full = _once(db, settings)
    append_events(db, settings, APPENDED, start=size)
    incremental = _once(db, settings)
    with db.transaction(readonly=True) as tx:
        events = tx.count_events()
    return {"seconds": incremental["seconds"], "events": events,
            "event_log_floor_s": round(_floor(events), 3),
            "event_log_before_s": round(_before(db), 3),
            "incremental": incremental, "full": full}


@contextlib.contextmanager
def _postgres() -> Iterator[str | None]:
    url = os.environ.get("IOTRUST_BENCH_POSTGRES_URL")
    if url:
        yield url
        return
    with contextlib.ExitStack() as stack:
        fresh: str | None = None
        try:
            from tests.integration.pg import fresh_postgres_database  # noqa: PLC0415

            fresh = stack.enter_context(fresh_postgres_database())
        except BaseException as exc:  # pytest.skip outside pytest, no server: skipped
            if isinstance(exc, KeyboardInterrupt):
                raise
        yield fresh


def _row(backend: str, size: int, build_s: float, result: dict[str, Any]) -> dict[str, Any]:
    return {"name": f"audit_full_{backend}", "n": size, "rate": size / result["seconds"],
            "unit": "devices/s", "seconds": round(result["seconds"], 3),
            "target_s": 30.0 if size >= 1_000_000 else None,
            "extra": {"build_s": round(build_s, 1), **result}}


def run_backend(backend: str, size: int) -> dict[str, Any]:
    """Build the registry on ``backend`` (``sqlite`` or ``postgresql``) and audit it once."""
    base = Path(tempfile.mkdtemp(prefix="iotrust-audit-"))
    try:
        if backend == "sqlite":
            db, settings, build_s = build(base / "sqlite", size, None)
            try:
                return _row("sqlite", size, build_s, _audit(db, settings, size))
            finally:
                db.close()
        with _postgres() as url:
            if url is None:
                return {"name": "audit_full_postgresql", "skipped": "no PostgreSQL"}
            db, settings, build_s = build(base / "pg", size, url)
            try:
                return _row("postgresql", size, build_s, _audit(db, settings, size))
            finally:
                db.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(quick: bool) -> list[dict[str, Any]]:
    size = 50_000 if quick else 1_000_000
    return [run_backend(backend, size) for backend in ("sqlite", "postgresql")]


if __name__ == "__main__":
    chosen = [b for b in ("sqlite", "postgresql") if f"--{b}" in sys.argv] or [
        "sqlite", "postgresql"]
    for name in chosen:  # one line per backend as soon as it is measured
        print(json.dumps(run_backend(name, 50_000 if "--quick" in sys.argv else 1_000_000)),
              flush=True)
