"""A small but real supply chain: the manufacturer's side of device identity.

``init_factory`` creates a manufacturer's root CA, its IDevID issuing CA and a voucher-signing key
in a folder of its own (keys encrypted). ``mint`` makes devices: each gets a factory key created in
*its own* key store (a development key file, or a PKCS#11 token object standing in for a secure
element) and an IDevID certificate naming its serial, vendor and product ids. ``write_vouchers``
signs, for a named owner, the statement that these devices belong to it.

This is what a manufacturer (or an operator acting for one) runs; it never touches a registry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotrust.adapters.files import write_atomic
from iotrust.adapters.keys.file import DeviceFileKey, EncryptedFileSigner
from iotrust.adapters.keys.pkcs11 import Pkcs11Signer
from iotrust.core import pki
from iotrust.core import vouchers as voucher_core
from iotrust.core.ids import check_serial, check_slug
from iotrust.errors import ConflictError, InputError, NotFoundError
from iotrust.ports import Clock, Signer

FACTORY_ROOT_LIFETIME = timedelta(days=25 * 365)
FACTORY_ISSUING_LIFETIME = timedelta(days=15 * 365)
IDEVID_LIFETIME = timedelta(days=20 * 365)
MANIFEST = "manufacturer.json"


@dataclass(frozen=True, slots=True)
class Factory:
    """An opened factory folder."""

    path: Path
    name: str
    vendor_id: str
    product_id: str
    root: x509.Certificate
    issuing: x509.Certificate
    voucher_signer_cert: x509.Certificate

    def manifest(self) -> dict[str, object]:
        """The folder's manifest as stored."""
        data: dict[str, object] = json.loads((self.path / MANIFEST).read_text())
        return data


@dataclass(frozen=True, slots=True)
class MintedDevice:
    """One device leaving the factory."""

    serial: str
    folder: Path
    factory_spki_sha256: str
    key_ref: str


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def init_factory(path: Path, clock: Clock, *, name: str, vendor_id: str, product_id: str,
                 passphrase: bytes) -> Factory:
    """Create a manufacturer's CAs and voucher-signing key in ``path`` (must not exist yet)."""
    check_slug(name, "manufacturer")
    pki.check_vendor_product(vendor_id, product_id)
    if (path / MANIFEST).exists():
        raise ConflictError(f"{path} already holds a factory", reason="factory_exists")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = clock.now()
    root_key = EncryptedFileSigner.generate(path / "root.key.pem", passphrase)
    root = pki.build_root_ca(root_key, f"{name} Factory Root CA", name, now, FACTORY_ROOT_LIFETIME)
    issuing_key = EncryptedFileSigner.generate(path / "issuing.key.pem", passphrase)
    issuing = pki.build_issuing_ca(root_key, root, issuing_key.public_key,
                                   f"{name} IDevID CA", name, now, FACTORY_ISSUING_LIFETIME, None)
    vkey = EncryptedFileSigner.generate(path / "voucher-signer.key.pem", passphrase)
    vcert = pki.issue_voucher_signer_certificate(
        root_key, root, vkey.public_key, common_name=f"{name} Voucher Signer",
        organization=name, serial_number=pki.new_serial_number(os.urandom(20)),
        not_before=now, lifetime=FACTORY_ISSUING_LIFETIME)
    write_atomic(path / "root.crt.pem", _pem(root), mode=0o644)
    write_atomic(path / "issuing.crt.pem", _pem(issuing), mode=0o644)
    write_atomic(path / "voucher-signer.crt.pem", _pem(vcert), mode=0o644)
    manifest = {"name": name, "vendor_id": vendor_id, "product_id": product_id,
                "next_serial": 1, "created_at": now.isoformat()}
    write_atomic(path / MANIFEST, json.dumps(manifest, indent=2).encode())
    (path / "devices").mkdir(exist_ok=True)
    return open_factory(path)


def open_factory(path: Path) -> Factory:
    """Open an existing factory folder."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        root = pki.load_certificate((path / "root.crt.pem").read_bytes())
        issuing = pki.load_certificate((path / "issuing.crt.pem").read_bytes())
        vcert = pki.load_certificate((path / "voucher-signer.crt.pem").read_bytes())
    except FileNotFoundError as exc:
        raise NotFoundError(f"{path} is not a factory folder (run `iotrust factory init`)",
                            reason="no_factory") from exc
    except (ValueError, KeyError) as exc:
        raise InputError(f"{path / MANIFEST} is damaged", reason="factory_damaged") from exc
    return Factory(path=path, name=manifest["name"], vendor_id=manifest["vendor_id"],
                   product_id=manifest["product_id"], root=root, issuing=issuing,
                   voucher_signer_cert=vcert)


@dataclass(frozen=True, slots=True)
class DeviceKeyStore:
    """Where minted devices create their factory keys: ``devfile`` or ``pkcs11`` (a token)."""

    kind: str = "devfile"
    module: str | None = None
    token: str | None = None
    pin: str | None = None

    def create(self, folder: Path, serial: str) -> tuple[Signer, str]:
        """Create the device's factory key inside its own store."""
        if self.kind == "devfile":
            path = folder / "factory.key.pem"
            return DeviceFileKey.generate(path), f"devfile:{path}"
        if self.kind == "pkcs11":
            if not (self.module and self.token and self.pin):
                raise InputError("PKCS#11 device keys need a module, token and PIN",
                                 reason="pkcs11_incomplete")
            label = f"idevid-{serial}"
            signer = Pkcs11Signer.generate(self.module, self.token, self.pin, label)
            return signer, f"pkcs11:module={self.module};token={self.token};object={label}"
        raise InputError(f"unknown device key store {self.kind!r}", reason="invalid_key_backend")


