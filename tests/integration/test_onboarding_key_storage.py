"""The onboarding service records the key storage a device states, never above its hardware.

Real registry (SQLite), real service, the core's device helpers (what the agent runs). The claim
goes in the hello, is signed in the attest and is recorded at confirm on the device and in the
``device.onboarded`` event, next to what was claimed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from tests.integration.fleet import Fleet, FleetDevice, Maker, build_fleet

from iotrust.adapters.sql.store import Database
from iotrust.core import events as ev
from iotrust.core.lifecycle import DeviceState, KeyStorage
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
from iotrust.core.policy import Action, Rule
from iotrust.errors import TrustError
from iotrust.ports import FixedClock
from iotrust.services import audit, policies
from iotrust.services import hardware as hw_svc
from iotrust.services.onboarding import OnboardingService

SOURCE = "198.51.100.9"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hardware"


class SoftKey:
    """An in-memory operational key (a Signer)."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))

    def csr(self) -> bytes:
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
        return builder.sign(self.private_key, hashes.SHA256()).public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def clock() -> FixedClock:
    return FixedClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, clock: FixedClock) -> Fleet:
    fleet = build_fleet(tmp_path_factory.mktemp("onb-ks"), makers=(Maker("ksco", count=14),),
                        clock=clock)
    db = fleet.open_db()
    try:
        for model, profile in (("se-mcu", "mcu-secure-element.yaml"),
                               ("tiny-mcu", "class1-mcu.yaml"),
                               ("tpm-gateway", "linux-gateway-tpm.yaml")):
            hw_svc.register_model(db, clock, name=model, manufacturer="ksco",
                                  profile_yaml=(EXAMPLES / profile).read_bytes(),
                                  actor="tests@ks")
    finally:
        db.close()
    return fleet


# db and svc: tests/integration/conftest.py


_next = iter(range(14))


def device(fleet: Fleet, db: Database, model: str | None = None) -> FleetDevice:
    """A fresh device of the fleet, of ``model`` (set in the registry, as an operator would)."""
    dev = fleet.device(fleet.serials("ksco")[next(_next)])
    if model is not None:
        with db.transaction() as tx:
            found = tx.find_device(dev.manufacturer, dev.serial)
            assert found is not None
            tx.update_device(dataclasses.replace(found, model=model),
                             expected_state=DeviceState.EXPECTED)
    return dev


def onboard(svc: OnboardingService, dev: FleetDevice, clock: FixedClock,
            claim: str | None) -> str:
    req = build_hello(serial=dev.serial, factory_chain=dev.chain, random=os.urandom,
                      key_storage=claim)
    resp = HelloResponse.from_wire(svc.hello(req.to_wire(), source=SOURCE).to_wire())
    session = accept_hello_response(resp, hello=req, manufacturer_anchors=(dev.manufacturer_root,),
                                    now=clock.now())
    key = SoftKey()
    attest = build_attest(session, factory_signer=dev.factory_key, csr_der=key.csr())
    onboarded = accept_attest_response(
        AttestResponse.from_wire(svc.attest(attest.to_wire(), source=SOURCE).to_wire()),
        session=session, csr_public_key=key.public_key, now=clock.now())
    svc.confirm(build_confirm(session, onboarded, operational_signer=key).to_wire(),
                source=SOURCE)
    return onboarded.device_id


def recorded(db: Database, device_id: str) -> tuple[KeyStorage, dict[str, object]]:
    with db.transaction(readonly=True) as tx:
        stored = tx.get_device(device_id)
        events = [e for e in tx.iter_events(after_seq=0, kind=ev.DEVICE_ONBOARDED)
                  if e.device_id == device_id]
    assert stored.state is DeviceState.ACTIVE
    assert len(events) == 1
    return stored.key_storage, json.loads(events[0].data)


