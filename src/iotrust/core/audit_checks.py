"""The posture audit's checks (DESIGN.md §10), each a pure function of a :class:`Snapshot`.

AWS IoT Device Defender equivalents (ids in brackets): DEVICE_CERTIFICATE_SHARED
[``credential-shared``], DEVICE_CERTIFICATE_KEY_QUALITY [``weak-device-key``],
CA_CERTIFICATE_KEY_QUALITY [``weak-ca-key``], CA_CERTIFICATE_EXPIRING [``ca-expiring``],
DEVICE_CERTIFICATE_EXPIRING [``credential-expiring``], DEVICE_CERTIFICATE_AGE
[``credential-age``], REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE [``revoked-still-trusted``],
CONFLICTING_CLIENT_IDS [``conflicting-client-ids``], IOT_POLICY_OVERLY_PERMISSIVE
[``policy-overly-permissive``], IOT_POLICY_POTENTIAL_MIS_CONFIGURATION [``policy-misreadable``],
LOGGING_DISABLED [``event-log-integrity``]. The AWS checks about Cognito roles and role aliases
have no counterpart in a self-hosted fleet.

iotrust's own: ``key-reused``, ``config-copied`` (:mod:`iotrust.core.audit_config`),
``unsafe-manufacturer-trust``, ``weak-key-storage``,
``key-storage-underused`` (:mod:`iotrust.core.audit_storage`),
``zombies``, ``dormant-devices``, ``hardware-lifetime``, ``blast-radius``,
``rollout-lagging``, ``withdrawn-release``.

Fleet-scale checks aggregate (one finding, a capped sample, ``evidence["count"]``) and skip
suppressed targets while counting; per-subject checks yield one finding per CA, policy, model or
key. This module does no I/O and reads no clock.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from iotrust.core import hardware as hw
from iotrust.core.audit import (
    SEVERITY_RANK,
    WEAK_KEY_STORAGE,
    Check,
    Finding,
    Snapshot,
)
from iotrust.core.audit_config import ConfigCopied
from iotrust.core.audit_keys import (
    DEBIAN_WEAK_KEYS_NOTE,
    Severity,
    certificate_key_report,
    is_p256_certificate,
)
from iotrust.core.audit_reach import Reach, blast_radius, effective_for
from iotrust.core.audit_storage import KeyStorageUnderused, beyond_default_rules
from iotrust.core.policy import Action, Policy, Rule, filter_covers
from iotrust.errors import InputError

__all__ = ["ALL_CHECKS", "blast_ranking", "check_by_id"]

_DAY: Final = timedelta(days=1)
_SYMBOLIC: Final = "dev-" + "a" * 26

# --------------------------------------------------------------------------------------------
# Helpers


class _Collector:
    """Count targets of an aggregated finding, skipping suppressed ones, keeping a sample."""

    def __init__(self, snapshot: Snapshot, check_id: str) -> None:
        self.skip = snapshot.suppressed(check_id)
        self.limit = snapshot.config.max_affected
        self.count = 0
        self.suppressed = 0
        self.sample: list[str] = []

    def add(self, target: str) -> bool:
        if target in self.skip:
            self.suppressed += 1
            return False
        self.count += 1
        if len(self.sample) < self.limit:
            self.sample.append(target)
        return True

    def evidence(self, **more: Any) -> dict[str, Any]:  # noqa: ANN401 - JSON values
        return {"count": self.count, "suppressed": self.suppressed, **more}


def _days(delta: timedelta) -> float:
    return round(delta / _DAY, 2)


def _worst(*severities: Severity) -> Severity:
    return min(severities, key=SEVERITY_RANK.__getitem__)


# --------------------------------------------------------------------------------------------
# AWS Device Defender equivalents


class CredentialShared:
    """DEVICE_CERTIFICATE_SHARED: one credential key on several devices, or used twice at once.

    "At once": rotation requests from two sources within the window, clone-suspected refusals.
    """

    id = "credential-shared"
    title = "Device credential shared or used from two places at once"
    severity = Severity.CRITICAL

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        for group in snapshot.key_reuse():
            creds = [u for u in group.uses if u.kind == "credential"]
            devices = {u.device_id for u in creds}
            if len(creds) > 1 and len(devices) > 1:
                yield Finding(self.id, Severity.CRITICAL,
                              f"credential key {group.spki_sha256[:16]}… on {len(devices)} "
                              "devices",
                              tuple(sorted(d for d in devices if d)) + tuple(
                                  u.ref for u in creds if u.ref),
                              {"spki_sha256": group.spki_sha256,
                               "credentials": [u.ref for u in creds]},
                              "retire or quarantine every device holding the key and re-onboard "
                              "them with fresh keys; revoke the credentials")
        window = timedelta(seconds=snapshot.config.shared_use_window_s)
        for use in snapshot.shared_uses(window):
            target = use.credential_serial or use.device_id or "?"
            what = ("requests from two sources" if use.kind == "rotation_sources"
                    else "clone-suspected refusals")
            yield Finding(self.id, Severity.HIGH,
                          f"{use.device_id or target}: {what} ({use.times})",
                          tuple(t for t in (use.device_id, use.credential_serial) if t),
                          {"kind": use.kind, "sources": list(use.sources), "times": use.times,
                           "first_at": use.first_at.isoformat(),
                           "last_at": use.last_at.isoformat()},
                          "quarantine the device and compare where each source runs; a copied "
                          "key means retiring it (compromised) and re-onboarding")


class WeakDeviceKey:
    """DEVICE_CERTIFICATE_KEY_QUALITY: small or broken keys (ROCA) in live credentials."""

    id = "weak-device-key"
    title = "Weak device credential key"
    severity = Severity.HIGH

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        by_code: dict[str, tuple[Severity, _Collector, set[str]]] = {}
        checked = 0
        for row in snapshot.live_certificates():
            checked += 1
            if is_p256_certificate(row.certificate_pem):
                continue
            report = certificate_key_report(row.certificate_pem)
            for problem in report.problems:
                entry = by_code.get(problem.code)
                if entry is None:
                    entry = (problem.severity, _Collector(snapshot, self.id), set())
                    by_code[problem.code] = entry
                entry[1].add(row.serial)
                entry[2].add(report.algorithm)
        for code, (severity, collected, algorithms) in by_code.items():
            if collected.count:
                yield Finding(self.id, severity,
                              f"{collected.count} live credential(s) with {code.replace('_', ' ')}",
                              tuple(collected.sample),
                              collected.evidence(problem=code, algorithms=sorted(algorithms),
                                                 parsed=checked,
                                                 debian_cve_2008_0166=DEBIAN_WEAK_KEYS_NOTE),
                              "rotate these devices to new ECDSA P-256 keys (iotrust rotate); "
                              "for ROCA, retire as compromised")


class WeakCaKey:
    """CA_CERTIFICATE_KEY_QUALITY: the trust domain's CAs have strong keys."""

    id = "weak-ca-key"
    title = "Weak CA key"
    severity = Severity.CRITICAL

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        for ca in snapshot.cas():
            if ca.state == "retired":
                continue
            report = certificate_key_report(ca.certificate_pem, fleet_algorithm_only=False)
            for problem in report.problems:
                yield Finding(self.id, _worst(problem.severity, Severity.HIGH)
                              if problem.severity is not Severity.LOW else Severity.LOW,
                              f"CA {ca.id}: {problem.detail}", (ca.id,),
                              {"ca": ca.id, "role": ca.role, "algorithm": report.algorithm,
                               "problem": problem.code,
                               "debian_cve_2008_0166": DEBIAN_WEAK_KEYS_NOTE},
                              "roll the CA over to a new P-256 key (iotrust ca rollover)")


