"""Every rotation decoder raises only InputError on arbitrary bytes and JSON-ish input."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from iotrust.core import rotation as rot
from iotrust.errors import InputError

DECODERS = (rot.BeginRequest, rot.BeginResponse, rot.CompleteRequest, rot.CompleteResponse,
            rot.ConfirmRequest)
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=20)


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_bytes_only_input_error(data: bytes) -> None:
    for cls in DECODERS:
        with contextlib.suppress(InputError):
            cls.from_wire(data)


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(sorted(set().union(*(c.FIELDS for c in DECODERS)))),
                       _json, max_size=8))
def test_shaped_objects_only_input_error(obj: dict[str, object]) -> None:
    data = json.dumps(obj).encode()
    for cls in DECODERS:
        with contextlib.suppress(InputError):
            cls.from_wire(data)
