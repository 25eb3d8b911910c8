"""Registry queries behind the posture audit, and the audit suppressions table.

:class:`AuditTx` wraps one open :class:`~iotrust.adapters.sql.store.Tx` (the same unit of work,
the same error seam: statements run through the ``Tx``'s executor, so driver errors become the
error tree as everywhere else). It answers the questions of
:class:`iotrust.core.audit.Snapshot` at fleet scale:

* duplicates are SQL joins on unique indexes or ``GROUP BY … HAVING``, never a Python dict over
  the fleet;
* devices are grouped into *policy sets* by one windowed aggregate (``COUNT(*) OVER`` and the
  first ids by ``ROW_NUMBER() OVER``), plus one ordered stream over group members only;
* long results (credentials, certificates) are streamed in batches (``yield_per``: a server-side
  cursor on PostgreSQL, a lazy cursor on SQLite) and consumed inside the transaction.

It returns the plain rows of :mod:`iotrust.core.audit` and decides nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import and_, case, delete, exists, func, or_, select
from sqlalchemy.sql import Select

from iotrust.adapters.sql import schema as s
from iotrust.adapters.sql.store import Tx
from iotrust.core.audit import (
    LIVE_CREDENTIAL_STATES,
    CaRow,
    CertificateRow,
    CredentialRow,
    DeviceRow,
    KeyReuse,
    KeyUse,
    RevokedRow,
    RolloutLag,
    SharedUse,
    SubjectConflict,
    WithdrawnInstall,
    ZombieRow,
)
from iotrust.core.audit_keys import P256_SPKI_BASE64
from iotrust.core.audit_reach import PolicySet
from iotrust.core.records import EventRow
from iotrust.errors import ConflictError, NotFoundError

__all__ = ["AuditTx", "ModelFacts", "SuppressionRow"]

STREAM_BATCH: Final = 5000
#: The refusal reason meaning "this identity is in use somewhere else right now", and the event
#: kinds that carry it (looked up through the ``(kind, seq)`` index, not a scan of the log).
CLONE_REASON: Final = "clone_suspected"
REFUSAL_KINDS: Final = ("onboarding.refused", "rotation.refused", "voucher.refused")


@dataclass(frozen=True, slots=True)
class SuppressionRow:
    """One recorded suppression."""

    id: int
    check_id: str
    target: str
    reason: str
    actor: str
    created_at: datetime
    expires_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"id": self.id, "check_id": self.check_id, "target": self.target,
                "reason": self.reason, "actor": self.actor,
                "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat() if self.expires_at else None}


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """A device model as stored, with its non-retired device count."""

    name: str
    manufacturer: str
    hardware_profile: str | None
    devices: int


def _no_index(column: Any) -> Any:  # noqa: ANN401 - SQL expressions
    """``column || ''``: keeps SQLite from using an index for a whole-fleet scan.

    Reading most of the devices through the (state, id) index costs two b-tree lookups per
    row; one table scan is several times faster.
    """
    return column.concat("")


def _streamed(stmt: Select[Any]) -> Select[Any]:
    return stmt.execution_options(yield_per=STREAM_BATCH)


class AuditTx:
    """The audit's view of one open transaction."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx

    def _exec(self, stmt: Any, params: Any = None) -> Any:  # noqa: ANN401 - SQLAlchemy objects
        return self._tx._exec(stmt, params)  # noqa: SLF001 - same adapter, shared error seam

    # -- suppressions --------------------------------------------------------------------------

    def add_suppression(self, *, check_id: str, target: str, reason: str, actor: str,
                        at: datetime, expires_at: datetime | None) -> SuppressionRow:
        """Record a suppression; ``ConflictError(suppression_exists)`` if already there."""
        t = s.audit_suppressions
        if self._exec(select(t.c.id).where(t.c.check_id == check_id,
                                           t.c.target == target)).first():
            raise ConflictError(f"{check_id} {target} is already suppressed",
                                reason="suppression_exists")
        self._tx._insert(t, {"check_id": check_id, "target": target,  # noqa: SLF001
                             "reason": reason, "actor": actor, "created_at": at,
                             "expires_at": expires_at})
        row = self._exec(select(t).where(t.c.check_id == check_id, t.c.target == target)).one()
        return _suppression(row)

    def remove_suppression(self, check_id: str, target: str) -> SuppressionRow:
        """Delete one suppression; ``NotFoundError(unknown_suppression)``."""
        self._tx._writable()  # noqa: SLF001 - same adapter
        t = s.audit_suppressions
        row = self._exec(select(t).where(t.c.check_id == check_id, t.c.target == target)).first()
        if row is None:
            raise NotFoundError(f"{check_id} {target} is not suppressed",
                                reason="unknown_suppression")
        self._exec(delete(t).where(t.c.id == row.id))
        return _suppression(row)

    def suppressions(self, at: datetime | None = None) -> list[SuppressionRow]:
        """Every suppression (only those not expired at ``at`` when given)."""
        t = s.audit_suppressions
        stmt = select(t).order_by(t.c.check_id, t.c.target)
        if at is not None:
            stmt = stmt.where(or_(t.c.expires_at.is_(None), t.c.expires_at > at))
        return [_suppression(r) for r in self._exec(stmt)]

    # -- small tables ----------------------------------------------------------------------------

    def cas(self) -> list[CaRow]:
        """Every CA."""
        t = s.certificate_authorities
        return [CaRow(r.id, r.role, r.state, r.not_after, r.certificate_pem)
                for r in self._exec(select(t).order_by(t.c.id))]

    def manufacturers(self) -> list[tuple[str, bool, bool, int]]:
        """``(name, unsafe, revoked, non-retired devices)`` for every manufacturer."""
        m, d = s.manufacturers, s.devices
        count = (select(func.count()).select_from(d)
                 .where(d.c.manufacturer == m.c.name, d.c.state != "retired").scalar_subquery())
        stmt = select(m.c.name, m.c.unsafe_manufacturer_trust, m.c.revoked, count) \
            .order_by(m.c.name)
        return [(r[0], bool(r[1]), bool(r[2]), int(r[3])) for r in self._exec(stmt)]

    def models(self) -> list[ModelFacts]:
        """Every device model with its profile text and non-retired device count."""
        m, d = s.device_models, s.devices
        counts = dict(self._exec(select(d.c.model, func.count()).where(
            d.c.model.is_not(None), d.c.state != "retired").group_by(d.c.model)).all())
        return [ModelFacts(r.name, r.manufacturer, r.hardware_profile, int(counts.get(r.name, 0)))
                for r in self._exec(select(m).order_by(m.c.name))]

    def device_states(self) -> dict[str, int]:
        """Device count per lifecycle state."""
        d = s.devices
        return {str(r[0]): int(r[1])
                for r in self._exec(select(d.c.state, func.count()).group_by(d.c.state))}

    # -- policy sets -----------------------------------------------------------------------------

    def policy_sets(self, sample: int) -> list[PolicySet]:
        """Devices grouped by (stored policies, state, key storage, model).

        One ``GROUP BY`` over the covering index (state, key storage, model, id) counts every
        (state, key storage, model); the members of groups holding a policy (few, streamed in
        id order) are then moved from their model's set to the set of their combined policies.
        ``sample`` ids are kept per set for group sets; model sets keep their lowest and
        highest id.
        """
        d, dm, g, m = s.devices, s.device_models, s.device_groups, s.device_group_members
        sets: dict[tuple[tuple[str, ...], str, str, str | None], list[Any]] = {}
        model_policy = {r[0]: r[1] for r in self._exec(select(dm.c.name, dm.c.policy))}
        for state, storage, model, n, low, high in self._exec(
                select(d.c.state, d.c.key_storage, d.c.model, func.count(), func.min(d.c.id),
                       func.max(d.c.id))
                .group_by(d.c.state, d.c.key_storage, d.c.model)):
            policy = model_policy.get(model) if model is not None else None
            key = ((policy,) if policy else (), state, storage, model)
            entry = sets.setdefault(key, [0, []])
            entry[0] += int(n)
            entry[1].extend(x for x in dict.fromkeys((low, high)) if x not in entry[1])
        members = _streamed(
            select(d.c.id, d.c.state, d.c.key_storage, d.c.model, g.c.policy)
            .select_from(m.join(g, g.c.name == m.c.group_name).join(d, d.c.id == m.c.device_id))
            .where(g.c.policy.is_not(None)).order_by(d.c.id))
        current: str | None = None
        names: set[str] = set()
        facts: tuple[str, str, str | None] = ("", "", None)

        def move() -> None:
            if current is None:
                return
            state, storage, model = facts
            policy = model_policy.get(model) if model is not None else None
            old = sets[((policy,) if policy else (), state, storage, model)]
            old[0] -= 1
            if current in old[1]:
                old[1].remove(current)
            if policy:
                names.add(policy)
            entry = sets.setdefault((tuple(sorted(names)), *facts), [0, []])
            entry[0] += 1
            if len(entry[1]) < sample:
                entry[1].append(current)

        for device_id, state, storage, model, group_policy in self._exec(members):
            if device_id != current:
                move()
                current, names, facts = device_id, set(), (state, storage, model)
            names.add(group_policy)
        move()
        return [PolicySet(policies=k[0], state=k[1], key_storage=k[2], model=k[3],
                          devices=v[0], sample=tuple(v[1])) for k, v in sets.items() if v[0] > 0]

    # -- keys and credentials --------------------------------------------------------------------

    def key_reuse(self) -> list[KeyReuse]:
        """Keys recorded in places that disagree.

        * an operational key that is also a factory key (a semi-join of the two unique key
          indexes: index-only on SQLite, a hash join on PostgreSQL);
        * a CSR key (seen-keys kind ``csr``) that is a factory or operational key of another
          device.

        Two credentials (or two devices) with one key cannot exist: both key columns are
        unique, and a registry without those indexes is refused at open (schema revision).
        Seen-keys rows of kind factory/credential are written in the same transaction as the
        device or credential row they mirror, so they are not compared again here.
        """
        c, d, k = s.credentials, s.devices, s.seen_keys
        groups: dict[str, dict[KeyUse, None]] = {}

        def add(spki: str, *uses: KeyUse) -> None:
            entry = groups.setdefault(spki, {})
            for use in uses:
                entry.setdefault(use, None)

        keys = [r[0] for r in self._exec(select(c.c.spki_sha256).where(
            exists().where(d.c.factory_spki_sha256 == c.c.spki_sha256)))]
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            for spki, dev in self._exec(select(d.c.factory_spki_sha256, d.c.id)
                                        .where(d.c.factory_spki_sha256.in_(chunk))):
                add(spki, KeyUse("factory", dev, None))
            for spki, dev, serial in self._exec(
                    select(c.c.spki_sha256, c.c.device_id, c.c.serial_number)
                    .where(c.c.spki_sha256.in_(chunk))):
                add(spki, KeyUse("credential", dev, serial))
        csr = k.c.kind == "csr"
        for spki, seen_dev, dev in self._exec(
                select(k.c.spki_sha256, k.c.device_id, d.c.id)
                .select_from(k.join(d, d.c.factory_spki_sha256 == k.c.spki_sha256))
                .where(csr, d.c.id.is_distinct_from(k.c.device_id))):
            add(spki, KeyUse("seen:csr", seen_dev, None), KeyUse("factory", dev, None))
        for spki, seen_dev, dev, serial in self._exec(
                select(k.c.spki_sha256, k.c.device_id, c.c.device_id, c.c.serial_number)
                .select_from(k.join(c, c.c.spki_sha256 == k.c.spki_sha256))
                .where(csr, c.c.device_id.is_distinct_from(k.c.device_id))):
            add(spki, KeyUse("seen:csr", seen_dev, None), KeyUse("credential", dev, serial))
        return [KeyReuse(spki, tuple(uses)) for spki, uses in sorted(groups.items())]

    def shared_uses(self, window: timedelta) -> list[SharedUse]:
        """Rotation requests for one credential from two sources within ``window``.

        Also clone-suspected refusals (any event with that reason), per device.
        """
        r, e = s.rotation_sessions, s.events
        multi = (select(r.c.credential_serial).group_by(r.c.credential_serial)
                 .having(func.count(func.distinct(r.c.source)) > 1).subquery())
        rows = self._exec(select(r.c.credential_serial, r.c.device_id, r.c.source, r.c.created_at)
                          .where(r.c.credential_serial.in_(select(multi.c.credential_serial)))
                          .order_by(r.c.credential_serial, r.c.created_at)).all()
        out: list[SharedUse] = []
        by_serial: dict[str, list[Any]] = {}
        for row in rows:
            by_serial.setdefault(row[0], []).append(row)
        for serial, seq in by_serial.items():
            close = [(a, b) for a, b in itertools.pairwise(seq)
                     if a.source != b.source and b.created_at - a.created_at <= window]
            if close:
                sources = sorted({x.source for pair in close for x in pair})
                out.append(SharedUse("rotation_sources", seq[0].device_id, serial,
                                     tuple(sources), len(close) + 1, close[0][0].created_at,
                                     close[-1][1].created_at))
        for device_id, n, first, last in self._exec(
                select(e.c.device_id, func.count(), func.min(e.c.at), func.max(e.c.at))
                .where(e.c.kind.in_(REFUSAL_KINDS), e.c.reason == CLONE_REASON,
                       e.c.device_id.is_not(None))
                .group_by(e.c.device_id)):
            out.append(SharedUse("clone_suspected", device_id, None, (), int(n), first, last))
        return out

    def _credentials(self, *where: Any) -> Iterator[CredentialRow]:  # noqa: ANN401
        c = s.credentials
        stmt = _streamed(select(c.c.serial_number, c.c.device_id, c.c.subject, c.c.state,
                                c.c.issuer_ca_id, c.c.not_before, c.c.not_after)
                         .where(c.c.state.in_(LIVE_CREDENTIAL_STATES), *where))
        for row in self._exec(stmt):
            yield CredentialRow(*row)

    def expiring_credentials(self, before: datetime) -> Iterator[CredentialRow]:
        """Live credentials ending before ``before`` (streamed)."""
        return self._credentials(s.credentials.c.not_after < before)

    def old_credentials(self, issued_before: datetime) -> Iterator[CredentialRow]:
        """Live credentials valid since before ``issued_before`` (streamed)."""
        return self._credentials(s.credentials.c.not_before < issued_before)

    def certificate_scan(self) -> tuple[list[CertificateRow], list[str]]:
        """One scan of the live credentials for the two checks that must read every row.

        Returns the certificates not certainly holding a P-256 key (the database skips every
        PEM containing the base64 form of the P-256 SPKI prefix,
        :data:`~iotrust.core.audit_keys.P256_SPKI_BASE64`, with ``instr``/``strpos``; a line
        break inside the prefix only sends a certificate to the full parse), and the subjects
        of credentials not named after their device (or device-like subjects on service
        credentials).
        """
        c = s.credentials
        not_p256 = and_(*(self._position(c.c.certificate_pem, p) == 0
                          for p in P256_SPKI_BASE64))
        wrong = or_(and_(c.c.device_id.is_not(None), c.c.subject != c.c.device_id),
                    and_(c.c.device_id.is_(None), ~c.c.subject.contains("@")))
        stmt = _streamed(select(c.c.serial_number, c.c.device_id, c.c.subject,
                                c.c.certificate_pem)
                         .where(c.c.state.in_(LIVE_CREDENTIAL_STATES), or_(not_p256, wrong)))
        certificates: list[CertificateRow] = []
        subjects: set[str] = set()
        for serial, device_id, subject, pem in self._exec(stmt):
            if (device_id is None and "@" not in subject) or (
                    device_id is not None and subject != device_id):
                subjects.add(subject)
            certificates.append(CertificateRow(serial, device_id, pem))
        return certificates, sorted(subjects)

    def count_live_credentials(self) -> int:
        """How many live credentials there are."""
        c = s.credentials
        return int(self._exec(select(func.count()).select_from(c)
                              .where(c.c.state.in_(LIVE_CREDENTIAL_STATES))).scalar_one())

    def _position(self, column: Any, needle: str) -> Any:  # noqa: ANN401 - SQL expressions
        """``instr`` on SQLite, ``strpos`` on PostgreSQL (1-based; 0 when absent)."""
        if self._tx._conn.dialect.name == "postgresql":  # noqa: SLF001 - same adapter
            return func.strpos(column, needle)
        return func.instr(column, needle)

    def revoked_unexpired(self, now: datetime) -> Iterator[RevokedRow]:
        """Revoked credentials that have not expired (streamed)."""
        c = s.credentials
        stmt = _streamed(select(c.c.serial_number, c.c.device_id, c.c.issuer_ca_id,
                                c.c.revoked_at, c.c.not_after)
                         .where(c.c.state == "revoked", c.c.not_after > now))
        for row in self._exec(stmt):
            yield RevokedRow(*row)

    def subject_conflicts(self, subjects: Sequence[str]) -> list[SubjectConflict]:
        """Every live holder of each of ``subjects`` (from :meth:`certificate_scan`).

        Two holders of one subject need one of them to be a credential not named after its
        device (a device's own credentials are), so the scan's subjects cover every conflict.
        """
        c = s.credentials
        live = c.c.state.in_(LIVE_CREDENTIAL_STATES)
        groups: dict[str, list[Any]] = {}
        for i in range(0, len(subjects), 500):
            chunk = list(subjects[i:i + 500])
            for subject, device_id, serial in self._exec(
                    select(c.c.subject, c.c.device_id, c.c.serial_number)
                    .where(live, or_(c.c.subject.in_(chunk), c.c.device_id.in_(chunk)))
                    .order_by(c.c.subject, c.c.serial_number)):
                key = subject if subject in chunk else device_id
                groups.setdefault(key, []).append((device_id, serial))
        return [SubjectConflict(subject, tuple(d for d, _ in rows), tuple(x for _, x in rows))
                for subject, rows in sorted(groups.items())]

    # -- devices ---------------------------------------------------------------------------------

    def device_scan(self, dormant_before: datetime) -> tuple[list[DeviceRow], list[DeviceRow]]:
        """One table scan for two checks: dormant devices and unsafe admissions.

        Dormant: active or quarantined, not seen since ``dormant_before`` (never seen: not
        updated since). Unsafe: non-retired, admitted under unsafe manufacturer trust.
        """
        d = s.devices
        state = _no_index(d.c.state)
        dormant = and_(state.in_(("active", "quarantined")),
                       or_(and_(d.c.last_seen_at.is_not(None), d.c.last_seen_at < dormant_before),
                           and_(d.c.last_seen_at.is_(None), d.c.updated_at < dormant_before)))
        unsafe = and_(d.c.unsafe_admission.is_(True), state != "retired")
        stmt = _streamed(select(d.c.id, d.c.state, d.c.model, d.c.last_seen_at,
                                case((dormant, 1), else_=0), case((unsafe, 1), else_=0))
                         .where(or_(dormant, unsafe)))
        sleepers: list[DeviceRow] = []
        admitted: list[DeviceRow] = []
        for device_id, st, model, seen, is_dormant, is_unsafe in self._exec(stmt):
            row = DeviceRow(device_id, st, model, seen)
            if is_dormant:
                sleepers.append(row)
            if is_unsafe:
                admitted.append(row)
        return sleepers, admitted

    def zombies(self) -> list[ZombieRow]:
        """Zombie contacts aggregated per identity."""
        z = s.zombies
        rows: dict[str, list[Any]] = {}
        for r in self._exec(select(z).order_by(z.c.identity, z.c.where)):
            entry = rows.get(r.identity)
            if entry is None:
                rows[r.identity] = [r.device_id, [r.where], int(r.count), r.first_seen_at,
                                    r.last_seen_at, r.last_reason]
                continue
            entry[1].append(r.where)
            entry[2] += int(r.count)
            entry[3] = min(entry[3], r.first_seen_at)
            if r.last_seen_at > entry[4]:
                entry[4], entry[5] = r.last_seen_at, r.last_reason
            entry[0] = entry[0] or r.device_id
        return [ZombieRow(identity, v[0], tuple(v[1]), v[2], v[3], v[4], v[5])
                for identity, v in rows.items()]

    # -- rollouts ----------------------------------------------------------------------------

    def rollout_lags(self, stuck_before: datetime) -> Iterator[RolloutLag]:
        """Stuck or failed devices of non-aborted rollouts (streamed; one scan)."""
        r, rd, d = s.rollouts, s.rollout_devices, s.devices
        stuck = and_(r.c.state.in_(("active", "paused")), rd.c.released_at.is_not(None),
                     rd.c.status.in_(("pending", "downloading", "installed")),
                     rd.c.updated_at < stuck_before)
        failed = and_(r.c.state != "aborted", rd.c.status.in_(("rolled_back", "rejected")))
        stmt = _streamed(
            select(r.c.id, r.c.release_id, r.c.state, rd.c.device_id, rd.c.status,
                   rd.c.updated_at)
            .select_from(rd.join(r, r.c.id == rd.c.rollout_id)
                         .join(d, d.c.id == rd.c.device_id))
            .where(or_(stuck, failed), d.c.state != "retired"))
        for row in self._exec(stmt):
            yield RolloutLag(*row)

    def withdrawn_installs(self) -> Iterator[WithdrawnInstall]:
        """Non-retired devices whose installed release only ever came from aborted rollouts."""
        r, u, d = s.rollouts, s.device_updates, s.devices
        aborted = select(r.c.release_id).where(r.c.state == "aborted")
        live = select(r.c.release_id).where(r.c.state != "aborted")
        first_aborted = (select(func.min(r.c.id)).where(r.c.release_id == u.c.installed_release,
                                                        r.c.state == "aborted")
                         .scalar_subquery())
        stmt = _streamed(
            select(u.c.device_id, u.c.installed_release, first_aborted)
            .select_from(u.join(d, d.c.id == u.c.device_id))
            .where(u.c.installed_release.in_(aborted), u.c.installed_release.not_in(live),
                   d.c.state != "retired"))
        for row in self._exec(stmt):
            yield WithdrawnInstall(*row)

    # -- the report ------------------------------------------------------------------------------

    def credential_histogram(self, now: datetime, edges_days: Sequence[int],
                             ) -> dict[str, list[int]]:
        """Live device credentials counted by days to expiry and by age, per bucket edge.

        Bucket ``i`` holds ``edges[i-1] <= days < edges[i]`` (the first: below ``edges[0]``,
        expired included; the last extra bucket: at or above the last edge).
        """
        c = s.credentials
        expiry_cols: list[Any] = []
        age_cols: list[Any] = []
        bounds = [*edges_days, None]
        for i, high in enumerate(bounds):
            low = edges_days[i - 1] if i > 0 else None
            for cols, column, sign in ((expiry_cols, c.c.not_after, 1),
                                       (age_cols, c.c.not_before, -1)):
                conds = []
                for edge, op in ((low, "ge"), (high, "lt")):
                    if edge is None:
                        continue
                    at = now + timedelta(days=sign * edge)
                    if sign > 0:
                        conds.append(column >= at if op == "ge" else column < at)
                    else:
                        conds.append(column <= at if op == "ge" else column > at)
                cols.append(func.sum(case((and_(*conds), 1), else_=0)))
        row = self._exec(select(*expiry_cols, *age_cols)
                         .where(c.c.state.in_(LIVE_CREDENTIAL_STATES),
                                c.c.device_id.is_not(None))).one()
        n = len(bounds)
        return {"expiry": [int(v or 0) for v in row[:n]], "age": [int(v or 0) for v in row[n:]]}

    # -- the event log ---------------------------------------------------------------------------

    def events_carrying(self, kind: str, marker: str, limit: int) -> list[EventRow]:
        """The last ``limit`` events of ``kind`` whose data contains ``marker``, newest first.

        Walks the ``(kind, seq)`` index backwards; only events of ``kind`` are tested.
        """
        e = s.events
        rows = self._exec(select(e)
                          .where(e.c.kind == kind, e.c.data.contains(marker, autoescape=True))
                          .order_by(e.c.seq.desc()).limit(limit))
        return [_event_row(r) for r in rows]

    def stream_events(self, after_seq: int = 0) -> Iterator[EventRow]:
        """Every record after ``after_seq`` in sequence order: one streamed query.

        Columns are unpacked by position (about twice as fast as ``Tx.iter_events``'s
        attribute access per row, which matters for a chain of millions of records).
        """
        e = s.events
        stmt = _streamed(select(e.c.seq, e.c.at, e.c.kind, e.c.actor, e.c.device_id,
                                e.c.reason, e.c.data, e.c.prev_hash, e.c.hash)
                         .where(e.c.seq > after_seq).order_by(e.c.seq))
        for seq, at, kind, actor, device_id, reason, data, prev_hash, digest in self._exec(stmt):
            yield EventRow(int(seq), at, kind, actor, device_id, reason, data, prev_hash, digest)

    def event_at(self, seq: int) -> EventRow | None:
        """The record with sequence number ``seq``, if there is one."""
        e = s.events
        row = self._exec(select(e).where(e.c.seq == seq)).first()
        return None if row is None else _event_row(row)

    def audit_history(self, kind: str, limit: int) -> list[tuple[datetime, str]]:
        """The ``(at, data)`` of the last ``limit`` events of ``kind``, oldest first."""
        e = s.events
        rows = self._exec(select(e.c.at, e.c.data).where(e.c.kind == kind)
                          .order_by(e.c.seq.desc()).limit(limit)).all()
        return [(r[0], r[1]) for r in reversed(rows)]


def _event_row(row: Any) -> EventRow:  # noqa: ANN401 - a driver row
    return EventRow(seq=int(row.seq), at=row.at, kind=row.kind, actor=row.actor,
                    device_id=row.device_id, reason=row.reason, data=row.data,
                    prev_hash=row.prev_hash, hash=row.hash)


def _suppression(row: Any) -> SuppressionRow:  # noqa: ANN401 - a driver row
    return SuppressionRow(int(row.id), row.check_id, row.target, row.reason, row.actor,
                          row.created_at, row.expires_at)
