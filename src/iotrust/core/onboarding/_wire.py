"""Wire helpers shared by the onboarding messages: base64url, times and JSON fields.

Everything here raises :class:`~iotrust.errors.InputError` with reason ``malformed_request`` on bad
input and nothing else. It knows no message shapes (see :mod:`.messages`) and makes no decisions.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from iotrust.core.canonical import canonical_json, parse_json_object
from iotrust.core.onboarding.reasons import malformed
from iotrust.errors import InputError

_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
MAX_JSON_DEPTH = 8


def b64e(data: bytes) -> str:
    """Base64url without padding (RFC 4648 §5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(value: object, what: str, *, min_len: int = 0, max_len: int) -> bytes:
    """Decode strict, canonical base64url without padding, bounded in decoded length."""
    if not isinstance(value, str) or not _B64URL_RE.fullmatch(value):
        raise malformed(f"{what} must be a base64url string without padding")
    if len(value) > (max_len * 4 + 2) // 3:
        raise malformed(f"{what} is longer than {max_len} bytes")
    if len(value) % 4 == 1:
        raise malformed(f"{what} is not valid base64url")
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise malformed(f"{what} is not valid base64url") from exc
    if b64e(data) != value:  # non-zero trailing bits: not the one canonical encoding
        raise malformed(f"{what} is not canonical base64url")
    if not min_len <= len(data) <= max_len:
        raise malformed(f"{what} must be {min_len}..{max_len} bytes, got {len(data)}")
    return data


def format_time(at: datetime) -> str:
    """RFC 3339 UTC with whole seconds: ``YYYY-MM-DDTHH:MM:SSZ`` (exactly 20 characters)."""
    if at.tzinfo is None:
        raise TypeError("protocol times must be timezone-aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, what: str) -> datetime:
    """Parse the fixed 20-character RFC 3339 UTC form written by :func:`format_time`."""
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        raise malformed(f"{what} must be a UTC time written YYYY-MM-DDTHH:MM:SSZ")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise malformed(f"{what} is not a valid time") from exc


def check_time(at: datetime, what: str) -> datetime:
    """A value time must be aware and whole seconds, so that it survives the wire unchanged."""
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise malformed(f"{what} must be a timezone-aware datetime")
    if at.microsecond:
        raise malformed(f"{what} must be whole seconds")
    return at


def parse_object(data: bytes, *, max_bytes: int, keys: frozenset[str], what: str,
                 optional: frozenset[str] = frozenset()) -> dict[str, object]:
    """Parse one JSON object: all of ``keys``, any of ``optional``, at most ``max_bytes``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise malformed(f"{what} must be bytes")
    if len(data) > max_bytes:
        raise malformed(f"{what} is larger than {max_bytes} bytes")
    try:
        obj = parse_json_object(bytes(data), max_bytes=max_bytes, max_depth=MAX_JSON_DEPTH)
    except InputError as exc:
        raise malformed(f"{what} is not a JSON object: {exc.message}") from exc
    present = frozenset(obj)
    if not keys <= present <= keys | optional:
        missing = sorted(keys - present)
        extra = sorted(present - keys - optional)
        raise malformed(f"{what} fields wrong: missing {missing[:8]}, unexpected {extra[:8]}")
    return dict(obj)


def to_json(value: Mapping[str, object]) -> bytes:
    """The one JSON encoding iotrust writes (sorted keys, no whitespace, UTF-8)."""
    return canonical_json(dict(value))


def get_str(obj: Mapping[str, object], key: str, *, max_len: int,
            pattern: re.Pattern[str] | None = None) -> str:
    """A string field, bounded and optionally matching ``pattern``."""
    value = obj[key]
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise malformed(f"{key} must be a string of 1..{max_len} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise malformed(f"{key} has characters outside the allowed set")
    return value


def get_int(obj: Mapping[str, object], key: str, *, low: int, high: int) -> int:
    """An integer field (JSON booleans are not integers here)."""
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise malformed(f"{key} must be an integer in {low}..{high}")
    return value


def get_list(obj: Mapping[str, object], key: str, *, min_len: int, max_len: int) -> list[object]:
    """A list field with a bounded number of entries."""
    value = obj[key]
    if not isinstance(value, list) or not min_len <= len(value) <= max_len:
        raise malformed(f"{key} must be a list of {min_len}..{max_len} entries")
    return value
