"""The hardware profile (schema ``iotrust.hardware/v1``) as an immutable, self-checking value.

:class:`HardwareProfile` and :class:`SecureBoot` check every field and the consistency between
fields in their constructors; :func:`parse_profile` is the entry point from YAML bytes and
:func:`parse_lifetime_years` reads an operator's ``12y``. It does not assess anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from iotrust.core.hardware._parse import (
    bool_field,
    check_fields,
    enum_field,
    int_field,
    load_yaml,
    mapping_field,
    names_field,
    text_field,
)
from iotrust.core.hardware.schema import (
    ALGORITHMS,
    CONNECTIVITY,
    MAX_KB,
    MAX_LIFETIME_YEARS,
    MAX_YEAR,
    MIN_YEAR,
    SCHEMA,
    DeviceClass,
    HardwareKeyStorage,
    ProfileError,
    RngKind,
    RollbackCounter,
    RootOfTrust,
)
from iotrust.errors import InputError

_LIFETIME: Final = re.compile(r"^([1-9][0-9]?)\s*(y|yr|yrs|year|years)?$")


@dataclass(frozen=True, slots=True)
class SecureBoot:
    """Whether the device verifies what it boots, against what root, and if that key can change."""

    supported: bool
    root_of_trust: RootOfTrust
    key_revocable: bool

    def __post_init__(self) -> None:
        base = "$.secure_boot"
        bool_field(self.supported, f"{base}.supported")
        enum_field(RootOfTrust, self.root_of_trust, f"{base}.root_of_trust")
        bool_field(self.key_revocable, f"{base}.key_revocable")
        if self.supported and self.root_of_trust is RootOfTrust.NONE:
            raise ProfileError(f"{base}.root_of_trust", "secure boot needs a root of trust")
        if not self.supported and self.root_of_trust is not RootOfTrust.NONE:
            raise ProfileError(f"{base}.root_of_trust", "must be none when secure boot is "
                               "not supported")
        if not self.supported and self.key_revocable:
            raise ProfileError(f"{base}.key_revocable", "must be false when secure boot is "
                               "not supported")

    @classmethod
    def from_mapping(cls, value: object, path: str = "$.secure_boot") -> SecureBoot:
        """Read the ``secure_boot`` block."""
        m = mapping_field(value, path)
        check_fields(m, path, ("supported", "root_of_trust", "key_revocable"), ())
        return cls(supported=bool_field(m["supported"], f"{path}.supported"),
                   root_of_trust=enum_field(RootOfTrust, m["root_of_trust"],
                                            f"{path}.root_of_trust"),
                   key_revocable=bool_field(m["key_revocable"], f"{path}.key_revocable"))


_REQUIRED: Final = ("schema", "model", "vendor", "class", "key_storage", "algorithms_in_hardware",
                    "can_add_algorithms_by_update", "flash_kb", "ram_kb",
                    "free_flash_for_update_kb", "ab_slots", "secure_boot", "rng",
                    "anti_rollback_counter", "connectivity", "planned_lifetime_years")
_OPTIONAL: Final = ("algorithms_in_software", "recovery_partition", "deployed_year")


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """What one device model can carry (schema ``iotrust.hardware/v1``).

    The constructor checks every field and the consistency between fields, raising
    :class:`ProfileError` with the JSON path of the first problem.
    """

    model: str
    vendor: str
    device_class: DeviceClass
    key_storage: HardwareKeyStorage
    algorithms_in_hardware: tuple[str, ...]
    can_add_algorithms_by_update: bool
    flash_kb: int
    ram_kb: int
    free_flash_for_update_kb: int
    ab_slots: bool
    secure_boot: SecureBoot
    rng: RngKind
    anti_rollback_counter: RollbackCounter
    connectivity: tuple[str, ...]
    planned_lifetime_years: int
    algorithms_in_software: tuple[str, ...] = ()
    recovery_partition: bool = False
    deployed_year: int | None = None

    def __post_init__(self) -> None:
        text_field(self.model, "$.model")
        text_field(self.vendor, "$.vendor")
        enum_field(DeviceClass, self.device_class, "$.class")
        enum_field(HardwareKeyStorage, self.key_storage, "$.key_storage")
        for name in ("algorithms_in_hardware", "algorithms_in_software"):
            object.__setattr__(self, name, names_field(getattr(self, name), f"$.{name}",
                                                       ALGORITHMS, "algorithm"))
        object.__setattr__(self, "connectivity",
                           names_field(self.connectivity, "$.connectivity", CONNECTIVITY,
                                       "connectivity"))
        if not self.connectivity:
            raise ProfileError("$.connectivity", "must name at least one link")
        bool_field(self.can_add_algorithms_by_update, "$.can_add_algorithms_by_update")
        int_field(self.flash_kb, "$.flash_kb", 1, MAX_KB)
        int_field(self.ram_kb, "$.ram_kb", 1, MAX_KB)
        int_field(self.free_flash_for_update_kb, "$.free_flash_for_update_kb", 0, MAX_KB)
        bool_field(self.ab_slots, "$.ab_slots")
        bool_field(self.recovery_partition, "$.recovery_partition")
        if not isinstance(self.secure_boot, SecureBoot):
            raise ProfileError("$.secure_boot", "must be a secure_boot block")
        enum_field(RngKind, self.rng, "$.rng")
        enum_field(RollbackCounter, self.anti_rollback_counter, "$.anti_rollback_counter")
        int_field(self.planned_lifetime_years, "$.planned_lifetime_years", 1, MAX_LIFETIME_YEARS)
        if self.deployed_year is not None:
            int_field(self.deployed_year, "$.deployed_year", MIN_YEAR, MAX_YEAR)
        self._check_consistency()

    def _check_consistency(self) -> None:
        if self.free_flash_for_update_kb > self.flash_kb:
            raise ProfileError("$.free_flash_for_update_kb", "cannot exceed flash_kb")
        if self.ab_slots and self.free_flash_for_update_kb == 0:
            raise ProfileError("$.ab_slots", "A/B slots need a second slot: "
                               "free_flash_for_update_kb must be above 0")
        has_tpm = self.key_storage is HardwareKeyStorage.TPM2
        if self.anti_rollback_counter is RollbackCounter.TPM_NV and not has_tpm:
            raise ProfileError("$.anti_rollback_counter", "tpm_nv needs key_storage: tpm2")
        if self.secure_boot.root_of_trust is RootOfTrust.TPM and not has_tpm:
            raise ProfileError("$.secure_boot.root_of_trust", "tpm needs key_storage: tpm2")
        if self.key_storage is HardwareKeyStorage.TRUSTZONE and \
                self.device_class is not DeviceClass.MCU:
            raise ProfileError("$.key_storage", "trustzone (TrustZone-M) applies to class: mcu")

    @classmethod
    def from_mapping(cls, value: object) -> HardwareProfile:
        """Read a profile from a decoded YAML/JSON document."""
        m = mapping_field(value, "$")
        check_fields(m, "$", _REQUIRED, _OPTIONAL)
        if m["schema"] != SCHEMA:
            raise ProfileError("$.schema", f"must be {SCHEMA!r}")
        deployed = m.get("deployed_year")
        return cls(
            model=text_field(m["model"], "$.model"),
            vendor=text_field(m["vendor"], "$.vendor"),
            device_class=enum_field(DeviceClass, m["class"], "$.class"),
            key_storage=enum_field(HardwareKeyStorage, m["key_storage"], "$.key_storage"),
            algorithms_in_hardware=names_field(m["algorithms_in_hardware"],
                                               "$.algorithms_in_hardware", ALGORITHMS,
                                               "algorithm"),
            algorithms_in_software=names_field(m.get("algorithms_in_software", []),
                                               "$.algorithms_in_software", ALGORITHMS, "algorithm"),
            can_add_algorithms_by_update=bool_field(m["can_add_algorithms_by_update"],
                                                    "$.can_add_algorithms_by_update"),
            flash_kb=int_field(m["flash_kb"], "$.flash_kb", 1, MAX_KB),
            ram_kb=int_field(m["ram_kb"], "$.ram_kb", 1, MAX_KB),
            free_flash_for_update_kb=int_field(m["free_flash_for_update_kb"],
                                               "$.free_flash_for_update_kb", 0, MAX_KB),
            ab_slots=bool_field(m["ab_slots"], "$.ab_slots"),
            recovery_partition=bool_field(m.get("recovery_partition", False),
                                          "$.recovery_partition"),
            secure_boot=SecureBoot.from_mapping(m["secure_boot"]),
            rng=enum_field(RngKind, m["rng"], "$.rng"),
            anti_rollback_counter=enum_field(RollbackCounter, m["anti_rollback_counter"],
                                             "$.anti_rollback_counter"),
            connectivity=names_field(m["connectivity"], "$.connectivity", CONNECTIVITY,
                                     "connectivity"),
            planned_lifetime_years=int_field(m["planned_lifetime_years"],
                                             "$.planned_lifetime_years", 1, MAX_LIFETIME_YEARS),
            deployed_year=None if deployed is None else int_field(deployed, "$.deployed_year",
                                                                  MIN_YEAR, MAX_YEAR),
        )

    def as_dict(self) -> dict[str, Any]:
        """The profile as a schema document (``from_mapping(p.as_dict()) == p``)."""
        doc: dict[str, Any] = {
            "schema": SCHEMA, "model": self.model, "vendor": self.vendor,
            "class": self.device_class.value, "key_storage": self.key_storage.value,
            "algorithms_in_hardware": list(self.algorithms_in_hardware),
            "algorithms_in_software": list(self.algorithms_in_software),
            "can_add_algorithms_by_update": self.can_add_algorithms_by_update,
            "flash_kb": self.flash_kb, "ram_kb": self.ram_kb,
            "free_flash_for_update_kb": self.free_flash_for_update_kb,
            "ab_slots": self.ab_slots, "recovery_partition": self.recovery_partition,
            "secure_boot": {"supported": self.secure_boot.supported,
                            "root_of_trust": self.secure_boot.root_of_trust.value,
                            "key_revocable": self.secure_boot.key_revocable},
            "rng": self.rng.value, "anti_rollback_counter": self.anti_rollback_counter.value,
            "connectivity": list(self.connectivity),
            "planned_lifetime_years": self.planned_lifetime_years,
        }
        if self.deployed_year is not None:
            doc["deployed_year"] = self.deployed_year
        return doc



def parse_profile(data: bytes | str) -> HardwareProfile:
    """Parse and validate a profile document (``ProfileError``, reason ``profile_invalid``)."""
    return HardwareProfile.from_mapping(load_yaml(data))


def parse_lifetime_years(text: str) -> int:
    """``"12y"``, ``"12 years"`` or ``"12"`` → 12 (1-50); ``InputError(invalid_lifetime)``."""
    match = _LIFETIME.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if match is None or int(match.group(1)) > MAX_LIFETIME_YEARS:
        raise InputError(f"lifetime must be 1-{MAX_LIFETIME_YEARS} years, e.g. 12y",
                         reason="invalid_lifetime")
    return int(match.group(1))
