"""Zombies (DESIGN.md §9): contacts by retired, revoked or expired identities, aggregated.

* :class:`ZombieRecord` — one identity's contacts through one channel, aggregated (count, first
  and last seen, last source and reason);
* :func:`parse_mosquitto_log` — turn Mosquitto 2.0 log lines into connection facts: successful
  logins (source address → certificate CN) and TLS handshakes the broker refused.

What Mosquitto 2.0.11 logs for a client certificate on the CRL (reproduced with paho-mqtt 2.2)::

    1795633514: New connection from 127.0.0.1:54527 on port 57703.
    1795633514: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed
    1795633514: Client <unknown> disconnected: Protocol error.

The refused certificate's subject is **not** logged (the same lines appear for an expired or a
foreign certificate), so a refused handshake is attributed through its source address: to the
identity that last logged in from that address (``New client connected from ADDR:PORT as ID (...,
u'CN')``). Where devices share an address (NAT) the attribution names the address only.

This module parses text and builds values; it reads no file and stores nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

__all__ = ["CHANNELS", "BrokerLogin", "BrokerRefusal", "ZombieRecord", "parse_mosquitto_log"]

#: Where a zombie contact can be seen.
CHANNELS: Final = frozenset({"broker", "onboarding", "rotation", "ingest", "update", "api"})
MAX_IDENTITY: Final = 200
MAX_SOURCE: Final = 200


@dataclass(frozen=True, slots=True)
class ZombieRecord:
    """One identity's refused contacts through one channel."""

    identity: str
    where: str
    device_id: str | None
    count: int
    first_seen_at: datetime
    last_seen_at: datetime
    last_source: str
    last_reason: str


@dataclass(frozen=True, slots=True)
class BrokerLogin:
    """A successful MQTT login: from ``address`` as certificate CN ``username``."""

    at: datetime
    address: str
    username: str


@dataclass(frozen=True, slots=True)
class BrokerRefusal:
    """A TLS handshake the broker refused (certificate verify failed) from ``address``."""

    at: datetime
    address: str
    detail: str


_LINE: Final = re.compile(r"^(\d{9,11}): (.*)$")
_NEW: Final = re.compile(r"^New connection from ([0-9A-Fa-f.:\[\]]+):(\d+) on port \d+\.$")
_LOGIN: Final = re.compile(
    r"^New client connected from ([0-9A-Fa-f.:\[\]]+):(\d+) as \S+ \(.*u'([^']{1,200})'\)\.$")
_SSL: Final = re.compile(r"^OpenSSL Error\[\d+\]: (.{0,300})$")
# a handshake that fails inside accept() is logged on one line, with no "New connection" before
_ACCEPT_FAILED: Final = re.compile(
    r"^Client connection from ([0-9A-Fa-f.:\[\]]+) failed: (.{0,300})$")
_UNKNOWN_GONE: Final = re.compile(r"^Client <unknown> (?:disconnected|closed its connection)")
_VERIFY: Final = ("certificate verify failed", "certificate revoked", "certificate expired",
                  "unknown ca", "bad certificate")


def _time(epoch: str) -> datetime:
    return datetime.fromtimestamp(int(epoch), UTC)


def parse_mosquitto_log(lines: Iterable[str], pending: list[str] | None = None,
                        ) -> Iterator[BrokerLogin | BrokerRefusal]:
    """Logins and refused handshakes, in log order; other lines are ignored.

    A refusal is the ``OpenSSL Error`` (a certificate verification failure) that follows a
    ``New connection from ADDR:PORT`` not yet resolved by a login; it is attributed to the most
    recent such connection (Mosquitto handles one socket's handshake step at a time, so under
    heavy concurrent load the pairing is best effort). A handshake refused inside accept() is one
    ``Client connection from ADDR failed: …`` line. ``pending`` carries the connections not yet
    resolved from one call to the next (a scan can end between a connection and its refusal); it
    is updated in place.
    """
    if pending is None:
        pending = []
    for raw in lines:
        m = _LINE.match(raw.rstrip("\n"))
        if m is not None:
            fact = _fact(_time(m.group(1)), m.group(2), pending)
            if fact is not None:
                yield fact


def _is_verify_failure(detail: str) -> bool:
    return any(v in detail.lower() for v in _VERIFY)


def _fact(at: datetime, text: str, pending: list[str]) -> BrokerLogin | BrokerRefusal | None:
    """One log line's fact, if any; ``pending`` tracks connections not yet resolved."""
    if (new := _NEW.match(text)) is not None:
        pending.append(f"{new.group(1)}:{new.group(2)}")
        del pending[:-64]
    elif (login := _LOGIN.match(text)) is not None:
        address = f"{login.group(1)}:{login.group(2)}"
        if address in pending:
            pending.remove(address)
        return BrokerLogin(at=at, address=login.group(1), username=login.group(3))
    elif (ssl_error := _SSL.match(text)) is not None:
        detail = ssl_error.group(1)
        if pending and _is_verify_failure(detail):
            address = pending.pop()
            return BrokerRefusal(at=at, address=address.rsplit(":", 1)[0], detail=detail[:200])
    elif (failed := _ACCEPT_FAILED.match(text)) is not None:
        if _is_verify_failure(failed.group(2)):
            return BrokerRefusal(at=at, address=failed.group(1), detail=failed.group(2)[:200])
    elif _UNKNOWN_GONE.match(text) is not None and pending:
        pending.pop()
    return None
