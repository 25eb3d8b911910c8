"""The onboarding core: every refusal with its exact reason, and the happy path end to end.

The world (manufacturer, trust domain, device, voucher) comes from scripts/make_vectors.py so the
tests and the published vectors exercise the very same supply chain.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from iotrust.core import pki
from iotrust.core.lifecycle import DeviceState, RetirementReason
from iotrust.core.onboarding import (
    ManufacturerTrust,
    accept_attest_response,
    accept_hello_response,
    attest_transcript,
    build_attest,
    build_confirm,
    check_attest,
    check_confirm,
    check_hello,
    confirm_transcript,
    new_session,
    nonce_sha256,
    precheck_attest,
)
from iotrust.core.onboarding import messages as m
from iotrust.core.onboarding import reasons as r
from iotrust.core.onboarding.transcript import sha256
from iotrust.core.records import OnboardingSession, SessionState
from iotrust.core.vouchers import decode_voucher
from iotrust.errors import InputError, TrustError
from iotrust.ports import FixedClock

ROOT = Path(__file__).resolve().parents[3]


def _load_make_vectors() -> ModuleType:
    if "make_vectors" in sys.modules:
        return sys.modules["make_vectors"]
    path = ROOT / "scripts" / "make_vectors.py"
    spec = importlib.util.spec_from_file_location("make_vectors", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_vectors"] = module
    spec.loader.exec_module(module)
    return module


mv = _load_make_vectors()
T0 = mv.T0


@pytest.fixture(scope="module")
def world() -> Any:
    return mv.build_world()


@pytest.fixture(scope="module")
def run(world: Any) -> dict[str, Any]:
    return mv.run_onboarding(world)


def refused(reason: str, fn: Callable[..., object], *args: object, **kwargs: object) -> TrustError:
    with pytest.raises(TrustError) as info:
        fn(*args, **kwargs)
    assert info.value.reason == reason, info.value.diagnostics()
    return info.value


# --- hello -----------------------------------------------------------------------------------

def hello_args(world: Any, **changes: object) -> dict[str, object]:
    args: dict[str, object] = {
        "now": T0, "device": world.device, "manufacturer": world.trust,
        "voucher": decode_voucher(world.voucher), "owner": world.domain.owner,
        "owner_spki_sha256": world.domain.owner_spki_sha256,
        "device_by_factory_key": world.device, "open_session_exists": False,
    }
    args.update(changes)
    return args


def test_hello_accepts_the_expected_device(world: Any, run: dict[str, Any]) -> None:
    decision = check_hello(run["hello"], **hello_args(world))
    assert decision.device == world.device
    assert decision.voucher == world.voucher
    assert decision.voucher_sha256 == sha256(world.voucher)
    assert decision.identity.serial == mv.SERIAL
    assert not decision.unsafe_admission
    assert pki.spki_sha256(decision.factory_public_key) == world.device.factory_spki_sha256


def test_hello_unknown_device(world: Any, run: dict[str, Any]) -> None:
    refused(r.UNKNOWN_DEVICE, check_hello, run["hello"],
            **hello_args(world, device=None, device_by_factory_key=None))


def test_hello_retired_device_comes_first(world: Any, run: dict[str, Any]) -> None:
    retired = dataclasses.replace(world.device, state=DeviceState.RETIRED,
                                  retired_reason=RetirementReason.COMPROMISED)
    revoked = dataclasses.replace(world.trust, revoked=True)
    refused(r.RETIRED, check_hello, run["hello"],
            **hello_args(world, device=retired, manufacturer=revoked, voucher=None))


@pytest.mark.parametrize("case", ["missing", "no_manufacturer", "other_owner", "other_owner_key",
                                  "forged", "other_manufacturer_name"])
def test_hello_voucher_invalid(world: Any, run: dict[str, Any], case: str) -> None:
    changes: dict[str, object] = {}
    if case == "missing":
        changes["voucher"] = None
    elif case == "no_manufacturer":
        changes["manufacturer"] = None
    elif case == "other_owner":
        changes["owner"] = "someone-else"
    elif case == "other_owner_key":
        changes["owner_spki_sha256"] = "0" * 64
    elif case == "forged":  # signed by another maker's voucher signer
        other = mv.make_maker("acme", 0x7000)
        changes["voucher"] = decode_voucher(mv.make_voucher(other, world.kit, world.domain))
    else:  # the anchors are right but registered under another name
        changes["manufacturer"] = dataclasses.replace(world.trust, name="globex")
    refused(r.VOUCHER_INVALID, check_hello, run["hello"], **hello_args(world, **changes))


def test_hello_voucher_for_another_serial(world: Any, run: dict[str, Any]) -> None:
    voucher = decode_voucher(mv.make_voucher(world.maker, world.kit, world.domain, serial="SN-9"))
    refused(r.VOUCHER_MISMATCH, check_hello, run["hello"], **hello_args(world, voucher=voucher))


def test_hello_device_record_names_another_key(world: Any, run: dict[str, Any]) -> None:
    device = dataclasses.replace(world.device, factory_spki_sha256="ab" * 32)
    refused(r.VOUCHER_MISMATCH, check_hello, run["hello"],
            **hello_args(world, device=device, device_by_factory_key=None))


def test_hello_serial_differs_from_the_certificate(world: Any, run: dict[str, Any]) -> None:
    hello = dataclasses.replace(run["hello"], serial="SN-0002")
    device = dataclasses.replace(world.device, serial="SN-0002")
    voucher = decode_voucher(mv.make_voucher(world.maker, world.kit, world.domain,
                                             serial="SN-0002"))
    refused(r.VOUCHER_MISMATCH, check_hello, hello,
            **hello_args(world, device=device, voucher=voucher))


def test_hello_chain_from_a_rogue_factory_ca(world: Any) -> None:
    rogue = mv.make_maker("acme", 0x7000)  # same name, other keys
    kit = mv.make_kit(rogue, mv.SERIAL, 0x7100)
    voucher = decode_voucher(mv.make_voucher(world.maker, kit, world.domain))  # genuine voucher
    device = dataclasses.replace(world.device, factory_spki_sha256=pki.spki_sha256(
        kit.factory_key.public_key))
    hello = m.HelloRequest(serial=mv.SERIAL, factory_chain=kit.chain, device_nonce=bytes(32))
    err = refused(r.CHAIN_INVALID, check_hello, hello,
                  **hello_args(world, device=device, voucher=voucher,
                               device_by_factory_key=device))
    assert err.detail == "chain_invalid"


def test_hello_revoked_factory_certificate(world: Any, run: dict[str, Any]) -> None:
    crl = pki.build_crl(world.maker.factory_ca_key, world.maker.factory_ca,
                        [pki.RevokedEntry(world.kit.factory_cert.serial_number,
                                          T0 - timedelta(hours=1))],
                        crl_number=1, this_update=T0 - timedelta(hours=1),
                        next_update=T0 + timedelta(days=1))
    trust = dataclasses.replace(world.trust, crls=(crl,))
    err = refused(r.CHAIN_INVALID, check_hello, run["hello"],
                  **hello_args(world, manufacturer=trust))
    assert err.detail == "certificate_revoked"


def test_hello_required_crl_missing(world: Any, run: dict[str, Any]) -> None:
    trust = dataclasses.replace(world.trust, require_crl=True)
    err = refused(r.CHAIN_INVALID, check_hello, run["hello"],
                  **hello_args(world, manufacturer=trust))
    assert err.detail == "crl_missing"


def test_hello_leaf_is_not_a_factory_certificate(world: Any) -> None:
    hello = m.HelloRequest(serial=mv.SERIAL, factory_chain=(mv.der(world.maker.factory_ca),),
                           device_nonce=bytes(32))
    refused(r.CHAIN_INVALID, check_hello, hello, **hello_args(world))


def test_hello_chain_entry_not_der_is_malformed(world: Any) -> None:
    hello = m.HelloRequest(serial=mv.SERIAL, factory_chain=(b"\x30\x03abc",),
                           device_nonce=bytes(32))
    with pytest.raises(InputError) as info:
        check_hello(hello, **hello_args(world))
    assert info.value.reason == r.MALFORMED_REQUEST


def test_hello_manufacturer_revoked(world: Any, run: dict[str, Any]) -> None:
    trust = dataclasses.replace(world.trust, revoked=True)
    refused(r.MANUFACTURER_REVOKED, check_hello, run["hello"],
            **hello_args(world, manufacturer=trust))


def test_hello_wrong_vendor_product(world: Any, run: dict[str, Any]) -> None:
    trust = dataclasses.replace(world.trust, allowed=frozenset({"acme:camera"}))
    refused(r.WRONG_VENDOR_PRODUCT, check_hello, run["hello"],
            **hello_args(world, manufacturer=trust))


@pytest.mark.parametrize("case", ["key_bound_elsewhere", "already_active", "quarantined",
                                  "live_session"])
def test_hello_clone_suspected(world: Any, run: dict[str, Any], case: str) -> None:
    changes: dict[str, object] = {}
    if case == "key_bound_elsewhere":
        changes["device_by_factory_key"] = dataclasses.replace(world.device, id="dev-" + "b" * 26)
    elif case == "already_active":
        changes["device"] = changes["device_by_factory_key"] = dataclasses.replace(
            world.device, state=DeviceState.ACTIVE)
    elif case == "quarantined":
        changes["device"] = changes["device_by_factory_key"] = dataclasses.replace(
            world.device, state=DeviceState.QUARANTINED)
    else:
        changes["open_session_exists"] = True
    refused(r.CLONE_SUSPECTED, check_hello, run["hello"], **hello_args(world, **changes))


def test_hello_unsafe_manufacturer_trust_admits_without_voucher(world: Any,
                                                                run: dict[str, Any]) -> None:
    trust = dataclasses.replace(world.trust, unsafe_manufacturer_trust=True)
    decision = check_hello(run["hello"], **hello_args(world, device=None, voucher=None,
                                                      manufacturer=trust,
                                                      device_by_factory_key=None))
    assert decision.unsafe_admission
    assert decision.device is None
    assert decision.voucher == b""
    assert decision.voucher_sha256 == sha256(b"")
    # ... but never for a factory key already bound to a device, nor for a lying serial
    refused(r.CLONE_SUSPECTED, check_hello, run["hello"],
            **hello_args(world, device=None, voucher=None, manufacturer=trust))
    lying = dataclasses.replace(run["hello"], serial="SN-0002")
    refused(r.VOUCHER_MISMATCH, check_hello, lying,
            **hello_args(world, device=None, voucher=None, manufacturer=trust,
                         device_by_factory_key=None))


def test_hello_needs_an_aware_time(world: Any, run: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        check_hello(run["hello"], **hello_args(world, now=T0.replace(tzinfo=None)))


# --- sessions --------------------------------------------------------------------------------

def test_new_session_stores_only_the_nonce_hash() -> None:
    session = new_session(mv.fixed_random(bytes(16), b"\x07" * 32), T0.replace(microsecond=5), 60)
    assert session.server_nonce == b"\x07" * 32
    assert session.nonce_sha256 == sha256(b"\x07" * 32).hex() == nonce_sha256(b"\x07" * 32)
    assert session.expires_at == T0 + timedelta(seconds=60)
    assert session.record_id == "00" * 16


@pytest.mark.parametrize("ttl", [0, 61, -1])
def test_new_session_ttl_is_bounded(ttl: int) -> None:
    with pytest.raises(ValueError, match="seconds"):
        new_session(mv.fixed_random(bytes(16), bytes(32)), T0, ttl)


def test_new_session_refuses_a_short_random_source() -> None:
    with pytest.raises(RuntimeError):
        new_session(lambda n: bytes(n - 1), T0)


# --- attest ----------------------------------------------------------------------------------

def attest_args(world: Any, run: dict[str, Any], **changes: object) -> dict[str, object]:
    args: dict[str, object] = {
        "session": run["record"], "now": T0 + timedelta(seconds=1), "server_id": mv.SERVER_ID,
        "factory_public_key": world.kit.factory_key.public_key,
        "voucher_sha256": sha256(world.voucher), "nonce_consumed_ok": True,
        "known_key": lambda _spki: False, "key_storage": run["hello"].key_storage,
    }
    args.update(changes)
    return args


def signed_attest(world: Any, run: dict[str, Any], *, csr: bytes | None = None,
                  signer: Any = None, **tamper: object) -> m.AttestRequest:
    """An attest request with the true fields, signed over a transcript with ``tamper`` applied."""
    csr = csr if csr is not None else run["csr"]
    fields: dict[str, Any] = {
        "session_id": mv.SESSION_ID, "server_nonce": mv.SERVER_NONCE,
        "device_nonce": mv.DEVICE_NONCE, "serial": mv.SERIAL, "server_id": mv.SERVER_ID,
        "csr_sha256": sha256(csr), "voucher_sha256": sha256(world.voucher),
        "key_storage": mv.KEY_STORAGE}
    fields.update(tamper)
    key = signer or world.kit.factory_key
    return m.AttestRequest(session_id=mv.SESSION_ID, serial=mv.SERIAL,
                           server_nonce=mv.SERVER_NONCE, csr=csr,
                           signature=key.sign(attest_transcript(**fields)))


def test_attest_accepts_and_returns_the_csr_key(world: Any, run: dict[str, Any]) -> None:
    decision = check_attest(signed_attest(world, run), **attest_args(world, run))
    assert pki.spki_sha256(decision.csr_public_key) == pki.spki_sha256(
        world.kit.operational_key.public_key)
    assert decision.csr_spki_sha256 == pki.spki_sha256(decision.csr_public_key)


def test_attest_unknown_session(world: Any, run: dict[str, Any]) -> None:
    refused(r.NONCE_UNKNOWN, check_attest, run["attest"], **attest_args(world, run, session=None))


def test_attest_foreign_nonce_session_of_another_serial(world: Any, run: dict[str, Any]) -> None:
    foreign = dataclasses.replace(run["record"], serial="SN-0002")
    refused(r.NONCE_UNKNOWN, check_attest, run["attest"],
            **attest_args(world, run, session=foreign))


def test_attest_nonce_of_another_session(world: Any, run: dict[str, Any]) -> None:
    other = dataclasses.replace(run["record"], nonce_sha256=nonce_sha256(b"\x01" * 32))
    refused(r.NONCE_UNKNOWN, check_attest, run["attest"], **attest_args(world, run, session=other))
    moved = dataclasses.replace(run["record"], id="ff" * 16)
    refused(r.NONCE_UNKNOWN, check_attest, run["attest"], **attest_args(world, run, session=moved))


def test_attest_expired_nonce(world: Any, run: dict[str, Any]) -> None:
    clock = FixedClock(T0)
    clock.advance(59)
    check_attest(run["attest"], **attest_args(world, run, now=clock.now()))
    clock.advance(1)
    refused(r.NONCE_EXPIRED, check_attest, run["attest"],
            **attest_args(world, run, now=clock.now()))
    marked = dataclasses.replace(run["record"], state=SessionState.EXPIRED)
    refused(r.NONCE_EXPIRED, check_attest, run["attest"], **attest_args(world, run, session=marked))


@pytest.mark.parametrize("state", [SessionState.ATTESTED, SessionState.CONFIRMED,
                                   SessionState.REFUSED])
def test_attest_session_already_used(world: Any, run: dict[str, Any], state: SessionState) -> None:
    used = dataclasses.replace(run["record"], state=state)
    refused(r.NONCE_REPLAYED, check_attest, run["attest"], **attest_args(world, run, session=used))


def test_attest_lost_the_consume_race(world: Any, run: dict[str, Any]) -> None:
    refused(r.NONCE_REPLAYED, check_attest, run["attest"],
            **attest_args(world, run, nonce_consumed_ok=False))


class SessionStore:
    """A simulator of the service's session table with its one conditional update."""

    def __init__(self, record: OnboardingSession) -> None:
        self.rows = {record.id: record}

    def consume(self, session_id: str, nonce_hash: str, now: Any) -> bool:
        row = self.rows.get(session_id)
        if row is None or row.state is not SessionState.OPEN or row.nonce_sha256 != nonce_hash \
                or now >= row.expires_at:
            return False
        self.rows[session_id] = dataclasses.replace(row, state=SessionState.ATTESTED)
        return True


