"""An in-memory :class:`iotrust.core.audit.Snapshot`: the reference semantics of every query.

A test builds a small fleet out of plain rows; each method answers the way the SQL adapter
does (live credential states, revoked-and-unexpired, dormant by last contact or update time,
keys grouped by fingerprint), only with lists and dicts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from iotrust.core.audit import (
    LIVE_CREDENTIAL_STATES,
    AuditConfig,
    CaRow,
    CertificateRow,
    ConfigDocument,
    CredentialRow,
    CrlView,
    DeviceRow,
    EventLogStatus,
    KeyReuse,
    KeyUse,
    ManufacturerRow,
    ModelRow,
    RevokedRow,
    RolloutLag,
    SharedUse,
    SubjectConflict,
    WithdrawnInstall,
    ZombieRow,
)
from iotrust.core.audit_reach import PolicySet
from iotrust.core.events import ChainReport
from iotrust.core.policy import Policy

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Cred:
    serial: str
    device_id: str | None
    not_before: datetime
    not_after: datetime
    state: str = "active"
    subject: str | None = None
    issuer: str = "issuing-1"
    pem: str = ""
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Dev:
    id: str
    state: str = "active"
    model: str | None = None
    last_seen_at: datetime | None = None
    updated_at: datetime = NOW
    unsafe_admission: bool = False


@dataclass(slots=True)
class MemorySnapshot:
    now: datetime = NOW
    config: AuditConfig = field(default_factory=AuditConfig)
    cas_: list[CaRow] = field(default_factory=list)
    manufacturers_: list[ManufacturerRow] = field(default_factory=list)
    models_: list[ModelRow] = field(default_factory=list)
    policies_: dict[str, Policy] = field(default_factory=dict)
    sets: list[PolicySet] = field(default_factory=list)
    keys: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    creds: list[Cred] = field(default_factory=list)
    rotations: list[tuple[str, str, str, datetime]] = field(default_factory=list)
    clones: list[tuple[str, datetime]] = field(default_factory=list)
    crls_: dict[str, CrlView | None] = field(default_factory=dict)
    devices: list[Dev] = field(default_factory=list)
    zombies_: list[ZombieRow] = field(default_factory=list)
    log: EventLogStatus = field(default_factory=lambda: EventLogStatus(
        ChainReport(0, None, ()), anchored=True))
    suppressions: dict[str, set[str]] = field(default_factory=dict)
    #: (rollout id, release id, rollout state, device id, device status, updated at)
    rollout_devices: list[tuple[str, str, str, str, str, datetime]] = field(default_factory=list)
    installed: dict[str, str] = field(default_factory=dict)  # device id -> release id
    configs: list[ConfigDocument] = field(default_factory=list)

    def suppressed(self, check_id: str) -> frozenset[str]:
        return frozenset(self.suppressions.get(check_id, ()))

    def cas(self) -> Sequence[CaRow]:
        return self.cas_

    def manufacturers(self) -> Sequence[ManufacturerRow]:
        return self.manufacturers_

    def models(self) -> Sequence[ModelRow]:
        return self.models_

    def policies(self) -> Mapping[str, Policy]:
        return self.policies_

    def policy_sets(self) -> Sequence[PolicySet]:
        return self.sets

    def key_reuse(self) -> list[KeyReuse]:
        groups: dict[str, list[KeyUse]] = {}
        for spki, kind, device, ref in self.keys:
            groups.setdefault(spki, []).append(KeyUse(kind, device, ref))
        out = []
        for spki, uses in sorted(groups.items()):
            devices = {u.device_id for u in uses}
            kinds = {u.kind.removeprefix("seen:") for u in uses}
            if len(devices) > 1 or len(kinds) > 1:
                out.append(KeyReuse(spki, tuple(uses)))
        return out

    def shared_uses(self, window: timedelta) -> list[SharedUse]:
        out = []
        by_serial: dict[str, list[tuple[str, str, str, datetime]]] = {}
        for row in sorted(self.rotations, key=lambda r: (r[0], r[3])):
            by_serial.setdefault(row[0], []).append(row)
        for serial, seq in by_serial.items():
            close = [(a, b) for a, b in itertools.pairwise(seq)
                     if a[2] != b[2] and b[3] - a[3] <= window]
            if close:
                sources = sorted({x[2] for pair in close for x in pair})
                out.append(SharedUse("rotation_sources", seq[0][1], serial, tuple(sources),
                                     len(close) + 1, close[0][0][3], close[-1][1][3]))
        by_device: dict[str, list[datetime]] = {}
        for device, at in self.clones:
            by_device.setdefault(device, []).append(at)
        out += [SharedUse("clone_suspected", d, None, (), len(ts), min(ts), max(ts))
                for d, ts in by_device.items()]
        return out

    def _row(self, c: Cred) -> CredentialRow:
        return CredentialRow(c.serial, c.device_id, c.subject or c.device_id or "svc@x", c.state,
                             c.issuer, c.not_before, c.not_after)

    def _live(self) -> list[Cred]:
        return [c for c in self.creds if c.state in LIVE_CREDENTIAL_STATES]

    def expiring_credentials(self, before: datetime) -> Iterator[CredentialRow]:
        return iter([self._row(c) for c in self._live() if c.not_after < before])

    def old_credentials(self, issued_before: datetime) -> Iterator[CredentialRow]:
        return iter([self._row(c) for c in self._live() if c.not_before < issued_before])

    def live_certificates(self) -> Iterator[CertificateRow]:
        return iter([CertificateRow(c.serial, c.device_id, c.pem) for c in self._live()])

    def revoked_unexpired(self) -> Iterator[RevokedRow]:
        return iter([RevokedRow(c.serial, c.device_id, c.issuer, c.revoked_at or self.now,
                                c.not_after)
                     for c in self.creds if c.state == "revoked" and c.not_after > self.now])

    def crls(self) -> Mapping[str, CrlView | None]:
        return self.crls_

    def subject_conflicts(self) -> list[SubjectConflict]:
        live = self._live()
        wrong = {c.subject for c in live
                 if (c.device_id is not None and c.subject not in (None, c.device_id))
                 or (c.device_id is None and c.subject and "@" not in c.subject)}
        out = []
        for subject in sorted(s for s in wrong if s):
            rows = [c for c in live if subject in (c.subject, c.device_id)]
            out.append(SubjectConflict(subject, tuple(c.device_id for c in rows),
                                       tuple(c.serial for c in rows)))
        return out

    def unsafe_admissions(self) -> Iterator[DeviceRow]:
        return iter([DeviceRow(d.id, d.state, d.model, d.last_seen_at) for d in self.devices
                     if d.unsafe_admission and d.state != "retired"])

    def zombies(self) -> list[ZombieRow]:
        return self.zombies_

    def dormant_devices(self, before: datetime) -> Iterator[DeviceRow]:
        return iter([DeviceRow(d.id, d.state, d.model, d.last_seen_at) for d in self.devices
                     if d.state in ("active", "quarantined")
                     and ((d.last_seen_at or d.updated_at) < before)])

    def event_log(self) -> EventLogStatus:
        return self.log

    def rollout_lags(self, stuck_before: datetime) -> Iterator[RolloutLag]:
        out = []
        for rollout, release, state, device, status, at in self.rollout_devices:
            stuck = (state in ("active", "paused") and at < stuck_before
                     and status in ("pending", "downloading", "installed"))
            failed = state != "aborted" and status in ("rolled_back", "rejected")
            if stuck or failed:
                out.append(RolloutLag(rollout, release, state, device, status, at))
        return iter(out)

    def withdrawn_installs(self) -> Iterator[WithdrawnInstall]:
        aborted = {rel: ro for ro, rel, st, *_ in self.rollout_devices if st == "aborted"}
        live = {rel for _, rel, st, *_ in self.rollout_devices if st != "aborted"}
        return iter([WithdrawnInstall(d, rel, aborted[rel]) for d, rel in self.installed.items()
                     if rel in aborted and rel not in live])

    def config_documents(self) -> list[ConfigDocument]:
        return self.configs
