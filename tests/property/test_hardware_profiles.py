"""Properties of the hardware profile boundary and assessment.

Any bytes, text or YAML document yields a profile or a ProfileError (an InputError) with a JSON
path; valid profiles round-trip and always get one reasoned verdict per mechanism.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotrust.core import hardware as hw
from iotrust.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
TIMELINES = hw.parse_timelines(
    (ROOT / "src" / "iotrust" / "core" / "data" / "crypto_timelines.yaml").read_bytes())
def dump(document: object) -> str:
    return yaml.dump(document, Dumper=yaml.CSafeDumper)


EXAMPLE = yaml.safe_load((ROOT / "examples" / "hardware" / "mcu-secure-element.yaml").read_text())

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False) | st.text(max_size=20))
documents = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=5)
                      | st.dictionaries(st.text(max_size=12) | st.integers(), children,
                                        max_size=5)),
    max_leaves=30,
)


def check(data: bytes | str) -> None:
    error: InputError | None = None
    try:
        p = hw.parse_profile(data)
    except InputError as exc:  # anything else propagates and fails the property
        error = exc
    if error is None:
        assert isinstance(p, hw.HardwareProfile)
        return
    assert isinstance(error, hw.ProfileError)
    assert error.reason == "profile_invalid"
    assert error.path.startswith("$")
    assert error.message


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_give_a_profile_or_input_error(data: bytes) -> None:
    check(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2048))
def test_any_text_gives_a_profile_or_input_error(data: str) -> None:
    check(data)


@settings(max_examples=200, deadline=None)
@given(documents)
def test_any_yaml_document_gives_a_profile_or_input_error(document: object) -> None:
    check(dump(document))


yaml_fragments = st.lists(st.sampled_from([
    "a: 1\n", "- x\n", "&anchor ", "*anchor\n", "!!binary aGk=\n", "!!set {a, b}\n", "? ",
    ": ", "[", "]", "{", "}", "---\n", "...\n", "%YAML 1.1\n", "!!python/name:os.system\n",
    "\t", "'", '"', "#", "|\n  x\n", ">\n", "2024-01-01", "0x1F", "1e400", ".nan", "~", "<<: ",
    "model: ", "schema: iotrust.hardware/v1\n", "secure_boot:\n  ", "\x00", "\ufeff",
]), max_size=30)


@settings(max_examples=500, deadline=None)
@given(yaml_fragments)
def test_yaml_shaped_noise_gives_a_profile_or_input_error(parts: list[str]) -> None:
    check("".join(parts))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(EXAMPLE)), documents)
def test_replacing_one_field_gives_a_profile_or_an_error_at_a_path(key: str,
                                                                   value: object) -> None:
    doc = copy.deepcopy(EXAMPLE)
    doc[key] = value
    check(dump(doc))


def _profiles() -> st.SearchStrategy[dict[str, Any]]:
    algs = sorted(hw.ALGORITHMS)
    return st.fixed_dictionaries({
        "schema": st.just(hw.SCHEMA),
        "model": st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1,
                         max_size=20),
        "vendor": st.just("vendor"),
        "class": st.just("mcu"),
        "key_storage": st.sampled_from(["none", "software", "secure_element", "trustzone"]),
        "algorithms_in_hardware": st.lists(st.sampled_from(algs), unique=True, max_size=6),
        "algorithms_in_software": st.lists(st.sampled_from(algs), unique=True, max_size=4),
        "can_add_algorithms_by_update": st.booleans(),
        "flash_kb": st.integers(1024, 4096),
        "ram_kb": st.integers(1, 1024),
        "free_flash_for_update_kb": st.integers(0, 1024),
        "ab_slots": st.booleans(),
        "recovery_partition": st.booleans(),
        "secure_boot": st.sampled_from([
            {"supported": False, "root_of_trust": "none", "key_revocable": False},
            {"supported": True, "root_of_trust": "rom", "key_revocable": True},
            {"supported": True, "root_of_trust": "otp", "key_revocable": False}]),
        "rng": st.sampled_from([r.value for r in hw.RngKind]),
        "anti_rollback_counter": st.sampled_from(["none", "otp_fuses", "rpmb"]),
        "connectivity": st.lists(st.sampled_from(sorted(hw.CONNECTIVITY)), unique=True,
                                 min_size=1, max_size=4),
        "planned_lifetime_years": st.integers(1, 50),
        "deployed_year": st.integers(2000, 2040),
    }).filter(lambda d: d["free_flash_for_update_kb"] > 0 or not d["ab_slots"])


@settings(max_examples=200, deadline=None)
@given(_profiles(), st.none() | st.integers(1, 50), st.integers(2000, 2100))
def test_valid_profiles_round_trip_and_get_a_reasoned_verdict_per_mechanism(
        doc: dict[str, Any], lifetime: int | None, now_year: int) -> None:
    p = hw.parse_profile(dump(doc))
    assert hw.parse_profile(dump(p.as_dict())) == p
    a = hw.assess(p, planned_lifetime_years=lifetime, timelines=TIMELINES, now_year=now_year)
    assert [v.mechanism for v in a.verdicts] == list(hw.Mechanism)
    for v in a.verdicts:
        assert v.reason
        assert v.level is hw.Level.FEASIBLE or v.would_change_it
    # Weaker key storage never earns a longer credential or sensitive topics.
    d = a.defaults
    if p.key_storage in {hw.HardwareKeyStorage.NONE, hw.HardwareKeyStorage.SOFTWARE}:
        assert not d.sensitive_topics_allowed
        assert d.credential_lifetime_s <= 30 * 86_400
    # A longer life can only make crypto agility worse, never better.
    longer = hw.assess(p, planned_lifetime_years=50, timelines=TIMELINES, now_year=now_year)
    rank = list(hw.Level)
    assert rank.index(longer.verdict(hw.Mechanism.CRYPTO_AGILITY).level) >= rank.index(
        a.verdict(hw.Mechanism.CRYPTO_AGILITY).level)
