"""Hardware profiles: what a device model can carry, and what trust it can sustain for its life.

This module holds the versioned profile schema (``iotrust.hardware/v1``) as immutable values,
the one parse boundary for profile and timeline YAML (bounded size, event count and depth; no
anchors or aliases; no duplicate keys; safe constructors only), the public algorithm transition
timelines as values, and the pure assessment: one :class:`Verdict` (feasible, degraded,
impossible) per security mechanism with its reason and what would change it, plus the
:class:`ModelDefaults` a device model gets from it (credential lifetime, sensitive topics).

It does not read files, know today's date or format output: callers pass YAML bytes, the
timelines and ``now_year``. ``services/hardware.py`` reads files and registers models; the CLI
prints. The thresholds below are documented rules of thumb (docs/hardware-profiles.md), not
measurements of any one chip.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import yaml

from iotrust.errors import InputError

try:  # libyaml's parser is ~10x faster; the constructor (and our checks) stay in Python
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

SCHEMA: Final = "iotrust.hardware/v1"
TIMELINES_SCHEMA: Final = "iotrust.crypto-timelines/v1"
ASSESSMENT_SCHEMA: Final = "iotrust.hardware-assessment/v1"

#: Limits on an untrusted profile document.
MAX_PROFILE_BYTES: Final = 64 * 1024
MAX_PROFILE_EVENTS: Final = 2_000
MAX_PROFILE_DEPTH: Final = 6
#: Limits on the (trusted, but still bounded) timelines document.
MAX_TIMELINES_BYTES: Final = 256 * 1024
MAX_TIMELINES_EVENTS: Final = 20_000
MAX_TIMELINES_DEPTH: Final = 6
MAX_TEXT: Final = 64
MAX_LIST: Final = 32
MAX_KB: Final = 1 << 32  # 4 TiB expressed in KiB: larger is a typo, not a device
MAX_LIFETIME_YEARS: Final = 50
MIN_YEAR: Final = 1990
MAX_YEAR: Final = 2200

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

_TOKEN: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_IDENT: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LIFETIME: Final = re.compile(r"^([1-9][0-9]?)\s*(y|yr|yrs|year|years)?$")
_E = TypeVar("_E", bound=enum.StrEnum)


# --------------------------------------------------------------------------------------------
# Errors


class ProfileError(InputError):
    """A hardware profile (or timelines document) is malformed; ``path`` is its JSON path."""

    default_reason = "profile_invalid"

    def __init__(self, path: str, problem: str, *, reason: str | None = None) -> None:
        super().__init__(f"{path}: {problem}", reason=reason)
        self.path = path
        self.problem = problem


def _key_path(base: str, key: object) -> str:
    if isinstance(key, str) and _IDENT.fullmatch(key) and len(key) <= MAX_TEXT:
        return f"{base}.{key}"
    return f"{base}[{json.dumps(str(key)[:MAX_TEXT])}]"


# --------------------------------------------------------------------------------------------
# Vocabulary


class DeviceClass(enum.StrEnum):
    """What kind of computer the device is."""

    MCU = "mcu"
    LINUX = "linux"
    GATEWAY = "gateway"


class HardwareKeyStorage(enum.StrEnum):
    """Where the device keeps private keys.

    ``none``: ordinary flash, readable by any firmware or a debug probe. ``software``: a file or
    flash area protected only by the operating system or software encryption.
    """

    NONE = "none"
    SOFTWARE = "software"
    SECURE_ELEMENT = "secure_element"
    TPM2 = "tpm2"
    TRUSTZONE = "trustzone"


#: How reasons name each key storage.
STORAGE_NAMES: Final[Mapping[str, str]] = {
    "none": "ordinary flash", "software": "software-protected storage",
    "secure_element": "secure element", "tpm2": "TPM 2.0", "trustzone": "TrustZone secure world"}
PROTECTED_STORAGE: Final = frozenset({HardwareKeyStorage.SECURE_ELEMENT, HardwareKeyStorage.TPM2,
                                      HardwareKeyStorage.TRUSTZONE})


class RootOfTrust(enum.StrEnum):
    """What anchors secure boot."""

    ROM = "rom"
    OTP = "otp"
    TPM = "tpm"
    NONE = "none"


class RngKind(enum.StrEnum):
    """The device's source of randomness."""

    TRNG = "trng"
    DRBG_SEEDED = "drbg_seeded"
    NONE = "none"


class RollbackCounter(enum.StrEnum):
    """Where a monotonic anti-rollback counter lives."""

    OTP_FUSES = "otp_fuses"
    RPMB = "rpmb"
    TPM_NV = "tpm_nv"
    NONE = "none"


