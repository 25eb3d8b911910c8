"""Incremental event-log verification from a checkpoint: the fast path accepts exactly an intact
stretch from the checkpointed record on and gives up (``None``: verify in full) on anything
else; a checkpoint is only taken from an intact record that it precedes."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone

from iotrust.core.audit_eventlog import (
    CHECKPOINT_KEY,
    checkpoint_break,
    checkpoint_data,
    checkpoint_from,
    verify_since,
    with_break,
)
from iotrust.core.events import ChainReport, EventDraft, chain_next, record_hash, verify_chain
from iotrust.core.records import EventHead, EventRow

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def chain(n: int, info: str = "") -> list[EventRow]:
    out: list[EventRow] = []
    head = None
    for i in range(n):
        row = chain_next(head, EventDraft(kind="test.event", actor="t@x",
                                          data={"i": i, "info": info}), NOW)
        out.append(row)
        head = row.head
    return out


def test_intact_stretch_from_the_checkpoint() -> None:
    rows = chain(10)
    cp = rows[3].head
    report = verify_since(cp, rows[3:])
    assert report is not None
    assert report.intact
    assert report.count == 7
    assert report.head == rows[-1].head
    # with the anchor inside the stretch, or older than the checkpoint (read on its own)
    assert verify_since(cp, rows[3:], anchor=rows[8].head) is not None
    assert verify_since(cp, rows[3:], anchor=rows[1].head, anchor_row=rows[1]) is not None


def test_anything_unexpected_gives_up() -> None:
    rows = chain(10)
    cp = rows[3].head
    edited = dataclasses.replace(rows[6], actor="evil@x")
    assert verify_since(cp, [*rows[3:6], edited, *rows[7:]]) is None  # content
    assert verify_since(cp, [*rows[3:6], *rows[7:]]) is None  # deleted
    assert verify_since(cp, [*rows[3:6], rows[7], rows[6], *rows[8:]]) is None  # reordered
    assert verify_since(cp, rows[4:]) is None  # the checkpointed record is missing
    assert verify_since(cp, []) is None  # truncated before the checkpoint
    # the checkpointed record was rewritten with a fresh, self-consistent hash
    other = chain(10, info="rewritten")
    assert verify_since(cp, other[3:]) is None
    # a re-linked record (fresh hash, its successor unchanged)
    relinked = chain_next(rows[5].head, EventDraft(kind="test.event", actor="evil@x"), NOW)
    assert verify_since(cp, [*rows[3:6], relinked, *rows[7:]]) is None
    # the anchor: truncated before it, another hash, or an old anchored record that changed
    assert verify_since(cp, rows[3:], anchor=EventHead(12, rows[9].hash)) is None
    assert verify_since(cp, rows[3:], anchor=EventHead(8, rows[9].hash)) is None
    assert verify_since(cp, rows[3:], anchor=rows[1].head, anchor_row=None) is None
    assert verify_since(cp, rows[3:], anchor=rows[1].head,
                        anchor_row=dataclasses.replace(rows[1], actor="evil@x")) is None


def _carrier(rows: list[EventRow], checkpoint: EventHead, full_at: datetime | None) -> EventRow:
    data = {"findings": 0, **checkpoint_data(checkpoint, full_at)}
    return chain_next(rows[-1].head, EventDraft(kind="audit.completed", actor="a@x",
                                                data=data), NOW)


def test_checkpoint_is_taken_only_from_an_intact_record_it_precedes() -> None:
    rows = chain(5)
    carrier = _carrier(rows, rows[-1].head, NOW - timedelta(days=1))
    found = checkpoint_from(carrier)
    assert found is not None
    assert found.head == rows[-1].head
    assert found.carrier_seq == 6
    assert found.full_at == NOW - timedelta(days=1)
    assert checkpoint_from(_carrier(rows, rows[-1].head, None)).full_at is None  # type: ignore[union-attr]
    # edited without re-hashing: refused
    data = json.loads(carrier.data)
    data[CHECKPOINT_KEY] = f"5:{'a' * 64}"
    assert checkpoint_from(dataclasses.replace(carrier, data=json.dumps(data))) is None
    # a checkpoint naming its own carrier (or later) would skip verifying the carrier
    assert checkpoint_from(_carrier(rows, EventHead(6, "a" * 64), NOW)) is None
    # no checkpoint, or garbage
    plain = chain_next(rows[-1].head, EventDraft(kind="audit.completed", actor="a@x"), NOW)
    assert checkpoint_from(plain) is None
    junk = chain_next(rows[-1].head, EventDraft(kind="audit.completed", actor="a@x",
                                                data={CHECKPOINT_KEY: "nope"}), NOW)
    assert checkpoint_from(junk) is None


def test_checkpoint_break_after_a_full_verification() -> None:
    rows = chain(5)
    cp = rows[2].head
    assert checkpoint_break(cp, rows[2]) is None
    rewritten = chain(5, info="rewritten")  # a consistent rewrite: verify_chain sees nothing
    assert verify_chain(rewritten).intact
    lost = checkpoint_break(cp, rewritten[2])
    assert lost is not None
    assert lost.kind == "anchor_mismatch"
    assert "rewritten" in lost.detail
    missing = checkpoint_break(cp, None)
    assert missing is not None
    assert "missing" in missing.detail
    report = with_break(verify_chain(rewritten), lost)
    assert not report.intact
    assert report.breaks == (lost,)
    assert with_break(ChainReport(0, None, ()), lost).breaks == (lost,)


def test_whole_log_linear_pass() -> None:
    rows = chain(6)
    report = verify_since(None, rows, anchor=rows[4].head)
    assert report is not None
    assert (report.count, report.head) == (6, rows[-1].head)
    assert verify_since(None, []) == ChainReport(0, None, ())
    assert verify_since(None, [], anchor=rows[0].head) is None  # truncated to nothing
    assert verify_since(None, rows[1:]) is None  # record 1 missing
    assert verify_since(None, chain(6, info="x")[:1] + rows[1:]) is None  # wrong link
    # record 1 must start from the genesis hash
    moved = chain_next(rows[0].head, EventDraft(kind="test.event", actor="t@x"), NOW)
    assert verify_since(None, [dataclasses.replace(moved, seq=1)]) is None


def test_records_hash_as_the_reference_and_a_lone_surrogate_is_not_intact() -> None:
    head = None
    for draft in (EventDraft(kind="a.b", actor="ünïcødé@x", device_id="dev-" + "a" * 26,
                             reason="clone_suspected", data={"k": '\u2028 "q" \\ é 😀'}),
                  EventDraft(kind="a.b", actor="t@x", data={"n": [1, None, True]})):
        row = chain_next(head, draft, NOW.astimezone(timezone(timedelta(hours=5))))
        assert record_hash(row) == row.hash
        head = row.head
    lone = dataclasses.replace(row, data='{"k":"\ud800"}')
    assert verify_since(None, [lone]) is None
