"""Safe defaults of ``iotrust serve`` (issue 10, item 5).

* The production profile (``--production`` or ``IOTRUST_PROFILE=production``) refuses plain HTTP
  (``plain_http_refused``) unless ``--unsafe-plain-http``; with ``--tls-cert/--tls-key`` a real
  server answers over HTTPS.
* Any profile refuses to start with an unencrypted CA key (a plaintext PEM behind a ``file:``
  reference or a ``devfile:`` reference) unless ``--unsafe-unencrypted-ca-key``; production also
  refuses a development passphrase file next to the keys.
* The development path (``iotrust run`` / ``make run``) still starts on plain HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.integration.fleet import PASSPHRASE, Fleet, Maker, build_fleet
from tests.integration.server import free_port
from typer.testing import CliRunner

from iotrust.adapters.keys.file import EncryptedFileSigner
from iotrust.adapters.keys.refs import parse_key_ref
from iotrust.adapters.sql.store import Database
from iotrust.cli.main import app as cli_app
from iotrust.core.records import CertificateAuthority
from iotrust.errors import InputError, TrustError
from iotrust.ports import SystemClock
from iotrust.services import safety
from iotrust.services.domain import KeyBackend, init_domain
from iotrust.services.settings import Settings


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return build_fleet(tmp_path_factory.mktemp("safe"), makers=(Maker("widgetco", count=1),))


def _serve(fleet: Fleet, *args: str, profile: str | None = None) -> tuple[int, str]:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("IOTRUST_")}
    env.update({k: v for k, v in fleet.server_env().items() if k.startswith("IOTRUST_")})
    env["IOTRUST_PROFILE"] = profile
    result = CliRunner().invoke(cli_app, ["--json", "serve", "--port", "1", *args], env=env)
    return result.exit_code, result.stderr


def _reason(stderr: str) -> str:
    return str(json.loads(stderr)["reason"])


@pytest.mark.parametrize(("args", "profile"), [(("--production",), None), ((), "production")])
def test_production_refuses_plain_http(fleet: Fleet, args: tuple[str, ...],
                                       profile: str | None) -> None:
    code, stderr = _serve(fleet, *args, profile=profile)
    assert code == 77, stderr
    assert _reason(stderr) == "plain_http_refused"


def test_startup_options_are_checked() -> None:
    with pytest.raises(InputError) as half:
        safety.StartupOptions(safety.Profile.PRODUCTION, tls_cert=Path("/etc/hostname"))
    assert half.value.reason == "tls_incomplete"
    with pytest.raises(InputError) as bad:
        safety.Profile.resolve(env={"IOTRUST_PROFILE": "prod-ish"})
    assert bad.value.reason == "invalid_profile"
    unsafe = safety.StartupOptions(safety.Profile.PRODUCTION, unsafe_plain_http=True)
    safety.check_transport(unsafe)  # named unsafe, allowed
    safety.check_transport(safety.StartupOptions(safety.Profile.DEVELOPMENT))


def _tls_pair(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "tls.crt.pem", folder / "tls.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_production_serves_over_tls(fleet: Fleet, tmp_path: Path) -> None:
    cert, key = _tls_pair(tmp_path)
    port = free_port()
    env = {**fleet.server_env(), "IOTRUST_PROFILE": "production"}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "iotrust.cli.main", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
            env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                resp = httpx.get(f"https://localhost:{port}/v1/health", verify=str(cert),
                                 timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert resp.status_code == 200
        with pytest.raises(httpx.TransportError):  # no plain HTTP on the TLS port
            httpx.get(f"http://localhost:{port}/v1/health", timeout=2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    assert "production profile" in " ".join(log.read_text().split())


def _domain_with_plaintext_key(base: Path) -> Settings:
    settings = Settings(data_dir=base / "data", database_url=f"sqlite:///{base / 'db.sqlite'}")
    settings.data_dir.mkdir(parents=True, mode=0o700)
    db = Database.open(settings.database_url)
    try:
        init_domain(db, settings, SystemClock(), name="plain", owner="owner",
                    backend=KeyBackend(kind="file", passphrase=PASSPHRASE),
                    public_url="http://127.0.0.1:8443")
        with db.transaction() as tx:
            issuing = tx.list_cas(role="issuing")[0]
        path = Path(str(parse_key_ref(issuing.key_ref).path))
        signer = EncryptedFileSigner.load(path, PASSPHRASE)
        path.write_bytes(signer.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    finally:
        db.close()
    return settings


def test_unencrypted_ca_key_refuses_to_start(tmp_path: Path) -> None:
    settings = _domain_with_plaintext_key(tmp_path)
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("IOTRUST_")}
    env.update({"IOTRUST_DATA": str(settings.data_dir),
                "IOTRUST_DATABASE_URL": settings.database_url,
                "IOTRUST_PASSPHRASE": PASSPHRASE.decode()})
    result = CliRunner().invoke(cli_app, ["--json", "serve", "--port", "1"], env=env)
    assert result.exit_code == 77, result.stderr
    assert _reason(result.stderr) == "unencrypted_ca_key"

    db = Database.open(settings.database_url)
    try:
        dev = safety.StartupOptions(safety.Profile.DEVELOPMENT)
        with pytest.raises(TrustError) as refused:
            safety.check_startup(db, settings, dev)
        assert refused.value.reason == "unencrypted_ca_key"
        safety.check_startup(db, settings, safety.StartupOptions(
            safety.Profile.DEVELOPMENT, unsafe_unencrypted_ca_key=True))
        # a devfile: reference is an unencrypted key too
        with db.transaction() as tx:
            root = tx.list_cas(role="root")[0]
            tx.set_ca_key_ref(root.id, "devfile:" + str(parse_key_ref(root.key_ref).path))
        assert set(safety.unprotected_ca_keys(db)) == {
            root.id, *(c.id for c in _cas(db) if c.role == "issuing")}
    finally:
        db.close()


def _cas(db: Database) -> list[CertificateAuthority]:
    with db.transaction() as tx:
        return list(tx.list_cas())


def test_development_passphrase_file_refused_in_production(fleet: Fleet, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(fleet.settings.data_dir, data)
    (data / "passphrase").write_bytes(PASSPHRASE + b"\n")
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'iotrust.db'}")
    db = Database.open(settings.database_url)
    try:
        prod = safety.StartupOptions(safety.Profile.PRODUCTION, unsafe_plain_http=True)
        with pytest.raises(TrustError) as refused:
            safety.check_startup(db, settings, prod)
        assert refused.value.reason == "development_passphrase"
        # the development profile (`iotrust run`, `make run`) accepts it
        safety.check_startup(db, settings, safety.StartupOptions(safety.Profile.DEVELOPMENT))
    finally:
        db.close()


def test_make_run_still_serves_plain_http_in_development(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IOTRUST_") or k == "IOTRUST_PROFILE"}
    env.pop("IOTRUST_PROFILE", None)
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "iotrust.cli.main", "--data", str(tmp_path / "data"), "run",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert resp.status_code == 200
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    assert "development profile" in " ".join(log.read_text().split())