def mint(factory: Factory, clock: Clock, count: int, *, passphrase: bytes,
         keystore: DeviceKeyStore | None = None, prefix: str = "SN",
         vendor_id: str | None = None, product_id: str | None = None,
         progress: Callable[[int], None] | None = None) -> list[MintedDevice]:
    """Mint ``count`` devices with fresh factory keys and IDevID certificates."""
    if not 1 <= count <= 1_000_000:  # noqa: PLR2004
        raise InputError("count must be between 1 and 1,000,000", reason="invalid_count")
    vendor = vendor_id or factory.vendor_id
    product = product_id or factory.product_id
    pki.check_vendor_product(vendor, product)
    store = keystore or DeviceKeyStore()
    issuing_key = EncryptedFileSigner.load(factory.path / "issuing.key.pem", passphrase)
    manifest = factory.manifest()
    start = int(str(manifest["next_serial"]))
    now = clock.now()
    # An IDevID lives as long as the device, but never past its issuing CA.
    lifetime = min(IDEVID_LIFETIME, factory.issuing.not_valid_after_utc - now)
    chain = _pem(factory.issuing)
    root = _pem(factory.root)
    minted: list[MintedDevice] = []
    for n in range(start, start + count):
        serial = check_serial(f"{prefix}{n:08d}")
        folder = factory.path / "devices" / serial
        folder.mkdir(parents=True, exist_ok=False)
        signer, ref = store.create(folder, serial)
        cert = pki.issue_factory_certificate(
            issuing_key, factory.issuing, serial=serial, manufacturer=factory.name,
            vendor_id=vendor, product_id=product, public_key=signer.public_key,
            serial_number=pki.new_serial_number(os.urandom(20)), not_before=now,
            lifetime=lifetime)
        spki = pki.spki_sha256(signer.public_key)
        (folder / "factory.crt.pem").write_bytes(_pem(cert))
        (folder / "chain.pem").write_bytes(chain)
        (folder / "manufacturer-root.pem").write_bytes(root)
        (folder / "device.json").write_text(json.dumps(
            {"serial": serial, "manufacturer": factory.name, "vendor_id": vendor,
             "product_id": product, "factory_spki_sha256": spki, "key_ref": ref}, indent=2))
        minted.append(MintedDevice(serial=serial, folder=folder, factory_spki_sha256=spki,
                                   key_ref=ref))
        if progress is not None:
            progress(1)
    manifest["next_serial"] = start + count
    write_atomic(factory.path / MANIFEST, json.dumps(manifest, indent=2).encode())
    return minted


def device_folders(factory: Factory, serials: Iterable[str] | None = None) -> list[Path]:
    """The folders of minted devices (all, or the named serials)."""
    base = factory.path / "devices"
    if serials is None:
        return sorted(p for p in base.iterdir() if (p / "device.json").exists())
    out = []
    for s in serials:
        p = base / check_serial(s)
        if not (p / "device.json").exists():
            raise NotFoundError(f"no minted device {s}", reason="unknown_device")
        out.append(p)
    return out


def write_vouchers(factory: Factory, clock: Clock, folders: Iterable[Path], *, owner: str,
                   owner_root_pem: bytes, passphrase: bytes,
                   lifetime: timedelta | None = None) -> list[bytes]:
    """Sign one voucher per device for ``owner``, pinned to the owner's root CA key."""
    check_slug(owner, "owner")
    owner_root = pki.load_certificate(owner_root_pem)
    owner_spki = pki.spki_sha256(owner_root.public_key())
    signer = EncryptedFileSigner.load(factory.path / "voucher-signer.key.pem", passphrase)
    signer_der = factory.voucher_signer_cert.public_bytes(serialization.Encoding.DER)
    now = clock.now().replace(microsecond=0)
    out = []
    for folder in folders:
        info = json.loads((folder / "device.json").read_text())
        claims = voucher_core.VoucherClaims(
            version=1, manufacturer=factory.name, serial=info["serial"],
            vendor_id=info["vendor_id"], product_id=info["product_id"],
            factory_spki_sha256=info["factory_spki_sha256"], owner=owner,
            owner_spki_sha256=owner_spki, created_at=now,
            expires_at=(now + lifetime) if lifetime else None)
        out.append(voucher_core.sign_voucher(claims, signer, signer_der))
    return out