def test_attest_replay_with_the_same_nonce(world: Any, run: dict[str, Any]) -> None:
    store = SessionStore(run["record"])
    outcomes = []
    for _ in range(2):
        req = m.AttestRequest.from_wire(run["attest"].to_wire())
        now = T0 + timedelta(seconds=1)
        session = store.rows.get(req.session_id.hex())
        try:
            precheck_attest(req, session=session, now=now)
            ok = store.consume(req.session_id.hex(), nonce_sha256(req.server_nonce), now)
            check_attest(req, **attest_args(world, run, session=session, nonce_consumed_ok=ok))
            outcomes.append("accepted")
        except TrustError as exc:
            outcomes.append(exc.reason)
    assert outcomes == ["accepted", r.NONCE_REPLAYED]


@pytest.mark.parametrize("field", ["session_id", "server_nonce", "device_nonce", "serial",
                                   "server_id", "csr_sha256", "voucher_sha256", "key_storage"])
def test_attest_transcript_tampering(world: Any, run: dict[str, Any], field: str) -> None:
    original = {"session_id": mv.SESSION_ID, "server_nonce": mv.SERVER_NONCE,
                "device_nonce": mv.DEVICE_NONCE, "serial": mv.SERIAL,
                "server_id": mv.SERVER_ID, "csr_sha256": sha256(run["csr"]),
                "voucher_sha256": sha256(world.voucher), "key_storage": mv.KEY_STORAGE}[field]
    if isinstance(original, bytes):
        tampered: object = bytes([original[0] ^ 1]) + original[1:]
    else:
        tampered = original + "x"
    req = signed_attest(world, run, **{field: tampered})
    refused(r.SIGNATURE_INVALID, check_attest, req, **attest_args(world, run))


