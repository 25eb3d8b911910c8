"""Fuzz target: onboarding.

the five onboarding JSON messages (``HelloRequest.from_wire`` ... ``ConfirmRequest.from_wire``).
The first byte picks the message; the rest is decoded: it returns a message that re-encodes to
itself, or raises ``InputError``. Anything else escaping is a crash. Run: ``python
fuzz/fuzz_onboarding.py [corpus] [libFuzzer options]`` (see fuzz/README.md).
"""

from __future__ import annotations

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    import _seeds

    from iotrust.core.onboarding import messages as m
    from iotrust.errors import InputError

CLASSES = (("hello", m.HelloRequest), ("hello_response", m.HelloResponse),
           ("attest", m.AttestRequest), ("attest_response", m.AttestResponse),
           ("confirm", m.ConfirmRequest))


def test_one_input(data: bytes) -> None:
    """Decode ``data[1:]`` as the message ``data[0]`` names; round-trip what is accepted."""
    if not data:
        return
    cls = CLASSES[data[0] % len(CLASSES)][1]
    try:
        message = cls.from_wire(data[1:])
    except InputError:
        return
    if cls.from_wire(message.to_wire()) != message:
        raise AssertionError("an accepted message does not round-trip")


def _seeds_list() -> list[bytes]:
    wire = _seeds.onboarding_messages()
    return [bytes([i]) + wire[name] for i, (name, _) in enumerate(CLASSES)]


if __name__ == "__main__":
    _harness.run(test_one_input, _seeds_list())