class CaExpiring:
    """CA_CERTIFICATE_EXPIRING: a non-retired CA ends within ``ca_expiry_days``."""

    id = "ca-expiring"
    title = "CA certificate expiring"
    severity = Severity.HIGH

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        limit = snapshot.now + timedelta(days=snapshot.config.ca_expiry_days)
        for ca in snapshot.cas():
            if ca.state == "retired" or ca.not_after >= limit:
                continue
            left = ca.not_after - snapshot.now
            severity = Severity.CRITICAL if left < timedelta(days=7) else Severity.HIGH
            yield Finding(self.id, severity,
                          f"CA {ca.id} {'expired' if left <= timedelta(0) else 'expires'} "
                          f"{ca.not_after.date().isoformat()}", (ca.id,),
                          {"ca": ca.id, "role": ca.role, "not_after": ca.not_after.isoformat(),
                           "days_left": _days(left)},
                          "roll the CA over now (iotrust ca rollover: the successor issues, "
                          "devices renew) and retire the old one (iotrust ca retire-old)")


class CredentialExpiring:
    """DEVICE_CERTIFICATE_EXPIRING: live credentials close to (or past) their end."""

    id = "credential-expiring"
    title = "Device credential expiring"
    severity = Severity.MEDIUM

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        cfg, now = snapshot.config, snapshot.now
        absolute = timedelta(days=cfg.credential_expiry_days)
        lapsed, soon = _Collector(snapshot, self.id), _Collector(snapshot, self.id)
        earliest: datetime | None = None
        for row in snapshot.expiring_credentials(now + absolute):
            if row.device_id is None:
                continue
            left = row.not_after - now
            lifetime = row.not_after - row.not_before
            threshold = min(absolute, lifetime * cfg.credential_expiry_fraction)
            if left <= timedelta(0):
                lapsed.add(row.serial)
            elif left < threshold and soon.add(row.serial):
                earliest = row.not_after if earliest is None else min(earliest, row.not_after)
        if lapsed.count:
            yield Finding(self.id, Severity.HIGH,
                          f"{lapsed.count} credential(s) past their end but still live in the "
                          "registry", tuple(lapsed.sample), lapsed.evidence(),
                          "run the rotation sweep (marks them expired) and re-onboard devices "
                          "that could not renew")
        if soon.count:
            yield Finding(self.id, Severity.MEDIUM,
                          f"{soon.count} credential(s) expiring within "
                          f"{cfg.credential_expiry_days} days (or "
                          f"{cfg.credential_expiry_fraction:.0%} of their lifetime)",
                          tuple(soon.sample),
                          soon.evidence(earliest=earliest.isoformat() if earliest else None),
                          "check these devices renew (iotrust rotate --model/--group to ask "
                          "them early)")