def test_attest_context_label_separates_signatures(world: Any, run: dict[str, Any]) -> None:
    body = cbor2.loads(attest_transcript(
        session_id=mv.SESSION_ID, server_nonce=mv.SERVER_NONCE, device_nonce=mv.DEVICE_NONCE,
        serial=mv.SERIAL, server_id=mv.SERVER_ID, csr_sha256=sha256(run["csr"]),
        voucher_sha256=sha256(world.voucher), key_storage=mv.KEY_STORAGE))
    body[0] = "iotrust-onboarding-attest-v2"
    req = dataclasses.replace(run["attest"], signature=world.kit.factory_key.sign(
        cbor2.dumps(body, canonical=True)))
    refused(r.SIGNATURE_INVALID, check_attest, req, **attest_args(world, run))


def test_attest_signed_by_another_key(world: Any, run: dict[str, Any]) -> None:
    req = signed_attest(world, run, signer=world.kit.operational_key)
    refused(r.SIGNATURE_INVALID, check_attest, req, **attest_args(world, run))


def test_attest_signature_not_der(world: Any, run: dict[str, Any]) -> None:
    req = dataclasses.replace(run["attest"], signature=b"\x00" * 64)
    refused(r.SIGNATURE_INVALID, check_attest, req, **attest_args(world, run))


