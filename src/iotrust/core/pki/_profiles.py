"""Issuance profiles: what each kind of certificate iotrust issues may contain and for how long.

A :class:`CertificateProfile` is an immutable value whose invariants (a CA has a path length and
may sign certificates, a leaf may not; lifetimes are positive and bounded) are checked when it is
made, so an inconsistent profile cannot exist. The module also holds the private OIDs of
iotrust and the checks on the free-text fields that end up in a certificate.

It does not build or sign certificates (see the issuance module).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from iotrust.errors import InputError

#: iotrust's private arc: ``2.25.<uuid>`` (ITU-T X.667), a UUID generated once for this project.
IOTRUST_OID_ARC = "2.25.16456982409768010059852343152476099021"
#: Non-critical extension of a factory certificate: DER UTF8String ``"<vendor_id>:<product_id>"``.
OID_DEVICE_CLASS = x509.ObjectIdentifier(IOTRUST_OID_ARC + ".1")
#: Extended key usage of a manufacturer's voucher-signing certificate.
OID_VOUCHER_SIGNING = x509.ObjectIdentifier(IOTRUST_OID_ARC + ".2")

#: Certificate serial numbers are positive and fit in 20 octets (RFC 5280 §4.1.2.2).
MAX_SERIAL_NUMBER = 2**159 - 1
#: The deepest CA path length any profile may allow.
MAX_PATH_LENGTH = 2
#: No profile may allow certificates living longer than this.
MAX_PROFILE_LIFETIME = timedelta(days=50 * 366)
#: Upper bound on SAN entries in one certificate.
MAX_SAN_ENTRIES = 16

_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)
_CA_ONLY_USAGES = frozenset({"key_cert_sign", "crl_sign"})
_EARLIEST_NOT_BEFORE = datetime(1950, 1, 1, tzinfo=UTC)
_NAME_MAX = 64  # X.520 ub-common-name / ub-organization-name
_VENDOR_PRODUCT_RE = re.compile(r"^[0-9A-Za-z_-]{1,16}$")
_DNS_NAME_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_URL_RE = re.compile(r"^https?://[^\s\"<>\\^`{|}]{1,500}$")


@dataclass(frozen=True, slots=True)
class CertificateProfile:
    """The fixed shape of one kind of certificate.

    Attributes:
        name: short label used in messages.
        is_ca: whether the subject may sign certificates and CRLs.
        path_length: BasicConstraints pathLenConstraint for a CA; ``None`` for a leaf.
        key_usage: the KeyUsage bits set (names of :class:`x509.KeyUsage` attributes).
        extended_key_usage: EKU OIDs (empty: no EKU extension).
        max_lifetime: the longest validity a certificate of this profile may get.
    """

    name: str
    is_ca: bool
    path_length: int | None
    key_usage: frozenset[str]
    extended_key_usage: tuple[x509.ObjectIdentifier, ...]
    max_lifetime: timedelta
    extensions: tuple[x509.Extension[x509.ExtensionType], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not timedelta(0) < self.max_lifetime <= MAX_PROFILE_LIFETIME:
            raise ValueError(f"{self.name}: max_lifetime must be positive and bounded")
        unknown = self.key_usage - set(_KEY_USAGE_FLAGS)
        if unknown or not self.key_usage:
            raise ValueError(f"{self.name}: key usage must be a non-empty set of known flags")
        if self.is_ca:
            if self.path_length is None or not 0 <= self.path_length <= MAX_PATH_LENGTH:
                raise ValueError(f"{self.name}: a CA needs a path length in 0..{MAX_PATH_LENGTH}")
            if "key_cert_sign" not in self.key_usage:
                raise ValueError(f"{self.name}: a CA must be allowed to sign certificates")
        else:
            if self.path_length is not None:
                raise ValueError(f"{self.name}: a leaf has no path length")
            if self.key_usage & _CA_ONLY_USAGES:
                raise ValueError(f"{self.name}: a leaf may not sign certificates or CRLs")
        # The constant extensions, made once per profile and shared by every certificate.
        usage = {flag: flag in self.key_usage for flag in _KEY_USAGE_FLAGS}
        extensions: list[x509.Extension[x509.ExtensionType]] = [
            x509.Extension(
                x509.BasicConstraints.oid,
                True,  # noqa: FBT003 - critical, by RFC 5280 for CAs and by our choice for leaves
                x509.BasicConstraints(ca=self.is_ca, path_length=self.path_length),
            ),
            x509.Extension(
                x509.KeyUsage.oid,
                True,  # noqa: FBT003 - critical
                x509.KeyUsage(**usage, encipher_only=False, decipher_only=False),
            ),
        ]
        if self.extended_key_usage:
            extensions.append(
                x509.Extension(
                    x509.ExtendedKeyUsage.oid,
                    False,  # noqa: FBT003 - not critical
                    x509.ExtendedKeyUsage(list(self.extended_key_usage)),
                )
            )
        object.__setattr__(self, "extensions", tuple(extensions))

    def not_after(self, not_before: datetime, lifetime: timedelta) -> datetime:
        """The end of validity for ``lifetime`` from ``not_before``, if the profile allows it.

        Raises:
            InputError: ``invalid_lifetime`` when the lifetime is not positive or too long.
            TypeError: ``not_before`` is a naive datetime (a bug in the caller).
        """
        if not_before.tzinfo is None:
            raise TypeError("certificate validity needs a timezone-aware datetime")
        if not_before < _EARLIEST_NOT_BEFORE:
            raise InputError("certificates cannot start before 1950", reason="invalid_lifetime")
        if not timedelta(0) < lifetime <= self.max_lifetime:
            raise InputError(
                f"{self.name} lifetime must be positive and at most {self.max_lifetime.days} days",
                reason="invalid_lifetime",
            )
        return not_before + lifetime


ROOT_CA = CertificateProfile(
    "root CA",
    is_ca=True,
    path_length=1,
    key_usage=frozenset({"key_cert_sign", "crl_sign"}),
    extended_key_usage=(),
    max_lifetime=timedelta(days=30 * 366),
)
ISSUING_CA = CertificateProfile(
    "issuing CA",
    is_ca=True,
    path_length=0,
    key_usage=frozenset({"key_cert_sign", "crl_sign"}),
    extended_key_usage=(),
    max_lifetime=timedelta(days=15 * 366),
)
DEVICE = CertificateProfile(
    "operational device certificate",
    is_ca=False,
    path_length=None,
    key_usage=frozenset({"digital_signature"}),
    extended_key_usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    max_lifetime=timedelta(days=825),
)
SERVICE = CertificateProfile(
    "service certificate",
    is_ca=False,
    path_length=None,
    key_usage=frozenset({"digital_signature"}),
    extended_key_usage=(ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH),
    max_lifetime=timedelta(days=825),
)
FACTORY = CertificateProfile(
    "factory certificate",
    is_ca=False,
    path_length=None,
    key_usage=frozenset({"digital_signature"}),
    extended_key_usage=(),
    max_lifetime=MAX_PROFILE_LIFETIME,
)
VOUCHER_SIGNER = CertificateProfile(
    "voucher-signing certificate",
    is_ca=False,
    path_length=None,
    key_usage=frozenset({"digital_signature"}),
    extended_key_usage=(OID_VOUCHER_SIGNING,),
    max_lifetime=timedelta(days=15 * 366),
)


# --- checks on the values that go into certificates -----------------------------------------


def check_name_text(value: str, what: str) -> str:
    """A printable CN/O value of 1..64 characters without surrounding spaces."""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= _NAME_MAX
        or not value.isprintable()
        or value != value.strip()
    ):
        raise InputError(f"not a valid {what}: {value!r:.80}", reason="invalid_name")
    return value


def check_serial_number(value: int) -> int:
    """A certificate serial number: positive and below ``2**159``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SERIAL_NUMBER:
        raise InputError("serial number must be in 1..2**159-1", reason="invalid_serial_number")
    return value


