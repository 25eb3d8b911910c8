"""Backups are signed by the trust domain's issuing CA key; an altered archive is refused (T57).

The attacker here holds the archive (a lost backup) but not the domain passphrase. Whatever
they change — one byte of a member with the manifest's hash recomputed, one byte of the manifest
or of its signature, the signature removed, an archive re-signed with a key of their own, a
plaintext key, a PKCS#11 module of their choosing — ``restore`` refuses before anything moves:
an existing trust domain (restored over with ``--force``) stays exactly as it was.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.integration.fleet import PASSPHRASE, Fleet, Maker, build_fleet
from tests.integration.test_backup_restore import _cli

from iotrust.adapters.keys.file import DeviceFileKey, EncryptedFileSigner
from iotrust.core import pki
from iotrust.errors import TrustError
from iotrust.ports import FixedClock
from iotrust.services import backup as backup_svc
from iotrust.services.settings import Settings

ATTACKER_PASSPHRASE = b"a passphrase the attacker chose for their own key"
ACTOR = "tests@backup-signature"


@dataclass(frozen=True, slots=True)
class Backed:
    fleet: Fleet
    archive: Path
    clock: FixedClock


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory) -> Backed:
    base = tmp_path_factory.mktemp("signed-backup")
    fleet = build_fleet(base / "fleet", makers=(Maker("widgetco", count=1),))
    clock = FixedClock(datetime.now(UTC))
    archive = base / "backup.tar"
    db = fleet.open_db()
    try:
        report = backup_svc.backup(db, fleet.settings, clock, archive, actor=ACTOR,
                                   secrets=fleet.secrets)
    finally:
        db.close()
    assert report.members >= 4
    return Backed(fleet, archive, clock)


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        out = {}
        for info in tar:
            handle = tar.extractfile(info)
            assert handle is not None
            out[info.name] = handle.read()
    return out


def _write(members: dict[str, bytes], out: Path) -> Path:
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return out


def _manifest(members: dict[str, bytes]) -> dict[str, object]:
    doc = json.loads(members["manifest.json"])
    assert isinstance(doc, dict)
    return doc


def _dump(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _restore_over_the_domain(backed: Backed, archive: Path, *,
                             passphrase: bytes | None = PASSPHRASE,
                             pkcs11_module: str | None = None) -> str:
    """Restore ``archive`` over the live domain with ``force``; return the refusal's reason."""
    data = backed.fleet.settings.data_dir
    before = _snapshot(data)
    with pytest.raises(TrustError) as refused:
        backup_svc.restore(archive, backed.fleet.settings, backed.clock, passphrase=passphrase,
                           pin=None, actor=ACTOR, force=True, pkcs11_module=pkcs11_module)
    assert _snapshot(data) == before, "a refused restore changed the trust domain"
    assert not list(data.parent.glob(f"{data.name}.replaced-*"))
    assert not list(data.parent.glob(".iotrust-staging-*"))
    return refused.value.reason


def _sign_with(key: EncryptedFileSigner | DeviceFileKey, manifest: bytes) -> bytes:
    der = key.sign(backup_svc.SIGNED_CONTEXT + manifest)
    return json.dumps({"format": backup_svc.SIGNATURE_FORMAT, "alg": "ES256",
                       "signature": base64.b64encode(der).decode()}).encode()


def test_the_archive_is_signed_by_the_issuing_ca_key(backed: Backed, tmp_path: Path) -> None:
    members = _members(backed.archive)
    assert list(members)[:2] == ["manifest.json", "manifest.sig"]
    signed_by = _manifest(members)["signed_by"]
    assert isinstance(signed_by, dict)
    db = backed.fleet.open_db()
    try:
        with db.transaction(readonly=True) as tx:
            issuing = next(c for c in tx.list_cas(role="issuing", state="active"))
    finally:
        db.close()
    assert signed_by["ca_id"] == issuing.id
    cert_key = pki.load_certificate(issuing.certificate_pem.encode()).public_key()
    assert isinstance(cert_key, ec.EllipticCurvePublicKey)
    assert signed_by["spki_sha256"] == pki.spki_sha256(cert_key)
    der = base64.b64decode(json.loads(members["manifest.sig"])["signature"])
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415

    cert_key.verify(der, backup_svc.SIGNED_CONTEXT + members["manifest.json"],
                    ec.ECDSA(hashes.SHA256()))
    # and the genuine archive restores (into a new folder)
    target = Settings(data_dir=tmp_path / "restored",
                      database_url=f"sqlite:///{tmp_path / 'restored' / 'iotrust.db'}")
    report = backup_svc.restore(backed.archive, target, backed.clock, passphrase=PASSPHRASE,
                                pin=None, actor=ACTOR)
    assert report.event_head == _manifest(members)["event_head"]


