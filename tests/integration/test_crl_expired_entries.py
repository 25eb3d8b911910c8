"""Expired certificates leave the CRL, and openssl still refuses every revoked one.

Three devices of one trust domain get certificates (30 days) at different times and are revoked:
one expired long ago (past :data:`iotrust.core.pki.EXPIRED_ENTRY_MARGIN`), one expired a few
days ago (within the margin) and one still valid. The CRL published now lists the last two only;
``openssl verify -crl_check`` refuses the valid one as revoked and the long-expired one as
expired; ``openssl crl -verify`` accepts the CRL; the start-up check does not republish for ever
because of the dropped entry.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from tests.conftest import missing_component
from tests.integration.fleet import build_fleet
from tests.integration.mqtt import Identity, add_active_devices

from iotrust.core import pki
from iotrust.services import broker as broker_svc
from iotrust.services import credentials

ACTOR = "test@crl"


class MovableClock:
    """The system clock plus an offset the test moves."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


def _openssl() -> str:
    tool = shutil.which("openssl")
    if tool is None:
        missing_component("openssl")
    assert tool is not None
    return tool


def _serial(ident: Identity) -> str:
    return f"{x509.load_pem_x509_certificate(ident.cert.read_bytes()).serial_number:x}"


def _verify(tool: str, chain: Path, crl: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "verify", "-crl_check", "-CAfile", str(chain), "-CRLfile",
                           str(crl), str(cert)], capture_output=True, text=True, check=False)


def test_expired_entries_leave_the_crl_and_stay_refused(tmp_path: Path) -> None:
    tool = _openssl()
    clock = MovableClock(-timedelta(days=90))
    fleet = build_fleet(tmp_path, makers=(), clock=clock)
    db = fleet.open_db()
    try:
        idents: dict[str, Identity] = {}
        # (name, issued days ago): a 30-day certificate expires 30 days after issuance
        for name, days_ago in (("long_expired", 60), ("just_expired", 33), ("valid", 1)):
            clock.offset = -timedelta(days=days_ago)
            ident = add_active_devices(fleet, db, clock, 1, tmp_path / "clients")[0]
            with db.transaction() as tx:
                assert credentials.revoke_credential(tx, clock, _serial(ident),
                                                     reason="key_compromise", actor=ACTOR)
            idents[name] = ident
        clock.offset = timedelta()
        credentials.publish_crls(db, fleet.settings, fleet.secrets, clock, actor=ACTOR)

        crl_path = fleet.settings.crl_dir / "all.crl.pem"
        listed = {f"{e.serial_number:x}" for e in pki.load_crl(crl_path.read_bytes())}
        assert listed == {_serial(idents["just_expired"]), _serial(idents["valid"])}

        chain = tmp_path / "trust.pem"
        chain.write_bytes((fleet.settings.ca_dir / "bundle.pem").read_bytes())
        ok = subprocess.run([tool, "crl", "-in", str(crl_path), "-CAfile", str(chain), "-noout",
                             "-verify"], capture_output=True, text=True, check=False)
        assert ok.returncode == 0, ok.stderr
        revoked = _verify(tool, chain, crl_path, idents["valid"].cert)
        assert revoked.returncode != 0
        assert "certificate revoked" in revoked.stdout + revoked.stderr
        expired = _verify(tool, chain, crl_path, idents["long_expired"].cert)
        assert expired.returncode != 0
        assert "certificate has expired" in expired.stdout + expired.stderr
        assert "revoked" not in expired.stdout + expired.stderr
        assert _verify(tool, chain, crl_path, idents["just_expired"].cert).returncode != 0

        # the registry and the published CRL agree: no republication on every start
        assert not broker_svc.ensure_published_crls(db, fleet.settings, fleet.secrets, clock)
    finally:
        db.close()


@pytest.mark.parametrize("margin_days", [0.5, 7.5])
def test_an_entry_stays_listed_until_the_margin_has_passed(tmp_path: Path,
                                                           margin_days: float) -> None:
    clock = MovableClock(-timedelta(days=30))
    fleet = build_fleet(tmp_path, makers=(), clock=clock)
    db = fleet.open_db()
    try:
        ident = add_active_devices(fleet, db, clock, 1, tmp_path / "clients")[0]
        with db.transaction() as tx:
            credentials.revoke_credential(tx, clock, _serial(ident), reason="unspecified",
                                          actor=ACTOR)
        not_after = x509.load_pem_x509_certificate(ident.cert.read_bytes()).not_valid_after_utc
        clock.offset = not_after + timedelta(days=margin_days) - datetime.now(UTC)
        credentials.publish_crls(db, fleet.settings, fleet.secrets, clock, actor=ACTOR)
        crl = pki.load_crl((fleet.settings.crl_dir / "all.crl.pem").read_bytes())
        assert pki.is_revoked(crl, int(_serial(ident), 16))  # within the 8-day margin
    finally:
        db.close()
