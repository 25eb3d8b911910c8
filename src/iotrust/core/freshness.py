"""Freshness of device messages: a sliding anti-replay window and an age check.

:class:`ReplayWindow` is the receiver side of RFC 4303 §3.4.3 / RFC 6347 §4.1.2.6 anti-replay,
per device: the highest counter accepted so far plus a bitmap of which of the ``size`` counters
at and below it were seen (bit ``i`` = counter ``highest - i``). It accepts reordering within the
window and refuses:

* a counter already seen (``replayed``);
* a counter at or below ``highest - size`` (older than the window). We cannot tell whether it was
  seen, so we fail closed and report it as ``replayed`` too (the message says "older than the
  replay window"), keeping one reason for "this counter cannot be accepted any more".

The window uses plain int bit operations only (over a million checks per second in CPython).
:func:`check_age` refuses a device timestamp older than ``max_age`` (``too_old``) or more than
``max_skew`` ahead of the verifier's clock (``from_future``).

This module is pure: it keeps the window in memory and never persists it (see
:mod:`iotrust.adapters.sql.counters` for that), and time always comes in as an argument.
"""

from __future__ import annotations

from typing import Final

from iotrust.errors import InputError, TrustError

DEFAULT_WINDOW: Final = 64
MAX_WINDOW: Final = 1024
_NONE_SEEN: Final = -1


def _bad(message: str) -> InputError:
    return InputError(message, reason="invalid_replay_window")


class ReplayWindow:
    """The anti-replay state of one device: ``highest`` counter and a ``size``-bit bitmap."""

    __slots__ = ("_bitmap", "_highest", "_mask", "_size")

    def __init__(self, size: int = DEFAULT_WINDOW, *, highest: int = _NONE_SEEN,
                 bitmap: int = 0) -> None:
        if type(size) is not int or not 1 <= size <= MAX_WINDOW:
            raise _bad(f"a replay window holds 1..{MAX_WINDOW} counters")
        if type(highest) is not int or highest < _NONE_SEEN:
            raise _bad("highest is a counter (>= 0) or -1 for none seen")
        mask = (1 << size) - 1
        if type(bitmap) is not int or bitmap < 0 or bitmap > mask:
            raise _bad("bitmap does not fit the window")
        if highest == _NONE_SEEN and bitmap:
            raise _bad("an empty window has an empty bitmap")
        if highest >= 0 and not bitmap & 1:
            raise _bad("the highest counter is always marked seen (bit 0)")
        self._size = size
        self._mask = mask
        self._highest = highest
        self._bitmap = bitmap

    @classmethod
    def sealed_at(cls, ceiling: int, size: int = DEFAULT_WINDOW) -> ReplayWindow:
        """A window that treats every counter ``<= ceiling`` as seen (restart after a crash)."""
        return cls(size, highest=ceiling, bitmap=(1 << size) - 1)

    @property
    def size(self) -> int:
        """How many counters the window remembers."""
        return self._size

    @property
    def highest(self) -> int:
        """The highest counter accepted, or -1 when none was."""
        return self._highest

    @property
    def bitmap(self) -> int:
        """Bit ``i`` set means counter ``highest - i`` was accepted."""
        return self._bitmap

    def check_and_update(self, counter: int) -> None:
        """Accept ``counter`` (and remember it) or raise ``TrustError(reason="replayed")``."""
        highest = self._highest
        if counter > highest:
            shift = counter - highest
            self._bitmap = (((self._bitmap << shift) | 1) & self._mask
                            if shift < self._size else 1)
            self._highest = counter
            return
        offset = highest - counter
        if offset >= self._size:
            raise TrustError("the message counter is older than the replay window",
                             reason="replayed")
        bit = 1 << offset
        if self._bitmap & bit:
            raise TrustError("the message counter was already seen", reason="replayed")
        self._bitmap |= bit

    def would_accept(self, counter: int) -> bool:
        """Whether :meth:`check_and_update` would accept ``counter`` (changes nothing)."""
        offset = self._highest - counter
        if offset < 0:
            return True
        return offset < self._size and not self._bitmap >> offset & 1

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self._size}, highest={self._highest})"


def check_age(timestamp: int, now: int, max_age: int, max_skew: int) -> None:
    """Refuse a device timestamp outside ``[now - max_age, now + max_skew]`` (all in ms).

    ``too_old`` when older than ``max_age``, ``from_future`` when ahead by more than ``max_skew``.
    """
    if timestamp < now - max_age:
        raise TrustError("the message is older than the accepted age", reason="too_old")
    if timestamp > now + max_skew:
        raise TrustError("the message is dated in the future beyond the accepted clock skew",
                         reason="from_future")