class AlgorithmKind(enum.StrEnum):
    """What an algorithm is for."""

    SIGNATURE = "signature"
    KEY_ESTABLISHMENT = "key_establishment"
    HASH = "hash"
    CIPHER = "cipher"
    MAC = "mac"


@dataclass(frozen=True, slots=True)
class Algorithm:
    """A named algorithm a profile may list."""

    name: str
    kind: AlgorithmKind
    quantum_vulnerable: bool = False

    @property
    def asymmetric(self) -> bool:
        """Signature or key establishment."""
        return self.kind in {AlgorithmKind.SIGNATURE, AlgorithmKind.KEY_ESTABLISHMENT}


def _algs(kind: AlgorithmKind, names: str, *, vulnerable: bool = False) -> dict[str, Algorithm]:
    return {n: Algorithm(n, kind, vulnerable) for n in names.split()}


#: Every algorithm name a profile may use.
ALGORITHMS: Final[Mapping[str, Algorithm]] = {
    **_algs(AlgorithmKind.SIGNATURE, "ecdsa-p256 ecdsa-p384 ed25519 rsa-1024 rsa-2048 rsa-3072 "
            "rsa-4096", vulnerable=True),
    **_algs(AlgorithmKind.SIGNATURE, "ml-dsa-44 ml-dsa-65 ml-dsa-87 slh-dsa lms xmss"),
    **_algs(AlgorithmKind.KEY_ESTABLISHMENT, "ecdh-p256 ecdh-p384 x25519", vulnerable=True),
    **_algs(AlgorithmKind.KEY_ESTABLISHMENT, "ml-kem-512 ml-kem-768 ml-kem-1024"),
    **_algs(AlgorithmKind.HASH, "sha1 sha256 sha384 sha512 sha3-256"),
    **_algs(AlgorithmKind.CIPHER, "aes128 aes256 3des chacha20"),
    **_algs(AlgorithmKind.MAC, "hmac-sha256 cmac-aes"),
}
#: Assumed when a profile lists no public-key algorithm: the protocol baseline (DESIGN.md §1).
BASELINE_ALGORITHM: Final = "ecdsa-p256"

#: Connectivity a profile may list; the first group carries IP (so TLS) end to end.
IP_CONNECTIVITY: Final = frozenset({"wifi", "ethernet", "cellular", "lte-m", "nb-iot", "thread",
                                    "6lowpan"})
CONNECTIVITY: Final = IP_CONNECTIVITY | frozenset(
    {"ble", "zigbee", "lorawan", "sigfox", "sub-ghz", "serial", "can", "rs485", "usb", "nfc"})


# --------------------------------------------------------------------------------------------
# Checked field readers (each names the JSON path of a problem)


