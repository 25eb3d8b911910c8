"""Single use under concurrency: the database, not a process, decides (SQLite and PostgreSQL).

A real ``iotrust serve`` with two workers (so requests land in different processes) takes 64
concurrent requests: one nonce is spent by exactly one attest, and 64 concurrent onboardings of
one device end with exactly one ACTIVE device holding exactly one live credential.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from tests.integration.fleet import Fleet, FleetDevice, Maker, build_fleet
from tests.integration.pg import fresh_postgres_database
from tests.integration.server import Server, running_server
from tests.integration.test_onboarding_service import SoftKey, csr_der

from iotrust.core import events as ev
from iotrust.core.lifecycle import CredentialState, DeviceState
from iotrust.core.onboarding import (
    AttestResponse,
    HelloResponse,
    accept_attest_response,
    accept_hello_response,
    build_attest,
    build_confirm,
    build_hello,
)
from iotrust.core.onboarding import reasons as r

N = 64
BACKENDS = [pytest.param("sqlite", id="sqlite"),
            pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]
LIVE = {CredentialState.ISSUED, CredentialState.ACTIVE}


def _database(backend: str) -> AbstractContextManager[str | None]:
    return fresh_postgres_database() if backend == "postgres" else nullcontext(None)


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[tuple[Fleet, Server]]:
    base: Path = tmp_path_factory.mktemp(f"onb-conc-{request.param}")
    with _database(request.param) as url:
        fleet = build_fleet(base, makers=(Maker("widgetco", count=4),), database_url=url,
                            domain_settings={"onboarding_rate_per_serial": 10_000,
                                             "onboarding_rate_per_source": 100_000})
        with running_server(fleet.server_env(), workers=2, log_dir=base) as server:
            yield fleet, server
            assert "Traceback" not in server.output(), server.output()


def _client(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=120.0,
                        limits=httpx.Limits(max_connections=N, max_keepalive_connections=N))


def _post(client: httpx.Client, step: str, body: bytes) -> httpx.Response:
    return client.post(f"/v1/onboarding/{step}", content=body,
                       headers={"content-type": "application/json"})


def _device_id(fleet: Fleet, dev: FleetDevice) -> str:
    db = fleet.open_db()
    try:
        with db.transaction(readonly=True) as tx:
            found = tx.find_device(dev.manufacturer, dev.serial)
    finally:
        db.close()
    assert found is not None
    return found.id


def test_one_nonce_is_spent_by_exactly_one_of_64_attests(world: tuple[Fleet, Server]) -> None:
    fleet, server = world
    dev = fleet.device(fleet.serials("widgetco")[0])
    with _client(server) as client:
        hello = build_hello(serial=dev.serial, factory_chain=dev.chain, random=os.urandom)
        resp = _post(client, "hello", hello.to_wire())
        assert resp.status_code == 200, resp.text
        session = accept_hello_response(HelloResponse.from_wire(resp.content), hello=hello,
                                        manufacturer_anchors=(dev.manufacturer_root,),
                                        now=datetime.now(UTC))
        body = build_attest(session, factory_signer=dev.factory_key,
                            csr_der=csr_der(SoftKey().private_key)).to_wire()
        with ThreadPoolExecutor(N) as pool:
            replies = list(pool.map(lambda _: _post(client, "attest", body), range(N)))
    outcomes = Counter(resp.status_code if resp.status_code == 200 else resp.json()["reason"]
                       for resp in replies)
    assert outcomes == {200: 1, r.NONCE_REPLAYED: N - 1}
    device_id = _device_id(fleet, dev)
    db = fleet.open_db()
    try:
        with db.transaction(readonly=True) as tx:
            assert len(tx.list_credentials(device_id=device_id)) == 1
            refusals = list(tx.iter_events(device_id=device_id, kind=ev.ONBOARDING_REFUSED))
    finally:
        db.close()
    assert Counter(e.reason for e in refusals) == {r.NONCE_REPLAYED: N - 1}
    assert {json.loads(e.data)["step"] for e in refusals} == {"attest"}


def _onboard(client: httpx.Client, dev: FleetDevice) -> str:
    """One device-side onboarding attempt; returns "ok" or the refusal reason."""
    hello = build_hello(serial=dev.serial, factory_chain=dev.chain, random=os.urandom)
    resp = _post(client, "hello", hello.to_wire())
    if resp.status_code != 200:
        return str(resp.json()["reason"])
    session = accept_hello_response(HelloResponse.from_wire(resp.content), hello=hello,
                                    manufacturer_anchors=(dev.manufacturer_root,),
                                    now=datetime.now(UTC))
    key = SoftKey()
    resp = _post(client, "attest", build_attest(session, factory_signer=dev.factory_key,
                                                csr_der=csr_der(key.private_key)).to_wire())
    if resp.status_code != 200:
        return str(resp.json()["reason"])
    onboarded = accept_attest_response(AttestResponse.from_wire(resp.content), session=session,
                                       csr_public_key=key.public_key, now=datetime.now(UTC))
    resp = _post(client, "confirm",
                 build_confirm(session, onboarded, operational_signer=key).to_wire())
    if resp.status_code != 204:
        return str(resp.json()["reason"])
    return "ok"


def test_64_concurrent_onboardings_of_one_device(world: tuple[Fleet, Server]) -> None:
    fleet, server = world
    dev = fleet.device(fleet.serials("widgetco")[1])
    with _client(server) as client, ThreadPoolExecutor(N) as pool:
        outcomes = Counter(pool.map(lambda _: _onboard(client, dev), range(N)))
    assert outcomes["ok"] == 1, outcomes
    assert set(outcomes) == {"ok", r.CLONE_SUSPECTED}, outcomes
    device_id = _device_id(fleet, dev)
    db = fleet.open_db()
    try:
        with db.transaction(readonly=True) as tx:
            assert tx.get_device(device_id).state is DeviceState.ACTIVE
            creds = tx.list_credentials(device_id=device_id)
            onboarded = list(tx.iter_events(device_id=device_id, kind=ev.DEVICE_ONBOARDED))
    finally:
        db.close()
    assert [c.state for c in creds if c.state in LIVE] == [CredentialState.ACTIVE]
    assert len(creds) == 1
    assert len(onboarded) == 1
