"""No secret in logs (issue 10, item 5).

``iotrust init`` and ``iotrust serve`` run with debug logging (``IOTRUST_LOG_LEVEL=debug``: uvicorn
debug and access logs); a device onboards over HTTP, operator tokens are created, used, refused,
rotated and revoked. Then the server's stdout/stderr, the CLI output and the whole event log are
searched for key material and secrets: a PEM private key, the CA passphrase, the PKCS#11 PIN,
every token secret. None may appear.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
from tests.integration.fleet import PASSPHRASE, Maker, build_fleet
from tests.integration.server import running_server
from tests.integration.test_onboarding_service import SoftKey, csr_der
from typer.testing import CliRunner

from iotrust.adapters.sql.store import Database
from iotrust.cli.main import app as cli_app
from iotrust.core.onboarding import (
    AttestResponse,
    HelloResponse,
    accept_attest_response,
    accept_hello_response,
    build_attest,
    build_confirm,
    build_hello,
)

PIN = "pin-7391-never-logged"
INIT_PASSPHRASE = "init passphrase that must never be logged"
PRIVATE_KEY = re.compile(r"BEGIN [A-Z ]*PRIVATE KEY")


def _json_post(client: httpx.Client, step: str, body: bytes) -> httpx.Response:
    return client.post(f"/v1/onboarding/{step}", content=body,
                       headers={"content-type": "application/json"})


def test_no_secret_reaches_logs_or_events(tmp_path: Path) -> None:  # noqa: PLR0915 - one story
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("IOTRUST_")}
    debug = {"IOTRUST_LOG_LEVEL": "debug", "IOTRUST_PKCS11_PIN": PIN}

    init = subprocess.run(
        [sys.executable, "-m", "iotrust.cli.main", "--data", str(tmp_path / "fresh"), "init",
         "--owner", "acme-ops"],
        env={**base_env, **debug, "IOTRUST_PASSPHRASE": INIT_PASSPHRASE},
        capture_output=True, text=True, timeout=120, check=False)
    assert init.returncode == 0, init.stderr
    outputs = [init.stdout + init.stderr]

    fleet = build_fleet(tmp_path / "fleet", makers=(Maker("widgetco", count=1),))
    env = {**fleet.server_env(base_env), **debug}
    cli_env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("IOTRUST_")}
    cli_env.update({k: v for k, v in env.items() if k.startswith("IOTRUST_")})
    runner = CliRunner()
    secrets: list[str] = []

    def cli(*args: str) -> str:
        result = runner.invoke(cli_app, ["--json", *args], env=cli_env)
        assert result.exit_code == 0, result.output
        outputs.append(result.stderr)  # stdout legitimately shows a new token once
        return result.stdout

    secrets.append(json.loads(cli("token", "create", "ops", "--role", "operator"))["token"])
    with running_server(env, log_dir=tmp_path) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        ok = client.get("/v1/devices", headers={"Authorization": f"Bearer {secrets[0]}"})
        assert ok.status_code == 200
        wrong = secrets[0][:-4] + "AAAA"
        assert client.get("/v1/devices",
                          headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        secrets.append(wrong)
        secrets.append(json.loads(cli("token", "rotate", "ops"))["token"])
        assert client.get("/v1/devices", headers={"Authorization": f"Bearer {secrets[0]}"}
                          ).status_code == 401
        assert client.get("/v1/events", headers={"Authorization": f"Bearer {secrets[-1]}"}
                          ).status_code == 200
        cli("token", "revoke", "ops")

        dev = fleet.device(fleet.serials("widgetco")[0])
        hello = build_hello(serial=dev.serial, factory_chain=dev.chain, random=os.urandom)
        resp = _json_post(client, "hello", hello.to_wire())
        assert resp.status_code == 200, resp.text
        session = accept_hello_response(HelloResponse.from_wire(resp.content), hello=hello,
                                        manufacturer_anchors=(dev.manufacturer_root,),
                                        now=datetime.now(UTC))
        key = SoftKey()
        attest = build_attest(session, factory_signer=dev.factory_key,
                              csr_der=csr_der(key.private_key))
        resp = _json_post(client, "attest", attest.to_wire())
        assert resp.status_code == 200, resp.text
        onboarded = accept_attest_response(AttestResponse.from_wire(resp.content),
                                           session=session, csr_public_key=key.public_key,
                                           now=datetime.now(UTC))
        confirm = build_confirm(session, onboarded, operational_signer=key)
        assert _json_post(client, "confirm", confirm.to_wire()).status_code == 204
    outputs.append(server.output())
    assert "GET /v1/devices" in server.output()  # debug/access logging was on

    db = Database.open(fleet.database_url)
    try:
        with db.transaction() as tx:
            events = "\n".join(f"{e.kind} {e.actor} {e.reason} {e.data}"
                               for e in tx.iter_events())
    finally:
        db.close()
    fresh = Database.open(f"sqlite:///{tmp_path / 'fresh' / 'iotrust.db'}")
    try:
        with fresh.transaction() as tx:
            events += "\n".join(f"{e.kind} {e.actor} {e.data}" for e in tx.iter_events())
    finally:
        fresh.close()

    forbidden = [PASSPHRASE.decode(), INIT_PASSPHRASE, PIN, *secrets,
                 *(s.removeprefix("iot_") for s in secrets)]
    for where, text in [("event log", events), *(("output", o) for o in outputs)]:
        assert not PRIVATE_KEY.search(text), f"private key material in the {where}"
        leaked = [f"{s[:6]}..." for s in forbidden if s in text]
        assert not leaked, f"secret(s) {leaked} in the {where}"
