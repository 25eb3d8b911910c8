"""The fleet posture audit (DESIGN.md §10): findings, the snapshot they read, and the checks.

A :class:`Check` has an ``id``, a ``title``, a default ``severity`` and ``run(snapshot)``, which
yields :class:`Finding` values. Checks read the registry only through :class:`Snapshot`, a
read-only interface of streaming iterators and small aggregates (the SQL adapter answers
duplicates with ``GROUP BY … HAVING`` and hands over one row per *policy set*, never one per
device), so every check is a pure function of its snapshot and is tested without a database.

The checks cover every AWS IoT Device Defender audit check that applies to a self-hosted fleet
(device credential shared, device/CA key quality, overly permissive and misreadable policies,
CA and device credential expiring, credential age, revoked credential still trusted,
conflicting client ids, logging disabled / event log broken) and the ones this project exists
for: keys reused across devices or roles, unsafe manufacturer trust, weak key storage for the
permissions held, zombies, dormant devices, hardware that cannot sustain its planned lifetime,
and the blast radius of each policy set (:mod:`iotrust.core.audit_reach`). The checks themselves
are :mod:`iotrust.core.audit_checks`; key quality is :mod:`iotrust.core.audit_keys` (ROCA tested;
Debian CVE-2008-0166 honestly reported untested).

Fleet-scale checks emit one aggregated finding whose ``affected`` lists at most
``config.max_affected`` ids (``evidence["count"]`` has the total); per-subject checks (a CA, a
policy, a model, a key) emit one finding per subject. Suppressions are per (check id, target):
aggregated checks skip suppressed targets while counting (:meth:`Snapshot.suppressed`), and
:func:`apply_suppressions` drops suppressed targets from every finding (a finding left with no
target is suppressed as a whole; target ``*`` suppresses the check).

This module does no I/O and reads no clock: ``snapshot.now`` is the audit's time. It does not
act on findings (mitigations are :mod:`iotrust.services.audit`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, NamedTuple, Protocol

from iotrust.core import hardware as hw
from iotrust.core.audit_keys import Severity
from iotrust.core.audit_reach import PolicySet
from iotrust.core.events import ChainReport
from iotrust.core.policy import Policy
from iotrust.errors import InputError

__all__ = [
    "SEVERITY_RANK",
    "AuditConfig",
    "CaRow",
    "Check",
    "CheckResult",
    "ConfigDocument",
    "CredentialRow",
    "CrlView",
    "DeviceRow",
    "EventLogStatus",
    "Finding",
    "KeyReuse",
    "KeyUse",
    "ManufacturerRow",
    "ModelRow",
    "PolicySet",
    "RevokedRow",
    "RolloutLag",
    "Severity",
    "SharedUse",
    "Snapshot",
    "SubjectConflict",
    "WithdrawnInstall",
    "ZombieRow",
    "apply_suppressions",
    "run_check",
]

#: Order of severities, worst first.
SEVERITY_RANK: Final[Mapping[Severity, int]] = MappingProxyType(
    {s: i for i, s in enumerate(Severity)})
MAX_AFFECTED: Final = 10_000
_CHECK_ID_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
LIVE_CREDENTIAL_STATES: Final = ("issued", "active", "superseded")
WEAK_KEY_STORAGE: Final = frozenset({"none", "file", "unknown"})


# --------------------------------------------------------------------------------------------
# Findings


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: which check, how bad, what it affects, the evidence and what to do."""

    check_id: str
    severity: Severity
    title: str
    affected: tuple[str, ...]
    evidence: Mapping[str, Any]
    suggested_action: str

    def __post_init__(self) -> None:
        if not self.check_id or set(self.check_id) - _CHECK_ID_CHARS:
            raise InputError("a check id is lowercase letters, digits and '-'",
                             reason="invalid_check_id")
        object.__setattr__(self, "severity", Severity(self.severity))
        if isinstance(self.affected, str):
            raise TypeError("affected is a sequence of ids")
        object.__setattr__(self, "affected", tuple(self.affected)[:MAX_AFFECTED])
        object.__setattr__(self, "evidence", MappingProxyType(dict(self.evidence)))

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"check_id": self.check_id, "severity": self.severity.value, "title": self.title,
                "affected": list(self.affected), "evidence": dict(self.evidence),
                "suggested_action": self.suggested_action}


def apply_suppressions(finding: Finding, suppressed: frozenset[str]) -> tuple[Finding | None, int]:
    """``finding`` without its suppressed targets (``None`` if nothing is left), and how many."""
    if not suppressed:
        return finding, 0
    if "*" in suppressed:
        return None, max(1, len(finding.affected))
    kept = tuple(a for a in finding.affected if a not in suppressed)
    dropped = len(finding.affected) - len(kept)
    if dropped == 0:
        return finding, 0
    if not kept:
        return None, dropped
    evidence = dict(finding.evidence)
    evidence["suppressed"] = int(evidence.get("suppressed", 0)) + dropped
    if isinstance(evidence.get("count"), int):
        evidence["count"] = max(0, evidence["count"] - dropped)
    return Finding(finding.check_id, finding.severity, finding.title, kept, evidence,
                   finding.suggested_action), dropped


