"""CRL hazards of Mosquitto 2.0.11, shown on the raw broker and prevented by the adapter (§7).

* an empty, garbage or missing ``crlfile`` at a SIGHUP fails open: revoked certificates connect;
* a CRL past its nextUpdate refuses every device;
so the adapter installs only CRLs it verified (signature, issuer, remaining lifetime) and
``refresh_crl_if_due`` re-signs well before nextUpdate.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from tests.integration.mqtt import Testbed, build_testbed, foreign_identity

from iotrust.adapters.mqtt.mosquitto import MosquittoBroker, split_crls
from iotrust.core.lifecycle import RetirementReason
from iotrust.errors import IotrustError
from iotrust.services import broker as broker_svc
from iotrust.services.credentials import build_crl_for
from iotrust.services.domain import active_issuing_ca

pytestmark = pytest.mark.mqtt


@pytest.fixture(scope="module")
def tb(tmp_path_factory):
    bed = build_testbed(tmp_path_factory.mktemp("crl"), devices=3)
    with bed.running() as broker:
        db = bed.db()
        try:
            broker_svc.retire(db, bed.settings, bed.fleet.secrets, bed.clock, bed.devices[0].name,
                              broker=broker, reason=RetirementReason.COMPROMISED,
                              actor="tests@crl")
        finally:
            db.close()
        yield bed


def _signed_crl(tb: Testbed, *, back: timedelta, validity: timedelta) -> bytes:
    db = tb.db()
    try:
        with db.transaction() as tx:
            ca = active_issuing_ca(tx)
            crl = build_crl_for(tx, tb.fleet.secrets, ca, tb.clock.now() - back, validity)
    finally:
        db.close()
    return crl.public_bytes(serialization.Encoding.PEM)


def _raw_install(broker: MosquittoBroker, content: bytes | None) -> None:
    """What a naive deployment does: overwrite (or delete) crlfile and SIGHUP, no checks."""
    if content is None:
        broker.layout.crl.unlink()
    else:
        broker.layout.crl.write_bytes(content)
    broker.reload()


def _connects(tb: Testbed, ident, timeout: float = 3.0) -> bool:
    c = tb.client(ident)
    ok = c.connect(timeout)
    c.close()
    return ok


@pytest.mark.parametrize("bad", [b"", b"garbage, not a CRL\n", None],
                         ids=["empty", "garbage", "missing"])
def test_bad_crl_fails_open_on_the_raw_broker_and_the_adapter_refuses_it(tb, bad):
    revoked, good = tb.devices[0], tb.devices[1]
    broker = tb.broker
    valid = broker.layout.crl.read_bytes()
    assert not _connects(tb, revoked)
    # The hazard, on the raw broker: after the reload the revoked certificate is admitted.
    _raw_install(broker, bad)
    try:
        assert _connects(tb, revoked), "expected Mosquitto to fail open on a bad CRL"
    finally:
        _raw_install(broker, valid)
    assert not _connects(tb, revoked)
    # The adapter refuses the same content and keeps the verified CRL in place.
    with pytest.raises(IotrustError) as exc:
        broker.install_crl(bad or b"")
    assert exc.value.reason in {"crl_empty", "malformed_crl"}
    assert broker.layout.crl.read_bytes() == valid
    assert not _connects(tb, revoked)
    assert _connects(tb, good)


def test_adapter_refuses_unverifiable_expired_and_expiring_crls(tb, tmp_path):
    broker = tb.broker
    valid = broker.layout.crl.read_bytes()
    other = build_testbed(tmp_path / "other", devices=0)
    foreign = (other.settings.crl_dir / "all.crl.pem").read_bytes()
    tampered = bytearray(valid)
    body_at = valid.index(b"\n") + 40
    tampered[body_at] = ord("A") if tampered[body_at] != ord("A") else ord("B")
    cases = {
        "crl_invalid": foreign,
        "crl_expired": _signed_crl(tb, back=timedelta(hours=3), validity=timedelta(hours=1)),
        "crl_expiring": _signed_crl(tb, back=timedelta(0), validity=timedelta(minutes=10)),
    }
    for reason, pem in cases.items():
        with pytest.raises(IotrustError) as exc:
            broker.install_crl(pem)
        assert exc.value.reason == reason
    with pytest.raises(IotrustError) as exc:
        broker.install_crl(bytes(tampered))
    assert exc.value.reason in {"crl_invalid", "malformed_crl"}
    assert broker.layout.crl.read_bytes() == valid


def test_expired_crl_locks_everyone_out_and_refresh_resigns_in_time(tb):
    broker = tb.broker
    good = tb.devices[1]
    valid = broker.layout.crl.read_bytes()
    # The other hazard, on the raw broker: a CRL past nextUpdate refuses every device.
    _raw_install(broker, _signed_crl(tb, back=timedelta(hours=3), validity=timedelta(hours=1)))
    try:
        assert not _connects(tb, good)
    finally:
        _raw_install(broker, valid)
    assert _connects(tb, good)
    # A short-lived CRL (accepted with a small margin) is re-signed before it runs out.
    short = _signed_crl(tb, back=timedelta(0), validity=timedelta(minutes=2))
    broker.crl_min_remaining = timedelta(seconds=10)
    try:
        broker.install_crl(short)
        (tb.settings.crl_dir / "all.crl.pem").write_bytes(short)
        db = tb.db()
        try:
            resigned = broker_svc.refresh_crl_if_due(db, tb.settings, tb.fleet.secrets, tb.clock,
                                                     broker, threshold=timedelta(hours=1))
            again = broker_svc.refresh_crl_if_due(db, tb.settings, tb.fleet.secrets, tb.clock,
                                                  broker, threshold=timedelta(hours=1))
        finally:
            db.close()
    finally:
        broker.crl_min_remaining = timedelta(hours=1)
    assert resigned
    assert not again
    (installed,) = split_crls(broker.layout.crl.read_bytes())
    assert installed.next_update_utc - tb.clock.now() > timedelta(days=6)
    assert _connects(tb, good)
    assert not _connects(tb, tb.devices[0])  # still revoked after the re-signing


def test_foreign_ca_device_is_refused(tb, tmp_path):
    assert not _connects(tb, foreign_identity(tmp_path, "x"))
