"""ECDSA floors and certificate issuance from a CSR.

* ``crypto_floor``: raw ECDSA P-256/SHA-256 sign+verify pairs per second with ``cryptography``,
  on a message the size of a device certificate's to-be-signed part. Sign-only and verify-only
  rates go in the details (the voucher and onboarding floors are built from them).
* ``issuance_from_csr``: ``pki.check_csr`` (one verification) plus
  ``IssuingContext.issue_device`` (one signature) plus DER output, with a software CA key, for
  CSRs made before the timer starts. Floor: one sign+verify pair, measured in the same rounds.
* ``issuance_service``: the same through ``services.credentials.Issuer.issue_for_device``, one
  SQLite registry transaction per certificate (key record, credential row, hash-chained event).

Nothing here asserts a speed; it measures and returns :class:`~benchmarks.Result` values.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from benchmarks import ECDSA_SHA256, Config, Result, SoftKey, best, per_second, seconds
from benchmarks.registry import ACTOR, add_manufacturer, device_id, insert_devices, open_domain
from iotrust.core import pki
from iotrust.services.credentials import Issuer

CRL_URL = "https://iotrust.example/v1/crl/issuing-bench.crl"
LIFETIME = timedelta(days=30)


# --------------------------------------------------------------------------------------------
# Floors (also used by the voucher and onboarding benchmarks)
# --------------------------------------------------------------------------------------------


def sign_verify_rate(n: int, message_len: int) -> float:
    """ECDSA P-256 sign-then-verify pairs per second on ``message_len``-byte messages."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    message = os.urandom(message_len)

    def work() -> None:
        for _ in range(n):
            public.verify(key.sign(message, ECDSA_SHA256), message, ECDSA_SHA256)

    return per_second(n, seconds(work))


def sign_rate(n: int, message_len: int) -> float:
    """ECDSA P-256 signatures per second."""
    key = ec.generate_private_key(ec.SECP256R1())
    message = os.urandom(message_len)

    def work() -> None:
        for _ in range(n):
            key.sign(message, ECDSA_SHA256)

    return per_second(n, seconds(work))


def verify_rate(n: int, message_len: int) -> float:
    """ECDSA P-256 verifications per second (one signature verified ``n`` times)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    message = os.urandom(message_len)
    signature = key.sign(message, ECDSA_SHA256)

    def work() -> None:
        for _ in range(n):
            public.verify(signature, message, ECDSA_SHA256)

    return per_second(n, seconds(work))


def issuing_context() -> pki.IssuingContext:
    """A root and issuing CA with software keys, as an issuance context."""
    now = datetime.now(UTC)
    root_key, issuing_key = SoftKey(), SoftKey()
    root = pki.build_root_ca(root_key, "Bench Root CA", "bench-fleet", now - timedelta(days=1),
                             timedelta(days=3650))
    issuing = pki.build_issuing_ca(root_key, root, issuing_key.public_key, "Bench Issuing CA",
                                   "bench-fleet", now - timedelta(days=1), timedelta(days=1825),
                                   CRL_URL)
    return pki.IssuingContext.from_ca(issuing, issuing_key)


def device_tbs_length() -> int:
    """Length of a real device certificate's ``tbsCertificate`` (the floor's message size)."""
    cert = issuing_context().issue_device(
        device_id=device_id(0), public_key=SoftKey().public_key,
        serial_number=pki.new_serial_number(os.urandom(20)), not_before=datetime.now(UTC),
        lifetime=LIFETIME)
    return len(cert.tbs_certificate_bytes)


def make_csrs(count: int) -> list[bytes]:
    """``count`` DER CSRs, each for a fresh P-256 key (what devices send)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    out = []
    for _ in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(
            key, hashes.SHA256())
        out.append(csr.public_bytes(serialization.Encoding.DER))
    return out


# --------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------


