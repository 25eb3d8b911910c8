"""Gateway mode: relay already-signed envelopes of downstream devices, without being able to forge.

A downstream device with no broker connection of its own (a sensor on a serial bus, BLE, a
LAN segment) runs ``iotrust-agent run --state DEV --spool DIR``: it seals each message with
*its own* operational key and drops the envelope into a spool folder. ``iotrust-agent gateway
--state GW --downstream DIR...`` picks the envelopes up and publishes each one, unchanged, on
the topic signed inside it, over the gateway's *own* MQTT connection (its own certificate).

What the gateway can and cannot do: it holds only its own key, so it cannot produce a valid
envelope for a downstream device. It may drop, delay, replay, reorder, alter or re-route
envelopes — the ingest service refuses every such message (replay window, signature, signed
topic) — and the broker lets it publish only on the topics its *shared* policy lists
(``devices/<downstream-id>/telemetry`` for each of its devices). The local checks below
(well-formed envelope, topic inside ``devices/<signer>/``) only keep garbage off the broker;
they are not a security boundary.

Spool folder: one file per envelope, ``<counter, 20 digits>.cose``, written atomically by the
device (temporary name starting with ``.``, then rename); the gateway publishes files in name
order, deletes each after a successful PUBACK, and moves refused or malformed ones to
``rejected/`` (kept for the operator, never retried). While the broker is unreachable files
stay where they are.

This module does not verify signatures (the gateway has no trust decision to make) and imports
no key store.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from iotrust.adapters.mqtt.client import FIRST_FAILURE_CODE
from iotrust.agent.state import write_atomic
from iotrust.agent.telemetry import Publisher
from iotrust.core.envelope import MAX_ENVELOPE_BYTES, open_envelope
from iotrust.errors import BackendError, InputError

SUFFIX: Final = ".cose"
REJECTED_DIR: Final = "rejected"
#: Envelopes taken from one spool per round (fairness between downstream devices).
PER_ROUND: Final = 50
_MAX_FILE: Final = MAX_ENVELOPE_BYTES + 1024


class Spool:
    """A folder of sealed envelopes waiting for the gateway."""

    def __init__(self, path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise InputError(f"cannot use the spool folder {str(path)!r}: {exc.strerror}",
                             reason="spool_unusable") from None
        self.path = path

    def put(self, envelope: bytes) -> Path:
        """Add one envelope (device side), named by its counter so names sort in order."""
        counter = open_envelope(envelope).counter
        target = self.path / f"{counter:020d}{SUFFIX}"
        write_atomic(target, envelope, mode=0o600)
        return target

    def pending(self, limit: int = PER_ROUND) -> list[Path]:
        """The oldest ``limit`` envelopes waiting."""
        try:
            names = sorted(p.name for p in self.path.iterdir()
                           if p.name.endswith(SUFFIX) and not p.name.startswith("."))
        except OSError as exc:
            raise BackendError(f"cannot list the spool {str(self.path)!r}: {exc.strerror}",
                               reason="spool_io") from None
        return [self.path / n for n in names[:limit]]

    @staticmethod
    def read(path: Path) -> bytes | None:
        """The file's bytes (``None`` if it vanished); at most one envelope's size + 1."""
        try:
            with path.open("rb") as handle:
                return handle.read(_MAX_FILE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendError(f"cannot read {str(path)!r}: {exc.strerror}",
                               reason="spool_io") from None

    @staticmethod
    def done(path: Path) -> None:
        """The envelope was delivered."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def reject(self, path: Path, why: str) -> None:
        """Keep a refused envelope out of the queue, with the reason next to it."""
        folder = self.path / REJECTED_DIR
        folder.mkdir(exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            path.replace(folder / path.name)
            (folder / f"{path.name}.reason").write_text(why + "\n")


class SpoolPublisher:
    """A downstream device's :class:`~iotrust.agent.telemetry.Publisher`: into the spool."""

    def __init__(self, spool_dir: Path) -> None:
        self._spool = Spool(spool_dir)

    def publish(self, topic: str, payload: bytes) -> int:  # noqa: ARG002 - the topic is signed
        """Spool ``payload`` (its topic is inside the envelope); always 0 (accepted)."""
        self._spool.put(payload)
        return 0


@dataclass(slots=True)
class GatewayStats:
    """What the gateway relayed and what it set aside (by reason)."""

    relayed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """For the CLI."""
        return {"relayed": self.relayed, "rejected": dict(sorted(self.rejected.items()))}


class Gateway:
    """Relays envelopes from downstream spools to the broker through one publisher."""

    def __init__(self, spools: Sequence[Spool], publisher: Publisher) -> None:
        if not spools:
            raise InputError("a gateway relays for at least one downstream device",
                             reason="no_downstream")
        self._spools = tuple(spools)
        self._publisher = publisher
        self.stats = GatewayStats()

    def _reject(self, spool: Spool, path: Path, why: str) -> None:
        spool.reject(path, why)
        self.stats.rejected[why] = self.stats.rejected.get(why, 0) + 1

    def relay_once(self) -> int:
        """One round over every spool; how many envelopes were relayed.

        A broker that is unreachable ends the round (``BackendError`` propagates; files stay).
        """
        relayed = 0
        for spool in self._spools:
            for path in spool.pending():
                data = Spool.read(path)
                if data is None:
                    continue
                try:
                    env = open_envelope(data)
                except InputError:
                    self._reject(spool, path, "malformed_envelope")
                    continue
                if not env.topic.startswith(f"devices/{env.device_id}/"):
                    self._reject(spool, path, "foreign_topic")
                    continue
                code = self._publisher.publish(env.topic, data)
                if code >= FIRST_FAILURE_CODE:
                    self._reject(spool, path, f"broker_refused_0x{code:02x}")
                    continue
                Spool.done(path)
                relayed += 1
        self.stats.relayed += relayed
        return relayed

    def run(self, stop: threading.Event, *, poll_s: float = 0.2,
            max_messages: int | None = None) -> GatewayStats:
        """Relay until ``stop`` (or ``max_messages`` relayed); retry after broker outages."""
        while not stop.is_set():
            try:
                moved = self.relay_once()
            except BackendError:
                moved = 0
                stop.wait(1.0)
            if max_messages is not None and self.stats.relayed >= max_messages:
                break
            if not moved:
                stop.wait(poll_s)
        return self.stats
