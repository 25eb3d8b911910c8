"""The soak's judgements (``benchmarks/soak_memory.py``, ``soak_mqtt.py``) on made-up data.

The soak itself needs a server, a broker and minutes; these check only that its verdicts say
what its README promises: a flat series after warm-up is bounded, a steady climb is growing, a
handful of samples is too short; a message ingest did not store is excused only by a state
change after it was sealed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from benchmarks import soak_memory, soak_mqtt


def _series(values: list[float]) -> list[tuple[float, float]]:
    return [(10.0 * i, v) for i, v in enumerate(values)]


def test_flat_after_warm_up_is_bounded() -> None:
    values = [90.0, 100.0, 110.0] + [112.0, 112.5, 112.2] * 5
    assert soak_memory.verdict(_series(values))["verdict"] == "bounded"


def test_steady_climb_is_growing() -> None:
    values = [100.0 + 0.5 * i for i in range(30)]
    v = soak_memory.verdict(_series(values))
    assert v["verdict"] == "growing"
    assert v["slope_second_half_mib_per_hour"] > 100


def test_few_samples_are_too_short() -> None:
    assert soak_memory.verdict(_series([1.0, 2.0, 3.0]))["verdict"] == "too short"


def test_verdicts_cover_every_process_and_the_total() -> None:
    samples = [{"t_s": 10.0 * i, "mib": {"a": 10.0, "b": 20.0}} for i in range(12)]
    out = soak_memory.verdicts(samples)
    assert set(out) == {"a", "b", "total"}
    assert out["total"]["last_mib"] == 30.0


def _sent(counter: int, sealed_ms: int, *, expect: bool = True,
          answer: int | str = 0) -> soak_mqtt.Sent:
    return soak_mqtt.Sent("dev-a", counter, sealed_ms, expect, answer)


def test_verdicts_judge_only_the_steady_phase_after_churn() -> None:
    # climbing while revocations grow the CRL (first 400 s), flat afterwards
    values = [100.0 + 0.5 * i for i in range(40)] + [120.0, 120.3, 119.8] * 8
    samples = [{"t_s": 10.0 * i, "mib": {"serve.worker.1": v}} for i, v in enumerate(values)]
    assert soak_memory.verdicts(samples)["serve.worker.1"]["verdict"] == "growing"
    steady = soak_memory.verdicts(samples, since_s=400.0)["serve.worker.1"]
    assert steady["verdict"] == "bounded"
    assert steady["samples"] == 24
    assert steady["first_mib"] == 100.0  # the run's first sample
    assert steady["steady_first_mib"] == 120.0
    assert steady["max_mib"] == 120.3


def test_ingest_report_excuses_only_messages_followed_by_a_change() -> None:
    ledger = soak_mqtt.Ledger()
    for item in (_sent(0, 1_000), _sent(1, 2_000), _sent(2, 100_000),
                 _sent(3, 3_000, expect=False, answer=0x87)):
        ledger.add(item)
    stored = [("dev-a", 0, datetime.fromtimestamp(1.05, UTC), 1_000)]
    # counter 1: rotated 5 s after sealing (excused); counter 2: nothing changed after it
    report = soak_mqtt.ingest_report(ledger, stored, {"dev-a": [7_000]})
    assert report["stored"] == 1
    assert report["not_stored_after_a_state_change"] == 1
    assert report["not_stored_without_a_state_change"] == ["dev-a#2"]
    assert report["errors"] == 1
    assert report["publish_to_ingest_ms"]["p50"] == 50.0


def test_ingest_report_flags_a_stored_message_the_broker_refused() -> None:
    ledger = soak_mqtt.Ledger()
    ledger.add(_sent(0, 1_000, expect=False, answer=0x87))
    stored = [("dev-a", 0, datetime.fromtimestamp(1.0, UTC), 1_000)]
    report = soak_mqtt.ingest_report(ledger, stored, {})
    assert report["errors"] == 1
    assert report["stored_but_should_be_refused"]
