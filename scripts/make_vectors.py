"""Regenerate the onboarding test vectors in tests/vectors/onboarding/ (deterministically).

Usage: .venv/bin/python scripts/make_vectors.py [--check]

Every key is derived from a fixed scalar, every nonce and id is fixed, the time is fixed, and
every ECDSA signature is made with RFC 6979 deterministic nonces, so two runs write identical
bytes (``--check`` compares instead of writing and exits 1 on any difference). Real clients may
sign with randomized ECDSA: verifiers check signatures, they never compare them.

The private scalars in the vectors are test-only keys, published on purpose.

The world builder (:func:`build_world`) and the pure protocol run (:func:`run_onboarding`) are also
imported by tests/unit/core/test_onboarding.py and test_vectors.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from iotrust.core import pki
from iotrust.core.ids import new_device_id
from iotrust.core.lifecycle import Device, DeviceState
from iotrust.core.onboarding import (
    ManufacturerTrust,
    accept_attest_response,
    accept_hello_response,
    attest_transcript,
    build_attest,
    build_confirm,
    build_hello,
    check_attest,
    check_confirm,
    check_hello,
    confirm_transcript,
    hello_response,
    new_session,
    session_record_id,
)
from iotrust.core.onboarding import messages as m
from iotrust.core.onboarding.transcript import sha256
from iotrust.core.records import OnboardingSession, SessionState
from iotrust.core.vouchers import VoucherClaims, decode_voucher, sign_voucher

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "vectors" / "onboarding"
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
YEAR = timedelta(days=365)

SERIAL = "SN-0001"
VENDOR, PRODUCT = "acme", "sensor1"
SERVER_ID = "iotrust.example"
OWNER = "example-owner"
KEY_STORAGE = "secure_element"  # the happy path's device states where its keys live
DEVICE_NONCE = bytes(range(32))
SESSION_ID = bytes(range(0x40, 0x50))
SERVER_NONCE = bytes(range(0x80, 0xA0))
DEVICE_ID_BYTES = bytes([0x11]) * 16
CONFIRM_BY = T0 + timedelta(minutes=5)
BROKER = m.Broker(host="broker.example", port=8883)
UPDATE_ROOT = b'{"signed":{"_type":"root","version":1}}'
POLICY: tuple[dict[str, object], ...] = (
    {"action": "publish", "topic": "devices/{device_id}/telemetry"},
    {"action": "subscribe", "topic": "devices/{device_id}/commands/#"},
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


class VectorKey:
    """A test-only P-256 key from a fixed scalar; signs with RFC 6979 (deterministic ECDSA).

    It deliberately does not expose ``private_key``, so pki signs through :meth:`sign` (the
    external-signer path), which keeps certificates deterministic too.
    """

    def __init__(self, scalar: int) -> None:
        self.scalar = scalar
        self._key = ec.derive_private_key(scalar, ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))

    def csr(self, common_name: str = "ignored-by-the-server") -> bytes:
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        return builder.sign(self._key, hashes.SHA256(), ecdsa_deterministic=True).public_bytes(
            Encoding.DER)


@dataclass(frozen=True)
class Maker:
    """A manufacturer's supply chain: root, factory CA, voucher signer."""

    name: str
    root_key: VectorKey
    root: x509.Certificate
    factory_ca_key: VectorKey
    factory_ca: x509.Certificate
    voucher_key: VectorKey
    voucher_signer: x509.Certificate


def make_maker(name: str, base: int) -> Maker:
    root_key, ca_key, voucher_key = VectorKey(base + 1), VectorKey(base + 2), VectorKey(base + 3)
    root = pki.build_root_ca(root_key, f"{name} factory root", name, T0 - YEAR, 20 * YEAR,
                             serial_number=base + 1)
    factory_ca = pki.build_issuing_ca(root_key, root, ca_key.public_key, f"{name} factory CA",
                                      name, T0 - YEAR, 10 * YEAR, serial_number=base + 2)
    signer = pki.issue_voucher_signer_certificate(root_key, root, voucher_key.public_key,
                                                  f"{name} vouchers", name, T0 - YEAR,
                                                  10 * YEAR, serial_number=base + 3)
    return Maker(name, root_key, root, ca_key, factory_ca, voucher_key, signer)


