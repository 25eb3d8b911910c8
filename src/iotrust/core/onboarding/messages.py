"""The five onboarding messages (protocol version 1) and their one parse boundary each.

Each message is an immutable value that checks its sizes and encodings in its constructor, so an
invalid message cannot exist. ``from_wire`` parses untrusted JSON bytes (bounded in size, depth,
field set and every field's length) and raises only :class:`~iotrust.errors.InputError` with reason
``malformed_request``; ``to_wire`` writes canonical JSON (sorted keys, no whitespace). Binary
fields travel as base64url without padding; times as ``YYYY-MM-DDTHH:MM:SSZ``.

This module parses and writes; it does not parse certificates, CSRs or vouchers (their bytes are
carried verbatim) and it decides nothing: see :mod:`.server` and :mod:`.device`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final

from iotrust.core.ids import DEVICE_ID_RE, SERIAL_RE
from iotrust.core.onboarding import _wire as w
from iotrust.core.onboarding.reasons import malformed

PROTOCOL_VERSION: Final = 1
SESSION_ID_BYTES: Final = 16
NONCE_BYTES: Final = 32
MAX_CHAIN_CERTIFICATES: Final = 4
MAX_CERTIFICATE_BYTES: Final = 8 * 1024
MAX_CSR_BYTES: Final = 4 * 1024
MAX_SIGNATURE_BYTES: Final = 72  # DER Ecdsa-Sig-Value for P-256 is at most 72 bytes
MIN_SIGNATURE_BYTES: Final = 8
MAX_VOUCHER_BYTES: Final = 16 * 1024
MAX_UPDATE_ROOT_BYTES: Final = 64 * 1024
MAX_POLICY_RULES: Final = 256
MAX_SERIAL_CHARS: Final = 64
MAX_SERVER_ID_CHARS: Final = 64
MAX_HOST_CHARS: Final = 253
DEVICE_ID_CHARS: Final = 30
MAX_KEY_STORAGE_CHARS: Final = 16

#: What a device may state about where its keys live (``HelloRequest.key_storage``): the device
#: record's vocabulary (:class:`~iotrust.core.lifecycle.KeyStorage`) without ``unknown``, which is
#: what an absent field means. ``file`` is a development key file; ``software`` a key protected
#: only by the operating system; ``pkcs11`` a key behind a PKCS#11 token that never exports it.
KEY_STORAGE_CLAIMS: Final = frozenset(
    {"none", "file", "software", "pkcs11", "secure_element", "tpm"})

#: Size bound of each message body, in bytes.
MAX_HELLO_REQUEST_BYTES: Final = 64 * 1024
MAX_HELLO_RESPONSE_BYTES: Final = 32 * 1024
MAX_ATTEST_REQUEST_BYTES: Final = 16 * 1024
MAX_ATTEST_RESPONSE_BYTES: Final = 256 * 1024
MAX_CONFIRM_REQUEST_BYTES: Final = 4 * 1024

SERVER_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")
HOST_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")


def _version(obj: Mapping[str, object]) -> None:
    w.get_int(obj, "version", low=PROTOCOL_VERSION, high=PROTOCOL_VERSION)


def _check_bytes(value: object, what: str, *, min_len: int, max_len: int) -> None:
    if not isinstance(value, bytes) or not min_len <= len(value) <= max_len:
        raise malformed(f"{what} must be {min_len}..{max_len} bytes")


def _check_text(value: object, what: str, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise malformed(f"{what} is not acceptable")


def _check_ders(values: object, what: str, *, min_count: int) -> None:
    if not isinstance(values, tuple) or not min_count <= len(values) <= MAX_CHAIN_CERTIFICATES:
        raise malformed(f"{what} must hold {min_count}..{MAX_CHAIN_CERTIFICATES} certificates")
    for value in values:
        _check_bytes(value, f"{what} entry", min_len=1, max_len=MAX_CERTIFICATE_BYTES)


def _ders(obj: Mapping[str, object], key: str, *, min_count: int) -> tuple[bytes, ...]:
    items = w.get_list(obj, key, min_len=min_count, max_len=MAX_CHAIN_CERTIFICATES)
    return tuple(w.b64d(v, f"{key} entry", min_len=1, max_len=MAX_CERTIFICATE_BYTES)
                 for v in items)


def _check_key_storage(value: object) -> None:
    if value is not None and value not in KEY_STORAGE_CLAIMS:
        raise malformed(f"key_storage must be one of {sorted(KEY_STORAGE_CLAIMS)}")


@dataclass(frozen=True, slots=True)
class HelloRequest:
    """Device → server: ``POST /v1/onboarding/hello``.

    ``key_storage`` is where the device says its keys live (:data:`KEY_STORAGE_CLAIMS`); ``None``
    (the field absent, as from clients older than the field) means ``unknown``. The claim is
    covered by the factory key's attest signature (see :mod:`.transcript`), so it cannot be
    changed in flight; the server still never trusts it beyond the model's hardware profile.
    """

    serial: str
    factory_chain: tuple[bytes, ...]  # DER, leaf first, then intermediates (no root needed)
    device_nonce: bytes
    key_storage: str | None = None
    version: int = PROTOCOL_VERSION

    MAX_BYTES: ClassVar[int] = MAX_HELLO_REQUEST_BYTES
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"version", "serial", "factory_chain", "device_nonce"})
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"key_storage"})

    def __post_init__(self) -> None:
        if self.version != PROTOCOL_VERSION or isinstance(self.version, bool):
            raise malformed("unsupported protocol version")
        _check_text(self.serial, "serial", SERIAL_RE)
        _check_ders(self.factory_chain, "factory_chain", min_count=1)
        _check_bytes(self.device_nonce, "device_nonce", min_len=NONCE_BYTES, max_len=NONCE_BYTES)
        _check_key_storage(self.key_storage)

    @classmethod
    def from_wire(cls, data: bytes) -> HelloRequest:
        """Parse untrusted bytes; only :class:`~iotrust.errors.InputError` escapes."""
        obj = w.parse_object(data, max_bytes=cls.MAX_BYTES, keys=cls.FIELDS, what="hello",
                             optional=cls.OPTIONAL)
        _version(obj)
        storage = (w.get_str(obj, "key_storage", max_len=MAX_KEY_STORAGE_CHARS)
                   if "key_storage" in obj else None)
        return cls(
            serial=w.get_str(obj, "serial", max_len=MAX_SERIAL_CHARS, pattern=SERIAL_RE),
            factory_chain=_ders(obj, "factory_chain", min_count=1),
            device_nonce=w.b64d(obj["device_nonce"], "device_nonce",
                                min_len=NONCE_BYTES, max_len=NONCE_BYTES),
            key_storage=storage,
        )

    def to_json_value(self) -> dict[str, object]:
        """The JSON object this message is on the wire (``key_storage`` only when stated)."""
        value: dict[str, object] = {
            "version": self.version, "serial": self.serial,
            "factory_chain": [w.b64e(c) for c in self.factory_chain],
            "device_nonce": w.b64e(self.device_nonce)}
        if self.key_storage is not None:
            value["key_storage"] = self.key_storage
        return value

    def to_wire(self) -> bytes:
        """Canonical JSON bytes."""
        return w.to_json(self.to_json_value())


@dataclass(frozen=True, slots=True)
class HelloResponse:
    """Server → device: the session, a single-use server nonce and the device's voucher."""

    session_id: bytes
    server_nonce: bytes
    server_id: str
    voucher: bytes  # the voucher exactly as imported (its wire bytes)
    expires_at: datetime
    version: int = PROTOCOL_VERSION

    MAX_BYTES: ClassVar[int] = MAX_HELLO_RESPONSE_BYTES
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"version", "session_id", "server_nonce", "server_id", "voucher", "expires_at"})

    def __post_init__(self) -> None:
        if self.version != PROTOCOL_VERSION or isinstance(self.version, bool):
            raise malformed("unsupported protocol version")
        _check_bytes(self.session_id, "session_id",
                     min_len=SESSION_ID_BYTES, max_len=SESSION_ID_BYTES)
        _check_bytes(self.server_nonce, "server_nonce", min_len=NONCE_BYTES, max_len=NONCE_BYTES)
        _check_text(self.server_id, "server_id", SERVER_ID_RE)
        _check_bytes(self.voucher, "voucher", min_len=0, max_len=MAX_VOUCHER_BYTES)
        w.check_time(self.expires_at, "expires_at")

    @classmethod
    def from_wire(cls, data: bytes) -> HelloResponse:
        """Parse untrusted bytes; only :class:`~iotrust.errors.InputError` escapes."""
        obj = w.parse_object(data, max_bytes=cls.MAX_BYTES, keys=cls.FIELDS,
                             what="hello response")
        _version(obj)
        return cls(
            session_id=w.b64d(obj["session_id"], "session_id",
                              min_len=SESSION_ID_BYTES, max_len=SESSION_ID_BYTES),
            server_nonce=w.b64d(obj["server_nonce"], "server_nonce",
                                min_len=NONCE_BYTES, max_len=NONCE_BYTES),
            server_id=w.get_str(obj, "server_id", max_len=MAX_SERVER_ID_CHARS,
                                pattern=SERVER_ID_RE),
            voucher=w.b64d(obj["voucher"], "voucher", max_len=MAX_VOUCHER_BYTES),
            expires_at=w.parse_time(obj["expires_at"], "expires_at"),
        )

    def to_json_value(self) -> dict[str, object]:
        """The JSON object this message is on the wire."""
        return {"version": self.version, "session_id": w.b64e(self.session_id),
                "server_nonce": w.b64e(self.server_nonce), "server_id": self.server_id,
                "voucher": w.b64e(self.voucher), "expires_at": w.format_time(self.expires_at)}

    def to_wire(self) -> bytes:
        """Canonical JSON bytes."""
        return w.to_json(self.to_json_value())


