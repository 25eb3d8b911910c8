"""Credential rotation, device side (DESIGN.md §8): renew before expiry with a new key.

:func:`rotate` runs one renewal over a :class:`~.transport.Transport`:

1. **begin** — sign the begin transcript with the *current* operational key; the reply says
   when renewal is due and whether the operator asked for it early. Without ``force`` nothing
   more happens unless one of the two holds.
2. make a **new** key in the same kind of store (a new ``devfile`` next to the state, or a new
   ``ldevid-<serial>-<n>`` on the PKCS#11 token) and a CSR for it;
3. **complete** — sign the rotation transcript (context ``iotrust-rotation-v1``) with the
   *current* key; check the new certificate: for the new key, naming this device, chaining to
   the **pinned owner root**;
4. write the new credential as *pending* (``rotation-pending.json``), **confirm** with the new
   key, then switch the state to it and forget the old key.

If the confirm's answer is lost, the pending credential stays; the next run asks the server
whether the pending credential is live (a begin signed with it) and adopts or discards it. A
refusal ends the attempt and is never retried (only the transport retries, and only failures
to get an answer). This module does not run MQTT: whoever holds the broker connection reconnects
with the new files (the server disconnects the old session when the old credential dies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from iotrust.adapters.keys import DeviceFileKey, KeyRef, KeyRefKind, parse_key_ref
from iotrust.agent import keys
from iotrust.agent.state import AgentState, load_state, pem_chain, save_state, write_atomic
from iotrust.agent.transport import Transport, check_reply
from iotrust.core import pki
from iotrust.core import rotation as rot
from iotrust.errors import BackendError, InputError, TrustError
from iotrust.ports import Signer

BEGIN_PATH: Final = "/v1/rotation/begin"
COMPLETE_PATH: Final = "/v1/rotation/complete"
CONFIRM_PATH: Final = "/v1/rotation/confirm"
PENDING_FILE: Final = "rotation-pending.json"


@dataclass(frozen=True, slots=True)
class RotationOutcome:
    """What :func:`rotate` did."""

    rotated: bool
    reason: str  # "renewed", "not_due", "adopted_pending"
    credential_serial: str
    not_after: datetime
    renew_at: datetime | None = None
    renewal_requested: bool = False

    def summary(self) -> dict[str, object]:
        """For ``iotrust-agent rotate --json``."""
        return {"rotated": self.rotated, "reason": self.reason,
                "credential_serial": self.credential_serial,
                "not_after": _t(self.not_after),
                "renew_at": _t(self.renew_at) if self.renew_at else None,
                "renewal_requested": self.renewal_requested}


def _t(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _post(transport: Transport, path: str, body: bytes) -> bytes:
    status, reply = transport.post_json(path, body)
    return check_reply(status, reply)


def serial_of(cert: x509.Certificate) -> str:
    """The credential serial as the registry names it (lowercase hex)."""
    return f"{cert.serial_number:x}"


def _begin(transport: Transport, state: AgentState, cert: x509.Certificate, signer: Signer,
           random: Callable[[int], bytes]) -> rot.BeginResponse:
    nonce = random(rot.NONCE_BYTES)
    transcript = rot.begin_transcript(device_id=state.device_id,
                                      credential_serial=serial_of(cert), device_nonce=nonce)
    req = rot.BeginRequest(device_id=state.device_id, credential_serial=serial_of(cert),
                           device_nonce=nonce, signature=signer.sign(transcript))
    return rot.BeginResponse.from_wire(_post(transport, BEGIN_PATH, req.to_wire()))


def _new_key(state: AgentState, state_dir: Path, *, pin: str | None) -> keys.OperationalKey:
    ref = parse_key_ref(state.operational_key_ref)
    if ref.kind is KeyRefKind.DEVFILE:
        n = 1
        while (state_dir / f"operational-{n}.key.pem").exists():
            n += 1
        path = state_dir / f"operational-{n}.key.pem"
        signer = DeviceFileKey.generate(path)
        return keys.OperationalKey(signer, str(KeyRef.device_file(path)), keys.FILE_STORAGE)
    # PKCS#11: a new label on the same token (create_operational_key takes module/token).
    return keys.create_operational_key(state.operational_key_ref, state_dir, state.serial,
                                       pin=pin)


def _check_issued(resp: rot.CompleteResponse, state: AgentState, new_key: Signer,
                  now: datetime) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    try:
        cert = pki.load_certificate(resp.certificate)
        chain = tuple(pki.load_certificate(c) for c in resp.ca_chain)
    except InputError as exc:
        raise TrustError("the new certificate does not parse",
                         reason="certificate_mismatch") from exc
    if resp.device_id != state.device_id or pki.spki_sha256(cert.public_key()) != \
            pki.spki_sha256(new_key.public_key):
        raise TrustError("the new certificate is not for the new key of this device",
                         reason="certificate_mismatch")
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not cns or cns[0].value != state.device_id:
        raise TrustError("the new certificate does not name this device",
                         reason="certificate_mismatch")
    if pki.spki_sha256(chain[-1].public_key()) != state.owner_spki_sha256:
        raise TrustError("the new chain does not end in the pinned owner root",
                         reason="owner_mismatch")
    pki.verify_chain(cert, list(chain[:-1]), [chain[-1]], now)
    return cert, chain


def _switch(state_dir: Path, state: AgentState, *, cert_pem: bytes, chain_pem: bytes,
            key_ref: str, key_storage: str) -> AgentState:
    """Make the new credential the state's, then forget the old devfile key."""
    new_state = dataclasses.replace(state, certificate_pem=cert_pem, ca_chain_pem=chain_pem,
                                    operational_key_ref=key_ref, key_storage=key_storage,
                                    confirmed=True)
    save_state(state_dir, new_state)
    (state_dir / PENDING_FILE).unlink(missing_ok=True)
    old = parse_key_ref(state.operational_key_ref)
    if old.kind is KeyRefKind.DEVFILE and old.path and old.path != parse_key_ref(key_ref).path:
        with contextlib.suppress(OSError):
            Path(old.path).unlink()
    return new_state


