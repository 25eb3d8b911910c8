"""Creating a trust domain and reaching its certificate authorities.

``init_domain`` makes the operational root CA and the first issuing CA (ECDSA P-256) with keys
created where they live: an encrypted PEM file in the data folder, or a PKCS#11 token. It refuses
to touch an existing domain. The root key can be exported for offline keeping and removed from the
online store; the issuing CA keeps working without it.

This module does not serve anything and does not talk to the broker.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from iotrust.adapters.files import write_atomic
from iotrust.adapters.keys.file import EncryptedFileSigner, passphrase_from_environment
from iotrust.adapters.keys.pkcs11 import Pkcs11Signer
from iotrust.adapters.keys.refs import KeyRefKind, open_signer, parse_key_ref, pin_from_environment
from iotrust.adapters.sql.store import Database, Tx
from iotrust.core import events as ev
from iotrust.core import pki
from iotrust.core.ids import check_slug
from iotrust.core.records import CertificateAuthority, TrustDomain
from iotrust.errors import ConflictError, InputError, NotFoundError
from iotrust.ports import Clock, Signer
from iotrust.services import eventlog
from iotrust.services.settings import Settings

ROOT_LIFETIME = timedelta(days=20 * 365)
ISSUING_LIFETIME = timedelta(days=5 * 365)
ACTOR_SYSTEM = "system@iotrust"


@dataclass(frozen=True, slots=True)
class KeyBackend:
    """Where new CA keys are created: ``file`` (encrypted PEM) or ``pkcs11`` (a token)."""

    kind: str
    passphrase: bytes | None = None
    pkcs11_module: str | None = None
    pkcs11_token: str | None = None
    pkcs11_pin: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "file":
            if not self.passphrase:
                raise InputError("a passphrase is needed for file key storage",
                                 reason="passphrase_missing")
        elif self.kind == "pkcs11":
            if not (self.pkcs11_module and self.pkcs11_token and self.pkcs11_pin):
                raise InputError("PKCS#11 key storage needs a module, a token label and a PIN",
                                 reason="pkcs11_incomplete")
        else:
            raise InputError(f"unknown key backend {self.kind!r}", reason="invalid_key_backend")

    def create(self, settings: Settings, label: str) -> tuple[Signer, str]:
        """Create a new key named ``label`` where it will live; return it and its reference."""
        if self.kind == "file":
            if self.passphrase is None:
                raise InputError("a passphrase is needed for file key storage",
                                 reason="passphrase_missing")
            settings.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = settings.keys_dir / f"{label}.key.pem"
            signer = EncryptedFileSigner.generate(path, self.passphrase)
            return signer, f"file:{path}"
        if not (self.pkcs11_module and self.pkcs11_token and self.pkcs11_pin):
            raise InputError("PKCS#11 key storage needs a module, a token label and a PIN",
                             reason="pkcs11_incomplete")
        p11 = Pkcs11Signer.generate(self.pkcs11_module, self.pkcs11_token, self.pkcs11_pin, label)
        return p11, f"pkcs11:module={self.pkcs11_module};token={self.pkcs11_token};object={label}"


@dataclass(frozen=True, slots=True)
class Secrets:
    """How to unlock CA keys at run time (never stored, never logged)."""

    passphrase: bytes | None = None
    pin: str | None = None

    def open(self, key_ref: str) -> Signer:
        """Open the signer a key reference names."""
        return open_signer(key_ref, passphrase=self.passphrase, pin=self.pin)


def secrets_from_environment(settings: Settings) -> Secrets:
    """CA-key secrets from ``IOTRUST_PASSPHRASE[_FILE]`` and ``IOTRUST_PKCS11_PIN``.

    Falls back to ``DATA/passphrase`` only if an operator created it explicitly for development
    (``iotrust init --generate-passphrase-file`` or ``iotrust run``).
    """
    passphrase: bytes | None
    try:
        passphrase = passphrase_from_environment()
    except InputError:
        passphrase = None
    generated = settings.data_dir / "passphrase"
    if passphrase is None and generated.exists():
        passphrase = generated.read_bytes().rstrip(b"\n")
    pin: str | None
    try:
        pin = pin_from_environment()
    except InputError:
        pin = None
    return Secrets(passphrase=passphrase, pin=pin)


def init_domain(
    db: Database,
    settings: Settings,
    clock: Clock,
    *,
    name: str,
    owner: str,
    backend: KeyBackend,
    public_url: str,
) -> TrustDomain:
    """Create the trust domain: root CA, issuing CA, first CRL. Refuses if one exists."""
    check_slug(owner, "owner")
    with db.transaction() as tx:
        if tx.get_domain() is not None:
            raise ConflictError("a trust domain already exists here; refusing to overwrite it",
                                reason="domain_exists")
    for d in (settings.ca_dir, settings.crl_dir):
        d.mkdir(parents=True, exist_ok=True)
    now = clock.now()
    stamp = now.strftime("%Y%m%d%H%M%S")
    root_signer, root_ref = backend.create(settings, f"root-{stamp}")
    root_cert = pki.build_root_ca(root_signer, f"{name} Root CA", name, now, ROOT_LIFETIME)
    issuing_signer, issuing_ref = backend.create(settings, f"issuing-{stamp}")
    issuing_id = f"issuing-{stamp}"
    # No CRL distribution point on the issuing CA: the root key may be kept offline, so the
    # root's CRL is not served; device certificates name their issuing CA's CRL (crl_url_for).
    issuing_cert = pki.build_issuing_ca(root_signer, root_cert, issuing_signer.public_key,
                                        f"{name} Issuing CA {stamp}", name, now, ISSUING_LIFETIME,
                                        None)
    root = CertificateAuthority(
        id=f"root-{stamp}", role="root", name=f"{name} Root CA", certificate_pem=_pem(root_cert),
        key_ref=root_ref, state="active", not_after=root_cert.not_valid_after_utc, crl_number=0,
        created_at=now)
    issuing = CertificateAuthority(
        id=issuing_id, role="issuing", name=f"{name} Issuing CA {stamp}",
        certificate_pem=_pem(issuing_cert), key_ref=issuing_ref, state="active",
        not_after=issuing_cert.not_valid_after_utc, crl_number=0, created_at=now)
    server_id = "urn:iotrust:server:" + hashlib.sha256(
        root_cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:32]
    domain = TrustDomain(name=name, owner=owner, created_at=now, root_ca_id=root.id,
                         server_id=server_id, settings={"public_url": public_url})
    with db.transaction() as tx:
        tx.create_domain(domain)
        tx.add_ca(root)
        tx.add_ca(issuing)
        eventlog.record(tx, clock, ev.DOMAIN_CREATED, actor=ACTOR_SYSTEM,
                        data={"name": name, "owner": owner, "server_id": server_id,
                              "key_backend": backend.kind})
        for ca in (root, issuing):
            eventlog.record(tx, clock, ev.CA_CREATED, actor=ACTOR_SYSTEM,
                            data={"ca": ca.id, "role": ca.role,
                                  "not_after": ca.not_after.isoformat()})
    write_ca_files(db, settings)
    return domain


def write_ca_files(db: Database, settings: Settings) -> None:
    """Write the active CA certificates as PEM files for operators, brokers and openssl."""
    with db.transaction() as tx:
        cas = tx.list_cas()
    settings.ca_dir.mkdir(parents=True, exist_ok=True)
    bundle = []
    for ca in cas:
        write_atomic(settings.ca_dir / f"{ca.id}.pem", ca.certificate_pem.encode(), mode=0o644)
        if ca.state != "retired":
            bundle.append(ca.certificate_pem)
    roots = [c.certificate_pem for c in cas if c.role == "root" and c.state != "retired"]
    write_atomic(settings.ca_dir / "root.pem", "".join(roots).encode(), mode=0o644)
    write_atomic(settings.ca_dir / "bundle.pem", "".join(bundle).encode(), mode=0o644)


def require_domain(tx: Tx) -> TrustDomain:
    """The trust domain, or a clear error telling the user to run ``iotrust init``."""
    domain = tx.get_domain()
    if domain is None:
        raise NotFoundError("no trust domain here yet: run `iotrust init` first",
                            reason="no_domain")
    return domain


def crl_url_for(domain: TrustDomain, ca_id: str) -> str | None:
    """Where certificates issued by ``ca_id`` say its CRL is served."""
    public_url = domain.settings.get("public_url") if domain.settings else None
    if not isinstance(public_url, str) or not public_url:
        return None
    return f"{public_url.rstrip('/')}/v1/crl/{ca_id}.crl"


def active_issuing_ca(tx: Tx) -> CertificateAuthority:
    """The issuing CA new credentials come from (the newest active one)."""
    cas = [c for c in tx.list_cas(role="issuing") if c.state == "active"]
    if not cas:
        raise NotFoundError("no active issuing CA", reason="no_issuing_ca")
    return max(cas, key=lambda c: c.created_at)


def root_ca(tx: Tx) -> CertificateAuthority:
    """The domain's operational root CA."""
    root_id = require_domain(tx).root_ca_id
    if root_id is None:
        raise NotFoundError("the trust domain has no root CA", reason="no_root_ca")
    return tx.get_ca(root_id)