@dataclass(frozen=True, slots=True)
class AttestRequest:
    """Device → server: the CSR for the new operational key, signed over the attest transcript.

    ``server_nonce`` is sent back because the server keeps only its SHA-256; ``serial`` binds the
    request to the session's device before any signature is checked.
    """

    session_id: bytes
    serial: str
    server_nonce: bytes
    csr: bytes  # DER PKCS#10
    signature: bytes  # DER ECDSA-SHA256 by the factory key over attest_transcript(...)
    version: int = PROTOCOL_VERSION

    MAX_BYTES: ClassVar[int] = MAX_ATTEST_REQUEST_BYTES
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"version", "session_id", "serial", "server_nonce", "csr", "signature"})

    def __post_init__(self) -> None:
        if self.version != PROTOCOL_VERSION or isinstance(self.version, bool):
            raise malformed("unsupported protocol version")
        _check_bytes(self.session_id, "session_id",
                     min_len=SESSION_ID_BYTES, max_len=SESSION_ID_BYTES)
        _check_text(self.serial, "serial", SERIAL_RE)
        _check_bytes(self.server_nonce, "server_nonce", min_len=NONCE_BYTES, max_len=NONCE_BYTES)
        _check_bytes(self.csr, "csr", min_len=1, max_len=MAX_CSR_BYTES)
        _check_bytes(self.signature, "signature",
                     min_len=MIN_SIGNATURE_BYTES, max_len=MAX_SIGNATURE_BYTES)

    @classmethod
    def from_wire(cls, data: bytes) -> AttestRequest:
        """Parse untrusted bytes; only :class:`~iotrust.errors.InputError` escapes."""
        obj = w.parse_object(data, max_bytes=cls.MAX_BYTES, keys=cls.FIELDS, what="attest")
        _version(obj)
        return cls(
            session_id=w.b64d(obj["session_id"], "session_id",
                              min_len=SESSION_ID_BYTES, max_len=SESSION_ID_BYTES),
            serial=w.get_str(obj, "serial", max_len=MAX_SERIAL_CHARS, pattern=SERIAL_RE),
            server_nonce=w.b64d(obj["server_nonce"], "server_nonce",
                                min_len=NONCE_BYTES, max_len=NONCE_BYTES),
            csr=w.b64d(obj["csr"], "csr", min_len=1, max_len=MAX_CSR_BYTES),
            signature=w.b64d(obj["signature"], "signature",
                             min_len=MIN_SIGNATURE_BYTES, max_len=MAX_SIGNATURE_BYTES),
        )

    def to_json_value(self) -> dict[str, object]:
        """The JSON object this message is on the wire."""
        return {"version": self.version, "session_id": w.b64e(self.session_id),
                "serial": self.serial, "server_nonce": w.b64e(self.server_nonce),
                "csr": w.b64e(self.csr), "signature": w.b64e(self.signature)}

    def to_wire(self) -> bytes:
        """Canonical JSON bytes."""
        return w.to_json(self.to_json_value())


