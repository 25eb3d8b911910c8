"""Fuzz target: the YAML crypto-timelines document (``hardware.parse_timelines``).

It returns the timelines or raises ``InputError``. Anything else escaping is a crash. Run: ``python
fuzz/fuzz_timelines.py [corpus] [libFuzzer options]`` (see fuzz/README.md).
"""

from __future__ import annotations

import contextlib

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    from iotrust.core import hardware
    from iotrust.errors import InputError


def test_one_input(data: bytes) -> None:
    """Parse ``data`` as a timelines document."""
    with contextlib.suppress(InputError):
        hardware.parse_timelines(data)


SEEDS = ((_harness.ROOT / "src/iotrust/core/data/crypto_timelines.yaml").read_bytes(),)


if __name__ == "__main__":
    _harness.run(test_one_input, SEEDS)
