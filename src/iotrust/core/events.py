"""The event log's rules: drafts, the hash chain, chain verification and head anchors (§2, §9).

Every decision iotrust takes, accepted or refused, becomes one event. Events are append-only and
hash-chained: record ``n`` stores ``prev_hash`` = the hash of record ``n - 1`` (or
:data:`GENESIS_HASH` for record 1) and its own ``hash``::

    hash = SHA-256 hex of canonical_json({
        "seq": n, "at": "2026-01-01T12:00:00.000000Z", "kind": ..., "actor": ...,
        "device_id": ... | null, "reason": ... | null,
        "data": "<canonical JSON text of the event data>", "prev_hash": ...})

Anyone can recompute a hash, so the chain alone proves only internal consistency. Exporting the
head (:func:`format_anchor`) to somewhere the database's writers cannot reach, and verifying
against it later (:func:`verify_chain` with ``anchor=``), is what catches a rewritten or
truncated tail.

This module builds records (:func:`chain_next`), recomputes hashes (:func:`record_hash`) and
verifies a stream of records (:func:`verify_chain`), reporting *which* record broke and how. It
does not store, read or lock anything (the services append under a transaction, the SQL adapter
stores rows field by field) and reads no clock (``at`` is an argument).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final, Literal

from iotrust.core.canonical import JSON, canonical_json
from iotrust.core.ids import check_device_id
from iotrust.core.records import EventHead, EventRow
from iotrust.errors import InputError, TrustError

__all__ = [
    "CA_CREATED",
    "CREDENTIAL_ISSUED",
    "CREDENTIAL_REVOKED",
    "CRL_PUBLISHED",
    "DEVICE_EXPECTED",
    "DEVICE_ONBOARDED",
    "DEVICE_QUARANTINED",
    "DEVICE_RELEASED",
    "DEVICE_RETIRED",
    "DOMAIN_CREATED",
    "GENESIS_HASH",
    "MANUFACTURER_ADDED",
    "MANUFACTURER_REVOKED",
    "ONBOARDING_REFUSED",
    "TOKEN_CREATED",
    "TOKEN_REVOKED",
    "VOUCHER_IMPORTED",
    "VOUCHER_REFUSED",
    "ZOMBIE_CONTACT",
    "BreakKind",
    "ChainBreak",
    "ChainReport",
    "EventDraft",
    "EventHead",
    "EventRow",
    "chain_next",
    "format_anchor",
    "parse_anchor",
    "record_hash",
    "verify_chain",
]

#: ``prev_hash`` of the first record.
GENESIS_HASH: Final = "0" * 64

# Well-known event kinds (``<subject>.<what happened>``); services may add more of the same shape.
#: A voucher was imported: the device is now EXPECTED.
DEVICE_EXPECTED: Final = "device.expected"
#: Onboarding confirmed: the device is ACTIVE.
DEVICE_ONBOARDED: Final = "device.onboarded"
#: The device was put in quarantine (reduced privileges).
DEVICE_QUARANTINED: Final = "device.quarantined"
#: The device was released from quarantine.
DEVICE_RELEASED: Final = "device.released"
#: The device was retired (one-way; ``reason`` is the retirement reason).
DEVICE_RETIRED: Final = "device.retired"
#: A voucher was imported (``data`` carries its SHA-256).
VOUCHER_IMPORTED: Final = "voucher.imported"
#: A voucher was refused at import (``reason`` is the refusal code).
VOUCHER_REFUSED: Final = "voucher.refused"
#: An onboarding step was refused (``reason`` is the refusal code, DESIGN.md §6).
ONBOARDING_REFUSED: Final = "onboarding.refused"
#: An operational credential was issued.
CREDENTIAL_ISSUED: Final = "credential.issued"
#: An operational credential was revoked.
CREDENTIAL_REVOKED: Final = "credential.revoked"
#: A trust domain was created.
DOMAIN_CREATED: Final = "domain.created"
#: A manufacturer was registered.
MANUFACTURER_ADDED: Final = "manufacturer.added"
#: A manufacturer's trust was revoked.
MANUFACTURER_REVOKED: Final = "manufacturer.revoked"
#: A certificate authority was created.
CA_CREATED: Final = "ca.created"
#: A certificate revocation list was published.
CRL_PUBLISHED: Final = "crl.published"
#: An operator token was created (never its secret).
TOKEN_CREATED: Final = "token.created"  # noqa: S105 - an event kind, not a credential
#: An operator token was revoked.
TOKEN_REVOKED: Final = "token.revoked"  # noqa: S105 - an event kind, not a credential
#: A retired, revoked or expired identity tried to connect (DESIGN.md §9).
ZOMBIE_CONTACT: Final = "zombie.contact"

#: Upper bound on the canonical JSON of an event's ``data``.
MAX_DATA_BYTES: Final = 16 * 1024
MAX_ACTOR_LENGTH: Final = 128
MAX_REASON_LENGTH: Final = 64

_KIND: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_MAX_KIND_LENGTH: Final = 100
_REASON: Final = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_HASH: Final = re.compile(r"^[0-9a-f]{64}$")
_ANCHOR: Final = re.compile(r"^([1-9][0-9]{0,18}):([0-9a-f]{64})$")
# Data keys that look like secrets. "pin" must be a whole word ("so_pin", "userPin") so that
# "shipping" or "pinned_spki" stay allowed; the others match anywhere in the key.
_SECRET_WORDS: Final = ("passphrase", "password", "private", "secret", "token")
_SECRET_TOKENS: Final = frozenset({"pin", "pins"})
_CAMEL: Final = re.compile(r"([a-z0-9])([A-Z])")
_WORD_SPLIT: Final = re.compile(r"[^a-z0-9]+")


@functools.lru_cache(maxsize=1024)  # pure; event data keys are mostly a few constants
def _secret_like(key: str) -> bool:
    lowered = key.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    words = _WORD_SPLIT.split(_CAMEL.sub(r"\1_\2", key).lower())
    return any(word in _SECRET_TOKENS for word in words)


def _refuse_secret_keys(value: object, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _secret_like(key):
                raise TypeError(f"event data must not carry secrets: key {path}{key!r} refused")
            _refuse_secret_keys(item, f"{path}{key!r}.")
    elif isinstance(value, list):
        for item in value:
            _refuse_secret_keys(item, path)


def _utc_text(at: datetime) -> str:
    """ISO-8601 UTC with microseconds and ``Z``: the form hashed into the chain."""
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise TypeError("event times must be timezone-aware datetimes")
    u = at.astimezone(UTC)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
        f".{u.microsecond:06d}Z"
    )


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event before it is chained. Invalid drafts cannot be constructed.

    ``kind`` and ``reason`` come from code (constants, refusal codes): a bad one is a bug
    (``ValueError``), as is a secret-looking key or a non-JSON value in ``data`` (``TypeError``).
    ``actor``, ``device_id`` and the size of ``data`` may derive from input: those raise
    :class:`InputError`. ``data`` is copied; later changes to the caller's mapping do not
    reach the draft.
    """

    kind: str
    actor: str
    device_id: str | None = None
    reason: str | None = None
    data: Mapping[str, JSON] = field(default_factory=dict, compare=False)
    data_json: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.kind, str)
            or len(self.kind) > _MAX_KIND_LENGTH
            or not _KIND.fullmatch(self.kind)
        ):
            raise ValueError(f"not an event kind: {self.kind!r:.80}")
        if self.reason is not None and (
            not isinstance(self.reason, str)
            or len(self.reason) > MAX_REASON_LENGTH
            or not _REASON.fullmatch(self.reason)
        ):
            raise ValueError(f"not a snake_case reason code: {self.reason!r:.80}")
        if (
            not isinstance(self.actor, str)
            or not self.actor.strip()
            or len(self.actor) > MAX_ACTOR_LENGTH
            or not self.actor.isprintable()
        ):
            raise InputError(
                f"an event actor is 1-{MAX_ACTOR_LENGTH} printable characters",
                reason="invalid_actor",
            )
        if self.device_id is not None:
            check_device_id(self.device_id)
        if not isinstance(self.data, Mapping):
            raise TypeError("event data must be a mapping")
        data = dict(self.data)
        _refuse_secret_keys(data, "")
        encoded = canonical_json(data)
        if len(encoded) > MAX_DATA_BYTES:
            raise InputError(f"event data larger than {MAX_DATA_BYTES} bytes", reason="too_large")
        text = encoded.decode("utf-8")
        object.__setattr__(self, "data_json", text)
        # A private deep copy, read-only at the top level; ``data_json`` is what gets hashed.
        object.__setattr__(self, "data", MappingProxyType(json.loads(text)))


