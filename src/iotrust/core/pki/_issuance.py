"""Building the certificates of a trust domain and of a manufacturer's supply chain.

* :func:`build_root_ca` and :func:`build_issuing_ca`: the operator's (or a manufacturer's) CAs.
* :class:`IssuingContext`: everything about one issuing CA that every certificate it issues
  shares (issuer name, authority key identifier, CRL distribution point, its signer), checked and
  computed once and then reused for each issuance. The ``issue_*`` functions are one-shot
  conveniences over it.
* Leaf profiles: the operational device certificate (LDevID), service/broker certificates,
  the factory certificate (IDevID; reading it back is :mod:`._factory`) and the manufacturer's
  voucher-signing certificate.

Every value that enters a certificate is validated here (device id, service name, serial, names,
key type, lifetime, serial number). Time and randomness come from the caller. This module does
not decide whether a CSR or a chain is acceptable (see the CSR and chain modules) and does no I/O.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from iotrust.core.ids import check_device_id, check_serial, check_service_name, check_slug
from iotrust.core.pki._encoding import (
    der_tlv,
    der_utf8_string,
    is_p256,
    spki_der,
)
from iotrust.core.pki._profiles import (
    DEVICE,
    FACTORY,
    ISSUING_CA,
    MAX_SAN_ENTRIES,
    OID_DEVICE_CLASS,
    ROOT_CA,
    SERVICE,
    VOUCHER_SIGNER,
    CertificateProfile,
    check_crl_url,
    check_dns_name,
    check_ip_address,
    check_name_text,
    check_serial_number,
    check_vendor_product,
)
from iotrust.core.pki._signing import sign_builder
from iotrust.errors import InputError
from iotrust.ports import HasPrivateKey, Signer

#: URI SAN prefix of an operational device certificate.
DEVICE_URN_PREFIX = "urn:iotrust:device:"
#: URI SAN prefix of a service certificate.
SERVICE_URN_PREFIX = "urn:iotrust:service:"

_SERIAL_RANDOM_BYTES = 20
_PRINTABLE_STRING_DELETE = str.maketrans(
    "", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"
)
_TAG_OCTET_STRING = 0x04
_TAG_SEQUENCE = 0x30
_TAG_URI = 0x86  # [6] IMPLICIT IA5String, GeneralName.uniformResourceIdentifier


def new_serial_number(random20: bytes) -> int:
    """A certificate serial number from 20 random bytes (159 bits of entropy, always positive)."""
    if len(random20) != _SERIAL_RANDOM_BYTES:
        raise TypeError("a serial number needs exactly 20 random bytes")
    return (int.from_bytes(random20, "big") >> 1) or 1


def _derived_serial_number(public_key: PublicKeyTypes, subject: x509.Name, when: datetime) -> int:
    """A stable serial for CA certificates when the caller brings none: key, name and start."""
    digest = hashlib.sha256(
        spki_der(public_key) + subject.public_bytes() + when.isoformat().encode("ascii")
    ).digest()
    return new_serial_number(digest[:_SERIAL_RANDOM_BYTES])


def _require_p256(public_key: object) -> ec.EllipticCurvePublicKey:
    if not is_p256(public_key):
        raise InputError("only ECDSA P-256 keys are certified", reason="weak_key")
    return public_key


def _ca_name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME, check_name_text(organization, "organization")
            ),
            x509.NameAttribute(NameOID.COMMON_NAME, check_name_text(common_name, "common name")),
        ]
    )


def _encoded(value: x509.ExtensionType) -> x509.UnrecognizedExtension:
    """``value`` as pre-encoded DER: cryptography then copies bytes instead of re-encoding."""
    if isinstance(value, x509.UnrecognizedExtension):
        return value
    return x509.UnrecognizedExtension(value.oid, value.public_bytes())


def _subject_key_identifier(public_key: ec.EllipticCurvePublicKey) -> x509.UnrecognizedExtension:
    """RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits, as a DER OCTET STRING.

    Equal to ``SubjectKeyIdentifier.from_public_key``; SHA-1 only names the key here.
    """
    point = public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    digest = hashlib.sha1(point, usedforsecurity=False).digest()
    return x509.UnrecognizedExtension(
        x509.SubjectKeyIdentifier.oid, der_tlv(_TAG_OCTET_STRING, digest)
    )


def _uri_san(uri: str) -> x509.UnrecognizedExtension:
    """``SubjectAlternativeName`` holding one ASCII URI: ``SEQUENCE { [6] IA5String }``."""
    value = der_tlv(_TAG_SEQUENCE, der_tlv(_TAG_URI, uri.encode("ascii")))
    return x509.UnrecognizedExtension(x509.SubjectAlternativeName.oid, value)


@functools.lru_cache(maxsize=64)
def _crl_distribution_points(url: str) -> x509.UnrecognizedExtension:
    point = x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(check_crl_url(url))],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )
    return _encoded(x509.CRLDistributionPoints([point]))


def _raw(value: x509.ExtensionType, *, critical: bool) -> x509.Extension[x509.ExtensionType]:
    return x509.Extension(value.oid, critical, _encoded(value))


@functools.lru_cache(maxsize=128)
def _profile_extensions(
    profile: CertificateProfile,
    authority_key_identifier: x509.AuthorityKeyIdentifier | None,
) -> tuple[x509.Extension[x509.ExtensionType], ...]:
    """The pre-encoded extensions shared by every certificate of ``profile`` from one issuer."""
    extensions = [_raw(ext.value, critical=ext.critical) for ext in profile.extensions]
    if authority_key_identifier is not None:
        extensions.append(_raw(authority_key_identifier, critical=False))
    return tuple(extensions)


def _utc_naive(when: datetime) -> datetime:
    """What the builder setters store: a naive UTC datetime (the builder encodes it as such)."""
    if when.tzinfo is None:
        raise TypeError("certificate validity needs a timezone-aware datetime")
    return when.astimezone(UTC).replace(tzinfo=None)


def _builder(
    profile: CertificateProfile,
    *,
    subject: x509.Name,
    issuer: x509.Name,
    authority_key_identifier: x509.AuthorityKeyIdentifier | None,
    public_key: ec.EllipticCurvePublicKey,
    serial_number: int,
    not_before: datetime,
    not_after: datetime,
    extensions: Sequence[x509.ExtensionType],
) -> x509.CertificateBuilder:
    """A complete builder, made in one step.

    The chain of setters (``.subject_name(...).public_key(...)...``) copies the builder and
    re-validates every field at each step, which costs as much as a third of an ECDSA signature
    per certificate. Every value here is already validated (names, key, serial, validity,
    extensions unique by construction), so the builder is made with its constructor, exactly
    what each setter does internally.
    """
    all_extensions = [
        *_profile_extensions(profile, authority_key_identifier),
        x509.Extension(x509.SubjectKeyIdentifier.oid, False, _subject_key_identifier(public_key)),  # noqa: FBT003
        *(x509.Extension(ext.oid, False, ext) for ext in extensions),  # noqa: FBT003
    ]
    return x509.CertificateBuilder(
        issuer_name=issuer,
        subject_name=subject,
        public_key=public_key,
        serial_number=check_serial_number(serial_number),
        not_valid_before=_utc_naive(not_before),
        not_valid_after=_utc_naive(not_after),
        extensions=all_extensions,
    )


def build_root_ca(
    signer: Signer,
    common_name: str,
    organization: str,
    not_before: datetime,
    lifetime: timedelta,
    *,
    serial_number: int | None = None,
) -> x509.Certificate:
    """A self-signed root: CA, path length 1, keyCertSign + cRLSign, subject key identifier.

    ``serial_number`` defaults to one derived from the key, the name and ``not_before``.
    """
    public_key = _require_p256(signer.public_key)
    name = _ca_name(common_name, organization)
    builder = _builder(
        ROOT_CA,
        subject=name,
        issuer=name,
        authority_key_identifier=None,
        public_key=public_key,
        serial_number=serial_number or _derived_serial_number(public_key, name, not_before),
        not_before=not_before,
        not_after=ROOT_CA.not_after(not_before, lifetime),
        extensions=(),
    )
    return sign_builder(builder, signer)


@dataclass(frozen=True, slots=True)
class IssuingContext:
    """One CA ready to issue: its certificate, its signer and everything derived from them.

    Build it once per CA (``IssuingContext.from_ca(ca_cert, ca_signer)``) and reuse it: the
    issuer name, authority key identifier and CRL distribution point are computed and the
    signer/certificate match is checked only here.

    Raises:
        InputError: ``not_a_ca`` if the certificate may not sign certificates,
            ``ca_signer_mismatch`` if the signer's key is not the certificate's,
            ``invalid_crl_url`` for a malformed distribution point.
    """

    certificate: x509.Certificate
    signer: Signer
    crl_url: str | None = None
    issuer_name: x509.Name = field(init=False, repr=False, compare=False)
    authority_key_identifier: x509.AuthorityKeyIdentifier = field(
        init=False, repr=False, compare=False
    )
    _crl_distribution_points: x509.UnrecognizedExtension | None = field(
        init=False, repr=False, compare=False
    )
    _path_length: int | None = field(init=False, repr=False, compare=False)
    _private_key: ec.EllipticCurvePrivateKey | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cert = self.certificate
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise InputError("the issuer certificate is not a CA", reason="not_a_ca")
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is not None and not usage.key_cert_sign:
            raise InputError("the issuer certificate may not sign certificates", reason="not_a_ca")
        if self.signer.public_key != cert.public_key():
            raise InputError(
                "the signer's key is not the CA certificate's key", reason="ca_signer_mismatch"
            )
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.signer.public_key)
        crl_dp = None if self.crl_url is None else _crl_distribution_points(self.crl_url)
        # The runtime-checkable Protocol test is slow in Python 3.11: decide the path once.
        private_key = self.signer.private_key if isinstance(self.signer, HasPrivateKey) else None
        object.__setattr__(self, "issuer_name", cert.subject)
        object.__setattr__(self, "authority_key_identifier", aki)
        object.__setattr__(self, "_crl_distribution_points", crl_dp)
        object.__setattr__(self, "_path_length", constraints.path_length)
        object.__setattr__(self, "_private_key", private_key)

    @classmethod
    def from_ca(
        cls, ca_cert: x509.Certificate, ca_signer: Signer, *, crl_url: str | None = None
    ) -> IssuingContext:
        """The context for ``ca_cert`` signed by ``ca_signer`` (see the class docstring)."""
        return cls(ca_cert, ca_signer, crl_url)

    def _issue(
        self,
        profile: CertificateProfile,
        *,
        subject: x509.Name,
        public_key: PublicKeyTypes,
        serial_number: int,
        not_before: datetime,
        lifetime: timedelta,
        extensions: Sequence[x509.ExtensionType] = (),
        crl_url: str | None = None,
        with_crl_distribution_point: bool = True,
    ) -> x509.Certificate:
        key = _require_p256(public_key)
        not_after = profile.not_after(not_before, lifetime)
        if not_after > self.certificate.not_valid_after_utc:
            raise InputError(
                "the certificate would outlive its issuing CA", reason="outlives_issuer"
            )
        if crl_url is not None:
            extensions = (*extensions, _crl_distribution_points(crl_url))
        elif with_crl_distribution_point and self._crl_distribution_points is not None:
            extensions = (*extensions, self._crl_distribution_points)
        builder = _builder(
            profile,
            subject=subject,
            issuer=self.issuer_name,
            authority_key_identifier=self.authority_key_identifier,
            public_key=key,
            serial_number=serial_number,
            not_before=not_before,
            not_after=not_after,
            extensions=extensions,
        )
        if self._private_key is not None:
            return builder.sign(self._private_key, hashes.SHA256())
        return sign_builder(builder, self.signer)

    def issue_ca(
        self,
        public_key: PublicKeyTypes,
        common_name: str,
        organization: str,
        not_before: datetime,
        lifetime: timedelta,
        *,
        serial_number: int | None = None,
    ) -> x509.Certificate:
        """An issuing CA below this one (path length 0); see :func:`build_issuing_ca`."""
        if self._path_length is not None and self._path_length < 1:
            raise InputError("this CA may not certify another CA", reason="path_length_exceeded")
        _require_p256(public_key)
        name = _ca_name(common_name, organization)
        return self._issue(
            ISSUING_CA,
            subject=name,
            public_key=public_key,
            serial_number=serial_number or _derived_serial_number(public_key, name, not_before),
            not_before=not_before,
            lifetime=lifetime,
        )

    def issue_device(
        self,
        *,
        device_id: str,
        public_key: PublicKeyTypes,
        serial_number: int,
        not_before: datetime,
        lifetime: timedelta,
        crl_url: str | None = None,
    ) -> x509.Certificate:
        """The operational certificate (LDevID) of ``device_id`` for ``public_key``.

        Subject CN = device id, SAN URI ``urn:iotrust:device:<id>``, EKU clientAuth, KeyUsage
        digitalSignature (critical), not a CA (critical), AKI/SKI, and a CRL distribution point
        for ``crl_url`` (default: the context's, if any).
        """
        check_device_id(device_id)
        return self._issue(
            DEVICE,
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]),
            public_key=public_key,
            serial_number=serial_number,
            not_before=not_before,
            lifetime=lifetime,
            extensions=(_uri_san(DEVICE_URN_PREFIX + device_id),),
            crl_url=crl_url,
        )

    def issue_service(
        self,
        *,
        service_name: str,
        public_key: PublicKeyTypes,
        serial_number: int,
        not_before: datetime,
        lifetime: timedelta,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        crl_url: str | None = None,
    ) -> x509.Certificate:
        """A service (broker, API, ingest) certificate: CN = service name, clientAuth+serverAuth.

        The SAN holds ``urn:iotrust:service:<name>`` plus the given DNS names and IP addresses;
        ``crl_url`` as for :meth:`issue_device`.
        """
        check_service_name(service_name)
        if len(dns_names) + len(ip_addresses) >= MAX_SAN_ENTRIES:
            raise InputError("too many subject alternative names", reason="too_large")
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(SERVICE_URN_PREFIX + service_name)
        ]
        names += [x509.DNSName(check_dns_name(name)) for name in dns_names]
        names += [x509.IPAddress(check_ip_address(address)) for address in ip_addresses]
        san = x509.SubjectAlternativeName(names)
        return self._issue(
            SERVICE,
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service_name)]),
            public_key=public_key,
            serial_number=serial_number,
            not_before=not_before,
            lifetime=lifetime,
            extensions=(san,),
            crl_url=crl_url,
        )

    def issue_factory(
        self,
        *,
        serial: str,
        manufacturer: str,
        vendor_id: str,
        product_id: str,
        public_key: PublicKeyTypes,
        serial_number: int,
        not_before: datetime,
        lifetime: timedelta,
    ) -> x509.Certificate:
        """The factory certificate (IDevID): subject O=manufacturer, CN=serialNumber=serial.

        Vendor and product ids travel in the non-critical :data:`OID_DEVICE_CLASS` extension.
        """
        check_serial(serial)
        if serial.translate(_PRINTABLE_STRING_DELETE):
            # X.520 serialNumber is a PrintableString: no "_" (allowed in our serial alphabet).
            raise InputError(
                f"serial {serial!r:.80} cannot be a certificate serialNumber",
                reason="invalid_serial",
            )
        check_slug(manufacturer, "manufacturer")
        device_class = ":".join(check_vendor_product(vendor_id, product_id))
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, manufacturer),
                x509.NameAttribute(NameOID.COMMON_NAME, serial),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
            ]
        )
        extension = x509.UnrecognizedExtension(OID_DEVICE_CLASS, der_utf8_string(device_class))
        return self._issue(
            FACTORY,
            subject=subject,
            public_key=public_key,
            serial_number=serial_number,
            not_before=not_before,
            lifetime=lifetime,
            extensions=(extension,),
            with_crl_distribution_point=False,
        )

    def issue_voucher_signer(
        self,
        public_key: PublicKeyTypes,
        common_name: str,
        organization: str,
        not_before: datetime,
        lifetime: timedelta,
        *,
        serial_number: int | None = None,
    ) -> x509.Certificate:
        """A manufacturer's voucher-signing certificate (EKU :data:`OID_VOUCHER_SIGNING`)."""
        _require_p256(public_key)
        name = _ca_name(common_name, organization)
        return self._issue(
            VOUCHER_SIGNER,
            subject=name,
            public_key=public_key,
            serial_number=serial_number or _derived_serial_number(public_key, name, not_before),
            not_before=not_before,
            lifetime=lifetime,
            with_crl_distribution_point=False,
        )


def build_issuing_ca(  # noqa: PLR0917 - the published positional order; callers rely on it
    root_signer: Signer,
    root_cert: x509.Certificate,
    public_key: PublicKeyTypes,
    common_name: str,
    organization: str,
    not_before: datetime,
    lifetime: timedelta,
    crl_url: str | None = None,
    *,
    serial_number: int | None = None,
) -> x509.Certificate:
    """An issuing CA below ``root_cert``: CA path length 0, AKI from the root, SKI.

    ``crl_url`` becomes this certificate's CRL distribution point, i.e. where the CRL that can
    revoke *this issuing CA* (the root's CRL) is published (RFC 5280 §4.2.1.13). The URL of the
    CRL the issuing CA itself publishes goes into the device certificates it issues
    (``IssuingContext(..., crl_url=...)`` or ``issue_device(crl_url=...)``).
    """
    context = IssuingContext(root_cert, root_signer, crl_url)
    return context.issue_ca(
        public_key, common_name, organization, not_before, lifetime, serial_number=serial_number
    )


def issue_device_certificate(
    ca_signer: Signer,
    ca_cert: x509.Certificate,
    *,
    device_id: str,
    public_key: PublicKeyTypes,
    serial_number: int,
    not_before: datetime,
    lifetime: timedelta,
    crl_url: str | None = None,
) -> x509.Certificate:
    """One-shot :meth:`IssuingContext.issue_device` (prefer a reused context in loops)."""
    return IssuingContext(ca_cert, ca_signer).issue_device(
        device_id=device_id,
        public_key=public_key,
        serial_number=serial_number,
        not_before=not_before,
        lifetime=lifetime,
        crl_url=crl_url,
    )


def issue_service_certificate(
    ca_signer: Signer,
    ca_cert: x509.Certificate,
    *,
    service_name: str,
    public_key: PublicKeyTypes,
    serial_number: int,
    not_before: datetime,
    lifetime: timedelta,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    crl_url: str | None = None,
) -> x509.Certificate:
    """One-shot :meth:`IssuingContext.issue_service`."""
    return IssuingContext(ca_cert, ca_signer).issue_service(
        service_name=service_name,
        public_key=public_key,
        serial_number=serial_number,
        not_before=not_before,
        lifetime=lifetime,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        crl_url=crl_url,
    )


def issue_factory_certificate(
    ca_signer: Signer,
    ca_cert: x509.Certificate,
    *,
    serial: str,
    manufacturer: str,
    vendor_id: str,
    product_id: str,
    public_key: PublicKeyTypes,
    serial_number: int,
    not_before: datetime,
    lifetime: timedelta,
) -> x509.Certificate:
    """One-shot :meth:`IssuingContext.issue_factory`."""
    return IssuingContext(ca_cert, ca_signer).issue_factory(
        serial=serial,
        manufacturer=manufacturer,
        vendor_id=vendor_id,
        product_id=product_id,
        public_key=public_key,
        serial_number=serial_number,
        not_before=not_before,
        lifetime=lifetime,
    )


def issue_voucher_signer_certificate(  # noqa: PLR0917 - mirrors build_issuing_ca
    root_signer: Signer,
    root_cert: x509.Certificate,
    public_key: PublicKeyTypes,
    common_name: str,
    organization: str,
    not_before: datetime,
    lifetime: timedelta,
    *,
    serial_number: int | None = None,
) -> x509.Certificate:
    """One-shot :meth:`IssuingContext.issue_voucher_signer`."""
    return IssuingContext(root_cert, root_signer).issue_voucher_signer(
        public_key, common_name, organization, not_before, lifetime, serial_number=serial_number
    )
