"""The hash-chained event log: drafts, deterministic hashes, tamper detection, anchors."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from iotrust.core import events
from iotrust.core.events import (
    GENESIS_HASH,
    ChainReport,
    EventDraft,
    EventHead,
    EventRow,
    chain_next,
    format_anchor,
    parse_anchor,
    record_hash,
    verify_chain,
)
from iotrust.errors import InputError, TrustError

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
DEVICE = "dev-" + "a" * 26


def build_log(n: int) -> list[EventRow]:
    rows: list[EventRow] = []
    head: EventHead | None = None
    for i in range(n):
        draft = EventDraft(
            kind=events.DEVICE_ONBOARDED if i % 2 else events.ONBOARDING_REFUSED,
            actor="onboarding@iotrust",
            device_id=DEVICE if i % 2 else None,
            reason=None if i % 2 else "nonce_replayed",
            data={"i": i, "serial": f"SN-{i}"},
        )
        row = chain_next(head, draft, T0 + timedelta(seconds=i))
        rows.append(row)
        head = row.head
    return rows


def kinds(report: ChainReport) -> list[tuple[int, str]]:
    return [(b.seq, b.kind) for b in report.breaks]


# --- drafts --------------------------------------------------------------------------------


def test_draft_copies_and_freezes_data() -> None:
    data = {"a": [1, 2], "b": {"c": None}}
    draft = EventDraft(kind="device.expected", actor="admin@iotrust", data=data)
    data["a"].append(3)
    data["z"] = 1
    assert draft.data_json == '{"a":[1,2],"b":{"c":null}}'
    assert draft.data == {"a": [1, 2], "b": {"c": None}}
    with pytest.raises(TypeError):
        draft.data["z"] = 1  # type: ignore[index]
    assert draft == EventDraft(kind="device.expected", actor="admin@iotrust", data=dict(draft.data))


@pytest.mark.parametrize(
    "kind",
    [
        "device",
        "Device.onboarded",
        "device.",
        ".x",
        "device onboarded",
        "device.on-boarded",
        "1device.x",
        "a." + "b" * 100,
    ],
)
def test_bad_kind_is_a_programming_error(kind: str) -> None:
    with pytest.raises(ValueError, match="event kind"):
        EventDraft(kind=kind, actor="admin@iotrust")


@pytest.mark.parametrize("reason", ["Nonce", "nonce-replayed", "_x", "x" * 65, ""])
def test_bad_reason_is_a_programming_error(reason: str) -> None:
    with pytest.raises(ValueError, match="reason"):
        EventDraft(kind="onboarding.refused", actor="admin@iotrust", reason=reason)


@pytest.mark.parametrize("actor", ["", "   ", "x" * 129, "a\nb"])
def test_bad_actor_is_refused(actor: str) -> None:
    with pytest.raises(InputError) as info:
        EventDraft(kind="device.expected", actor=actor)
    assert info.value.reason == "invalid_actor"


def test_bad_device_id_is_refused() -> None:
    with pytest.raises(InputError) as info:
        EventDraft(kind="device.expected", actor="admin@iotrust", device_id="admin@iotrust")
    assert info.value.reason == "invalid_device_id"


def test_oversized_data_is_refused() -> None:
    with pytest.raises(InputError) as info:
        EventDraft(kind="device.expected", actor="a@b", data={"x": "y" * (16 * 1024)})
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("value", [1.5, float("nan"), {1, 2}, b"bytes", T0, {1: "int key"}])
def test_non_json_data_is_a_programming_error(value: object) -> None:
    with pytest.raises(TypeError):
        EventDraft(kind="device.expected", actor="a@b", data={"x": value})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "key",
    [
        "passphrase",
        "user_pin",
        "soPin",
        "PIN",
        "private_key",
        "client_secret",
        "api_token",
        "tokens",
        "Password",
    ],
)
def test_secret_like_keys_are_refused_at_any_depth(key: str) -> None:
    with pytest.raises(TypeError, match="secret"):
        EventDraft(kind="token.created", actor="a@b", data={key: "x"})
    with pytest.raises(TypeError, match="secret"):
        EventDraft(kind="token.created", actor="a@b", data={"outer": [{key: "x"}]})


@pytest.mark.parametrize("key", ["shipping", "pinned_spki_sha256", "mapping", "spin", "role"])
def test_innocent_keys_are_allowed(key: str) -> None:
    EventDraft(kind="token.created", actor="a@b", data={key: "x"})


# --- chaining ------------------------------------------------------------------------------


def test_first_record_starts_from_genesis() -> None:
    row = chain_next(None, EventDraft(kind="domain.created", actor="admin@iotrust"), T0)
    assert row.seq == 1
    assert row.prev_hash == GENESIS_HASH
    assert record_hash(row) == row.hash


def test_fixed_vector() -> None:
    """The hash is a documented function of the fields: a firmware or auditor can recompute it."""
    draft = EventDraft(
        kind="device.onboarded",
        actor="onboarding@iotrust",
        device_id=DEVICE,
        reason=None,
        data={"serial": "SN-1", "credential": "1f", "é": 1},
    )
    head = EventHead(41, "1" * 64)
    row = chain_next(head, draft, datetime(2026, 1, 2, 3, 4, 5, 6789, tzinfo=UTC))
    assert row.seq == 42
    assert row.prev_hash == "1" * 64
    assert row.data == '{"credential":"1f","serial":"SN-1","é":1}'
    # The preimage, spelled out: canonical JSON with the data as text.
    preimage = (
        '{"actor":"onboarding@iotrust","at":"2026-01-02T03:04:05.006789Z",'
        '"data":"{\\"credential\\":\\"1f\\",\\"serial\\":\\"SN-1\\",\\"é\\":1}",'
        f'"device_id":"{DEVICE}","kind":"device.onboarded",'
        '"prev_hash":"' + "1" * 64 + '","reason":null,"seq":42}'
    ).encode()
    assert row.hash == hashlib.sha256(preimage).hexdigest()
    assert row.hash == "3055ce8c075382d20110f450279e3f44a2a6c558fccb03647886b1d32ef717ad"
    # Determinism: the same inputs give the same record, whatever the time zone of ``at``.
    same_moment = datetime(2026, 1, 2, 5, 4, 5, 6789, tzinfo=timezone(timedelta(hours=2)))
    assert chain_next(head, draft, same_moment).hash == row.hash


def test_naive_time_is_a_programming_error() -> None:
    with pytest.raises((TypeError, InputError)):
        chain_next(None, EventDraft(kind="domain.created", actor="a@b"), datetime(2026, 1, 1))  # noqa: DTZ001


def test_every_field_is_covered_by_the_hash() -> None:
    row = build_log(2)[1]
    for change in (
        {"seq": 3},
        {"at": row.at + timedelta(microseconds=1)},
        {"kind": "device.retired"},
        {"actor": "mallory@iotrust"},
        {"device_id": None},
        {"reason": "lost"},
        {"data": '{"i":2}'},
        {"prev_hash": "f" * 64},
    ):
        assert record_hash(dataclasses.replace(row, **change)) != row.hash, change


# --- verification --------------------------------------------------------------------------


def test_intact_chain() -> None:
    rows = build_log(10)
    report = verify_chain(iter(rows), anchor=rows[-1].head)
    assert report.intact
    assert report.count == 10
    assert report.head == rows[-1].head
    report.raise_for_breaks()


def test_empty_log() -> None:
    report = verify_chain([])
    assert report == ChainReport(0, None, ())
    report = verify_chain([], anchor=EventHead(3, "a" * 64))
    assert kinds(report) == [(3, "anchor_mismatch")]


def test_modified_record_is_named() -> None:
    rows = build_log(6)
    rows[2] = dataclasses.replace(rows[2], data='{"i":2,"serial":"SN-X"}')
    report = verify_chain(rows)
    assert kinds(report) == [(3, "modified")]
    with pytest.raises(TrustError) as info:
        report.raise_for_breaks()
    assert info.value.reason == "event_log_tampered"
    assert "#3 modified" in (info.value.detail or "")


def test_rewritten_record_with_fresh_hash_is_named() -> None:
    rows = build_log(6)
    forged = dataclasses.replace(rows[2], actor="mallory@iotrust")
    rows[2] = dataclasses.replace(forged, hash=record_hash(forged))
    assert kinds(verify_chain(rows)) == [(3, "modified")]


def test_deleted_record_is_named() -> None:
    rows = build_log(8)
    del rows[3]
    report = verify_chain(rows)
    assert kinds(report) == [(4, "deleted")]
    assert "record 4 is missing" in report.breaks[0].detail


def test_deleted_range_and_first_records() -> None:
    rows = build_log(10)
    report = verify_chain(rows[:2] + rows[5:])
    assert kinds(report) == [(3, "deleted")]
    assert "3..5" in report.breaks[0].detail
    assert kinds(verify_chain(rows[2:])) == [(1, "deleted")]


def test_reordered_record_is_named() -> None:
    rows = build_log(8)
    rows[3], rows[4] = rows[4], rows[3]
    assert kinds(verify_chain(rows)) == [(4, "reordered")]


def test_record_moved_far_is_named() -> None:
    rows = build_log(8)
    moved = rows.pop(1)
    rows.append(moved)
    assert kinds(verify_chain(rows)) == [(2, "reordered")]


@pytest.mark.parametrize("forged_first", [True, False])
def test_inserted_record_is_named(forged_first: bool) -> None:
    rows = build_log(8)
    forged = chain_next(
        rows[2].head, EventDraft(kind="device.released", actor="mallory@iotrust"), T0
    )
    assert forged.seq == 4
    rows.insert(3 if forged_first else 4, forged)
    assert kinds(verify_chain(rows)) == [(4, "inserted")]


def test_row_linking_to_the_wrong_record_is_reordered() -> None:
    rows = build_log(6)
    forged = dataclasses.replace(rows[4], prev_hash=rows[1].hash)  # record 5 now claims to follow 2
    rows[4] = dataclasses.replace(forged, hash=record_hash(forged))
    # 5 links to 2; 6 links to the old hash of 5.
    assert kinds(verify_chain(rows)) == [(5, "modified"), (5, "reordered")]


def test_record_one_not_from_genesis() -> None:
    rows = build_log(3)
    forged = dataclasses.replace(rows[0], prev_hash="e" * 64)
    rows[0] = dataclasses.replace(forged, hash=record_hash(forged))
    report = verify_chain(rows)
    assert (1, "modified") in kinds(report)


def test_truncation_is_caught_only_by_the_anchor() -> None:
    rows = build_log(10)
    anchor = rows[-1].head
    assert verify_chain(rows[:7]).intact
    report = verify_chain(rows[:7], anchor=anchor)
    assert kinds(report) == [(10, "anchor_mismatch")]
    assert "truncated" in report.breaks[0].detail


def test_rewritten_tail_is_caught_by_the_anchor() -> None:
    rows = build_log(5)
    anchor = rows[-1].head
    forged = dataclasses.replace(rows[-1], actor="mallory@iotrust")
    rows[-1] = dataclasses.replace(forged, hash=record_hash(forged))
    assert verify_chain(rows).intact  # internally consistent ...
    assert kinds(verify_chain(rows, anchor=anchor)) == [(5, "anchor_mismatch")]  # ... not anchored


def test_anchor_in_the_middle_and_missing_anchored_record() -> None:
    rows = build_log(6)
    assert verify_chain(rows, anchor=rows[2].head).intact
    assert kinds(verify_chain(rows[:2] + rows[3:], anchor=rows[2].head)) == [
        (3, "anchor_mismatch"),
        (3, "deleted"),
    ]


def test_verification_streams() -> None:
    """Rows come from a generator and are consumed once: nothing is re-read or held."""
    consumed: list[int] = []

    def stream():
        for row in build_log(50):
            consumed.append(row.seq)
            yield row

    assert verify_chain(stream()).count == 50
    assert consumed == list(range(1, 51))


def test_breaks_are_capped() -> None:
    rows = [dataclasses.replace(r, actor="x@y") for r in build_log(1200)]
    report = verify_chain(rows)
    assert len(report.breaks) == events.MAX_REPORTED_BREAKS
    assert report.omitted_breaks == 200
    with pytest.raises(TrustError, match="1200 break"):
        report.raise_for_breaks()


# --- anchors -------------------------------------------------------------------------------


def test_anchor_round_trip() -> None:
    head = build_log(3)[-1].head
    text = format_anchor(head)
    assert text == f"3:{head.hash}"
    assert parse_anchor(text + "\n") == head


@pytest.mark.parametrize(
    "text",
    [
        "",
        "3",
        f"0:{'a' * 64}",
        f"-1:{'a' * 64}",
        f"3:{'A' * 64}",
        f"3:{'a' * 63}",
        "x:y",
        f"03:{'a' * 64}",
        f"3 :{'a' * 64}",
        f"{'9' * 20}:{'a' * 64}",
    ],
)
def test_garbage_anchor_is_refused(text: str) -> None:
    with pytest.raises(InputError) as info:
        parse_anchor(text)
    assert info.value.reason == "invalid_anchor"


def test_well_known_kinds_are_valid() -> None:
    for name in events.__all__:
        value = getattr(events, name)
        if name.isupper() and name != "GENESIS_HASH":
            assert EventDraft(kind=value, actor="a@b").kind == value


def test_late_record_must_be_the_one_its_successor_links_to() -> None:
    rows = build_log(6)
    forged = dataclasses.replace(rows[2], actor="mallory@iotrust")
    forged = dataclasses.replace(forged, hash=record_hash(forged))
    assert kinds(verify_chain([*rows[:2], rows[3], rows[2], *rows[4:]])) == [(3, "reordered")]
    assert kinds(verify_chain([*rows[:2], rows[3], forged, *rows[4:]])) == [
        (3, "modified"),
        (3, "reordered"),
    ]
