"""The shared runner of the atheris fuzz targets in this folder (see ``fuzz/README.md``).

A target is a script ``fuzz/fuzz_<decoder>.py`` that imports atheris and this module first,
imports iotrust inside ``with atheris.instrument_imports():`` (so coverage guides the fuzzer
through our parsers), defines ``test_one_input(data: bytes)`` and calls :func:`run`. The target
returns normally when the decoder accepts the input or raises its documented typed error; any
other exception escapes and libFuzzer records it as a crash (with the input in a ``crash-*`` file).

:func:`run` passes the command line to libFuzzer unchanged, except that it makes sure there is a
corpus folder (the first positional argument, or a temporary folder) and, when that folder is
empty, writes the target's seeds into it. This module must not import iotrust: modules imported
before ``instrument_imports`` would not be instrumented.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
# Targets run as ``python fuzz/fuzz_x.py``; make ``fuzz/`` itself importable for ``_seeds``.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _corpus_dir(argv: list[str]) -> Path:
    positional = [a for a in argv[1:] if not a.startswith("-")]
    if positional:
        return Path(positional[0])
    folder = Path(tempfile.mkdtemp(prefix="iotrust-fuzz-corpus-"))
    argv.append(str(folder))
    return folder


def run(test_one_input: Callable[[bytes], None], seeds: Iterable[bytes] = ()) -> None:
    """Seed the corpus folder if it is empty, then hand over to libFuzzer (does not return)."""
    argv = list(sys.argv)
    corpus = _corpus_dir(argv)
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for i, seed in enumerate(seeds):
            (corpus / f"seed-{i:03d}").write_bytes(seed)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
