"""Backing up a trust domain into one archive, and restoring it without weakening anything.

``backup`` writes a tar archive (mode 0600, never over an existing file) holding:

* the registry — SQLite: a consistent copy made with SQLite's online backup API while the
  service runs; PostgreSQL: a ``pg_dump`` custom-format dump of the database URL (refused with
  ``pg_dump_missing`` when the tool is not installed). The event log lives in the registry;
* the CA and update keys of ``DATA/keys`` — already encrypted files (a plaintext key is refused
  with ``unencrypted_key``). PKCS#11 keys stay in their token: the manifest records their
  references, and a key reference outside the data folder (an exported root) is recorded too;
* the CA certificates, CRLs, the TUF repositories and keyring, the exported event-log anchor and
  the broker's settings (``broker/broker.json``);
* ``manifest.json``: the format, the tool version, the SHA-256 of every other member, the
  event-log head, the key references that are not in the archive and the signing CA;
* ``manifest.sig``: an ECDSA P-256 signature over ``iotrust-backup-manifest-v1``, a zero byte
  and the exact bytes of ``manifest.json``, made with the trust domain's active **issuing CA
  key** (opened with the operator's passphrase or PKCS#11 PIN, like any issuance). The
  manifest holds every member's SHA-256, so the signature covers the whole archive.

Why a signature with the domain's key, not an HMAC derived from a passphrase: whoever holds the
archive also holds everything in it, including the event chain, which anyone can recompute
after an edit; only a secret outside the archive can tell an altered archive from a real one. An
HMAC key derived from the passphrase would need a passphrase-protected domain (a PKCS#11 domain
has none) and a second KDF of the same secret; the CA key already exists in both kinds of domain,
is what the operator unlocks to run the service at all, and is the one key whose compromise is
already game over (it mints the fleet's identities), so using it adds no new secret to guard. The
context prefix keeps the signature from ever being mistaken for a certificate or CRL signature
(those sign DER that begins with ``0x30``).

How ``restore`` knows the signing key is genuine without trusting the archive: it *opens* the
key the manifest names with the operator's own secrets, as the service would. A ``file:`` key
must be a member of the archive under ``keys/`` and must decrypt with the operator's passphrase
(nobody without the passphrase can make such a file); a ``pkcs11:`` key must live on the
operator's token, through the PKCS#11 module the operator names (``IOTRUST_PKCS11_MODULE``; a
module path from the archive is never loaded). The signature must verify under that key before
any member is compared or anything moves: a missing signature (``backup_unsigned``, also an
archive of format ``iotrust-backup/1`` made before signing), a key that cannot be opened
(``backup_unverifiable``) or a signature that does not verify (``backup_signature_invalid``)
is a ``TrustError`` (exit 77) and nothing is put in place. Not covered: an *older* genuine
archive of the same domain is still a valid archive (the report and event name its head and
date; choose it knowingly).

Never in the archive: the development passphrase file, the dashboard session secret, the
broker's TLS key, admin secret and generated files (they are regenerated on restore), the
ingest spool.

``restore`` extracts into a staging folder next to the target, checks the manifest's signature
(above), then the manifest (every member present, no other member, every hash), opens the
registry copy and verifies the whole
event chain and that the manifest's head is still in it, and only then puts the folder in place.
An existing trust domain is refused (``domain_exists``) unless ``force``; then the old data
folder is moved aside (``DATA.replaced-<time>``), never deleted. Key references under the old
data folder are pointed at the new one, the CA files and broker configuration are regenerated
from the registry, and a ``registry.restored`` event records it.

This module never reads a key's secret part and never logs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import make_url

from iotrust import __version__
from iotrust.adapters.files import write_atomic
from iotrust.adapters.keys.refs import KeyRefKind, parse_key_ref
from iotrust.adapters.sql.store import Database
from iotrust.adapters.tuf.keyring import Keyring, RoleKeys
from iotrust.core import pki
from iotrust.core.events import format_anchor, parse_anchor
from iotrust.core.records import CaRole, CaState, CertificateAuthority
from iotrust.errors import (
    BackendError,
    ConflictError,
    InputError,
    IotrustError,
    TrustError,
)
from iotrust.ports import Clock, Signer
from iotrust.services import broker as broker_svc
from iotrust.services import domain, eventlog
from iotrust.services.settings import Settings

FORMAT: Final = "iotrust-backup/2"
#: Archives written before backups were signed.
UNSIGNED_FORMAT: Final = "iotrust-backup/1"
MANIFEST: Final = "manifest.json"
SIGNATURE: Final = "manifest.sig"
SIGNATURE_FORMAT: Final = "iotrust-backup-signature/1"
#: What the issuing CA key signs: this prefix, then the exact manifest bytes.
SIGNED_CONTEXT: Final = b"iotrust-backup-manifest-v1\x00"
MAX_SIGNATURE_BYTES: Final = 4096
SQLITE_MEMBER: Final = "registry/iotrust.db"
PG_MEMBER: Final = "registry/postgresql.dump"
#: The registry was restored from an archive (``data``: head, format, tool version).
REGISTRY_RESTORED: Final = "registry.restored"
#: A backup archive was written (``data``: archive SHA-256 prefix, head, members).
BACKUP_CREATED: Final = "backup.created"
MAX_MEMBERS: Final = 100_000
MAX_MEMBER_BYTES: Final = 8 * 1024**3
MAX_MANIFEST_BYTES: Final = 16 * 1024**2
_DIRS: Final = ("keys", "ca", "crl", "tuf")
_FILES: Final = ("event-log.anchor", "broker/broker.json")
_ENCRYPTED: Final = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_PRIVATE: Final = b"PRIVATE KEY-----"
_CHUNK: Final = 1024 * 1024
_PG_TIMEOUT_S: Final = 3600


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What a backup wrote."""

    archive: Path
    sha256: str
    members: int
    event_head: str | None
    database: str
    pkcs11_keys: tuple[str, ...]
    external_keys: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """For the CLI."""
        return {"archive": str(self.archive), "sha256": self.sha256, "members": self.members,
                "event_head": self.event_head, "database": self.database,
                "pkcs11_keys": list(self.pkcs11_keys),
                "external_keys": list(self.external_keys),
                "note": "PKCS#11 keys stay in their token; the passphrase is not in the archive"}


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What a restore put in place."""

    data_dir: Path
    event_head: str | None
    records: int
    replaced: Path | None
    rewritten_key_refs: int
    broker: str
    pkcs11_keys: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        """For the CLI."""
        return {"data": str(self.data_dir), "event_head": self.event_head,
                "records": self.records,
                "replaced": str(self.replaced) if self.replaced else None,
                "rewritten_key_refs": self.rewritten_key_refs, "broker": self.broker,
                "pkcs11_keys": list(self.pkcs11_keys)}


# -- backup ------------------------------------------------------------------------------------


def backup(db: Database, settings: Settings, clock: Clock, out: Path, *, actor: str,
           secrets: domain.Secrets) -> BackupReport:
    """Write the signed archive ``out`` (see the module doc).

    Raises ``ConflictError(file_exists)``; ``TrustError(backup_key_unavailable)`` when the
    issuing CA key cannot be opened with ``secrets`` (nothing is written then).
    """
    out = out.absolute()
    if out.exists():
        raise ConflictError(f"{out} exists; refusing to overwrite it", reason="file_exists")
    with db.transaction(readonly=True) as tx:
        domain.require_domain(tx)
        cas = tx.list_cas()
    signing_ca = _signing_ca(cas)
    signer = _open_backup_key(secrets, signing_ca.key_ref)
    refs = [c.key_ref for c in cas] + _keyring_refs(settings)
    pkcs11 = tuple(sorted({r for r in refs if r.startswith("pkcs11:")}))
    data_root = settings.data_dir.absolute()
    external = tuple(sorted({r for r in refs if r.startswith(("file:", "devfile:"))
                             and not _under(Path(r.split(":", 1)[1]), data_root)}))
    out.parent.mkdir(parents=True, exist_ok=True)
    with _staging(out.parent) as staging:
        kind = _copy_registry(settings, staging)
        head, intact = _registry_head(staging, kind, db)
        if not intact:
            raise TrustError("the event log is broken; run `iotrust log verify` before backing "
                             "up", reason="event_log_tampered")
        members = _collect_files(settings, staging)
        registry_member = SQLITE_MEMBER if kind == "sqlite" else PG_MEMBER
        members.append(registry_member)
        digests = {m: _sha256_file(staging / m) for m in sorted(members)}
        manifest = {
            "format": FORMAT, "tool_version": __version__, "created_at": clock.now().isoformat(),
            "source_data_dir": str(data_root), "database": kind, "registry": registry_member,
            "event_head": head, "members": digests, "pkcs11_keys": list(pkcs11),
            "external_keys": list(external),
            "not_included": ["passphrase (keep it apart)", "dashboard session secret",
                             "broker TLS key and admin secret (regenerated on restore)",
                             "PKCS#11 keys (they stay in their token)"],
            "signed_by": {"ca_id": signing_ca.id, "key_ref": signing_ca.key_ref,
                          "spki_sha256": pki.spki_sha256(signer.public_key)},
        }
        body = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        try:
            signature = _sign_manifest(signer, body)
        finally:
            _close(signer)
        _write_archive(out, staging, manifest, body, signature)
    sha = _sha256_file(out)
    with db.transaction() as tx:
        eventlog.record(tx, clock, BACKUP_CREATED, actor=actor,
                        data={"archive_sha256": sha, "event_head": head,
                              "members": len(digests) + 2, "database": kind,
                              "signed_by": signing_ca.id})
    return BackupReport(archive=out, sha256=sha, members=len(digests) + 2, event_head=head,
                        database=kind, pkcs11_keys=pkcs11, external_keys=external)


# -- the signature -----------------------------------------------------------------------------


def _signing_ca(cas: list[CertificateAuthority]) -> CertificateAuthority:
    """The newest active issuing CA (the key the service uses every day)."""
    issuing = [c for c in cas if c.role == CaRole.ISSUING and c.state == CaState.ACTIVE]
    if not issuing:
        raise TrustError("the trust domain has no active issuing CA to sign the backup with",
                         reason="backup_key_unavailable")
    return issuing[-1]


def _open_backup_key(secrets: domain.Secrets, key_ref: str) -> Signer:
    try:
        return secrets.open(key_ref)
    except IotrustError as exc:
        raise TrustError("cannot open the issuing CA key to sign the backup: give the domain "
                         "passphrase (IOTRUST_PASSPHRASE_FILE) or PKCS#11 PIN",
                         reason="backup_key_unavailable", detail=exc.message) from None


def _close(signer: Signer) -> None:
    close = getattr(signer, "close", None)
    if callable(close):
        with suppress(Exception):
            close()


def _sign_manifest(signer: Signer, manifest_bytes: bytes) -> bytes:
    """``manifest.sig``: the issuing CA key's signature over the context and the manifest."""
    der = signer.sign(SIGNED_CONTEXT + manifest_bytes)
    return json.dumps({"format": SIGNATURE_FORMAT, "alg": "ES256",
                       "signature": base64.b64encode(der).decode("ascii")},
                      indent=2, sort_keys=True).encode() + b"\n"


