"""The malloc-arena cap: set through glibc's mallopt, never over an operator's own setting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from iotrust.adapters import memory


def test_an_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.limit_malloc_arenas() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_the_cap_is_set_through_mallopt() -> None:
    # a fresh interpreter: mallopt succeeds (returns 1) on glibc, and the process keeps working
    code = ("from iotrust.adapters.memory import limit_malloc_arenas; import threading; "
            "ok = limit_malloc_arenas(); t = [threading.Thread(target=lambda: bytearray(1 << 20)) "
            "for _ in range(16)]; [x.start() for x in t]; [x.join() for x in t]; print(ok)")
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == "True"