class CredentialAge:
    """DEVICE_CERTIFICATE_AGE: live credentials issued more than ``credential_max_age_days`` ago."""

    id = "credential-age"
    title = "Device credential older than the maximum age"
    severity = Severity.LOW

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        days = snapshot.config.credential_max_age_days
        collected = _Collector(snapshot, self.id)
        oldest: datetime | None = None
        for row in snapshot.old_credentials(snapshot.now - timedelta(days=days)):
            if row.device_id is not None and collected.add(row.serial):
                oldest = row.not_before if oldest is None else min(oldest, row.not_before)
        if collected.count:
            yield Finding(self.id, Severity.LOW,
                          f"{collected.count} credential(s) older than {days} days",
                          tuple(collected.sample),
                          collected.evidence(oldest=oldest.isoformat() if oldest else None),
                          "rotate them (iotrust rotate) and shorten credential lifetimes")


class RevokedStillTrusted:
    """REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE: revoked in the registry, still trusted.

    Absent from the published CRL, no CRL at all, a CRL failing its signature, or a stale CRL.
    """

    id = "revoked-still-trusted"
    title = "Revoked credential still trusted"
    severity = Severity.CRITICAL

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        crls = snapshot.crls()
        now = snapshot.now
        for ca_id, crl in sorted(crls.items()):
            if crl is None:
                continue
            if not crl.signature_valid:
                yield Finding(self.id, Severity.CRITICAL, f"CRL of {ca_id} fails its signature",
                              (ca_id,), {"ca": ca_id},
                              "republish the CRLs (iotrust crl publish) and find who wrote it")
            elif crl.next_update is not None and crl.next_update <= now:
                yield Finding(self.id, Severity.HIGH, f"CRL of {ca_id} is past its nextUpdate",
                              (ca_id,), {"ca": ca_id, "next_update": crl.next_update.isoformat()},
                              "republish the CRLs: a stale CRL refuses every device in "
                              "Mosquitto and may be ignored elsewhere")
        missing = _Collector(snapshot, self.id)
        no_crl: dict[str, int] = {}
        for row in snapshot.revoked_unexpired():
            crl = crls.get(row.issuer_ca_id)
            if row.issuer_ca_id not in crls:
                continue  # a retired CA: nothing it signed is trusted any more
            if crl is None:
                no_crl[row.issuer_ca_id] = no_crl.get(row.issuer_ca_id, 0) + 1
                missing.add(row.serial)
            elif int(row.serial, 16) not in crl.serials:
                missing.add(row.serial)
        if missing.count:
            yield Finding(self.id, Severity.CRITICAL,
                          f"{missing.count} revoked credential(s) missing from the published CRL",
                          tuple(missing.sample), missing.evidence(cas_without_crl=no_crl),
                          "republish the CRLs (iotrust crl publish) and install them in the "
                          "broker")


