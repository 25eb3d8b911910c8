"""The posture audit as a use case: run the checks over the registry, suppress, mitigate.

:func:`run_audit` opens one read-only transaction, builds a :class:`RegistrySnapshot` (the
:class:`iotrust.core.audit.Snapshot` of the registry: SQL aggregates and streamed rows from
:mod:`iotrust.adapters.sql.audit`, the published CRL files, the exported event-log anchor, the
stored hardware profiles assessed by :mod:`iotrust.core.hardware`, the current configuration
documents of the TUF image repository), runs every check (or the ones asked for), times each,
and records one ``audit.completed`` event with the counts (the HTML report plots those events
over time) and, when the event log was found intact, the checkpoint the next audit verifies
from (:mod:`iotrust.core.audit_eventlog`). Run it from a scheduler (cron, a systemd timer) as
``iotrust audit --json``; nothing here keeps a process alive.

:func:`suppress` records who accepted which finding target and why (``audit.suppressed``);
:func:`unsuppress` lifts it (``audit.unsuppressed``). :func:`mitigate` is always an explicit
operator command, recorded as ``audit.mitigated`` in the same transaction as (or right after)
its effect, and reversible: ``quarantine`` (through :mod:`iotrust.services.broker`, undone by a
release), ``rotate`` (an early-renewal request, as ``iotrust rotate`` makes), ``notify`` (an
event only, for whoever watches the log). Nothing is ever done automatically.

This module does not print, and does not render HTML (:mod:`iotrust.services.audit_report`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from iotrust.adapters.sql.audit import AuditTx, SuppressionRow
from iotrust.adapters.sql.store import Database, Tx
from iotrust.core import audit as au
from iotrust.core import audit_config, pki
from iotrust.core import audit_eventlog as ael
from iotrust.core import hardware as hw
from iotrust.core.audit_checks import ALL_CHECKS, check_by_id
from iotrust.core.audit_reach import PolicySet
from iotrust.core.events import ChainReport, EventHead, parse_anchor, verify_chain
from iotrust.core.ids import DEVICE_ID_RE
from iotrust.core.policy import Policy
from iotrust.core.records import EventRow
from iotrust.errors import InputError, IotrustError
from iotrust.ports import BrokerControl, Clock
from iotrust.services import eventlog
from iotrust.services import hardware as hw_svc
from iotrust.services.settings import Settings

__all__ = [
    "AUDIT_COMPLETED",
    "AUDIT_MITIGATED",
    "AUDIT_SUPPRESSED",
    "AUDIT_UNSUPPRESSED",
    "MITIGATIONS",
    "AuditReport",
    "CheckRun",
    "Mitigation",
    "RegistrySnapshot",
    "list_suppressions",
    "mitigate",
    "open_snapshot",
    "run_audit",
    "suppress",
    "unsuppress",
]

AUDIT_COMPLETED: Final = "audit.completed"
AUDIT_SUPPRESSED: Final = "audit.suppressed"
AUDIT_UNSUPPRESSED: Final = "audit.unsuppressed"
AUDIT_MITIGATED: Final = "audit.mitigated"
#: What :func:`mitigate` can do.
MITIGATIONS: Final = ("quarantine", "rotate", "notify")
_TARGET: Final = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._:@*-]{0,199}$")
_MAX_REASON: Final = 500
#: The check whose verified head becomes the next audit's checkpoint.
EVENT_LOG_CHECK: Final = "event-log-integrity"


# --------------------------------------------------------------------------------------------
# The registry as a snapshot


class RegistrySnapshot:
    """:class:`iotrust.core.audit.Snapshot` over one open read-only transaction.

    Small results are computed once and cached; long ones are streamed on every call.
    """

    def __init__(self, tx: Tx, settings: Settings, *, now: datetime, config: au.AuditConfig,
                 suppressions: Sequence[SuppressionRow],
                 timelines: hw.Timelines | None = None, full_event_log: bool = False) -> None:
        self._full_event_log = full_event_log
        self._q = AuditTx(tx)
        self._tx = tx
        self._settings = settings
        self._now = now
        self._config = config
        self._timelines = timelines
        self._suppressed: dict[str, set[str]] = {}
        for row in suppressions:
            self._suppressed.setdefault(row.check_id, set()).add(row.target)
        self._cache: dict[str, Any] = {}

    @property
    def now(self) -> datetime:
        """The audit's time."""
        return self._now

    @property
    def config(self) -> au.AuditConfig:
        """Thresholds."""
        return self._config

    @property
    def queries(self) -> AuditTx:
        """The underlying queries (for the report's extra figures)."""
        return self._q

    def _once(self, key: str, make: Any) -> Any:  # noqa: ANN401 - cached values of any row type
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def suppressed(self, check_id: str) -> frozenset[str]:
        """Suppressed targets of ``check_id``."""
        return frozenset(self._suppressed.get(check_id, ()))

    def cas(self) -> Sequence[au.CaRow]:
        """Every CA."""
        return self._once("cas", self._q.cas)  # type: ignore[no-any-return]

    def manufacturers(self) -> Sequence[au.ManufacturerRow]:
        """Every manufacturer with its device count."""
        return self._once("manufacturers", lambda: [  # type: ignore[no-any-return]
            au.ManufacturerRow(*row) for row in self._q.manufacturers()])

    def models(self) -> Sequence[au.ModelRow]:
        """Every model, with its stored profile assessed now."""
        return self._once("models", self._models)  # type: ignore[no-any-return]

    def _models(self) -> list[au.ModelRow]:
        out = []
        timelines = self._timelines or hw_svc.load_timelines()
        for m in self._q.models():
            if m.hardware_profile is None:
                out.append(au.ModelRow(m.name, m.manufacturer, m.devices, None))
                continue
            try:
                assessment = hw.assess(hw.parse_profile(m.hardware_profile.encode("utf-8")),
                                       timelines=timelines, now_year=self._now.year)
            except IotrustError as exc:
                out.append(au.ModelRow(m.name, m.manufacturer, m.devices, None,
                                       profile_error=str(exc)[:300]))
                continue
            out.append(au.ModelRow(m.name, m.manufacturer, m.devices, assessment))
        return out

    def policies(self) -> Mapping[str, Policy]:
        """Every stored policy."""
        return self._once("policies", lambda: {  # type: ignore[no-any-return]
            r.name: r.policy for r in self._tx.list_policies()})

    def policy_sets(self) -> Sequence[PolicySet]:
        """Devices grouped into policy sets."""
        return self._once("policy_sets", lambda: self._q.policy_sets(  # type: ignore[no-any-return]
            self._config.max_affected))

    def key_reuse(self) -> Sequence[au.KeyReuse]:
        """Keys recorded in places that disagree."""
        return self._once("key_reuse", self._q.key_reuse)  # type: ignore[no-any-return]

    def shared_uses(self, window: timedelta) -> Sequence[au.SharedUse]:
        """Credentials or identities used from two places."""
        return self._q.shared_uses(window)

    def expiring_credentials(self, before: datetime) -> Iterator[au.CredentialRow]:
        """Live credentials ending before ``before``."""
        return self._q.expiring_credentials(before)

    def old_credentials(self, issued_before: datetime) -> Iterator[au.CredentialRow]:
        """Live credentials older than ``issued_before``."""
        return self._q.old_credentials(issued_before)

    def _certificate_scan(self) -> tuple[list[au.CertificateRow], list[str]]:
        return self._once("certificates", self._q.certificate_scan)  # type: ignore[no-any-return]

    def live_certificates(self) -> Iterator[au.CertificateRow]:
        """Live certificates not certainly P-256 (shares one scan with the subjects)."""
        return iter(self._certificate_scan()[0])

    def revoked_unexpired(self) -> Iterator[au.RevokedRow]:
        """Revoked, unexpired credentials."""
        return self._q.revoked_unexpired(self._now)

    def crls(self) -> Mapping[str, au.CrlView | None]:
        """The published CRL of every non-retired issuing CA, read from the data folder."""
        return self._once("crls", self._crls)  # type: ignore[no-any-return]

    def _crls(self) -> dict[str, au.CrlView | None]:
        out: dict[str, au.CrlView | None] = {}
        for ca in self.cas():
            if ca.role != "issuing" or ca.state == "retired":
                continue
            path = self._settings.crl_dir / f"{ca.id}.crl.pem"
            out[ca.id] = _read_crl(path, ca)
        return out

    def subject_conflicts(self) -> Sequence[au.SubjectConflict]:
        """Conflicting certificate subjects."""
        return self._q.subject_conflicts(self._certificate_scan()[1])

    def _device_scan(self, before: datetime) -> tuple[list[au.DeviceRow], list[au.DeviceRow]]:
        key = f"devices:{before.isoformat()}"
        return self._once(key, lambda: self._q.device_scan(before))  # type: ignore[no-any-return]

    def _dormant_before(self) -> datetime:
        return self._now - timedelta(days=self._config.dormant_days)

    def unsafe_admissions(self) -> Iterator[au.DeviceRow]:
        """Devices admitted under unsafe trust (shares one scan with the dormant devices)."""
        return iter(self._device_scan(self._dormant_before())[1])

    def zombies(self) -> Sequence[au.ZombieRow]:
        """Zombie contacts per identity."""
        return self._q.zombies()

    def dormant_devices(self, before: datetime) -> Iterator[au.DeviceRow]:
        """Devices not seen since ``before``."""
        return iter(self._device_scan(before)[0])

    def event_log(self) -> au.EventLogStatus:
        """The chain verified (against the exported anchor when there is one)."""
        return self._once("event_log", self._event_log)  # type: ignore[no-any-return]

    def _event_log(self) -> au.EventLogStatus:
        """Incremental from the last checkpoint when one is trusted and a full run is recent.

        See :mod:`iotrust.core.audit_eventlog`; anything unexpected falls back to a full run.
        """
        anchor = self._anchor()
        checkpoint = self.event_log_checkpoint()
        full_due = timedelta(days=self._config.event_log_full_days)
        if not self._full_event_log and checkpoint is not None and \
                checkpoint.full_at is not None and self._now - checkpoint.full_at < full_due:
            head = checkpoint.head
            anchor_row = (self._q.event_at(anchor.seq)
                          if anchor is not None and anchor.seq < head.seq else None)
            report = ael.verify_since(head, self._q.stream_events(after_seq=head.seq - 1),
                                      anchor=anchor, anchor_row=anchor_row)
            if report is not None:
                return au.EventLogStatus(report, anchor is not None, mode="incremental",
                                         since_seq=head.seq, full_at=checkpoint.full_at)
        return au.EventLogStatus(self._verify_full(anchor, checkpoint), anchor is not None,
                                 mode="full", full_at=self._now)

    def _anchor(self) -> EventHead | None:
        """The exported head (``None``: none, or unreadable)."""
        path = self._settings.anchor_file
        if not path.exists():
            return None
        try:
            return parse_anchor(path.read_text(encoding="ascii")[:200])
        except (InputError, UnicodeDecodeError, OSError):
            return None

    def _verify_full(self, anchor: EventHead | None,
                     checkpoint: ael.Checkpoint | None) -> ChainReport:
        """Every record from 1: a linear pass, and the classifying verifier if it fails."""
        at_checkpoint: list[EventRow] = []

        def rows() -> Iterator[EventRow]:
            for row in self._q.stream_events():
                if checkpoint is not None and row.seq == checkpoint.head.seq:
                    at_checkpoint.append(row)
                yield row

        report = ael.verify_since(None, rows(), anchor=anchor)  # the intact case, linear
        if report is None:  # something is off: the full verifier classifies every break
            at_checkpoint.clear()
            report = verify_chain(rows(), anchor=anchor)
        if checkpoint is not None:
            lost = ael.checkpoint_break(checkpoint.head,
                                        at_checkpoint[0] if at_checkpoint else None)
            if lost is not None:
                report = ael.with_break(report, lost)
        return report

    def event_log_checkpoint(self) -> ael.Checkpoint | None:
        """The newest trusted checkpoint an ``audit.completed`` event carries, if any."""
        for row in self._q.events_carrying(AUDIT_COMPLETED, f'"{ael.CHECKPOINT_KEY}"', 5):
            found = ael.checkpoint_from(row)
            if found is not None:
                return found
        return None

    def rollout_lags(self, stuck_before: datetime) -> Iterator[au.RolloutLag]:
        """Stuck or failed rollout devices."""
        return self._q.rollout_lags(stuck_before)

    def withdrawn_installs(self) -> Iterator[au.WithdrawnInstall]:
        """Devices running a withdrawn release."""
        return self._q.withdrawn_installs()

    def config_documents(self) -> Sequence[au.ConfigDocument]:
        """The current configuration document of every scope, read from the image repository."""
        return self._once("config", lambda: _config_documents(  # type: ignore[no-any-return]
            self._settings))

    def device_states(self) -> dict[str, int]:
        """Devices per lifecycle state."""
        return self._once("device_states", self._q.device_states)  # type: ignore[no-any-return]