def test_attest_csr_garbage(world: Any, run: dict[str, Any]) -> None:
    csr = b"\x30\x03\x02\x01\x00"
    err = refused(r.CSR_INVALID, check_attest, signed_attest(world, run, csr=csr),
                  **attest_args(world, run))
    assert err.detail == "csr_invalid"


def test_attest_csr_weak_key(world: Any, run: dict[str, Any]) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])).sign(
        p384, hashes.SHA256()).public_bytes(Encoding.DER)
    err = refused(r.CSR_INVALID, check_attest, signed_attest(world, run, csr=csr),
                  **attest_args(world, run))
    assert err.detail == "weak_key"


def test_attest_csr_for_the_factory_key(world: Any, run: dict[str, Any]) -> None:
    csr = world.kit.factory_key.csr()
    refused(r.CSR_INVALID, check_attest, signed_attest(world, run, csr=csr),
            **attest_args(world, run))


def test_attest_csr_key_seen_before(world: Any, run: dict[str, Any]) -> None:
    seen = {pki.spki_sha256(world.kit.operational_key.public_key)}
    refused(r.CLONE_SUSPECTED, check_attest, run["attest"],
            **attest_args(world, run, known_key=seen.__contains__))


# --- confirm ---------------------------------------------------------------------------------

def confirm_args(run: dict[str, Any], **changes: object) -> dict[str, object]:
    args: dict[str, object] = {
        "session": dataclasses.replace(run["record"], state=SessionState.ATTESTED),
        "now": T0 + timedelta(seconds=3), "confirm_by": mv.CONFIRM_BY,
        "certificate": run["certificate"], "confirmed_ok": True}
    args.update(changes)
    return args


