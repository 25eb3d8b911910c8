"""One MQTT 5 session over mutual TLS (paho-mqtt 2): what the ingest service and the agent use.

:class:`MqttSession` connects with a client certificate (the broker takes the username from its
CN), re-subscribes on every (re)connect, hands each delivered message to a callback, and
publishes at QoS 1, waiting for the PUBACK and returning its MQTT 5 reason code (0 accepted,
0x10 no subscribers, 0x87 not authorized ...). paho's own errors (socket, TLS, timeouts) are
turned into :class:`~iotrust.errors.BackendError` here, at this one seam — except a TLS alert
from the broker during the connection (our certificate revoked, from an unknown CA, expired ...),
which is the broker refusing this identity: :class:`~iotrust.errors.TrustError`
``broker_refused_tls``, at once, never retried. With TLS 1.3 the broker rejects a client
certificate only after the client's side of the handshake completed, so the alert arrives on
paho's network thread; paho reports it only through its log callback, which is where it is read.

The key must be a PEM file (``ssl`` loads it): a key held on a PKCS#11 token cannot be used for
the TLS client handshake by this adapter.

This module does not know what the messages mean (no envelopes, no policies) and does not run a
broker (see :mod:`.mosquitto`).
"""

from __future__ import annotations

import contextlib
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iotrust.errors import BackendError, InputError, TrustError

#: PUBACK reason codes below this are successes (MQTT 5 §3.4.2.1).
FIRST_FAILURE_CODE: Final = 0x80
NOT_AUTHORIZED: Final = 0x87
MAX_PORT: Final = 65535
#: OpenSSL's name for a TLS alert the peer sent, e.g. ``SSLV3_ALERT_CERTIFICATE_REVOKED``.
_TLS_ALERT: Final = re.compile(r"\b(?:SSLV3|TLSV1|TLSV13)_ALERT_([A-Z_]{1,64})\b")

MessageHandler = Callable[[str, bytes], None]


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """Where the broker listens and the files of this client's TLS identity."""

    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not 0 < self.port <= MAX_PORT:
            raise InputError(f"invalid broker port {self.port!r:.10}", reason="invalid_port")
        if not self.host or any(c.isspace() for c in self.host):
            raise InputError("invalid broker host", reason="invalid_host")

    def tls_context(self) -> ssl.SSLContext:
        """Verify the broker against ``ca_file``; present ``cert_file`` with ``key_file``."""
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise InputError(f"cannot load the MQTT TLS identity: {type(exc).__name__}",
                             reason="mqtt_tls_identity") from None
        return ctx


