"""Recording and reporting zombie contacts (DESIGN.md §9), from every channel.

Every service that refuses a retired, revoked or expired identity calls :func:`record_contact`
(or :func:`record_contact_tx` inside its own transaction): the contact is counted in the
``zombies`` table (per identity and channel: count, first/last seen, last source and reason) and
a ``zombie.contact`` event is appended, in one transaction. :func:`list_zombies` aggregates per
identity for ``iotrust zombies`` and ``GET /v1/zombies``.

The broker does not call us: :func:`scan_broker_log` reads Mosquitto's log from where the last
scan stopped (offset kept in ``DATA/broker/zombie-scan.json``), attributes refused handshakes to
the identity last seen logging in from the same address (see :mod:`iotrust.core.zombies` for what
Mosquitto logs and what it does not), and records each as a contact; it also refreshes
``last_seen_at`` of the devices that logged in.

This module does not refuse anything itself; refusing is each channel's job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from iotrust.adapters.files import write_atomic
from iotrust.adapters.sql.store import Database, Tx
from iotrust.core import events as ev
from iotrust.core.ids import DEVICE_ID_RE
from iotrust.core.lifecycle import CredentialState, DeviceState
from iotrust.core.zombies import (
    CHANNELS,
    MAX_IDENTITY,
    MAX_SOURCE,
    BrokerLogin,
    BrokerRefusal,
    ZombieRecord,
    parse_mosquitto_log,
)
from iotrust.errors import InputError, NotFoundError
from iotrust.ports import Clock
from iotrust.services import eventlog

__all__ = ["ACTOR", "ZombieSummary", "list_zombies", "record_contact", "record_contact_tx",
           "scan_broker_log"]

ACTOR: Final = "zombies@iotrust"
SCAN_STATE_FILE: Final = "zombie-scan.json"
#: Read at most this much log per scan (the next scan continues).
MAX_SCAN_BYTES: Final = 16 * 1024 * 1024
_MAX_ADDRESSES: Final = 100_000


def _check(identity: str, where: str, source: str, reason: str) -> None:
    if not isinstance(identity, str) or not 0 < len(identity) <= MAX_IDENTITY:
        raise InputError("a zombie identity is 1..200 characters", reason="invalid_identity")
    if where not in CHANNELS:
        raise InputError(f"unknown zombie channel {where!r:.20}", reason="invalid_channel")
    if not isinstance(source, str) or not isinstance(reason, str) or not reason:
        raise InputError("a zombie contact needs a source and a reason", reason="invalid_reason")


def record_contact_tx(tx: Tx, clock: Clock, *, identity: str, where: str, source: str,
                      reason: str, device_id: str | None = None, actor: str = ACTOR,
                      at: datetime | None = None) -> int:
    """Count one refused contact of a dead identity within ``tx`` and log ``zombie.contact``.

    ``identity`` is a device id, or another stable name of the identity (a credential serial
    ``cred:<hex>``, a factory identity ``<maker>/<serial>``, an address ``addr:<ip>``);
    ``where`` is one of :data:`iotrust.core.zombies.CHANNELS`. A device id identity is its own
    ``device_id``. Returns the identity's contact count on this channel.
    """
    _check(identity, where, source, reason)
    if device_id is None and DEVICE_ID_RE.fullmatch(identity):
        device_id = identity
    when = at if at is not None else clock.now()
    count = tx.record_zombie(identity=identity, where=where, device_id=device_id, at=when,
                             source=source[:MAX_SOURCE] or "unknown", reason=reason[:64])
    eventlog.record(tx, clock, ev.ZOMBIE_CONTACT, actor=actor, device_id=device_id,
                    reason=reason[:64] if _reason_ok(reason) else "refused",
                    data={"channel": where, "identity": identity, "source": source[:MAX_SOURCE],
                          "count": count})
    return count


def _reason_ok(reason: str) -> bool:
    return reason.replace("_", "a").isalnum() and reason[:1].isalpha() and reason.islower()


def record_contact(db: Database, clock: Clock, *, identity: str, where: str, source: str,
                   reason: str, device_id: str | None = None, actor: str = ACTOR) -> int:
    """:func:`record_contact_tx` in its own transaction (after the refused one rolled back)."""
    with db.transaction() as tx:
        return record_contact_tx(tx, clock, identity=identity, where=where, source=source,
                                 reason=reason, device_id=device_id, actor=actor)


@dataclass(frozen=True, slots=True)
class ZombieSummary:
    """One identity's contacts across channels."""

    identity: str
    device_id: str | None
    count: int
    first_seen_at: datetime
    last_seen_at: datetime
    channels: dict[str, int]
    last_source: str
    last_reason: str

    def as_dict(self) -> dict[str, Any]:
        """For the CLI and the API."""
        return {"identity": self.identity, "device_id": self.device_id, "count": self.count,
                "first_seen_at": self.first_seen_at.isoformat(),
                "last_seen_at": self.last_seen_at.isoformat(), "channels": self.channels,
                "last_source": self.last_source, "last_reason": self.last_reason}


