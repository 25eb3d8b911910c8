"""Device-side onboarding: build the requests and check the server's answers, with no I/O.

The device trusts nothing the server says until it has checked it:

* the hello response's voucher must verify against the manufacturer root the device ships with
  and name this device (serial **and** its own factory key, vendor, product); the voucher's
  ``owner_spki_sha256`` is then **pinned** for the rest of the session;
* the attest response's certificate must be for the CSR key and name the device id, and its
  chain must end in a root whose SPKI SHA-256 equals the pinned owner key — so a rogue server,
  even one holding a genuine voucher for another owner, cannot capture the device.

Failures raise :class:`~iotrust.errors.TrustError` (``voucher_invalid``, ``voucher_mismatch``,
``owner_mismatch``, ``certificate_mismatch``, ``chain_invalid``) or
:class:`~iotrust.errors.InputError` (``malformed_request``). Keys stay behind
:class:`~iotrust.ports.Signer`; transport, storage and retries belong to the agent.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from iotrust.core import pki
from iotrust.core.onboarding import reasons as r
from iotrust.core.onboarding.messages import (
    NONCE_BYTES,
    AttestRequest,
    AttestResponse,
    Broker,
    ConfirmRequest,
    HelloRequest,
    HelloResponse,
)
from iotrust.core.onboarding.reasons import malformed, refuse
from iotrust.core.onboarding.transcript import attest_transcript, confirm_transcript, sha256
from iotrust.core.vouchers import check_voucher_matches, decode_voucher, verify_voucher
from iotrust.errors import InputError, TrustError
from iotrust.ports import Signer


@dataclass(frozen=True, slots=True)
class DeviceSession:
    """What the device holds between hello and confirm; ``owner_spki_sha256`` is the pin."""

    serial: str
    device_nonce: bytes
    session_id: bytes
    server_nonce: bytes
    server_id: str
    expires_at: datetime
    voucher_sha256: bytes
    owner: str
    owner_spki_sha256: str
    key_storage: str | None = None  # as stated in the hello; signed again in the attest


@dataclass(frozen=True, slots=True)
class Onboarded:
    """A checked attest response: the operational credential and what comes with it."""

    device_id: str
    certificate: x509.Certificate
    certificate_der: bytes
    ca_chain: tuple[x509.Certificate, ...]
    broker: Broker
    update_root: bytes
    policy: tuple[dict[str, Any], ...]
    confirm_by: datetime


def build_hello(*, serial: str, factory_chain: tuple[bytes, ...],
                random: Callable[[int], bytes], key_storage: str | None = None) -> HelloRequest:
    """The hello: serial, factory chain (DER, leaf first) and a fresh 32-byte device nonce.

    ``key_storage`` states where the device keeps its keys (``file``, ``pkcs11``, ...; see
    :data:`~.messages.KEY_STORAGE_CLAIMS`); ``None`` leaves it out (the server records
    ``unknown``).
    """
    nonce = random(NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise RuntimeError("the random source returned the wrong number of bytes")
    return HelloRequest(serial=serial, factory_chain=tuple(factory_chain), device_nonce=nonce,
                        key_storage=key_storage)


def accept_hello_response(resp: HelloResponse, *, hello: HelloRequest,
                          manufacturer_anchors: tuple[x509.Certificate, ...],
                          now: datetime) -> DeviceSession:
    """Check the voucher the server sent and pin its owner; checks run in this order.

    1. ``voucher_invalid`` — empty, malformed, not signed under ``manufacturer_anchors`` (the
       roots the device ships with), expired or not yet valid at ``now``.
    2. ``voucher_mismatch`` — it does not name this device: manufacturer, serial, factory key
       SHA-256, vendor or product differ from the device's own factory certificate.
    """
    if not resp.voucher:
        raise refuse(r.VOUCHER_INVALID, "the server sent no voucher")
    try:
        signed = decode_voucher(resp.voucher)
        claims = verify_voucher(signed, anchors=manufacturer_anchors, expected_owner=None,
                                expected_owner_spki=None, at=now)
    except (InputError, TrustError) as exc:
        raise refuse(r.VOUCHER_INVALID, exc.message, detail=exc.reason) from exc
    own = pki.read_factory_identity(pki.load_certificate(hello.factory_chain[0]))
    try:
        check_voucher_matches(claims, serial=hello.serial, factory_spki_sha256=own.spki_sha256,
                              vendor_id=own.vendor_id, product_id=own.product_id)
    except TrustError as exc:
        raise refuse(r.VOUCHER_MISMATCH, exc.message) from exc
    if claims.manufacturer != own.manufacturer:
        raise refuse(r.VOUCHER_MISMATCH, "the voucher names another manufacturer")
    return DeviceSession(serial=hello.serial, device_nonce=hello.device_nonce,
                         session_id=resp.session_id, server_nonce=resp.server_nonce,
                         server_id=resp.server_id, expires_at=resp.expires_at,
                         voucher_sha256=sha256(resp.voucher), owner=claims.owner,
                         owner_spki_sha256=claims.owner_spki_sha256,
                         key_storage=hello.key_storage)


def build_attest(session: DeviceSession, *, factory_signer: Signer, csr_der: bytes,
                 ) -> AttestRequest:
    """Sign the attest transcript with the factory key and wrap the CSR."""
    transcript = attest_transcript(
        session_id=session.session_id, server_nonce=session.server_nonce,
        device_nonce=session.device_nonce, serial=session.serial, server_id=session.server_id,
        csr_sha256=sha256(csr_der), voucher_sha256=session.voucher_sha256,
        key_storage=session.key_storage)
    return AttestRequest(session_id=session.session_id, serial=session.serial,
                         server_nonce=session.server_nonce, csr=csr_der,
                         signature=factory_signer.sign(transcript))


def _load(der: bytes, what: str) -> x509.Certificate:
    try:
        return pki.load_certificate(der)
    except InputError as exc:
        raise malformed(f"{what} is not a DER certificate") from exc


def _common_name(cert: x509.Certificate) -> str | None:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1 or not isinstance(values[0].value, str):
        return None
    return values[0].value


def accept_attest_response(resp: AttestResponse, *, session: DeviceSession,
                           csr_public_key: ec.EllipticCurvePublicKey,
                           now: datetime) -> Onboarded:
    """Check the issued credential before using it; checks run in this order.

    1. ``certificate_mismatch`` — the certificate's key is not the CSR key, or its subject CN
       is not ``device_id``.
    2. ``owner_mismatch`` — the last certificate of ``ca_chain`` (the root) does not have the
       SPKI SHA-256 pinned from the voucher.
    3. ``chain_invalid`` — the certificate does not verify up to that root at ``now``.
    """
    cert = _load(resp.certificate, "certificate")
    chain = tuple(_load(der, "ca_chain entry") for der in resp.ca_chain)
    if not hmac.compare_digest(pki.spki_sha256(cert.public_key()).encode(),
                               pki.spki_sha256(csr_public_key).encode()):
        raise refuse(r.CERTIFICATE_MISMATCH, "the certificate is not for the key in the CSR")
    if _common_name(cert) != resp.device_id:
        raise refuse(r.CERTIFICATE_MISMATCH, "the certificate does not name the device id")
    root = chain[-1]
    if not hmac.compare_digest(pki.spki_sha256(root.public_key()).encode(),
                               session.owner_spki_sha256.encode()):
        raise refuse(r.OWNER_MISMATCH, "the certificate chain does not end in the pinned owner")
    try:
        pki.verify_chain(cert, list(chain[:-1]), [root], now)
    except TrustError as exc:
        raise refuse(r.CHAIN_INVALID, exc.message, detail=exc.reason) from exc
    return Onboarded(device_id=resp.device_id, certificate=cert,
                     certificate_der=resp.certificate, ca_chain=chain, broker=resp.broker,
                     update_root=resp.update_root, policy=resp.policy, confirm_by=resp.confirm_by)


def build_confirm(session: DeviceSession, onboarded: Onboarded, *,
                  operational_signer: Signer) -> ConfirmRequest:
    """Prove use of the new key: sign the confirm transcript with it."""
    spki = PublicFormat.SubjectPublicKeyInfo
    ours = operational_signer.public_key.public_bytes(Encoding.DER, spki)
    if ours != onboarded.certificate.public_key().public_bytes(Encoding.DER, spki):
        raise ValueError("the operational signer does not hold the certified key")
    transcript = confirm_transcript(session_id=session.session_id,
                                    server_nonce=session.server_nonce,
                                    certificate_sha256=sha256(onboarded.certificate_der))
    return ConfirmRequest(session_id=session.session_id, device_id=onboarded.device_id,
                          server_nonce=session.server_nonce,
                          signature=operational_signer.sign(transcript))
