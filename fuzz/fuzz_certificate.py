"""Fuzz target: certificate.

X.509 certificates and chains, PEM or DER (``pki.load_certificate``, ``pki.load_certificates``,
``pki.read_factory_identity``). Each call returns or raises ``InputError``. Anything else escaping
is a crash. Run: ``python fuzz/fuzz_certificate.py [corpus] [libFuzzer options]`` (see
fuzz/README.md).
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
    """Decode ``data`` as one certificate and as a bundle; read a factory identity from it."""
    try:
        cert = pki.load_certificate(data)
    except InputError:
        cert = None
    if cert is not None:
        with contextlib.suppress(InputError):
            pki.read_factory_identity(cert)
    with contextlib.suppress(InputError):
        pki.load_certificates(data)


def _seeds_list() -> list[bytes]:
    samples = _seeds.pki_samples()
    bundle = b"".join(s.public_bytes(_seeds.PEM) for s in (samples["leaf"], samples["ca"]))
    return [*_seeds.both_encodings(samples["leaf"]), *_seeds.both_encodings(samples["ca"]),
            bundle]


if __name__ == "__main__":
    _harness.run(test_one_input, _seeds_list())