def test_confirm_accepts(run: dict[str, Any]) -> None:
    decision = check_confirm(run["confirm"], **confirm_args(run))
    assert decision.device_id == run["onboarded"].device_id
    assert decision.certificate_sha256 == sha256(run["certificate"].public_bytes(Encoding.DER))


def test_confirm_refusals(world: Any, run: dict[str, Any]) -> None:
    attested = dataclasses.replace(run["record"], state=SessionState.ATTESTED)
    req = run["confirm"]
    refused(r.NONCE_UNKNOWN, check_confirm, req, **confirm_args(run, session=None))
    refused(r.NONCE_UNKNOWN, check_confirm, dataclasses.replace(req, device_id="dev-" + "c" * 26),
            **confirm_args(run))
    refused(r.NONCE_UNKNOWN, check_confirm,
            dataclasses.replace(req, server_nonce=b"\x02" * 32), **confirm_args(run))
    for state in (SessionState.OPEN, SessionState.REFUSED):
        refused(r.NONCE_UNKNOWN, check_confirm, req,
                **confirm_args(run, session=dataclasses.replace(attested, state=state)))
    refused(r.NONCE_REPLAYED, check_confirm, req, **confirm_args(
        run, session=dataclasses.replace(attested, state=SessionState.CONFIRMED)))
    refused(r.NONCE_EXPIRED, check_confirm, req, **confirm_args(
        run, now=mv.CONFIRM_BY + timedelta(seconds=1)))
    refused(r.NONCE_EXPIRED, check_confirm, req, **confirm_args(
        run, session=dataclasses.replace(attested, state=SessionState.EXPIRED)))
    refused(r.NONCE_REPLAYED, check_confirm, req, **confirm_args(run, confirmed_ok=False))