class ConflictingClientIds:
    """CONFLICTING_CLIENT_IDS: a certificate subject must name exactly the device holding it.

    The subject is the broker username: two devices with one subject share a session and rights.
    """

    id = "conflicting-client-ids"
    title = "Conflicting client ids"
    severity = Severity.HIGH

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        for conflict in snapshot.subject_conflicts():
            holders = sorted({d or "(service)" for d in conflict.device_ids})
            yield Finding(self.id, Severity.HIGH,
                          f"subject {conflict.subject} held by {', '.join(holders)}",
                          (conflict.subject, *conflict.serials),
                          {"subject": conflict.subject, "device_ids": holders,
                           "serials": list(conflict.serials)},
                          "revoke the credentials whose subject is not their device's id and "
                          "find how they were issued")


class EventLogIntegrity:
    """LOGGING_DISABLED (and more): the hash chain holds, and an exported anchor is checked.

    The snapshot verifies incrementally from the last audit's checkpoint or in full
    (:mod:`iotrust.core.audit_eventlog`); the evidence says which (``mode``, ``since_seq``).
    """

    id = "event-log-integrity"
    title = "Event log broken or not anchored"
    severity = Severity.CRITICAL

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        status = snapshot.event_log()
        report = status.report
        verified = {"mode": status.mode, "since_seq": status.since_seq,
                    "full_at": status.full_at.isoformat() if status.full_at else None}
        if report.breaks:
            kinds = sorted({b.kind for b in report.breaks})
            yield Finding(self.id, Severity.CRITICAL,
                          f"event log chain broken ({len(report.breaks) + report.omitted_breaks}"
                          " break(s))", tuple(f"event:{b.seq}" for b in report.breaks[:100]),
                          {"kinds": kinds, "records": report.count, **verified,
                           "first": [f"#{b.seq} {b.kind}: {b.detail}" for b in report.breaks[:10]]},
                          "stop writers, restore the database from a backup and compare; "
                          "every decision after the first break is untrusted")
        if not status.anchored:
            yield Finding(self.id, Severity.LOW, "event log head is not anchored outside the "
                          "database", ("event-log",), {"records": report.count, **verified},
                          "export the head regularly (iotrust log anchor) to storage the "
                          "database writers cannot modify; truncation is undetectable otherwise")


def _is_everything(rule: Rule) -> bool:
    return rule.template in {"#", "+/#"}


