"""Fuzz target: signed vouchers (``vouchers.decode_voucher``).

It returns a voucher or raises ``InputError`` (``voucher_malformed``). Anything else escaping is a
crash. Run: ``python fuzz/fuzz_voucher.py [corpus] [libFuzzer options]`` (see fuzz/README.md).
"""

from __future__ import annotations

import contextlib

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    import _seeds

    from iotrust.core.vouchers import decode_voucher
    from iotrust.errors import InputError


def test_one_input(data: bytes) -> None:
    """Decode ``data`` as a voucher."""
    with contextlib.suppress(InputError):
        decode_voucher(data)


if __name__ == "__main__":
    _harness.run(test_one_input, [_seeds.voucher()])
