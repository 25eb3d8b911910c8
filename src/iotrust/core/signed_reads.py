"""Device-signed reads: an HTTP GET authenticated by the device's operational key.

A device reads its director metadata (``GET /v1/tuf/director/<device_id>/metadata/<name>``)
with one header::

    Authorization: IotrustDevice <base64url, unpadded, of an envelope>

The envelope is the device's usual signed message (:mod:`iotrust.core.envelope`, COSE_Sign1 with
ES256 over the operational key, ``kid`` = the credential's serial), the same one it signs status
reports with, filled in for a read:

* ``topic`` — the request itself, ``GET /v1/tuf/director/<device_id>/metadata/<name>``
  (:func:`director_read_topic`): the signature covers exactly one file of one device;
* ``content type`` — :data:`READ_CONTENT_TYPE`, so a read can never pass for a message or a
  status report, and no message for one;
* ``counter`` — ``0``: a read changes nothing, so it needs freshness but no replay counter
  (the server keeps no state per read);
* ``timestamp`` — device time in milliseconds; the server accepts at most
  :data:`MAX_SKEW_MS` (5 minutes) either way (a device must keep its clock within that, as it
  already must for certificate and TUF expiry);
* ``payload`` — empty.

Within the 5 minutes a captured header can be replayed, but only to read the same file of the
same device again: what an eavesdropper who saw the request (and so, over plain HTTP, the reply)
already knows. Over TLS nobody sees it.

Refusals (:func:`open_read`, :func:`check_read`): no or another ``Authorization`` scheme
(``TrustError(device_auth_required)``), a header that does not decode
(``InputError(malformed_envelope)``), a signer that is not the device named in the path
(``device_mismatch``), a signature for another file or with another content type
(``request_mismatch``), a timestamp too far off (``request_stale``). Whether the credential is
the device's and alive, and the signature itself, is the service's check (it needs the
registry). This module does no I/O and reads no clock.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from iotrust.core import envelope
from iotrust.errors import InputError, TrustError
from iotrust.ports import Signer

__all__ = ["AUTH_SCHEME", "MAX_HEADER_CHARS", "MAX_SKEW_MS", "READ_CONTENT_TYPE",
           "authorization", "check_read", "director_read_topic", "open_read"]

AUTH_SCHEME: Final = "IotrustDevice"
READ_CONTENT_TYPE: Final = "application/x-iotrust-read"
MAX_SKEW_MS: Final = 5 * 60 * 1000
#: A read envelope is about 250 bytes; anything much longer is not one.
MAX_HEADER_CHARS: Final = 2048
_READ_COUNTER: Final = 0


def director_read_topic(device_id: str, name: str) -> str:
    """What a director read signs: the request line of one device's metadata file."""
    return f"GET /v1/tuf/director/{device_id}/metadata/{name}"


def authorization(signer: Signer, *, device_id: str, kid: bytes, topic: str,
                  timestamp_ms: int) -> str:
    """The ``Authorization`` header value of one read (signed now with ``signer``)."""
    sealed = envelope.seal(b"", signer=signer, device_id=device_id, counter=_READ_COUNTER,
                           timestamp=timestamp_ms, topic=topic,
                           content_type=READ_CONTENT_TYPE, kid=kid)
    return f"{AUTH_SCHEME} {base64.urlsafe_b64encode(sealed).rstrip(b'=').decode('ascii')}"


def open_read(header: str | None) -> envelope.Envelope:
    """The envelope an ``Authorization`` header carries; its signature is not checked here."""
    if not header or len(header) > MAX_HEADER_CHARS:
        raise TrustError("this read needs a request signed by the device",
                         reason="device_auth_required")
    scheme, _, token = header.strip().partition(" ")
    if scheme != AUTH_SCHEME or not token:
        raise TrustError(f"this read needs an `{AUTH_SCHEME}` authorization",
                         reason="device_auth_required")
    token = token.strip()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InputError("the device authorization is not base64url",
                         reason="malformed_envelope") from None
    return envelope.open_envelope(raw, max_bytes=MAX_HEADER_CHARS)


def check_read(env: envelope.Envelope, *, device_id: str, name: str, now_ms: int) -> None:
    """Refuse a (signature-checked) read of another device, another file, or out of time."""
    if env.device_id != device_id:
        raise TrustError("a device reads only its own director metadata",
                         reason="device_mismatch")
    if env.content_type != READ_CONTENT_TYPE or \
            env.topic != director_read_topic(device_id, name) or env.payload:
        raise TrustError("the signature is for another request", reason="request_mismatch")
    if abs(now_ms - env.timestamp) > MAX_SKEW_MS:
        raise TrustError("the signed request is too old or from the future (check the device "
                         "clock)", reason="request_stale")