def test_a_member_changed_with_its_hash_recomputed_is_refused(backed: Backed,
                                                                tmp_path: Path) -> None:
    members = _members(backed.archive)
    db = bytearray(members["registry/iotrust.db"])
    db[len(db) // 2] ^= 0x01
    members["registry/iotrust.db"] = bytes(db)
    doc = _manifest(members)
    listed = doc["members"]
    assert isinstance(listed, dict)
    listed["registry/iotrust.db"] = hashlib.sha256(db).hexdigest()
    members["manifest.json"] = _dump(doc)
    forged = _write(members, tmp_path / "rehashed.tar")
    assert _restore_over_the_domain(backed, forged) == "backup_signature_invalid"
    # the CLI says so with the refusal exit code, and leaves the target alone
    env = {k: v for k, v in backed.fleet.server_env().items()
           if k.startswith("IOTRUST_") and k not in ("IOTRUST_DATA", "IOTRUST_DATABASE_URL")}
    target = tmp_path / "cli-target"
    ran = _cli(env, "restore", str(forged), "--data", str(target))
    assert ran.returncode == 77, ran.stderr
    assert json.loads(ran.stderr)["reason"] == "backup_signature_invalid"
    assert not target.exists()


@pytest.mark.parametrize("member", ["manifest.json", "manifest.sig"])
def test_one_flipped_byte_in_the_manifest_or_its_signature_is_refused(
        backed: Backed, tmp_path: Path, member: str) -> None:
    members = _members(backed.archive)
    data = bytearray(members[member])
    if member == "manifest.json":  # a hex digit of a member hash: still valid JSON
        at = data.index(b'"members"') + 40
        while chr(data[at]) not in "0123456789abcdef":
            at += 1
        data[at] = ord("0") if data[at] != ord("0") else ord("1")
    else:  # a character of the base64 signature
        at = data.index(b'"signature"') + 20
        data[at] = ord("A") if data[at] != ord("A") else ord("B")
    members[member] = bytes(data)
    assert _restore_over_the_domain(backed, _write(members, tmp_path / "flipped.tar")) == \
        "backup_signature_invalid"


def test_an_unsigned_archive_is_refused(backed: Backed, tmp_path: Path) -> None:
    members = _members(backed.archive)
    del members["manifest.sig"]
    assert _restore_over_the_domain(backed, _write(members, tmp_path / "nosig.tar")) == \
        "backup_unsigned"
    doc = _manifest(members)
    doc["format"] = backup_svc.UNSIGNED_FORMAT
    members["manifest.json"] = _dump(doc)
    assert _restore_over_the_domain(backed, _write(members, tmp_path / "v1.tar")) == \
        "backup_unsigned"


def _resigned(backed: Backed, tmp_path: Path,
              make: Callable[[Path], tuple[EncryptedFileSigner | DeviceFileKey, str]]) -> Path:
    """The archive with the attacker's key added under keys/ and the manifest re-signed."""
    members = _members(backed.archive)
    tmp_path.mkdir(mode=0o700)
    key_file = tmp_path / "attacker.key.pem"
    key, kind = make(key_file)
    source = Path(str(_manifest(members)["source_data_dir"]))
    members["keys/attacker.key.pem"] = key_file.read_bytes()
    doc = _manifest(members)
    listed = doc["members"]
    assert isinstance(listed, dict)
    listed["keys/attacker.key.pem"] = hashlib.sha256(key_file.read_bytes()).hexdigest()
    doc["signed_by"] = {"ca_id": "attacker", "key_ref": f"{kind}:{source}/keys/attacker.key.pem",
                        "spki_sha256": pki.spki_sha256(key.public_key)}
    members["manifest.json"] = _dump(doc)
    members["manifest.sig"] = _sign_with(key, members["manifest.json"])
    return _write(members, tmp_path / f"resigned-{kind}.tar")


def test_an_archive_re_signed_with_another_key_is_refused(backed: Backed,
                                                           tmp_path: Path) -> None:
    encrypted = _resigned(backed, tmp_path / "enc", lambda p: (
        EncryptedFileSigner.generate(p, ATTACKER_PASSPHRASE), "file"))
    assert _restore_over_the_domain(backed, encrypted) == "backup_unverifiable"
    plaintext = _resigned(backed, tmp_path / "dev", lambda p: (DeviceFileKey.generate(p),
                                                               "devfile"))
    assert _restore_over_the_domain(backed, plaintext) == "backup_signature_invalid"


def test_a_pkcs11_module_named_by_the_archive_is_never_loaded(backed: Backed,
                                                               tmp_path: Path) -> None:
    members = _members(backed.archive)
    doc = _manifest(members)
    evil = tmp_path / "evil.so"
    doc["signed_by"] = {"ca_id": "x", "spki_sha256": "0" * 64,
                        "key_ref": f"pkcs11:module={evil};token=t;object=o"}
    members["manifest.json"] = _dump(doc)
    forged = _write(members, tmp_path / "p11.tar")
    assert _restore_over_the_domain(backed, forged) == "backup_unverifiable"
    assert _restore_over_the_domain(backed, forged, pkcs11_module="/usr/lib/other.so") == \
        "backup_unverifiable"


def test_without_the_passphrase_the_signature_cannot_be_checked(backed: Backed,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                ) -> None:
    for var in ("IOTRUST_PASSPHRASE", "IOTRUST_PASSPHRASE_FILE"):
        monkeypatch.delenv(var, raising=False)
    assert _restore_over_the_domain(backed, backed.archive, passphrase=None) == \
        "backup_unverifiable"
    wrong = _restore_over_the_domain(backed, backed.archive, passphrase=ATTACKER_PASSPHRASE)
    assert wrong == "backup_unverifiable"
