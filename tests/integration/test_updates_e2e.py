"""Signed updates end to end: the ``iotrust`` CLI publishes and rolls out, a real ``iotrust
serve`` serves, and real ``iotrust-agent`` processes onboard and update over HTTP.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.fleet import Maker, build_fleet
from tests.integration.server import running_server

IOTRUST = [sys.executable, "-m", "iotrust.cli.main"]
AGENT = [sys.executable, "-c", "from iotrust.agent.cli import main; main()"]


def _run(cmd: list[str], env: dict[str, str] | None = None,
         expect: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == expect, f"{cmd[3:]}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_cli_release_rollout_and_agent_update(tmp_path: Path) -> None:
    fleet = build_fleet(tmp_path / "fleet", makers=(Maker("widgetco", count=2),))
    env = fleet.server_env()
    _run([*IOTRUST, "release", "init"], env)
    image = tmp_path / "fw.img"
    image.write_bytes(b"firmware v3 " * 1000)
    out = _run([*IOTRUST, "--json", "release", "add", str(image), "--component", "main",
                "--hw-class", "sensor-1", "--counter", "3"], env)
    assert json.loads(out.stdout)["release"] == "main-3"
    refused = _run([*IOTRUST, "release", "add", str(image), "--component", "main",
                    "--hw-class", "sensor-1", "--counter", "3"], env, expect=67)
    assert "release_counter_not_newer" in refused.stdout + refused.stderr
    with running_server(env, log_dir=fleet.base) as server:
        states = []
        for serial in fleet.serials("widgetco"):
            state = tmp_path / f"state-{serial}"
            _run([*AGENT, "onboard", "--device", str(fleet.device(serial).folder), "--state",
                  str(state), "--server", server.url, "--insecure-first-contact"])
            states.append(state)
        out = _run([*IOTRUST, "--json", "rollout", "create", "main-3", "--waves", "100",
                    "--id", "ro-e2e"], env)
        assert json.loads(out.stdout)["released"] == 2
        health = tmp_path / "health.sh"
        health.write_text('#!/bin/sh\ntest -s "$IOTRUST_SLOT/main.img"\n')
        health.chmod(0o755)
        for state in states:
            out = _run([*AGENT, "update", "--state", str(state), "--server", server.url,
                        "--insecure-http", "--hw-class", "sensor-1", "--health-hook",
                        str(health), "--json"])
            assert json.loads(out.stdout) == [{"target": "fw/sensor-1/main-3.img",
                                               "status": "committed", "reason": None}]
            active = (state / "updates" / "slots" / "active").read_text().strip()
            assert (state / "updates" / "slots" / active / "main.img").read_bytes() == \
                image.read_bytes()
            again = _run([*AGENT, "update", "--state", str(state), "--server", server.url,
                          "--insecure-http", "--json"])
            assert json.loads(again.stdout)[0]["status"] == "current"
        status = json.loads(_run([*IOTRUST, "--json", "rollout", "status", "ro-e2e"],
                                 env).stdout)
        assert status["state"] == "completed"
        assert status["committed"] == 2
