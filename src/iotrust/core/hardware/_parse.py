"""The one parse boundary for hardware profile and timeline YAML, and its checked field readers.

:func:`load_yaml` decodes one bounded document (size, parser events, depth; no anchors or
aliases, no duplicate keys, safe constructors only) and turns any failure into
:class:`~iotrust.core.hardware.schema.ProfileError`. The ``*_field`` readers check one value each
and name the JSON path of a problem. It builds no profile and no timeline itself.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

import yaml

try:  # libyaml's parser is ~10x faster; the constructor (and our checks) stay in Python
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

from iotrust.core.hardware.schema import (
    MAX_LIST,
    MAX_PROFILE_BYTES,
    MAX_PROFILE_DEPTH,
    MAX_PROFILE_EVENTS,
    MAX_TEXT,
    ProfileError,
    key_path,
)

_E = TypeVar("_E", bound=enum.StrEnum)


# --------------------------------------------------------------------------------------------
# Checked field readers (each names the JSON path of a problem)


def text_field(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ProfileError(path, "must be a string")
    if not value.strip() or len(value) > MAX_TEXT or not value.isprintable():
        raise ProfileError(path, f"must be 1-{MAX_TEXT} printable characters")
    return value


def int_field(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError(path, "must be an integer")
    if not low <= value <= high:
        raise ProfileError(path, f"must be between {low} and {high}")
    return value


def bool_field(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ProfileError(path, "must be true or false")
    return value


def enum_field(kind: type[_E], value: object, path: str) -> _E:
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ProfileError(path, "must be one of " + ", ".join(m.value for m in kind))


def names_field(value: object, path: str, vocabulary: frozenset[str] | Mapping[str, Any],
                what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ProfileError(path, "must be a list")
    if len(value) > MAX_LIST:
        raise ProfileError(path, f"must have at most {MAX_LIST} items")
    seen: list[str] = []
    for i, item in enumerate(value):
        item_path = f"{path}[{i}]"
        if not isinstance(item, str):
            raise ProfileError(item_path, "must be a string")
        if item not in vocabulary:
            raise ProfileError(item_path, f"unknown {what} {item[:MAX_TEXT]!r}; known: "
                               + ", ".join(sorted(vocabulary)))
        if item in seen:
            raise ProfileError(item_path, f"duplicate {what} {item!r}")
        seen.append(item)
    return tuple(seen)


def mapping_field(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ProfileError(path, "must be a mapping")
    for key in value:
        if not isinstance(key, str):
            raise ProfileError(key_path(path, key), "keys must be strings")
    return value


def check_fields(value: Mapping[str, object], path: str, required: Sequence[str],
                 optional: Sequence[str]) -> None:
    allowed = set(required) | set(optional)
    for key in value:
        if key not in allowed:
            raise ProfileError(key_path(path, key), "unknown field")
    for key in required:
        if key not in value:
            raise ProfileError(key_path(path, key), "required field missing")


# --------------------------------------------------------------------------------------------
# The YAML parse boundary


class _StrictLoader(_SafeLoader):
    """The safe loader, refusing duplicate keys (YAML would silently keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode,
                          deep: bool = False) -> dict[Hashable, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    line = key_node.start_mark.line + 1
                    raise ProfileError(key_path("$", key_node.value),
                                       f"duplicate key (line {line})")
                seen.add(ident)
        return super().construct_mapping(node, deep=deep)


def load_yaml(data: bytes | str, *, max_bytes: int = MAX_PROFILE_BYTES,
              max_events: int = MAX_PROFILE_EVENTS, max_depth: int = MAX_PROFILE_DEPTH,
              reason: str = "profile_invalid") -> object:
    """Decode one bounded YAML document of plain data; any failure is a :class:`ProfileError`.

    Refuses documents over ``max_bytes``, over ``max_events`` parser events or nested deeper
    than ``max_depth``, documents with anchors or aliases (no expansion bombs), several
    documents, duplicate keys, and any tag the safe loader does not know.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise ProfileError("$", f"document larger than {max_bytes} bytes", reason=reason)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProfileError("$", "document is not UTF-8", reason=reason) from None
    try:
        _scan_events(text, max_events=max_events, max_depth=max_depth, reason=reason)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except ProfileError as exc:
        if exc.reason != reason:
            raise ProfileError(exc.path, exc.problem, reason=reason) from None
        raise
    except Exception as exc:  # noqa: BLE001 - the one parse boundary: any parser failure is input
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ProfileError("$", f"not valid YAML{where}", reason=reason) from None


def _scan_events(text: str, *, max_events: int, max_depth: int, reason: str) -> None:
    depth = 0
    documents = 0
    for count, event in enumerate(yaml.parse(text, Loader=_SafeLoader), start=1):
        if count > max_events:
            raise ProfileError("$", f"document has more than {max_events} YAML nodes",
                               reason=reason)
        if isinstance(event, yaml.AliasEvent) or (
                isinstance(event, yaml.NodeEvent) and event.anchor is not None):
            raise ProfileError("$", "YAML anchors and aliases are not allowed", reason=reason)
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise ProfileError("$", "expected a single YAML document", reason=reason)
        elif isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > max_depth:
                raise ProfileError("$", f"nested deeper than {max_depth} levels", reason=reason)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
