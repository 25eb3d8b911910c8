"""The fleet dashboard (/ui/) through the real app on a real SQLite registry, and one real server.

Sessions, cookie flags, CSRF, roles, lifecycle actions (state and event), escaping of hostile
values, keyset pagination and the live event feed. Timing is not asserted here: see
``benchmarks/dashboard.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from datetime import timedelta
from html import unescape
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from tests.conftest import T0
from tests.integration.server import running_server

from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.adapters.sql.store import Database
from iotrust.api.app import create_app
from iotrust.api.dashboard_session import KEY_FILE
from iotrust.core import pki
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import CredentialState, Device, DeviceState
from iotrust.core.records import Credential, DeviceModel
from iotrust.ports import FixedClock
from iotrust.services import domain, eventlog, manufacturers, tokens

PASS = b"dashboard test passphrase 0123456789"
MAKER = "widgetco"
MODEL = "widget-s1"
N_DEVICES = 60
HOSTILE = "<script>alert('x')</script>"


@dataclass
class Ui:
    client: TestClient
    db: Database
    clock: FixedClock
    data_dir: Path
    toks: dict[str, str]
    ids: list[str]  # sorted device ids; ids[i] has serial SN{i:05d}


def _device(i: int, state: DeviceState) -> Device:
    digest = hashlib.sha256(b"dashboard-test:%d" % i).digest()
    return Device(id=new_device_id(digest[:16]), manufacturer=MAKER, serial=f"SN{i:05d}",
                  factory_spki_sha256=hashlib.sha256(digest).hexdigest(), vendor_id="0x1",
                  product_id="s1", owner="acme-ops", state=state, created_at=T0, updated_at=T0,
                  model=MODEL if i % 2 == 0 else None)


def _state_of(i: int) -> DeviceState:
    return (DeviceState.ACTIVE, DeviceState.ACTIVE, DeviceState.EXPECTED,
            DeviceState.QUARANTINED)[i % 4]


def _build(tmp_path: Path) -> tuple[Database, FixedClock, Path, dict[str, str], list[str], Path]:
    clock = FixedClock(T0)
    data = tmp_path / "data"
    data.mkdir()
    url = f"sqlite:///{data / 'iotrust.db'}"
    from iotrust.services.settings import Settings  # noqa: PLC0415

    settings = Settings(data_dir=data, database_url=url)
    db = Database.open(url)
    domain.init_domain(db, settings, clock, name="fleet", owner="acme-ops",
                       backend=domain.KeyBackend(kind="file", passphrase=PASS),
                       public_url="http://127.0.0.1:8443")
    root = pki.build_root_ca(DeviceFileKey.generate(tmp_path / "maker.key"),
                             "Widgetco Factory Root", MAKER, T0 - timedelta(days=1),
                             timedelta(days=3650))
    manufacturers.add_manufacturer(db, clock, name=MAKER,
                                   anchors_pem=root.public_bytes(serialization.Encoding.PEM),
                                   allowed=["0x1:s1"], actor="t@iotrust")
    devices = [_device(i, _state_of(i)) for i in range(N_DEVICES)]
    with db.transaction() as tx:
        tx.add_model(DeviceModel(name=MODEL, manufacturer=MAKER, credential_lifetime_s=86400,
                                 created_at=T0))
        tx.add_devices(devices)
        ca = tx.list_cas(role="issuing")[0]
        tx.add_credential(Credential(
            serial_number="7a1b2c", device_id=devices[0].id, subject=devices[0].id,
            spki_sha256="ab" * 32, issuer_ca_id=ca.id, not_before=T0,
            not_after=T0 + timedelta(days=3), state=CredentialState.ACTIVE,
            certificate_pem=ca.certificate_pem, created_at=T0))
    toks = {role: tokens.create_token(db, clock, name=f"t-{role}", role=role,
                                      actor="t@iotrust")[1]
            for role in ("admin", "operator", "auditor")}
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_bytes(PASS)
    return db, clock, data, toks, [d.id for d in devices], passphrase_file


@pytest.fixture
def ui(tmp_path: Path) -> Ui:
    db, clock, data, toks, ids, _ = _build(tmp_path)
    from iotrust.services.settings import Settings  # noqa: PLC0415

    settings = Settings(data_dir=data, database_url=str(db.url))
    app = create_app(settings, clock=clock, secrets=domain.Secrets(passphrase=PASS), db=db)
    return Ui(TestClient(app, follow_redirects=False), db, clock, data, toks, ids)


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html[:2000]
    return found.group(1)


def login(client: TestClient, token: str) -> str:
    """Sign in (as a fresh browser would); returns the CSRF token of the session's forms."""
    client.cookies.clear()
    page = client.get("/ui/login")
    assert page.status_code == 200
    r = client.post("/ui/login", data={"token": token, "csrf": _csrf(page.text),
                                       "next": "/ui/"})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/ui/"
    return _csrf(client.get("/ui/").text)


