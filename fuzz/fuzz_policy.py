"""Fuzz target: policy.

policy templates and stored rules (``policy.rules_from_json``, ``policy.Rule``), and MQTT decisions
on any topic (``policy.decide``). Parsing returns rules or raises ``InputError``; a decision never
raises. Anything else escaping is a crash. Run: ``python fuzz/fuzz_policy.py [corpus] [libFuzzer
options]`` (see fuzz/README.md).
"""

from __future__ import annotations

import contextlib

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    import json

    from iotrust.core import policy
    from iotrust.core.lifecycle import DeviceState
    from iotrust.errors import InputError

DEVICE = "dev-" + "a" * 26
STATES = list(DeviceState)


def test_one_input(data: bytes) -> None:
    """Use ``data`` as a stored rule list (JSON), as one template and as a requested topic."""
    fdp = atheris.FuzzedDataProvider(data)
    state = STATES[fdp.ConsumeIntInRange(0, len(STATES) - 1)]
    action = policy.Action.PUBLISH if fdp.ConsumeBool() else policy.Action.SUBSCRIBE
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    assigned = None
    try:
        assigned = policy.Policy("fuzz", policy.rules_from_json(json.loads(text)))
    except (ValueError, RecursionError):  # not JSON: json.loads, not our decoder
        pass
    except InputError:
        pass
    with contextlib.suppress(InputError):
        policy.Rule(action, text)
    decision = policy.decide(DEVICE, state, assigned, action, text)
    if not isinstance(decision.allowed, bool):
        raise TypeError("a decision is allow or deny")
    policy.filter_covers(text, text)


SEEDS = (b"\x01\x01devices/{device_id}/telemetry",
         b'\x01\x00[{"action":"publish","template":"devices/{device_id}/up","shared":false}]')


if __name__ == "__main__":
    _harness.run(test_one_input, SEEDS)
