"""Fuzz target: SubjectPublicKeyInfo public keys, PEM or DER (``pki.load_public_key``).

It returns or raises ``InputError``. Anything else escaping is a crash. Run: ``python
fuzz/fuzz_public_key.py [corpus] [libFuzzer options]`` (see fuzz/README.md).
"""

from __future__ import annotations

import contextlib

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    import _seeds
    from cryptography.hazmat.primitives import serialization

    from iotrust.core import pki
    from iotrust.errors import InputError


def test_one_input(data: bytes) -> None:
    """Decode ``data`` as a public key."""
    with contextlib.suppress(InputError):
        pki.load_public_key(data)


def _seeds_list() -> list[bytes]:
    key = _seeds.pki_samples()["leaf"].public_key()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return [key.public_bytes(_seeds.DER, spki), key.public_bytes(_seeds.PEM, spki)]


if __name__ == "__main__":
    _harness.run(test_one_input, _seeds_list())