def test_confirm_signed_by_the_factory_key_is_refused(world: Any, run: dict[str, Any]) -> None:
    cert_sha = sha256(run["certificate"].public_bytes(Encoding.DER))
    transcript = confirm_transcript(session_id=mv.SESSION_ID, server_nonce=mv.SERVER_NONCE,
                                    certificate_sha256=cert_sha)
    req = dataclasses.replace(run["confirm"], signature=world.kit.factory_key.sign(transcript))
    refused(r.SIGNATURE_INVALID, check_confirm, req, **confirm_args(run))


def test_confirm_cannot_reuse_the_attest_signature(run: dict[str, Any]) -> None:
    req = dataclasses.replace(run["confirm"], signature=run["attest"].signature)
    refused(r.SIGNATURE_INVALID, check_confirm, req, **confirm_args(run))


def test_confirm_bound_to_the_issued_certificate(world: Any, run: dict[str, Any]) -> None:
    other = mv.issue(world, world.kit.operational_key.public_key)  # same key, same fields...
    other = pki.issue_device_certificate(  # ... but a different certificate
        world.domain.issuing_key, world.domain.issuing, device_id=world.device.id,
        public_key=world.kit.operational_key.public_key, serial_number=0x5002,
        not_before=T0, lifetime=timedelta(days=30))
    refused(r.SIGNATURE_INVALID, check_confirm, run["confirm"],
            **confirm_args(run, certificate=other))


