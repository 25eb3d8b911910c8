"""The MQTT side of the soak (:mod:`benchmarks.soak`): broker, ingest, devices that publish.

* :func:`broker_and_ingest` writes the trust domain's embedded Mosquitto configuration the way
  ``iotrust broker config`` does (:func:`iotrust.services.broker.configure`: server certificate,
  CA bundle, verified CRL, ACL from the registry, the ``ingest@iotrust`` grant) on a free
  loopback port, runs Mosquitto on it (``user root`` when run as root) and runs
  ``iotrust ingest run`` (database sink) as its own process. The ``iotrust serve`` workers find
  the broker in the data folder and apply quarantine, release, retirement and rotation to it
  (rules and reload, CRL, kicks) before they answer.
* :class:`Burst` is one device's connection for one publish burst: paho-mqtt 2 (MQTT 5, mutual
  TLS with the device's current operational certificate, QoS 1), driven by ``loop()`` in the
  calling thread (no paho network thread), closed after the burst. So the number of connected
  devices is at most the number of publisher threads, and every burst makes a fresh TLS
  handshake (the moment the CRL is checked).
* :class:`Ledger` keeps every message's fate (what the broker answered, what it should have
  answered) and, at the end, matches it with what ingest stored (:func:`ingest_report`).

This module measures and reports; it decides nothing about trust.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion

from iotrust.adapters.mqtt.mosquitto import (
    BrokerSettings,
    MosquittoProcess,
    find_dynsec_plugin,
    find_mosquitto,
    free_port,
)
from iotrust.adapters.sql.store import Database
from iotrust.core.envelope import kid_for_serial, seal
from iotrust.ports import Signer, SystemClock
from iotrust.services import broker as broker_svc
from iotrust.services import ingest as ingest_svc
from iotrust.services.domain import Secrets
from iotrust.services.settings import Settings

FIRST_FAILURE = 0x80
NOT_AUTHORIZED = 0x87
CONNECT_TIMEOUT_S = 15.0
PUBACK_TIMEOUT_S = 15.0
#: A message accepted by the broker but not stored by ingest is expected (not an error) when its
#: device changed state (rotation revokes the old credential, quarantine, retirement) after it
#: was sealed and before ingest decided it: ingest decides with the registry as it is when the
#: message arrives. "Before" is bounded by the largest publish-to-ingest delay seen in the run
#: plus this margin, and is never shorter than :data:`MIN_CHANGE_WINDOW_MS`.
CHANGE_MARGIN_MS = 5_000
MIN_CHANGE_WINDOW_MS = 30_000
PAGE = 10_000


def missing() -> str | None:
    """Why the MQTT side cannot run here (``None`` if it can)."""
    if find_mosquitto() is None:
        return "mosquitto is not installed"
    if find_dynsec_plugin() is None:
        return "the mosquitto dynamic-security plugin is not installed"
    return None


# --- broker and ingest processes -----------------------------------------------------------------

@dataclass(slots=True)
class MqttSide:
    """The running broker and ingest processes."""

    port: int
    ca_file: Path
    broker_pid: int
    ingest: subprocess.Popen[bytes]
    ingest_stats: dict[str, Any] = field(default_factory=dict)
    #: The broker's files that grow with the registry (sampled with the RSS: label -> path).
    files: dict[str, Path] = field(default_factory=dict)


def _ingest_env(settings: Settings, passphrase: bytes) -> dict[str, str]:
    env = {**os.environ, "IOTRUST_DATA": str(settings.data_dir),
           "IOTRUST_DATABASE_URL": settings.database_url,
           "IOTRUST_PASSPHRASE": passphrase.decode()}
    env.pop("IOTRUST_PASSPHRASE_FILE", None)
    return env


@contextmanager
def broker_and_ingest(settings: Settings, passphrase: bytes) -> Iterator[MqttSide]:
    """Configure and run Mosquitto, then ``iotrust ingest run``; stop both afterwards."""
    db = Database.open(settings.database_url)
    try:
        broker = broker_svc.configure(
            db, settings, Secrets(passphrase=passphrase), SystemClock(),
            broker_settings=BrokerSettings(port=free_port(),
                                           services=(ingest_svc.INGEST_GRANT,)))
    finally:
        db.close()
    process = MosquittoProcess(broker)
    process.start()
    try:
        log = settings.data_dir / "ingest.log"
        out = settings.data_dir / "ingest.json"
        with log.open("wb") as err, out.open("wb") as sink:
            ingest = subprocess.Popen(
                [sys.executable, "-m", "iotrust.cli.main", "--json", "ingest", "run"],
                env=_ingest_env(settings, passphrase), stdout=sink, stderr=err)
        side = MqttSide(port=broker.settings.port, ca_file=broker.layout.ca,
                        broker_pid=process.proc.pid if process.proc else 0, ingest=ingest,
                        files={"broker.crl": broker.layout.crl,
                               "broker.dynsec": broker.layout.dynsec,
                               "broker.acl": broker.layout.acl})
        try:
            deadline = time.monotonic() + 60
            while b"subscribed" not in log.read_bytes():
                if ingest.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"iotrust ingest did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
            yield side
        finally:
            if ingest.poll() is None:
                ingest.send_signal(signal.SIGTERM)
                try:
                    ingest.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    ingest.kill()
                    ingest.wait()
            with suppress(ValueError, OSError):
                side.ingest_stats = json.loads(out.read_text() or "{}")
    finally:
        process.stop()


# --- one device's publish burst ------------------------------------------------------------------

def write_identity(folder: Path, device_id: str, serial: str, key: ec.EllipticCurvePrivateKey,
                   certificate_der: bytes) -> tuple[Path, Path]:
    """The device's certificate and key as PEM files (what its TLS stack loads)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert = folder / f"{device_id}-{serial}.crt.pem"
    key_path = folder / f"{device_id}-{serial}.key.pem"
    from cryptography import x509  # noqa: PLC0415 - only here

    cert.write_bytes(x509.load_der_x509_certificate(certificate_der).public_bytes(
        serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key_path


class Burst:
    """One MQTT 5 connection over mutual TLS, driven from the calling thread."""

    def __init__(self, port: int, ca_file: Path, cert_file: Path, key_file: Path,
                 client_id: str) -> None:
        self._port = port
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.load_cert_chain(str(cert_file), str(key_file))
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=mqtt.MQTTv5)
        self._client.tls_set_context(ctx)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self.connack: int | None = None
        self.gone: str | None = None
        self._acks: dict[int, int] = {}

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connack = int(getattr(rc, "value", rc))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.gone = self.gone or f"disconnected ({rc})"

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        self._acks[mid] = int(getattr(rc, "value", rc))

    def _pump(self) -> None:
        try:
            rc = self._client.loop(timeout=0.02)
        except (OSError, ssl.SSLError) as exc:
            self.gone = self.gone or f"{type(exc).__name__}: {exc}"[:120]
            return
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self.gone = self.gone or f"connection lost ({mqtt.error_string(rc)})"

    def connect(self) -> str | None:
        """``None`` once the broker accepted the connection, else why it did not."""
        try:
            self._client.connect("127.0.0.1", self._port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            return f"handshake: {type(exc).__name__}: {exc}"[:160]
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while self.connack is None and self.gone is None:
            if time.monotonic() > deadline:
                return "timeout: no CONNACK"
            self._pump()
        if self.connack is not None and self.connack < FIRST_FAILURE:
            return None
        return f"CONNACK 0x{self.connack:02x}" if self.connack is not None else str(self.gone)

    def publish(self, topic: str, payload: bytes) -> int | str:
        """The PUBACK reason code, or why there was none."""
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return f"not sent ({mqtt.error_string(info.rc)})"
        deadline = time.monotonic() + PUBACK_TIMEOUT_S
        while info.mid not in self._acks:
            if self.gone is not None:
                return str(self.gone)
            if time.monotonic() > deadline:
                return "timeout: no PUBACK"
            self._pump()
        return self._acks.pop(info.mid)

    def close(self) -> None:
        """Send DISCONNECT and close the socket."""
        with suppress(Exception):  # paho may raise anything on a dead socket
            self._client.disconnect()
            self._client.loop(timeout=0.01)


# --- what happened to every message --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Sent:
    """One sealed message and the broker's answer."""

    device_id: str
    counter: int
    sealed_ms: int
    expect_accept: bool
    answer: int | str  # PUBACK reason code, or why there was none


@dataclass(slots=True)
class Ledger:
    """Every message sealed in the soak (thread-safe through ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: list[Sent] = field(default_factory=list)

    def add(self, item: Sent) -> None:
        with self.lock:
            self.sent.append(item)


def seal_telemetry(signer: Signer, device_id: str, serial: str, counter: int,
                   n: int) -> tuple[str, bytes, int]:
    """``(topic, envelope, device time ms)`` for one small telemetry reading."""
    topic = f"devices/{device_id}/telemetry"
    now_ms = int(time.time() * 1000)
    body = json.dumps({"n": n, "t": 21.5}, separators=(",", ":")).encode()
    data = seal(body, signer=signer, device_id=device_id, counter=counter, timestamp=now_ms,
                topic=topic, content_type="application/json", kid=kid_for_serial(serial))
    return topic, data, now_ms


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def stored_messages(database_url: str) -> list[tuple[str, int, datetime, int]]:
    """``(device, counter, received_at, device time ms)`` of every message ingest stored."""
    db = Database.open(database_url)
    out: list[tuple[str, int, datetime, int]] = []
    try:
        after = 0
        while True:
            with db.transaction(readonly=True) as tx:
                page = tx.list_ingested_messages(after_id=after, limit=PAGE)
            out += [(m.device_id, m.counter, at, m.timestamp) for _, at, m in page]
            if len(page) < PAGE:
                return out
            after = page[-1][0]
    finally:
        db.close()


def wait_for_ingest(database_url: str, expected: int, timeout: float = 600.0) -> int:
    """Wait until ingest stored ``expected`` messages or stored nothing for ten seconds.

    A starved ingest process can be tens of seconds behind the publishers; what it has not
    decided when it is stopped (queued in the broker) would look lost.
    """
    db = Database.open(database_url)
    try:
        last, quiet_since = -1, time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with db.transaction(readonly=True) as tx:
                n = tx.count_ingested_messages()
            if n >= expected:
                return n
            if n != last:
                last, quiet_since = n, time.monotonic()
            elif time.monotonic() - quiet_since > 10.0:
                return n
            time.sleep(0.5)
        return last
    finally:
        db.close()


def ingest_report(ledger: Ledger, stored: list[tuple[str, int, datetime, int]],
                  changes_ms: dict[str, list[int]]) -> dict[str, Any]:
    """Match what the broker accepted with what ingest stored.

    Errors: a stored message the broker should have refused (or did refuse); a message the
    broker accepted from an ACTIVE device that ingest did not store although the device did not
    change state between its sealing and the end of the change window (see
    :data:`CHANGE_MARGIN_MS`).
    """
    by_key = {(s.device_id, s.counter): s for s in ledger.sent}
    accepted = {k for k, s in by_key.items() if s.answer == 0}
    stored_keys: set[tuple[str, int]] = set()
    latencies: list[float] = []
    wrongly_stored: list[str] = []
    unknown = 0
    for device_id, counter, received, device_ms in stored:
        key = (device_id, counter)
        stored_keys.add(key)
        sent = by_key.get(key)
        if sent is None:
            unknown += 1
            continue
        at = received if received.tzinfo else received.replace(tzinfo=UTC)  # SQLite: naive UTC
        latencies.append(at.timestamp() * 1000 - device_ms)
        if not sent.expect_accept or sent.answer != 0:
            wrongly_stored.append(f"{device_id}#{counter} (broker answer {sent.answer})")
    window_ms = max(MIN_CHANGE_WINDOW_MS, int(max(latencies, default=0)) + CHANGE_MARGIN_MS)
    missing_after_change = 0
    missing: list[str] = []
    for key in sorted(accepted - stored_keys):
        sent = by_key[key]
        if not sent.expect_accept:
            continue  # already an error at the broker; counted there
        if any(0 <= t - sent.sealed_ms <= window_ms for t in changes_ms.get(key[0], [])):
            missing_after_change += 1
        else:
            missing.append(f"{key[0]}#{key[1]}")
    good = len(accepted) - len(missing) - missing_after_change
    return {"broker_accepted": len(accepted), "stored": len(stored_keys),
            "stored_not_sent_by_soak": unknown,
            "not_stored_after_a_state_change": missing_after_change,
            "change_window_ms": window_ms,
            "errors": len(missing) + len(wrongly_stored),
            "error_rate": (len(missing) + len(wrongly_stored)) / len(accepted) if accepted
            else 0.0,
            "not_stored_without_a_state_change": missing[:20],
            "stored_but_should_be_refused": wrongly_stored[:20],
            "accepted_ok": good,
            "publish_to_ingest_ms": {
                "count": len(latencies),
                "p50": _round(_percentile(latencies, 0.50)),
                "p99": _round(_percentile(latencies, 0.99)),
                "max": _round(max(latencies) if latencies else None)}}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
