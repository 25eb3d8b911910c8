"""Hardware profiles: what a device model can carry, and what trust it can sustain for its life.

This package holds the versioned profile schema (``iotrust.hardware/v1``) as immutable values
(:mod:`.schema` for the vocabulary and limits, :mod:`.profile` for the profile itself), the one
parse boundary for profile and timeline YAML (:mod:`._parse`: bounded size, event count and
depth; no anchors or aliases; no duplicate keys; safe constructors only), the public algorithm
transition timelines as values (:mod:`.timelines`), and the pure assessment (:mod:`.assessment`):
one :class:`Verdict` (feasible, degraded, impossible) per security mechanism with its reason and
what would change it, plus the :class:`ModelDefaults` a device model gets from it (credential
lifetime, sensitive topics). Import from here (``from iotrust.core import hardware as hw``); the
submodules are the layout, this namespace is the API.

It does not read files, know today's date or format output: callers pass YAML bytes, the
timelines and ``now_year``. ``services/hardware.py`` reads files and registers models; the CLI
prints. The thresholds are documented rules of thumb (docs/hardware-profiles.md), not
measurements of any one chip.
"""

from __future__ import annotations

from iotrust.core.hardware._parse import (
    load_yaml,
)
from iotrust.core.hardware.assessment import (
    CREDENTIAL_LIFETIME_DAYS,
    PQ_FLASH_HEADROOM_KB,
    PQ_RAM_KB,
    SOFT_ECC_MIN_FLASH_KB,
    SOFT_ECC_MIN_RAM_KB,
    TLS_COMFORT_RAM_KB,
    TLS_MIN_RAM_KB,
    Assessment,
    Level,
    Mechanism,
    ModelDefaults,
    Verdict,
    assess,
    model_defaults,
)
from iotrust.core.hardware.profile import (
    HardwareProfile,
    SecureBoot,
    parse_lifetime_years,
    parse_profile,
)
from iotrust.core.hardware.schema import (
    ALGORITHMS,
    ASSESSMENT_SCHEMA,
    BASELINE_ALGORITHM,
    CONNECTIVITY,
    IP_CONNECTIVITY,
    MAX_KB,
    MAX_LIFETIME_YEARS,
    MAX_LIST,
    MAX_PROFILE_BYTES,
    MAX_PROFILE_DEPTH,
    MAX_PROFILE_EVENTS,
    MAX_TEXT,
    MAX_TIMELINES_BYTES,
    MAX_TIMELINES_DEPTH,
    MAX_TIMELINES_EVENTS,
    MAX_YEAR,
    MIN_YEAR,
    PROTECTED_STORAGE,
    SCHEMA,
    STORAGE_NAMES,
    TIMELINES_SCHEMA,
    Algorithm,
    AlgorithmKind,
    DeviceClass,
    HardwareKeyStorage,
    ProfileError,
    RngKind,
    RollbackCounter,
    RootOfTrust,
)
from iotrust.core.hardware.timelines import (
    AlgorithmTimeline,
    Milestone,
    Timelines,
    TimelineSource,
    Verification,
    parse_timelines,
)

__all__ = [
    "ALGORITHMS",
    "ASSESSMENT_SCHEMA",
    "BASELINE_ALGORITHM",
    "CONNECTIVITY",
    "CREDENTIAL_LIFETIME_DAYS",
    "IP_CONNECTIVITY",
    "MAX_KB",
    "MAX_LIFETIME_YEARS",
    "MAX_LIST",
    "MAX_PROFILE_BYTES",
    "MAX_PROFILE_DEPTH",
    "MAX_PROFILE_EVENTS",
    "MAX_TEXT",
    "MAX_TIMELINES_BYTES",
    "MAX_TIMELINES_DEPTH",
    "MAX_TIMELINES_EVENTS",
    "MAX_YEAR",
    "MIN_YEAR",
    "PQ_FLASH_HEADROOM_KB",
    "PQ_RAM_KB",
    "PROTECTED_STORAGE",
    "SCHEMA",
    "SOFT_ECC_MIN_FLASH_KB",
    "SOFT_ECC_MIN_RAM_KB",
    "STORAGE_NAMES",
    "TIMELINES_SCHEMA",
    "TLS_COMFORT_RAM_KB",
    "TLS_MIN_RAM_KB",
    "Algorithm",
    "AlgorithmKind",
    "AlgorithmTimeline",
    "Assessment",
    "DeviceClass",
    "HardwareKeyStorage",
    "HardwareProfile",
    "Level",
    "Mechanism",
    "Milestone",
    "ModelDefaults",
    "ProfileError",
    "RngKind",
    "RollbackCounter",
    "RootOfTrust",
    "SecureBoot",
    "TimelineSource",
    "Timelines",
    "Verdict",
    "Verification",
    "assess",
    "load_yaml",
    "model_defaults",
    "parse_lifetime_years",
    "parse_profile",
    "parse_timelines",
]
