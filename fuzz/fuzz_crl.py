"""Fuzz target: certificate revocation lists, PEM or DER (``pki.load_crl``).

It returns or raises ``InputError``. Anything else escaping is a crash. Run: ``python
fuzz/fuzz_crl.py [corpus] [libFuzzer options]`` (see fuzz/README.md).
"""

from __future__ import annotations

import contextlib

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    import _seeds

    from iotrust.core import pki
    from iotrust.errors import InputError


def test_one_input(data: bytes) -> None:
    """Decode ``data`` as a CRL."""
    with contextlib.suppress(InputError):
        pki.load_crl(data)


if __name__ == "__main__":
    _harness.run(test_one_input, _seeds.both_encodings(_seeds.pki_samples()["crl"]))
