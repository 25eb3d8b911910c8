"""A real fleet for integration tests: trust domain, factories, minted devices, imported vouchers.

Everything is made through the services, exactly as an operator and a manufacturer would, in a
temporary folder (and the registry on SQLite there, or on a PostgreSQL URL you pass)::

    fleet = build_fleet(tmp_path, makers=(Maker("widgetco", count=4),))
    dev = fleet.device("WI00000001")          # factory key, DER chain, manufacturer root
    env = fleet.server_env()                   # for `iotrust serve` as a subprocess

A :class:`Maker` can be registered or not (``register``), have its vouchers imported or not
(``vouch``) and be trusted under the unsafe manufacturer-CA-only mode (``unsafe``). The CA keys
are encrypted with a passphrase kept in ``base/passphrase`` (``IOTRUST_PASSPHRASE_FILE``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.adapters.sql.store import Database
from iotrust.core import pki
from iotrust.core.records import TrustDomain
from iotrust.ports import Clock, SystemClock
from iotrust.services import credentials, domain, factory, manufacturers
from iotrust.services import vouchers as voucher_svc
from iotrust.services.domain import KeyBackend, Secrets
from iotrust.services.settings import Settings

PASSPHRASE = b"integration passphrase for the fleet CA keys"
FACTORY_PASSPHRASE = b"integration passphrase for the factory keys"
OWNER = "acme-ops"
ACTOR = "tests@fleet"


@dataclass(frozen=True, slots=True)
class Maker:
    """One manufacturer of the fleet and what to do with its devices."""

    name: str
    count: int = 4
    vendor_id: str = "0x1234"
    product_id: str = "sensor-1"
    prefix: str | None = None  # serial prefix; default: first two letters, upper case
    register: bool = True  # add it to the registry as a trusted manufacturer
    vouch: bool = True  # import its vouchers (makes the devices EXPECTED)
    unsafe: bool = False  # unsafe manufacturer-CA-only trust
    allow: tuple[str, ...] | None = None  # default: vendor_id:product_id

    @property
    def serial_prefix(self) -> str:
        """The prefix of this maker's serial numbers."""
        return self.prefix or self.name[:2].upper()


@dataclass(frozen=True, slots=True)
class FleetDevice:
    """A minted device as the device itself knows it."""

    serial: str
    manufacturer: str
    folder: Path
    factory_key: DeviceFileKey
    chain: tuple[bytes, ...]  # DER: factory (IDevID) certificate, then the maker's issuing CA
    manufacturer_root: x509.Certificate
    voucher: bytes  # the voucher the maker signed (imported only if the maker vouches)

    @property
    def factory_spki_sha256(self) -> str:
        """The factory key's fingerprint, as the registry stores it."""
        return pki.spki_sha256(self.factory_key.public_key)


