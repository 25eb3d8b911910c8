"""The agent with a real PKCS#11 token (SoftHSM2): factory key and operational key on the token.

The device onboards against the in-memory server simulator (the server side is not what is
under test here); what is real is the key store: the factory key signs the attest transcript
on the token, the operational key is *generated* on the token (label ``ldevid-<serial>-<n>``),
the CSR is signed there through the external-signer path, and the key is sensitive and not
extractable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass
from tests.integration.softhsm import SoftHsmToken, softhsm_token, unique_key_label
from tests.unit.agent.test_onboard_flow import (
    ServerSimulator,
    World,
    build_world,
    fixed_now,
    mv,
    refused,
)

from iotrust.adapters.keys import KeyRef, Pkcs11Signer, open_signer
from iotrust.agent import keys
from iotrust.agent.onboard import onboard
from iotrust.agent.state import load_state
from iotrust.core import pki
from iotrust.core.lifecycle import DeviceState

pytestmark = pytest.mark.hsm


@pytest.fixture
def token() -> SoftHsmToken:
    return softhsm_token()


def _private_key_attributes(token: SoftHsmToken, label: str) -> dict[str, object]:
    # PKCS#11 login state belongs to the process: while a signer holds the shared logged-in
    # session, a second session opened without a PIN sees the private objects too (and
    # closing it does not log the shared session out).
    library = pkcs11.lib(token.module)
    session = library.get_token(token_label=token.label).open(rw=False)
    try:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        attributes: dict[str, object] = {
            "sensitive": private[Attribute.SENSITIVE],
            "extractable": private[Attribute.EXTRACTABLE],
            "token": private[Attribute.TOKEN],
        }
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            _ = private[Attribute.VALUE]
        return attributes
    finally:
        session.close()


def _pkcs11_world(tmp_path: Path, token: SoftHsmToken, serial: str) -> tuple[World, str]:
    label = unique_key_label("idevid")
    with Pkcs11Signer.generate(token.module, token.label, token.pin, label) as factory_key:
        ref = str(KeyRef.pkcs11(token.module, token.label, label))
        world = build_world(tmp_path, factory_public_key=factory_key.public_key, key_ref=ref,
                            serial=serial)
    return world, ref


def test_onboarding_with_keys_on_the_token(tmp_path: Path, token: SoftHsmToken) -> None:
    serial = f"HSM{os.urandom(4).hex()}"
    world, factory_ref = _pkcs11_world(tmp_path, token, serial)
    server = ServerSimulator(world, clock=fixed_now)
    state_dir = tmp_path / "state"

    state = onboard(world.device_dir, state_dir, server, now=fixed_now,
                    random=os.urandom, pin=token.pin)

    assert state.confirmed
    assert state.key_storage == "pkcs11"
    assert list(server.claims.values()) == ["pkcs11"]  # stated in the hello, signed in attest
    assert server.devices[serial].state is DeviceState.ACTIVE
    op_ref = KeyRef.pkcs11(token.module, token.label, f"ldevid-{serial}-1")
    assert state.operational_key_ref == str(op_ref)
    assert not (state_dir / "operational.key.pem").exists()  # nothing in a file
    # the certified key is the token's key, and it never leaves the token
    op_key = open_signer(op_ref, pin=token.pin)
    factory_key = open_signer(factory_ref, pin=token.pin)
    try:
        assert pki.spki_sha256(op_key.public_key) == pki.spki_sha256(
            state.certificate.public_key())
        assert pki.spki_sha256(op_key.public_key) != pki.spki_sha256(factory_key.public_key)
        attributes = _private_key_attributes(token, f"ldevid-{serial}-1")
    finally:
        keys.close_signer(op_key)
        keys.close_signer(factory_key)
    assert attributes == {"sensitive": True, "extractable": False, "token": True}
    assert load_state(state_dir) == state


def test_a_second_attempt_takes_the_next_label(tmp_path: Path, token: SoftHsmToken) -> None:
    serial = f"HSM{os.urandom(4).hex()}"
    world, _ = _pkcs11_world(tmp_path, token, serial)
    server = ServerSimulator(world, clock=fixed_now)
    genuine = server.issuer
    server.issuer = mv.make_domain("rogue", 0x7100)
    refused("owner_mismatch", lambda: onboard(
        world.device_dir, tmp_path / "state", server,
        now=fixed_now, random=os.urandom, pin=token.pin))
    server.issuer = genuine
    server.sessions.clear()
    state = onboard(world.device_dir, tmp_path / "state", server,
                    now=fixed_now, random=os.urandom, pin=token.pin)
    assert state.operational_key_ref.endswith(f"object=ldevid-{serial}-2")


def test_the_pin_comes_from_the_environment(tmp_path: Path, token: SoftHsmToken,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    serial = f"HSM{os.urandom(4).hex()}"
    world, ref = _pkcs11_world(tmp_path, token, serial)
    monkeypatch.setenv("IOTRUST_PKCS11_PIN", token.pin)
    signer = keys.open_factory_signer(ref, world.device_dir)
    try:
        assert isinstance(signer, Pkcs11Signer)
    finally:
        keys.close_signer(signer)