class PolicyOverlyPermissive:
    """IOT_POLICY_OVERLY_PERMISSIVE: shared rules, whole-tree or cross-device reach."""

    id = "policy-overly-permissive"
    title = "Overly permissive policy"
    severity = Severity.HIGH

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        users: dict[str, int] = {}
        for ps in snapshot.policy_sets():
            for name in ps.policies:
                users[name] = users.get(name, 0) + ps.devices
        for name, policy in sorted(snapshot.policies().items()):
            shared = policy.shared_rules
            if not shared:
                continue
            everything = [r for r in shared if _is_everything(r)]
            wildcard = [r for r in shared if ("+" in r.template or "#" in r.template)
                        and r not in everything]
            dollar = [r for r in shared if r.template.startswith("$")]
            if everything:
                severity = Severity.CRITICAL
            elif wildcard or dollar:
                severity = Severity.HIGH
            else:
                severity = Severity.LOW  # named topics (gateways, broadcast): explicit and narrow
            yield Finding(self.id, severity,
                          f"policy {name}: {len(shared)} shared rule(s)"
                          + (" including the whole topic tree" if everything else ""),
                          (name,),
                          {"policy": name, "devices": users.get(name, 0),
                           "shared_rules": [f"{r.action.value} {r.template}" for r in shared],
                           "whole_tree": [r.template for r in everything],
                           "cross_device_wildcards": [r.template for r in wildcard],
                           "dollar_topics": [r.template for r in dollar]},
                          "replace wildcard shared rules by per-device templates or named "
                          "topics; see the blast-radius finding for who it reaches")


def _misreadings(policy: Policy) -> list[str]:
    notes: list[str] = []
    for rule in policy.rules:
        t = rule.template
        if t.startswith("/") or t.endswith("/") or "//" in t:
            notes.append(f"{rule.action.value} {t}: an empty topic level ('/' at the start, end "
                         "or doubled) is a distinct level in MQTT, so 'a/b' and '/a/b' differ")
        if rule.action is Action.PUBLISH and ("+" in t or "#" in t):
            notes.append(f"publish {t}: a wildcard in a publish rule allows every matching "
                         "topic, not a topic named '+' or '#'")
        if t.endswith("/#") and rule.action is Action.SUBSCRIBE and rule.shared:
            notes.append(f"subscribe {t}: '/#' also matches the parent topic itself")
    for rule in policy.rules:
        rendered = rule.template.replace("{device_id}", _SYMBOLIC)
        for other in policy.rules:
            if other is rule or other.action is not rule.action:
                continue
            broader = other.template.replace("{device_id}", _SYMBOLIC)
            if broader != rendered and filter_covers(broader, rendered):
                notes.append(f"{rule.action.value} {rule.template} is already allowed by "
                             f"{other.template}: the narrower rule restricts nothing")
                break
    return notes


class PolicyMisreadable:
    """IOT_POLICY_POTENTIAL_MIS_CONFIGURATION: rules whose effect differs from how they read."""

    id = "policy-misreadable"
    title = "Policy that could be misread"
    severity = Severity.MEDIUM

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        for name, policy in sorted(snapshot.policies().items()):
            notes = _misreadings(policy)
            if notes:
                yield Finding(self.id, Severity.MEDIUM, f"policy {name}: {len(notes)} rule(s) "
                              "that could be misread", (name,), {"policy": name, "notes": notes},
                              "rewrite the rules so that each one says exactly what it allows")


# --------------------------------------------------------------------------------------------
# iotrust-specific checks


