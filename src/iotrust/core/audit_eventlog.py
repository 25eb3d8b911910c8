"""Incremental verification of the event log for the audit: from the last verified checkpoint.

Re-verifying the whole hash chain costs one SHA-256 per record, every audit. A checkpoint lets
an audit verify only what was appended since the last one:

* **What a checkpoint is.** When the ``event-log-integrity`` check finds the chain intact, the
  ``audit.completed`` event of that run carries ``event_log_checkpoint`` (``<seq>:<hash>``, the
  head it verified) and ``event_log_full_at`` (when the log was last verified in full). The
  checkpoint is therefore itself a record of the chain.
* **How far it is trusted** (:func:`checkpoint_from`): the carrying record must hash to its
  stored hash, and the checkpoint must name an earlier record than the carrier — so the carrier
  is re-verified by the next incremental run (rewriting it breaks its successor's link).
* **The incremental run** (:func:`verify_since`) reads the records from the checkpoint's on. The
  checkpointed record must still hash to its stored hash *and* have the checkpoint's hash; every
  later record must hash to its stored hash, follow its predecessor's sequence number and link to
  its hash; an exported anchor is checked against its record (read on its own when it is older
  than the checkpoint). Anything unexpected returns ``None``: the caller then verifies the whole
  log with :func:`iotrust.core.events.verify_chain`, which classifies every break.
* **A full run** is :func:`verify_since` with no checkpoint (from record 1 and the genesis hash:
  one linear pass, each record hashed by :func:`iotrust.core.events.record_hash`), and
  ``verify_chain`` only when that pass fails.
* **What it cannot see.** A record *older* than the checkpoint edited in place (with or without
  a recomputed hash) is only found by a full verification; so is a consistent rewrite of the
  whole chain up to the checkpoint, which :func:`checkpoint_break` then reports (the
  checkpointed record no longer has the hash an earlier audit saw). The audit therefore falls
  back to a full verification when the last one is older than ``event_log_full_days`` (and on
  ``--full``); exported anchors remain the defence against a rewritten tail.

This module does no I/O and reads no clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from iotrust.core.events import (
    GENESIS_HASH,
    ChainBreak,
    ChainReport,
    format_anchor,
    parse_anchor,
    record_hash,
)
from iotrust.core.records import EventHead, EventRow
from iotrust.errors import InputError

__all__ = [
    "CHECKPOINT_KEY",
    "FULL_AT_KEY",
    "Checkpoint",
    "checkpoint_break",
    "checkpoint_data",
    "checkpoint_from",
    "verify_since",
    "with_break",
]

#: Keys of the ``audit.completed`` data that carry the checkpoint.
CHECKPOINT_KEY: Final = "event_log_checkpoint"
FULL_AT_KEY: Final = "event_log_full_at"
_MAX_DATA: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A verified head of the log, the record that carries it, and the last full verification."""

    head: EventHead
    carrier_seq: int
    full_at: datetime | None


def checkpoint_data(head: EventHead, full_at: datetime | None) -> dict[str, str | None]:
    """The ``audit.completed`` data fields that record ``head`` as verified."""
    return {CHECKPOINT_KEY: format_anchor(head),
            FULL_AT_KEY: full_at.isoformat() if full_at is not None else None}


def checkpoint_from(row: EventRow) -> Checkpoint | None:
    """The checkpoint ``row`` carries, or ``None`` if it carries none that can be trusted."""
    if len(row.data) > _MAX_DATA or record_hash(row) != row.hash:
        return None
    try:
        data = json.loads(row.data)
        head = parse_anchor(data[CHECKPOINT_KEY])
    except (ValueError, TypeError, KeyError, InputError):
        return None
    if head.seq >= row.seq:
        return None
    full_at: datetime | None = None
    text = data.get(FULL_AT_KEY)
    if isinstance(text, str):
        try:
            full_at = datetime.fromisoformat(text)
        except ValueError:
            full_at = None
        if full_at is not None and full_at.tzinfo is None:
            full_at = None
    return Checkpoint(head, row.seq, full_at)


def _intact(row: EventRow) -> bool:
    """Whether ``row``'s content hashes to its stored hash (:func:`record_hash`, the reference)."""
    return record_hash(row) == row.hash


def verify_since(checkpoint: EventHead | None, rows: Iterable[EventRow], *,
                 anchor: EventHead | None = None,
                 anchor_row: EventRow | None = None) -> ChainReport | None:
    """Verify the records from ``checkpoint.seq`` on (``rows``, in sequence order).

    ``checkpoint=None`` verifies the whole log (from record 1 and the genesis hash): the fast
    path of a full verification. ``anchor_row`` is the anchored record when the anchor is
    older than the checkpoint. Returns the report of an intact stretch (``count``: records
    read, the checkpointed one included), or ``None`` when anything is off — a full
    verification with :func:`iotrust.core.events.verify_chain` must then tell what.
    """
    first = 1 if checkpoint is None else checkpoint.seq
    previous: EventRow | None = None
    anchored_ok = anchor is None
    for row in rows:
        if previous is None:
            expected = (row.prev_hash == GENESIS_HASH if checkpoint is None
                        else row.hash == checkpoint.hash)
            if row.seq != first or not expected or not _intact(row):
                return None
        elif row.seq != previous.seq + 1 or row.prev_hash != previous.hash or not _intact(row):
            return None
        if anchor is not None and row.seq == anchor.seq:
            if row.hash != anchor.hash:
                return None
            anchored_ok = True
        previous = row
    if previous is None:
        return ChainReport(0, None, ()) if checkpoint is None and anchor is None else None
    if anchor is not None and anchor.seq < first:
        anchored_ok = (anchor_row is not None and anchor_row.seq == anchor.seq
                       and anchor_row.hash == anchor.hash and _intact(anchor_row))
    if not anchored_ok:
        return None
    return ChainReport(previous.seq - first + 1, EventHead(previous.seq, previous.hash), ())


def checkpoint_break(checkpoint: EventHead, row: EventRow | None) -> ChainBreak | None:
    """After a full verification: a break if the checkpointed record lost the hash it had."""
    if row is None:
        return ChainBreak(checkpoint.seq, "anchor_mismatch",
                          f"record {checkpoint.seq}, verified by an earlier audit, is missing: "
                          "records were truncated or deleted")
    if row.hash != checkpoint.hash:
        return ChainBreak(checkpoint.seq, "anchor_mismatch",
                          f"record {checkpoint.seq} does not have the hash an earlier audit "
                          "verified: the log was rewritten")
    return None


def with_break(report: ChainReport, extra: ChainBreak) -> ChainReport:
    """``report`` with one more break (kept sorted; the cap is the verifier's)."""
    breaks = tuple(sorted({*report.breaks, extra}, key=lambda b: (b.seq, b.kind)))
    return ChainReport(report.count, report.head, breaks, report.omitted_breaks)
