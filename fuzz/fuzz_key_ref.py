"""Fuzz target: key references ``file:``, ``devfile:``, ``pkcs11:`` (``keys.refs.parse_key_ref``).

It returns a reference whose text parses back to it, or raises ``InputError``. Anything else
escaping is a crash. Run: ``python fuzz/fuzz_key_ref.py [corpus] [libFuzzer options]`` (see
fuzz/README.md).
"""

from __future__ import annotations

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    from iotrust.adapters.keys.refs import parse_key_ref
    from iotrust.errors import InputError


def test_one_input(data: bytes) -> None:
    """Parse the text ``data`` decodes to as a key reference; round-trip what is accepted."""
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    try:
        ref = parse_key_ref(text)
    except InputError:
        return
    if parse_key_ref(str(ref)) != ref:
        raise AssertionError("a key reference does not round-trip")


SEEDS = (b"\x00file:/var/lib/iotrust/keys/ca.pem", b"\x00devfile:factory.key.pem",
         b"\x00pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=iotrust;object=issuing")


if __name__ == "__main__":
    _harness.run(test_one_input, SEEDS)