@pytest.mark.parametrize("case", [
    (None, "file", KeyStorage.FILE),                        # the development agent
    (None, None, KeyStorage.UNKNOWN),                       # a client older than the field
    (None, "pkcs11", KeyStorage.UNKNOWN),                   # nothing backs a strong claim
    ("se-mcu", "pkcs11", KeyStorage.PKCS11),                # the profile can hold it
    ("tpm-gateway", "tpm", KeyStorage.TPM),
    ("se-mcu", "file", KeyStorage.FILE),                    # a weaker claim lowers trust
    ("tiny-mcu", "secure_element", KeyStorage.NONE),        # stronger than the hardware
    ("se-mcu", "tpm", KeyStorage.UNKNOWN),                  # another protected kind
])
def test_the_device_record_and_event_say_what_was_claimed_and_recorded(
        fleet: Fleet, db: Database, svc: OnboardingService, clock: FixedClock,
        case: tuple[str | None, str | None, KeyStorage]) -> None:
    model, claim, expected = case
    dev = device(fleet, db, model)
    device_id = onboard(svc, dev, clock, claim)
    storage, data = recorded(db, device_id)
    assert storage is expected
    assert data["key_storage"] == expected.value
    assert data["key_storage_claimed"] == claim


def test_a_claim_altered_in_flight_is_refused(fleet: Fleet, db: Database,
                                              svc: OnboardingService,
                                              clock: FixedClock) -> None:
    """A relay raising ``file`` to ``secure_element`` in the hello breaks the attest signature."""
    dev = device(fleet, db, "se-mcu")
    honest = build_hello(serial=dev.serial, factory_chain=dev.chain, random=os.urandom,
                         key_storage="file")
    relayed = dataclasses.replace(honest, key_storage="secure_element")
    resp = HelloResponse.from_wire(svc.hello(relayed.to_wire(), source=SOURCE).to_wire())
    session = accept_hello_response(resp, hello=honest,
                                    manufacturer_anchors=(dev.manufacturer_root,),
                                    now=clock.now())
    attest = build_attest(session, factory_signer=dev.factory_key, csr_der=SoftKey().csr())
    with pytest.raises(TrustError) as info:
        svc.attest(attest.to_wire(), source=SOURCE)
    assert info.value.reason == r.SIGNATURE_INVALID
    with db.transaction(readonly=True) as tx:
        stored = tx.find_device(dev.manufacturer, dev.serial)
    assert stored is not None
    assert stored.state is DeviceState.EXPECTED
    assert stored.key_storage is KeyStorage.UNKNOWN



# --- the posture audit -------------------------------------------------------------------------

def test_the_audit_flags_a_file_key_device_with_sensitive_permissions(
        fleet: Fleet, db: Database, svc: OnboardingService, clock: FixedClock) -> None:
    """weak-key-storage: the development-key device trips it, the token device does not."""
    file_device = onboard(svc, device(fleet, db), clock, "file")
    plain_file_device = onboard(svc, device(fleet, db), clock, "file")  # default policy only
    token_device = onboard(svc, device(fleet, db, "tpm-gateway"), clock, "pkcs11")
    policies.create(db, clock, "fleet-reader", [
        Rule(Action.PUBLISH, "devices/{device_id}/telemetry"),
        Rule(Action.SUBSCRIBE, "devices/+/telemetry", shared=True),  # beyond the default
    ], actor="tests@ks")
    policies.add_to_group(db, clock, "readers", [file_device, token_device], actor="tests@ks")
    policies.assign_to_group(db, clock, "fleet-reader", "readers", actor="tests@ks")

    report = audit.run_audit(db, fleet.settings, clock, actor="tests@ks",
                             checks=["weak-key-storage"], record=False)
    affected = {d for f in report.findings for d in f.affected}
    assert file_device in affected
    assert token_device not in affected
    [finding] = [f for f in report.findings if file_device in f.affected]
    assert finding.evidence["key_storage"] == "file"
    # a device with only the default policy is no finding, whatever its key storage
    assert plain_file_device not in affected
    with db.transaction(readonly=True) as tx:
        assert tx.get_device(plain_file_device).key_storage is KeyStorage.FILE
        assert tx.get_device(token_device).key_storage is KeyStorage.PKCS11
