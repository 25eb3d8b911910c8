"""The pure assessment: one verdict per security mechanism, and the model defaults it implies.

:func:`assess` judges a profile over its planned lifetime against the timelines: each
:class:`Mechanism` gets a :class:`Verdict` (feasible, degraded, impossible) with its reason and
what would change it; :func:`model_defaults` turns that into a device model's credential lifetime
and whether it may hold sensitive topics. The thresholds are documented rules of thumb
(docs/hardware-profiles.md), not measurements of any one chip. No I/O and no clock: the caller
passes ``now_year``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from iotrust.core.hardware._parse import (
    int_field,
)
from iotrust.core.hardware.profile import (
    HardwareProfile,
)
from iotrust.core.hardware.schema import (
    ALGORITHMS,
    ASSESSMENT_SCHEMA,
    BASELINE_ALGORITHM,
    IP_CONNECTIVITY,
    MAX_LIFETIME_YEARS,
    MAX_YEAR,
    MIN_YEAR,
    STORAGE_NAMES,
    AlgorithmKind,
    HardwareKeyStorage,
    RngKind,
    RollbackCounter,
)
from iotrust.core.hardware.timelines import (
    AlgorithmTimeline,
    Timelines,
    Verification,
)

# Rules of thumb used by the assessment (docs/hardware-profiles.md explains each).
SOFT_ECC_MIN_RAM_KB: Final = 4       # software ECDSA P-256 (micro-ecc class) fits in a few KiB
SOFT_ECC_MIN_FLASH_KB: Final = 32
TLS_MIN_RAM_KB: Final = 16           # below this no TLS client with ECDHE-ECDSA fits
TLS_COMFORT_RAM_KB: Final = 48       # below this TLS needs shrunken record buffers
PQ_FLASH_HEADROOM_KB: Final = 64     # room to add ML-DSA (or LMS) code and larger certificates
PQ_RAM_KB: Final = 32                # RAM for ML-DSA-44 verification/signing (stack-optimised)
CREDENTIAL_LIFETIME_DAYS: Final[Mapping[str, int]] = {
    "secure_element": 90, "tpm2": 90, "trustzone": 30, "software": 30, "none": 7}
_DAY: Final = 86_400


class Level(enum.StrEnum):
    """How well a mechanism can be carried."""

    FEASIBLE = "feasible"
    DEGRADED = "degraded"
    IMPOSSIBLE = "impossible"


_RANK: Final = {Level.FEASIBLE: 0, Level.DEGRADED: 1, Level.IMPOSSIBLE: 2}


class Mechanism(enum.StrEnum):
    """The security mechanisms a hardware profile is assessed for, in report order."""

    UNIQUE_IDENTITY = "unique_identity"
    KEY_PROTECTION = "key_protection"
    MUTUAL_TLS = "mutual_tls"
    SIGNED_UPDATES = "signed_updates"
    ROLLBACK_PROTECTION = "rollback_protection"
    AB_RECOVERY = "ab_recovery"
    CREDENTIAL_ROTATION = "credential_rotation"
    CRYPTO_AGILITY = "crypto_agility"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One mechanism's verdict; ``would_change_it`` is empty only when feasible."""

    mechanism: Mechanism
    level: Level
    reason: str
    would_change_it: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.mechanism, Mechanism) or not isinstance(self.level, Level):
            raise TypeError("mechanism and level must be enum members")
        if not self.reason:
            raise ValueError("a verdict needs a reason")
        if self.level is not Level.FEASIBLE and not self.would_change_it:
            raise ValueError("a verdict below feasible must say what would change it")

    def as_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"mechanism": self.mechanism.value, "level": self.level.value,
                "reason": self.reason, "would_change_it": self.would_change_it}


