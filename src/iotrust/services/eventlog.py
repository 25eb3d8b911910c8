"""Recording decisions in the hash-chained event log, and checking the chain.

Every accepted or refused decision about a device goes through :func:`record` inside the same
transaction as the change it describes, so a change without its event (or the reverse) cannot be
committed. The chain arithmetic is :mod:`iotrust.core.events`; this module only wires it to storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from iotrust.core.events import ChainReport, EventDraft, chain_next, verify_chain

if TYPE_CHECKING:
    from iotrust.adapters.sql.store import Database, Tx
    from iotrust.core.records import EventHead, EventRow
    from iotrust.ports import Clock

JSONValue = str | int | bool | None | list["JSONValue"] | Mapping[str, "JSONValue"]


def record(
    tx: Tx,
    clock: Clock,
    kind: str,
    *,
    actor: str,
    device_id: str | None = None,
    reason: str | None = None,
    data: Mapping[str, JSONValue] | None = None,
) -> EventRow:
    """Append one event to the chain within ``tx``."""
    draft = EventDraft(kind=kind, actor=actor, device_id=device_id, reason=reason, data=data or {})
    at = clock.now()

    def make(head: EventHead | None) -> EventRow:
        return chain_next(head, draft, at)

    return tx.append_event(make)


def record_refusal(
    db: Database,
    clock: Clock,
    kind: str,
    *,
    actor: str,
    reason: str,
    device_id: str | None = None,
    data: Mapping[str, JSONValue] | None = None,
) -> None:
    """Record a refusal in its own transaction (the refused change itself was rolled back)."""
    with db.transaction() as tx:
        record(tx, clock, kind, actor=actor, device_id=device_id, reason=reason, data=data)


def verify(db: Database, anchor: EventHead | None = None) -> ChainReport:
    """Walk the whole log (streaming) and report every break, and whether ``anchor`` still holds."""
    with db.transaction() as tx:
        return verify_chain(tx.iter_events(), anchor=anchor)
