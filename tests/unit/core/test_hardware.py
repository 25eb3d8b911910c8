"""Hardware profiles: every validation path with its JSON path, the YAML boundary, the timelines,
hand-checked verdicts for each example profile, and the model defaults."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from iotrust.core import hardware as hw
from iotrust.errors import InputError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "hardware"
TIMELINES = hw.parse_timelines(
    (ROOT / "src" / "iotrust" / "core" / "data" / "crypto_timelines.yaml").read_bytes())
NOW = 2026

F, D, X = hw.Level.FEASIBLE, hw.Level.DEGRADED, hw.Level.IMPOSSIBLE
M = hw.Mechanism

BASE: dict[str, Any] = {
    "schema": "iotrust.hardware/v1",
    "model": "Test board",
    "vendor": "Test vendor",
    "class": "mcu",
    "key_storage": "secure_element",
    "algorithms_in_hardware": ["ecdsa-p256", "sha256"],
    "algorithms_in_software": [],
    "can_add_algorithms_by_update": True,
    "flash_kb": 1024,
    "ram_kb": 256,
    "free_flash_for_update_kb": 480,
    "ab_slots": True,
    "recovery_partition": False,
    "secure_boot": {"supported": True, "root_of_trust": "rom", "key_revocable": True},
    "rng": "trng",
    "anti_rollback_counter": "otp_fuses",
    "connectivity": ["wifi"],
    "planned_lifetime_years": 10,
    "deployed_year": 2026,
}


def doc(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    for key, value in changes.items():
        d[key] = value
    return d


def without(key: str) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    del d[key]
    return d


def sb(**changes: Any) -> dict[str, Any]:
    return doc(secure_boot={**BASE["secure_boot"], **changes})


def parse(d: object) -> hw.HardwareProfile:
    return hw.parse_profile(yaml.dump(d, Dumper=yaml.CSafeDumper).encode())


def profile(**changes: Any) -> hw.HardwareProfile:
    return parse(doc(**changes))


def assess(p: hw.HardwareProfile, lifetime: int | None = None) -> hw.Assessment:
    return hw.assess(p, planned_lifetime_years=lifetime, timelines=TIMELINES, now_year=NOW)


def levels(a: hw.Assessment) -> dict[str, hw.Level]:
    return {v.mechanism.value: v.level for v in a.verdicts}


# ---------------------------------------------------------------------------- validation paths

many_algs = ["sha256"] * 33

INVALID: list[tuple[str, Callable[[], object], str, str]] = [
    ("root-not-mapping", lambda: ["a", "b"], "$", "mapping"),
    ("root-scalar", lambda: "text", "$", "mapping"),
    ("missing-schema", lambda: without("schema"), "$.schema", "required"),
    ("wrong-schema", lambda: doc(schema="iotrust.hardware/v2"), "$.schema", "must be"),
    ("unknown-field", lambda: doc(colour="red"), "$.colour", "unknown field"),
    ("odd-key", lambda: doc(**{"a b": 1}), '$["a b"]', "unknown field"),
    ("int-key", lambda: {**BASE, 7: 1}, '$["7"]', "keys must be strings"),
    ("missing-model", lambda: without("model"), "$.model", "required"),
    ("model-int", lambda: doc(model=5), "$.model", "string"),
    ("model-empty", lambda: doc(model="  "), "$.model", "printable"),
    ("model-long", lambda: doc(model="x" * 65), "$.model", "printable"),
    ("model-control", lambda: doc(model="a\x07b"), "$.model", "printable"),
    ("vendor-missing", lambda: without("vendor"), "$.vendor", "required"),
    ("class-bad", lambda: doc(**{"class": "server"}), "$.class", "mcu, linux, gateway"),
    ("key-storage-bad", lambda: doc(key_storage="hsm"), "$.key_storage", "one of"),
    ("algs-not-list", lambda: doc(algorithms_in_hardware="ecdsa-p256"),
     "$.algorithms_in_hardware", "list"),
    ("algs-unknown", lambda: doc(algorithms_in_hardware=["sha256", "rot13"]),
     "$.algorithms_in_hardware[1]", "unknown algorithm"),
    ("algs-item-int", lambda: doc(algorithms_in_hardware=[256]),
     "$.algorithms_in_hardware[0]", "string"),
    ("algs-duplicate", lambda: doc(algorithms_in_hardware=["sha256", "sha256"]),
     "$.algorithms_in_hardware[1]", "duplicate"),
    ("algs-too-many", lambda: doc(algorithms_in_hardware=many_algs),
     "$.algorithms_in_hardware", "at most 32"),
    ("soft-algs-unknown", lambda: doc(algorithms_in_software=["md5"]),
     "$.algorithms_in_software[0]", "unknown algorithm"),
    ("can-add-string", lambda: doc(can_add_algorithms_by_update="maybe"),
     "$.can_add_algorithms_by_update", "true or false"),
    ("flash-zero", lambda: doc(flash_kb=0), "$.flash_kb", "between"),
    ("flash-bool", lambda: doc(flash_kb=True), "$.flash_kb", "integer"),
    ("flash-float", lambda: doc(flash_kb=1.5), "$.flash_kb", "integer"),
    ("ram-string", lambda: doc(ram_kb="32"), "$.ram_kb", "integer"),
    ("ram-huge", lambda: doc(ram_kb=1 << 40), "$.ram_kb", "between"),
    ("free-negative", lambda: doc(free_flash_for_update_kb=-1),
     "$.free_flash_for_update_kb", "between"),
    ("free-over-flash", lambda: doc(free_flash_for_update_kb=2048),
     "$.free_flash_for_update_kb", "cannot exceed"),
    ("ab-without-room", lambda: doc(free_flash_for_update_kb=0), "$.ab_slots", "second slot"),
    ("ab-not-bool", lambda: doc(ab_slots="yes please"), "$.ab_slots", "true or false"),
    ("recovery-not-bool", lambda: doc(recovery_partition=1), "$.recovery_partition",
     "true or false"),
    ("sb-missing", lambda: without("secure_boot"), "$.secure_boot", "required"),
    ("sb-not-mapping", lambda: doc(secure_boot=True), "$.secure_boot", "mapping"),
    ("sb-missing-field", lambda: doc(secure_boot={"supported": True, "root_of_trust": "rom"}),
     "$.secure_boot.key_revocable", "required"),
    ("sb-unknown-field", lambda: sb(measured=True), "$.secure_boot.measured", "unknown field"),
    ("sb-supported-string", lambda: sb(supported="on-ish"), "$.secure_boot.supported",
     "true or false"),
    ("sb-root-bad", lambda: sb(root_of_trust="efuse"), "$.secure_boot.root_of_trust", "one of"),
    ("sb-no-root", lambda: sb(root_of_trust="none"), "$.secure_boot.root_of_trust",
     "needs a root"),
    ("sb-root-without-support", lambda: sb(supported=False, key_revocable=False),
     "$.secure_boot.root_of_trust", "must be none"),
    ("sb-revocable-without-support",
     lambda: sb(supported=False, root_of_trust="none", key_revocable=True),
     "$.secure_boot.key_revocable", "must be false"),
    ("sb-tpm-root-without-tpm", lambda: sb(root_of_trust="tpm"), "$.secure_boot.root_of_trust",
     "tpm2"),
    ("rng-bad", lambda: doc(rng="dice"), "$.rng", "trng, drbg_seeded, none"),
    ("rollback-bad", lambda: doc(anti_rollback_counter="nvram"), "$.anti_rollback_counter",
     "one of"),
    ("rollback-tpm-without-tpm", lambda: doc(anti_rollback_counter="tpm_nv"),
     "$.anti_rollback_counter", "tpm2"),
    ("connectivity-empty", lambda: doc(connectivity=[]), "$.connectivity", "at least one"),
    ("connectivity-unknown", lambda: doc(connectivity=["carrier-pigeon"]), "$.connectivity[0]",
     "unknown connectivity"),
    ("connectivity-not-list", lambda: doc(connectivity={"wifi": True}), "$.connectivity",
     "list"),
    ("lifetime-zero", lambda: doc(planned_lifetime_years=0), "$.planned_lifetime_years",
     "between"),
    ("lifetime-51", lambda: doc(planned_lifetime_years=51), "$.planned_lifetime_years",
     "between"),
    ("deployed-old", lambda: doc(deployed_year=1800), "$.deployed_year", "between"),
    ("deployed-string", lambda: doc(deployed_year="2024"), "$.deployed_year", "integer"),
    ("trustzone-on-linux", lambda: doc(**{"class": "linux", "key_storage": "trustzone"}),
     "$.key_storage", "class: mcu"),
]


@pytest.mark.parametrize(("case", "make", "path", "fragment"), INVALID, ids=[c[0] for c in INVALID])
def test_every_validation_error_names_its_json_path(
        case: str, make: Callable[[], object], path: str, fragment: str) -> None:
    with pytest.raises(hw.ProfileError) as exc:
        parse(make())
    assert exc.value.path == path, (case, exc.value.message)
    assert fragment in exc.value.problem, (case, exc.value.problem)
    assert exc.value.reason == "profile_invalid"
    assert exc.value.message.startswith(path + ": ")
    assert isinstance(exc.value, InputError)
    assert exc.value.exit_code == 65


def test_deployed_year_as_yaml_date_is_refused_with_its_path() -> None:
    text = yaml.safe_dump(without("deployed_year")) + "deployed_year: 2024-01-01\n"
    with pytest.raises(hw.ProfileError) as exc:
        hw.parse_profile(text)
    assert exc.value.path == "$.deployed_year"


def test_valid_profile_parses_and_round_trips() -> None:
    p = profile()
    assert p.device_class is hw.DeviceClass.MCU
    assert p.secure_boot.root_of_trust is hw.RootOfTrust.ROM
    assert hw.parse_profile(yaml.safe_dump(p.as_dict())) == p
    minimal = without("deployed_year")
    del minimal["algorithms_in_software"], minimal["recovery_partition"]
    q = parse(minimal)
    assert q.deployed_year is None
    assert q.algorithms_in_software == ()
    assert q.recovery_partition is False


def test_constructor_enforces_the_same_rules() -> None:
    p = profile()
    with pytest.raises(hw.ProfileError) as exc:
        hw.HardwareProfile(**{**{f: getattr(p, f) for f in p.__dataclass_fields__},
                              "ram_kb": 0})
    assert exc.value.path == "$.ram_kb"
    with pytest.raises(hw.ProfileError) as exc:
        hw.SecureBoot(supported=True, root_of_trust=hw.RootOfTrust.NONE, key_revocable=False)
    assert exc.value.path == "$.secure_boot.root_of_trust"


# ---------------------------------------------------------------------------- the YAML boundary

VALID_TEXT = yaml.safe_dump(BASE)


@pytest.mark.parametrize(("text", "fragment"), [
    (b"x" * (64 * 1024 + 1), "larger than"),
    (b"\xff\xfe model: x", "not UTF-8"),
    (b"model: [unclosed", "not valid YAML at line"),
    (b"a: &x [1, 2]\nb: *x\n", "anchors and aliases"),
    (b"a: &x 1\n", "anchors and aliases"),
    (b"lol: &a [x, x, x]\nlol2: &b [*a, *a, *a]\nlol3: [*b, *b, *b]\n", "anchors and aliases"),
    (b"a: 1\n---\nb: 2\n", "single YAML document"),
    (b"a: " + b"[" * 10 + b"1" + b"]" * 10 + b"\n", "nested deeper"),
    (b"a: [" + b", ".join([b"1"] * 2500) + b"]\n", "more than 2000 YAML nodes"),
    (b"a: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    (b"a: !custom 1\n", "not valid YAML"),
    (b"? [1, 2]\n: x\n", "not valid YAML"),
])
def test_yaml_boundary_refusals(text: bytes, fragment: str) -> None:
    with pytest.raises(hw.ProfileError) as exc:
        hw.parse_profile(text)
    assert fragment in exc.value.problem
    assert exc.value.path == "$"
    assert exc.value.reason == "profile_invalid"


def test_duplicate_keys_are_refused_with_the_key_and_line() -> None:
    text = VALID_TEXT + "ram_kb: 1\n"
    with pytest.raises(hw.ProfileError) as exc:
        hw.parse_profile(text)
    assert exc.value.path == "$.ram_kb"
    assert "duplicate key (line" in exc.value.problem


def test_str_and_bytes_inputs_agree() -> None:
    assert hw.parse_profile(VALID_TEXT) == hw.parse_profile(VALID_TEXT.encode())


@pytest.mark.parametrize(("text", "years"), [("12y", 12), ("12", 12), ("12 years", 12),
                                             ("1y", 1), (" 50Y ", 50)])
def test_lifetime_parsing(text: str, years: int) -> None:
    assert hw.parse_lifetime_years(text) == years


@pytest.mark.parametrize("text", ["0", "0y", "51y", "12m", "abc", "", "-3y", "1.5y", "100"])
def test_lifetime_parsing_refusals(text: str) -> None:
    with pytest.raises(InputError) as exc:
        hw.parse_lifetime_years(text)
    assert exc.value.reason == "invalid_lifetime"


# ---------------------------------------------------------------------------- timelines

def test_shipped_timelines_carry_the_public_dates() -> None:
    p256 = TIMELINES.for_algorithm("ecdsa-p256")
    rsa = TIMELINES.for_algorithm("rsa-2048")
    assert p256 is not None
    assert rsa is not None
    assert (p256.deprecated_after, p256.disallowed_after) == (None, 2035)
    assert (rsa.deprecated_after, rsa.disallowed_after) == (2030, 2035)
    ir8547 = TIMELINES.source("nist-ir-8547-ipd")
    assert ir8547.date == "2024-11"
    assert TIMELINES.source("nist-sp-800-131a-r2").date == "2019-03"
    assert TIMELINES.source("nsa-cnsa-2.0").date == "2022-09"
    cnsa = {m.year: m for m in TIMELINES.milestones
            if m.source == "nsa-cnsa-2.0" and "firmware" in m.scope}
    assert set(cnsa) == {2025, 2030}
    assert {TIMELINES.source(s).publisher.split(" ")[0] for s in
            ("bsi-tr-02102-1", "enisa-pqc-2021")} == {"Bundesamt", "European"}
    # Every quantum-vulnerable signature algorithm a profile may name has a retirement year.
    for alg in hw.ALGORITHMS.values():
        if alg.quantum_vulnerable:
            tl = TIMELINES.for_algorithm(alg.name)
            assert tl is not None, alg.name
            assert tl.disallowed_after is not None, alg.name
    # No URLs: citations are title, date and text.
    for s in TIMELINES.sources:
        assert "http" not in s.citation
        assert "http" not in s.title


def test_timelines_refuse_unknown_sources_and_algorithms() -> None:
    base = yaml.safe_load((ROOT / "src/iotrust/core/data/crypto_timelines.yaml").read_text())
    bad = copy.deepcopy(base)
    bad["algorithms"]["ecdsa-p256"]["source"] = "nowhere"
    with pytest.raises(InputError) as exc:
        hw.parse_timelines(yaml.safe_dump(bad))
    assert exc.value.reason == "timelines_invalid"
    assert "nowhere" in exc.value.message
    bad = copy.deepcopy(base)
    bad["algorithms"]["rot13"] = copy.deepcopy(bad["algorithms"]["ecdsa-p256"])
    with pytest.raises(hw.ProfileError) as exc2:
        hw.parse_timelines(yaml.safe_dump(bad))
    assert exc2.value.path == "$.algorithms.rot13"
    assert exc2.value.reason == "timelines_invalid"
    bad = copy.deepcopy(base)
    bad["sources"]["nsa-cnsa-2.0"]["verification"] = "probably"
    with pytest.raises(hw.ProfileError) as exc3:
        hw.parse_timelines(yaml.safe_dump(bad))
    assert exc3.value.path == '$.sources["nsa-cnsa-2.0"].verification'


# ---------------------------------------------------------------------------- example profiles

# Hand-checked expectations for now_year 2026 and each profile's own planned lifetime.
EXPECTED: dict[str, dict[str, hw.Level]] = {
    "class1-mcu.yaml": {  # M0+, no secure storage, no TRNG, BLE only, one slot, 15 years
        "unique_identity": D, "key_protection": X, "mutual_tls": D, "signed_updates": D,
        "rollback_protection": X, "ab_recovery": X, "credential_rotation": D,
        "crypto_agility": X},
    "mcu-secure-element.yaml": {  # ATECC608-class, fixed OTP boot key, no counter, 10 years
        "unique_identity": F, "key_protection": F, "mutual_tls": F, "signed_updates": D,
        "rollback_protection": D, "ab_recovery": F, "credential_rotation": F,
        "crypto_agility": F},
    "mcu-trustzone.yaml": {  # M33 TrustZone-M, ROM secure boot with revocation, OTP counter
        "unique_identity": F, "key_protection": F, "mutual_tls": F, "signed_updates": F,
        "rollback_protection": F, "ab_recovery": F, "credential_rotation": F,
        "crypto_agility": F},
    "linux-gateway-tpm.yaml": {  # TPM 2.0, measured boot, A/B rootfs, TPM NV counter
        "unique_identity": F, "key_protection": F, "mutual_tls": F, "signed_updates": F,
        "rollback_protection": F, "ab_recovery": F, "credential_rotation": F,
        "crypto_agility": F},
    "legacy-camera.yaml": {  # software keys, no secure boot, in-place updates, 2019 + 10 years
        "unique_identity": F, "key_protection": D, "mutual_tls": F, "signed_updates": X,
        "rollback_protection": X, "ab_recovery": X, "credential_rotation": F,
        "crypto_agility": F},
}


def example(name: str) -> hw.HardwareProfile:
    return hw.parse_profile((EXAMPLES / name).read_bytes())


def test_there_are_at_least_five_examples_and_all_are_expected() -> None:
    names = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert len(names) >= 5
    assert names == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_verdicts(name: str) -> None:
    a = assess(example(name))
    assert levels(a) == EXPECTED[name]
    for v in a.verdicts:
        assert v.reason
        assert (v.level is F) or v.would_change_it


def test_class1_mcu_cannot_stay_agile_for_fifteen_years() -> None:
    a = assess(example("class1-mcu.yaml"))
    assert a.service_end_year == 2041
    agility = a.verdict(M.CRYPTO_AGILITY)
    assert agility.level is X
    assert "ecdsa-p256 is disallowed after 2035" in agility.reason
    assert "NIST IR 8547 ipd (2024-11)" in agility.reason
    assert "replacing the device by 2035" in agility.would_change_it
    # With a 9-year life (to 2035) it retires before its algorithm does.
    assert assess(example("class1-mcu.yaml"), lifetime=9).verdict(M.CRYPTO_AGILITY).level is F


def test_legacy_camera_with_a_longer_life_is_stuck_on_rsa_2048() -> None:
    a = assess(example("legacy-camera.yaml"), lifetime=20)
    assert a.lifetime_years == 20
    assert a.service_end_year == 2039
    v = a.verdict(M.CRYPTO_AGILITY)
    assert v.level is X
    assert "rsa-2048" in v.reason


def test_secure_element_agility_notes_that_pq_keys_would_leave_the_element() -> None:
    v = assess(example("mcu-secure-element.yaml")).verdict(M.CRYPTO_AGILITY)
    assert v.level is F
    assert "ecdsa-p256" in v.reason  # a signature algorithm is named before key establishment
    assert "outside it" in v.reason


# ---------------------------------------------------------------------------- rule details

def test_agility_degraded_with_little_headroom_and_feasible_with_pq_in_hardware() -> None:
    tight = profile(free_flash_for_update_kb=32, ab_slots=False, planned_lifetime_years=15)
    v = assess(tight).verdict(M.CRYPTO_AGILITY)
    assert v.level is D
    assert "little headroom" in v.reason
    low_ram = profile(ram_kb=16, planned_lifetime_years=15)
    assert assess(low_ram).verdict(M.CRYPTO_AGILITY).level is D
    pq = profile(algorithms_in_hardware=["ecdsa-p256", "ml-dsa-44"],
                 can_add_algorithms_by_update=False, planned_lifetime_years=20)
    v = assess(pq).verdict(M.CRYPTO_AGILITY)
    assert v.level is F
    assert "ml-dsa-44 in hardware" in v.reason
    only_pq = profile(algorithms_in_hardware=["ml-dsa-65", "ml-kem-768"], planned_lifetime_years=30)
    assert "has a published retirement year" in assess(only_pq).verdict(M.CRYPTO_AGILITY).reason


def test_agility_assumes_the_protocol_baseline_when_no_public_key_algorithm_is_listed() -> None:
    p = profile(algorithms_in_hardware=["sha256"], planned_lifetime_years=20)
    v = assess(p).verdict(M.CRYPTO_AGILITY)
    assert "assuming the protocol baseline ecdsa-p256" in v.reason


def test_agility_uses_the_deployment_year_not_today() -> None:
    p = profile(deployed_year=2020, planned_lifetime_years=15, can_add_algorithms_by_update=False)
    assert assess(p).service_end_year == 2035
    assert assess(p).verdict(M.CRYPTO_AGILITY).level is F
    undeployed = parse(without("deployed_year"))
    assert assess(undeployed).service_end_year == NOW + 10


def test_agility_marks_unverified_years() -> None:
    p = profile(algorithms_in_hardware=["rsa-1024"], can_add_algorithms_by_update=False)
    v = assess(p).verdict(M.CRYPTO_AGILITY)
    assert v.level is X
    assert "year unverified" in v.reason


@pytest.mark.parametrize(("changes", "mechanism", "level", "fragment"), [
    ({"key_storage": "trustzone", "secure_boot": {"supported": False, "root_of_trust": "none",
                                                  "key_revocable": False}},
     M.KEY_PROTECTION, D, "without secure boot"),
    ({"key_storage": "software"}, M.KEY_PROTECTION, D, "only by software"),
    ({"key_storage": "software", "rng": "none"}, M.UNIQUE_IDENTITY, D, "factory has seen it"),
    ({"ram_kb": 2, "flash_kb": 16, "free_flash_for_update_kb": 8, "algorithms_in_hardware": []},
     M.UNIQUE_IDENTITY, X, "too little memory"),
    ({"ram_kb": 2, "flash_kb": 16, "free_flash_for_update_kb": 8, "algorithms_in_hardware": []},
     M.MUTUAL_TLS, X, "no way to hold"),
    ({"ram_kb": 8}, M.MUTUAL_TLS, X, "below"),
    ({"ram_kb": 32}, M.MUTUAL_TLS, D, "reduced record buffers"),
    ({"connectivity": ["lorawan"]}, M.MUTUAL_TLS, D, "no IP link"),
    ({"rng": "none"}, M.MUTUAL_TLS, D, "predictable"),
    ({"secure_boot": {"supported": True, "root_of_trust": "otp", "key_revocable": False}},
     M.SIGNED_UPDATES, D, "cannot revoke"),
    ({"ab_slots": False, "free_flash_for_update_kb": 0}, M.SIGNED_UPDATES, X, "overwrites"),
    ({"ab_slots": False, "free_flash_for_update_kb": 0, "recovery_partition": True},
     M.SIGNED_UPDATES, F, "revocable"),
    ({"anti_rollback_counter": "none"}, M.ROLLBACK_PROTECTION, D, "rewritable flash"),
    ({"secure_boot": {"supported": False, "root_of_trust": "none", "key_revocable": False}},
     M.ROLLBACK_PROTECTION, D, "nothing enforces it"),
    ({"ab_slots": False, "recovery_partition": True}, M.AB_RECOVERY, D, "out of service"),
    ({"ab_slots": False}, M.AB_RECOVERY, X, "bricks"),
    ({"key_storage": "software", "rng": "none"}, M.CREDENTIAL_ROTATION, D, "does not heal"),
    ({"rng": "none"}, M.CREDENTIAL_ROTATION, F, "secure element"),
    ({"key_storage": "none"}, M.CREDENTIAL_ROTATION, D, "ordinary flash"),
])
def test_rules(changes: dict[str, Any], mechanism: hw.Mechanism, level: hw.Level,
               fragment: str) -> None:
    v = assess(profile(**changes)).verdict(mechanism)
    assert v.level is level, v
    assert fragment in v.reason, v.reason


# ---------------------------------------------------------------------------- defaults

@pytest.mark.parametrize(("changes", "days", "sensitive"), [
    ({"key_storage": "secure_element"}, 90, True),
    ({"key_storage": "tpm2", "class": "gateway"}, 90, True),
    ({"key_storage": "trustzone"}, 30, True),
    ({"key_storage": "trustzone", "secure_boot": {"supported": False, "root_of_trust": "none",
                                                  "key_revocable": False}}, 30, False),
    ({"key_storage": "software"}, 30, False),
    ({"key_storage": "none"}, 7, False),
])
def test_model_defaults(changes: dict[str, Any], days: int, sensitive: bool) -> None:
    d = hw.model_defaults(assess(profile(**changes)))
    assert d.credential_lifetime_s == days * 86_400
    assert d.sensitive_topics_allowed is sensitive
    assert ("allowed" if sensitive else "barred") in d.reason


def test_assessment_json_and_invariants() -> None:
    a = assess(example("class1-mcu.yaml"), lifetime=12)
    j = a.as_dict()
    assert j["schema"] == "iotrust.hardware-assessment/v1"
    assert j["worst"] == "impossible"
    assert [v["mechanism"] for v in j["verdicts"]] == [m.value for m in hw.Mechanism]
    assert j["defaults"]["credential_lifetime_days"] == 7
    assert j["lifetime_years"] == 12
    assert assess(example("linux-gateway-tpm.yaml")).worst is F
    with pytest.raises(ValueError, match="what would change it"):
        hw.Verdict(M.MUTUAL_TLS, D, "because")
    with pytest.raises(ValueError, match="one verdict per mechanism"):
        hw.Assessment(profile=a.profile, lifetime_years=1, now_year=NOW, service_end_year=NOW,
                      verdicts=a.verdicts[:-1])
    with pytest.raises(InputError):
        hw.assess(a.profile, planned_lifetime_years=0, timelines=TIMELINES, now_year=NOW)
    with pytest.raises(InputError):
        hw.assess(a.profile, timelines=TIMELINES, now_year=3000)
