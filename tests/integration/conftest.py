"""Fixtures shared by the onboarding tests that run the service on a module's fleet.

A test module using them defines its own module-scoped ``clock`` and ``fleet`` (a
:func:`tests.integration.fleet.build_fleet`); ``db``, ``svc`` and ``fresh`` here are built on
those. A module that defines a fixture of the same name keeps its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from tests.integration.fleet import Fleet, FleetDevice

from iotrust.adapters.sql.store import Database
from iotrust.ports import FixedClock
from iotrust.services.onboarding import OnboardingService


@pytest.fixture(scope="module")
def db(fleet: Fleet) -> Iterator[Database]:
    """A connection pool to the module's fleet registry, closed after the module."""
    database = fleet.open_db()
    yield database
    database.close()


@pytest.fixture(scope="module")
def svc(fleet: Fleet, db: Database, clock: FixedClock) -> OnboardingService:
    """The onboarding service on the module's fleet and clock."""
    return OnboardingService(db, clock, fleet.settings, fleet.secrets)


@pytest.fixture(scope="module")
def fresh(fleet: Fleet) -> Callable[..., FleetDevice]:
    """``fresh(maker="widgetco")``: a device of ``maker`` no other test of the module has used."""
    taken: set[str] = set()

    def take(maker: str = "widgetco") -> FleetDevice:
        for serial in fleet.serials(maker):
            if serial not in taken:
                taken.add(serial)
                return fleet.device(serial)
        raise RuntimeError(f"no fresh device of {maker} left")

    return take
