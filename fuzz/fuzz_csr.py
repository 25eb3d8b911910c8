"""Fuzz target: certificate signing requests, PEM or DER (``pki.load_csr``, ``pki.check_csr``).

Each call returns or raises ``InputError``. Anything else escaping is a crash. Run: ``python
fuzz/fuzz_csr.py [corpus] [libFuzzer options]`` (see fuzz/README.md).
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
    """Decode ``data`` as a CSR, then check it as the onboarding server does."""
    with contextlib.suppress(InputError):
        pki.load_csr(data)
    with contextlib.suppress(InputError):
        pki.check_csr(data)


if __name__ == "__main__":
    _harness.run(test_one_input, _seeds.both_encodings(_seeds.pki_samples()["csr"]))