# --------------------------------------------------------------------------------------------
# What the snapshot hands the checks


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """Thresholds of the checks (defaults follow AWS Device Defender where it has one)."""

    ca_expiry_days: int = 90
    credential_expiry_days: int = 7
    credential_expiry_fraction: float = 0.1
    credential_max_age_days: int = 365
    dormant_days: int = 30
    shared_use_window_s: int = 3600
    recent_zombie_days: int = 7
    rollout_stuck_days: int = 3
    max_affected: int = 100
    #: An incremental event-log verification falls back to a full one when the last full one
    #: is older than this (see :mod:`iotrust.core.audit_eventlog`).
    event_log_full_days: int = 7

    def __post_init__(self) -> None:
        for name in ("ca_expiry_days", "credential_expiry_days", "credential_max_age_days",
                     "dormant_days", "shared_use_window_s", "recent_zombie_days",
                     "rollout_stuck_days", "max_affected", "event_log_full_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10**7:
                raise InputError(f"{name} must be a positive integer", reason="invalid_config")
        if not 0 < self.credential_expiry_fraction < 1:
            raise InputError("credential_expiry_fraction must be in (0, 1)",
                             reason="invalid_config")


class CaRow(NamedTuple):
    """A CA of the trust domain."""

    id: str
    role: str
    state: str
    not_after: datetime
    certificate_pem: str


class ManufacturerRow(NamedTuple):
    """A registered manufacturer and how many non-retired devices it has."""

    name: str
    unsafe_manufacturer_trust: bool
    revoked: bool
    devices: int


class ModelRow(NamedTuple):
    """A device model, its device count and its hardware assessment (``None``: no profile)."""

    name: str
    manufacturer: str
    devices: int
    assessment: hw.Assessment | None
    profile_error: str | None = None


class KeyUse(NamedTuple):
    """Where one public key appears.

    ``kind``: ``factory``, ``credential`` (a certificate) or ``seen:<kind>`` (seen-keys table).
    """

    kind: str
    device_id: str | None
    ref: str | None  # credential serial, or None


class KeyReuse(NamedTuple):
    """A public key appearing in more than one place that disagree (devices or roles)."""

    spki_sha256: str
    uses: tuple[KeyUse, ...]


class CredentialRow(NamedTuple):
    """An operational credential (without its certificate)."""

    serial: str
    device_id: str | None
    subject: str
    state: str
    issuer_ca_id: str
    not_before: datetime
    not_after: datetime


class CertificateRow(NamedTuple):
    """A live credential's certificate."""

    serial: str
    device_id: str | None
    certificate_pem: str


class RevokedRow(NamedTuple):
    """A revoked credential that has not expired yet (it must be in its CA's CRL)."""

    serial: str
    device_id: str | None
    issuer_ca_id: str
    revoked_at: datetime
    not_after: datetime


class CrlView(NamedTuple):
    """The published CRL of one issuing CA, as read from disk."""

    ca_id: str
    this_update: datetime
    next_update: datetime | None
    serials: frozenset[int]
    signature_valid: bool


class SubjectConflict(NamedTuple):
    """A certificate subject (the broker username) that does not map to exactly one device."""

    subject: str
    device_ids: tuple[str | None, ...]
    serials: tuple[str, ...]


class SharedUse(NamedTuple):
    """Signs of one credential or device identity used from two places at once."""

    kind: str  # rotation_sources | clone_suspected
    device_id: str | None
    credential_serial: str | None
    sources: tuple[str, ...]
    times: int
    first_at: datetime
    last_at: datetime


class DeviceRow(NamedTuple):
    """A device as the fleet-scale checks see it."""

    id: str
    state: str
    model: str | None
    last_seen_at: datetime | None


class ZombieRow(NamedTuple):
    """Contacts by one dead identity, over every channel."""

    identity: str
    device_id: str | None
    channels: tuple[str, ...]
    contacts: int
    first_seen_at: datetime
    last_seen_at: datetime
    last_reason: str


class RolloutLag(NamedTuple):
    """A device of a live (or completed) rollout that has not taken the release."""

    rollout_id: str
    release_id: str
    rollout_state: str
    device_id: str
    status: str  # pending | downloading | installed | rolled_back | rejected
    since: datetime


class WithdrawnInstall(NamedTuple):
    """A non-retired device running a release whose rollout was aborted (and not re-offered)."""

    device_id: str
    release_id: str
    rollout_id: str


class ConfigDocument(NamedTuple):
    """The current (highest-version) configuration document of one scope.

    ``scope`` is a device id (a device-specific document) or ``groups/<g>`` (shared by design).
    ``target_sha256`` is the hash the signed target metadata gives for the published bytes
    (``{"scope", "version", "settings"}``: they name their scope, so they always differ between
    scopes); ``settings_sha256`` is the SHA-256 of the settings alone in canonical form (sorted
    keys, no whitespace), what two copied documents have in common. ``None`` when the document
    could not be read or does not match its signed hash (``problem`` says why).
    ``secret_fields`` lists the setting paths whose names look like secrets (never the values).
    """

    path: str
    scope: str
    version: int
    target_sha256: str
    settings_sha256: str | None
    settings_count: int = 0
    secret_fields: tuple[str, ...] = ()
    problem: str | None = None


class EventLogStatus(NamedTuple):
    """The chain verification of the event log and whether an exported anchor was checked.

    ``mode`` is ``full`` (every record from 1) or ``incremental`` (from ``since_seq``, the last
    verified checkpoint, whose record was re-hashed and compared with the checkpoint).
    ``full_at`` is when the log was last verified in full (``None``: unknown).
    """

    report: ChainReport
    anchored: bool
    mode: str = "full"
    since_seq: int | None = None
    full_at: datetime | None = None


class Snapshot(Protocol):
    """Read-only access to the registry for the checks (see the module docstring)."""

    @property
    def now(self) -> datetime:
        """The audit's time."""
        ...

    @property
    def config(self) -> AuditConfig:
        """Thresholds."""
        ...

    def suppressed(self, check_id: str) -> frozenset[str]:
        """Targets suppressed for ``check_id`` (``*``: the whole check)."""
        ...

    def cas(self) -> Sequence[CaRow]:
        """Every CA."""
        ...

    def manufacturers(self) -> Sequence[ManufacturerRow]:
        """Every manufacturer."""
        ...

    def models(self) -> Sequence[ModelRow]:
        """Every device model."""
        ...

    def policies(self) -> Mapping[str, Policy]:
        """Every stored policy by name."""
        ...

    def policy_sets(self) -> Sequence[PolicySet]:
        """Devices grouped by (stored policies, state, key storage, model) with counts."""
        ...

    def key_reuse(self) -> Iterable[KeyReuse]:
        """Public keys recorded in places that disagree (devices or roles)."""
        ...

    def shared_uses(self, window: timedelta) -> Iterable[SharedUse]:
        """Credentials used from two sources within ``window``; clone-suspected refusals."""
        ...

    def expiring_credentials(self, before: datetime) -> Iterable[CredentialRow]:
        """Live credentials (issued/active/superseded) with ``not_after`` before ``before``."""
        ...

    def old_credentials(self, issued_before: datetime) -> Iterable[CredentialRow]:
        """Live credentials with ``not_before`` before ``issued_before``."""
        ...

    def live_certificates(self) -> Iterable[CertificateRow]:
        """Certificates of every live credential (streamed)."""
        ...

    def revoked_unexpired(self) -> Iterable[RevokedRow]:
        """Revoked credentials whose ``not_after`` is after ``now``."""
        ...

    def crls(self) -> Mapping[str, CrlView | None]:
        """Published CRL per non-retired issuing CA (``None``: none published)."""
        ...

    def subject_conflicts(self) -> Iterable[SubjectConflict]:
        """Live credential subjects held by several devices, or not their device's id."""
        ...

    def unsafe_admissions(self) -> Iterable[DeviceRow]:
        """Non-retired devices admitted under unsafe manufacturer trust."""
        ...

    def zombies(self) -> Iterable[ZombieRow]:
        """Dead identities that made contact, per identity."""
        ...

    def dormant_devices(self, before: datetime) -> Iterable[DeviceRow]:
        """Active/quarantined devices not seen since ``before``."""
        ...

    def event_log(self) -> EventLogStatus:
        """The event log's chain verification."""
        ...

    def rollout_lags(self, stuck_before: datetime) -> Iterable[RolloutLag]:
        """Stuck or failed rollout devices.

        Stuck: released by an active/paused rollout, short of ``committed`` and unchanged since
        before ``stuck_before``. Failed: rolled back or rejected a non-aborted rollout.
        """
        ...

    def withdrawn_installs(self) -> Iterable[WithdrawnInstall]:
        """Devices running a release withdrawn by an aborted rollout."""
        ...

    def config_documents(self) -> Iterable[ConfigDocument]:
        """The current configuration document of every scope (devices and groups)."""
        ...


class Check(Protocol):
    """One audit check: an id, a title, its default severity and ``run``."""

    id: str
    title: str
    severity: Severity

    def run(self, snapshot: Snapshot) -> Iterable[Finding]:
        """Findings for ``snapshot`` (nothing when the fleet passes)."""
        ...


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The findings of one check after suppressions."""

    check_id: str
    findings: tuple[Finding, ...]
    suppressed: int


def run_check(check: Check, snapshot: Snapshot) -> CheckResult:
    """Run one check and apply the snapshot's suppressions to its findings."""
    suppressed = snapshot.suppressed(check.id)
    kept: list[Finding] = []
    dropped = 0
    for finding in check.run(snapshot):
        result, n = apply_suppressions(finding, suppressed)
        dropped += n
        if result is not None:
            kept.append(result)
    kept.sort(key=lambda f: (SEVERITY_RANK[f.severity], f.title))
    return CheckResult(check.id, tuple(kept), dropped)