def _config_documents(settings: Settings) -> list[au.ConfigDocument]:
    """The current document of each configuration scope (nothing if updates are not set up).

    The signed ``config`` role metadata gives each target's scope, version and SHA-256; only the
    current version of each scope is read from disk (at most 64 KiB each) and checked against
    its signed hash by :func:`iotrust.core.audit_config.describe`. A repository that cannot be
    read gives one document with a ``problem`` under the scope ``config-role``.
    """
    from iotrust.adapters.tuf.repository import CONFIG_ROLE, HASH_ALGORITHM, ImageRepository  # noqa: PLC0415
    from iotrust.services.updates import UpdatePaths  # noqa: PLC0415 - python-tuf: only here

    paths = UpdatePaths.of(settings)
    if not paths.keyring.is_file():
        return []

    def no_signers(role: str) -> list[Any]:
        raise RuntimeError(f"the audit signs nothing ({role})")

    image = ImageRepository(paths.image, no_signers)
    try:
        listed = image.targets_of(CONFIG_ROLE)
    except (IotrustError, OSError) as exc:
        return [au.ConfigDocument("config", "config-role", 0, "", None,
                                  problem=f"the configuration role cannot be read: {exc}"[:300])]
    targets = []
    for path, target in listed.items():
        custom = target.unrecognized_fields.get("custom")
        if not isinstance(custom, dict):
            continue
        scope, version = custom.get("scope"), custom.get("config_version")
        if isinstance(scope, str) and isinstance(version, int):
            targets.append(audit_config.ConfigTarget(
                path, scope, version, str(target.hashes.get(HASH_ALGORITHM, "")),
                int(target.length)))
    out = []
    for current in audit_config.current_targets(targets):
        directory, _, name = current.path.rpartition("/")
        data: bytes | None = None
        if audit_config.wants_bytes(current):
            try:
                data = (image.targets_dir / directory / f"{current.sha256}.{name}").read_bytes()
            except OSError:
                data = None
        out.append(audit_config.describe(current, data))
    return out