def _keyring_refs(settings: Settings) -> list[str]:
    path = settings.data_dir / "tuf" / "keys.json"
    if not path.is_file():
        return []
    ring = Keyring.from_json(path.read_bytes())
    return [ref for roles in ring.roles.values() for keys in roles.values() for ref in keys.refs]


def _under(path: Path, root: Path) -> bool:
    try:
        path.absolute().relative_to(root)
    except ValueError:
        return False
    return True


@contextmanager
def _staging(parent: Path) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=".iotrust-staging-", dir=parent))
    folder.chmod(0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _database_kind(url: str) -> str:
    name = make_url(url).get_backend_name()
    if name in ("sqlite", "postgresql"):
        return name
    raise InputError(f"cannot back up a {name} registry", reason="unsupported_database")


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise InputError("an in-memory registry cannot be backed up",
                         reason="unsupported_database")
    return Path(database)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _copy_registry(settings: Settings, staging: Path) -> str:
    kind = _database_kind(settings.database_url)
    (staging / "registry").mkdir(mode=0o700)
    if kind == "sqlite":
        source = sqlite3.connect(f"file:{_sqlite_path(settings.database_url)}?mode=ro", uri=True)
        target = sqlite3.connect(staging / SQLITE_MEMBER)
        try:
            with target:
                source.backup(target)  # consistent even while the service writes
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        except sqlite3.Error as exc:
            raise BackendError(f"SQLite backup failed: {exc}", reason="backup_failed") from None
        finally:
            target.close()
            source.close()
        return kind
    tool = shutil.which("pg_dump")
    if tool is None:
        raise BackendError("pg_dump is not installed: install the PostgreSQL client tools "
                           "(same major version as the server) to back up a PostgreSQL "
                           "registry", reason="pg_dump_missing")
    _run([tool, "--format=custom", "--no-owner", "--no-privileges",
          f"--file={staging / PG_MEMBER}", f"--dbname={_libpq(settings.database_url)}"],
         "pg_dump")
    return kind


def _run(argv: list[str], what: str) -> None:
    try:
        # argv is a tool found on PATH plus our own arguments; no shell is involved
        result = subprocess.run(argv, capture_output=True, text=True,  # noqa: S603
                                timeout=_PG_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"{what} failed: {type(exc).__name__}", reason="backup_failed") \
            from None
    if result.returncode != 0:
        # libpq error text names hosts and databases, never the password of the URL
        detail = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise BackendError(f"{what} failed: {detail[0][:300]}", reason="backup_failed")


def _registry_head(staging: Path, kind: str, live: Database,
                   ) -> tuple[str | None, bool]:
    if kind == "sqlite":
        copy = Database.open(f"sqlite:///{staging / SQLITE_MEMBER}", create=False)
        try:
            report = eventlog.verify(copy)
        finally:
            copy.close()
    else:  # the dump holds at least everything up to this head; restore checks it
        report = eventlog.verify(live)
    head = format_anchor(report.head) if report.head else None
    return head, not report.breaks


def _collect_files(settings: Settings, staging: Path) -> list[str]:
    root = settings.data_dir
    found: list[str] = []
    for name in _DIRS:
        base = root / name
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            if name == "keys":
                _check_encrypted(path)
            found.append(rel)
    found.extend(name for name in _FILES if (root / name).is_file())
    for rel in found:
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copy2(root / rel, target)
    return found


def _check_encrypted(path: Path) -> None:
    with path.open("rb") as handle:
        head = handle.read(4096)
    if _PRIVATE in head and _ENCRYPTED not in head:
        raise TrustError(f"{path} holds an unencrypted private key; it is not put in a backup",
                         reason="unencrypted_key")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_archive(out: Path, staging: Path, manifest: dict[str, Any], body: bytes,
                   signature: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(out, flags, 0o600)
    except FileExistsError:
        raise ConflictError(f"{out} exists; refusing to overwrite it",
                            reason="file_exists") from None
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror}", reason="path_unusable") \
            from None
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w",
                                                      format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, MANIFEST, body)
            _add_bytes(tar, SIGNATURE, signature)
            for name in manifest["members"]:
                with (staging / name).open("rb") as handle:
                    info = tarfile.TarInfo(name)
                    info.size = (staging / name).stat().st_size
                    info.mode = 0o600
                    tar.addfile(info, handle)
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException:
        with suppress(OSError):
            out.unlink()
        raise