@dataclass(frozen=True, slots=True)
class ModelDefaults:
    """What a device model gets from its hardware: credential lifetime and topic permissions."""

    credential_lifetime_s: int
    sensitive_topics_allowed: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"credential_lifetime_s": self.credential_lifetime_s,
                "credential_lifetime_days": self.credential_lifetime_s // _DAY,
                "sensitive_topics_allowed": self.sensitive_topics_allowed, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Assessment:
    """The verdicts for one profile over one planned lifetime."""

    profile: HardwareProfile
    lifetime_years: int
    now_year: int
    service_end_year: int
    verdicts: tuple[Verdict, ...]

    def __post_init__(self) -> None:
        if tuple(v.mechanism for v in self.verdicts) != tuple(Mechanism):
            raise ValueError("an assessment has one verdict per mechanism, in order")

    def verdict(self, mechanism: Mechanism) -> Verdict:
        """The verdict for ``mechanism``."""
        return self.verdicts[tuple(Mechanism).index(mechanism)]

    @property
    def worst(self) -> Level:
        """The lowest level among the verdicts."""
        return max((v.level for v in self.verdicts), key=_RANK.__getitem__)

    @property
    def defaults(self) -> ModelDefaults:
        """The model defaults that follow from this assessment."""
        return model_defaults(self)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``iotrust.hardware-assessment/v1``)."""
        p = self.profile
        return {"schema": ASSESSMENT_SCHEMA, "model": p.model, "vendor": p.vendor,
                "class": p.device_class.value, "key_storage": p.key_storage.value,
                "lifetime_years": self.lifetime_years, "deployed_year": p.deployed_year,
                "now_year": self.now_year, "service_end_year": self.service_end_year,
                "worst": self.worst.value, "verdicts": [v.as_dict() for v in self.verdicts],
                "defaults": self.defaults.as_dict()}


def assess(profile: HardwareProfile, *, planned_lifetime_years: int | None = None,
           timelines: Timelines, now_year: int) -> Assessment:
    """Assess every mechanism for ``profile`` (lifetime override optional)."""
    lifetime = profile.planned_lifetime_years if planned_lifetime_years is None else int_field(
        planned_lifetime_years, "lifetime", 1, MAX_LIFETIME_YEARS)
    int_field(now_year, "now_year", MIN_YEAR, MAX_YEAR)
    start = profile.deployed_year if profile.deployed_year is not None else now_year
    end = start + lifetime
    identity = _unique_identity(profile)
    verdicts = (
        identity,
        _key_protection(profile),
        _mutual_tls(profile, identity),
        _signed_updates(profile, identity),
        _rollback_protection(profile),
        _ab_recovery(profile),
        _credential_rotation(profile, identity),
        _crypto_agility(profile, end, timelines),
    )
    return Assessment(profile=profile, lifetime_years=lifetime, now_year=now_year,
                      service_end_year=end, verdicts=verdicts)


def model_defaults(assessment: Assessment) -> ModelDefaults:
    """Credential lifetime from the key storage; sensitive topics only with protected keys."""
    p = assessment.profile
    days = CREDENTIAL_LIFETIME_DAYS[p.key_storage.value]
    protected = assessment.verdict(Mechanism.KEY_PROTECTION).level is Level.FEASIBLE
    why = (f"{days}-day credentials for key storage {p.key_storage.value}; sensitive topics "
           + ("allowed: keys are protected in hardware" if protected else
              "barred: keys are not protected in hardware"))
    return ModelDefaults(credential_lifetime_s=days * _DAY, sensitive_topics_allowed=protected,
                         reason=why)


def _v(mechanism: Mechanism, level: Level, reason: str, change: str = "") -> Verdict:
    return Verdict(mechanism, level, reason, change)


def _has_asymmetric(p: HardwareProfile) -> bool:
    hw = any(ALGORITHMS[a].kind is AlgorithmKind.SIGNATURE for a in p.algorithms_in_hardware)
    soft_fits = p.ram_kb >= SOFT_ECC_MIN_RAM_KB and p.flash_kb >= SOFT_ECC_MIN_FLASH_KB
    return hw or soft_fits


def _unique_identity(p: HardwareProfile) -> Verdict:
    m = Mechanism.UNIQUE_IDENTITY
    if not _has_asymmetric(p):
        return _v(m, Level.IMPOSSIBLE,
                  f"no signature engine and too little memory for software ECDSA (RAM {p.ram_kb} "
                  f"KiB, flash {p.flash_kb} KiB)",
                  "hardware with an ECDSA P-256 engine or a secure element")
    ks = p.key_storage
    if ks in {HardwareKeyStorage.SECURE_ELEMENT, HardwareKeyStorage.TPM2}:
        return _v(m, Level.FEASIBLE, f"the key is generated inside the {STORAGE_NAMES[ks]} and "
                  "cannot be exported")
    if ks is HardwareKeyStorage.NONE:
        return _v(m, Level.DEGRADED,
                  "a per-device key can be injected at the factory but sits in ordinary flash: "
                  "a firmware dump copies the identity",
                  "a secure element, TPM or TrustZone-protected key store")
    if p.rng is RngKind.NONE:
        return _v(m, Level.DEGRADED,
                  "without a random number generator the key must be made outside the device, "
                  "so the factory has seen it",
                  "a true RNG (or a secure element, which brings one)")
    return _v(m, Level.FEASIBLE, f"the key is generated on the device ({p.rng.value}) and kept "
              f"in the {STORAGE_NAMES[ks]}")


def _key_protection(p: HardwareProfile) -> Verdict:
    m = Mechanism.KEY_PROTECTION
    ks = p.key_storage
    if ks in {HardwareKeyStorage.SECURE_ELEMENT, HardwareKeyStorage.TPM2}:
        return _v(m, Level.FEASIBLE, f"private keys never leave the {STORAGE_NAMES[ks]}; "
                  "firmware can use them but not read them")
    if ks is HardwareKeyStorage.TRUSTZONE:
        if p.secure_boot.supported:
            return _v(m, Level.FEASIBLE, "keys live in the TrustZone secure world, out of "
                      "reach of application firmware; secure boot protects the secure world "
                      "(less resistant to physical attack than a secure element)")
        return _v(m, Level.DEGRADED, "TrustZone isolates keys, but without secure boot a "
                  "modified secure-world image can read them",
                  "enable secure boot with a ROM or OTP root of trust")
    if ks is HardwareKeyStorage.SOFTWARE:
        return _v(m, Level.DEGRADED, "keys are protected only by software: code execution or a "
                  "storage dump extracts them",
                  "a secure element, TPM 2.0 or TrustZone key store")
    return _v(m, Level.IMPOSSIBLE, "keys sit in ordinary flash, readable through the debug port "
              "or a firmware dump", "add a secure element (e.g. an ATECC608-class part) or "
              "choose an MCU with TrustZone-M and secure boot")


def _mutual_tls(p: HardwareProfile, identity: Verdict) -> Verdict:
    m = Mechanism.MUTUAL_TLS
    if identity.level is Level.IMPOSSIBLE:
        return _v(m, Level.IMPOSSIBLE, "no way to hold or use a client key",
                  identity.would_change_it)
    if p.ram_kb < TLS_MIN_RAM_KB:
        return _v(m, Level.IMPOSSIBLE, f"RAM {p.ram_kb} KiB is below the ~{TLS_MIN_RAM_KB} KiB a "
                  "TLS client with ECDHE-ECDSA needs", "more RAM, or a gateway terminating "
                  "TLS with object security (COSE/OSCORE) to the device")
    issues: list[str] = []
    changes: list[str] = []
    if not set(p.connectivity) & IP_CONNECTIVITY:
        issues.append("no IP link (" + ", ".join(p.connectivity) + "): TLS ends at a gateway, "
                      "not at the device")
        changes.append("an IP link, or end-to-end object security (COSE/OSCORE) via the gateway")
    if p.ram_kb < TLS_COMFORT_RAM_KB:
        issues.append(f"RAM {p.ram_kb} KiB fits TLS only with reduced record buffers "
                      "(max_fragment_length) and a single session")
        changes.append(f"at least {TLS_COMFORT_RAM_KB} KiB RAM")
    if p.rng is RngKind.NONE:
        issues.append("no RNG: ephemeral ECDHE keys and nonces are predictable")
        changes.append("a true RNG")
    if issues:
        return _v(m, Level.DEGRADED, "; ".join(issues), "; ".join(changes))
    links = ", ".join(sorted(set(p.connectivity) & IP_CONNECTIVITY))
    return _v(m, Level.FEASIBLE, f"IP link ({links}), {p.ram_kb} KiB RAM and an RNG for a TLS "
              "client with a device certificate")


def _can_stage(p: HardwareProfile) -> bool:
    return p.free_flash_for_update_kb > 0 or p.ab_slots or p.recovery_partition


def _signed_updates(p: HardwareProfile, identity: Verdict) -> Verdict:
    m = Mechanism.SIGNED_UPDATES
    if identity.level is Level.IMPOSSIBLE:
        return _v(m, Level.IMPOSSIBLE, "cannot verify a signature", identity.would_change_it)
    if not _can_stage(p):
        return _v(m, Level.IMPOSSIBLE, "no free flash, A/B slot or recovery partition: an update "
                  "overwrites the running firmware before its signature can be checked",
                  "flash to stage a whole image (a second slot) before it replaces the first")
    sb = p.secure_boot
    issues: list[str] = []
    changes: list[str] = []
    if not sb.supported:
        issues.append("the updater can check signatures, but nothing verifies what boots: "
                      "anyone who writes flash runs their own firmware")
        changes.append("secure boot anchored in ROM, OTP or a TPM")
    elif not sb.key_revocable:
        issues.append(f"secure boot ({sb.root_of_trust.value} root) cannot revoke its key: a "
                      "leaked signing key is trusted forever")
        changes.append("a boot ROM that supports several keys with revocation")
    if issues:
        return _v(m, Level.DEGRADED, "; ".join(issues), "; ".join(changes))
    return _v(m, Level.FEASIBLE, f"secure boot from {sb.root_of_trust.value} with a revocable "
              "key verifies every image, and there is room to stage updates")


def _rollback_protection(p: HardwareProfile) -> Verdict:
    m = Mechanism.ROLLBACK_PROTECTION
    counter = p.anti_rollback_counter
    boot = p.secure_boot.supported
    if counter is not RollbackCounter.NONE and boot:
        return _v(m, Level.FEASIBLE, f"secure boot enforces a monotonic version counter in "
                  f"{counter.value}")
    if counter is not RollbackCounter.NONE:
        return _v(m, Level.DEGRADED, f"a monotonic counter exists ({counter.value}) but without "
                  "secure boot nothing enforces it at boot", "enable secure boot")
    if boot:
        return _v(m, Level.DEGRADED, "the bootloader can compare versions but keeps the minimum "
                  "in rewritable flash, so a flash write resets it",
                  "a monotonic counter in OTP fuses, RPMB or TPM NV memory")
    return _v(m, Level.IMPOSSIBLE, "no secure boot and no monotonic counter: an old, vulnerable "
              "signed image can always be reinstalled",
              "secure boot plus a monotonic counter (OTP fuses, RPMB or TPM NV)")


def _ab_recovery(p: HardwareProfile) -> Verdict:
    m = Mechanism.AB_RECOVERY
    if p.ab_slots:
        return _v(m, Level.FEASIBLE, "A/B slots: a failed update boots the previous image")
    if p.recovery_partition:
        return _v(m, Level.DEGRADED, "a recovery partition can re-download firmware, but the "
                  "device is out of service until it does", "flash for two full image slots")
    return _v(m, Level.IMPOSSIBLE, "single image, no recovery: an interrupted or bad update "
              "bricks the device and recovery needs physical access",
              "flash for two image slots or a recovery partition")


def _credential_rotation(p: HardwareProfile, identity: Verdict) -> Verdict:
    m = Mechanism.CREDENTIAL_ROTATION
    if identity.level is Level.IMPOSSIBLE:
        return _v(m, Level.IMPOSSIBLE, "the device cannot hold its own key",
                  identity.would_change_it)
    if p.rng is RngKind.NONE and p.key_storage not in {HardwareKeyStorage.SECURE_ELEMENT,
                                                       HardwareKeyStorage.TPM2}:
        return _v(m, Level.DEGRADED, "no RNG: a new key can only be derived from a stored secret, "
                  "so rotation does not heal a compromise", "a true RNG or a secure element")
    if p.key_storage is HardwareKeyStorage.NONE:
        return _v(m, Level.DEGRADED, "new keys can be made but land in ordinary flash",
                  "protected key storage")
    return _v(m, Level.FEASIBLE, f"new keys are generated on the device and stored in the "
              f"{STORAGE_NAMES[p.key_storage]}; certificates can be reissued over the air")


def _crypto_agility(p: HardwareProfile, end_year: int, timelines: Timelines) -> Verdict:
    m = Mechanism.CRYPTO_AGILITY
    current = [a for a in (*p.algorithms_in_hardware, *p.algorithms_in_software)
               if ALGORITHMS[a].asymmetric]
    assumed = "" if current else (" (none listed; assuming the protocol baseline "
                                  f"{BASELINE_ALGORITHM})")
    current = current or [BASELINE_ALGORITHM]
    # Earliest retirement first; on a tie, signatures before key establishment, hardware first.
    dated: list[tuple[int, bool, bool, str, AlgorithmTimeline]] = []
    for name in current:
        tl = timelines.for_algorithm(name)
        if ALGORITHMS[name].quantum_vulnerable and tl is not None and tl.disallowed_after:
            dated.append((tl.disallowed_after, ALGORITHMS[name].kind is not AlgorithmKind.SIGNATURE,
                          name not in p.algorithms_in_hardware, name, tl))
    if not dated:
        return _v(m, Level.FEASIBLE, "none of its public-key algorithms has a published "
                  f"retirement year{assumed}")
    retire_year, _, _, first, tl = min(dated, key=lambda d: d[:4])
    cite = timelines.source(tl.source).cite()
    if tl.verification is Verification.UNVERIFIED and "unverified" not in cite:
        cite += ", year unverified"
    if end_year <= retire_year:
        return _v(m, Level.FEASIBLE, f"service ends in {end_year}, before {first} is disallowed "
                  f"after {retire_year} per {cite}{assumed}")
    need = (f"service runs to {end_year} but {first} is disallowed after {retire_year} per "
            f"{cite}{assumed}")
    pq_hw = [a for a in p.algorithms_in_hardware
             if ALGORITHMS[a].kind is AlgorithmKind.SIGNATURE
             and not ALGORITHMS[a].quantum_vulnerable]
    if pq_hw:
        return _v(m, Level.FEASIBLE, f"{need}; it already has {', '.join(pq_hw)} in hardware")
    replace = ("hardware with a post-quantum signature algorithm or update headroom, or "
               f"replacing the device by {retire_year}")
    if not p.can_add_algorithms_by_update or p.free_flash_for_update_kb == 0:
        return _v(m, Level.IMPOSSIBLE, f"{need}; it cannot add a new signature algorithm by "
                  "update", replace)
    room = f"{p.free_flash_for_update_kb} KiB free flash, {p.ram_kb} KiB RAM"
    if p.free_flash_for_update_kb >= PQ_FLASH_HEADROOM_KB and p.ram_kb >= PQ_RAM_KB:
        caveat = ""
        if p.key_storage in {HardwareKeyStorage.SECURE_ELEMENT, HardwareKeyStorage.TPM2}:
            caveat = (f"; note the {STORAGE_NAMES[p.key_storage]} cannot hold post-quantum "
                      "keys, so a post-quantum device key would live outside it")
        return _v(m, Level.FEASIBLE, f"{need}; a signed update can add a post-quantum signature "
                  f"algorithm such as ML-DSA-44 in software ({room}){caveat}")
    return _v(m, Level.DEGRADED, f"{need}; a post-quantum algorithm could only be added in "
              f"software with little headroom ({room}; about {PQ_FLASH_HEADROOM_KB} KiB flash "
              f"and {PQ_RAM_KB} KiB RAM are needed)", replace)
