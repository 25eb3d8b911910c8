"""Reading the identity a factory certificate (IDevID) carries.

:func:`read_factory_identity` turns a manufacturer's device certificate into a
:class:`FactoryIdentity`: serial, manufacturer, vendor and product ids (from the private
:data:`~iotrust.core.pki.OID_DEVICE_CLASS` extension) and the fingerprint of the factory key. It
reads and checks the fields, it does not verify the certificate (see :func:`.verify_chain`) and
does no I/O. Issuing factory certificates is :meth:`.IssuingContext.issue_factory`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from iotrust.core.ids import check_serial, check_slug
from iotrust.core.pki._encoding import parse_der_utf8_string, spki_sha256
from iotrust.core.pki._profiles import OID_DEVICE_CLASS, check_vendor_product
from iotrust.errors import InputError


@dataclass(frozen=True, slots=True)
class FactoryIdentity:
    """What a factory certificate (IDevID) says about the device that holds its key."""

    serial: str
    manufacturer: str
    vendor_id: str
    product_id: str
    spki_sha256: str


def _single_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    if not values:
        raise InputError("not a factory certificate", reason="factory_identity_missing")
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise InputError("ambiguous factory certificate subject", reason="factory_identity_invalid")
    return values[0].value


def _device_class(extension: x509.ExtensionType) -> tuple[str, str]:
    if not isinstance(extension, x509.UnrecognizedExtension):
        raise InputError("unexpected device class", reason="malformed_extension")
    vendor_id, sep, product_id = parse_der_utf8_string(extension.value).partition(":")
    if not sep:
        raise InputError("device class is not vendor:product", reason="malformed_extension")
    return check_vendor_product(vendor_id, product_id)


def read_factory_identity(cert: x509.Certificate) -> FactoryIdentity:
    """What a factory certificate says: serial, manufacturer, vendor/product, key fingerprint.

    This reads, it does not verify: check the chain first (:func:`verify_chain`).

    Raises:
        InputError: ``factory_identity_missing`` if a field or the device-class extension is
            absent, ``factory_identity_invalid`` if one is malformed or inconsistent.
    """
    serial = _single_attribute(cert.subject, NameOID.SERIAL_NUMBER)
    manufacturer = _single_attribute(cert.subject, NameOID.ORGANIZATION_NAME)
    try:
        extension = cert.extensions.get_extension_for_oid(OID_DEVICE_CLASS).value
    except x509.ExtensionNotFound as exc:
        raise InputError(
            "the certificate carries no device class", reason="factory_identity_missing"
        ) from exc
    try:
        vendor_id, product_id = _device_class(extension)
        check_serial(serial)
        check_slug(manufacturer, "manufacturer")
    except InputError as exc:
        raise InputError(
            f"malformed factory certificate: {exc.message}", reason="factory_identity_invalid"
        ) from exc
    return FactoryIdentity(
        serial=serial,
        manufacturer=manufacturer,
        vendor_id=vendor_id,
        product_id=product_id,
        spki_sha256=spki_sha256(cert.public_key()),
    )