def _add_bytes(tar: tarfile.TarFile, name: str, body: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(body)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(body))


# -- restore -----------------------------------------------------------------------------------


def restore(archive: Path, settings: Settings, clock: Clock, *, passphrase: bytes | None,
            pin: str | None, actor: str, force: bool = False,
            pkcs11_module: str | None = None) -> RestoreReport:
    """Verify ``archive`` and put it in place as ``settings.data_dir`` (see the module doc).

    ``passphrase``/``pin`` open the key that signed the archive; ``pkcs11_module`` is the
    operator's PKCS#11 module, needed when that key is on a token.
    """
    target = settings.data_dir.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    existing = _existing_domain(settings)
    if existing and not force:
        raise ConflictError(f"{target} already holds a trust domain; refusing to overwrite it "
                            "(pass --force to move it aside)", reason="domain_exists")
    with _staging(target.parent) as staging:
        manifest = _extract_verified(archive, staging, domain.Secrets(passphrase=passphrase,
                                                                      pin=pin), pkcs11_module)
        kind = manifest["database"]
        if kind != _database_kind(settings.database_url):
            raise InputError(f"the archive holds a {kind} registry; the target registry is "
                             f"{_database_kind(settings.database_url)}",
                             reason="database_mismatch")
        head = manifest["event_head"]
        records = 0
        if kind == "sqlite":
            records = _verify_sqlite(staging / SQLITE_MEMBER, head, staging)
        source_dir = Path(manifest["source_data_dir"])
        rewritten = _rewrite_keyring(staging, source_dir, target)
        replaced = None
        if target.exists() and any(target.iterdir()):
            replaced = target.with_name(f"{target.name}.replaced-"
                                        f"{clock.now().strftime('%Y%m%d%H%M%S')}")
            target.rename(replaced)
        elif target.exists():
            target.rmdir()
        db_file = staging / SQLITE_MEMBER
        if kind == "sqlite":
            db_file.rename(staging / "iotrust.db")
        else:
            dump = staging / PG_MEMBER
            dump.rename(staging / "postgresql.dump")
        shutil.rmtree(staging / "registry", ignore_errors=True)
        staging.rename(target)
    if kind == "sqlite" and _sqlite_path(settings.database_url).absolute() != \
            target / "iotrust.db":
        shutil.copy2(target / "iotrust.db", _sqlite_path(settings.database_url))
    if kind == "postgresql":
        records = _restore_postgres(target / "postgresql.dump", settings, head)
    db = Database.open(settings.database_url)
    try:
        rewritten += _rewrite_ca_refs(db, source_dir, target)
        domain.write_ca_files(db, settings)
        broker = _regenerate_broker(db, settings, clock, passphrase, pin)
        with db.transaction() as tx:
            eventlog.record(tx, clock, REGISTRY_RESTORED, actor=actor,
                            data={"event_head": head, "format": manifest["format"],
                                  "tool_version": manifest["tool_version"],
                                  "replaced": replaced is not None, "broker": broker,
                                  "signed_by": manifest["signed_by"]["ca_id"]})
    finally:
        db.close()
    return RestoreReport(data_dir=target, event_head=head, records=records, replaced=replaced,
                         rewritten_key_refs=rewritten, broker=broker,
                         pkcs11_keys=tuple(manifest.get("pkcs11_keys", ())))