def _state(ui: Ui, device_id: str) -> DeviceState:
    with ui.db.transaction() as tx:
        return tx.get_device(device_id).state


def _kinds(ui: Ui, device_id: str) -> list[str]:
    with ui.db.transaction() as tx:
        return [e.kind for e in tx.iter_events(device_id=device_id)]


def _active(ui: Ui) -> str:
    return next(i for n, i in enumerate(ui.ids) if _state_of(n) is DeviceState.ACTIVE)


# -- sessions ----------------------------------------------------------------------------------


def test_no_page_without_a_session(ui: Ui) -> None:
    device = _active(ui)
    for path in ("/ui/", "/ui/devices?state=active", f"/ui/devices/{device}", "/ui/events",
                 f"/ui/devices/{device}/quarantine"):
        r = ui.client.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/ui/login?next=%2Fui%2F"), r.headers
    assert ui.client.get("/ui").headers["location"] == "/ui/"
    r = ui.client.get("/ui/events/feed?after=0")
    assert r.status_code == 401
    r = ui.client.post(f"/ui/devices/{device}/quarantine", data={"csrf": "x"})
    assert r.status_code == 403
    assert _state(ui, device) is DeviceState.ACTIVE
    assert "device.quarantined" not in _kinds(ui, device)


def test_bad_token_and_login_csrf(ui: Ui) -> None:
    page = ui.client.get("/ui/login")
    csrf = _csrf(page.text)
    r = ui.client.post("/ui/login", data={"token": "iot_not-a-real-token", "csrf": csrf})
    assert r.status_code == 401
    assert "not accepted" in r.text
    assert "iotrust_session" not in r.headers.get("set-cookie", "")
    assert ui.client.get("/ui/").status_code == 303
    # the login form is tied to its pre-login cookie
    fresh = TestClient(ui.client.app, follow_redirects=False)
    r = fresh.post("/ui/login", data={"token": ui.toks["operator"], "csrf": csrf})
    assert r.status_code == 403
    r = ui.client.post("/ui/login", data={"token": ui.toks["operator"], "csrf": "wrong"})
    assert r.status_code == 403
    assert ui.client.get("/ui/").status_code == 303


def test_failed_sign_ins_are_rate_limited(ui: Ui) -> None:
    limit = ui.client.app.state.iotrust.auth_limits.limit  # type: ignore[attr-defined]
    for _ in range(limit):
        page = ui.client.get("/ui/login")
        r = ui.client.post("/ui/login", data={"token": "iot_wrong", "csrf": _csrf(page.text)})
        assert r.status_code == 401
    page = ui.client.get("/ui/login")
    r = ui.client.post("/ui/login", data={"token": ui.toks["operator"], "csrf": _csrf(page.text)})
    assert r.status_code == 429
    assert ui.client.get("/ui/").status_code == 303