def _read_crl(path: Path, ca: au.CaRow) -> au.CrlView | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return au.CrlView(ca.id, datetime.min.replace(tzinfo=ca.not_after.tzinfo), None,
                          frozenset(), signature_valid=False)
    try:
        crl = pki.load_crl(data)
        public_key = pki.load_certificate(ca.certificate_pem.encode("ascii")).public_key()
        valid = crl.is_signature_valid(public_key)  # type: ignore[arg-type]
    except (IotrustError, TypeError, ValueError):
        return au.CrlView(ca.id, datetime.min.replace(tzinfo=ca.not_after.tzinfo), None,
                          frozenset(), signature_valid=False)
    return au.CrlView(ca.id, crl.last_update_utc, crl.next_update_utc,
                      frozenset(entry.serial_number for entry in crl), signature_valid=valid)


# --------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True, slots=True)
class CheckRun:
    """One check's outcome and how long it took."""

    check_id: str
    title: str
    seconds: float
    findings: int
    suppressed: int


@dataclass(slots=True)
class AuditReport:
    """The outcome of :func:`run_audit`."""

    at: datetime
    findings: list[au.Finding]
    runs: list[CheckRun]
    device_states: dict[str, int]
    seconds: float
    event_seq: int | None = None
    not_run: dict[str, str] = field(default_factory=dict)
    #: How the event log was verified (``None``: the check did not run).
    event_log: dict[str, Any] | None = None

    @property
    def by_severity(self) -> dict[str, int]:
        """Finding count per severity (every severity present)."""
        counts = {s.value: 0 for s in au.Severity}
        for f in self.findings:
            counts[f.severity.value] += 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``iotrust.audit/v1``)."""
        return {"schema": "iotrust.audit/v1", "at": self.at.isoformat(),
                "seconds": round(self.seconds, 3), "device_states": self.device_states,
                "by_severity": self.by_severity,
                "checks": [{"id": r.check_id, "title": r.title, "seconds": round(r.seconds, 4),
                            "findings": r.findings, "suppressed": r.suppressed}
                           for r in self.runs],
                "not_run": self.not_run,
                "findings": [f.as_dict() for f in self.findings],
                "event_log": self.event_log,
                "event_seq": self.event_seq}


def _select(check_ids: Sequence[str] | None, skip: Sequence[str] = ()) -> list[au.Check]:
    skipped = {check_by_id(c).id for c in skip}
    chosen = list(ALL_CHECKS) if not check_ids else [check_by_id(c)
                                                     for c in dict.fromkeys(check_ids)]
    return [c for c in chosen if c.id not in skipped]


def open_snapshot(tx: Tx, settings: Settings, clock: Clock,
                  config: au.AuditConfig | None = None, *,
                  full_event_log: bool = False) -> RegistrySnapshot:
    """A snapshot of the registry within ``tx`` (suppressions loaded, not expired)."""
    now = clock.now()
    return RegistrySnapshot(tx, settings, now=now, config=config or au.AuditConfig(),
                            suppressions=AuditTx(tx).suppressions(now),
                            full_event_log=full_event_log)


def _event_log_summary(status: au.EventLogStatus) -> dict[str, Any]:
    head = status.report.head
    return {"mode": status.mode, "since_seq": status.since_seq, "records": status.report.count,
            "head_seq": head.seq if head is not None else None, "intact": status.report.intact,
            "full_at": status.full_at.isoformat() if status.full_at is not None else None}


def run_audit(db: Database, settings: Settings, clock: Clock, *, actor: str,
              checks: Sequence[str] | None = None, skip: Sequence[str] = (),
              config: au.AuditConfig | None = None, record: bool = True,
              full_event_log: bool = False) -> AuditReport:
    """Run the checks (all, or ``checks`` by id, minus ``skip``) and record ``audit.completed``.

    The event-log check verifies the records appended since the checkpoint the last recorded
    audit left (see :mod:`iotrust.core.audit_eventlog`); the whole chain (about one SHA-256
    per record) when there is none, when the last full verification is older than
    ``config.event_log_full_days``, when anything looks wrong, or with ``full_event_log``. When
    the chain is intact, the recorded ``audit.completed`` event carries the new checkpoint.
    """
    selected = _select(checks, skip)
    started = time.perf_counter()
    findings: list[au.Finding] = []
    runs: list[CheckRun] = []
    status: au.EventLogStatus | None = None
    with db.transaction(readonly=True) as tx:
        snapshot = open_snapshot(tx, settings, clock, config, full_event_log=full_event_log)
        at = snapshot.now
        states = snapshot.device_states()
        for check in selected:
            t0 = time.perf_counter()
            result = au.run_check(check, snapshot)
            runs.append(CheckRun(check.id, check.title, time.perf_counter() - t0,
                                 len(result.findings), result.suppressed))
            findings.extend(result.findings)
        if any(c.id == EVENT_LOG_CHECK for c in selected):
            status = snapshot.event_log()
    findings.sort(key=lambda f: (au.SEVERITY_RANK[f.severity], f.check_id, f.title))
    report = AuditReport(at=at, findings=findings, runs=runs, device_states=states,
                         seconds=time.perf_counter() - started,
                         event_log=_event_log_summary(status) if status is not None else None)
    if record:
        data: dict[str, eventlog.JSONValue] = {
            "findings": len(findings), "by_severity": dict(report.by_severity),
            "by_check": {r.check_id: r.findings for r in runs if r.findings},
            "suppressed": sum(r.suppressed for r in runs),
            "checks": [r.check_id for r in runs],
            "devices": sum(states.values()),
            "milliseconds": round(report.seconds * 1000)}
        if status is not None and status.report.intact and status.report.head is not None:
            data.update(ael.checkpoint_data(status.report.head, status.full_at))
        with db.transaction() as tx:
            row = eventlog.record(tx, clock, AUDIT_COMPLETED, actor=actor, data=data)
        report.event_seq = row.seq
    return report


# --------------------------------------------------------------------------------------------
# Suppressions


def _check_target(target: str) -> str:
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise InputError("a target is a device id, credential serial, CA, policy or model name "
                         "(or '*')", reason="invalid_target")
    return target


def suppress(db: Database, clock: Clock, check_id: str, target: str, *, reason: str,
             actor: str, expires_at: datetime | None = None) -> SuppressionRow:
    """Accept a finding target for a check, with who and why (``audit.suppressed``)."""
    check_by_id(check_id)
    _check_target(target)
    if not isinstance(reason, str) or not reason.strip() or len(reason) > _MAX_REASON:
        raise InputError(f"a suppression needs a reason of 1..{_MAX_REASON} characters",
                         reason="invalid_reason")
    now = clock.now()
    if expires_at is not None and expires_at <= now:
        raise InputError("a suppression must expire in the future", reason="invalid_expiry")
    with db.transaction() as tx:
        row = AuditTx(tx).add_suppression(check_id=check_id, target=target,
                                          reason=reason.strip(), actor=actor, at=now,
                                          expires_at=expires_at)
        eventlog.record(tx, clock, AUDIT_SUPPRESSED, actor=actor,
                        device_id=target if DEVICE_ID_RE.fullmatch(target) else None,
                        data={"check": check_id, "target": target, "why": reason.strip(),
                              "expires_at": expires_at.isoformat() if expires_at else None})
    return row


def unsuppress(db: Database, clock: Clock, check_id: str, target: str, *,
               actor: str) -> SuppressionRow:
    """Lift a suppression (``audit.unsuppressed``); ``NotFoundError(unknown_suppression)``."""
    _check_target(target)
    with db.transaction() as tx:
        row = AuditTx(tx).remove_suppression(check_id, target)
        eventlog.record(tx, clock, AUDIT_UNSUPPRESSED, actor=actor,
                        data={"check": check_id, "target": target})
    return row


def list_suppressions(db: Database) -> list[SuppressionRow]:
    """Every suppression, expired ones included."""
    with db.transaction(readonly=True) as tx:
        return AuditTx(tx).suppressions()


# --------------------------------------------------------------------------------------------
# Mitigations


@dataclass(frozen=True, slots=True)
class Mitigation:
    """What :func:`mitigate` did."""

    check_id: str
    target: str
    action: str
    detail: Mapping[str, Any]
    event_seq: int

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"check_id": self.check_id, "target": self.target, "action": self.action,
                "detail": dict(self.detail), "event_seq": self.event_seq}


def _record(tx: Tx, clock: Clock, *, check_id: str, target: str, action: str, actor: str,
            note: str | None, detail: Mapping[str, eventlog.JSONValue]) -> int:
    device = target if DEVICE_ID_RE.fullmatch(target) else None
    row = eventlog.record(tx, clock, AUDIT_MITIGATED, actor=actor, device_id=device,
                          data={"check": check_id, "target": target, "action": action,
                                "note": note, **detail})
    return row.seq


def mitigate(db: Database, clock: Clock, check_id: str, target: str, *, action: str,
             actor: str, broker: BrokerControl | None = None,
             note: str | None = None) -> Mitigation:
    """Apply one reversible mitigation to ``target`` because of ``check_id``; always evented.

    ``quarantine`` and ``rotate`` take a device id (``InputError(invalid_target)`` otherwise);
    ``notify`` takes any target. A device that cannot be quarantined (already quarantined,
    retired) is refused by the lifecycle with its usual ``ConflictError``.
    """
    check_by_id(check_id)
    _check_target(target)
    if action not in MITIGATIONS:
        raise InputError(f"the action is one of {', '.join(MITIGATIONS)}",
                         reason="invalid_action")
    if note is not None and len(note) > _MAX_REASON:
        raise InputError("the note is too long", reason="invalid_reason")
    if action in {"quarantine", "rotate"} and not DEVICE_ID_RE.fullmatch(target):
        raise InputError(f"{action} needs a device id as target", reason="invalid_target")
    if action == "quarantine":
        from iotrust.services import broker as broker_svc  # noqa: PLC0415 - heavy, rarely used

        result = broker_svc.quarantine(db, clock, broker, target, actor=actor, reason="audit")
        detail: dict[str, eventlog.JSONValue] = {"state": result.device.state.value,
                                                 "broker": result.broker}
        with db.transaction() as tx:
            seq = _record(tx, clock, check_id=check_id, target=target, action=action, actor=actor,
                          note=note, detail=detail)
        return Mitigation(check_id, target, action, detail, seq)
    with db.transaction() as tx:
        if action == "rotate":
            tx.get_device(target)  # NotFoundError(unknown_device)
            campaign = f"audit-{clock.now().strftime('%Y%m%d%H%M%S')}-{os.urandom(3).hex()}"
            tx.request_rotations([target], campaign, clock.now())
            eventlog.record(tx, clock, "rotation.requested", actor=actor, device_id=target,
                            data={"campaign": campaign, "devices": 1, "why": f"audit {check_id}"})
            detail = {"campaign": campaign}
        else:
            detail = {}
        seq = _record(tx, clock, check_id=check_id, target=target, action=action, actor=actor,
                          note=note, detail=detail)
    return Mitigation(check_id, target, action, detail, seq)


def audit_history(db: Database, *, limit: int = 200) -> list[tuple[datetime, dict[str, Any]]]:
    """Past ``audit.completed`` events, oldest first: ``(at, data)``."""
    with db.transaction(readonly=True) as tx:
        rows = AuditTx(tx).audit_history(AUDIT_COMPLETED, limit)
    out = []
    for at, data in rows:
        try:
            parsed = json.loads(data)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            out.append((at, parsed))
    return out
