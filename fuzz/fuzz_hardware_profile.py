"""Fuzz target: YAML hardware profiles (``hardware.parse_profile``).

It returns a profile or raises ``InputError`` (``ProfileError``). Anything else escaping is a
crash. Run: ``python fuzz/fuzz_hardware_profile.py [corpus] [libFuzzer options]`` (see
fuzz/README.md).
"""

from __future__ import annotations

import contextlib

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    import _seeds

    from iotrust.core import hardware
    from iotrust.errors import InputError


def test_one_input(data: bytes) -> None:
    """Parse ``data`` as a hardware profile."""
    with contextlib.suppress(InputError):
        hardware.parse_profile(data)


if __name__ == "__main__":
    _harness.run(test_one_input, _seeds.hardware_profiles())
