"""Signed device messages: a COSE_Sign1 envelope (RFC 9052) with ES256 over the operational key.

A device wraps every message it publishes in a COSE_Sign1 structure signed with its operational
key, so authenticity and freshness travel with the message from the device to the service that
acts on it, through any broker or gateway (DESIGN.md §7, ``docs/protocol.md`` "Signed messages").

Wire form (always tagged, always deterministic)::

    18([ protected: bstr .cbor {1: -7, 3: content type, 4: kid,
                                -65537: device id, -65538: counter,
                                -65539: timestamp (ms), -65540: topic},
         unprotected: {},            # must be empty: nothing outside the signature
         payload: bstr,
         signature: bstr .size 64 ]) # raw r || s, 32 bytes each (RFC 9053 §2.1)

Labels below -65536 are "private use" in the IANA COSE Header Parameters registry (RFC 9052
§3.1); ours are listed in :data:`LABELS`. The signature covers ``Sig_structure =
["Signature1", protected, external_aad = h'', payload]``, encoded deterministically.

Why we write the COSE structure ourselves: pycose 1.1.0 (the maintained Python COSE library) does
not work with cbor2 6.x, which this project pins, and the profile is tiny (one algorithm, one
structure, fixed headers). Owning ~150 lines keeps the parse boundary strict (exact key set,
canonical encoding, bounded sizes, no trailing bytes) and fast. The generic part
(:func:`decode_cose_sign1`, :func:`sig_structure`, :func:`verify_cose_sign1`) is tested against
the COSE working group's published examples (``tests/vectors/cose/``).

Size overhead: 96 fixed bytes (tag, array, heads, labels, alg, 64-byte signature) plus the
encoded content type, kid, device id, counter, timestamp and topic and the payload's length head.
For a typical telemetry message (30-character device id, 16-byte kid, 48-character topic
``devices/<id>/telemetry``, CoAP Content-Format 50, counter below 24, timestamp in ms) the
envelope adds 208 bytes, 64 of them the signature; :func:`overhead` computes it exactly.

This module does not decide whether a message is *acceptable* (credential state, device state,
topic, age, replay: that is :mod:`iotrust.core.ingest`), does no I/O and reads no clock.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from iotrust.core.ids import DEVICE_ID_RE
from iotrust.errors import InputError, TrustError
from iotrust.ports import Signer

COSE_SIGN1_TAG: Final = 18
ALG_ES256: Final = -7

LABEL_ALG: Final = 1
LABEL_CONTENT_TYPE: Final = 3
LABEL_KID: Final = 4
LABEL_DEVICE_ID: Final = -65537
LABEL_COUNTER: Final = -65538
LABEL_TIMESTAMP: Final = -65539
LABEL_TOPIC: Final = -65540

#: Every protected header label of an iotrust envelope and what it carries.
LABELS: Final[Mapping[int, str]] = {
    LABEL_ALG: "alg: -7 (ES256), the only algorithm accepted",
    LABEL_CONTENT_TYPE: "content type: tstr media type or uint CoAP Content-Format",
    LABEL_KID: "kid: serial number of the signing operational certificate (big-endian bytes)",
    LABEL_DEVICE_ID: "iotrust device id (tstr, dev- + 26 base32)",
    LABEL_COUNTER: "per-device monotonic message counter (uint < 2^63)",
    LABEL_TIMESTAMP: "device time when signed, milliseconds since the Unix epoch (uint < 2^63)",
    LABEL_TOPIC: "MQTT topic the message is meant for (tstr)",
}

MAX_ENVELOPE_BYTES: Final = 64 * 1024
MAX_COUNTER: Final = 2**63 - 1
MAX_TIMESTAMP_MS: Final = 2**63 - 1
MAX_TOPIC_BYTES: Final = 1024
MAX_KID_BYTES: Final = 32
MAX_CONTENT_TYPE_CHARS: Final = 128
MAX_CONTENT_FORMAT: Final = 65535
SIGNATURE_BYTES: Final = 64
_COORD: Final = 32
_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())
_SIG1_PREFIX: Final = b"\x84\x6aSignature1"
_MALFORMED: Final = "malformed_envelope"


# -- generic COSE_Sign1 (RFC 9052 §4.2, §4.4) ---------------------------------------------------


_ONE_BYTE: Final = 0x100
_TWO_BYTES: Final = 0x10000
_FOUR_BYTES: Final = 0x100000000


def _head(major: int, n: int) -> bytes:
    """A deterministic CBOR head (RFC 8949 §4.2.1: shortest argument) for ``major`` and ``n``."""
    top = major << 5
    if n < 24:  # noqa: PLR2004 - CBOR: arguments below 24 live in the initial byte
        return bytes((top | n,))
    if n < _ONE_BYTE:
        return bytes((top | 24, n))
    if n < _TWO_BYTES:
        return bytes((top | 25,)) + n.to_bytes(2, "big")
    if n < _FOUR_BYTES:
        return bytes((top | 26,)) + n.to_bytes(4, "big")
    return bytes((top | 27,)) + n.to_bytes(8, "big")


def _bstr_head(n: int) -> bytes:
    """The head of a byte string of ``n`` bytes."""
    return _head(2, n)


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The ``Sig_structure`` bytes a COSE_Sign1 signature covers (RFC 9052 §4.4).

    ``["Signature1", protected, external_aad, payload]`` with definite, shortest lengths.
    """
    return b"".join((_SIG1_PREFIX, _bstr_head(len(protected)), protected,
                     _bstr_head(len(external_aad)), external_aad,
                     _bstr_head(len(payload)), payload))


