"""The dashboard in a real browser: Playwright drives Debian's Chromium against a real server.

One ``iotrust serve`` on a SQLite registry of 60 devices (the fleet of ``test_dashboard.py``)
plus one small rollout; each test gets a fresh browser context (no cookies). Covered: sign-in
and the fleet counts, the devices list, a device page, quarantine through the confirmation page
(state and event shown, state and event recorded), aborting a rollout through its confirmation
page, redirection to the sign-in page without a session, and a POST with a wrong CSRF token
refused without effect. Not covered here: what ``test_dashboard.py`` checks through the app
(cookie flags, roles, escaping, pagination, the live feed).

Chromium is ``/usr/bin/chromium`` (Debian's package, ``scripts/system-deps.sh``); Playwright's
own browser download is never used. Without Chromium or Playwright the tests skip locally and
fail under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.conftest import missing_component
from tests.integration.server import Server, running_server
from tests.integration.test_dashboard import N_DEVICES, PASS, _build, _state_of

from iotrust.adapters.sql.store import Database
from iotrust.core.lifecycle import DeviceState
from iotrust.core.updates import ReleaseInfo
from iotrust.services import domain, rollouts, updates
from iotrust.services.settings import Settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ROLLOUT = "ro-browser"
TIMEOUT_MS = 15_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Site:
    server: Server
    browser: Browser
    db_url: str
    operator: str  # an operator token
    actives: list[str]  # active device ids, sorted; the first two are in the rollout


def _prepare(base: Path) -> tuple[dict[str, str], str, str, list[str]]:
    """The dashboard test fleet, update repositories and one rollout over two devices."""
    db, clock, data, toks, ids, passphrase_file = _build(base)
    settings = Settings(data_dir=data, database_url=str(db.url))
    secrets = domain.Secrets(passphrase=PASS)
    updates.init_updates(settings, domain.KeyBackend("file", passphrase=PASS), clock)
    rollouts.add_release(db, settings, secrets, clock, data=b"browser test image " * 64,
                         info=ReleaseInfo("main", ("s1",), 1), actor="t@iotrust")
    actives = [i for n, i in enumerate(ids) if _state_of(n) is DeviceState.ACTIVE]
    rollouts.create_rollout(db, settings, secrets, clock, "main-1", actor="t@iotrust",
                            device_ids=actives[:2], rollout_id=ROLLOUT)
    db_url = str(db.url)
    db.close()
    env = dict(os.environ)
    env.pop("IOTRUST_PASSPHRASE", None)
    env.update({"IOTRUST_DATA": str(data), "IOTRUST_DATABASE_URL": db_url,
                "IOTRUST_PASSPHRASE_FILE": str(passphrase_file)})
    return env, db_url, toks["operator"], actives


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415 - optional dev dependency
    except ImportError:
        missing_component("playwright (pip)")
    if shutil.which(CHROMIUM) is None:
        missing_component(f"Debian chromium ({CHROMIUM})")
    base = tmp_path_factory.mktemp("browser")
    env, db_url, operator, actives = _prepare(base)
    with running_server(env, workers=1, timeout_s=120, log_dir=base) as server, \
            sync_playwright() as pw:
        # launch() gives Chromium a fresh temporary profile (user data dir) and deletes it after
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield Site(server, browser, db_url, operator, actives)
        finally:
            browser.close()


@pytest.fixture
def page(site: Site) -> Iterator[Page]:
    context = site.browser.new_context(base_url=site.server.url)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def _sign_in(page: Page, token: str) -> None:
    page.goto("/ui/login")
    page.fill("#token", token)
    page.click("form.login button[type=submit]")
    page.wait_for_url("**/ui/")


def _recorded(site: Site, device_id: str) -> tuple[DeviceState, list[str]]:
    db = Database.open(site.db_url)
    try:
        with db.transaction(readonly=True) as tx:
            return (tx.get_device(device_id).state,
                    [e.kind for e in tx.iter_events(device_id=device_id)])
    finally:
        db.close()


def test_without_a_session_pages_redirect_to_sign_in(site: Site, page: Page) -> None:
    device = site.actives[0]
    for path in ("/ui/", "/ui/devices?state=active", f"/ui/devices/{device}"):
        page.goto(path)
        assert page.url.startswith(f"{site.server.url}/ui/login?next="), path
        assert page.locator("h1").inner_text() == "Sign in"


def test_sign_in_overview_devices_and_quarantine(site: Site, page: Page,
                                                 tmp_path: Path) -> None:
    _sign_in(page, site.operator)
    assert page.locator("h1").inner_text() == "Fleet"
    assert page.locator('a.card[href="/ui/devices"] .n').inner_text() == str(N_DEVICES)
    expected = {st: sum(1 for n in range(N_DEVICES) if _state_of(n) is st)
                for st in (DeviceState.ACTIVE, DeviceState.EXPECTED, DeviceState.QUARANTINED)}
    for st, count in expected.items():
        card = page.locator(f'a.card[href="/ui/devices?state={st.value}"] .n')
        assert card.inner_text() == str(count), st
    shot = tmp_path / "overview.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert len(data) > len(PNG_MAGIC)
    assert data.startswith(PNG_MAGIC)

    # the active devices, from the overview's card
    page.click('a.card[href="/ui/devices?state=active"]')
    page.wait_for_url("**/ui/devices?state=active")
    target = site.actives[2]
    page.click(f'a[href="/ui/devices/{target}"]')
    page.wait_for_url(f"**/ui/devices/{target}")
    assert page.locator("h1 .badge").inner_text() == "active"

    # quarantine through its confirmation page
    page.click(f'a[href="/ui/devices/{target}/quarantine"]')
    page.wait_for_url(f"**/ui/devices/{target}/quarantine")
    assert _recorded(site, target)[0] is DeviceState.ACTIVE  # nothing happens before "Yes"
    page.fill('input[name="reason"]', "suspicious_traffic")
    page.click("form.confirm button[type=submit]")
    page.wait_for_url(f"**/ui/devices/{target}?done=quarantine")
    assert page.locator("h1 .badge").inner_text() == "quarantined"
    assert page.locator("p.notice").is_visible()
    assert page.get_by_text("device.quarantined").count() >= 1
    assert page.locator(f'a[href="/ui/devices/{target}/release"]').count() == 1
    state, kinds = _recorded(site, target)
    assert state is DeviceState.QUARANTINED
    assert kinds[-1] == "device.quarantined"


def test_wrong_csrf_token_is_refused_and_changes_nothing(site: Site, page: Page) -> None:
    _sign_in(page, site.operator)
    target = site.actives[3]
    page.goto(f"/ui/devices/{target}")
    r = page.request.post(f"/ui/devices/{target}/quarantine",
                          form={"csrf": "not-the-right-token", "reason": "operator"},
                          max_redirects=0)
    assert r.status == 403
    assert "CSRF token is missing or wrong" in r.text()  # refused for the token, not the session
    assert page.request.get("/ui/", max_redirects=0).status == 200  # the session is valid
    page.reload()
    assert page.locator("h1 .badge").inner_text() == "active"
    assert page.get_by_text("device.quarantined").count() == 0
    state, kinds = _recorded(site, target)
    assert state is DeviceState.ACTIVE
    assert "device.quarantined" not in kinds


def test_abort_a_rollout(site: Site, page: Page) -> None:
    _sign_in(page, site.operator)
    page.click('nav a[href="/ui/rollouts"]')
    page.wait_for_url("**/ui/rollouts")
    row = page.locator("tr", has_text=ROLLOUT)
    assert row.locator(".badge").inner_text() == "active"
    row.locator(f'a[href="/ui/rollouts/{ROLLOUT}/abort"]').click()
    page.wait_for_url(f"**/ui/rollouts/{ROLLOUT}/abort")
    assert ROLLOUT in page.locator("h1").inner_text()
    page.click("form.confirm button[type=submit]")
    page.wait_for_url("**/ui/rollouts")
    row = page.locator("tr", has_text=ROLLOUT)
    assert row.locator(".badge").inner_text() == "aborted"
    assert row.locator(f'a[href="/ui/rollouts/{ROLLOUT}/abort"]').count() == 0
    db = Database.open(site.db_url)
    try:
        assert rollouts.status(db, ROLLOUT).rollout.state == "aborted"
    finally:
        db.close()