@dataclass(frozen=True)
class Domain:
    """The operator's trust domain: operational root and issuing CA."""

    owner: str
    root_key: VectorKey
    root: x509.Certificate
    issuing_key: VectorKey
    issuing: x509.Certificate

    @property
    def owner_spki_sha256(self) -> str:
        return pki.spki_sha256(self.root.public_key())


def make_domain(owner: str, base: int) -> Domain:
    root_key, issuing_key = VectorKey(base + 1), VectorKey(base + 2)
    root = pki.build_root_ca(root_key, f"{owner} root", owner, T0 - YEAR, 20 * YEAR,
                             serial_number=base + 1)
    issuing = pki.build_issuing_ca(root_key, root, issuing_key.public_key, f"{owner} issuing",
                                   owner, T0 - YEAR, 5 * YEAR, serial_number=base + 2)
    return Domain(owner, root_key, root, issuing_key, issuing)


@dataclass(frozen=True)
class Kit:
    """What one device carries: factory key and chain, and the key it will make for operation."""

    serial: str
    vendor_id: str
    product_id: str
    factory_key: VectorKey
    factory_cert: x509.Certificate
    chain: tuple[bytes, ...]
    operational_key: VectorKey


def make_kit(maker: Maker, serial: str, base: int, *, vendor_id: str = VENDOR,
             product_id: str = PRODUCT) -> Kit:
    factory_key, op_key = VectorKey(base + 1), VectorKey(base + 2)
    cert = pki.issue_factory_certificate(
        maker.factory_ca_key, maker.factory_ca, serial=serial, manufacturer=maker.name,
        vendor_id=vendor_id, product_id=product_id, public_key=factory_key.public_key,
        serial_number=base + 1, not_before=T0 - YEAR, lifetime=8 * YEAR)
    return Kit(serial, vendor_id, product_id, factory_key, cert, (der(cert), der(maker.factory_ca)),
               op_key)


def make_voucher(maker: Maker, kit: Kit, domain: Domain, *, serial: str | None = None) -> bytes:
    claims = VoucherClaims(
        manufacturer=maker.name, serial=serial or kit.serial, vendor_id=kit.vendor_id,
        product_id=kit.product_id,
        factory_spki_sha256=pki.spki_sha256(kit.factory_key.public_key), owner=domain.owner,
        owner_spki_sha256=domain.owner_spki_sha256, created_at=T0 - timedelta(days=1))
    return sign_voucher(claims, maker.voucher_key, der(maker.voucher_signer))


@dataclass(frozen=True)
class World:
    """Everything both sides know, fixed."""

    maker: Maker
    domain: Domain
    kit: Kit
    voucher: bytes
    device: Device

    @property
    def trust(self) -> ManufacturerTrust:
        return ManufacturerTrust(name=self.maker.name, anchors=(self.maker.root,),
                                 allowed=frozenset({f"{VENDOR}:{PRODUCT}"}))


def make_device(maker: Maker, kit: Kit, domain: Domain, device_id_bytes: bytes) -> Device:
    return Device(id=new_device_id(device_id_bytes), manufacturer=maker.name, serial=kit.serial,
                  factory_spki_sha256=pki.spki_sha256(kit.factory_key.public_key),
                  vendor_id=kit.vendor_id, product_id=kit.product_id, owner=domain.owner,
                  state=DeviceState.EXPECTED, created_at=T0 - timedelta(days=1),
                  updated_at=T0 - timedelta(days=1))


