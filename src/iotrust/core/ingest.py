"""Verifying a signed device message end to end: the ingest decision (DESIGN.md §7).

:func:`verify_message` decides whether one parsed :class:`~iotrust.core.envelope.Envelope`, as it
arrived on one MQTT topic, is accepted. The checks run in this order; the first failure is the
refusal reason (``TrustError.reason``):

1. ``unknown_credential`` — the envelope's ``kid`` names no credential we know, or one of another
   device, or one that is not usable now (only ``active`` and, during rotation overlap,
   ``superseded`` credentials inside their validity period are; ``issued``, ``revoked`` and
   ``expired`` ones are not).
2. ``signature_invalid`` — the ES256 signature does not verify with that credential's key.
3. ``device_not_active`` — the device is not ACTIVE; a QUARANTINED device may still publish on the
   topics of :data:`iotrust.core.policy.QUARANTINE_POLICY` (its remediation channel).
4. ``topic_mismatch`` — the topic inside the envelope is not the topic the message arrived on, or
   it is a topic the device's policy does not let it publish on (a device signing for another
   device's topic behind a gateway).
5. ``too_old`` / ``from_future`` — the device timestamp is outside ``[now - max_age, now +
   max_skew]``.
6. ``replayed`` — the counter was seen before or is older than the replay window.

Why this order: nothing about the device is revealed or recorded as the device's doing until the
signature proves the device made the message (steps 3-6 are only reached for authentic content,
so their events can be attributed to the device); the replay window is last so that it only
remembers counters of messages that were accepted — a refused message never burns a counter.

This module is pure: credentials, device state and the window come in as arguments; time is
``now``. Persisting the window and recording events is the ingest service's job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.core import policy as _policy
from iotrust.core.envelope import Envelope, verify_signature
from iotrust.core.freshness import ReplayWindow, check_age
from iotrust.core.lifecycle import CredentialState, DeviceState
from iotrust.errors import InputError, TrustError

#: Every reason :func:`verify_message` can refuse with.
REASONS: Final = ("unknown_credential", "signature_invalid", "device_not_active",
                  "topic_mismatch", "too_old", "from_future", "replayed")

_USABLE: Final = frozenset({CredentialState.ACTIVE, CredentialState.SUPERSEDED})
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)


def to_millis(at: datetime) -> int:
    """Milliseconds since the Unix epoch of a timezone-aware datetime (the envelope's clock)."""
    if at.tzinfo is None:
        raise TypeError("timestamps must be timezone-aware")
    return (at - _EPOCH) // _MS


@dataclass(frozen=True, slots=True)
class DeviceCredential:
    """What the verifier needs of an operational credential (built once per credential)."""

    serial: str  # lowercase hex, as in the registry
    device_id: str
    public_key: ec.EllipticCurvePublicKey
    state: CredentialState
    not_before: datetime
    not_after: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, ec.EllipticCurvePublicKey):
            raise TypeError("a device credential carries an EC public key")
        if self.not_before.tzinfo is None or self.not_after.tzinfo is None:
            raise TypeError("credential validity must be timezone-aware")

    def usable_at(self, now: datetime) -> bool:
        """Whether messages signed with this credential are accepted at ``now``."""
        return self.state in _USABLE and self.not_before <= now <= self.not_after


@dataclass(frozen=True, slots=True)
class FreshnessLimits:
    """How old (``max_age_ms``) or how far ahead (``max_skew_ms``) a device timestamp may be."""

    max_age_ms: int = 300_000
    max_skew_ms: int = 30_000

    def __post_init__(self) -> None:
        for value in (self.max_age_ms, self.max_skew_ms):
            if type(value) is not int or value < 0:
                raise InputError("freshness limits are non-negative milliseconds",
                                 reason="invalid_freshness_limits")


@dataclass(frozen=True, slots=True)
class VerifiedMessage:
    """A message that passed every check: the only thing the ingest service forwards."""

    device_id: str
    counter: int
    timestamp: int  # device time, ms since the Unix epoch
    topic: str
    content_type: str | int
    payload: bytes
    credential_serial: str
    device_state: DeviceState


CredentialLookup = Callable[[str], DeviceCredential | None]

_DEFAULT_LIMITS: Final = FreshnessLimits()


def _state_allows(env: Envelope, state: DeviceState | None,
                  assigned: _policy.Policy | None) -> DeviceState:
    if state is DeviceState.ACTIVE:
        return state
    if state is DeviceState.QUARANTINED and _policy.decide(
            env.device_id, state, assigned, _policy.Action.PUBLISH, env.topic).allowed:
        return state
    raise TrustError(f"device {env.device_id} may not publish on this topic in its state",
                     reason="device_not_active")


def verify_message(env: Envelope, *, arrived_topic: str, now: datetime,
                   credential_lookup: CredentialLookup, device_state: DeviceState | None,
                   window: ReplayWindow, limits: FreshnessLimits = _DEFAULT_LIMITS,
                   policy: _policy.Policy | None = None) -> VerifiedMessage:
    """Accept ``env`` (and advance ``window``) or raise ``TrustError`` with one of :data:`REASONS`.

    ``device_state`` is the current state of ``env.device_id`` (``None``: unknown), ``window`` its
    replay window, ``policy`` its assigned policy (``None``: the default), ``credential_lookup``
    maps a certificate serial (lowercase hex) to the credential or ``None``.
    """
    serial = env.credential_serial
    credential = credential_lookup(serial)
    if (credential is None or credential.device_id != env.device_id
            or not credential.usable_at(now)):
        raise TrustError("the envelope's signing credential is unknown or not usable",
                         reason="unknown_credential")
    verify_signature(env, credential.public_key)
    state = _state_allows(env, device_state, policy)
    if env.topic != arrived_topic:
        raise TrustError("the signed topic is not the topic the message arrived on",
                         reason="topic_mismatch")
    if device_state is DeviceState.ACTIVE and not _policy.decide(
            env.device_id, device_state, policy, _policy.Action.PUBLISH, env.topic).allowed:
        raise TrustError("the device's policy does not allow publishing on the signed topic",
                         reason="topic_mismatch")
    check_age(env.timestamp, to_millis(now), limits.max_age_ms, limits.max_skew_ms)
    window.check_and_update(env.counter)
    return VerifiedMessage(device_id=env.device_id, counter=env.counter,
                           timestamp=env.timestamp, topic=env.topic,
                           content_type=env.content_type, payload=env.payload,
                           credential_serial=serial, device_state=state)
