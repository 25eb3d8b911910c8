"""Public algorithm transition timelines (``iotrust.crypto-timelines/v1``) as values.

When each algorithm is deprecated and disallowed, with the public source of each year (NIST's
transition guidance and the like, shipped as ``core/data/crypto_timelines.yaml``), read through
the same bounded YAML boundary as profiles. It does not know today's date or judge a device.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from iotrust.core.hardware._parse import (
    check_fields,
    enum_field,
    int_field,
    load_yaml,
    mapping_field,
    text_field,
)
from iotrust.core.hardware.schema import (
    ALGORITHMS,
    MAX_TIMELINES_BYTES,
    MAX_TIMELINES_DEPTH,
    MAX_TIMELINES_EVENTS,
    MAX_YEAR,
    MIN_YEAR,
    TIMELINES_SCHEMA,
    ProfileError,
    key_path,
)
from iotrust.errors import InputError


class Verification(enum.StrEnum):
    """Whether a timeline year was checked against a public copy of its source."""

    CONFIRMED = "confirmed"
    UNVERIFIED = "unverified"


@dataclass(frozen=True, slots=True)
class TimelineSource:
    """A public document a timeline entry comes from (no URL: title, date, citation)."""

    id: str
    short: str
    title: str
    publisher: str
    date: str
    citation: str
    verification: Verification

    def cite(self) -> str:
        """Short citation for reasons and reports."""
        tag = "" if self.verification is Verification.CONFIRMED else ", unverified"
        return f"{self.short} ({self.date}{tag})"


@dataclass(frozen=True, slots=True)
class AlgorithmTimeline:
    """When one algorithm is deprecated and disallowed (years are inclusive: 'after 2035')."""

    algorithm: str
    deprecated_after: int | None
    disallowed_after: int | None
    source: str
    verification: Verification
    note: str = ""


@dataclass(frozen=True, slots=True)
class Milestone:
    """A dated transition goal from a source (context for reports, not used in verdicts)."""

    source: str
    scope: str
    year: int
    text: str
    verification: Verification


@dataclass(frozen=True, slots=True)
class Timelines:
    """Algorithm retirement years with their sources."""

    sources: tuple[TimelineSource, ...]
    algorithms: tuple[AlgorithmTimeline, ...]
    milestones: tuple[Milestone, ...] = ()
    _by_alg: dict[str, AlgorithmTimeline] = field(init=False, repr=False, compare=False)
    _by_src: dict[str, TimelineSource] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_src = {s.id: s for s in self.sources}
        by_alg = {a.algorithm: a for a in self.algorithms}
        if len(by_src) != len(self.sources) or len(by_alg) != len(self.algorithms):
            raise InputError("duplicate timeline source or algorithm", reason="timelines_invalid")
        for cited in (*(a.source for a in self.algorithms),
                      *(ms.source for ms in self.milestones)):
            if cited not in by_src:
                raise InputError(f"timeline entry cites unknown source {cited!r:.80}",
                                 reason="timelines_invalid")
        object.__setattr__(self, "_by_alg", by_alg)
        object.__setattr__(self, "_by_src", by_src)

    def for_algorithm(self, name: str) -> AlgorithmTimeline | None:
        """The timeline of ``name``, if any source dates it."""
        return self._by_alg.get(name)

    def source(self, source_id: str) -> TimelineSource:
        """A source by id (``KeyError`` for an id not cited: a bug)."""
        return self._by_src[source_id]


def parse_timelines(data: bytes | str) -> Timelines:
    """Parse the timelines document; failures are ``InputError(timelines_invalid)``."""
    reason = "timelines_invalid"
    doc = mapping_field(load_yaml(data, max_bytes=MAX_TIMELINES_BYTES,
                                  max_events=MAX_TIMELINES_EVENTS, max_depth=MAX_TIMELINES_DEPTH,
                                  reason=reason), "$")
    try:
        return _timelines_from(doc)
    except ProfileError as exc:
        raise ProfileError(exc.path, exc.problem, reason=reason) from None


def _long_text(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 2_000:  # noqa: PLR2004
        raise ProfileError(path, "must be a non-empty string of at most 2000 characters")
    return value.strip()


def _year_or_none(value: object, path: str) -> int | None:
    return None if value is None else int_field(value, path, MIN_YEAR, MAX_YEAR)


def _timelines_from(doc: Mapping[str, object]) -> Timelines:
    check_fields(doc, "$", ("schema", "sources", "algorithms"), ("milestones",))
    if doc["schema"] != TIMELINES_SCHEMA:
        raise ProfileError("$.schema", f"must be {TIMELINES_SCHEMA!r}")
    sources = []
    for sid, raw in mapping_field(doc["sources"], "$.sources").items():
        p = key_path("$.sources", sid)
        s = mapping_field(raw, p)
        check_fields(s, p, ("short", "title", "publisher", "date", "verification", "citation"), ())
        sources.append(TimelineSource(
            id=sid, short=text_field(s["short"], f"{p}.short"),
            title=_long_text(s["title"], f"{p}.title"),
            publisher=_long_text(s["publisher"], f"{p}.publisher"),
            date=_long_text(s["date"], f"{p}.date"),
            citation=_long_text(s["citation"], f"{p}.citation"),
            verification=enum_field(Verification, s["verification"], f"{p}.verification")))
    algorithms = []
    for name, raw in mapping_field(doc["algorithms"], "$.algorithms").items():
        p = key_path("$.algorithms", name)
        if name not in ALGORITHMS:
            raise ProfileError(p, "unknown algorithm")
        a = mapping_field(raw, p)
        check_fields(a, p, ("deprecated_after", "disallowed_after", "source", "verification"),
                     ("note",))
        algorithms.append(AlgorithmTimeline(
            algorithm=name,
            deprecated_after=_year_or_none(a["deprecated_after"], f"{p}.deprecated_after"),
            disallowed_after=_year_or_none(a["disallowed_after"], f"{p}.disallowed_after"),
            source=text_field(a["source"], f"{p}.source"),
            verification=enum_field(Verification, a["verification"], f"{p}.verification"),
            note=_long_text(a["note"], f"{p}.note") if "note" in a else ""))
    milestones = []
    raw_ms = doc.get("milestones", [])
    if not isinstance(raw_ms, list):
        raise ProfileError("$.milestones", "must be a list")
    for i, raw in enumerate(raw_ms):
        p = f"$.milestones[{i}]"
        ms = mapping_field(raw, p)
        check_fields(ms, p, ("source", "scope", "year", "text", "verification"), ())
        milestones.append(Milestone(
            source=text_field(ms["source"], f"{p}.source"),
            scope=_long_text(ms["scope"], f"{p}.scope"),
            year=int_field(ms["year"], f"{p}.year", MIN_YEAR, MAX_YEAR),
            text=_long_text(ms["text"], f"{p}.text"),
            verification=enum_field(Verification, ms["verification"], f"{p}.verification")))
    try:
        return Timelines(tuple(sources), tuple(algorithms), tuple(milestones))
    except InputError as exc:
        raise ProfileError("$", exc.message) from None
