"""Identifiers: device ids and service/operator names from disjoint alphabets.

A device id becomes the certificate CN and so the MQTT username. Mosquitto gives a certificate whose
CN equals an administrator's username that administrator's rights, so the two alphabets must never
meet: device ids are ``dev-`` followed by 26 lowercase base32 characters (no ``@``), and every
service or operator name contains an ``@`` (``admin@iotrust``, ``ingest@iotrust``).
"""

from __future__ import annotations

import base64
import re

from iotrust.errors import InputError

DEVICE_ID_RE = re.compile(r"^dev-[a-z2-7]{26}$")
SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}@[a-z][a-z0-9-]{0,30}$")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
SERIAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def new_device_id(random16: bytes) -> str:
    """Make a device id from 16 random bytes (the caller owns the randomness)."""
    if len(random16) != 16:  # noqa: PLR2004 - 128 bits, by definition
        raise TypeError("a device id needs exactly 16 random bytes")
    return "dev-" + base64.b32encode(random16).decode("ascii").rstrip("=").lower()


def check_device_id(value: str) -> str:
    """Return ``value`` if it is a well-formed device id, else raise :class:`InputError`."""
    if not isinstance(value, str) or not DEVICE_ID_RE.fullmatch(value):
        raise InputError(f"not a device id: {value!r:.80}", reason="invalid_device_id")
    return value


def check_service_name(value: str) -> str:
    """Return ``value`` if it is a well-formed service/operator name (contains ``@``)."""
    if not isinstance(value, str) or not SERVICE_NAME_RE.fullmatch(value):
        raise InputError(f"not a service name: {value!r:.80}", reason="invalid_service_name")
    return value


def check_slug(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a short lowercase slug (manufacturer, model, owner names)."""
    if not isinstance(value, str) or not SLUG_RE.fullmatch(value):
        raise InputError(f"not a valid {what}: {value!r:.80}", reason=f"invalid_{what}")
    return value


def check_serial(value: str) -> str:
    """Return ``value`` if it is an acceptable manufacturer serial number."""
    if not isinstance(value, str) or not SERIAL_RE.fullmatch(value):
        raise InputError(f"not a valid serial number: {value!r:.80}", reason="invalid_serial")
    return value
