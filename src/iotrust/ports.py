"""Ports: the narrow interfaces through which the core and the services reach the outside world.

Adapters implement these; tests implement them with simulators. Nothing here does I/O itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import ec


class Clock(Protocol):
    """Where the current time comes from (always timezone-aware UTC)."""

    def now(self) -> datetime:
        """The current time."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to: for tests and deterministic vectors."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise TypeError("FixedClock needs a timezone-aware datetime")
        self._at = at

    def now(self) -> datetime:
        """The fixed time."""
        return self._at

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        from datetime import timedelta  # noqa: PLC0415 - keep the module surface small

        self._at = self._at + timedelta(seconds=seconds)


@runtime_checkable
class Signer(Protocol):
    """A private key that stays where it lives (file, secure element, HSM).

    Only ECDSA P-256 with SHA-256 is offered: ``sign`` returns a DER-encoded ECDSA signature
    over SHA-256(data), exactly what X.509 and the onboarding transcript need.
    """

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half of the key."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Sign ``SHA-256(data)``; return the DER ``Ecdsa-Sig-Value``."""
        ...


@runtime_checkable
class HasPrivateKey(Protocol):
    """A :class:`Signer` whose key lives in this process (a software key store).

    Certificate builders then sign directly with it (the fast path); any other signer signs the
    to-be-signed bytes externally (PKCS#11, secure element).
    """

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The in-process private key."""
        ...


@dataclass(frozen=True, slots=True)
class TopicAccess:
    """What one broker user may do.

    ``rules`` are ``(action, topic filter)`` pairs, action ``publish`` or ``subscribe``;
    ``None`` means nothing at all (retired, expected, no policy).
    """

    username: str
    rules: tuple[tuple[str, str], ...] | None


class BrokerControl(Protocol):
    """The MQTT broker as the services see it (Mosquitto embedded; EMQX at scale).

    Each method either takes effect or raises an :class:`~iotrust.errors.IotrustError`
    (``BackendError`` when the broker cannot be reached).
    """

    def apply_policies(self, entries: Iterable[TopicAccess], *, default: TopicAccess) -> None:
        """Replace the broker's access rules and apply them to live sessions.

        ``default`` is the default policy rendered for the placeholder device id
        ``default.username``; ``entries`` lists every device and service. Nobody is disconnected.
        """
        ...

    def install_crl(self, pem: bytes) -> None:
        """Install a verified CRL bundle for new handshakes; refuse anything unverifiable."""
        ...

    def kick(self, username: str) -> None:
        """Disconnect every live session of ``username`` (it may reconnect with its new rights)."""
        ...

    def reload(self) -> None:
        """Make the broker re-read its access rules and CRL."""
        ...

    def exclusive(self) -> AbstractContextManager[None]:
        """Hold the broker's update lock while reading the registry and applying.

        Two concurrent operators then cannot install an older view over a newer one.
        """
        ...


# -- message counters (signed-message replay windows, DESIGN.md §7) ----------------------------


@dataclass(frozen=True, slots=True)
class MessageCounter:
    """The persisted replay state of one device (see :class:`CounterStore`).

    ``highest`` is the highest accepted counter (-1: none), ``bitmap`` the window's bits (bit
    ``i`` = counter ``highest - i`` accepted) for a window of ``window_size`` counters, and
    ``reserved`` a durable ceiling above every counter ever accepted, or ``None`` after a clean
    shutdown (then ``highest`` and ``bitmap`` are exact).
    """

    device_id: str
    highest: int
    bitmap: int
    window_size: int
    reserved: int | None

    def __post_init__(self) -> None:
        if self.highest < -1 or self.bitmap < 0 or self.window_size < 1:
            raise ValueError("counters are >= -1, bitmaps and window sizes positive")
        if self.reserved is not None and self.reserved < self.highest:
            raise ValueError("a reservation is never below the highest accepted counter")


class CounterStore(Protocol):
    """Where each device's message-counter state survives a restart of the ingest service.

    The ingest service keeps windows in memory and writes them behind in batches
    (:meth:`save_counters`); only :meth:`reserve` must be durable before it returns, because
    a message whose counter is above the current reservation is not accepted until it is.
    """

    def load_counters(self, device_id: str) -> MessageCounter | None:
        """The stored state of one device, or ``None`` if it never had a message accepted."""
        ...

    def save_counters(self, states: Sequence[MessageCounter], at: datetime) -> None:
        """Write many devices' states in one transaction (the write-behind flush)."""
        ...

    def reserve(self, state: MessageCounter, at: datetime) -> None:
        """Durably write ``state`` now (its ``reserved`` is the new ceiling; never lowered)."""
        ...