class KeyReused:
    """A factory, CSR or operational key recorded for two devices or in two roles."""

    id = "key-reused"
    title = "Key reused across devices or roles"
    severity = Severity.CRITICAL

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        for group in snapshot.key_reuse():
            devices = {u.device_id for u in group.uses if u.device_id}
            roles = {u.kind.removeprefix("seen:") for u in group.uses}
            creds = [u for u in group.uses if u.kind == "credential"]
            if len(creds) > 1 and len({u.device_id for u in creds}) > 1 and roles == {
                    "credential"}:
                continue  # reported by credential-shared
            if len(devices) <= 1 and len(roles) <= 1:
                continue
            what = (f"on {len(devices)} devices" if len(devices) > 1
                    else f"in roles {', '.join(sorted(roles))}")
            yield Finding(self.id, Severity.CRITICAL,
                          f"key {group.spki_sha256[:16]}… {what}",
                          (*sorted(devices), *(u.ref for u in group.uses if u.ref)),
                          {"spki_sha256": group.spki_sha256,
                           "uses": [{"kind": u.kind, "device_id": u.device_id, "ref": u.ref}
                                    for u in group.uses]},
                          "treat every device holding the key as cloned: retire as compromised, "
                          "ask the manufacturer how keys are generated")


class UnsafeManufacturerTrust:
    """Manufacturers trusted under the unsafe CA-only mode, and devices admitted that way."""

    id = "unsafe-manufacturer-trust"
    title = "Unsafe manufacturer trust"
    severity = Severity.HIGH

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        for m in snapshot.manufacturers():
            if m.unsafe_manufacturer_trust and not m.revoked:
                yield Finding(self.id, Severity.HIGH,
                              f"manufacturer {m.name} trusted without vouchers", (m.name,),
                              {"manufacturer": m.name, "devices": m.devices},
                              "import vouchers for its devices and turn the unsafe mode off")
        collected = _Collector(snapshot, self.id)
        for device in snapshot.unsafe_admissions():
            collected.add(device.id)
        if collected.count:
            yield Finding(self.id, Severity.MEDIUM,
                          f"{collected.count} device(s) admitted without a voucher",
                          tuple(collected.sample), collected.evidence(),
                          "confirm ownership of these devices (import their vouchers) or "
                          "quarantine them")


class WeakKeyStorage:
    """Permissions beyond the default policy held with weak keys.

    Weak: key storage none, file or unknown, or a model its hardware profile bars from sensitive
    topics (or without a profile).
    """

    id = "weak-key-storage"
    title = "Keys in weak storage for their permissions"
    severity = Severity.HIGH

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        stored = snapshot.policies()
        barred = {m.name for m in snapshot.models()
                  if m.assessment is None or not m.assessment.defaults.sensitive_topics_allowed}
        skip = snapshot.suppressed(self.id)
        for ps in snapshot.policy_sets():
            weak = ps.key_storage in WEAK_KEY_STORAGE
            model_barred = ps.model is not None and ps.model in barred
            if not (weak or model_barred) or not ps.policies:
                continue
            effective = effective_for(ps.policies, ps.state, stored)
            extra = beyond_default_rules(effective) if effective is not None else []
            if not extra:
                continue
            sample = tuple(d for d in ps.sample if d not in skip)
            why = (f"key storage {ps.key_storage}" if weak else
                   f"model {ps.model} is barred from sensitive topics by its hardware profile")
            yield Finding(self.id, Severity.HIGH,
                          f"{ps.devices} {ps.state} device(s) with {why} hold "
                          f"{', '.join(ps.policies)}", sample,
                          {"count": ps.devices, "key_storage": ps.key_storage, "model": ps.model,
                           "policies": list(ps.policies), "beyond_default": extra[:20]},
                          "move these devices to a narrower policy, or to hardware with "
                          "protected key storage")