def build_world() -> World:
    maker = make_maker("acme", 0x1000)
    domain = make_domain(OWNER, 0x3000)
    kit = make_kit(maker, SERIAL, 0x2000)
    device = make_device(maker, kit, domain, DEVICE_ID_BYTES)
    return World(maker, domain, kit, make_voucher(maker, kit, domain), device)


def fixed_random(*chunks: bytes):  # noqa: ANN201 - a Callable[[int], bytes]
    queue = list(chunks)

    def draw(n: int) -> bytes:
        value = queue.pop(0)
        if len(value) != n:
            raise AssertionError(f"fixed random: asked for {n} bytes, have {len(value)}")
        return value
    return draw


def session_record(world: World, req: m.HelloRequest, session_id: bytes, *, nonce_sha256: str,
                   expires_at: datetime, state: SessionState = SessionState.OPEN,
                   ) -> OnboardingSession:
    return OnboardingSession(id=session_record_id(session_id), device_id=world.device.id,
                             serial=req.serial, nonce_sha256=nonce_sha256,
                             device_nonce=req.device_nonce.hex(), expires_at=expires_at,
                             state=state, source="vectors", created_at=T0)


def issue(world: World, public_key: ec.EllipticCurvePublicKey,
          domain: Domain | None = None) -> x509.Certificate:
    d = domain or world.domain
    return pki.issue_device_certificate(d.issuing_key, d.issuing, device_id=world.device.id,
                                        public_key=public_key, serial_number=0x5001,
                                        not_before=T0, lifetime=timedelta(days=30))


def attest_response(world: World, cert: x509.Certificate,
                    domain: Domain | None = None) -> m.AttestResponse:
    d = domain or world.domain
    return m.AttestResponse(device_id=world.device.id, certificate=der(cert),
                            ca_chain=(der(d.issuing), der(d.root)), broker=BROKER,
                            update_root=UPDATE_ROOT, policy=POLICY, confirm_by=CONFIRM_BY)


def run_onboarding(world: World, *, key_storage: str | None = KEY_STORAGE) -> dict[str, object]:
    """Both sides, in pure code, from hello to confirm; returns every intermediate value.

    ``key_storage`` is the hello's key-storage claim (``None``: a hello without the field).
    """
    out: dict[str, object] = {}
    hello = build_hello(serial=world.kit.serial, factory_chain=world.kit.chain,
                        random=fixed_random(DEVICE_NONCE), key_storage=key_storage)
    hello = m.HelloRequest.from_wire(hello.to_wire())
    decision = check_hello(hello, now=T0, device=world.device, manufacturer=world.trust,
                           voucher=decode_voucher(world.voucher), owner=world.domain.owner,
                           owner_spki_sha256=world.domain.owner_spki_sha256,
                           device_by_factory_key=world.device, open_session_exists=False)
    session = new_session(fixed_random(SESSION_ID, SERVER_NONCE), T0, 60)
    hello_resp = m.HelloResponse.from_wire(
        hello_response(decision, session, server_id=SERVER_ID).to_wire())
    dsession = accept_hello_response(hello_resp, hello=hello,
                                     manufacturer_anchors=(world.maker.root,), now=T0)
    csr = world.kit.operational_key.csr()
    attest = m.AttestRequest.from_wire(
        build_attest(dsession, factory_signer=world.kit.factory_key, csr_der=csr).to_wire())
    record = session_record(world, hello, session.session_id, nonce_sha256=session.nonce_sha256,
                            expires_at=session.expires_at)
    adecision = check_attest(attest, session=record, now=T0 + timedelta(seconds=1),
                             server_id=SERVER_ID, factory_public_key=decision.factory_public_key,
                             voucher_sha256=decision.voucher_sha256, nonce_consumed_ok=True,
                             known_key=lambda _spki: False, key_storage=hello.key_storage)
    cert = issue(world, adecision.csr_public_key)
    attest_resp = m.AttestResponse.from_wire(attest_response(world, cert).to_wire())
    onboarded = accept_attest_response(attest_resp, session=dsession,
                                       csr_public_key=world.kit.operational_key.public_key,
                                       now=T0 + timedelta(seconds=2))
    confirm = m.ConfirmRequest.from_wire(build_confirm(
        dsession, onboarded, operational_signer=world.kit.operational_key).to_wire())
    attested = dataclasses.replace(record, state=SessionState.ATTESTED)
    cdecision = check_confirm(confirm, session=attested, now=T0 + timedelta(seconds=3),
                              confirm_by=CONFIRM_BY, certificate=cert, confirmed_ok=True)
    out.update(hello=hello, hello_response=hello_resp, attest=attest, attest_response=attest_resp,
               confirm=confirm, hello_decision=decision, session=session, device_session=dsession,
               attest_decision=adecision, certificate=cert, onboarded=onboarded,
               confirm_decision=cdecision, csr=csr, record=record)
    return out


