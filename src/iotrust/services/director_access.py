"""Who may read a device's director metadata: that device, proven by its operational key.

The director says which image and configuration each device should run; its per-device files
are served at ``GET /v1/tuf/director/<device_id>/metadata/<name>``. :func:`authorize_director_read`
admits a read only with a device-signed request (:mod:`iotrust.core.signed_reads`: an envelope
in the ``Authorization`` header, signed with the operational key the device also signs its
status reports and messages with) whose signer **is** the device in the path:

1. the header decodes (else ``device_auth_required`` / ``malformed_envelope``: nothing is
   authenticated yet, so nothing is recorded, as for a malformed status report);
2. the credential named by the envelope's ``kid`` belongs to the envelope's device and the
   signature verifies under it (``unknown_credential``, ``signature_invalid``);
3. the credential is alive (active, or superseded during a rotation overlap, and within its
   validity) and the device not retired: a read signed by a revoked or expired credential or a
   retired device is refused (``credential_revoked``, ``credential_expired``, ``retired``) and
   recorded as a zombie contact on the ``update`` channel; a quarantined device still reads
   (updates are its remediation channel);
4. the signer is the device in the path (``device_mismatch``), the signature is for this file
   (``request_mismatch``) and recent (``request_stale``).

Every refusal from step 2 on is a ``TrustError`` (HTTP 403 with its reason) and an
``update.director_read_refused`` event naming the signer, the device whose metadata was asked
for and the file. Accepted reads are not recorded (a poll makes a few every few minutes).

Cost per read: one read-only transaction (credential and device by primary key) and one ECDSA
verification (the credential's public key is cached by its certificate text, which never
changes for a serial; its state is read afresh every time). This module does not serve files
(:mod:`iotrust.services.updates` does).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.adapters.sql.store import Database
from iotrust.core import envelope, pki, signed_reads
from iotrust.core.lifecycle import CredentialState, Device, DeviceState
from iotrust.core.records import Credential
from iotrust.errors import IotrustError, NotFoundError, TrustError
from iotrust.ports import Clock
from iotrust.services import eventlog, zombies

__all__ = ["ACTOR_DEVICE", "DIRECTOR_READ_REFUSED", "authorize_director_read"]

#: A director read was refused (``data``: signer, requested device, file, credential).
DIRECTOR_READ_REFUSED: Final = "update.director_read_refused"
ACTOR_DEVICE: Final = "device@iotrust"
_ALIVE: Final = frozenset({CredentialState.ACTIVE, CredentialState.SUPERSEDED})
_MAX_NAME_IN_EVENT: Final = 100


def _signer_records(db: Database, env: envelope.Envelope) -> tuple[Credential, Device]:
    with db.transaction(readonly=True) as tx:
        try:
            cred = tx.get_credential(env.credential_serial)
            device = tx.get_device(env.device_id)
        except NotFoundError:
            raise TrustError("unknown credential", reason="unknown_credential") from None
    if cred.device_id != env.device_id:
        raise TrustError("unknown credential", reason="unknown_credential")
    return cred, device


@lru_cache(maxsize=4096)
def _public_key(certificate_pem: str) -> ec.EllipticCurvePublicKey:
    """A credential's key; cached by the certificate's text (a poll reads 2-4 files in a row)."""
    key = pki.load_certificate(certificate_pem.encode()).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TrustError("unknown credential", reason="unknown_credential")
    return key


def _dead_reason(cred: Credential, device: Device, clock: Clock) -> str | None:
    now = clock.now()
    if device.state is DeviceState.RETIRED:
        return "retired"
    if cred.state is CredentialState.REVOKED:
        return "credential_revoked"
    if cred.state is CredentialState.EXPIRED or not cred.not_before <= now <= cred.not_after:
        return "credential_expired"
    if cred.state not in _ALIVE:  # issued, never confirmed
        return "unknown_credential"
    return None


def _zombie_reason(reason: str) -> str | None:
    return {"retired": "retired", "credential_revoked": "revoked",
            "credential_expired": "expired"}.get(reason)


def authorize_director_read(db: Database, clock: Clock, *, device_id: str, name: str,
                            authorization: str | None) -> str:
    """Admit one read of ``device_id``'s director file ``name``; return the signer's device id.

    Raises ``TrustError`` (see the module doc for the reasons) or ``InputError``
    (``malformed_envelope``).
    """
    env = signed_reads.open_read(authorization)
    verified = False
    try:
        cred, device = _signer_records(db, env)
        envelope.verify_signature(env, _public_key(cred.certificate_pem))
        verified = True
        dead = _dead_reason(cred, device, clock)
        if dead is not None:
            raise TrustError("this identity may no longer read updates", reason=dead)
        signed_reads.check_read(env, device_id=device_id, name=name,
                                now_ms=int(clock.now().timestamp() * 1000))
    except IotrustError as exc:
        eventlog.record_refusal(
            db, clock, DIRECTOR_READ_REFUSED, actor=ACTOR_DEVICE, reason=exc.reason,
            device_id=env.device_id if verified else None,
            data={"signer": env.device_id, "credential": env.credential_serial,
                  "requested_device": device_id[:_MAX_NAME_IN_EVENT],
                  "file": name[:_MAX_NAME_IN_EVENT], "authenticated": verified})
        zombie = _zombie_reason(exc.reason) if verified else None
        if zombie is not None:
            zombies.record_contact(db, clock, identity=env.device_id, where="update",
                                   source=f"cred:{env.credential_serial}", reason=zombie)
        raise
    return env.device_id
