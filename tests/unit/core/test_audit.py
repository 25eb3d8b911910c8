"""The posture audit's checks on in-memory fleets: each one fires on a fleet made to trip it
and stays silent on one that does not (no check that cannot fail); key quality (ROCA from its
published structure), MQTT filter intersection, blast radius and suppressions."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from tests.unit.core.audit_memory import NOW, Cred, Dev, MemorySnapshot

from iotrust.core import hardware as hw
from iotrust.core.audit import (
    AuditConfig,
    CaRow,
    ConfigDocument,
    CrlView,
    EventLogStatus,
    Finding,
    ManufacturerRow,
    ModelRow,
    Severity,
    ZombieRow,
    apply_suppressions,
    run_check,
)
from iotrust.core.audit_checks import ALL_CHECKS, check_by_id
from iotrust.core.audit_config import (
    ConfigTarget,
    current_targets,
    describe,
    secret_fields,
    settings_digest,
)
from iotrust.core.audit_keys import (
    P256_SPKI_BASE64,
    certificate_key_report,
    is_p256_certificate,
    key_problems,
    roca_fingerprint,
)
from iotrust.core.audit_reach import PolicySet, blast_radius, filters_intersect
from iotrust.core.events import EventDraft, chain_next, verify_chain
from iotrust.core.policy import Action, Policy, Rule
from iotrust.errors import InputError

ROOT = Path(__file__).resolve().parents[3]
D1, D2, D3 = "dev-" + "b" * 26, "dev-" + "c" * 26, "dev-" + "d" * 26
_SIGNER = ec.generate_private_key(ec.SECP256R1())


def cert_pem(public_key: object, cn: str = "x") -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(1).not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=30)).sign(_SIGNER, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


P256_PEM = cert_pem(ec.generate_private_key(ec.SECP256R1()).public_key())
RSA1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
RSA2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ids(findings: list[Finding]) -> list[str]:
    return [f.check_id for f in findings]


def run(check_id: str, snap: MemorySnapshot) -> list[Finding]:
    return list(run_check(check_by_id(check_id), snap).findings)


# ------------------------------------------------------------------------------ key quality


def _is_probable_prime(n: int, rng: random.Random) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29):
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(24):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _roca_prime(bits: int, primorial: int, rng: random.Random) -> int:
    """A prime of the RSALib form k*M + (65537^a mod M) (Nemec et al. 2017, section 2)."""
    while True:
        k = rng.getrandbits(bits - primorial.bit_length())
        p = k * primorial + pow(65537, rng.randrange(1, 2**20), primorial)
        if p.bit_length() == bits and _is_probable_prime(p, rng):
            return p


def _primorial(count: int) -> int:
    primes: list[int] = []
    n = 2
    while len(primes) < count:
        if all(n % p for p in primes):
            primes.append(n)
        n += 1
    out = 1
    for p in primes:
        out *= p
    return out


def test_roca_structured_modulus_is_detected_and_random_keys_are_not() -> None:
    rng = random.Random(15361)
    m = _primorial(71)  # the M of 992-1952-bit keys: primes 2..353
    n = _roca_prime(512, m, rng) * _roca_prime(512, m, rng)
    assert roca_fingerprint(n)
    key = rsa.RSAPublicNumbers(65537, n).public_key()
    report = key_problems(key)
    assert [p.code for p in report.problems][:1] == ["roca"]
    assert report.problems[0].severity is Severity.CRITICAL
    # ordinary keys and off-by-one moduli do not match
    assert not roca_fingerprint(RSA2048.public_key().public_numbers().n)
    assert not roca_fingerprint(RSA1024.public_key().public_numbers().n)
    assert not roca_fingerprint(n + 2)


def test_key_problems_by_family() -> None:
    assert key_problems(ec.generate_private_key(ec.SECP256R1()).public_key()).problems == ()
    small = key_problems(RSA1024.public_key())
    assert [p.code for p in small.problems] == ["rsa_too_small"]
    assert key_problems(RSA2048.public_key()).problems[0].code == "not_fleet_algorithm"
    assert key_problems(RSA2048.public_key(), fleet_algorithm_only=False).problems == ()
    curve = key_problems(ec.generate_private_key(ec.SECP192R1()).public_key())
    assert curve.problems[0].code == "ec_curve_too_small"
    p384 = key_problems(ec.generate_private_key(ec.SECP384R1()).public_key())
    assert p384.problems[0].severity is Severity.LOW
    three = rsa.RSAPublicNumbers(3, RSA2048.public_key().public_numbers().n).public_key()
    assert "rsa_small_exponent" in [p.code for p in key_problems(three).problems]


def test_p256_fast_path_agrees_with_the_parse() -> None:
    assert is_p256_certificate(P256_PEM)
    assert any(p in P256_PEM.replace("\n", "") for p in P256_SPKI_BASE64)
    rsa_pem = cert_pem(RSA1024.public_key())
    assert not is_p256_certificate(rsa_pem)
    assert not any(p in rsa_pem.replace("\n", "") for p in P256_SPKI_BASE64)
    assert certificate_key_report(P256_PEM).problems == ()
    assert certificate_key_report("garbage").problems[0].code == "unparsable_certificate"


# ---------------------------------------------------------------------- filters and reach


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("devices/+/telemetry", "devices/dev-x/telemetry", True),
    ("devices/+/telemetry", "devices/dev-x/status", False),
    ("#", "devices/dev-x/telemetry", True),
    ("#", "$SYS/broker/load", False),
    ("+/#", "$SYS/x", False),
    ("devices/dev-x/#", "devices/dev-x", True),
    ("devices/dev-x/commands/#", "devices/+/commands/reboot", True),
    ("a/b", "a/b/c", False),
    ("a/+", "+/b", True),
    ("$SYS/#", "$SYS/broker", True),
])
def test_filters_intersect(a: str, b: str, expected: bool) -> None:
    assert filters_intersect(a, b) is expected
    assert filters_intersect(b, a) is expected


SPY = Policy("spy", (Rule(Action.SUBSCRIBE, "devices/+/telemetry", shared=True),
                     Rule(Action.PUBLISH, "devices/{device_id}/telemetry")))
ALL = Policy("all", (Rule(Action.SUBSCRIBE, "#", shared=True),))
GATEWAY = Policy("gateway-x", (Rule(Action.PUBLISH, "devices/{device_id}/telemetry"),
                               Rule(Action.PUBLISH, f"devices/{D2}/telemetry", shared=True)))


def _sets(*extra: PolicySet) -> list[PolicySet]:
    return [PolicySet((), "active", "secure_element", None, 100, (D3,)), *extra]


def test_blast_radius_ranks_whole_tree_then_cross_device_then_named() -> None:
    stored = {"spy": SPY, "all": ALL, "gateway-x": GATEWAY}
    ranking = blast_radius(_sets(
        PolicySet(("spy",), "active", "file", None, 2, (D1,)),
        PolicySet(("all",), "active", "tpm", None, 1, (D2,)),
        PolicySet(("gateway-x",), "active", "tpm", None, 1, ("dev-" + "e" * 26,)),
        PolicySet(("spy",), "retired", "file", None, 5, ()),
    ), stored)
    assert [r.policies for r in ranking] == [("all",), ("spy",), ("gateway-x",)]
    assert ranking[0].everything
    # the 100 default devices, the other spy device and the gateway's own telemetry
    assert ranking[1].reads_devices == 102
    assert ranking[2].named_devices == (D2,)
    assert ranking[2].writes_devices == 1
    assert blast_radius(_sets(), stored) == []


# ------------------------------------------------------------------------ the checks


def _pair(check_id: str, bad: MemorySnapshot, good: MemorySnapshot) -> list[Finding]:
    found = run(check_id, bad)
    assert found, f"{check_id} found nothing on the fleet made to trip it"
    assert all(f.check_id == check_id for f in found)
    assert run(check_id, good) == [], f"{check_id} fired on a clean fleet"
    return found


def test_credential_shared() -> None:
    bad = MemorySnapshot(keys=[("k1", "credential", D1, "a1"), ("k1", "credential", D2, "a2")],
                         clones=[(D3, NOW)],
                         rotations=[("s9", D1, "10.0.0.1", NOW),
                                    ("s9", D1, "10.9.9.9", NOW + timedelta(minutes=5))])
    good = MemorySnapshot(keys=[("k1", "credential", D1, "a1"), ("k1", "seen:credential", D1,
                                                                  None)],
                          rotations=[("s9", D1, "10.0.0.1", NOW),
                                     ("s9", D1, "10.9.9.9", NOW + timedelta(days=2))])
    found = _pair("credential-shared", bad, good)
    assert {f.severity for f in found} == {Severity.CRITICAL, Severity.HIGH}
    assert any(f.evidence.get("kind") == "rotation_sources" for f in found)
    assert any(f.evidence.get("kind") == "clone_suspected" for f in found)


def test_key_reused() -> None:
    bad = MemorySnapshot(keys=[("k2", "factory", D1, None), ("k2", "credential", D2, "a2")])
    good = MemorySnapshot(keys=[("k2", "factory", D1, None), ("k2", "seen:factory", D1, None)])
    found = _pair("key-reused", bad, good)
    assert set(found[0].affected) >= {D1, D2}


def test_weak_device_key() -> None:
    live = {"not_before": NOW - timedelta(days=1), "not_after": NOW + timedelta(days=30)}
    bad = MemorySnapshot(creds=[Cred("a1", D1, pem=cert_pem(RSA1024.public_key()), **live),
                                Cred("a2", D2, pem=P256_PEM, **live)])
    good = MemorySnapshot(creds=[Cred("a2", D2, pem=P256_PEM, **live),
                                 Cred("a3", D3, state="revoked", revoked_at=NOW,
                                      pem=cert_pem(RSA1024.public_key()), **live)])
    found = _pair("weak-device-key", bad, good)
    assert found[0].affected == ("a1",)
    assert found[0].evidence["problem"] == "rsa_too_small"
    assert "CVE-2008-0166" in found[0].evidence["debian_cve_2008_0166"]


def _ca(pem: str, not_after_days: int = 3000, state: str = "active") -> CaRow:
    return CaRow("issuing-1", "issuing", state, NOW + timedelta(days=not_after_days), pem)


def test_weak_ca_key() -> None:
    bad = MemorySnapshot(cas_=[_ca(cert_pem(RSA1024.public_key()))])
    good = MemorySnapshot(cas_=[_ca(P256_PEM), _ca(cert_pem(RSA1024.public_key()),
                                                   state="retired")])
    assert _pair("weak-ca-key", bad, good)[0].severity is Severity.HIGH


def test_ca_expiring() -> None:
    bad = MemorySnapshot(cas_=[_ca(P256_PEM, 30), _ca(P256_PEM, 3)._replace(id="root-1",
                                                                             role="root")])
    good = MemorySnapshot(cas_=[_ca(P256_PEM, 200), _ca(P256_PEM, 10, state="retired")])
    found = _pair("ca-expiring", bad, good)
    assert {f.severity for f in found} == {Severity.HIGH, Severity.CRITICAL}


def test_credential_expiring_uses_days_and_fraction_of_lifetime() -> None:
    year = {"not_before": NOW - timedelta(days=360)}
    day = {"not_before": NOW - timedelta(hours=12)}
    bad = MemorySnapshot(creds=[
        Cred("a1", D1, not_after=NOW + timedelta(days=3), **year),
        Cred("a2", D2, not_after=NOW - timedelta(hours=1), **year),
        Cred("a3", D3, not_after=NOW + timedelta(hours=1), **day)])
    good = MemorySnapshot(creds=[
        Cred("a1", D1, not_after=NOW + timedelta(days=30), **year),
        Cred("a3", D3, not_after=NOW + timedelta(hours=12), **day),  # half its life left
        Cred("a4", None, subject="broker@iotrust", not_after=NOW + timedelta(days=1), **year),
        Cred("a5", D2, state="expired", not_after=NOW - timedelta(days=1), **year)])
    found = _pair("credential-expiring", bad, good)
    by_sev = {f.severity: f for f in found}
    assert by_sev[Severity.HIGH].affected == ("a2",)
    assert set(by_sev[Severity.MEDIUM].affected) == {"a1", "a3"}


def test_credential_age() -> None:
    bad = MemorySnapshot(creds=[Cred("a1", D1, NOW - timedelta(days=400),
                                     NOW + timedelta(days=100))])
    good = MemorySnapshot(creds=[Cred("a1", D1, NOW - timedelta(days=100),
                                      NOW + timedelta(days=100))])
    assert _pair("credential-age", bad, good)[0].severity is Severity.LOW


def _crl(serials: set[int], *, next_days: int = 5, valid: bool = True) -> CrlView:
    return CrlView("issuing-1", NOW - timedelta(days=1), NOW + timedelta(days=next_days),
                   frozenset(serials), valid)


def test_revoked_still_trusted() -> None:
    revoked = Cred("a1", D1, NOW - timedelta(days=1), NOW + timedelta(days=30), state="revoked",
                   revoked_at=NOW)
    expired = dataclasses.replace(revoked, serial="a2", not_after=NOW - timedelta(days=1))
    bad = MemorySnapshot(creds=[revoked], crls_={"issuing-1": _crl(set())})
    good = MemorySnapshot(creds=[revoked, expired], crls_={"issuing-1": _crl({0xa1})})
    assert _pair("revoked-still-trusted", bad, good)[0].affected == ("a1",)
    for crls in ({"issuing-1": None}, {"issuing-1": _crl({0xa1}, next_days=-1)},
                 {"issuing-1": _crl({0xa1}, valid=False)}):
        assert run("revoked-still-trusted", MemorySnapshot(creds=[revoked], crls_=crls))


def test_conflicting_client_ids() -> None:
    window = {"not_before": NOW - timedelta(days=1), "not_after": NOW + timedelta(days=30)}
    bad = MemorySnapshot(creds=[Cred("a1", D1, **window),
                                Cred("a2", D2, subject=D1, **window)])
    good = MemorySnapshot(creds=[Cred("a1", D1, **window), Cred("a2", D2, **window),
                                 Cred("a3", None, subject="broker@iotrust", **window),
                                 Cred("a4", D3, subject=D1, state="revoked", revoked_at=NOW,
                                      **window)])
    found = _pair("conflicting-client-ids", bad, good)
    assert found[0].evidence["device_ids"] == sorted([D1, D2])


def test_policy_overly_permissive() -> None:
    bad = MemorySnapshot(policies_={"all": ALL, "spy": SPY, "gateway-x": GATEWAY})
    good = MemorySnapshot(policies_={"own": Policy("own", (
        Rule(Action.PUBLISH, "devices/{device_id}/telemetry"),))})
    found = {f.affected[0]: f.severity for f in _pair("policy-overly-permissive", bad, good)}
    assert found == {"all": Severity.CRITICAL, "spy": Severity.HIGH,
                     "gateway-x": Severity.LOW}


def test_policy_misreadable() -> None:
    bad = MemorySnapshot(policies_={
        "slash": Policy("slash", (Rule(Action.PUBLISH, "/devices/{device_id}/telemetry"),)),
        "shadow": Policy("shadow", (Rule(Action.SUBSCRIBE, "devices/{device_id}/commands/#"),
                                    Rule(Action.SUBSCRIBE, "devices/{device_id}/commands/x")))})
    good = MemorySnapshot(policies_={"ok": Policy("ok", (
        Rule(Action.PUBLISH, "devices/{device_id}/telemetry"),
        Rule(Action.SUBSCRIBE, "devices/{device_id}/commands/#")))})
    found = _pair("policy-misreadable", bad, good)
    assert {f.affected[0] for f in found} == {"slash", "shadow"}


def test_blast_radius_check() -> None:
    bad = MemorySnapshot(policies_={"spy": SPY},
                         sets=_sets(PolicySet(("spy",), "active", "tpm", None, 1, (D1,))))
    good = MemorySnapshot(policies_={"spy": SPY},
                          sets=_sets(PolicySet(("spy",), "quarantined", "tpm", None, 1, (D1,))))
    found = _pair("blast-radius", bad, good)
    assert found[0].severity is Severity.HIGH
    assert found[0].affected == (D1,)
    assert found[0].evidence["reads_devices"] == 100


def _model(name: str, profile: str, devices: int = 10) -> ModelRow:
    text = (ROOT / "examples" / "hardware" / profile).read_bytes()
    timelines = hw.parse_timelines((ROOT / "src/iotrust/core/data/crypto_timelines.yaml")
                                   .read_bytes())
    return ModelRow(name, "widgetco", devices,
                    hw.assess(hw.parse_profile(text), timelines=timelines, now_year=2026))


def test_weak_key_storage() -> None:
    secure = _model("tz", "mcu-trustzone.yaml")
    no_profile = ModelRow("tiny", "widgetco", 1, None)
    bad = MemorySnapshot(policies_={"spy": SPY}, models_=[secure, no_profile], sets=[
        PolicySet(("spy",), "active", "file", None, 3, (D1,)),
        PolicySet(("spy",), "active", "secure_element", "tiny", 1, (D3,))])
    good = MemorySnapshot(policies_={"spy": SPY}, models_=[secure], sets=[
        PolicySet((), "active", "file", None, 3, (D1,)),
        PolicySet(("spy",), "active", "secure_element", "tz", 2, (D2,))])
    found = _pair("weak-key-storage", bad, good)
    assert len(found) == 2  # weak storage, and a model without a profile barred by default


def test_key_storage_underused() -> None:
    se, bare = _model("se", "mcu-secure-element.yaml"), _model("bare", "class1-mcu.yaml")
    bad = MemorySnapshot(policies_={"spy": SPY}, models_=[se, bare], sets=[
        PolicySet((), "active", "file", "se", 3, (D1,)),
        PolicySet(("spy",), "active", "software", "se", 1, (D2,)),
        PolicySet((), "quarantined", "unknown", "se", 2, (D3,)),
        PolicySet((), "retired", "file", "se", 9, ())])
    good = MemorySnapshot(policies_={"spy": SPY}, models_=[se, bare], sets=[
        PolicySet(("spy",), "active", "pkcs11", "se", 3, (D1,)),
        PolicySet((), "active", "secure_element", "se", 2, (D2,)),
        PolicySet((), "expected", "unknown", "se", 5, ()),
        PolicySet(("spy",), "active", "file", "bare", 4, (D3,)),
        PolicySet((), "active", "file", None, 4, (D3,))])
    found = {f.severity: f for f in _pair("key-storage-underused", bad, good)}
    assert set(found) == {Severity.HIGH, Severity.MEDIUM, Severity.LOW}
    assert found[Severity.MEDIUM].affected == (D1,)
    assert found[Severity.MEDIUM].evidence["recorded_key_storage"] == {"file": 3}
    assert found[Severity.MEDIUM].evidence["profile_key_storage"] == "secure_element"
    assert found[Severity.HIGH].affected == (D2,)
    assert found[Severity.HIGH].evidence["beyond_default"]
    assert found[Severity.LOW].evidence["count"] == 2
    # the file device on hardware without secure storage is weak-key-storage's, not this one's
    assert run("weak-key-storage", good)[0].affected == (D3,)


def test_unsafe_manufacturer_trust() -> None:
    bad = MemorySnapshot(manufacturers_=[ManufacturerRow("acme", True, False, 3)],
                         devices=[Dev(D1, unsafe_admission=True)])
    good = MemorySnapshot(manufacturers_=[ManufacturerRow("acme", False, False, 3),
                                          ManufacturerRow("old", True, True, 0)],
                          devices=[Dev(D1), Dev(D2, state="retired", unsafe_admission=True)])
    assert len(_pair("unsafe-manufacturer-trust", bad, good)) == 2


def test_zombies() -> None:
    z = ZombieRow(D1, D1, ("broker",), 5, NOW - timedelta(days=20), NOW - timedelta(hours=1),
                  "retired")
    old = z._replace(identity=D2, device_id=D2, last_seen_at=NOW - timedelta(days=20))
    found = _pair("zombies", MemorySnapshot(zombies_=[z, old]), MemorySnapshot())
    assert {f.severity for f in found} == {Severity.HIGH, Severity.LOW}


def test_dormant_devices() -> None:
    bad = MemorySnapshot(devices=[Dev(D1, last_seen_at=NOW - timedelta(days=40)),
                                  Dev(D2, updated_at=NOW - timedelta(days=90))])
    good = MemorySnapshot(devices=[Dev(D1, last_seen_at=NOW - timedelta(days=1)),
                                   Dev(D2, state="retired", updated_at=NOW - timedelta(days=90)),
                                   Dev(D3, state="expected", updated_at=NOW - timedelta(days=90))])
    found = _pair("dormant-devices", bad, good)
    assert found[0].evidence == {"count": 2, "suppressed": 0, "never_seen": 1}


def test_hardware_lifetime() -> None:
    bad = MemorySnapshot(models_=[_model("tiny", "class1-mcu.yaml")])
    good = MemorySnapshot(models_=[_model("tz", "mcu-trustzone.yaml")])
    assert _pair("hardware-lifetime", bad, good)[0].severity is Severity.HIGH
    unused = MemorySnapshot(models_=[_model("tiny", "class1-mcu.yaml", devices=0)])
    assert run("hardware-lifetime", unused)[0].severity is Severity.LOW


def test_rollout_lagging() -> None:
    old, new = NOW - timedelta(days=5), NOW - timedelta(hours=2)
    bad = MemorySnapshot(rollout_devices=[
        ("ro-1", "fw-2", "active", D1, "downloading", old),
        ("ro-1", "fw-2", "active", D2, "rolled_back", new),
        ("ro-1", "fw-2", "active", D3, "committed", old)])
    good = MemorySnapshot(rollout_devices=[
        ("ro-1", "fw-2", "active", D1, "downloading", new),
        ("ro-1", "fw-2", "active", D3, "committed", old),
        ("ro-0", "fw-1", "aborted", D2, "rolled_back", old)])
    found = _pair("rollout-lagging", bad, good)
    assert {(f.affected, f.severity) for f in found} == {((D1,), Severity.LOW),
                                                         ((D2,), Severity.MEDIUM)}


def test_withdrawn_release() -> None:
    bad = MemorySnapshot(rollout_devices=[("ro-1", "fw-2", "aborted", D1, "installed", NOW)],
                         installed={D1: "fw-2", D2: "fw-1"})
    good = MemorySnapshot(rollout_devices=[("ro-1", "fw-2", "aborted", D1, "installed", NOW),
                                           ("ro-2", "fw-2", "completed", D1, "committed", NOW)],
                          installed={D1: "fw-2"})
    found = _pair("withdrawn-release", bad, good)
    assert found[0].affected == (D1,)
    assert found[0].evidence["rollouts"] == ["ro-1"]


def _config(scope: str, settings: dict[str, object], *, version: int = 1,
            mangle: bytes | None = None) -> ConfigDocument:
    """The document ``publish_config`` would write, described as the audit sees it."""
    body = json.dumps({"scope": scope, "version": version, "settings": settings},
                      sort_keys=True, separators=(",", ":")).encode()
    sha = hashlib.sha256(body).hexdigest()
    path = f"config/{scope}/config-v{version}.json"
    return describe(ConfigTarget(path, scope, version, sha, len(body)),
                    body if mangle is None else mangle)


def test_config_copied() -> None:
    wifi = {"wifi": {"ssid": "plant-4", "password": "hunter2"}, "device_name": "pump"}
    copied = [_config(D1, wifi), _config(D2, wifi, version=3), _config(D3, {"interval_s": 60})]
    shared_group = {"interval_s": 60, "broker": "mqtt.example"}
    bad = MemorySnapshot(configs=copied)
    # group documents are shared by design; distinct device documents; empty ones compare not
    good = MemorySnapshot(configs=[
        _config("groups/pumps", shared_group), _config("groups/valves", shared_group),
        _config(D1, {**wifi, "device_name": "pump-1", "wifi": {"password": "a1"}}),
        _config(D2, {**wifi, "device_name": "pump-2", "wifi": {"password": "b2"}}),
        _config(D3, {}), _config("dev-" + "e" * 26, {})])
    found = _pair("config-copied", bad, good)
    assert len(found) == 1
    assert found[0].severity is Severity.CRITICAL
    assert found[0].affected == (D1, D2)
    assert found[0].evidence["secret_like_fields"] == ["wifi.password"]
    assert found[0].evidence["targets"] == [f"config/{D1}/config-v1.json",
                                            f"config/{D2}/config-v3.json"]
    assert found[0].evidence["settings_sha256"] == settings_digest(wifi)
    assert "hunter2" not in json.dumps(found[0].as_dict())
    # the target hashes differ (the documents name their devices): the settings are compared
    assert len(set(found[0].evidence["target_sha256"].values())) == 2
    plain = run("config-copied", MemorySnapshot(configs=[_config(D1, {"interval_s": 5}),
                                                         _config(D2, {"interval_s": 5})]))
    assert [f.severity for f in plain] == [Severity.HIGH]


def test_config_documents_not_matching_their_signature_are_reported_not_compared() -> None:
    doc = _config(D1, {"a": 1})
    tampered = _config(D2, {"a": 1}, mangle=b'{"scope":"x","version":1,"settings":{"a":1}}')
    moved = describe(ConfigTarget(doc.path, D2, 1, doc.target_sha256, 40),
                     json.dumps({"scope": D1, "version": 1, "settings": {"a": 1}},
                                sort_keys=True, separators=(",", ":")).encode())
    assert tampered.settings_sha256 is None
    assert tampered.problem == "the target file does not match its signed hash"
    assert moved.problem == "the document names another scope than its target"
    assert _config(D3, {"a": 1}, mangle=b"").problem is not None
    missing = describe(ConfigTarget("config/x/c.json", D3, 1, "0" * 64, 10), None)
    assert missing.problem == "the target file is missing"
    found = run("config-copied", MemorySnapshot(configs=[doc, tampered]))
    assert [f.severity for f in found] == [Severity.MEDIUM]
    assert found[0].affected == (D2,)


def test_config_current_version_and_secret_names() -> None:
    targets = [ConfigTarget("a1", D1, 1, "", 1), ConfigTarget("a3", D1, 3, "", 1),
               ConfigTarget("a2", D1, 2, "", 1), ConfigTarget("g", "groups/g", 1, "", 1)]
    assert [t.path for t in current_targets(targets)] == ["a3", "g"]
    assert secret_fields({"apiKey": 1, "mqtt": {"user_pin": 2, "shipping": 3},
                          "keepalive": 4, "certs": [{"private_key": "x"}]}) == (
        "apiKey", "certs.[].private_key", "mqtt.user_pin")
    assert settings_digest({"b": 1, "a": [1.5]}) == settings_digest({"a": [1.5], "b": 1})


def _chain(n: int) -> list:
    rows, head = [], None
    for i in range(n):
        row = chain_next(head, EventDraft(kind="test.event", actor="t@x", device_id=None,
                                          reason=None, data={"i": i}), NOW)
        rows.append(row)
        head = row.head
    return rows


def test_event_log_integrity() -> None:
    rows = _chain(5)
    tampered = [*rows[:2], dataclasses.replace(rows[2], actor="evil@x"), *rows[3:]]
    bad = MemorySnapshot(log=EventLogStatus(verify_chain(tampered), anchored=True))
    good = MemorySnapshot(log=EventLogStatus(verify_chain(rows), anchored=True))
    found = _pair("event-log-integrity", bad, good)
    assert found[0].severity is Severity.CRITICAL
    unanchored = MemorySnapshot(log=EventLogStatus(verify_chain(rows), anchored=False))
    assert run("event-log-integrity", unanchored)[0].severity is Severity.LOW


def test_every_check_is_exercised_here() -> None:
    tested = {name.removeprefix("test_").replace("_", "-") for name in globals()
              if name.startswith("test_")}
    missing = {c.id for c in ALL_CHECKS} - tested - {"credential-expiring", "blast-radius"}
    assert not missing, missing
    assert len({c.id for c in ALL_CHECKS}) == len(ALL_CHECKS)


# ---------------------------------------------------------------------- suppressions


def test_suppressions_drop_targets_and_whole_findings() -> None:
    f = Finding("dormant-devices", "medium", "t", (D1, D2), {"count": 2}, "do")
    kept, n = apply_suppressions(f, frozenset({D1}))
    assert kept is not None
    assert kept.affected == (D2,)
    assert kept.evidence["count"] == 1
    assert n == 1
    assert apply_suppressions(f, frozenset({D1, D2})) == (None, 2)
    assert apply_suppressions(f, frozenset({"*"}))[0] is None


def test_aggregated_checks_skip_suppressed_targets_while_counting() -> None:
    snap = MemorySnapshot(devices=[Dev(D1, last_seen_at=NOW - timedelta(days=40)),
                                   Dev(D2, last_seen_at=NOW - timedelta(days=40))],
                          suppressions={"dormant-devices": {D1}})
    result = run_check(check_by_id("dormant-devices"), snap)
    assert result.findings[0].affected == (D2,)
    assert result.findings[0].evidence["count"] == 1
    assert result.findings[0].evidence["suppressed"] == 1
    snap.suppressions = {"dormant-devices": {"*"}}
    assert run_check(check_by_id("dormant-devices"), snap).findings == ()


def test_finding_and_config_validation() -> None:
    with pytest.raises(InputError) as exc:
        Finding("Bad Id", "high", "t", (), {}, "x")
    assert exc.value.reason == "invalid_check_id"
    with pytest.raises(InputError):
        check_by_id("nope")
    with pytest.raises(InputError):
        AuditConfig(dormant_days=0)
    with pytest.raises(InputError):
        AuditConfig(credential_expiry_fraction=1.5)
    with pytest.raises(TypeError):
        Finding("x", "high", "t", "dev-abc", {}, "x")  # type: ignore[arg-type]