class Zombies:
    """Retired, revoked or expired identities that still make contact."""

    id = "zombies"
    title = "Zombie identities still making contact"
    severity = Severity.HIGH

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        recent_since = snapshot.now - timedelta(days=snapshot.config.recent_zombie_days)
        recent, old = _Collector(snapshot, self.id), _Collector(snapshot, self.id)
        contacts = 0
        last: datetime | None = None
        for z in snapshot.zombies():
            target = z.device_id or z.identity
            if (recent if z.last_seen_at >= recent_since else old).add(target):
                contacts += z.contacts
                last = z.last_seen_at if last is None else max(last, z.last_seen_at)
        for collected, severity, when in ((recent, Severity.HIGH, "recently"),
                                          (old, Severity.LOW, "in the past")):
            if collected.count:
                yield Finding(self.id, severity,
                              f"{collected.count} dead identit(y/ies) made contact {when}",
                              tuple(collected.sample),
                              collected.evidence(contacts=contacts,
                                                 last_seen_at=last.isoformat() if last else None),
                              "find the hardware (iotrust zombies shows the last source); a "
                              "retired device still online was not decommissioned")


class DormantDevices:
    """Active or quarantined devices not seen for ``dormant_days``."""

    id = "dormant-devices"
    title = "Dormant devices"
    severity = Severity.MEDIUM

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        days = snapshot.config.dormant_days
        collected = _Collector(snapshot, self.id)
        never = 0
        for device in snapshot.dormant_devices(snapshot.now - timedelta(days=days)):
            if collected.add(device.id) and device.last_seen_at is None:
                never += 1
        if collected.count:
            yield Finding(self.id, Severity.MEDIUM,
                          f"{collected.count} device(s) not seen for {days} days",
                          tuple(collected.sample), collected.evidence(never_seen=never),
                          "confirm they are in service; otherwise quarantine or retire them "
                          "(iotrust devices dormant --action)")


class HardwareLifetime:
    """Device models whose hardware cannot sustain a mechanism through its planned life."""

    id = "hardware-lifetime"
    title = "Hardware cannot sustain the planned lifetime"
    severity = Severity.HIGH

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        for m in snapshot.models():
            if m.profile_error is not None:
                yield Finding(self.id, Severity.MEDIUM, f"model {m.name}: stored hardware "
                              "profile no longer validates", (m.name,),
                              {"model": m.name, "error": m.profile_error, "devices": m.devices},
                              "fix the profile and re-register the model")
                continue
            if m.assessment is None:
                yield Finding(self.id, Severity.INFO, f"model {m.name} has no hardware profile",
                              (m.name,), {"model": m.name, "devices": m.devices},
                              "register a hardware profile (iotrust model add --profile)")
                continue
            bad = [v for v in m.assessment.verdicts if v.level is not hw.Level.FEASIBLE]
            if not bad:
                continue
            impossible = any(v.level is hw.Level.IMPOSSIBLE for v in bad)
            severity = Severity.HIGH if impossible else Severity.MEDIUM
            if m.devices == 0:
                severity = Severity.LOW
            yield Finding(self.id, severity,
                          f"model {m.name}: {len(bad)} mechanism(s) "
                          f"{'impossible' if impossible else 'degraded'} until "
                          f"{m.assessment.service_end_year}", (m.name,),
                          {"model": m.name, "devices": m.devices,
                           "service_end_year": m.assessment.service_end_year,
                           "verdicts": {v.mechanism.value: {"level": v.level.value,
                                                            "reason": v.reason,
                                                            "would_change_it": v.would_change_it}
                                        for v in bad}},
                          "plan the replacement or the hardware change each verdict names; "
                          "keep credentials short-lived meanwhile")


class BlastRadius:
    """For each policy set (and so each device, credential and gateway): what it can reach."""

    id = "blast-radius"
    title = "Blast radius beyond the device's own topics"
    severity = Severity.HIGH

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        ranked = blast_radius(snapshot.policy_sets(), snapshot.policies())
        for rank, reach in enumerate(ranked, start=1):
            if reach.everything:
                severity = Severity.CRITICAL
            elif reach.reachable > 1:
                severity = Severity.HIGH
            elif reach.reachable == 1 or reach.named_devices:
                severity = Severity.LOW
            else:
                severity = Severity.INFO
            label = ", ".join(reach.policies) or "default"
            yield Finding(self.id, severity,
                          f"#{rank}: {reach.devices} {reach.state} device(s) under {label} reach "
                          f"{reach.reachable} other device(s)"
                          + (" and every topic" if reach.everything else ""),
                          reach.sample, {"rank": rank, **reach.as_dict()},
                          "narrow the shared rules to named topics; a gateway should list only "
                          "its downstream devices")