def bench_crypto_floor(config: Config) -> list[Result]:
    """Raw ECDSA P-256 sign+verify pairs per second (and sign-only, verify-only)."""
    n = config.pick(5_000, 2_000)
    length = device_tbs_length()
    pairs = [sign_verify_rate(n, length) for _ in range(config.rounds)]
    signs = [sign_rate(n, length) for _ in range(config.rounds)]
    verifies = [verify_rate(n, length) for _ in range(config.rounds)]
    details = {"message_bytes": length, "pairs_rounds_per_s": pairs,
               "sign_per_s": best(signs), "verify_per_s": best(verifies),
               "sign_rounds_per_s": signs, "verify_rounds_per_s": verifies}
    return [Result(name="crypto_floor", rate=best(pairs), n=n, details=details)]


def _issue_all(ctx: pki.IssuingContext, csrs: list[bytes], ids: list[str]) -> float:
    now = datetime.now(UTC)

    def work() -> None:
        for csr, id_ in zip(csrs, ids, strict=True):
            public_key = pki.check_csr(csr)
            cert = ctx.issue_device(device_id=id_, public_key=public_key,
                                    serial_number=pki.new_serial_number(os.urandom(20)),
                                    not_before=now, lifetime=LIFETIME)
            cert.public_bytes(serialization.Encoding.DER)

    return per_second(len(csrs), seconds(work))


def bench_issuance(config: Config) -> list[Result]:
    """``check_csr`` + ``IssuingContext.issue_device`` per second, then the service path."""
    n = config.pick(2_000, 500)
    length = device_tbs_length()
    ctx = issuing_context()
    csrs = make_csrs(n * config.rounds)
    ids = [device_id(i, b"issuance") for i in range(n * config.rounds)]
    _issue_all(ctx, csrs[:10], ids[:10])  # warm caches (extensions, placeholder encodings)
    ours: list[float] = []
    floor: list[float] = []
    for r in range(config.rounds):
        floor.append(sign_verify_rate(n, length))
        ours.append(_issue_all(ctx, csrs[r * n:(r + 1) * n], ids[r * n:(r + 1) * n]))
    core = Result(
        name="issuance_from_csr", rate=best(ours), n=n, floor="ECDSA sign+verify",
        floor_rate=best(floor), target=0.40,
        details={"rounds_per_s": ours, "floor_rounds_per_s": floor, "tbs_bytes": length})
    return [core, _bench_issuance_service(config, length)]


def _bench_issuance_service(config: Config, length: int) -> Result:
    n = config.pick(1_000, 300)
    with tempfile.TemporaryDirectory(prefix="iotrust-bench-") as tmp:
        domain = open_domain(Path(tmp) / "data")
        try:
            add_manufacturer(domain.db, domain.clock)
            total = n * config.rounds + 1
            insert_devices(domain.db, total, now=domain.clock.now(), salt=b"svc")
            ids = [device_id(i, b"svc") for i in range(total)]
            csrs = make_csrs(total)
            issuer = Issuer(domain.secrets, domain.clock)
            with domain.db.transaction() as tx:  # opens the CA key once, as a server would
                issuer.issue_for_device(tx, device_id=ids[-1], csr=csrs[-1], actor=ACTOR)
            ours: list[float] = []
            floor: list[float] = []
            for r in range(config.rounds):
                batch = list(zip(csrs[r * n:(r + 1) * n], ids[r * n:(r + 1) * n], strict=True))

                def work(batch: list[tuple[bytes, str]] = batch) -> None:
                    for csr, id_ in batch:
                        with domain.db.transaction() as tx:
                            issuer.issue_for_device(tx, device_id=id_, csr=csr, actor=ACTOR)

                floor.append(sign_verify_rate(n, length))
                ours.append(per_second(n, seconds(work)))
        finally:
            domain.db.close()
    return Result(
        name="issuance_service", rate=best(ours), n=n, floor="ECDSA sign+verify",
        floor_rate=best(floor),
        details={"rounds_per_s": ours, "floor_rounds_per_s": floor,
                 "what": "Issuer.issue_for_device, one SQLite transaction each "
                         "(CSR check, key record, credential, event)"})
