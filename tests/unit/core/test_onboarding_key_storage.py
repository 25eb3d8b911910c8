"""The device's key-storage claim: on the wire, under the attest signature, and as recorded.

The claim travels in the hello, is signed in the attest transcript (so it cannot be stripped,
added or changed in flight) and is recorded capped by the model's hardware profile: it can only
ever lower what the registry believes.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from iotrust.core.hardware import HardwareKeyStorage
from iotrust.core.lifecycle import KeyStorage
from iotrust.core.onboarding import check_attest
from iotrust.core.onboarding import messages as m
from iotrust.core.onboarding import reasons as r
from iotrust.core.onboarding.key_storage import PROFILE_ALLOWS, recorded_key_storage
from iotrust.core.onboarding.transcript import sha256
from iotrust.errors import InputError, TrustError

ROOT = Path(__file__).resolve().parents[3]


def _load_make_vectors() -> ModuleType:
    if "make_vectors" in sys.modules:
        return sys.modules["make_vectors"]
    spec = importlib.util.spec_from_file_location("make_vectors",
                                                  ROOT / "scripts" / "make_vectors.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_vectors"] = module
    spec.loader.exec_module(module)
    return module


mv = _load_make_vectors()


@pytest.fixture(scope="module")
def world() -> Any:
    return mv.build_world()


def _hello(**changes: object) -> m.HelloRequest:
    args: dict[str, Any] = {"serial": "SN-1", "factory_chain": (b"\x30\x00",),
                            "device_nonce": bytes(32)}
    args.update(changes)
    return m.HelloRequest(**args)


# --- the wire ----------------------------------------------------------------------------------

def test_the_claims_are_device_record_values() -> None:
    values = {k.value for k in KeyStorage}
    assert values >= m.KEY_STORAGE_CLAIMS
    assert "unknown" not in m.KEY_STORAGE_CLAIMS  # absent means unknown


@pytest.mark.parametrize("claim", sorted(m.KEY_STORAGE_CLAIMS))
def test_a_stated_claim_round_trips(claim: str) -> None:
    wire = _hello(key_storage=claim).to_wire()
    assert json.loads(wire)["key_storage"] == claim
    parsed = m.HelloRequest.from_wire(wire)
    assert parsed.key_storage == claim
    assert parsed.to_wire() == wire


def test_an_old_client_hello_without_the_field_still_parses() -> None:
    wire = _hello().to_wire()
    assert "key_storage" not in json.loads(wire)
    assert m.HelloRequest.from_wire(wire).key_storage is None


@pytest.mark.parametrize("value", ["unknown", "trustzone", "PKCS11", "", None, 1, ["file"],
                                   "x" * 17])
def test_a_claim_outside_the_vocabulary_is_malformed(value: object) -> None:
    obj = json.loads(_hello().to_wire())
    obj["key_storage"] = value
    with pytest.raises(InputError) as info:
        m.HelloRequest.from_wire(json.dumps(obj).encode())
    assert info.value.reason == "malformed_request"


def test_an_invalid_claim_cannot_be_constructed() -> None:
    with pytest.raises(InputError):
        _hello(key_storage="tpm2")


# --- under the signature ---------------------------------------------------------------------

def _attest_args(world: Any, run: dict[str, Any], key_storage: str | None) -> dict[str, Any]:
    return {"session": run["record"], "now": mv.T0 + timedelta(seconds=1),
            "server_id": mv.SERVER_ID, "factory_public_key": world.kit.factory_key.public_key,
            "voucher_sha256": sha256(world.voucher), "nonce_consumed_ok": True,
            "known_key": lambda _spki: False, "key_storage": key_storage}


@pytest.mark.parametrize(("signed", "seen_by_server"), [
    ("file", None),          # stripped in flight: the server would record unknown
    (None, "secure_element"),  # added in flight to an old client's hello
    ("file", "secure_element"),  # raised in flight
    ("secure_element", "file"),  # lowered in flight
])
def test_a_claim_altered_in_flight_breaks_the_attest_signature(
        world: Any, signed: str | None, seen_by_server: str | None) -> None:
    run = mv.run_onboarding(world, key_storage=signed)
    with pytest.raises(TrustError) as info:
        check_attest(run["attest"], **_attest_args(world, run, seen_by_server))
    assert info.value.reason == r.SIGNATURE_INVALID


@pytest.mark.parametrize("claim", [None, "file", "pkcs11"])
def test_onboarding_completes_with_and_without_a_claim(world: Any, claim: str | None) -> None:
    run = mv.run_onboarding(world, key_storage=claim)
    assert run["hello"].key_storage == claim
    assert run["device_session"].key_storage == claim
    assert run["confirm_decision"].device_id == world.device.id
    # the same attest also verifies when the server re-checks it with the stored claim
    check_attest(run["attest"], **_attest_args(world, run, claim))


def test_the_transcript_has_nine_elements_only_with_a_claim(world: Any) -> None:
    without = mv.run_onboarding(world, key_storage=None)["attest_decision"].transcript
    with_claim = mv.run_onboarding(world, key_storage="tpm")["attest_decision"].transcript
    assert without[0] == 0x88
    assert with_claim[0] == 0x89
    assert with_claim.endswith(b"\x63tpm")


# --- as recorded -----------------------------------------------------------------------------

H = HardwareKeyStorage
K = KeyStorage


@pytest.mark.parametrize(("claim", "profile", "recorded"), [
    (None, None, K.UNKNOWN),
    (None, H.TPM2, K.UNKNOWN),
    # without a profile nothing backs a claim: only the weak ones are kept as stated
    ("file", None, K.FILE),
    ("none", None, K.NONE),
    ("software", None, K.UNKNOWN),
    ("pkcs11", None, K.UNKNOWN),
    ("secure_element", None, K.UNKNOWN),
    ("tpm", None, K.UNKNOWN),
    # a claim the profile can hold is recorded as stated, including a weaker one
    ("file", H.SECURE_ELEMENT, K.FILE),
    ("pkcs11", H.SECURE_ELEMENT, K.PKCS11),
    ("secure_element", H.SECURE_ELEMENT, K.SECURE_ELEMENT),
    ("pkcs11", H.TPM2, K.PKCS11),
    ("tpm", H.TPM2, K.TPM),
    ("software", H.SOFTWARE, K.SOFTWARE),
    ("pkcs11", H.TRUSTZONE, K.PKCS11),
    # a claim stronger than the profile: the weaker of the two
    ("secure_element", H.SOFTWARE, K.SOFTWARE),
    ("pkcs11", H.SOFTWARE, K.SOFTWARE),
    ("tpm", H.NONE, K.NONE),
    ("file", H.NONE, K.NONE),
    # different protected kinds cannot be ordered: unknown (weak for the audit)
    ("tpm", H.SECURE_ELEMENT, K.UNKNOWN),
    ("secure_element", H.TPM2, K.UNKNOWN),
    ("secure_element", H.TRUSTZONE, K.UNKNOWN),
])
def test_recorded_key_storage(claim: str | None, profile: HardwareKeyStorage | None,
                              recorded: KeyStorage) -> None:
    assert recorded_key_storage(claim, profile) is recorded


_ORDER = {K.UNKNOWN: 0, K.NONE: 0, K.FILE: 1, K.SOFTWARE: 1, K.PKCS11: 2,
          K.SECURE_ELEMENT: 3, K.TPM: 3}


@pytest.mark.parametrize("profile", [None, *HardwareKeyStorage])
@pytest.mark.parametrize("claim", sorted(m.KEY_STORAGE_CLAIMS))
def test_a_claim_never_records_more_than_the_claim_or_the_profile(
        claim: str, profile: HardwareKeyStorage | None) -> None:
    recorded = recorded_key_storage(claim, profile)
    backed = PROFILE_ALLOWS[profile] if profile is not None else frozenset({K.NONE, K.FILE})
    assert recorded in backed | {K.UNKNOWN}
    assert _ORDER[recorded] <= _ORDER[K(claim)]


def test_recorded_key_storage_refuses_a_value_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="not a key-storage claim"):
        recorded_key_storage("unknown", None)
