"""Signed telemetry: the device seals every message with its own operational key (DESIGN.md §7).

``iotrust-agent run`` builds a small JSON reading, seals it into a COSE_Sign1 envelope
(:func:`iotrust.core.envelope.seal`: device id, counter, device time, topic, content type, all
signed) and either publishes it on ``devices/<id>/telemetry`` over MQTT 5 with mutual TLS (its
operational certificate; the broker endpoint and CA chain come from the onboarding state), or
drops it into a gateway's spool folder (:mod:`.gateway`) when the device has no broker
connection of its own.

**The counter never repeats.** :class:`CounterFile` hands out a per-device monotonic counter and
persists it by reservation: ``<state>/message-counter.json`` holds a ceiling, written (atomically,
fsynced) *before* any counter at or above it is used, ``block`` counters at a time. After a crash
the device resumes at the ceiling, skipping at most ``block`` counters (the receiver accepts
gaps); after a clean stop it resumes exactly where it was. So a restart never signs two messages
with the same counter, and costs one write per ``block`` messages rather than one per message.

This module does not verify anything (the ingest service does) and does not hold any other
device's key.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

from iotrust.adapters.keys import KeyRefKind, parse_key_ref
from iotrust.adapters.mqtt.client import FIRST_FAILURE_CODE, MqttEndpoint
from iotrust.agent.state import CA_CHAIN_FILE, CERTIFICATE_FILE, AgentState, write_atomic
from iotrust.core.envelope import MAX_COUNTER, kid_for_serial, seal
from iotrust.core.ingest import to_millis
from iotrust.errors import BackendError, InputError
from iotrust.ports import Signer

COUNTER_FILE: Final = "message-counter.json"
COUNTER_BLOCK: Final = 100
TELEMETRY_CONTENT_TYPE: Final = "application/json"
MAX_COUNTER_FILE_BYTES: Final = 4096


def telemetry_topic(device_id: str) -> str:
    """The topic a device publishes its telemetry on."""
    return f"devices/{device_id}/telemetry"


class CounterFile:
    """A per-device message counter that survives restarts and crashes without repeating."""

    def __init__(self, state_dir: Path, *, block: int = COUNTER_BLOCK) -> None:
        if block < 1:
            raise InputError("the counter block is at least 1", reason="invalid_counter_block")
        self._path = state_dir / COUNTER_FILE
        self._block = block
        self._next = self._load()
        self._ceiling = self._next  # nothing reserved yet in this run

    def _load(self) -> int:
        try:
            with self._path.open("rb") as handle:
                raw = handle.read(MAX_COUNTER_FILE_BYTES + 1)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise InputError(f"cannot read {str(self._path)!r}: {exc.strerror}",
                             reason="state_unreadable") from None
        try:
            value = json.loads(raw)["next"]
        except (ValueError, KeyError, TypeError):
            value = None
        if (len(raw) > MAX_COUNTER_FILE_BYTES or type(value) is not int
                or not 0 <= value <= MAX_COUNTER):
            raise InputError(f"{str(self._path)!r} is damaged", reason="state_damaged")
        return value

    def _store(self, value: int) -> None:
        write_atomic(self._path, json.dumps({"next": value}).encode() + b"\n", mode=0o600)

    def next(self) -> int:
        """The next unused counter (reserving a new block first when needed)."""
        value = self._next
        if value >= MAX_COUNTER:
            raise InputError("the message counter is exhausted", reason="counter_exhausted")
        if value >= self._ceiling:
            self._ceiling = min(value + self._block, MAX_COUNTER)
            self._store(self._ceiling)
        self._next = value + 1
        return value

    def close(self) -> None:
        """Clean stop: resume exactly at the next unused counter (no gap)."""
        if self._next < self._ceiling:
            self._store(self._next)
            self._ceiling = self._next

    @property
    def peek(self) -> int:
        """The counter :meth:`next` will return."""
        return self._next


class DeviceSealer:
    """Seals messages as one device: its id, its operational key and certificate, its counter."""

    def __init__(self, state: AgentState, signer: Signer, counter: CounterFile) -> None:
        self.state = state
        self._signer = signer
        self._counter = counter
        self._kid = kid_for_serial(format(state.certificate.serial_number, "x"))

    @property
    def device_id(self) -> str:
        """The device this sealer signs for."""
        return self.state.device_id

    def seal(self, topic: str, payload: bytes, *, now: datetime,
             content_type: str | int = TELEMETRY_CONTENT_TYPE) -> tuple[int, bytes]:
        """``(counter, envelope bytes)`` for ``payload`` meant for ``topic``."""
        counter = self._counter.next()
        data = seal(payload, signer=self._signer, device_id=self.state.device_id,
                    counter=counter, timestamp=to_millis(now), topic=topic,
                    content_type=content_type, kid=self._kid)
        return counter, data

    def close(self) -> None:
        """Persist the counter exactly."""
        self._counter.close()


def reading(n: int, now: datetime) -> bytes:
    """A small JSON telemetry reading (sequence number, time, load average when known)."""
    body: dict[str, object] = {"n": n, "at": now.astimezone(UTC).isoformat()}
    if hasattr(os, "getloadavg"):
        body["load1"] = round(os.getloadavg()[0], 3)
    return json.dumps(body, separators=(",", ":")).encode()


def mqtt_endpoint(state_dir: Path, state: AgentState) -> MqttEndpoint:
    """The broker from the onboarding state, with the device's certificate and file key.

    Raises:
        InputError: ``mqtt_needs_file_key`` when the operational key is on a PKCS#11 token
            (this agent cannot hand a token key to the TLS stack; use a gateway spool).
    """
    ref = parse_key_ref(state.operational_key_ref)
    if ref.kind is not KeyRefKind.DEVFILE or ref.path is None:
        raise InputError("MQTT over mutual TLS needs the operational key in a file; a device "
                         "with a token key publishes through a gateway (--spool)",
                         reason="mqtt_needs_file_key")
    return MqttEndpoint(host=state.broker_host, port=state.broker_port,
                        ca_file=state_dir / CA_CHAIN_FILE,
                        cert_file=state_dir / CERTIFICATE_FILE, key_file=Path(ref.path))


class Publisher(Protocol):
    """Where sealed messages go: ``publish`` returns the MQTT 5 PUBACK reason code."""

    def publish(self, topic: str, payload: bytes) -> int:
        """Send one message."""
        ...


def run_telemetry(sealer: DeviceSealer, publisher: Publisher, *, interval_s: float,
                  count: int | None, stop: threading.Event,
                  now: Callable[[], datetime] = lambda: datetime.now(UTC),
                  on_refused: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Seal and publish telemetry every ``interval_s`` until ``count`` or ``stop``.

    Returns ``(published, refused)``; a refusal (PUBACK >= 0x80, e.g. 0x87 while quarantined)
    is reported to ``on_refused(counter, code)`` and the loop goes on. A broker that stays
    unreachable raises ``BackendError``.
    """
    topic = telemetry_topic(sealer.device_id)
    published = refused = 0
    n = 0
    next_at = time.monotonic()
    while not stop.is_set() and (count is None or n < count):
        at = now()
        counter, data = sealer.seal(topic, reading(n, at), now=at)
        code = _publish_with_retry(publisher, topic, data, stop)
        n += 1
        if code >= FIRST_FAILURE_CODE:
            refused += 1
            if on_refused is not None:
                on_refused(counter, code)
        else:
            published += 1
        next_at += interval_s
        delay = next_at - time.monotonic()
        if delay > 0 and (count is None or n < count):
            stop.wait(delay)
        elif delay <= 0:
            next_at = time.monotonic()
    return published, refused


def _publish_with_retry(publisher: Publisher, topic: str, data: bytes,
                        stop: threading.Event, attempts: int = 5) -> int:
    for attempt in range(attempts):
        try:
            return publisher.publish(topic, data)
        except BackendError:
            if attempt == attempts - 1 or stop.wait(min(2.0 ** attempt, 10.0)):
                raise
    raise RuntimeError("unreachable")  # pragma: no cover