class MqttSession:
    """A paho-mqtt 2 client (MQTT 5, mTLS) with QoS 1 publishes that report their PUBACK."""

    def __init__(self, endpoint: MqttEndpoint, *, client_id: str,
                 on_message: MessageHandler | None = None, subscriptions: Sequence[str] = (),
                 clean_start: bool = True, session_expiry_s: int = 0,
                 timeout: float = 10.0, max_inflight: int = 100) -> None:
        self.endpoint = endpoint
        self._timeout = timeout
        self._handler = on_message
        self._subscriptions = tuple(subscriptions)
        self._clean_start = clean_start
        self._expiry = session_expiry_s
        self._cond = threading.Condition()
        self._acks: dict[int, int] = {}
        self._connack: int | None = None
        self._tls_alert: str | None = None  # a TLS alert from the broker before any CONNACK
        self._suback_mids: set[int] = set()
        self._subscribed = False
        self._started = False
        self._closed = False
        self.connects = 0
        self.disconnects = 0
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        client.tls_set_context(endpoint.tls_context())
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.max_inflight_messages_set(max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_log = self._on_log
        self._client = client

    # -- paho callbacks (its network thread) ------------------------------------------------

    def _on_connect(self, client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:  # noqa: ANN401
        code = int(getattr(rc, "value", rc))
        mids = set()
        if code < FIRST_FAILURE_CODE:
            for topic in self._subscriptions:
                _rc, mid = client.subscribe(topic, qos=1)
                if mid is not None:
                    mids.add(mid)
        with self._cond:
            self._suback_mids |= mids
            self._connack = code
            self.connects += 1
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:  # noqa: ANN401
        with self._cond:
            self.disconnects += 1
            self._cond.notify_all()

    def _on_log(self, _c: Any, _u: Any, level: int, message: str) -> None:  # noqa: ANN401
        if level != mqtt.MQTT_LOG_ERR:
            return
        alert = _tls_alert(message)
        if alert is None:
            return
        with self._cond:
            if self._connack is None:  # refused at the handshake, not dropped later
                self._tls_alert = alert
                self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:  # noqa: ANN401
        if self._handler is not None:
            self._handler(msg.topic, bytes(msg.payload))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, _rcs: Any, _p: Any) -> None:  # noqa: ANN401
        with self._cond:
            self._suback_mids.discard(mid)
            if not self._suback_mids:
                self._subscribed = True
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:  # noqa: ANN401
        with self._cond:
            self._acks[mid] = int(getattr(rc, "value", rc))
            self._cond.notify_all()

    # -- API ---------------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect, wait for the CONNACK (and the SUBACKs); paho reconnects by itself afterwards.

        Raises:
            TrustError: ``broker_refused_tls`` — the broker refused this client's certificate
                with a TLS alert (revoked, unknown CA, expired ...).
            BackendError: ``broker_unreachable`` (network, a TLS failure on this side),
                ``broker_refused`` (a failing CONNACK), ``broker_timeout``.
        """
        props = None
        if self._expiry:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho
            props.SessionExpiryInterval = self._expiry
        with self._cond:
            self._connack = None
            self._tls_alert = None
            self._subscribed = not self._subscriptions
        try:
            self._client.connect(self.endpoint.host, self.endpoint.port, keepalive=30,
                                 clean_start=self._clean_start, properties=props)
        except (OSError, ssl.SSLError) as exc:
            alert = _tls_alert(str(exc)) if isinstance(exc, ssl.SSLError) else None
            if alert is not None:  # TLS 1.2: the broker's alert ends the handshake itself
                raise _refused_tls(self.endpoint, alert) from None
            raise BackendError(f"cannot reach the broker at {self.endpoint.host}:"
                               f"{self.endpoint.port}: {type(exc).__name__}",
                               reason="broker_unreachable") from None
        if not self._started:
            self._client.loop_start()
            self._started = True
        deadline = time.monotonic() + self._timeout
        with self._cond:
            while self._connack is None or (
                    self._connack < FIRST_FAILURE_CODE and not self._subscribed):
                if self._connack is None and self._tls_alert is not None:
                    raise _refused_tls(self.endpoint, self._tls_alert)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendError("the broker did not answer the connection",
                                       reason="broker_timeout")
                self._cond.wait(left)
            if self._connack >= FIRST_FAILURE_CODE:
                raise BackendError(f"the broker refused the connection (0x{self._connack:02x})",
                                   reason="broker_refused")

    @property
    def connected(self) -> bool:
        """Whether the session is up right now."""
        return bool(self._client.is_connected())

    def publish(self, topic: str, payload: bytes, *, timeout: float | None = None) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (0 accepted, 0x87 refused ...).

        Raises:
            BackendError: ``broker_unavailable`` when the message cannot be sent,
                ``broker_timeout`` when no PUBACK arrives in time.
        """
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BackendError("the broker session is down", reason="broker_unavailable")
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        with self._cond:
            while info.mid not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendError("no PUBACK from the broker", reason="broker_timeout")
                self._cond.wait(left)
            return self._acks.pop(info.mid)

    def close(self) -> None:
        """Disconnect (a clean DISCONNECT) and stop the network thread."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # paho may raise anything on a dead socket
            self._client.disconnect()
        if self._started:
            self._client.loop_stop()
            self._started = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _tls_alert(message: str) -> str | None:
    """The alert named in an OpenSSL error text (``certificate_revoked``), or ``None``."""
    found = _TLS_ALERT.search(message)
    return found.group(1).lower() if found is not None else None


def _refused_tls(endpoint: MqttEndpoint, alert: str) -> TrustError:
    return TrustError(f"the broker at {endpoint.host}:{endpoint.port} refused this client's "
                      f"certificate at the TLS handshake (alert: {alert})",
                      reason="broker_refused_tls")
