"""The registry: a 1M-device SQLite file, ``Tx.get_device`` next to a bare ``sqlite3`` lookup.

Also the set-up other benchmarks share: a real trust domain in a temporary folder
(:func:`open_domain`), a registered manufacturer (:func:`add_manufacturer`) and deterministic
device rows (:func:`make_devices`), bulk-inserted with ``Tx.add_devices``.

The big database is built once and cached under ``benchmarks/.cache/`` keyed by size, schema
revision and the generator's own version; its build time is reported separately from the lookup
rates. The floor is the stdlib ``sqlite3`` module running ``SELECT * FROM devices WHERE id=?`` on
the same file, for the same ids, inside one read transaction, just like the measured side.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from benchmarks import Config, Result, SoftKey, best, per_second, seconds
from iotrust.adapters.sql.store import Database
from iotrust.core import pki
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import Device, DeviceState
from iotrust.ports import Clock, SystemClock
from iotrust.services import manufacturers
from iotrust.services.domain import KeyBackend, Secrets, init_domain
from iotrust.services.settings import Settings

#: Bump when :func:`make_devices` changes, so stale cached databases are not reused.
GENERATOR_VERSION = 1
ACTOR = "bench@iotrust"
OWNER = "bench-ops"
PASSPHRASE = b"iotrust benchmark passphrase, not a secret"
MANUFACTURER = "benchco"
VENDOR_ID = "0xbe"
PRODUCT_ID = "sensor-1"
_INSERT_CHUNK = 20_000


@dataclass(frozen=True, slots=True)
class BenchDomain:
    """A trust domain made by ``init_domain`` in a folder of its own."""

    db: Database
    settings: Settings
    secrets: Secrets
    clock: Clock
    owner: str


def open_domain(folder: Path, *, clock: Clock | None = None) -> BenchDomain:
    """Create a trust domain (file-backed CA keys, SQLite registry) in ``folder``."""
    clock = clock or SystemClock()
    settings = Settings(data_dir=folder, database_url=f"sqlite:///{folder / 'iotrust.db'}")
    folder.mkdir(parents=True, exist_ok=True)
    db = Database.open(settings.database_url)
    init_domain(db, settings, clock, name="bench-fleet", owner=OWNER,
                backend=KeyBackend(kind="file", passphrase=PASSPHRASE),
                public_url="https://iotrust.example")
    return BenchDomain(db=db, settings=settings, secrets=Secrets(passphrase=PASSPHRASE),
                       clock=clock, owner=OWNER)


def add_manufacturer(db: Database, clock: Clock, *, name: str = MANUFACTURER,
                     anchor_pem: bytes | None = None,
                     allowed: tuple[str, ...] = (f"{VENDOR_ID}:{PRODUCT_ID}",)) -> None:
    """Register a manufacturer; without ``anchor_pem`` a throwaway factory root is made."""
    if anchor_pem is None:
        root = pki.build_root_ca(SoftKey(), f"{name} Factory Root CA", name,
                                 datetime.now(UTC) - timedelta(days=1), timedelta(days=3650))
        anchor_pem = root.public_bytes(serialization.Encoding.PEM)
    manufacturers.add_manufacturer(db, clock, name=name, anchors_pem=anchor_pem,
                                   allowed=list(allowed), actor=ACTOR)


def device_id(index: int, salt: bytes = b"") -> str:
    """The deterministic id of bench device ``index`` (so ids need not be stored)."""
    digest = hashlib.sha256(b"iotrust-bench-device:%d:" % index + salt).digest()
    return new_device_id(digest[:16])


def make_devices(start: int, count: int, *, now: datetime, salt: bytes = b"",
                 owner: str = OWNER) -> list[Device]:
    """``count`` EXPECTED devices of :data:`MANUFACTURER`, ids, serials and keys from index."""
    out = []
    for index in range(start, start + count):
        spki = hashlib.sha256(b"iotrust-bench-factory-key:%d:" % index + salt).hexdigest()
        out.append(Device(
            id=device_id(index, salt), manufacturer=MANUFACTURER,
            serial=f"SN{salt.hex()}{index:09d}", factory_spki_sha256=spki, vendor_id=VENDOR_ID,
            product_id=PRODUCT_ID, owner=owner, state=DeviceState.EXPECTED, created_at=now,
            updated_at=now))
    return out


def insert_devices(db: Database, count: int, *, now: datetime, salt: bytes = b"") -> None:
    """Bulk-insert ``count`` bench devices with ``Tx.add_devices``, in chunks."""
    for start in range(0, count, _INSERT_CHUNK):
        chunk = make_devices(start, min(_INSERT_CHUNK, count - start), now=now, salt=salt)
        with db.transaction() as tx:
            tx.add_devices(chunk)


# --------------------------------------------------------------------------------------------
# The cached registry
# --------------------------------------------------------------------------------------------


def cache_path(cache_dir: Path, size: int) -> Path:
    """Where the registry of ``size`` devices is cached for this schema and generator."""
    revision = Database.head_revision() or "none"
    return cache_dir / f"registry-g{GENERATOR_VERSION}-{revision}-{size}.db"


def _count_devices(path: Path) -> int | None:
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            (count,) = conn.execute("SELECT count(*) FROM devices").fetchone()
            return int(count)
    except sqlite3.Error:
        return None


def ensure_registry(cache_dir: Path, size: int) -> tuple[Path, float | None]:
    """The path of a registry holding ``size`` devices, and its build time if built now."""
    path = cache_path(cache_dir, size)
    if path.exists() and _count_devices(path) == size:
        return path, None
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".building-{os.getpid()}")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    start = time.perf_counter()
    clock = SystemClock()
    db = Database.open(f"sqlite:///{partial}")
    try:
        add_manufacturer(db, clock)
        insert_devices(db, size, now=clock.now())
    finally:
        db.close()
    with closing(sqlite3.connect(partial)) as conn:  # fold the WAL into the file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    elapsed = time.perf_counter() - start
    partial.replace(path)
    return path, elapsed


def _floor_lookups(path: Path, ids: list[str]) -> float:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")

        def work() -> None:
            execute = conn.execute
            for id_ in ids:
                if execute("SELECT * FROM devices WHERE id=?", (id_,)).fetchone() is None:
                    raise RuntimeError(f"device {id_} missing from the bench registry")

        elapsed = seconds(work)
        conn.execute("COMMIT")
    return per_second(len(ids), elapsed)


def _registry_lookups(db: Database, ids: list[str]) -> float:
    with db.transaction(readonly=True) as tx:

        def work() -> None:
            get = tx.get_device
            for id_ in ids:
                get(id_)

        return per_second(len(ids), seconds(work))


def bench_registry_lookup(config: Config) -> list[Result]:
    """``Tx.get_device`` on random ids of a big registry, next to bare ``sqlite3``."""
    size = config.pick(1_000_000, 100_000)
    lookups = min(config.pick(50_000, 20_000), max(size, 1) * 10)
    path, build_s = ensure_registry(config.cache_dir, size)
    rng = random.Random(size)
    ids = [device_id(rng.randrange(size)) for _ in range(lookups)]
    db = Database.open(f"sqlite:///{path}", create=False)
    try:
        _registry_lookups(db, ids[: min(1000, len(ids))])  # warm the pool and the page cache
        _floor_lookups(path, ids[: min(1000, len(ids))])
        ours: list[float] = []
        floor: list[float] = []
        for _ in range(config.rounds):
            floor.append(_floor_lookups(path, ids))
            ours.append(_registry_lookups(db, ids))
    finally:
        db.close()
    details = {
        "devices": size,
        "lookups_per_round": lookups,
        "rounds_per_s": ours,
        "floor_rounds_per_s": floor,
        "database": str(path),
        "database_bytes": path.stat().st_size,
        "build_seconds": build_s,
        "cached": build_s is None,
        "schema_revision": Database.head_revision(),
    }
    if build_s is None:
        note = f"registry of {size:,} devices reused from {path.name}"
    else:
        note = (f"registry of {size:,} devices built in {build_s:,.1f} s "
                f"({per_second(size, build_s):,.0f} devices/s with Tx.add_devices), cached")
    return [Result(name="registry_lookup", rate=best(ours), n=lookups,
                   floor="sqlite3 SELECT * WHERE id=?", floor_rate=best(floor), note=note,
                   details=details)]