@dataclass(slots=True)
class Fleet:
    """The built fleet: where things are and how to reach them."""

    base: Path
    settings: Settings
    database_url: str
    passphrase_file: Path
    factories: dict[str, factory.Factory]
    devices: dict[str, FleetDevice] = field(default_factory=dict)

    def open_db(self) -> Database:
        """A new connection pool to the fleet's registry (close it when done)."""
        return Database.open(self.database_url)

    @property
    def secrets(self) -> Secrets:
        """How to open the fleet's CA keys."""
        return Secrets(passphrase=PASSPHRASE)

    @property
    def root_pem(self) -> Path:
        """The operational root CA certificate file."""
        return self.settings.ca_dir / "root.pem"

    def device(self, serial: str) -> FleetDevice:
        """One minted device by serial."""
        return self.devices[serial]

    def serials(self, maker: str) -> list[str]:
        """The serials of one maker's devices, in minting order."""
        return sorted(s for s, d in self.devices.items() if d.manufacturer == maker)

    def server_env(self, base_env: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for an ``iotrust serve`` subprocess on this fleet."""
        env = dict(os.environ if base_env is None else base_env)
        env.pop("IOTRUST_PASSPHRASE", None)
        env.update({"IOTRUST_DATA": str(self.settings.data_dir),
                    "IOTRUST_DATABASE_URL": self.database_url,
                    "IOTRUST_PASSPHRASE_FILE": str(self.passphrase_file)})
        return env

    def update_domain_settings(self, **values: Any) -> TrustDomain:
        """Merge ``values`` into the trust domain's settings (a running server sees them)."""
        db = self.open_db()
        try:
            with db.transaction() as tx:
                current = domain.require_domain(tx)
                merged = {**dict(current.settings), **values}
                updated = TrustDomain(name=current.name, owner=current.owner,
                                      created_at=current.created_at,
                                      server_id=current.server_id,
                                      root_ca_id=current.root_ca_id, settings=merged)
                tx.update_domain(updated)
                return updated
        finally:
            db.close()


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def build_fleet(
    base: Path,
    *,
    makers: Sequence[Maker] = (Maker("widgetco"),),
    database_url: str | None = None,
    clock: Clock | None = None,
    domain_settings: Mapping[str, Any] | None = None,
) -> Fleet:
    """Create a trust domain and the makers' devices under ``base`` (which may exist, empty)."""
    clock = clock or SystemClock()
    base.mkdir(parents=True, exist_ok=True)
    passphrase_file = base / "passphrase"
    passphrase_file.write_bytes(PASSPHRASE + b"\n")
    passphrase_file.chmod(0o600)
    settings = Settings(data_dir=base / "data",
                        database_url=database_url or f"sqlite:///{base / 'data' / 'iotrust.db'}")
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database.open(settings.database_url)
    try:
        domain.init_domain(db, settings, clock, name="acme-fleet", owner=OWNER,
                           backend=KeyBackend(kind="file", passphrase=PASSPHRASE),
                           public_url="http://127.0.0.1:8443")
        credentials.publish_crls(db, settings, Secrets(passphrase=PASSPHRASE), clock,
                                 actor=ACTOR)
        fleet = Fleet(base=base, settings=settings, database_url=settings.database_url,
                      passphrase_file=passphrase_file, factories={})
        if domain_settings:
            fleet.update_domain_settings(**domain_settings)
        owner_root_pem = fleet.root_pem.read_bytes()
        for maker in makers:
            _build_maker(fleet, db, clock, maker, owner_root_pem)
    finally:
        db.close()
    return fleet


def _build_maker(fleet: Fleet, db: Database, clock: Clock, maker: Maker,
                 owner_root_pem: bytes) -> None:
    fac = factory.init_factory(fleet.base / "factories" / maker.name, clock, name=maker.name,
                               vendor_id=maker.vendor_id, product_id=maker.product_id,
                               passphrase=FACTORY_PASSPHRASE)
    fleet.factories[maker.name] = fac
    minted = factory.mint(fac, clock, maker.count, passphrase=FACTORY_PASSPHRASE,
                          prefix=maker.serial_prefix)
    folders = [m.folder for m in minted]
    signed = factory.write_vouchers(fac, clock, folders, owner=OWNER,
                                    owner_root_pem=owner_root_pem, passphrase=FACTORY_PASSPHRASE)
    issuing_der = _der(fac.issuing)
    for m, voucher in zip(minted, signed, strict=True):
        leaf = pki.load_certificate((m.folder / "factory.crt.pem").read_bytes())
        fleet.devices[m.serial] = FleetDevice(
            serial=m.serial, manufacturer=maker.name, folder=m.folder,
            factory_key=DeviceFileKey.load(m.folder / "factory.key.pem"),
            chain=(_der(leaf), issuing_der), manufacturer_root=fac.root, voucher=voucher)
    if maker.register:
        manufacturers.add_manufacturer(
            db, clock, name=maker.name,
            anchors_pem=(fac.path / "root.crt.pem").read_bytes(),
            allowed=list(maker.allow or (f"{maker.vendor_id}:{maker.product_id}",)),
            actor=ACTOR, unsafe_manufacturer_trust=maker.unsafe)
    if maker.register and maker.vouch:
        report = voucher_svc.import_vouchers(db, clock, signed, actor=ACTOR)
        if report.refused:
            raise RuntimeError(f"fleet vouchers refused: {report.refused}")
