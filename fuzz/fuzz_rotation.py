"""Fuzz target: the five credential-rotation JSON messages (``iotrust.core.rotation``).

The first byte picks the message; the rest is decoded: it returns a message that re-encodes to
itself, or raises ``InputError``. Anything else escaping is a crash. Run: ``python
fuzz/fuzz_rotation.py [corpus] [libFuzzer options]`` (see fuzz/README.md).
"""

from __future__ import annotations

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    import json

    from iotrust.core import rotation
    from iotrust.errors import InputError

CLASSES = (rotation.BeginRequest, rotation.BeginResponse, rotation.CompleteRequest,
           rotation.CompleteResponse, rotation.ConfirmRequest)


def test_one_input(data: bytes) -> None:
    """Decode ``data[1:]`` as the message ``data[0]`` names; round-trip what is accepted."""
    if not data:
        return
    cls = CLASSES[data[0] % len(CLASSES)]
    try:
        message = cls.from_wire(data[1:])
    except InputError:
        return
    if cls.from_wire(message.to_wire()) != message:
        raise AssertionError("an accepted message does not round-trip")


def _seeds_list() -> list[bytes]:
    # Objects with every expected key: the fuzzer starts past the key-set check.
    return [bytes([i]) + json.dumps(dict.fromkeys(sorted(cls.FIELDS), "AAAA")).encode()
            for i, cls in enumerate(CLASSES)]


if __name__ == "__main__":
    _harness.run(test_one_input, _seeds_list())