# --- end to end and the device side ----------------------------------------------------------

def test_end_to_end_in_pure_code(world: Any, run: dict[str, Any]) -> None:
    onboarded = run["onboarded"]
    assert onboarded.device_id == world.device.id
    assert onboarded.broker == mv.BROKER
    assert onboarded.policy == mv.POLICY
    assert run["device_session"].owner_spki_sha256 == world.domain.owner_spki_sha256
    assert run["confirm_decision"].device_id == world.device.id


def test_device_refuses_an_empty_voucher(world: Any, run: dict[str, Any]) -> None:
    resp = dataclasses.replace(run["hello_response"], voucher=b"")
    refused(r.VOUCHER_INVALID, accept_hello_response, resp, hello=run["hello"],
            manufacturer_anchors=(world.maker.root,), now=T0)


def test_device_refuses_a_voucher_from_another_manufacturer_root(world: Any,
                                                                 run: dict[str, Any]) -> None:
    other = mv.make_maker("acme", 0x7000)
    resp = dataclasses.replace(run["hello_response"],
                               voucher=mv.make_voucher(other, world.kit, world.domain))
    refused(r.VOUCHER_INVALID, accept_hello_response, resp, hello=run["hello"],
            manufacturer_anchors=(world.maker.root,), now=T0)
    refused(r.VOUCHER_INVALID, accept_hello_response, dataclasses.replace(
        run["hello_response"], voucher=b"{}"), hello=run["hello"],
        manufacturer_anchors=(world.maker.root,), now=T0)


def test_device_refuses_a_voucher_for_another_device(world: Any, run: dict[str, Any]) -> None:
    other_kit = mv.make_kit(world.maker, "SN-0002", 0x2100)
    resp = dataclasses.replace(run["hello_response"],
                               voucher=mv.make_voucher(world.maker, other_kit, world.domain))
    refused(r.VOUCHER_MISMATCH, accept_hello_response, resp, hello=run["hello"],
            manufacturer_anchors=(world.maker.root,), now=T0)
    # the same key but a voucher naming another serial
    resp = dataclasses.replace(run["hello_response"], voucher=mv.make_voucher(
        world.maker, world.kit, world.domain, serial="SN-0003"))
    refused(r.VOUCHER_MISMATCH, accept_hello_response, resp, hello=run["hello"],
            manufacturer_anchors=(world.maker.root,), now=T0)


def test_rogue_server_replaying_the_voucher_cannot_capture_the_device(world: Any,
                                                                       run: dict[str, Any]) -> None:
    rogue = mv.make_domain("rogue", 0x8000)
    cert = mv.issue(world, world.kit.operational_key.public_key, rogue)
    resp = mv.attest_response(world, cert, rogue)
    refused(r.OWNER_MISMATCH, accept_attest_response, resp, session=run["device_session"],
            csr_public_key=world.kit.operational_key.public_key, now=T0)