def test_login_logout_and_cookie_flags(ui: Ui) -> None:
    page = ui.client.get("/ui/login?next=/ui/events")
    r = ui.client.post("/ui/login", data={"token": ui.toks["auditor"], "csrf": _csrf(page.text),
                                          "next": "/ui/events"})
    assert (r.status_code, r.headers["location"]) == (303, "/ui/events")
    cookies = r.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("iotrust_session="))
    flags = [f.strip().lower() for f in session.split(";")]
    assert "httponly" in flags
    assert "samesite=strict" in flags
    assert "path=/" in flags
    assert "secure" not in flags  # plain http (TestClient); see the https test below
    assert ui.toks["auditor"] not in session
    assert ui.toks["auditor"].removeprefix("iot_") not in session
    assert ui.client.get("/ui/").status_code == 200
    csrf = _csrf(ui.client.get("/ui/").text)
    assert ui.client.post("/ui/logout", data={"csrf": "wrong"}).status_code == 403
    assert ui.client.get("/ui/").status_code == 200  # still signed in
    r = ui.client.post("/ui/logout", data={"csrf": csrf})
    assert (r.status_code, r.headers["location"]) == (303, "/ui/login")
    assert ui.client.get("/ui/").status_code == 303


def test_open_redirect_refused(ui: Ui) -> None:
    for target in ("https://evil.example/", "//evil.example/ui/", "/ui/\\evil", "/v1/devices"):
        page = ui.client.get("/ui/login")
        r = ui.client.post("/ui/login", data={"token": ui.toks["operator"],
                                              "csrf": _csrf(page.text), "next": target})
        assert r.headers["location"] == "/ui/", target
        ui.client.cookies.clear()


def test_secure_cookie_over_https(ui: Ui) -> None:
    client = TestClient(ui.client.app, base_url="https://testserver", follow_redirects=False)
    page = client.get("/ui/login")
    login_cookie = page.headers["set-cookie"]
    assert login_cookie.startswith("__Host-iotrust_login=")
    r = client.post("/ui/login", data={"token": ui.toks["operator"], "csrf": _csrf(page.text)})
    assert r.status_code == 303
    session = next(c for c in r.headers.get_list("set-cookie")
                   if c.startswith("__Host-iotrust_session="))
    flags = [f.strip().lower() for f in session.split(";")]
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= set(flags)
    assert not any(f.startswith("domain=") for f in flags)
    assert client.get("/ui/").status_code == 200