@dataclass(frozen=True, slots=True)
class Broker:
    """Where the device connects with its operational credential (MQTT over TLS)."""

    host: str
    port: int

    def __post_init__(self) -> None:
        _check_text(self.host, "broker host", HOST_RE)
        if not isinstance(self.port, int) or isinstance(self.port, bool) \
                or not 1 <= self.port <= 65535:  # noqa: PLR2004 - the TCP port range
            raise malformed("broker port must be 1..65535")


def _check_policy(rules: object) -> None:
    if not isinstance(rules, tuple) or len(rules) > MAX_POLICY_RULES:
        raise malformed(f"policy must hold at most {MAX_POLICY_RULES} rules")
    for rule in rules:
        if not isinstance(rule, dict):
            raise malformed("each policy rule must be a JSON object")


def _rules(items: list[object]) -> tuple[dict[str, Any], ...]:
    rules: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise malformed("each policy rule must be a JSON object")
        rules.append(item)
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class AttestResponse:
    """Server → device: the operational certificate and what the device needs to operate.

    ``policy`` rules are opaque to this module (JSON objects, bounded in number and depth);
    ``update_root`` is the update repository's trusted root, opaque bytes, possibly empty.
    """

    device_id: str
    certificate: bytes
    ca_chain: tuple[bytes, ...]  # issuing CA first, the operational root last
    broker: Broker
    update_root: bytes
    policy: tuple[dict[str, Any], ...]
    confirm_by: datetime
    version: int = PROTOCOL_VERSION

    MAX_BYTES: ClassVar[int] = MAX_ATTEST_RESPONSE_BYTES
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"version", "device_id", "certificate", "ca_chain", "broker", "update_root", "policy",
         "confirm_by"})

    def __post_init__(self) -> None:
        if self.version != PROTOCOL_VERSION or isinstance(self.version, bool):
            raise malformed("unsupported protocol version")
        _check_text(self.device_id, "device_id", DEVICE_ID_RE)
        _check_bytes(self.certificate, "certificate", min_len=1, max_len=MAX_CERTIFICATE_BYTES)
        _check_ders(self.ca_chain, "ca_chain", min_count=1)
        if not isinstance(self.broker, Broker):
            raise malformed("broker must be a Broker")
        _check_bytes(self.update_root, "update_root", min_len=0, max_len=MAX_UPDATE_ROOT_BYTES)
        _check_policy(self.policy)
        w.check_time(self.confirm_by, "confirm_by")

    @classmethod
    def from_wire(cls, data: bytes) -> AttestResponse:
        """Parse untrusted bytes; only :class:`~iotrust.errors.InputError` escapes."""
        obj = w.parse_object(data, max_bytes=cls.MAX_BYTES, keys=cls.FIELDS,
                             what="attest response")
        _version(obj)
        broker = obj["broker"]
        if not isinstance(broker, dict) or frozenset(broker) != {"host", "port"}:
            raise malformed("broker must be an object with exactly host and port")
        rules = w.get_list(obj, "policy", min_len=0, max_len=MAX_POLICY_RULES)
        return cls(
            device_id=w.get_str(obj, "device_id", max_len=DEVICE_ID_CHARS, pattern=DEVICE_ID_RE),
            certificate=w.b64d(obj["certificate"], "certificate", min_len=1,
                               max_len=MAX_CERTIFICATE_BYTES),
            ca_chain=_ders(obj, "ca_chain", min_count=1),
            broker=Broker(host=w.get_str(broker, "host", max_len=MAX_HOST_CHARS, pattern=HOST_RE),
                          port=w.get_int(broker, "port", low=1, high=65535)),
            update_root=w.b64d(obj["update_root"], "update_root", max_len=MAX_UPDATE_ROOT_BYTES),
            policy=_rules(rules),
            confirm_by=w.parse_time(obj["confirm_by"], "confirm_by"),
        )

    def to_json_value(self) -> dict[str, object]:
        """The JSON object this message is on the wire."""
        return {"version": self.version, "device_id": self.device_id,
                "certificate": w.b64e(self.certificate),
                "ca_chain": [w.b64e(c) for c in self.ca_chain],
                "broker": {"host": self.broker.host, "port": self.broker.port},
                "update_root": w.b64e(self.update_root), "policy": list(self.policy),
                "confirm_by": w.format_time(self.confirm_by)}

    def to_wire(self) -> bytes:
        """Canonical JSON bytes."""
        return w.to_json(self.to_json_value())