def _pending(state_dir: Path) -> dict[str, str] | None:
    path = state_dir / PENDING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    keys_needed = ("certificate_pem", "ca_chain_pem", "key_ref", "key_storage")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in keys_needed):
        return None
    return {k: data[k] for k in keys_needed}


def _resolve_pending(transport: Transport, state_dir: Path, state: AgentState,
                     random: Callable[[int], bytes], pin: str | None) -> AgentState | None:
    """A confirm whose answer was lost: adopt the pending credential if the server says it lives."""
    pending = _pending(state_dir)
    if pending is None:
        (state_dir / PENDING_FILE).unlink(missing_ok=True)
        return None
    signer = keys.open_operational_signer(pending["key_ref"], pin=pin)
    try:
        cert = pki.load_certificate(pending["certificate_pem"].encode())
        _begin(transport, state, cert, signer, random)
    except TrustError:
        (state_dir / PENDING_FILE).unlink(missing_ok=True)  # never confirmed: keep the current
        return None
    finally:
        keys.close_signer(signer)
    return _switch(state_dir, state, cert_pem=pending["certificate_pem"].encode(),
                   chain_pem=pending["ca_chain_pem"].encode(), key_ref=pending["key_ref"],
                   key_storage=pending["key_storage"])


def rotate(state_dir: Path, transport: Transport, *, now: Callable[[], datetime],
           random: Callable[[int], bytes], force: bool = False,
           pin: str | None = None) -> RotationOutcome:
    """Renew the operational credential in ``state_dir`` if due, requested or ``force``d.

    Raises:
        NotFoundError: ``not_onboarded``.
        TrustError: a refusal by the server (``credential_revoked``, ``credential_expired``,
            ``retired`` ...) or by the device's own checks (``certificate_mismatch``,
            ``owner_mismatch``, ``chain_invalid``). Never retried.
        BackendError: no answer after the transport's retries, or the key store failed.
    """
    state = load_state(state_dir)
    if not state.confirmed:
        raise InputError("onboarding was never confirmed; run `iotrust-agent onboard` first",
                         reason="not_confirmed")
    adopted = _resolve_pending(transport, state_dir, state, random, pin)
    if adopted is not None:
        return RotationOutcome(rotated=True, reason="adopted_pending",
                               credential_serial=serial_of(adopted.certificate),
                               not_after=adopted.not_after)
    current = keys.open_operational_signer(state.operational_key_ref, pin=pin)
    new: keys.OperationalKey | None = None
    try:
        begun = _begin(transport, state, state.certificate, current, random)
        if not (force or begun.renewal_requested or now() >= begun.renew_at):
            return RotationOutcome(rotated=False, reason="not_due",
                                   credential_serial=serial_of(state.certificate),
                                   not_after=state.not_after, renew_at=begun.renew_at,
                                   renewal_requested=False)
        new = _new_key(state, state_dir, pin=pin)
        csr = pki.build_csr(new.signer).public_bytes(Encoding.DER)
        transcript = rot.rotation_transcript(
            session_id=begun.session_id, server_nonce=begun.server_nonce,
            device_id=state.device_id, credential_serial=serial_of(state.certificate),
            csr_sha256=hashlib.sha256(csr).digest())
        req = rot.CompleteRequest(session_id=begun.session_id, device_id=state.device_id,
                                  credential_serial=serial_of(state.certificate),
                                  server_nonce=begun.server_nonce, csr=csr,
                                  signature=current.sign(transcript))
        resp = rot.CompleteResponse.from_wire(_post(transport, COMPLETE_PATH, req.to_wire()))
        cert, chain = _check_issued(resp, state, new.signer, now())
        cert_pem, chain_pem = cert.public_bytes(Encoding.PEM), pem_chain(chain)
        write_atomic(state_dir / PENDING_FILE, json.dumps({
            "certificate_pem": cert_pem.decode(), "ca_chain_pem": chain_pem.decode(),
            "key_ref": new.key_ref, "key_storage": new.key_storage}).encode(), mode=0o600)
        confirm_sig = new.signer.sign(rot.confirm_transcript(
            session_id=begun.session_id, server_nonce=begun.server_nonce,
            certificate_sha256=hashlib.sha256(resp.certificate).digest()))
        confirm = rot.ConfirmRequest(session_id=begun.session_id, device_id=state.device_id,
                                     server_nonce=begun.server_nonce, signature=confirm_sig)
        try:
            _post(transport, CONFIRM_PATH, confirm.to_wire())
        except TrustError:
            (state_dir / PENDING_FILE).unlink(missing_ok=True)
            _discard(new)
            new = None
            raise
        except BackendError:
            new = None  # keep the pending credential: the next run adopts or discards it
            raise
        switched = _switch(state_dir, state, cert_pem=cert_pem, chain_pem=chain_pem,
                           key_ref=new.key_ref, key_storage=new.key_storage)
        return RotationOutcome(rotated=True, reason="renewed",
                               credential_serial=serial_of(switched.certificate),
                               not_after=switched.not_after, renew_at=None,
                               renewal_requested=begun.renewal_requested)
    finally:
        keys.close_signer(current)
        if new is not None:
            keys.close_signer(new.signer)


def _discard(new: keys.OperationalKey) -> None:
    ref = parse_key_ref(new.key_ref)
    keys.close_signer(new.signer)
    if ref.kind is KeyRefKind.DEVFILE and ref.path:
        with contextlib.suppress(OSError):
            Path(ref.path).unlink()