def list_zombies(db: Database, *, limit: int = 1000) -> list[ZombieSummary]:
    """Zombie identities, most recently seen first, with per-channel counts."""
    with db.transaction(readonly=True) as tx:
        rows = tx.list_zombies(limit=min(limit * 6, 10_000))
    grouped: dict[str, list[ZombieRecord]] = {}
    for row in rows:
        grouped.setdefault(row.identity, []).append(row)
    out = []
    for identity, recs in grouped.items():
        last = max(recs, key=lambda r: r.last_seen_at)
        out.append(ZombieSummary(
            identity=identity, device_id=next((r.device_id for r in recs if r.device_id), None),
            count=sum(r.count for r in recs),
            first_seen_at=min(r.first_seen_at for r in recs), last_seen_at=last.last_seen_at,
            channels={r.where: r.count for r in recs}, last_source=last.last_source,
            last_reason=last.last_reason))
    out.sort(key=lambda z: (z.last_seen_at, z.identity), reverse=True)
    return out[:limit]


# -- the broker's log ---------------------------------------------------------------------------

def _load_scan_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"offset": 0, "inode": None, "addresses": {}}
    except (OSError, ValueError):
        return {"offset": 0, "inode": None, "addresses": {}}
    if not isinstance(data, dict) or not isinstance(data.get("addresses"), dict):
        return {"offset": 0, "inode": None, "addresses": {}}
    return data


def _dead_reason(tx: Tx, device_id: str, at: datetime) -> str | None:
    """Why a device's identity is dead (``None`` if it still has a live credential)."""
    try:
        device = tx.get_device(device_id)
    except NotFoundError:
        return "unknown_identity"
    if device.state is DeviceState.RETIRED:
        return "retired"
    creds = tx.list_credentials(device_id=device_id)
    live = [c for c in creds if c.state in (CredentialState.ISSUED, CredentialState.ACTIVE)
            and c.not_after > at]
    if live:
        return None
    if any(c.state is CredentialState.REVOKED for c in creds):
        return "credential_revoked"
    return "credential_expired"


@dataclass(frozen=True, slots=True)
class ScanReport:
    """What one scan of the broker log found."""

    logins: int
    refusals: int
    recorded: int
    unattributed: int


def scan_broker_log(db: Database, clock: Clock, log_path: Path, *,
                    state_dir: Path) -> ScanReport:
    """Read the broker log since the last scan; record refused handshakes as zombie contacts.

    A refused handshake from an address where a device last logged in is recorded against that
    device, with the reason its registry record gives (``retired``, ``credential_revoked``,
    ``credential_expired``); a device that still holds a live credential is not a zombie (e.g.
    a flaky TLS client) and is skipped. A refusal from an address no device used is recorded
    against the address (``addr:<ip>``, reason ``tls_refused``). A rotated or truncated log is
    read from the start.
    """
    state_path = state_dir / SCAN_STATE_FILE
    state = _load_scan_state(state_path)
    try:
        st = log_path.stat()
    except FileNotFoundError:
        return ScanReport(0, 0, 0, 0)
    offset = int(state.get("offset") or 0)
    if state.get("inode") != st.st_ino or st.st_size < offset:
        offset = 0
        state["pending"] = []  # a new log: its connections start afresh
    with log_path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read(MAX_SCAN_BYTES)
    end = chunk.rfind(b"\n") + 1  # only whole lines; the rest waits for the next scan
    text = chunk[:end].decode("utf-8", errors="replace")
    addresses: dict[str, str] = dict(state["addresses"])
    logins = refusals = recorded = unattributed = 0
    pending = [p for p in state.get("pending") or () if isinstance(p, str)][-64:]
    facts = list(parse_mosquitto_log(text.splitlines(), pending))
    with db.transaction() as tx:
        for fact in facts:
            if isinstance(fact, BrokerLogin):
                logins += 1
                addresses[fact.address] = fact.username
                if DEVICE_ID_RE.fullmatch(fact.username):
                    tx.touch_last_seen(fact.username, fact.at)
                continue
            if not isinstance(fact, BrokerRefusal):
                continue
            refusals += 1
            who = addresses.get(fact.address)
            if who is not None and DEVICE_ID_RE.fullmatch(who):
                reason = _dead_reason(tx, who, fact.at)
                if reason is None:
                    continue
                record_contact_tx(tx, clock, identity=who, where="broker",
                                  source=fact.address, reason=reason, at=fact.at)
            else:
                unattributed += 1
                record_contact_tx(tx, clock, identity=f"addr:{fact.address}", where="broker",
                                  source=fact.address, reason="tls_refused", at=fact.at)
            recorded += 1
    if len(addresses) > _MAX_ADDRESSES:
        addresses = dict(list(addresses.items())[-_MAX_ADDRESSES:])
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(state_path, json.dumps({"offset": offset + end, "inode": st.st_ino,
                                         "addresses": addresses, "pending": pending}).encode(),
                 mode=0o600)
    return ScanReport(logins=logins, refusals=refusals, recorded=recorded,
                      unattributed=unattributed)