def der_to_raw(der: bytes) -> bytes:
    """A DER ``Ecdsa-Sig-Value`` as COSE's fixed 64-byte ``r || s`` (RFC 9053 §2.1)."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big")


def raw_to_der(raw: bytes) -> bytes:
    """COSE's 64-byte ``r || s`` as a DER ``Ecdsa-Sig-Value``; ``TypeError`` on a wrong size."""
    if len(raw) != SIGNATURE_BYTES:
        raise TypeError("an ES256 signature is exactly 64 bytes")
    return encode_dss_signature(int.from_bytes(raw[:_COORD], "big"),
                                int.from_bytes(raw[_COORD:], "big"))


@dataclass(frozen=True, slots=True)
class CoseSign1:
    """A decoded COSE_Sign1 structure, not yet verified (any profile, not only iotrust's)."""

    protected: bytes
    protected_header: Mapping[Any, Any]
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes
    tagged: bool


def _decode_one(data: bytes, *, max_depth: int) -> Any:  # noqa: ANN401 - CBOR is untyped
    """Decode exactly one CBOR item: no trailing bytes, no duplicate keys, no indefinite lengths."""
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(stream, semantic_decoders={}, max_depth=max_depth,
                                allow_indefinite=False, allow_duplicate_keys=False)
    item = decoder.decode()
    if stream.tell() != len(data):
        raise ValueError("trailing bytes after the CBOR item")
    return item


def _malformed_cose(what: str) -> InputError:
    return InputError(f"not a well-formed COSE_Sign1 message: {what}", reason="malformed_cose")


def _sign1_parts(data: bytes, *, require_tag: bool) -> CoseSign1:
    item = _decode_one(data, max_depth=8)
    tagged = isinstance(item, cbor2.CBORTag)
    if tagged:
        if item.tag != COSE_SIGN1_TAG:
            raise _malformed_cose("not the COSE_Sign1 tag (18)")
        item = item.value
    elif require_tag:
        raise _malformed_cose("COSE_Sign1 tag 18 missing")
    if not isinstance(item, list | tuple) or len(item) != 4:  # noqa: PLR2004 - RFC 9052 §4.2
        raise _malformed_cose("COSE_Sign1 is an array of four")
    protected, unprotected, payload, signature = item
    if not (isinstance(protected, bytes) and isinstance(unprotected, Mapping)
            and isinstance(payload, bytes) and isinstance(signature, bytes)):
        raise _malformed_cose("member of the wrong type (or a detached payload)")
    header = _decode_one(protected, max_depth=2) if protected else {}
    if not isinstance(header, Mapping):
        raise _malformed_cose("protected header is not a map")
    return CoseSign1(protected=protected, protected_header=header, unprotected=unprotected,
                     payload=payload, signature=signature, tagged=tagged)


