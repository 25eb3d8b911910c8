"""Property tests: envelope round trip, bit flips, the parse boundary, the replay window model."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotrust.core import envelope as e
from iotrust.core.freshness import ReplayWindow
from iotrust.core.ids import new_device_id
from iotrust.errors import InputError, TrustError


class Key:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


KEY = Key()
_topic_chars = st.characters(blacklist_characters="+#\x00", blacklist_categories=("Cs",))

fields = st.fixed_dictionaries({
    "device_id": st.binary(min_size=16, max_size=16).map(new_device_id),
    "counter": st.integers(0, e.MAX_COUNTER),
    "timestamp": st.integers(0, e.MAX_TIMESTAMP_MS),
    "topic": st.text(_topic_chars, min_size=1, max_size=60),
    "content_type": st.one_of(st.integers(0, 65535),
                              st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                      min_size=1, max_size=40)),
    "kid": st.binary(min_size=1, max_size=32),
})
payloads = st.binary(max_size=400)


@settings(max_examples=150, deadline=None)
@given(fields, payloads)
def test_round_trip(f: dict[str, Any], payload: bytes) -> None:
    data = e.seal(payload, signer=KEY, **f)
    env = e.open_envelope(data)
    assert {k: getattr(env, k) for k in f} == f
    assert env.payload == payload
    assert env.encode() == data
    e.verify_signature(env, KEY.public_key)
    assert e.overhead(payload_len=len(payload), **f) == len(data) - len(payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields, payloads, st.data())
def test_any_single_bit_flip_is_refused(f: dict[str, Any], payload: bytes,
                                        data: st.DataObject) -> None:
    sealed = e.seal(payload, signer=KEY, **f)
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    flipped = bytearray(sealed)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert _refusal(bytes(flipped)) in {"malformed_envelope", "signature_invalid"}, bit


def _refusal(data: bytes) -> str | None:
    """The reason ``data`` is refused (parse or signature), or None if it verifies."""
    try:
        e.verify_signature(e.open_envelope(data), KEY.public_key)
    except (InputError, TrustError) as exc:
        return exc.reason
    return None


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_input_error(data: bytes) -> None:
    assert _parse_refusal(data) in {None, "malformed_envelope"}


def _parse_refusal(data: bytes) -> str | None:
    try:
        e.open_envelope(data)
    except InputError as exc:
        return exc.reason
    return None


@settings(max_examples=300, deadline=None)
@given(fields, payloads, st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)),
                                  min_size=1, max_size=8))
def test_mutated_envelopes_raise_only_input_error(f: dict[str, Any], payload: bytes,
                                                  edits: list[tuple[int, int]]) -> None:
    data = bytearray(e.seal(payload, signer=KEY, **f))
    for pos, value in edits:
        data[pos % len(data)] = value
    assert _parse_refusal(bytes(data)) in {None, "malformed_envelope"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_generic_cose_decoder_raises_only_input_error(data: bytes, tagged: bool) -> None:
    reason = None
    try:
        e.decode_cose_sign1(data, require_tag=tagged)
    except InputError as exc:
        reason = exc.reason
    assert reason in {None, "malformed_cose"}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([1, 2, 8, 64, 65, 128]),
       st.lists(st.integers(0, 400), max_size=200))
def test_replay_window_matches_a_brute_force_model(size: int, counters: list[int]) -> None:
    """Model: accept c iff c was never accepted and c > max(accepted) - size."""
    window = ReplayWindow(size)
    accepted: set[int] = set()
    for c in counters:
        expect = c not in accepted and (not accepted or c > max(accepted) - size)
        assert window.would_accept(c) == expect
        reason = None
        try:
            window.check_and_update(c)
        except TrustError as exc:
            reason = exc.reason
        assert reason == (None if expect else "replayed")
        if expect:
            accepted.add(c)
        assert window.highest == (max(accepted) if accepted else -1)
        # the bitmap says exactly which counters of the window were accepted
        for i in range(size):
            assert bool(window.bitmap >> i & 1) == (window.highest - i in accepted)
