"""Fuzz target: event-log head anchors ``<seq>:<sha256 hex>`` (``events.parse_anchor``).

It returns a head that formats back to the same anchor, or raises ``InputError``. Anything else
escaping is a crash. Run: ``python fuzz/fuzz_event_anchor.py [corpus] [libFuzzer options]`` (see
fuzz/README.md).
"""

from __future__ import annotations

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    from iotrust.core import events
    from iotrust.errors import InputError


def test_one_input(data: bytes) -> None:
    """Parse the text ``data`` decodes to as an anchor; round-trip what is accepted."""
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    try:
        head = events.parse_anchor(text)
    except InputError:
        return
    if events.parse_anchor(events.format_anchor(head)) != head:
        raise AssertionError("an anchor does not round-trip")


if __name__ == "__main__":
    _harness.run(test_one_input, [b"\x0012:" + b"ab" * 32, b"\x000:" + b"0" * 64 + b"\n"])