def decode_cose_sign1(data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES,
                      require_tag: bool = True) -> CoseSign1:
    """Parse a COSE_Sign1 message (the generic parse boundary): ``InputError`` only.

    Refuses (reason ``malformed_cose``): more than ``max_bytes``, anything but one CBOR item,
    a tag other than 18 (or no tag when ``require_tag``), a wrong array shape or member types,
    a protected header that is not a map, a detached (nil) payload.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _malformed_cose("not bytes")
    if len(data) > max_bytes:
        raise _malformed_cose(f"larger than {max_bytes} bytes")
    try:
        return _sign1_parts(bytes(data), require_tag=require_tag)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the parse boundary: any decoder failure is input
        raise InputError("not a well-formed COSE_Sign1 message", reason="malformed_cose",
                         detail=f"{type(exc).__name__}: {str(exc)[:120]}") from None


def _check_p256(public_key: object) -> ec.EllipticCurvePublicKey:
    if type(public_key) is not _EC_KEY_TYPE and not (
            isinstance(public_key, ec.EllipticCurvePublicKey)
            and isinstance(public_key.curve, ec.SECP256R1)):
        raise TypeError("ES256 needs a P-256 public key")
    if public_key.key_size != _P256_BITS:
        raise TypeError("ES256 needs a P-256 public key")
    return public_key


# The concrete key class of this cryptography build (the fast path of the type check above).
_EC_KEY_TYPE: Final = type(ec.derive_private_key(1, ec.SECP256R1()).public_key())
_P256_BITS: Final = 256


def _verify_es256(public_key: ec.EllipticCurvePublicKey, signature: bytes, to_be_signed: bytes,
                  ) -> None:
    if len(signature) != SIGNATURE_BYTES:
        raise TrustError("the signature is not 64 bytes", reason="signature_invalid")
    try:
        public_key.verify(raw_to_der(signature), to_be_signed, _ECDSA_SHA256)
    except InvalidSignature:
        raise TrustError("the message signature does not verify",
                         reason="signature_invalid") from None


def verify_cose_sign1(msg: CoseSign1, public_key: ec.EllipticCurvePublicKey, *,
                      external_aad: bytes = b"") -> None:
    """Verify an ES256 COSE_Sign1 (``alg`` -7 in the protected header); raise or return None.

    ``TrustError(reason="signature_invalid")`` on any failure, including a missing or other alg.
    """
    key = _check_p256(public_key)
    if msg.protected_header.get(LABEL_ALG) != ALG_ES256:
        raise TrustError("the protected header does not say ES256", reason="signature_invalid")
    _verify_es256(key, msg.signature, sig_structure(msg.protected, msg.payload, external_aad))


# -- the iotrust envelope profile -------------------------------------------------------------


def _fail(what: str) -> InputError:
    return InputError(f"malformed envelope: {what}", reason=_MALFORMED)


def _check_uint(value: object, limit: int, what: str) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise _fail(f"{what} must be an integer in 0..{limit}")
    return value


def _utf8(value: str, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(f"{what} is not valid UTF-8 text") from None


def _topic_bytes(topic: object) -> bytes:
    if not isinstance(topic, str) or not topic:
        raise _fail("topic must be a non-empty string")
    if "+" in topic or "#" in topic or "\x00" in topic:
        raise _fail("topic must not contain wildcards or NUL")
    raw = _utf8(topic, "topic")
    if len(raw) > MAX_TOPIC_BYTES:
        raise _fail(f"topic longer than {MAX_TOPIC_BYTES} bytes")
    return raw


def _content_type_item(value: object) -> bytes:
    if type(value) is int:
        return _head(0, _check_uint(value, MAX_CONTENT_FORMAT, "content format"))
    if (not isinstance(value, str) or not 0 < len(value) <= MAX_CONTENT_TYPE_CHARS
            or not value.isascii() or not value.isprintable()):
        raise _fail("content type must be a printable ASCII media type or a CoAP format")
    return _head(3, len(value)) + value.encode("ascii")


# Labels as deterministic CBOR: 1, 3, 4, then -65537..-65540 (0x3a + 4-byte argument); this is
# also their RFC 8949 §4.2.1 order (bytewise lexicographic order of the encoded keys).
_ALG_ENTRY: Final = b"\xa7\x01\x26"  # map of 7 pairs, then 1: -7
_KEY_CONTENT_TYPE: Final = b"\x03"
_KEY_KID: Final = b"\x04"
_KEY_DEVICE_ID: Final = b"\x3a\x00\x01\x00\x00"
_KEY_COUNTER: Final = b"\x3a\x00\x01\x00\x01"
_KEY_TIMESTAMP: Final = b"\x3a\x00\x01\x00\x02"
_KEY_TOPIC: Final = b"\x3a\x00\x01\x00\x03"


def _check_fields(device_id: object, counter: object, timestamp: object, topic: object,  # noqa: PLR0917 - private, one call shape
                  content_type: object, kid: object) -> tuple[bytes, bytes]:
    """Check every protected field; return the topic's UTF-8 and the content type's CBOR."""
    if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
        raise _fail("device id is not dev- + 26 base32 characters")
    _check_uint(counter, MAX_COUNTER, "counter")
    _check_uint(timestamp, MAX_TIMESTAMP_MS, "timestamp")
    topic_raw = _topic_bytes(topic)
    cty = _content_type_item(content_type)
    if not isinstance(kid, bytes) or not 0 < len(kid) <= MAX_KID_BYTES:
        raise _fail(f"kid must be 1..{MAX_KID_BYTES} bytes")
    return topic_raw, cty


def encode_protected(*, device_id: str, counter: int, timestamp: int, topic: str,
                     content_type: str | int, kid: bytes) -> bytes:
    """The deterministic protected header of an envelope; checks every field first.

    Bad values raise ``InputError(reason="malformed_envelope")``.
    """
    topic_raw, cty = _check_fields(device_id, counter, timestamp, topic, content_type, kid)
    return b"".join((
        _ALG_ENTRY, _KEY_CONTENT_TYPE, cty, _KEY_KID, _head(2, len(kid)), kid,
        _KEY_DEVICE_ID, _head(3, len(device_id)), device_id.encode("ascii"),
        _KEY_COUNTER, _head(0, counter), _KEY_TIMESTAMP, _head(0, timestamp),
        _KEY_TOPIC, _head(3, len(topic_raw)), topic_raw))


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed iotrust envelope whose signature has *not* been checked yet.

    Every field is checked in the constructor, and ``protected`` must be exactly the
    deterministic encoding of the fields, so an envelope whose bytes say something other than
    its fields cannot exist.
    """

    device_id: str
    counter: int
    timestamp: int  # milliseconds since the Unix epoch, device clock
    topic: str
    content_type: str | int
    kid: bytes
    payload: bytes
    signature: bytes
    protected: bytes

    def __post_init__(self) -> None:
        expected = encode_protected(device_id=self.device_id, counter=self.counter,
                                    timestamp=self.timestamp, topic=self.topic,
                                    content_type=self.content_type, kid=self.kid)
        if self.protected != expected:
            raise _fail("protected header is not in deterministic encoding")
        if not isinstance(self.payload, bytes) or len(self.payload) > MAX_ENVELOPE_BYTES:
            raise _fail(f"payload must be at most {MAX_ENVELOPE_BYTES} bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise _fail("signature must be 64 bytes (r || s)")

    @property
    def credential_serial(self) -> str:
        """The signing certificate's serial number as lowercase hex without leading zeros."""
        return format(int.from_bytes(self.kid, "big"), "x")

    def to_be_signed(self) -> bytes:
        """The ``Sig_structure`` bytes the device signed."""
        return sig_structure(self.protected, self.payload)

    def encode(self) -> bytes:
        """The wire bytes: ``18([protected, {}, payload, signature])``."""
        return b"".join((b"\xd2\x84", _bstr_head(len(self.protected)), self.protected, b"\xa0",
                         _bstr_head(len(self.payload)), self.payload,
                         b"\x58\x40", self.signature))


def kid_for_serial(serial_hex: str) -> bytes:
    """The ``kid`` for a certificate serial (lowercase hex): its big-endian bytes, shortest form."""
    value = int(serial_hex, 16)
    if value <= 0:
        raise InputError("certificate serials are positive", reason="invalid_certificate_serial")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def seal(payload: bytes, *, signer: Signer, device_id: str, counter: int, timestamp: int,
         topic: str, content_type: str | int, kid: bytes) -> bytes:
    """Sign ``payload`` into an envelope with the device's operational key; return its bytes.

    ``timestamp`` is the device time in milliseconds since the Unix epoch. Bad field values
    raise ``InputError(reason="malformed_envelope")``; nothing is signed then.
    """
    if not isinstance(payload, bytes):
        raise TypeError("the payload is bytes")
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise _fail(f"payload larger than {MAX_ENVELOPE_BYTES} bytes")
    protected = encode_protected(device_id=device_id, counter=counter, timestamp=timestamp,
                                 topic=topic, content_type=content_type, kid=kid)
    signature = der_to_raw(signer.sign(sig_structure(protected, payload)))
    env = Envelope(device_id=device_id, counter=counter, timestamp=timestamp, topic=topic,
                   content_type=content_type, kid=kid, payload=payload, signature=signature,
                   protected=protected)
    return env.encode()


_ARGUMENT_SIZES: Final = {24: 1, 25: 2, 26: 4, 27: 8}
_SHORTEST_FLOOR: Final = {1: 24, 2: _ONE_BYTE, 4: _TWO_BYTES, 8: _FOUR_BYTES}
_SIGNATURE_HEAD: Final = b"\x58\x40"


def _arg(buf: bytes, pos: int, major: int) -> tuple[int, int]:
    """Read a CBOR head of type ``major`` at ``pos`` (shortest form only): ``(argument, end)``."""
    initial = buf[pos]  # IndexError on truncation: caught at the parse boundary
    if initial >> 5 != major:
        raise _fail("unexpected CBOR major type")
    info = initial & 0x1F
    if info < 24:  # noqa: PLR2004 - CBOR: arguments below 24 live in the initial byte
        return info, pos + 1
    size = _ARGUMENT_SIZES.get(info)
    if size is None or pos + 1 + size > len(buf):
        raise _fail("indefinite, reserved or truncated CBOR head")
    value = int.from_bytes(buf[pos + 1:pos + 1 + size], "big")
    if value < _SHORTEST_FLOOR[size]:
        raise _fail("CBOR argument not in shortest form")
    return value, pos + 1 + size


def _chunk(buf: bytes, pos: int, major: int) -> tuple[bytes, int]:
    """A byte or text string's content at ``pos``: ``(content, end)``."""
    n, pos = _arg(buf, pos, major)
    end = pos + n
    if end > len(buf):
        raise _fail("truncated string")
    return buf[pos:end], end


_PREFIX: Final = _ALG_ENTRY + _KEY_CONTENT_TYPE
_PREFIX_LEN: Final = len(_PREFIX)
_LABEL_LEN: Final = len(_KEY_DEVICE_ID)


def _parse_protected(p: bytes) -> tuple[str | int, bytes, str, int, int, str]:
    """``(content_type, kid, device_id, counter, timestamp, topic)`` from a protected header.

    Accepts exactly the deterministic layout :func:`encode_protected` writes (fixed key order,
    shortest heads, no extra keys), so every accepted header is its own canonical encoding.
    """
    if p[:_PREFIX_LEN] != _PREFIX:
        raise _fail("protected header must start with {1: -7, 3: ...}")
    pos = _PREFIX_LEN
    content_type: str | int
    if pos < len(p) and p[pos] >> 5 == 0:
        content_type, pos = _arg(p, pos, 0)
    else:
        raw, pos = _chunk(p, pos, 3)
        content_type = raw.decode("ascii")
    if p[pos:pos + 1] != _KEY_KID:
        raise _fail("label 4 (kid) expected")
    kid, pos = _chunk(p, pos + 1, 2)
    if p[pos:pos + _LABEL_LEN] != _KEY_DEVICE_ID:
        raise _fail("device id label expected")
    raw, pos = _chunk(p, pos + _LABEL_LEN, 3)
    device_id = raw.decode("ascii")
    if p[pos:pos + _LABEL_LEN] != _KEY_COUNTER:
        raise _fail("counter label expected")
    counter, pos = _arg(p, pos + _LABEL_LEN, 0)
    if p[pos:pos + _LABEL_LEN] != _KEY_TIMESTAMP:
        raise _fail("timestamp label expected")
    timestamp, pos = _arg(p, pos + _LABEL_LEN, 0)
    if p[pos:pos + _LABEL_LEN] != _KEY_TOPIC:
        raise _fail("topic label expected")
    raw, pos = _chunk(p, pos + _LABEL_LEN, 3)
    if pos != len(p):
        raise _fail("trailing bytes in the protected header")
    return content_type, kid, device_id, counter, timestamp, raw.decode("utf-8")


def _envelope_from_parts(protected: bytes, payload: bytes, signature: bytes) -> Envelope:
    content_type, kid, device_id, counter, timestamp, topic = _parse_protected(protected)
    # The protected bytes were just parsed in their only accepted (deterministic) layout, so the
    # constructor's re-encoding check would only repeat the parse: check the field rules alone.
    _check_fields(device_id, counter, timestamp, topic, content_type, kid)
    env = object.__new__(Envelope)
    put = object.__setattr__
    put(env, "device_id", device_id)
    put(env, "counter", counter)
    put(env, "timestamp", timestamp)
    put(env, "topic", topic)
    put(env, "content_type", content_type)
    put(env, "kid", kid)
    put(env, "payload", payload)
    put(env, "signature", signature)
    put(env, "protected", protected)
    return env


def _parse_envelope(data: bytes) -> Envelope:
    if data[:2] != b"\xd2\x84":
        raise _fail("not a tagged COSE_Sign1 array")
    protected, pos = _chunk(data, 2, 2)
    if data[pos:pos + 1] != b"\xa0":
        raise _fail("the unprotected header must be empty")
    payload, pos = _chunk(data, pos + 1, 2)
    if data[pos:pos + 2] != _SIGNATURE_HEAD or len(data) != pos + 2 + SIGNATURE_BYTES:
        raise _fail("a 64-byte signature must end the envelope")
    return _envelope_from_parts(protected, payload, data[pos + 2:])


def open_envelope(data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Parse envelope bytes (the parse boundary); ``InputError(reason="malformed_envelope")`` only.

    Accepted: exactly ``18([protected, {}, payload, signature])`` in deterministic encoding, with
    the protected header in the layout of :func:`encode_protected`. Refused: more than
    ``max_bytes``; another tag or none; trailing bytes; any alternative encoding (long-form
    heads, indefinite lengths, other key order); a non-empty unprotected header; missing, extra
    or mistyped labels; an alg other than ES256; a signature that is not 64 bytes. The
    signature is not verified here (:func:`verify_signature`).
    """
    if not isinstance(data, bytes):
        raise InputError("an envelope is bytes", reason=_MALFORMED)
    if len(data) > max_bytes:
        raise InputError(f"envelope larger than {max_bytes} bytes", reason=_MALFORMED)
    try:
        return _parse_envelope(data)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the parse boundary (e.g. invalid UTF-8 text)
        raise InputError("not a well-formed envelope", reason=_MALFORMED,
                         detail=f"{type(exc).__name__}: {str(exc)[:120]}") from None


def verify_signature(env: Envelope, public_key: ec.EllipticCurvePublicKey) -> None:
    """Check the envelope's ES256 signature; ``TrustError(reason="signature_invalid")``."""
    _verify_es256(_check_p256(public_key), env.signature, env.to_be_signed())


def overhead(*, device_id: str, counter: int, timestamp: int, topic: str,
             content_type: str | int, kid: bytes, payload_len: int) -> int:
    """Exactly how many bytes an envelope adds to a payload of ``payload_len`` bytes."""
    protected = encode_protected(device_id=device_id, counter=counter, timestamp=timestamp,
                                 topic=topic, content_type=content_type, kid=kid)
    total = (2 + len(_bstr_head(len(protected))) + len(protected) + 1
             + len(_bstr_head(payload_len)) + payload_len + 2 + SIGNATURE_BYTES)
    return total - payload_len