class RolloutLagging:
    """Devices stuck in a rollout, or that rolled it back or rejected it.

    Stuck: released, not committed after ``rollout_stuck_days``. Either way they run something
    other than what the fleet should.
    """

    id = "rollout-lagging"
    title = "Devices lagging or stuck in rollouts"
    severity = Severity.MEDIUM

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        days = snapshot.config.rollout_stuck_days
        per: dict[tuple[str, str, bool], tuple[_Collector, dict[str, int], str]] = {}
        for lag in snapshot.rollout_lags(snapshot.now - timedelta(days=days)):
            failed = lag.status in {"rolled_back", "rejected"}
            key = (lag.rollout_id, lag.release_id, failed)
            if key not in per:
                per[key] = (_Collector(snapshot, self.id), {}, lag.rollout_state)
            collected, statuses, _ = per[key]
            if collected.add(lag.device_id):
                statuses[lag.status] = statuses.get(lag.status, 0) + 1
        for (rollout, release, failed), (collected, statuses, state) in sorted(per.items()):
            if not collected.count:
                continue
            what = "did not take" if failed else f"stuck for over {days} days in"
            yield Finding(self.id, Severity.MEDIUM if failed else Severity.LOW,
                          f"{collected.count} device(s) {what} rollout {rollout} ({release})",
                          tuple(collected.sample),
                          collected.evidence(rollout=rollout, release=release,
                                             rollout_state=state, statuses=statuses),
                          "look at the devices' status reasons (iotrust rollout status); "
                          "re-offer or quarantine devices that cannot update")


class WithdrawnRelease:
    """Devices still running a release withdrawn by an aborted rollout."""

    id = "withdrawn-release"
    title = "Devices running a withdrawn release"
    severity = Severity.HIGH

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        per: dict[str, tuple[_Collector, set[str]]] = {}
        for row in snapshot.withdrawn_installs():
            entry = per.setdefault(row.release_id, (_Collector(snapshot, self.id), set()))
            entry[0].add(row.device_id)
            entry[1].add(row.rollout_id)
        for release, (collected, rollouts) in sorted(per.items()):
            if collected.count:
                yield Finding(self.id, Severity.HIGH,
                              f"{collected.count} device(s) run withdrawn release {release}",
                              tuple(collected.sample),
                              collected.evidence(release=release, rollouts=sorted(rollouts)),
                              "roll out a fixed release (a higher release counter) to these "
                              "devices, or quarantine them until it exists")


def blast_ranking(snapshot: Snapshot) -> list[Reach]:
    """The blast-radius ranking itself (for the report)."""
    return blast_radius(snapshot.policy_sets(), snapshot.policies())


#: Every check, in report order.
ALL_CHECKS: Final[tuple[Check, ...]] = (
    CredentialShared(), KeyReused(), ConfigCopied(), WeakDeviceKey(), WeakCaKey(),
    RevokedStillTrusted(), CaExpiring(), CredentialExpiring(), CredentialAge(),
    ConflictingClientIds(), PolicyOverlyPermissive(), PolicyMisreadable(), BlastRadius(),
    WeakKeyStorage(), KeyStorageUnderused(), UnsafeManufacturerTrust(), Zombies(),
    DormantDevices(), HardwareLifetime(),
    RolloutLagging(), WithdrawnRelease(), EventLogIntegrity(),
)


def check_by_id(check_id: str, checks: Sequence[Check] = ALL_CHECKS) -> Check:
    """The check named ``check_id``; ``InputError(unknown_check)`` otherwise."""
    for check in checks:
        if check.id == check_id:
            return check
    raise InputError(f"no audit check {check_id!r:.60}", reason="unknown_check")