def export_root(db: Database, out_dir: Path, *, remove_online_key: bool = False) -> list[Path]:
    """Copy the root CA certificate and its (still encrypted) key out for offline keeping.

    With ``remove_online_key`` the online copy of the key file is deleted afterwards; issuing CA
    rollover then needs the offline key brought back. PKCS#11 roots stay in their token (only the
    certificate is exported), since a non-extractable key cannot leave it.
    """
    with db.transaction() as tx:
        root = root_ca(tx)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = [out_dir / f"{root.id}.pem"]
    write_atomic(written[0], root.certificate_pem.encode(), mode=0o644)
    ref = parse_key_ref(root.key_ref)
    if ref.kind is KeyRefKind.FILE and ref.path is not None:
        key_path = Path(ref.path)
        if not key_path.exists():
            raise NotFoundError("the root key is not online (already exported?)",
                                reason="root_key_offline")
        target = out_dir / key_path.name
        if target.exists():
            raise ConflictError(f"{target} exists; refusing to overwrite", reason="file_exists")
        shutil.copy2(key_path, target)
        target.chmod(0o600)
        written.append(target)
        if remove_online_key:
            key_path.unlink()
    return written


def _pem(cert: object) -> str:
    from cryptography import x509  # noqa: PLC0415

    assert isinstance(cert, x509.Certificate)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