# --- vector files ----------------------------------------------------------------------------

def _happy(world: World) -> dict[str, object]:
    run = run_onboarding(world)
    attest = run["attest"]
    confirm = run["confirm"]
    cert = run["certificate"]
    assert isinstance(attest, m.AttestRequest)
    assert isinstance(confirm, m.ConfirmRequest)
    assert isinstance(cert, x509.Certificate)
    csr = run["csr"]
    assert isinstance(csr, bytes)
    at = attest_transcript(session_id=SESSION_ID, server_nonce=SERVER_NONCE,
                           device_nonce=DEVICE_NONCE, serial=SERIAL, server_id=SERVER_ID,
                           csr_sha256=sha256(csr), voucher_sha256=sha256(world.voucher),
                           key_storage=KEY_STORAGE)
    ct = confirm_transcript(session_id=SESSION_ID, server_nonce=SERVER_NONCE,
                            certificate_sha256=sha256(der(cert)))
    wire = {name: getattr(run[name], "to_wire")().decode("utf-8")  # noqa: B009
            for name in ("hello", "hello_response", "attest", "attest_response", "confirm")}
    return {
        "description": "One complete onboarding, hello to confirm, as both sides see it.",
        "generator": "scripts/make_vectors.py",
        "time": "2026-01-01T12:00:00Z",
        "test_only_private_scalars_hex": {
            "factory_key": f"{world.kit.factory_key.scalar:064x}",
            "operational_key": f"{world.kit.operational_key.scalar:064x}",
        },
        "inputs": {
            "serial": SERIAL,
            "server_id": SERVER_ID,
            "device_id": world.device.id,
            "device_nonce_hex": DEVICE_NONCE.hex(),
            "key_storage": KEY_STORAGE,
            "session_id_hex": SESSION_ID.hex(),
            "server_nonce_hex": SERVER_NONCE.hex(),
            "manufacturer_root_der_b64url": b64(der(world.maker.root)),
            "factory_chain_der_b64url": [b64(c) for c in world.kit.chain],
            "voucher_b64url": b64(world.voucher),
            "owner_root_der_b64url": b64(der(world.domain.root)),
            "owner_spki_sha256": world.domain.owner_spki_sha256,
            "csr_der_b64url": b64(csr),
            "certificate_der_b64url": b64(der(cert)),
        },
        "messages": wire,
        "attest_transcript": {
            "csr_sha256_hex": sha256(csr).hex(),
            "voucher_sha256_hex": sha256(world.voucher).hex(),
            "cbor_hex": at.hex(),
            "sha256_hex": sha256(at).hex(),
            "signature_der_b64url": b64(attest.signature),
        },
        "confirm_transcript": {
            "certificate_sha256_hex": sha256(der(cert)).hex(),
            "cbor_hex": ct.hex(),
            "sha256_hex": sha256(ct).hex(),
            "signature_der_b64url": b64(confirm.signature),
        },
        "server_nonce_sha256_hex": sha256(SERVER_NONCE).hex(),
    }