def _existing_domain(settings: Settings) -> bool:
    kind = _database_kind(settings.database_url)
    if kind == "sqlite" and not _sqlite_path(settings.database_url).exists():
        return (settings.data_dir / "keys").exists()
    db = Database.open(settings.database_url)
    try:
        with db.transaction(readonly=True) as tx:
            return tx.get_domain() is not None
    finally:
        db.close()


def _tampered(detail: str) -> TrustError:
    return TrustError(f"the backup archive does not match its manifest: {detail}",
                      reason="backup_tampered")


def _safe_name(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in name:
        raise _tampered(f"unsafe member name {name!r:.100}")
    return path.as_posix()


def _extract_verified(archive: Path, staging: Path, secrets: domain.Secrets,
                      pkcs11_module: str | None) -> dict[str, Any]:
    """Extract regular members into ``staging``; check the signature, then every member."""
    try:
        tar = tarfile.open(archive, mode="r:")  # noqa: SIM115 - closed below
    except (OSError, tarfile.TarError) as exc:
        raise InputError(f"cannot read the archive {archive}: {exc}",
                         reason="backup_unreadable") from None
    try:
        seen, manifest_bytes, signature_bytes = _read_members(tar, staging)
    finally:
        tar.close()
    manifest = _parse_manifest(manifest_bytes)
    _verify_signature(manifest, manifest_bytes or b"", signature_bytes, staging, seen,
                      secrets, pkcs11_module)
    listed: dict[str, str] = manifest["members"]
    if set(listed) != set(seen):
        missing, extra = sorted(set(listed) - set(seen)), sorted(set(seen) - set(listed))
        raise _tampered(f"missing {missing[:5]}, unlisted {extra[:5]}")
    for name, expected in sorted(listed.items()):
        if seen[name] != expected:
            raise _tampered(f"{name} has SHA-256 {seen[name][:16]}..., the manifest says "
                            f"{expected[:16]}...")
    return manifest


def _read_members(tar: tarfile.TarFile, staging: Path,
                  ) -> tuple[dict[str, str], bytes | None, bytes | None]:
    """Extract every member but the manifest and its signature (returned as bytes)."""
    seen: dict[str, str] = {}
    manifest_bytes: bytes | None = None
    signature_bytes: bytes | None = None
    try:
        for count, info in enumerate(tar):
            name = _check_member(info, count, seen)
            handle = tar.extractfile(info)
            if handle is None:
                raise _tampered(f"{name} cannot be read")
            if name == MANIFEST:
                if manifest_bytes is not None or info.size > MAX_MANIFEST_BYTES:
                    raise _tampered("a second or oversized manifest")
                manifest_bytes = handle.read()
            elif name == SIGNATURE:
                if signature_bytes is not None or info.size > MAX_SIGNATURE_BYTES:
                    raise _tampered("a second or oversized signature")
                signature_bytes = handle.read()
            else:
                seen[name] = _extract_one(handle, staging / name)
    except (OSError, tarfile.TarError) as exc:
        raise _tampered(f"damaged archive ({type(exc).__name__})") from None
    return seen, manifest_bytes, signature_bytes


def _check_member(info: tarfile.TarInfo, count: int, seen: dict[str, str]) -> str:
    if count > MAX_MEMBERS:
        raise _tampered("too many members")
    name = _safe_name(info.name)
    if not info.isfile() or info.size > MAX_MEMBER_BYTES:
        raise _tampered(f"{name} is not a regular file of a sane size")
    if name in seen:
        raise _tampered(f"{name} appears twice")
    return name


def _extract_one(handle: IO[bytes], out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = hashlib.sha256()
    with out.open("xb") as sink:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            sink.write(chunk)
    out.chmod(0o600)
    return digest.hexdigest()


def _unverified(detail: str, reason: str = "backup_signature_invalid") -> TrustError:
    return TrustError(f"the backup archive's signature does not hold: {detail}", reason=reason)


def _signing_key_ref(signed_by: dict[str, Any], source: Path, staging: Path,
                     seen: dict[str, str], pkcs11_module: str | None) -> str:
    """The reference to open the signing key by, never one the archive alone could satisfy."""
    ref = parse_key_ref(str(signed_by["key_ref"]))
    if ref.kind is KeyRefKind.FILE and ref.path is not None:
        try:
            rel = Path(ref.path).relative_to(source).as_posix()
        except ValueError:
            raise _unverified("the signing key is not one of the archive's keys") from None
        if not rel.startswith("keys/") or rel not in seen:
            raise _unverified("the signing key is not one of the archive's keys")
        return f"file:{staging / rel}"
    if ref.kind is KeyRefKind.PKCS11:
        if pkcs11_module is None or ref.module is None or \
                Path(ref.module).absolute() != Path(pkcs11_module).absolute():
            raise _unverified("the archive was signed by a PKCS#11 key: name your PKCS#11 "
                              "module (IOTRUST_PKCS11_MODULE) to open it",
                              reason="backup_unverifiable")
        return str(signed_by["key_ref"])
    raise _unverified("the signing key is neither an encrypted key file nor a PKCS#11 key")


def _verify_signature(manifest: dict[str, Any], manifest_bytes: bytes,  # noqa: PLR0917 - private, one caller
                      signature_bytes: bytes | None, staging: Path, seen: dict[str, str],
                      secrets: domain.Secrets, pkcs11_module: str | None) -> None:
    """The manifest must be signed by a domain key the operator's own secrets open."""
    if signature_bytes is None:
        raise _unverified("the archive carries no signature", reason="backup_unsigned")
    try:
        sig_doc = json.loads(signature_bytes)
        ok = isinstance(sig_doc, dict) and sig_doc.get("format") == SIGNATURE_FORMAT \
            and sig_doc.get("alg") == "ES256" and isinstance(sig_doc.get("signature"), str)
        der = base64.b64decode(sig_doc["signature"], validate=True) if ok else b""
    except (ValueError, UnicodeDecodeError):
        ok, der = False, b""
    if not ok or not der:
        raise _unverified("the signature member is not an iotrust backup signature")
    ref = _signing_key_ref(manifest["signed_by"], Path(manifest["source_data_dir"]), staging,
                           seen, pkcs11_module)
    try:
        signer = secrets.open(ref)
    except IotrustError as exc:
        raise TrustError("cannot open the key that signed this backup with your passphrase or "
                         "PIN: it is not your trust domain's key, or the secret is missing "
                         "(IOTRUST_PASSPHRASE_FILE / IOTRUST_PKCS11_PIN)",
                         reason="backup_unverifiable", detail=exc.message) from None
    try:
        key = signer.public_key
    finally:
        _close(signer)
    if pki.spki_sha256(key) != manifest["signed_by"].get("spki_sha256"):
        raise _unverified("the manifest names another signing key than the one it opens")
    try:
        key.verify(der, SIGNED_CONTEXT + manifest_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _unverified("the manifest was altered after it was signed, or signed by "
                          "another key") from None


def _parse_manifest(data: bytes | None) -> dict[str, Any]:
    if data is None:
        raise _tampered("no manifest")
    try:
        doc = json.loads(data)
        if isinstance(doc, dict) and doc.get("format") == UNSIGNED_FORMAT:
            raise _unverified("it was made before backups were signed (format "
                              f"{UNSIGNED_FORMAT}); make a new backup", reason="backup_unsigned")
        ok = (isinstance(doc, dict) and doc.get("format") == FORMAT
              and isinstance(doc.get("signed_by"), dict)
              and isinstance(doc["signed_by"].get("key_ref"), str)
              and isinstance(doc["signed_by"].get("ca_id"), str)
              and doc.get("database") in ("sqlite", "postgresql")
              and isinstance(doc.get("members"), dict)
              and all(isinstance(k, str) and isinstance(v, str) and len(v) == 64  # noqa: PLR2004
                      for k, v in doc["members"].items())
              and isinstance(doc.get("source_data_dir"), str)
              and (doc.get("event_head") is None or isinstance(doc["event_head"], str)))
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise _tampered("the manifest is not an iotrust backup manifest")
    for name in doc["members"]:
        _safe_name(name)
    if doc.get("event_head") is not None:
        parse_anchor(doc["event_head"])
    return dict(doc)


def _verify_sqlite(path: Path, head: str | None, staging: Path) -> int:
    """The chain of the staged copy must be intact and contain the manifest's head."""
    copy = Database.open(f"sqlite:///{path}")  # an older archive is migrated here, in staging
    try:
        anchor = parse_anchor(head) if head else None
        report = eventlog.verify(copy, anchor)
        report.raise_for_breaks()
        anchor_file = staging / "event-log.anchor"
        if anchor_file.is_file():  # the operator's exported anchor must still hold too
            eventlog.verify(copy, parse_anchor(anchor_file.read_text())).raise_for_breaks()
        return report.count
    finally:
        copy.close()


def _restore_postgres(dump: Path, settings: Settings, head: str | None) -> int:
    tool = shutil.which("pg_restore")
    if tool is None:
        raise BackendError("pg_restore is not installed", reason="pg_dump_missing")
    _run([tool, "--clean", "--if-exists", "--no-owner", "--no-privileges",
          f"--dbname={_libpq(settings.database_url)}", str(dump)], "pg_restore")
    dump.unlink()
    db = Database.open(settings.database_url)
    try:
        report = eventlog.verify(db, parse_anchor(head) if head else None)
        report.raise_for_breaks()
        return report.count
    finally:
        db.close()


def _moved(ref: str, source: Path, target: Path) -> str | None:
    """``ref`` pointed from under ``source`` to under ``target`` (``None``: leave it)."""
    parsed = parse_key_ref(ref)
    if parsed.kind is KeyRefKind.PKCS11 or parsed.path is None:
        return None
    try:
        rel = Path(parsed.path).relative_to(source)
    except ValueError:
        return None
    return f"{parsed.kind}:{target / rel}"


def _rewrite_keyring(staging: Path, source: Path, target: Path) -> int:
    path = staging / "tuf" / "keys.json"
    if not path.is_file() or source == target:
        return 0
    ring = Keyring.from_json(path.read_bytes())
    changed = 0
    for repo, roles in ring.roles.items():
        for role, keys in roles.items():
            refs = tuple(_moved(r, source, target) or r for r in keys.refs)
            if refs != keys.refs:
                changed += sum(a != b for a, b in zip(refs, keys.refs, strict=True))
                ring = ring.replace(repo, role, RoleKeys(keys.threshold, refs))
    if changed:
        write_atomic(path, ring.to_json(), mode=0o600)
    return changed


def _rewrite_ca_refs(db: Database, source: Path, target: Path) -> int:
    if source == target:
        return 0
    changed = 0
    with db.transaction() as tx:
        for ca in tx.list_cas():
            moved = _moved(ca.key_ref, source, target)
            if moved is not None:
                tx.set_ca_key_ref(ca.id, moved)
                changed += 1
    return changed


def _regenerate_broker(db: Database, settings: Settings, clock: Clock,
                       passphrase: bytes | None, pin: str | None) -> str:
    if not (broker_svc.broker_dir(settings) / "broker.json").is_file():
        return "not configured"
    try:
        broker_svc.configure(db, settings, domain.Secrets(passphrase=passphrase, pin=pin), clock)
    except IotrustError as exc:
        return f"not regenerated ({exc.reason}): run `iotrust broker config`"
    return "regenerated"