def test_rogue_server_appending_the_pinned_root_to_its_own_chain(world: Any,
                                                                 run: dict[str, Any]) -> None:
    rogue = mv.make_domain("rogue", 0x8000)
    cert = mv.issue(world, world.kit.operational_key.public_key, rogue)
    resp = dataclasses.replace(mv.attest_response(world, cert, rogue),
                               ca_chain=(mv.der(rogue.issuing), mv.der(world.domain.root)))
    refused(r.CHAIN_INVALID, accept_attest_response, resp, session=run["device_session"],
            csr_public_key=world.kit.operational_key.public_key, now=T0)


def test_device_refuses_a_certificate_for_another_key_or_device(world: Any,
                                                                run: dict[str, Any]) -> None:
    other_key = mv.VectorKey(0x9999)
    resp = mv.attest_response(world, mv.issue(world, other_key.public_key))
    refused(r.CERTIFICATE_MISMATCH, accept_attest_response, resp, session=run["device_session"],
            csr_public_key=world.kit.operational_key.public_key, now=T0)
    resp = dataclasses.replace(run["attest_response"], device_id="dev-" + "d" * 26)
    refused(r.CERTIFICATE_MISMATCH, accept_attest_response, resp, session=run["device_session"],
            csr_public_key=world.kit.operational_key.public_key, now=T0)


def test_device_refuses_a_non_der_certificate(world: Any, run: dict[str, Any]) -> None:
    resp = dataclasses.replace(run["attest_response"], certificate=b"\x30\x00")
    with pytest.raises(InputError) as info:
        accept_attest_response(resp, session=run["device_session"],
                               csr_public_key=world.kit.operational_key.public_key, now=T0)
    assert info.value.reason == r.MALFORMED_REQUEST


def test_device_attest_and_confirm_builders(world: Any, run: dict[str, Any]) -> None:
    req = build_attest(run["device_session"], factory_signer=world.kit.factory_key,
                       csr_der=run["csr"])
    check_attest(req, **attest_args(world, run))
    with pytest.raises(ValueError, match="certified key"):
        build_confirm(run["device_session"], run["onboarded"],
                      operational_signer=world.kit.factory_key)


# --- reasons ---------------------------------------------------------------------------------

def test_every_reason_constant_is_documented_in_the_table() -> None:
    constants = {v for k, v in vars(r).items() if k.isupper() and isinstance(v, str)}
    assert constants == set(r.REASONS)
    table = r.render_reason_table()
    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert table in doc, "docs/protocol.md reason table is out of date: paste render_reason_table()"
    assert r.REASONS[r.RATE_LIMITED].http_status == 429
    assert r.REASONS[r.MALFORMED_REQUEST].http_status == 422


def test_refuse_only_builds_documented_refusals() -> None:
    assert r.refuse(r.RETIRED, "x").reason == r.RETIRED
    with pytest.raises(ValueError, match="refusal"):
        r.refuse("made_up", "x")
    with pytest.raises(ValueError, match="refusal"):
        r.refuse(r.MALFORMED_REQUEST, "x")


def test_manufacturer_trust_from_record(world: Any) -> None:
    from iotrust.core.records import Manufacturer  # noqa: PLC0415

    record = Manufacturer(name="acme", display_name="Acme",
                          anchors_pem=world.maker.root.public_bytes(Encoding.PEM).decode(),
                          allowed=("acme:sensor1",), created_at=T0)
    trust = ManufacturerTrust.from_record(record)
    assert trust.anchors == (world.maker.root,)
    assert trust.allowed == frozenset({"acme:sensor1"})
    assert not trust.revoked
    assert not trust.unsafe_manufacturer_trust