def check_vendor_product(vendor_id: str, product_id: str) -> tuple[str, str]:
    """Vendor and product ids: each 1-16 characters of ``[0-9a-zA-Z_-]``.

    Raises:
        InputError: ``invalid_vendor_id`` or ``invalid_product_id``.
    """
    for value, what in ((vendor_id, "vendor_id"), (product_id, "product_id")):
        if not isinstance(value, str) or not _VENDOR_PRODUCT_RE.fullmatch(value):
            raise InputError(f"not a valid {what}: {value!r:.40}", reason=f"invalid_{what}")
    return vendor_id, product_id


def check_crl_url(value: str) -> str:
    """An ``http``/``https`` URL for the CRL distribution point."""
    if not isinstance(value, str) or not _URL_RE.fullmatch(value):
        raise InputError(f"not a valid CRL URL: {value!r:.80}", reason="invalid_crl_url")
    return value


def check_dns_name(value: str) -> str:
    """A lowercase DNS host name (no wildcards)."""
    if not isinstance(value, str) or not _DNS_NAME_RE.fullmatch(value):
        raise InputError(f"not a valid DNS name: {value!r:.80}", reason="invalid_dns_name")
    return value


def check_ip_address(
    value: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4 or IPv6 address, given as text or as an address object."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise InputError(
            f"not a valid IP address: {value!r:.60}", reason="invalid_ip_address"
        ) from exc
