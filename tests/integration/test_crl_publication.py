"""CRL publication on the request path: only the CA that changed, coalesced, and still binding.

Without a broker: two issuing CAs (after a rollover); retiring a device of one re-signs that
CA's CRL only (the other's file is kept byte for byte), unless the other is due for refresh; a
request whose serials are already listed signs nothing; a bundle published but never installed
is installed without re-signing. With a real Mosquitto: retirements from several threads at once
each return only once a fresh handshake with the retired device's certificate is refused, while
the other devices stay connected.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from tests.integration.fleet import PASSPHRASE, build_fleet
from tests.integration.mqtt import add_active_devices, build_testbed

from iotrust.adapters.mqtt.mosquitto import split_crls
from iotrust.core import pki
from iotrust.core.lifecycle import RetirementReason
from iotrust.services import broker as broker_svc
from iotrust.services import credentials, crl_publication, devices, rollover
from iotrust.services.domain import KeyBackend

ACTOR = "test@crl"


class MovableClock:
    """The system clock plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


def _crl_numbers(crl_dir: Path, ca_ids: list[str]) -> dict[str, int]:
    out = {}
    for ca_id in ca_ids:
        crl = pki.load_crl((crl_dir / f"{ca_id}.crl.pem").read_bytes())
        out[ca_id] = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    return out


def _listed(crl_dir: Path) -> set[str]:
    return {f"{e.serial_number:x}" for crl in split_crls((crl_dir / "all.crl.pem").read_bytes())
            for e in crl}


def _serials(db: object, device_id: str) -> set[str]:
    with db.transaction(readonly=True) as tx:  # type: ignore[attr-defined]
        return {c.serial_number for c in tx.list_credentials(device_id=device_id)}


def test_only_the_changed_ca_is_resigned_and_covered_requests_sign_nothing(
        tmp_path: Path) -> None:
    clock = MovableClock()
    fleet = build_fleet(tmp_path, makers=(), clock=clock)
    db = fleet.open_db()
    try:
        old_dev = add_active_devices(fleet, db, clock, 1, tmp_path / "clients")[0]
        clock.offset = timedelta(seconds=2)  # a new CA id (one per second)
        report = rollover.rollover(db, fleet.settings, fleet.secrets, clock,
                                   backend=KeyBackend("file", passphrase=PASSPHRASE), actor=ACTOR)
        old_ca, new_ca = report.retiring[0], report.new.id
        new_dev = add_active_devices(fleet, db, clock, 1, tmp_path / "clients")[0]
        crl_dir = fleet.settings.crl_dir
        before = _crl_numbers(crl_dir, [old_ca, new_ca])
        old_file = (crl_dir / f"{old_ca}.crl.pem").read_bytes()

        broker_svc.retire(db, fleet.settings, fleet.secrets, clock, new_dev.name, broker=None,
                          reason=RetirementReason.COMPROMISED, actor=ACTOR)
        after = _crl_numbers(crl_dir, [old_ca, new_ca])
        assert after == {old_ca: before[old_ca], new_ca: before[new_ca] + 1}
        assert (crl_dir / f"{old_ca}.crl.pem").read_bytes() == old_file  # reused as it was
        assert _serials(db, new_dev.name) <= _listed(crl_dir)

        # asking again with no publication since: re-signed (checking would be wasted work)
        revoked = crl_publication.revoked_of_devices(db, clock, [new_dev.name])
        assert revoked == {new_ca: _serials(db, new_dev.name)}
        again = crl_publication.publish_and_install(db, fleet.settings, fleet.secrets, clock,
                                                    None, actor=ACTOR, revoked=revoked)
        assert again.resigned == (new_ca,)
        after = _crl_numbers(crl_dir, [old_ca, new_ca])

        # a device of the old CA: that CA only
        broker_svc.retire(db, fleet.settings, fleet.secrets, clock, old_dev.name, broker=None,
                          reason=RetirementReason.DECOMMISSIONED, actor=ACTOR)
        assert _crl_numbers(crl_dir, [old_ca, new_ca]) == {old_ca: after[old_ca] + 1,
                                                            new_ca: after[new_ca]}
        assert (_serials(db, old_dev.name) | _serials(db, new_dev.name)) <= _listed(crl_dir)

        # the other CA's CRL is re-signed too once it is due for refresh (< 3 days left of 7)
        third = add_active_devices(fleet, db, clock, 1, tmp_path / "clients")[0]
        clock.offset = timedelta(days=5)
        numbers = _crl_numbers(crl_dir, [old_ca, new_ca])
        broker_svc.retire(db, fleet.settings, fleet.secrets, clock, third.name, broker=None,
                          reason=RetirementReason.DECOMMISSIONED, actor=ACTOR)
        assert _crl_numbers(crl_dir, [old_ca, new_ca]) == {old_ca: numbers[old_ca] + 1,
                                                            new_ca: numbers[new_ca] + 1}
        # every verified and fresh: what start-up checks
        assert not broker_svc.ensure_published_crls(db, fleet.settings, fleet.secrets, clock)
    finally:
        db.close()


