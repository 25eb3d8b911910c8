"""Fuzz target: envelope.

signed-message envelopes, CBOR/COSE_Sign1 (``envelope.open_envelope``,
``envelope.decode_cose_sign1``). Each call returns or raises ``InputError``. Anything else escaping
is a crash. Run: ``python fuzz/fuzz_envelope.py [corpus] [libFuzzer options]`` (see
fuzz/README.md).
"""

from __future__ import annotations

import contextlib

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    import _seeds

    from iotrust.core import envelope
    from iotrust.errors import InputError


def test_one_input(data: bytes) -> None:
    """Open ``data`` as an iotrust envelope and as a generic COSE_Sign1 (tagged or not)."""
    with contextlib.suppress(InputError):
        envelope.open_envelope(data)
    for tagged in (True, False):
        with contextlib.suppress(InputError):
            envelope.decode_cose_sign1(data, require_tag=tagged)


if __name__ == "__main__":
    _harness.run(test_one_input, _seeds.envelopes())
