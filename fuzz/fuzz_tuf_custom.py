"""Fuzz target: the custom fields of TUF targets (``updates.parse_custom``).

It returns release or configuration info or raises ``TrustError(invalid_custom)``. Anything else
escaping is a crash. Run: ``python fuzz/fuzz_tuf_custom.py [corpus] [libFuzzer options]`` (see
fuzz/README.md).
"""

from __future__ import annotations

import _harness
import atheris

with atheris.instrument_imports(include=["iotrust"]):
    import json

    from iotrust.core import updates
    from iotrust.errors import TrustError

def test_one_input(data: bytes) -> None:
    """Parse the JSON ``data`` holds as a target's custom fields."""
    try:
        custom = json.loads(data)
    except (ValueError, RecursionError):  # not JSON: json.loads, not our decoder
        return
    try:
        updates.parse_custom(custom)
    except TrustError as exc:
        if exc.reason != "invalid_custom":
            raise


SEEDS = ((b'{"kind":"release","component":"fw","hardware":["hw-a"],"release_counter":3,'
         b'"min_agent_version":"0.1.0"}'),
         b'{"kind":"config","scope":"fleet","config_version":2}')


if __name__ == "__main__":
    _harness.run(test_one_input, SEEDS)