def _text(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ProfileError(path, "must be a string")
    if not value.strip() or len(value) > MAX_TEXT or not value.isprintable():
        raise ProfileError(path, f"must be 1-{MAX_TEXT} printable characters")
    return value


def _int(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError(path, "must be an integer")
    if not low <= value <= high:
        raise ProfileError(path, f"must be between {low} and {high}")
    return value


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ProfileError(path, "must be true or false")
    return value


def _enum(kind: type[_E], value: object, path: str) -> _E:
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ProfileError(path, "must be one of " + ", ".join(m.value for m in kind))


def _names(value: object, path: str, vocabulary: frozenset[str] | Mapping[str, Any],
           what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ProfileError(path, "must be a list")
    if len(value) > MAX_LIST:
        raise ProfileError(path, f"must have at most {MAX_LIST} items")
    seen: list[str] = []
    for i, item in enumerate(value):
        item_path = f"{path}[{i}]"
        if not isinstance(item, str):
            raise ProfileError(item_path, "must be a string")
        if item not in vocabulary:
            raise ProfileError(item_path, f"unknown {what} {item[:MAX_TEXT]!r}; known: "
                               + ", ".join(sorted(vocabulary)))
        if item in seen:
            raise ProfileError(item_path, f"duplicate {what} {item!r}")
        seen.append(item)
    return tuple(seen)


def _mapping(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ProfileError(path, "must be a mapping")
    for key in value:
        if not isinstance(key, str):
            raise ProfileError(_key_path(path, key), "keys must be strings")
    return value


def _fields(value: Mapping[str, object], path: str, required: Sequence[str],
            optional: Sequence[str]) -> None:
    allowed = set(required) | set(optional)
    for key in value:
        if key not in allowed:
            raise ProfileError(_key_path(path, key), "unknown field")
    for key in required:
        if key not in value:
            raise ProfileError(_key_path(path, key), "required field missing")


# --------------------------------------------------------------------------------------------
# The profile


@dataclass(frozen=True, slots=True)
class SecureBoot:
    """Whether the device verifies what it boots, against what root, and if that key can change."""

    supported: bool
    root_of_trust: RootOfTrust
    key_revocable: bool

    def __post_init__(self) -> None:
        base = "$.secure_boot"
        _bool(self.supported, f"{base}.supported")
        _enum(RootOfTrust, self.root_of_trust, f"{base}.root_of_trust")
        _bool(self.key_revocable, f"{base}.key_revocable")
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
        m = _mapping(value, path)
        _fields(m, path, ("supported", "root_of_trust", "key_revocable"), ())
        return cls(supported=_bool(m["supported"], f"{path}.supported"),
                   root_of_trust=_enum(RootOfTrust, m["root_of_trust"], f"{path}.root_of_trust"),
                   key_revocable=_bool(m["key_revocable"], f"{path}.key_revocable"))


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
        _text(self.model, "$.model")
        _text(self.vendor, "$.vendor")
        _enum(DeviceClass, self.device_class, "$.class")
        _enum(HardwareKeyStorage, self.key_storage, "$.key_storage")
        for name in ("algorithms_in_hardware", "algorithms_in_software"):
            object.__setattr__(self, name, _names(getattr(self, name), f"$.{name}",
                                                  ALGORITHMS, "algorithm"))
        object.__setattr__(self, "connectivity",
                           _names(self.connectivity, "$.connectivity", CONNECTIVITY,
                                  "connectivity"))
        if not self.connectivity:
            raise ProfileError("$.connectivity", "must name at least one link")
        _bool(self.can_add_algorithms_by_update, "$.can_add_algorithms_by_update")
        _int(self.flash_kb, "$.flash_kb", 1, MAX_KB)
        _int(self.ram_kb, "$.ram_kb", 1, MAX_KB)
        _int(self.free_flash_for_update_kb, "$.free_flash_for_update_kb", 0, MAX_KB)
        _bool(self.ab_slots, "$.ab_slots")
        _bool(self.recovery_partition, "$.recovery_partition")
        if not isinstance(self.secure_boot, SecureBoot):
            raise ProfileError("$.secure_boot", "must be a secure_boot block")
        _enum(RngKind, self.rng, "$.rng")
        _enum(RollbackCounter, self.anti_rollback_counter, "$.anti_rollback_counter")
        _int(self.planned_lifetime_years, "$.planned_lifetime_years", 1, MAX_LIFETIME_YEARS)
        if self.deployed_year is not None:
            _int(self.deployed_year, "$.deployed_year", MIN_YEAR, MAX_YEAR)
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
        m = _mapping(value, "$")
        _fields(m, "$", _REQUIRED, _OPTIONAL)
        if m["schema"] != SCHEMA:
            raise ProfileError("$.schema", f"must be {SCHEMA!r}")
        deployed = m.get("deployed_year")
        return cls(
            model=_text(m["model"], "$.model"),
            vendor=_text(m["vendor"], "$.vendor"),
            device_class=_enum(DeviceClass, m["class"], "$.class"),
            key_storage=_enum(HardwareKeyStorage, m["key_storage"], "$.key_storage"),
            algorithms_in_hardware=_names(m["algorithms_in_hardware"], "$.algorithms_in_hardware",
                                          ALGORITHMS, "algorithm"),
            algorithms_in_software=_names(m.get("algorithms_in_software", []),
                                          "$.algorithms_in_software", ALGORITHMS, "algorithm"),
            can_add_algorithms_by_update=_bool(m["can_add_algorithms_by_update"],
                                               "$.can_add_algorithms_by_update"),
            flash_kb=_int(m["flash_kb"], "$.flash_kb", 1, MAX_KB),
            ram_kb=_int(m["ram_kb"], "$.ram_kb", 1, MAX_KB),
            free_flash_for_update_kb=_int(m["free_flash_for_update_kb"],
                                          "$.free_flash_for_update_kb", 0, MAX_KB),
            ab_slots=_bool(m["ab_slots"], "$.ab_slots"),
            recovery_partition=_bool(m.get("recovery_partition", False), "$.recovery_partition"),
            secure_boot=SecureBoot.from_mapping(m["secure_boot"]),
            rng=_enum(RngKind, m["rng"], "$.rng"),
            anti_rollback_counter=_enum(RollbackCounter, m["anti_rollback_counter"],
                                        "$.anti_rollback_counter"),
            connectivity=_names(m["connectivity"], "$.connectivity", CONNECTIVITY,
                                "connectivity"),
            planned_lifetime_years=_int(m["planned_lifetime_years"], "$.planned_lifetime_years",
                                        1, MAX_LIFETIME_YEARS),
            deployed_year=None if deployed is None else _int(deployed, "$.deployed_year",
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


# --------------------------------------------------------------------------------------------
# The YAML parse boundary


class _StrictLoader(_SafeLoader):
    """The safe loader, refusing duplicate keys (YAML would silently keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode,
                          deep: bool = False) -> dict[Hashable, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    line = key_node.start_mark.line + 1
                    raise ProfileError(_key_path("$", key_node.value),
                                       f"duplicate key (line {line})")
                seen.add(ident)
        return super().construct_mapping(node, deep=deep)


def load_yaml(data: bytes | str, *, max_bytes: int = MAX_PROFILE_BYTES,
              max_events: int = MAX_PROFILE_EVENTS, max_depth: int = MAX_PROFILE_DEPTH,
              reason: str = "profile_invalid") -> object:
    """Decode one bounded YAML document of plain data; any failure is a :class:`ProfileError`.

    Refuses documents over ``max_bytes``, over ``max_events`` parser events or nested deeper
    than ``max_depth``, documents with anchors or aliases (no expansion bombs), several
    documents, duplicate keys, and any tag the safe loader does not know.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise ProfileError("$", f"document larger than {max_bytes} bytes", reason=reason)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProfileError("$", "document is not UTF-8", reason=reason) from None
    try:
        _scan_events(text, max_events=max_events, max_depth=max_depth, reason=reason)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except ProfileError as exc:
        if exc.reason != reason:
            raise ProfileError(exc.path, exc.problem, reason=reason) from None
        raise
    except Exception as exc:  # noqa: BLE001 - the one parse boundary: any parser failure is input
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ProfileError("$", f"not valid YAML{where}", reason=reason) from None


def _scan_events(text: str, *, max_events: int, max_depth: int, reason: str) -> None:
    depth = 0
    documents = 0
    for count, event in enumerate(yaml.parse(text, Loader=_SafeLoader), start=1):
        if count > max_events:
            raise ProfileError("$", f"document has more than {max_events} YAML nodes",
                               reason=reason)
        if isinstance(event, yaml.AliasEvent) or (
                isinstance(event, yaml.NodeEvent) and event.anchor is not None):
            raise ProfileError("$", "YAML anchors and aliases are not allowed", reason=reason)
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise ProfileError("$", "expected a single YAML document", reason=reason)
        elif isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > max_depth:
                raise ProfileError("$", f"nested deeper than {max_depth} levels", reason=reason)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


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


# --------------------------------------------------------------------------------------------
# Timelines


class Verification(enum.StrEnum):
    """Whether a timeline year was checked against a public copy of its source."""

    CONFIRMED = "confirmed"
    UNVERIFIED = "unverified"


@dataclass(frozen=True, slots=True)
class TimelineSource:
    """A public document a timeline entry comes from (no URL: title, date, citation)."""

    id: str
    short: str
    title: str
    publisher: str
    date: str
    citation: str
    verification: Verification

    def cite(self) -> str:
        """Short citation for reasons and reports."""
        tag = "" if self.verification is Verification.CONFIRMED else ", unverified"
        return f"{self.short} ({self.date}{tag})"


@dataclass(frozen=True, slots=True)
class AlgorithmTimeline:
    """When one algorithm is deprecated and disallowed (years are inclusive: 'after 2035')."""

    algorithm: str
    deprecated_after: int | None
    disallowed_after: int | None
    source: str
    verification: Verification
    note: str = ""


@dataclass(frozen=True, slots=True)
class Milestone:
    """A dated transition goal from a source (context for reports, not used in verdicts)."""

    source: str
    scope: str
    year: int
    text: str
    verification: Verification


@dataclass(frozen=True, slots=True)
class Timelines:
    """Algorithm retirement years with their sources."""

    sources: tuple[TimelineSource, ...]
    algorithms: tuple[AlgorithmTimeline, ...]
    milestones: tuple[Milestone, ...] = ()
    _by_alg: dict[str, AlgorithmTimeline] = field(init=False, repr=False, compare=False)
    _by_src: dict[str, TimelineSource] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_src = {s.id: s for s in self.sources}
        by_alg = {a.algorithm: a for a in self.algorithms}
        if len(by_src) != len(self.sources) or len(by_alg) != len(self.algorithms):
            raise InputError("duplicate timeline source or algorithm", reason="timelines_invalid")
        for cited in (*(a.source for a in self.algorithms),
                      *(ms.source for ms in self.milestones)):
            if cited not in by_src:
                raise InputError(f"timeline entry cites unknown source {cited!r:.80}",
                                 reason="timelines_invalid")
        object.__setattr__(self, "_by_alg", by_alg)
        object.__setattr__(self, "_by_src", by_src)

    def for_algorithm(self, name: str) -> AlgorithmTimeline | None:
        """The timeline of ``name``, if any source dates it."""
        return self._by_alg.get(name)

    def source(self, source_id: str) -> TimelineSource:
        """A source by id (``KeyError`` for an id not cited: a bug)."""
        return self._by_src[source_id]


def parse_timelines(data: bytes | str) -> Timelines:
    """Parse the timelines document; failures are ``InputError(timelines_invalid)``."""
    reason = "timelines_invalid"
    doc = _mapping(load_yaml(data, max_bytes=MAX_TIMELINES_BYTES, max_events=MAX_TIMELINES_EVENTS,
                             max_depth=MAX_TIMELINES_DEPTH, reason=reason), "$")
    try:
        return _timelines_from(doc)
    except ProfileError as exc:
        raise ProfileError(exc.path, exc.problem, reason=reason) from None


def _long_text(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 2_000:  # noqa: PLR2004
        raise ProfileError(path, "must be a non-empty string of at most 2000 characters")
    return value.strip()


def _year_or_none(value: object, path: str) -> int | None:
    return None if value is None else _int(value, path, MIN_YEAR, MAX_YEAR)


def _timelines_from(doc: Mapping[str, object]) -> Timelines:
    _fields(doc, "$", ("schema", "sources", "algorithms"), ("milestones",))
    if doc["schema"] != TIMELINES_SCHEMA:
        raise ProfileError("$.schema", f"must be {TIMELINES_SCHEMA!r}")
    sources = []
    for sid, raw in _mapping(doc["sources"], "$.sources").items():
        p = _key_path("$.sources", sid)
        s = _mapping(raw, p)
        _fields(s, p, ("short", "title", "publisher", "date", "verification", "citation"), ())
        sources.append(TimelineSource(
            id=sid, short=_text(s["short"], f"{p}.short"),
            title=_long_text(s["title"], f"{p}.title"),
            publisher=_long_text(s["publisher"], f"{p}.publisher"),
            date=_long_text(s["date"], f"{p}.date"),
            citation=_long_text(s["citation"], f"{p}.citation"),
            verification=_enum(Verification, s["verification"], f"{p}.verification")))
    algorithms = []
    for name, raw in _mapping(doc["algorithms"], "$.algorithms").items():
        p = _key_path("$.algorithms", name)
        if name not in ALGORITHMS:
            raise ProfileError(p, "unknown algorithm")
        a = _mapping(raw, p)
        _fields(a, p, ("deprecated_after", "disallowed_after", "source", "verification"),
                ("note",))
        algorithms.append(AlgorithmTimeline(
            algorithm=name,
            deprecated_after=_year_or_none(a["deprecated_after"], f"{p}.deprecated_after"),
            disallowed_after=_year_or_none(a["disallowed_after"], f"{p}.disallowed_after"),
            source=_text(a["source"], f"{p}.source"),
            verification=_enum(Verification, a["verification"], f"{p}.verification"),
            note=_long_text(a["note"], f"{p}.note") if "note" in a else ""))
    milestones = []
    raw_ms = doc.get("milestones", [])
    if not isinstance(raw_ms, list):
        raise ProfileError("$.milestones", "must be a list")
    for i, raw in enumerate(raw_ms):
        p = f"$.milestones[{i}]"
        ms = _mapping(raw, p)
        _fields(ms, p, ("source", "scope", "year", "text", "verification"), ())
        milestones.append(Milestone(
            source=_text(ms["source"], f"{p}.source"), scope=_long_text(ms["scope"], f"{p}.scope"),
            year=_int(ms["year"], f"{p}.year", MIN_YEAR, MAX_YEAR),
            text=_long_text(ms["text"], f"{p}.text"),
            verification=_enum(Verification, ms["verification"], f"{p}.verification")))
    try:
        return Timelines(tuple(sources), tuple(algorithms), tuple(milestones))
    except InputError as exc:
        raise ProfileError("$", exc.message) from None


# --------------------------------------------------------------------------------------------
# Assessment


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
    lifetime = profile.planned_lifetime_years if planned_lifetime_years is None else _int(
        planned_lifetime_years, "lifetime", 1, MAX_LIFETIME_YEARS)
    _int(now_year, "now_year", MIN_YEAR, MAX_YEAR)
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
