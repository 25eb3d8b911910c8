"""Fuzz target: JSON objects at the parse boundary (``canonical.parse_json_object``).

It returns an object whose canonical form parses back to it, or raises ``InputError``. Anything
else escaping is a crash. Run: ``python fuzz/fuzz_canonical_json.py [corpus] [libFuzzer options]``
(see fuzz/README.md).
"""

from __future__ import annotations

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    from iotrust.core import canonical
    from iotrust.errors import InputError


def test_one_input(data: bytes) -> None:
    """Parse ``data`` with a size and depth bound; round-trip the canonical form."""
    try:
        obj = canonical.parse_json_object(data, max_bytes=64 * 1024, max_depth=8)
    except InputError:
        return
    again = canonical.parse_json_object(canonical.canonical_json(obj), max_bytes=1 << 20,
                                        max_depth=8)
    if again != obj:
        raise AssertionError("canonical JSON does not round-trip")


SEEDS = (b'{"a":[1,2,{"b":null}],"c":"d","e":true,"f":-1.5e3}', b"{}",
         b'{"x":"\\u00e9"}')


if __name__ == "__main__":
    _harness.run(test_one_input, SEEDS)
