"""Onboarding over HTTP against a real ``iotrust serve`` (2 workers) on SQLite and PostgreSQL.

The device side is the core's device helpers speaking JSON to the server subprocess; refusals
are checked on the wire (status, ``reason``) and in the registry (the ``onboarding.refused``
event). openssl must accept the issued certificate with the CA chain the server returned.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from tests.conftest import missing_component
from tests.integration.fleet import Fleet, FleetDevice, Maker, build_fleet
from tests.integration.pg import fresh_postgres_database
from tests.integration.server import Server, running_server
from tests.integration.test_onboarding_service import SoftKey, csr_der

from iotrust.adapters.sql.store import Database
from iotrust.core import events as ev
from iotrust.core.lifecycle import CredentialState, DeviceState, RetirementReason
from iotrust.core.onboarding import (
    AttestResponse,
    DeviceSession,
    HelloRequest,
    HelloResponse,
    Onboarded,
    accept_attest_response,
    accept_hello_response,
    build_attest,
    build_confirm,
    build_hello,
)
from iotrust.core.onboarding import reasons as r
from iotrust.core.onboarding.reasons import REASONS
from iotrust.ports import SystemClock
from iotrust.services import devices as device_svc

BACKENDS = [pytest.param("sqlite", id="sqlite"),
            pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]
MAKERS = (Maker("widgetco", count=16), Maker("unsafeco", count=2, prefix="UN", vouch=False,
                                                unsafe=True),
          Maker("rogueco", count=1, prefix="RO", register=False, vouch=False))


class World:
    """A fleet, its registry and a running server, plus bookkeeping of used devices."""

    def __init__(self, fleet: Fleet, db: Database, server: Server) -> None:
        self.fleet = fleet
        self.db = db
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=30.0)
        self._taken: set[str] = set()

    def fresh(self, maker: str = "widgetco") -> FleetDevice:
        for serial in self.fleet.serials(maker):
            if serial not in self._taken:
                self._taken.add(serial)
                return self.fleet.device(serial)
        raise RuntimeError(f"no fresh device of {maker}")

    def post(self, step: str, body: bytes) -> httpx.Response:
        return self.http.post(f"/v1/onboarding/{step}", content=body,
                              headers={"content-type": "application/json"})

    def device_id(self, dev: FleetDevice) -> str:
        with self.db.transaction(readonly=True) as tx:
            found = tx.find_device(dev.manufacturer, dev.serial)
        assert found is not None
        return found.id

    def head(self) -> int:
        with self.db.transaction(readonly=True) as tx:
            h = tx.event_head()
        return h.seq if h is not None else 0

    def refusals_since(self, seq: int, kind: str = ev.ONBOARDING_REFUSED) -> list[Any]:
        with self.db.transaction(readonly=True) as tx:
            return list(tx.iter_events(after_seq=seq, kind=kind))


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[World]:
    base = tmp_path_factory.mktemp(f"onb-http-{request.param}")
    with _database(request.param) as url:
        fleet = build_fleet(base, makers=MAKERS, database_url=url)
        db = fleet.open_db()
        try:
            with running_server(fleet.server_env(), workers=2, log_dir=base) as server:
                w = World(fleet, db, server)
                yield w
                w.http.close()
                assert "Traceback" not in server.output(), server.output()
        finally:
            db.close()


def _database(backend: str) -> AbstractContextManager[str | None]:
    return fresh_postgres_database() if backend == "postgres" else nullcontext(None)


def now() -> datetime:
    return datetime.now(UTC)


def http_hello(w: World, dev: FleetDevice, *, serial: str | None = None,
               ) -> tuple[httpx.Response, HelloRequest]:
    req = build_hello(serial=serial or dev.serial, factory_chain=dev.chain, random=os.urandom)
    return w.post("hello", req.to_wire()), req


def start(w: World, dev: FleetDevice) -> DeviceSession:
    resp, req = http_hello(w, dev)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    parsed = HelloResponse.from_wire(resp.content)
    return accept_hello_response(parsed, hello=req, manufacturer_anchors=(dev.manufacturer_root,),
                                 now=now())


def http_attest(w: World, dev: FleetDevice, session: DeviceSession,
                key: SoftKey) -> Onboarded:
    req = build_attest(session, factory_signer=dev.factory_key, csr_der=csr_der(key.private_key))
    resp = w.post("attest", req.to_wire())
    assert resp.status_code == 200, resp.text
    return accept_attest_response(AttestResponse.from_wire(resp.content), session=session,
                                  csr_public_key=key.public_key, now=now())


def expect_refusal(w: World, resp: httpx.Response, reason: str, *, device_id: str | None,
                   serial: str | None, mark: int) -> None:
    assert resp.status_code == REASONS[reason].http_status, resp.text
    body = resp.json()
    assert body["reason"] == reason
    assert set(body) == {"error", "reason", "detail"}
    (event,) = w.refusals_since(mark)
    assert event.reason == reason
    assert event.device_id == device_id
    data = json.loads(event.data)
    assert data["serial"] == serial
    assert data["source"] == "127.0.0.1"


# --- tests -----------------------------------------------------------------------------------

def test_genuine_device_onboards_and_openssl_accepts_its_certificate(
        tmp_path: Path, world: World) -> None:
    dev = world.fresh()
    device_id = world.device_id(dev)
    session = start(world, dev)
    key = SoftKey()
    onboarded = http_attest(world, dev, session, key)
    assert onboarded.device_id == device_id
    confirm = build_confirm(session, onboarded, operational_signer=key)
    resp = world.post("confirm", confirm.to_wire())
    assert resp.status_code == 204, resp.text
    assert resp.content == b""
    with world.db.transaction(readonly=True) as tx:
        assert tx.get_device(device_id).state is DeviceState.ACTIVE
        creds = tx.list_credentials(device_id=device_id)
    assert [c.state for c in creds] == [CredentialState.ACTIVE]
    if shutil.which("openssl") is None:
        missing_component("openssl")
    issuing, root = onboarded.ca_chain
    (tmp_path / "op.pem").write_bytes(onboarded.certificate.public_bytes(Encoding.PEM))
    (tmp_path / "issuing.pem").write_bytes(issuing.public_bytes(Encoding.PEM))
    (tmp_path / "root.pem").write_bytes(root.public_bytes(Encoding.PEM))
    assert root.public_bytes(Encoding.PEM) == world.fleet.root_pem.read_bytes()
    out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"),
                          "-untrusted", str(tmp_path / "issuing.pem"), str(tmp_path / "op.pem")],
                         capture_output=True, text=True, check=False, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith(": OK")
    # a second onboarding of the same device is refused
    mark = world.head()
    resp, _ = http_hello(world, dev)
    expect_refusal(world, resp, r.CLONE_SUSPECTED, device_id=device_id, serial=dev.serial,
                   mark=mark)


def test_unknown_device_and_malformed(world: World) -> None:
    dev = world.fresh("rogueco")
    mark = world.head()
    resp, _ = http_hello(world, dev)
    expect_refusal(world, resp, r.UNKNOWN_DEVICE, device_id=None, serial=dev.serial, mark=mark)
    mark = world.head()
    resp = world.post("hello", b'{"version": 1, "serial": "x"}')
    expect_refusal(world, resp, r.MALFORMED_REQUEST, device_id=None, serial=None, mark=mark)
    mark = world.head()
    resp = world.post("attest", b"x" * 20_000)  # over the size bound, not even read in full
    expect_refusal(world, resp, r.MALFORMED_REQUEST, device_id=None, serial=None, mark=mark)


def test_voucher_mismatch_second_session_and_replay(world: World) -> None:
    victim, impostor = world.fresh(), world.fresh()
    mark = world.head()
    resp, _ = http_hello(world, impostor, serial=victim.serial)
    expect_refusal(world, resp, r.VOUCHER_MISMATCH, device_id=world.device_id(victim),
                   serial=victim.serial, mark=mark)
    session = start(world, victim)
    mark = world.head()
    resp, _ = http_hello(world, victim)
    expect_refusal(world, resp, r.CLONE_SUSPECTED, device_id=world.device_id(victim),
                   serial=victim.serial, mark=mark)
    req = build_attest(session, factory_signer=victim.factory_key,
                       csr_der=csr_der(SoftKey().private_key))
    assert world.post("attest", req.to_wire()).status_code == 200
    mark = world.head()
    expect_refusal(world, world.post("attest", req.to_wire()), r.NONCE_REPLAYED,
                   device_id=world.device_id(victim), serial=victim.serial, mark=mark)


def test_retired_device(world: World) -> None:
    dev = world.fresh()
    device_id = world.device_id(dev)
    device_svc.retire(world.db, SystemClock(), device_id, RetirementReason.COMPROMISED,
                      actor="tests@http")
    mark = world.head()
    resp, _ = http_hello(world, dev)
    expect_refusal(world, resp, r.RETIRED, device_id=device_id, serial=dev.serial, mark=mark)
    assert len(world.refusals_since(mark, ev.ZOMBIE_CONTACT)) == 1


def test_unsafe_manufacturer_admission(world: World) -> None:
    dev = world.fresh("unsafeco")
    resp, _ = http_hello(world, dev)
    assert resp.status_code == 200, resp.text
    assert HelloResponse.from_wire(resp.content).voucher == b""
    with world.db.transaction(readonly=True) as tx:
        found = tx.find_device("unsafeco", dev.serial)
        assert found is not None
        assert found.unsafe_admission
        events = list(tx.iter_events(device_id=found.id, kind=ev.DEVICE_EXPECTED))
    assert [e.reason for e in events] == ["unsafe_manufacturer_trust"]


def test_rate_limits(world: World) -> None:
    dev = world.fresh()
    world.fleet.update_domain_settings(onboarding_rate_per_serial=2)
    try:
        assert http_hello(world, dev)[0].status_code == 200
        assert http_hello(world, dev)[0].json()["reason"] == r.CLONE_SUSPECTED
        mark = world.head()
        resp, _ = http_hello(world, dev)
        expect_refusal(world, resp, r.RATE_LIMITED, device_id=None, serial=dev.serial,
                       mark=mark)
    finally:
        world.fleet.update_domain_settings(onboarding_rate_per_serial=5)
    # this source sent hellos a moment ago: a limit of one per window refuses the next
    world.fleet.update_domain_settings(onboarding_rate_per_source=1)
    try:
        other = world.fresh()
        mark = world.head()
        resp, _ = http_hello(world, other)
        expect_refusal(world, resp, r.RATE_LIMITED, device_id=None, serial=other.serial,
                       mark=mark)
    finally:
        world.fleet.update_domain_settings(onboarding_rate_per_source=300)
    assert http_hello(world, other)[0].status_code == 200


def _raw_exchange(w: World, request: bytes) -> tuple[int, bytes, bool]:
    """Write ``request`` on a new socket; the status, body and whether the server then closed."""
    host, port = str(w.http.base_url.host), int(w.http.base_url.port or 80)
    with socket.create_connection((host, port), timeout=30) as conn:
        with suppress(BrokenPipeError, ConnectionResetError):  # the server may answer early
            conn.sendall(request)
        data = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            data += chunk
            head, sep, rest = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                           if line.lower().startswith(b"content-length:")), None)
            if sep and length is not None and len(rest) >= length:
                # the body is complete: has the server closed the connection too?
                conn.settimeout(5)
                try:
                    closed = conn.recv(1) == b""
                except (TimeoutError, ConnectionResetError):
                    closed = False
                return int(head.split(b" ")[1]), rest[:length], closed
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), rest, True


def test_the_server_bounds_heads_and_bodies(world: World) -> None:
    """``iotrust serve`` refuses an oversized request head (400) and body (413) and closes."""
    path = b"/v1/onboarding/hello"
    # a head still incomplete past 16 KiB (no blank line yet): the server stops reading it
    status, _, closed = _raw_exchange(world, b"POST " + path + b" HTTP/1.1\r\nHost: t\r\n"
                                      + b"X-Big: " + b"a" * 20_000 + b"\r\n")
    assert (status, closed) == (400, True)
    big = str(1024 * 1024 + 1).encode()
    status, body, closed = _raw_exchange(world, b"POST " + path + b" HTTP/1.1\r\nHost: t\r\n"
                                         b"Content-Length: " + big + b"\r\n\r\n")
    assert (status, json.loads(body)["reason"], closed) == (413, "too_large", True)
    # A chunked body is counted as it is read: an operator route reads its JSON body whole
    # (the device routes stop reading at their message bound).
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    status, body, closed = _raw_exchange(world, b"POST /v1/manufacturers HTTP/1.1\r\nHost: t\r\n"
                                         b"Content-Type: application/json\r\n"
                                         b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 17
                                         + b"0\r\n\r\n")
    assert (status, json.loads(body)["reason"]) == (413, "too_large")