def test_a_request_covered_while_it_waited_signs_nothing(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    clock = MovableClock()
    fleet = build_fleet(tmp_path, makers=(), clock=clock)
    db = fleet.open_db()
    try:
        dev = add_active_devices(fleet, db, clock, 1, tmp_path / "clients")[0]
        devices.retire(db, clock, dev.name, RetirementReason.LOST, actor=ACTOR)
        revoked = crl_publication.revoked_of_devices(db, clock, [dev.name])
        (ca_id,) = revoked
        waiting = threading.Event()
        real_lock = credentials.crl_lock

        def announced_lock(settings: object) -> object:
            waiting.set()  # the request read the published bundle's identity, now it waits
            return real_lock(settings)  # type: ignore[arg-type]

        monkeypatch.setattr(crl_publication, "crl_lock", announced_lock)
        out: list[crl_publication.Publication] = []
        with real_lock(fleet.settings):
            worker = threading.Thread(target=lambda: out.append(
                crl_publication.publish_and_install(db, fleet.settings, fleet.secrets, clock,
                                                    None, actor=ACTOR, revoked=revoked)))
            worker.start()
            assert waiting.wait(30)
            # another publication finishes meanwhile (it read the registry after the commit)
            numbers_before = _crl_numbers(fleet.settings.crl_dir, [ca_id])
            crl_publication._resign(db, fleet.settings, fleet.secrets, clock,
                                    cas=_live_cas(db), wanted=None, actor=ACTOR)
        worker.join(30)
        assert out
        assert out[0].coalesced
        assert _crl_numbers(fleet.settings.crl_dir, [ca_id]) == {
            ca_id: numbers_before[ca_id] + 1}  # one signature for both
        assert _serials(db, dev.name) <= _listed(fleet.settings.crl_dir)
    finally:
        db.close()


def _live_cas(db: object) -> list[object]:
    with db.transaction(readonly=True) as tx:  # type: ignore[attr-defined]
        return [ca for ca in tx.list_cas(role="issuing") if ca.state != "retired"]


@pytest.mark.mqtt
def test_concurrent_retirements_each_return_once_the_broker_refuses(tmp_path: Path) -> None:
    tb = build_testbed(tmp_path, devices=10)
    victims, others = tb.devices[:6], tb.devices[6:]
    with tb.running() as broker:
        clients = {d.name: tb.client(d) for d in tb.devices}
        assert all(c.connect() for c in clients.values())
        results: dict[str, object] = {}
        start = threading.Barrier(len(victims))

        def retire(ident: object) -> None:
            name = ident.name  # type: ignore[attr-defined]
            db = tb.db()
            try:
                mine = broker_svc.open_broker(tb.settings, tb.clock)  # its own admin session
                assert mine is not None
                start.wait()
                out = broker_svc.retire(db, tb.settings, tb.fleet.secrets, tb.clock, name,
                                        broker=mine, reason=RetirementReason.LOST, actor=ACTOR)
                # the promise: on return, a fresh handshake is refused (no wait, no retry)
                probe = tb.client(ident)  # type: ignore[arg-type]
                results[name] = (out.broker, probe.connect())
                probe.close()
                mine.close()
            except Exception as exc:
                results[name] = exc
            finally:
                db.close()

        threads = [threading.Thread(target=retire, args=(v,)) for v in victims]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == {v.name: ("applied", False) for v in victims}
        for v in victims:
            assert clients[v.name].wait(lambda c=clients[v.name]: bool(c.disconnects), 5)
        for o in others:
            assert not clients[o.name].disconnects
            assert clients[o.name].connected
        db = tb.db()
        try:
            listed = _listed(tb.settings.crl_dir)
            for v in victims:
                assert _serials(db, v.name) <= listed
        finally:
            db.close()
        assert broker.layout.crl.read_bytes() == (tb.settings.crl_dir / "all.crl.pem").read_bytes()


@pytest.mark.mqtt
def test_published_but_not_installed_is_installed_without_resigning(tmp_path: Path) -> None:
    tb = build_testbed(tmp_path, devices=2)
    victim = tb.devices[0]
    with tb.running() as broker:
        db = tb.db()
        try:
            devices.retire(db, tb.clock, victim.name, RetirementReason.LOST, actor=ACTOR)
            credentials.publish_crls(db, tb.settings, tb.fleet.secrets, tb.clock, actor=ACTOR)
            # the process "died" here: published, not installed
            assert tb.client(victim).connect()
            revoked = crl_publication.revoked_of_devices(db, tb.clock, [victim.name])
            out = crl_publication.publish_and_install(db, tb.settings, tb.fleet.secrets,
                                                      tb.clock, broker, actor=ACTOR,
                                                      revoked=revoked)
            assert out.installed
            assert out.resigned == ()
            assert not tb.client(victim).connect()
            assert tb.client(tb.devices[1]).connect()
        finally:
            db.close()