def test_revoked_token_forged_and_expired_sessions(ui: Ui) -> None:
    login(ui.client, ui.toks["operator"])
    cookie = ui.client.cookies["iotrust_session"]
    assert cookie.startswith("v1.t-operator.")
    # another token's name, or any other change, in the same cookie does not verify
    for value, status in ((cookie.replace("t-operator", "t-admin"), 303),
                          (cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"), 303),
                          ("v1.t-operator", 303), (cookie, 200)):
        other = TestClient(ui.client.app, follow_redirects=False,
                           cookies={"iotrust_session": value})
        assert other.get("/ui/").status_code == status, value
    ui.clock.advance(8 * 3600 + 1)
    assert ui.client.get("/ui/").status_code == 303  # expired
    login(ui.client, ui.toks["operator"])
    tokens.revoke_token(ui.db, ui.clock, "t-operator", actor="t@iotrust")
    assert ui.client.get("/ui/").status_code == 303  # revoked token: session over
    key = ui.data_dir / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32


# -- CSRF and roles ----------------------------------------------------------------------------


def test_csrf_missing_or_wrong_changes_nothing(ui: Ui) -> None:
    device = _active(ui)
    other = TestClient(ui.client.app, follow_redirects=False)
    other_csrf = login(other, ui.toks["admin"])
    csrf = login(ui.client, ui.toks["operator"])
    assert csrf != other_csrf
    for data in ({}, {"csrf": ""}, {"csrf": "A" * len(csrf)}, {"csrf": other_csrf}):
        r = ui.client.post(f"/ui/devices/{device}/quarantine", data=data)
        assert r.status_code == 403, data
        assert "CSRF" in r.text
    r = ui.client.post(f"/ui/devices/{device}/quarantine", data={"csrf": csrf},
                       headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert _state(ui, device) is DeviceState.ACTIVE
    assert "device.quarantined" not in _kinds(ui, device)


def test_auditor_sees_no_actions_and_cannot_act(ui: Ui) -> None:
    device = _active(ui)
    csrf = login(ui.client, ui.toks["auditor"])
    page = ui.client.get(f"/ui/devices/{device}")
    assert page.status_code == 200
    for action in ("quarantine", "release", "retire"):
        assert f"/ui/devices/{device}/{action}" not in page.text
        assert ui.client.get(f"/ui/devices/{device}/{action}").status_code == 403
        r = ui.client.post(f"/ui/devices/{device}/{action}",
                           data={"csrf": csrf, "reason": "lost"})
        assert r.status_code == 403, action
    assert _state(ui, device) is DeviceState.ACTIVE
    assert _kinds(ui, device) == []


# -- lifecycle actions -------------------------------------------------------------------------


def test_quarantine_release_retire_through_the_ui(ui: Ui) -> None:
    device = _active(ui)
    csrf = login(ui.client, ui.toks["operator"])
    page = ui.client.get(f"/ui/devices/{device}")
    assert f'href="/ui/devices/{device}/quarantine"' in page.text
    assert f'href="/ui/devices/{device}/release"' not in page.text
    confirm = ui.client.get(f"/ui/devices/{device}/quarantine")
    assert confirm.status_code == 200
    assert f'action="/ui/devices/{device}/quarantine"' in confirm.text
    r = ui.client.post(f"/ui/devices/{device}/quarantine",
                       data={"csrf": _csrf(confirm.text), "reason": "suspicious_traffic"})
    assert (r.status_code, r.headers["location"]) == (303, f"/ui/devices/{device}?done=quarantine")
    assert _state(ui, device) is DeviceState.QUARANTINED
    with ui.db.transaction() as tx:
        last = list(tx.iter_events(device_id=device))[-1]
    assert (last.kind, last.actor, last.reason) == ("device.quarantined", "t-operator@ui",
                                                    "suspicious_traffic")
    page = ui.client.get(f"/ui/devices/{device}")
    assert "quarantine" in page.text
    assert f'href="/ui/devices/{device}/release"' in page.text
    assert "device.quarantined" in page.text
    # a second quarantine is a conflict, shown as a page, nothing recorded
    r = ui.client.post(f"/ui/devices/{device}/quarantine", data={"csrf": csrf})
    assert r.status_code == 409
    assert _kinds(ui, device).count("device.quarantined") == 1
    r = ui.client.post(f"/ui/devices/{device}/release", data={"csrf": csrf})
    assert r.status_code == 303
    assert _state(ui, device) is DeviceState.ACTIVE
    r = ui.client.post(f"/ui/devices/{device}/retire", data={"csrf": csrf, "reason": "bogus"})
    assert r.status_code == 400
    r = ui.client.post(f"/ui/devices/{device}/retire",
                       data={"csrf": csrf, "reason": "compromised"})
    assert r.status_code == 303
    assert _state(ui, device) is DeviceState.RETIRED
    assert _kinds(ui, device)[-1] == "device.retired"
    with ui.db.transaction() as tx:
        creds = tx.list_credentials(device_id=device)
    if creds:
        assert all(c.state is CredentialState.REVOKED for c in creds)
    page = ui.client.get(f"/ui/devices/{device}")
    assert not re.search(rf'href="/ui/devices/{device}/(quarantine|release|retire)"', page.text)


def test_device_page_shows_identity_credentials_policy(ui: Ui) -> None:
    login(ui.client, ui.toks["auditor"])
    device = ui.ids[0]  # active, model widget-s1, one credential expiring in 3 days
    page = ui.client.get(f"/ui/devices/{device}")
    text = unescape(page.text)
    assert "SN00000" in text
    assert MODEL in text
    assert "7a1b2c" in text
    assert "expires soon" in text
    assert "Assigned: default" in re.sub(r"<[^>]+>", "", text)
    assert "telemetry" in text  # the default policy's rules, in force for an active device
    ui.clock.advance(4 * 86400)
    login(ui.client, ui.toks["auditor"])  # the session itself expired meanwhile
    assert "expired" in ui.client.get(f"/ui/devices/{device}").text
    expected = ui.ids[2]
    assert "denied everything" in ui.client.get(f"/ui/devices/{expected}").text
    assert ui.client.get("/ui/devices/dev-aaaaaaaaaaaaaaaaaaaaaaaaaa").status_code == 404
    assert ui.client.get("/ui/devices/not-an-id").status_code == 404


# -- escaping ----------------------------------------------------------------------------------


def test_hostile_values_are_escaped(ui: Ui) -> None:
    device = _active(ui)
    with ui.db.transaction() as tx:
        eventlog.record(tx, ui.clock, "onboarding.refused", actor=f"{HOSTILE}@x",
                        device_id=device, reason="not_enrolled",
                        data={"serial": HOSTILE,
                              "detail": f'"><img src=x onerror=alert(1)>{HOSTILE}'})
    login(ui.client, ui.toks["auditor"])
    for path in (f"/ui/devices/{device}", "/ui/events", "/ui/events?refusals=true",
                 "/ui/devices?q=" + httpx.QueryParams({"x": HOSTILE})["x"]):
        r = ui.client.get(path, params=None)
        assert r.status_code in (200, 400), path
        assert "<script>alert" not in r.text, path
        assert "<img src=x" not in r.text, path
    r = ui.client.get("/ui/devices", params={"q": HOSTILE})
    assert r.status_code == 200
    assert "&lt;script&gt;" in r.text
    assert "<script>alert" not in r.text
    events = ui.client.get("/ui/events").text
    assert "&lt;script&gt;" in events
    assert 'class="refusal"' in events
    feed = ui.client.get("/ui/events/feed", params={"after": 0})
    assert feed.headers["content-type"].startswith("application/json")
    assert any(e["refusal"] and HOSTILE in e["data"] for e in feed.json()["events"])
    assert "script-src 'self'" in r.headers["content-security-policy"]


# -- listing, pagination, feed ----------------------------------------------------------------


def _walk(client: TestClient, url: str) -> list[str]:
    seen: list[str] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        r = client.get(next_url)
        assert r.status_code == 200, r.text
        seen += re.findall(r'<td><a href="/ui/devices/(dev-[a-z2-7]{26})">', r.text)
        found = re.search(r'rel="next" href="([^"]+)"', r.text)
        next_url = unescape(found.group(1)) if found else None
        pages += 1
        assert pages < 100
    return seen


def test_keyset_pagination_and_filters(ui: Ui) -> None:
    login(ui.client, ui.toks["auditor"])
    everything = _walk(ui.client, "/ui/devices?limit=7")
    assert everything == sorted(ui.ids)
    active = _walk(ui.client, "/ui/devices?state=active&limit=4")
    assert active == sorted(i for n, i in enumerate(ui.ids) if _state_of(n) is DeviceState.ACTIVE)
    modelled = _walk(ui.client, f"/ui/devices?model={MODEL}&state=quarantined&limit=3")
    assert modelled == sorted(i for n, i in enumerate(ui.ids)
                              if n % 2 == 0 and _state_of(n) is DeviceState.QUARANTINED)
    # exactly one page: no next link
    r = ui.client.get(f"/ui/devices?limit={N_DEVICES}")
    assert 'rel="next"' not in r.text
    # a deep keyset page starts right after the given id
    middle = sorted(ui.ids)[40]
    deep = _walk(ui.client, f"/ui/devices?after={middle}&limit=5")
    assert deep == sorted(ui.ids)[41:]
    # search by serial prefix and by id prefix
    assert _walk(ui.client, "/ui/devices?q=SN0001") == sorted(ui.ids[10:20])
    assert _walk(ui.client, f"/ui/devices?q={ui.ids[3][:12]}") == sorted(
        i for i in ui.ids if i.startswith(ui.ids[3][:12]))
    assert _walk(ui.client, "/ui/devices?q=SN_%") == []  # LIKE wildcards are literal
    assert ui.client.get("/ui/devices?state=bogus").status_code == 400
    assert ui.client.get("/ui/devices?after=../etc").status_code == 400
    assert ui.client.get("/ui/devices?manufacturer=Not%20A%20Slug").status_code == 400


def test_overview_counts(ui: Ui) -> None:
    login(ui.client, ui.toks["auditor"])
    r = ui.client.get("/ui/")
    assert r.status_code == 200
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", r.text))
    assert f"{N_DEVICES} devices" in text
    assert f"{N_DEVICES // 2} active" in text
    assert f"{N_DEVICES // 4} quarantined" in text
    assert f'href="/ui/devices?model={MODEL}&amp;state=active"' in r.text
    assert "no model" in text


def test_event_feed(ui: Ui) -> None:
    login(ui.client, ui.toks["auditor"])
    page = ui.client.get("/ui/events")
    last = int(re.search(r'data-last="(\d+)"', page.text).group(1))  # type: ignore[union-attr]
    assert ui.client.get("/ui/events/feed", params={"after": last}).json() == {
        "events": [], "last": last}
    with ui.db.transaction() as tx:
        eventlog.record(tx, ui.clock, "voucher.refused", actor="t@iotrust",
                        reason="bad_signature")
        eventlog.record(tx, ui.clock, "device.released", actor="t@iotrust",
                        device_id=ui.ids[3])
    body = ui.client.get("/ui/events/feed", params={"after": last}).json()
    assert [(e["seq"], e["kind"], e["refusal"]) for e in body["events"]] == [
        (last + 1, "voucher.refused", True), (last + 2, "device.released", False)]
    assert body["last"] == last + 2
    only = ui.client.get("/ui/events/feed", params={"after": last, "refusals": "true"}).json()
    assert [e["kind"] for e in only["events"]] == ["voucher.refused"]
    assert ui.client.get("/ui/events/feed", params={"after": -1}).status_code == 422
    assert ui.client.get("/ui/static/dashboard.js").status_code == 200
    assert ui.client.get("/ui/static/../app.py").status_code == 404


def test_audit_page_shows_runs_and_suppressions(ui: Ui) -> None:
    from iotrust.core.audit_checks import ALL_CHECKS  # noqa: PLC0415
    from iotrust.services import audit  # noqa: PLC0415
    from iotrust.services.settings import Settings  # noqa: PLC0415

    settings = Settings(data_dir=ui.data_dir, database_url=str(ui.db.url))
    report = audit.run_audit(ui.db, settings, ui.clock, actor="t@iotrust")
    audit.suppress(ui.db, ui.clock, ALL_CHECKS[0].id, ui.ids[1], reason=HOSTILE,
                   actor="t@iotrust")
    login(ui.client, ui.toks["auditor"])
    assert 'href="/ui/audit"' in ui.client.get("/ui/").text
    page = ui.client.get("/ui/audit")
    assert page.status_code == 200
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text))
    assert f" {len(report.findings)} " in text
    assert ALL_CHECKS[0].id in text
    assert ui.ids[1] in text
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;" in page.text