def _transcripts() -> dict[str, object]:
    cases = []
    for name, serial, server_id, storage in (
        ("short strings", "A", "s", None),
        ("23-byte serial (last one-byte head)", "S" * 23, SERVER_ID, None),
        ("24-byte serial (two-byte head 0x78 0x18)", "S" * 24, SERVER_ID, None),
        ("64-byte serial and server id", "Z" * 64, "x" * 64, None),
        ("key_storage file (9 elements)", "S" * 24, SERVER_ID, "file"),
        ("key_storage pkcs11 (9 elements)", SERIAL, SERVER_ID, "pkcs11"),
        ("key_storage secure_element (9 elements)", SERIAL, SERVER_ID, "secure_element"),
    ):
        t = attest_transcript(session_id=bytes(16), server_nonce=bytes([0xFF]) * 32,
                              device_nonce=bytes([0x01]) * 32, serial=serial,
                              server_id=server_id, csr_sha256=sha256(b"csr"),
                              voucher_sha256=sha256(b""), key_storage=storage)
        case: dict[str, object] = {
            "kind": "attest", "name": name, "session_id_hex": bytes(16).hex(),
            "server_nonce_hex": (bytes([0xFF]) * 32).hex(),
            "device_nonce_hex": (bytes([0x01]) * 32).hex(), "serial": serial,
            "server_id": server_id, "csr_sha256_hex": sha256(b"csr").hex(),
            "voucher_sha256_hex": sha256(b"").hex(), "cbor_hex": t.hex()}
        if storage is not None:
            case["key_storage"] = storage
        cases.append(case)
    t = confirm_transcript(session_id=SESSION_ID, server_nonce=SERVER_NONCE,
                           certificate_sha256=sha256(b"certificate"))
    cases.append({"kind": "confirm", "name": "fixed values", "session_id_hex": SESSION_ID.hex(),
                  "server_nonce_hex": SERVER_NONCE.hex(),
                  "certificate_sha256_hex": sha256(b"certificate").hex(), "cbor_hex": t.hex()})
    return {"description": "Transcript encodings (deterministic CBOR, RFC 8949 §4.2).",
            "generator": "scripts/make_vectors.py", "cases": cases}


def _mutate(wire: bytes, **changes: object) -> bytes:
    obj = json.loads(wire)
    for key, value in changes.items():
        if value is _DROP:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


_DROP = object()


