"""Canonical JSON: one byte-exact encoding for hashing and signing, and the one JSON parse boundary.

:func:`canonical_json` turns a value made only of ``str``, ``int``, ``bool``, ``None``, ``list``
(or ``tuple``) and ``dict`` (or any ``Mapping``; string keys) into UTF-8 bytes with sorted keys,
no whitespace and no ASCII escaping of non-ASCII characters. Equal values always give equal
bytes, so the bytes can be hashed (the event chain) and signed (vouchers). Floats are refused:
their text form is not portable across implementations (firmware clients included).

:func:`parse_json_object` is the one place where untrusted JSON bytes are parsed: it bounds size
and nesting depth, insists on strict UTF-8, a top-level object, integer numbers, no duplicate
keys and no lone surrogates, and turns every failure into :class:`~iotrust.errors.InputError`
(``malformed_json``, ``too_large`` or ``too_deep``).

This module does no I/O and knows nothing about what the JSON means.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final, NoReturn, TypeAlias

from iotrust.errors import InputError

#: A value canonical JSON can carry.
JSON: TypeAlias = "bool | int | str | Sequence[JSON] | Mapping[str, JSON] | None"

#: Nesting bound for values encoded by :func:`canonical_json` (a guard against runaway recursion;
#: untrusted input is bounded much tighter by :func:`parse_json_object`).
MAX_ENCODE_DEPTH: Final = 64

_OPEN: Final = frozenset(b"[{")
_CLOSE: Final = frozenset(b"]}")
_QUOTE: Final = ord('"')
_BACKSLASH: Final = ord("\\")


#: Exact types passed through as they are (subclasses take the slower checks below).
_SCALARS: Final = frozenset({str, int, bool, type(None)})
_SURROGATE: Final = "string is not valid Unicode (lone surrogate)"


def _plain(value: object, depth: int) -> object:
    """``value`` as plain ``dict``/``list`` JSON, refusing what canonical JSON cannot carry.

    Strings are not checked here: every key and string lands in the encoded text, whose one
    UTF-8 encoding in :func:`canonical_json` refuses lone surrogates.
    """
    if depth > MAX_ENCODE_DEPTH:
        raise ValueError(f"value nests deeper than {MAX_ENCODE_DEPTH} levels")
    kind = type(value)
    if kind in _SCALARS:
        return value
    # exact containers first (the common case), then the general rules in their order
    if kind is dict:
        return _plain_mapping(value, depth)  # type: ignore[arg-type]
    if kind is list or kind is tuple:
        return _plain_items(value, depth)  # type: ignore[arg-type]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, list | tuple):
        return _plain_items(value, depth)
    if isinstance(value, Mapping):
        return _plain_mapping(value, depth)
    raise TypeError(f"canonical JSON cannot carry a {type(value).__name__}")


def _plain_items(value: list[object] | tuple[object, ...], depth: int) -> list[object]:
    if depth < MAX_ENCODE_DEPTH:  # a scalar item is returned as is (no deeper level checked)
        return [item if type(item) in _SCALARS else _plain(item, depth + 1) for item in value]
    return [_plain(item, depth + 1) for item in value]


def _plain_mapping(value: Mapping[object, object], depth: int) -> dict[str, object]:
    shallow = depth < MAX_ENCODE_DEPTH
    result: dict[str, object] = {}
    for key, item in value.items():
        if type(key) is not str and not isinstance(key, str):
            raise TypeError(f"canonical JSON object keys must be str, not {type(key).__name__}")
        result[key] = item if shallow and type(item) in _SCALARS else _plain(item, depth + 1)
    return result


def canonical_json(value: object) -> bytes:
    """Encode ``value`` as canonical JSON bytes (UTF-8, sorted keys, no whitespace).

    Raises:
        TypeError: ``value`` contains a float, set, bytes, non-``str`` key or any other type.
        ValueError: a string is not valid Unicode, or the value nests too deeply.
    """
    text = json.dumps(
        _plain(value, 1), ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(_SURROGATE) from None


class _RejectedError(ValueError):
    """Raised from inside the JSON decoder hooks; becomes ``malformed_json``."""


def _no_float(text: str) -> NoReturn:
    raise _RejectedError(f"JSON numbers must be integers, got {text[:20]!r}")


def _no_constant(text: str) -> NoReturn:
    raise _RejectedError(f"{text} is not JSON")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, item in pairs:
        if key in result:
            raise _RejectedError(f"duplicate key {key[:40]!r}")
        result[key] = item
    return result


def _nesting_depth(data: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in ``data``, ignoring brackets inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif byte in _CLOSE:
            depth -= 1
    return deepest


def parse_json_object(data: bytes, *, max_bytes: int, max_depth: int = 8) -> dict[str, object]:
    """Parse untrusted bytes as one JSON object, within the given bounds.

    The top-level object counts as depth 1. Numbers must be integers; ``NaN``/``Infinity``,
    duplicate keys, a byte-order mark, invalid UTF-8 and lone surrogates are refused.

    Raises:
        InputError: ``too_large`` (more than ``max_bytes``), ``too_deep`` (nesting beyond
            ``max_depth``) or ``malformed_json`` (anything else).
        TypeError: ``data`` is not ``bytes`` (a programming error).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("parse_json_object needs bytes")
    raw = bytes(data)
    if len(raw) > max_bytes:
        raise InputError(f"JSON document larger than {max_bytes} bytes", reason="too_large")
    # The exact scan is pure Python; it can only find too much nesting if there are more
    # opening brackets than the limit, which most documents do not have.
    could_be_deep = raw.count(b"[") + raw.count(b"{") > max_depth
    if could_be_deep and _nesting_depth(raw) > max_depth:
        raise InputError(f"JSON nested deeper than {max_depth} levels", reason="too_deep")
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text,
            parse_float=_no_float,
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
        if not isinstance(value, dict):
            raise _RejectedError("the top level must be a JSON object")
        # Lone surrogates (``"\ud800"``) decode but have no UTF-8 form: refuse them here so that
        # everything this returns can be re-encoded canonically. Strict UTF-8 decoding refuses
        # encoded surrogates, so only a ``\u`` escape can make one.
        if "\\u" in text:
            canonical_json(value)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"malformed JSON: {_describe(exc)}", reason="malformed_json") from None
    return value


def _describe(exc: BaseException) -> str:
    """A short, input-free description of a parse failure."""
    if isinstance(exc, _RejectedError):
        return str(exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at offset {exc.pos}"
    if isinstance(exc, UnicodeDecodeError):
        return f"invalid UTF-8 at offset {exc.start}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)[:120]
