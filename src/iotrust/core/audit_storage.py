"""Key storage against the hardware: the ``key-storage-underused`` audit check (DESIGN.md §10).

A device model whose hardware profile offers protected key storage (a secure element, a TPM 2.0
or a TrustZone secure world) can keep its devices' operational keys out of reach of the
firmware and of a debug probe. A device of that model whose recorded key storage
(``devices.key_storage``, capped by :func:`iotrust.core.onboarding.key_storage.
recorded_key_storage`) is ``none``, ``file`` or ``software`` does not use it: a provisioning
shortcut (firmware built with a file key store, a factory script that skipped the secure
element). Its key can be copied off the device although the hardware could have prevented it.

Findings, one per model and tier, aggregated over the model's policy sets of ``active`` and
``quarantined`` devices (``expected`` devices hold no operational key yet, ``retired`` ones no
longer matter):

* **medium** — devices with weaker storage holding only the default policy's permissions;
* **high** — devices with weaker storage holding permissions beyond the default policy
  (decided as ``weak-key-storage`` decides it: :func:`beyond_default_rules` of the set's
  effective policy);
* **low** — devices whose storage is ``unknown`` (no claim in their hello, or a claim the
  profile could not back): the audit cannot tell whether the hardware is used, so they are
  reported separately rather than folded into the findings above, which state a fact.

``pkcs11``, ``secure_element`` and ``tpm`` count as using the hardware (PKCS#11 is how firmware
usually reaches a secure element or TPM; a recorded protected kind other than the profile's is
already recorded as ``unknown`` at onboarding). Models without protected storage, or without a
profile, are out of scope here: a ``file`` key on hardware that cannot do better is
``weak-key-storage``'s business (when the permissions call for more) and ``hardware-lifetime``'s.
This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from iotrust.core.audit import Finding, Snapshot
from iotrust.core.audit_keys import Severity
from iotrust.core.audit_reach import effective_for
from iotrust.core.hardware import PROTECTED_STORAGE, STORAGE_NAMES
from iotrust.core.lifecycle import DeviceState, KeyStorage
from iotrust.core.onboarding.key_storage import SOFTWARE_STORAGE
from iotrust.core.policy import DEFAULT_POLICY, Policy, Rule, filter_covers

__all__ = ["UNUSED_HARDWARE_STORAGE", "KeyStorageUnderused", "beyond_default_rules"]

_SYMBOLIC: Final = "dev-" + "a" * 26

#: Recorded key storage that does not use protected hardware (as values stored in the registry).
UNUSED_HARDWARE_STORAGE: Final = frozenset(s.value for s in SOFTWARE_STORAGE)
_STATES: Final = frozenset({DeviceState.ACTIVE.value, DeviceState.QUARANTINED.value})


def _beyond_default(rule: Rule) -> bool:
    if rule.shared:
        return True
    mine = rule.template.replace("{device_id}", _SYMBOLIC)
    return not any(d.action is rule.action and filter_covers(
        d.template.replace("{device_id}", _SYMBOLIC), mine) for d in DEFAULT_POLICY.rules)


def beyond_default_rules(policy: Policy) -> list[str]:
    """Rules beyond the default policy's own-topic rules (shared or extra topics)."""
    return [f"{r.action.value} {r.template}" for r in policy.rules if _beyond_default(r)]


@dataclass(slots=True)
class _Tier:
    """Devices of one model in one finding tier."""

    count: int = 0
    by_storage: dict[str, int] = field(default_factory=dict)
    policies: set[str] = field(default_factory=set)
    beyond_default: list[str] = field(default_factory=list)
    sample: list[str] = field(default_factory=list)


class KeyStorageUnderused:
    """Devices that keep keys in weaker storage than their model's hardware offers."""

    id = "key-storage-underused"
    title = "Protected key storage in the hardware left unused"
    severity = Severity.MEDIUM

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        """One finding per (model, tier); see the module docstring."""
        offered = {m.name: m.assessment.profile.key_storage for m in snapshot.models()
                   if m.assessment is not None
                   and m.assessment.profile.key_storage in PROTECTED_STORAGE}
        if not offered:
            return
        stored = snapshot.policies()
        skip = snapshot.suppressed(self.id)
        limit = snapshot.config.max_affected
        tiers: dict[tuple[str, Severity], _Tier] = {}
        for ps in snapshot.policy_sets():
            if ps.model not in offered or ps.state not in _STATES or ps.devices <= 0:
                continue
            if ps.key_storage == KeyStorage.UNKNOWN.value:
                severity, extra = Severity.LOW, []
            elif ps.key_storage in UNUSED_HARDWARE_STORAGE:
                effective = effective_for(ps.policies, ps.state, stored)
                extra = beyond_default_rules(effective) if effective is not None else []
                severity = Severity.HIGH if extra else Severity.MEDIUM
            else:
                continue
            tier = tiers.setdefault((ps.model, severity), _Tier())
            tier.count += ps.devices
            tier.by_storage[ps.key_storage] = tier.by_storage.get(ps.key_storage, 0) + ps.devices
            tier.policies.update(ps.policies)
            tier.beyond_default.extend(r for r in extra if r not in tier.beyond_default)
            room = limit - len(tier.sample)
            tier.sample.extend([d for d in ps.sample if d not in skip][:max(0, room)])
        for (model, severity), tier in sorted(tiers.items()):
            yield self._finding(model, STORAGE_NAMES[offered[model]], severity, tier,
                                offered[model].value)

    def _finding(self, model: str, hardware: str, severity: Severity, tier: _Tier,
                 profile_storage: str) -> Finding:
        evidence = {"count": tier.count, "model": model, "profile_key_storage": profile_storage,
                    "recorded_key_storage": dict(sorted(tier.by_storage.items())),
                    "policies": sorted(tier.policies)}
        if severity is Severity.LOW:
            return Finding(self.id, severity,
                           f"model {model}: {tier.count} device(s) with unknown key storage on "
                           f"hardware with a {hardware}", tuple(tier.sample), evidence,
                           "check which key store their firmware uses and have it state its "
                           "key storage in the hello (re-onboard or rotate to record it)")
        evidence["beyond_default"] = tier.beyond_default[:20]
        stores = ", ".join(sorted(tier.by_storage))
        held = " holding permissions beyond the default policy" if tier.beyond_default else ""
        return Finding(self.id, severity,
                       f"model {model}: {tier.count} device(s) keep keys in {stores} although "
                       f"the hardware has a {hardware}{held}", tuple(tier.sample), evidence,
                       f"provision keys in the {hardware} (fix the firmware's key store, then "
                       "rotate these devices' credentials so the new key never leaves it)")