@dataclass(frozen=True, slots=True)
class ConfirmRequest:
    """Device → server: proof that the device holds and uses its new operational key."""

    session_id: bytes
    device_id: str
    server_nonce: bytes
    signature: bytes  # DER ECDSA-SHA256 by the operational key over confirm_transcript(...)
    version: int = PROTOCOL_VERSION

    MAX_BYTES: ClassVar[int] = MAX_CONFIRM_REQUEST_BYTES
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"version", "session_id", "device_id", "server_nonce", "signature"})

    def __post_init__(self) -> None:
        if self.version != PROTOCOL_VERSION or isinstance(self.version, bool):
            raise malformed("unsupported protocol version")
        _check_bytes(self.session_id, "session_id",
                     min_len=SESSION_ID_BYTES, max_len=SESSION_ID_BYTES)
        _check_text(self.device_id, "device_id", DEVICE_ID_RE)
        _check_bytes(self.server_nonce, "server_nonce", min_len=NONCE_BYTES, max_len=NONCE_BYTES)
        _check_bytes(self.signature, "signature",
                     min_len=MIN_SIGNATURE_BYTES, max_len=MAX_SIGNATURE_BYTES)

    @classmethod
    def from_wire(cls, data: bytes) -> ConfirmRequest:
        """Parse untrusted bytes; only :class:`~iotrust.errors.InputError` escapes."""
        obj = w.parse_object(data, max_bytes=cls.MAX_BYTES, keys=cls.FIELDS, what="confirm")
        _version(obj)
        return cls(
            session_id=w.b64d(obj["session_id"], "session_id",
                              min_len=SESSION_ID_BYTES, max_len=SESSION_ID_BYTES),
            device_id=w.get_str(obj, "device_id", max_len=DEVICE_ID_CHARS, pattern=DEVICE_ID_RE),
            server_nonce=w.b64d(obj["server_nonce"], "server_nonce",
                                min_len=NONCE_BYTES, max_len=NONCE_BYTES),
            signature=w.b64d(obj["signature"], "signature",
                             min_len=MIN_SIGNATURE_BYTES, max_len=MAX_SIGNATURE_BYTES),
        )

    def to_json_value(self) -> dict[str, object]:
        """The JSON object this message is on the wire."""
        return {"version": self.version, "session_id": w.b64e(self.session_id),
                "device_id": self.device_id, "server_nonce": w.b64e(self.server_nonce),
                "signature": w.b64e(self.signature)}

    def to_wire(self) -> bytes:
        """Canonical JSON bytes."""
        return w.to_json(self.to_json_value())

