"""A short run of every atheris fuzz target in ``fuzz/`` (the long run is in fuzz/README.md).

Each target runs as a subprocess from its seeds for a few hundred inputs, with its corpus and
crash artifacts in a temporary folder; the targets run concurrently (one per CPU) so the whole
smoke run stays within the default test budget. A target fails if it exits non-zero or leaves a
``crash-*``/``timeout-*``/``oom-*`` file. A further test checks that the harness really reports an
escaping exception, so a green run means something.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "fuzz"
TARGETS = sorted(p.name for p in FUZZ.glob("fuzz_*.py"))
RUNS = 300
TIMEOUT_S = 180


@dataclass(frozen=True)
class Run:
    result: subprocess.CompletedProcess[str]
    corpus: Path
    artifacts: Path

    @property
    def output(self) -> str:
        return self.result.stdout[-3000:] + self.result.stderr[-3000:]

    @property
    def findings(self) -> list[str]:
        return sorted(p.name for p in self.artifacts.iterdir())


def _run(script: Path, folder: Path) -> Run:
    corpus, artifacts = folder / "corpus", folder / "artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(script), str(corpus), f"-runs={RUNS}", "-max_total_time=30",
         f"-artifact_prefix={artifacts}/", "-print_final_stats=1"],
        cwd=folder, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    return Run(result, corpus, artifacts)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("fuzz")
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {t: pool.submit(_run, FUZZ / t, base / t.removesuffix(".py")) for t in TARGETS}
        return {t: f.result() for t, f in futures.items()}


def test_every_decoder_has_a_target() -> None:
    assert len(TARGETS) >= 15, TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_short_run(target: str, runs: dict[str, Run]) -> None:
    run = runs[target]
    assert run.result.returncode == 0, run.output
    assert not run.findings, run.output
    assert f"Done {RUNS} runs" in run.result.stderr, run.output
    assert any(run.corpus.iterdir()), "the target wrote no corpus (seeds missing?)"


def test_the_harness_reports_an_escaping_exception(tmp_path: Path) -> None:
    crashing = tmp_path / "fuzz_crashing.py"
    crashing.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(FUZZ)!r})\n"
        "import _harness\n"
        "def test_one_input(data: bytes) -> None:\n"
        "    if data[:1] == b'Z':\n"
        "        raise KeyError('not a typed error')\n"
        "_harness.run(test_one_input, [b'Z'])\n")
    run = _run(crashing, tmp_path)
    assert run.result.returncode != 0
    assert "KeyError" in run.result.stdout + run.result.stderr
    assert any(name.startswith("crash-") for name in run.findings)