def _hash_fields(
    *,
    seq: int,
    at: datetime,
    kind: str,
    actor: str,
    device_id: str | None,
    reason: str | None,
    data: str,
    prev_hash: str,
) -> str:
    preimage = canonical_json(
        {
            "seq": seq,
            "at": _utc_text(at),
            "kind": kind,
            "actor": actor,
            "device_id": device_id,
            "reason": reason,
            "data": data,
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(preimage).hexdigest()


def chain_next(head: EventHead | None, draft: EventDraft, at: datetime) -> EventRow:
    """The record that appends ``draft`` after ``head`` (``None``: the log is empty).

    Deterministic: the same head, draft and time always give the same record.
    """
    seq = 1 if head is None else head.seq + 1
    prev_hash = GENESIS_HASH if head is None else head.hash
    if not _HASH.fullmatch(prev_hash):
        raise ValueError("the head hash is not a SHA-256 hex digest")
    digest = _hash_fields(
        seq=seq,
        at=at,
        kind=draft.kind,
        actor=draft.actor,
        device_id=draft.device_id,
        reason=draft.reason,
        data=draft.data_json,
        prev_hash=prev_hash,
    )
    return EventRow(
        seq=seq,
        at=at,
        kind=draft.kind,
        actor=draft.actor,
        device_id=draft.device_id,
        reason=draft.reason,
        data=draft.data_json,
        prev_hash=prev_hash,
        hash=digest,
    )


def record_hash(row: EventRow) -> str:
    """Recompute the hash a record's content should have (compare with ``row.hash``)."""
    return _hash_fields(
        seq=row.seq,
        at=row.at,
        kind=row.kind,
        actor=row.actor,
        device_id=row.device_id,
        reason=row.reason,
        data=row.data,
        prev_hash=row.prev_hash,
    )


BreakKind = Literal["modified", "deleted", "reordered", "inserted", "anchor_mismatch"]


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """One place where the chain does not hold.

    ``seq`` is the record concerned: the altered record (``modified``), the first missing one
    (``deleted``), the record found out of place (``reordered``), the sequence number claimed
    twice (``inserted``) or the anchored one (``anchor_mismatch``).
    """

    seq: int
    kind: BreakKind
    detail: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of :func:`verify_chain`.

    ``head`` is the highest-numbered record seen (``None`` for an empty log). ``breaks`` is
    sorted by ``seq`` (then kind) and capped at :data:`MAX_REPORTED_BREAKS`;
    ``omitted_breaks`` counts the rest.
    """

    count: int
    head: EventHead | None
    breaks: tuple[ChainBreak, ...]
    omitted_breaks: int = 0

    @property
    def intact(self) -> bool:
        """True when no break was found."""
        return not self.breaks

    def raise_for_breaks(self) -> None:
        """Return nothing if the chain is intact, else raise.

        Raises:
            TrustError: ``event_log_tampered``, the detail listing the first breaks.
        """
        if not self.breaks:
            return
        shown = "; ".join(f"#{b.seq} {b.kind}: {b.detail}" for b in self.breaks[:10])
        total = len(self.breaks) + self.omitted_breaks
        more = f" (and {total - 10} more)" if total > 10 else ""  # noqa: PLR2004
        raise TrustError(
            f"the event log has been tampered with: {total} break(s)",
            reason="event_log_tampered",
            detail=shown + more,
        )


#: At most this many breaks are kept in a report (the rest are counted).
MAX_REPORTED_BREAKS: Final = 1000
#: How many recent record hashes the verifier remembers to tell a reordered or forked record
#: from a deleted one; detection never depends on it, only the classification does.
RECENT_WINDOW: Final = 4096
_MAX_GAPS: Final = 1024


class _Verifier:
    """Streaming state of :func:`verify_chain`: memory bounded by the windows above."""

    def __init__(self, anchor: EventHead | None) -> None:
        self.anchor = anchor
        self.anchor_hashes: list[str] = []
        self.count = 0
        self.top: EventRow | None = None  # highest seq seen
        self.recent: dict[str, int] = {GENESIS_HASH: 0}  # hash -> seq, insertion-ordered
        self.gaps: list[list[int]] = []  # [first, last] missing seqs, ascending
        self.pending_links: dict[int, str] = {}  # missing seq -> hash its successor links to
        self.breaks: dict[tuple[int, str], ChainBreak] = {}
        self.omitted = 0

    def report(self, seq: int, kind: BreakKind, detail: str) -> None:
        if (seq, kind) in self.breaks:
            return
        if len(self.breaks) >= MAX_REPORTED_BREAKS:
            self.omitted += 1
            return
        self.breaks[seq, kind] = ChainBreak(seq, kind, detail)

    def _take_from_gaps(self, seq: int) -> bool:
        """Remove ``seq`` from the missing ranges; True if it was missing."""
        for i, (first, last) in enumerate(self.gaps):
            if first <= seq <= last:
                pieces = [[first, seq - 1]] if first < seq else []
                pieces += [[seq + 1, last]] if seq < last else []
                self.gaps[i : i + 1] = pieces
                return True
        return False

    def _add_gap(self, first: int, last: int) -> None:
        self.gaps.append([first, last])
        if len(self.gaps) > _MAX_GAPS:  # too far apart to be a reordering: report now
            old_first, old_last = self.gaps.pop(0)
            self._report_gap(old_first, old_last)

    def _report_gap(self, first: int, last: int) -> None:
        span = f"record {first} is" if first == last else f"records {first}..{last} are"
        self.report(first, "deleted", f"{span} missing")

    def feed(self, row: EventRow) -> None:
        self.count += 1
        seq = row.seq
        content_ok = record_hash(row) == row.hash
        if not content_ok:
            self.report(seq, "modified", f"record {seq}'s content does not match its hash")
        top_seq = 0 if self.top is None else self.top.seq
        if seq > top_seq + 1:
            self._add_gap(top_seq + 1, seq - 1)
        if seq <= top_seq:
            if self._take_from_gaps(seq):
                self.report(seq, "reordered", f"record {seq} comes after record {top_seq}")
                self._check_late_link(row)
            else:
                self.report(seq, "inserted", f"a second record claims sequence number {seq}")
        elif content_ok:
            self._check_link(row)
        self._remember(row)

    def _check_late_link(self, row: EventRow) -> None:
        """A missing record turned up late: is it the one its successor links to?"""
        expected = self.pending_links.pop(row.seq, None)
        if expected is not None and expected != row.hash:
            self.report(
                row.seq,
                "modified",
                f"record {row.seq} was rewritten: record {row.seq + 1} links to a different hash",
            )

    def _check_link(self, row: EventRow) -> None:
        """``row`` is intact and the highest so far: does it link to its predecessor?"""
        seq = row.seq
        linked = self.recent.get(row.prev_hash)
        if linked == seq - 1:
            return
        if linked is not None:
            self.report(seq, "reordered", f"record {seq} links to record {linked}, not {seq - 1}")
        elif self.gaps and self.gaps[-1][1] == seq - 1:
            # Its predecessor is missing: reported as deleted unless it turns up later, when
            # it must have the hash this record links to.
            self.pending_links[seq - 1] = row.prev_hash
            if len(self.pending_links) > _MAX_GAPS:
                del self.pending_links[next(iter(self.pending_links))]
        elif seq == 1:
            self.report(seq, "modified", "record 1 does not start from the genesis hash")
        else:
            self.report(
                seq - 1,
                "modified",
                f"record {seq - 1} was rewritten: record {seq} links to a different hash",
            )

    def _remember(self, row: EventRow) -> None:
        self.recent[row.hash] = row.seq
        if len(self.recent) > RECENT_WINDOW:
            del self.recent[next(iter(self.recent))]
        if self.top is None or row.seq > self.top.seq:
            self.top = row
        if self.anchor is not None and row.seq == self.anchor.seq:
            self.anchor_hashes.append(row.hash)

    def finish(self) -> ChainReport:
        for first, last in self.gaps:
            self._report_gap(first, last)
        if self.anchor is not None:
            self._check_anchor(self.anchor)
        head = None if self.top is None else EventHead(self.top.seq, self.top.hash)
        breaks = tuple(sorted(self.breaks.values(), key=lambda b: (b.seq, b.kind)))
        return ChainReport(self.count, head, breaks, self.omitted)

    def _check_anchor(self, anchor: EventHead) -> None:
        top_seq = 0 if self.top is None else self.top.seq
        if anchor.seq > top_seq:
            self.report(
                anchor.seq,
                "anchor_mismatch",
                f"the log ends at record {top_seq} but the anchor is record {anchor.seq}: "
                "records were truncated",
            )
        elif not self.anchor_hashes:
            self.report(anchor.seq, "anchor_mismatch", f"anchored record {anchor.seq} is missing")
        elif anchor.hash not in self.anchor_hashes:
            self.report(
                anchor.seq,
                "anchor_mismatch",
                f"record {anchor.seq} does not have the anchored hash: the log was rewritten",
            )


def verify_chain(rows: Iterable[EventRow], *, anchor: EventHead | None = None) -> ChainReport:
    """Check a stream of records (normally in ``seq`` order, from record 1) and report breaks.

    Rows are processed one at a time and not kept; memory is bounded. Classification:

    * ``modified`` — a record's content does not hash to its stored hash; or a record was
      rewritten with a fresh hash, seen because the next record links to a different hash.
    * ``deleted`` — sequence numbers are missing (reported once the stream ends without them).
    * ``reordered`` — a missing sequence number turns up later in the stream, or an intact
      record links to a record other than its predecessor.
    * ``inserted`` — a second record claims a sequence number already seen (a forked chain).
    * ``anchor_mismatch`` — with ``anchor``: the log ends before it (truncation), the anchored
      record is missing, or it has another hash (the tail was rewritten).

    Returns the report; call :meth:`ChainReport.raise_for_breaks` to turn breaks into an error.
    """
    verifier = _Verifier(anchor)
    for row in rows:
        verifier.feed(row)
    return verifier.finish()


def format_anchor(head: EventHead) -> str:
    """The text form of a head anchor: ``<seq>:<hash>``."""
    if not _HASH.fullmatch(head.hash):
        raise ValueError("the head hash is not a SHA-256 hex digest")
    return f"{head.seq}:{head.hash}"


def parse_anchor(text: str) -> EventHead:
    """Read an anchor written by :func:`format_anchor` (surrounding whitespace ignored).

    Raises:
        InputError: ``invalid_anchor``.
    """
    match = _ANCHOR.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InputError("an event-log anchor is <seq>:<64 lowercase hex>", reason="invalid_anchor")
    return EventHead(int(match.group(1)), match.group(2))