def test_rollouts_page_and_abort_guard(ui: Ui) -> None:
    csrf = login(ui.client, ui.toks["auditor"])
    page = ui.client.get("/ui/rollouts")
    assert page.status_code == 200
    assert "No rollout yet" in page.text
    assert ui.client.get("/ui/rollouts/ro-nope/abort").status_code == 403
    assert ui.client.post("/ui/rollouts/ro-nope/abort", data={"csrf": csrf}).status_code == 403
    csrf = login(ui.client, ui.toks["operator"])
    assert ui.client.post("/ui/rollouts/ro-nope/abort", data={}).status_code == 403
    assert ui.client.post("/ui/rollouts/ro-nope/abort", data={"csrf": csrf}).status_code == 404
    assert ui.client.get("/ui/rollouts/ro-nope/abort").status_code == 404


# -- a real server -----------------------------------------------------------------------------


def test_real_server_smoke(tmp_path: Path) -> None:
    db, _, data, toks, ids, passphrase_file = _build(tmp_path)
    db.close()
    env = dict(os.environ)
    env.pop("IOTRUST_PASSPHRASE", None)
    env.update({"IOTRUST_DATA": str(data),
                "IOTRUST_DATABASE_URL": f"sqlite:///{data / 'iotrust.db'}",
                "IOTRUST_PASSPHRASE_FILE": str(passphrase_file)})
    with running_server(env, workers=1, timeout_s=120) as server, \
            httpx.Client(base_url=server.url, follow_redirects=False, timeout=10) as client:
        assert client.get("/ui/").status_code == 303
        page = client.get("/ui/login")
        r = client.post("/ui/login", data={"token": toks["operator"], "csrf": _csrf(page.text)})
        assert r.status_code == 303, server.output()
        overview = client.get("/ui/")
        assert overview.status_code == 200
        assert f"{N_DEVICES} devices" in re.sub(r"<[^>]+>", " ", overview.text).replace(
            "  ", " ").replace("\n", " ") or str(N_DEVICES) in overview.text
        device = next(i for n, i in enumerate(ids) if _state_of(n) is DeviceState.ACTIVE)
        confirm = client.get(f"/ui/devices/{device}/quarantine")
        r = client.post(f"/ui/devices/{device}/quarantine", data={"csrf": _csrf(confirm.text)})
        assert r.status_code == 303, r.text
        assert "quarantined" in client.get(f"/ui/devices/{device}").text
        assert client.get("/ui/static/dashboard.css").status_code == 200
        assert client.get("/ui/events/feed?after=0").json()["events"]
    assert stat.S_IMODE((data / KEY_FILE).stat().st_mode) == 0o600


