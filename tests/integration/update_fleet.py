"""Devices that onboard and update in-process, against the real service layer and API app.

:func:`build_update_fleet` builds a fleet (:mod:`tests.integration.fleet`), initialises signed
updates, onboards every device through the real :class:`OnboardingService` (so each holds an
operational key, a certificate and the update-root bundle), and gives each an
:class:`~iotrust.agent.updates.UpdateClient` whose HTTP goes to the real FastAPI app in-process
(``TestClient``). :class:`TamperingFetcher` is the network attacker: it passes requests to the
real server and replaces chosen responses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fastapi.testclient import TestClient
from tests.integration.fleet import PASSPHRASE, Fleet, Maker, build_fleet
from tests.integration.test_onboarding_service import SoftKey, attest, hello
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface

from iotrust.adapters.sql.store import Database
from iotrust.agent.updates import HealthHook, HttpxFetcher, UpdateClient
from iotrust.api.app import create_app
from iotrust.core import envelope
from iotrust.core.onboarding.device import build_confirm
from iotrust.ports import Clock, SystemClock
from iotrust.services import updates
from iotrust.services.domain import KeyBackend, Secrets
from iotrust.services.onboarding import OnboardingService

BASE = "http://testserver"


class AppTransport:
    """The agent's Transport over the in-process app."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        reply = self._client.post(path, content=body,
                                  headers={"content-type": "application/cose"})
        return reply.status_code, reply.content


class TamperingFetcher(FetcherInterface):
    """Passes every fetch to the real server, except URLs ending in a key of ``replace``."""

    def __init__(self, inner: FetcherInterface,
                 replace: Mapping[str, bytes] | None = None) -> None:
        self.inner = inner
        self.replace = dict(replace or {})
        self.fetched: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self.fetch_with_headers(url, {})

    def fetch_with_headers(self, url: str, headers: Mapping[str, str]) -> Iterator[bytes]:
        """Like ``fetch``, passing ``headers`` (the device's signed read) to the inner fetcher."""
        self.fetched.append(url)
        for suffix, data in self.replace.items():
            if url.endswith(suffix):
                return iter([data])
        send = getattr(self.inner, "fetch_with_headers", None)
        try:
            if send is not None:
                return iter(list(send(url, headers)))
            return iter(list(self.inner.fetch(url)))
        except tuf_errors.DownloadHTTPError:
            raise
        except tuf_errors.DownloadError as exc:
            raise tuf_errors.DownloadHTTPError(str(exc), 500) from None


@dataclass(slots=True)
class UpdateDevice:
    """One onboarded device with its update client."""

    device_id: str
    key: SoftKey
    kid: bytes
    client: UpdateClient
    fetcher: TamperingFetcher
    healthy: bool = True


@dataclass(slots=True)
class UpdateFleet:
    """The fleet, the app, the devices."""

    fleet: Fleet
    db: Database
    clock: Clock
    app_client: TestClient
    devices: list[UpdateDevice] = field(default_factory=list)

    @property
    def secrets(self) -> Secrets:
        return Secrets(passphrase=PASSPHRASE)

    def by_id(self, device_id: str) -> UpdateDevice:
        return next(d for d in self.devices if d.device_id == device_id)

    def close(self) -> None:
        self.app_client.close()
        self.db.close()


def _health_of(device: list[UpdateDevice]) -> HealthHook:
    def health(_slot: Path) -> bool:
        return device[0].healthy
    return health


def build_update_fleet(base: Path, *, count: int, hw_class: str = "sensor-1",
                       clock: Clock | None = None,
                       health: Callable[[int], bool] | None = None) -> UpdateFleet:
    """``count`` onboarded devices of hardware class ``hw_class`` (their product id)."""
    clock = clock or SystemClock()
    fleet = build_fleet(base, makers=(Maker("widgetco", count=count, product_id=hw_class),),
                        clock=clock)
    updates.init_updates(fleet.settings, KeyBackend("file", passphrase=PASSPHRASE), clock)
    db = fleet.open_db()
    svc = OnboardingService(db, clock, fleet.settings, fleet.secrets)
    app = create_app(fleet.settings, clock=clock, secrets=fleet.secrets, db=db)
    client = TestClient(app, base_url=BASE)
    out = UpdateFleet(fleet=fleet, db=db, clock=clock, app_client=client)
    transport = AppTransport(client)
    for i, serial in enumerate(fleet.serials("widgetco")):
        dev = fleet.device(serial)
        _, _, session = hello(svc, dev, clock)  # type: ignore[arg-type]
        key, onboarded = attest(svc, dev, session, clock)  # type: ignore[arg-type]
        svc.confirm(build_confirm(session, onboarded, operational_signer=key).to_wire(),
                    source="192.0.2.1")
        kid = envelope.kid_for_serial(f"{onboarded.certificate.serial_number:x}")
        holder: list[UpdateDevice] = []
        fetcher = TamperingFetcher(HttpxFetcher(client))
        upd = UpdateClient(base / "agents" / onboarded.device_id,
                           device_id=onboarded.device_id, server_url=BASE, signer=key, kid=kid,
                           transport=transport, fetcher=fetcher, health=_health_of(holder))
        upd.initialise(onboarded.update_root, hw_class)
        device = UpdateDevice(onboarded.device_id, key, kid, upd, fetcher,
                              healthy=health(i) if health else True)
        holder.append(device)
        out.devices.append(device)
    return out


def random_image(size: int = 4096) -> bytes:
    """An image's bytes."""
    return os.urandom(size)