def _malformed(world: World) -> dict[str, object]:
    run = run_onboarding(world)
    hello = run["hello"].to_wire()  # type: ignore[attr-defined]
    attest = run["attest"].to_wire()  # type: ignore[attr-defined]
    confirm = run["confirm"].to_wire()  # type: ignore[attr-defined]
    resp = run["attest_response"].to_wire()  # type: ignore[attr-defined]
    hresp = run["hello_response"].to_wire()  # type: ignore[attr-defined]
    chain = [b64(c) for c in world.kit.chain]
    cases: list[tuple[str, str, bytes]] = [
        ("hello_request", "not JSON", b"hello"),
        ("hello_request", "JSON array", b"[]"),
        ("hello_request", "empty object", b"{}"),
        ("hello_request", "missing device_nonce", _mutate(hello, device_nonce=_DROP)),
        ("hello_request", "unexpected field", _mutate(hello, extra=1)),
        ("hello_request", "version 2", _mutate(hello, version=2)),
        ("hello_request", "version true", _mutate(hello, version=True)),
        ("hello_request", "device_nonce 31 bytes", _mutate(hello, device_nonce=b64(bytes(31)))),
        ("hello_request", "device_nonce padded", _mutate(hello, device_nonce=b64(bytes(32)) + "=")),
        ("hello_request", "device_nonce standard base64 alphabet",
         _mutate(hello, device_nonce=base64.b64encode(bytes([0xFB]) * 32).decode().rstrip("="))),
        ("hello_request", "device_nonce non-canonical trailing bits",
         _mutate(hello, device_nonce=b64(bytes(32))[:-1] + "B")),
        ("hello_request", "empty factory_chain", _mutate(hello, factory_chain=[])),
        ("hello_request", "five certificates", _mutate(hello, factory_chain=chain * 2 + chain[:1])),
        ("hello_request", "certificate over 8 KiB",
         _mutate(hello, factory_chain=[b64(bytes(8193))])),
        ("hello_request", "certificate entry not base64url",
         _mutate(hello, factory_chain=["%%%"])),
        ("hello_request", "serial with a space", _mutate(hello, serial="SN 0001")),
        ("hello_request", "serial not a string", _mutate(hello, serial=1)),
        ("hello_request", "float number", hello.replace(b'"version":1', b'"version":1.0')),
        ("hello_request", "duplicate key", hello[:-1] + b',"version":1}'),
        ("hello_request", "over 64 KiB", b'{"pad":"' + b"a" * 65536 + b'"}'),
        ("hello_request", "key_storage unknown (absent means unknown)",
         _mutate(hello, key_storage="unknown")),
        ("hello_request", "key_storage outside the vocabulary",
         _mutate(hello, key_storage="trustzone")),
        ("hello_request", "key_storage upper case", _mutate(hello, key_storage="PKCS11")),
        ("hello_request", "key_storage empty", _mutate(hello, key_storage="")),
        ("hello_request", "key_storage null", _mutate(hello, key_storage=None)),
        ("hello_request", "key_storage not a string", _mutate(hello, key_storage=["file"])),
        ("hello_request", "key_storage over 16 characters",
         _mutate(hello, key_storage="secure_element_x1")),
        ("hello_response", "expires_at with offset",
         _mutate(hresp, expires_at="2026-01-01T12:01:00+00:00")),
        ("hello_response", "session_id 15 bytes", _mutate(hresp, session_id=b64(bytes(15)))),
        ("hello_response", "server_id with a slash", _mutate(hresp, server_id="a/b")),
        ("attest_request", "signature over 72 bytes", _mutate(attest, signature=b64(bytes(73)))),
        ("attest_request", "csr empty", _mutate(attest, csr="")),
        ("attest_request", "missing server_nonce", _mutate(attest, server_nonce=_DROP)),
        ("attest_response", "broker port 0",
         _mutate(resp, broker={"host": "broker.example", "port": 0})),
        ("attest_response", "broker extra field",
         _mutate(resp, broker={"host": "b", "port": 1, "tls": True})),
        ("attest_response", "policy rule not an object", _mutate(resp, policy=["allow all"])),
        ("attest_response", "device_id not a device id", _mutate(resp, device_id="admin@iotrust")),
        ("attest_response", "empty ca_chain", _mutate(resp, ca_chain=[])),
        ("confirm_request", "device_id uppercase",
         _mutate(confirm, device_id=world.device.id.upper())),
        ("confirm_request", "session_id null", _mutate(confirm, session_id=None)),
    ]
    return {"description": "Bodies every decoder must refuse with 422 malformed_request.",
            "generator": "scripts/make_vectors.py",
            "cases": [{"message": msg, "name": name, "body_b64url": b64(body),
                       "reason": "malformed_request"} for msg, name, body in cases]}


def generate() -> dict[str, bytes]:
    """Every vector file, name → exact bytes."""
    world = build_world()
    files = {"happy_path.json": _happy(world), "transcripts.json": _transcripts(),
             "malformed.json": _malformed(world)}
    return {name: (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
            for name, value in files.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    different = []
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in generate().items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_bytes() != data:
                different.append(name)
        else:
            path.write_bytes(data)
            print(f"wrote {path.relative_to(ROOT)}")
    if different:
        print("vectors differ from the generator: " + ", ".join(different), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