# -- audit actions -----------------------------------------------------------------------------


def test_audit_suppress_and_mitigate_from_the_ui(ui: Ui) -> None:
    device = _active(ui)
    csrf = login(ui.client, ui.toks["operator"])
    page = ui.client.get("/ui/audit")
    assert page.status_code == 200
    assert 'action="/ui/audit/suppress"' in page.text
    r = ui.client.post("/ui/audit/suppress", data={"csrf": csrf, "check": "dormant-devices",
                                                   "target": device, "reason": "lab unit"})
    assert r.status_code == 303, r.text
    assert "lab unit" in ui.client.get("/ui/audit").text
    r = ui.client.post("/ui/audit/mitigate", data={"csrf": csrf, "check": "weak-key-storage",
                                                   "target": device, "action": "quarantine"})
    assert r.status_code == 303, r.text
    assert _state(ui, device) is DeviceState.QUARANTINED
    kinds = _kinds(ui, device)
    assert "device.quarantined" in kinds
    # wrong CSRF and an auditor: refused, nothing changes
    other = next(d for d in ui.ids if d != device and _state(ui, d) is DeviceState.ACTIVE)
    r = ui.client.post("/ui/audit/mitigate", data={"csrf": "x", "check": "weak-key-storage",
                                                   "target": other, "action": "quarantine"})
    assert r.status_code == 403
    csrf = login(ui.client, ui.toks["auditor"])
    assert 'action="/ui/audit/suppress"' not in ui.client.get("/ui/audit").text
    r = ui.client.post("/ui/audit/mitigate", data={"csrf": csrf, "check": "weak-key-storage",
                                                   "target": other, "action": "quarantine"})
    assert r.status_code == 403
    assert _state(ui, other) is DeviceState.ACTIVE
