"""Fault injection for crash-safety tests: die by SIGKILL at a named point inside a service.

When the environment variable ``IOTRUST_FAULT_AT`` names a checkpoint (``NAME`` or ``NAME:N``
for the N-th time that point is reached, counting from 1), :func:`checkpoint` sends the current
process ``SIGKILL`` there: no ``finally`` block, no rollback handler, no atexit hook runs, exactly
like a power cut or the OOM killer. The variable is read once, at import; without it a
checkpoint is one comparison against ``None``. ``tests/integration/test_crash_safety.py`` kills
``iotrust serve`` and the operator commands at every checkpoint and checks the invariants after
a restart.

"Before commit" checkpoints sit as the last statement inside a transaction's ``with`` block (the
process dies with the transaction open: the database must roll it back); "committed" ones sit
right after the block, before any effect outside the database (response, CRL file, broker).

Checkpoints (``service.step.point``):

Onboarding (:mod:`iotrust.services.onboarding`, in ``iotrust serve``)
  ``onboarding.hello.committed``        session opened and committed, hello not yet answered
  ``onboarding.attest.nonce_spent``     nonce spent, not committed (one transaction), nothing issued
  ``onboarding.attest.before_commit``   credential, key and event written, not committed
  ``onboarding.attest.committed``       credential committed, attest not yet answered
  ``onboarding.confirm.before_commit``  device ACTIVE and credential ACTIVE written, not committed
  ``onboarding.confirm.committed``      confirmation committed, not yet answered

Rotation (:mod:`iotrust.services.rotation`, in ``iotrust serve``)
  ``rotation.begin.committed``          rotation session opened, begin not yet answered
  ``rotation.complete.nonce_spent``     nonce spent (committed), new credential not issued
  ``rotation.complete.committed``       new credential committed, complete not yet answered
  ``rotation.confirm.before_commit``    new ACTIVE / old SUPERSEDED+REVOKED written, not committed
  ``rotation.confirm.committed``        confirmation committed; CRL not republished, no kick
  ``rotation.enforce.published``        CRL files republished, not installed in the broker

Containment (:mod:`iotrust.services.devices`, :mod:`iotrust.services.broker`; ``iotrust
quarantine``/``release``/``retire`` and the operator API)
  ``devices.transition.before_commit``  state change, revocations and event written, not committed
  ``broker.retire.committed``           retirement committed; CRL not republished
  ``broker.before_crl_install``         (retirement, broker configured) before the CRL step
  ``broker.retire.crl_published``       CRL files republished; not installed in the broker
  ``broker.before_rules``               transition committed; ACL not regenerated
  ``broker.before_kick``                ACL written and broker reloaded; device not kicked
                                        (only when the broker runs)

CRL publication (:mod:`iotrust.services.credentials`, wherever it runs)
  ``crl.publish.before_bundle``         per-CA CRL files replaced, ``all.crl.pem`` not yet

Rollouts (:mod:`iotrust.services.rollouts`)
  ``rollouts.report.committed``         status report and rollout advance committed; director
                                        metadata not yet rewritten

This module does nothing else: it never decides, logs or recovers anything.
"""

from __future__ import annotations

import os
import signal
from typing import Final

__all__ = ["ENV", "checkpoint"]

#: The environment variable naming the checkpoint to die at (``NAME`` or ``NAME:N``).
ENV: Final = "IOTRUST_FAULT_AT"


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, sep, nth = value.partition(":")
    if not sep:
        return name, 1
    try:
        n = int(nth)
    except ValueError:
        raise RuntimeError(f"{ENV} must be NAME or NAME:N with N >= 1") from None
    if n < 1:
        raise RuntimeError(f"{ENV} must be NAME or NAME:N with N >= 1")
    return name, n


_TARGET: Final = _parse(os.environ.get(ENV))
_hits = 0


def checkpoint(name: str) -> None:
    """Die here by ``SIGKILL`` if ``IOTRUST_FAULT_AT`` names this point (and this hit)."""
    if _TARGET is None or _TARGET[0] != name:
        return
    global _hits  # noqa: PLW0603 - one counter per process, only ever used under fault injection
    _hits += 1
    if _hits == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
