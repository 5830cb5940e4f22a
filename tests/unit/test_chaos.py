"""The chaos harness's bookkeeping: the disruption plan, the fuzzed inputs, and the verdict."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from bench.chaos import (
    BAD_KINDS,
    TUMBLING_MS,
    ChaosOptions,
    Input,
    Observed,
    StallWatch,
    assess,
    bad_value,
    make_inputs,
    plan_disruptions,
)
from stream.core.codec import decode_message
from stream.core.errors import PoisonRecord
from stream.core.records import RawRecord

T0 = 1_763_632_800_000


def test_the_plan_spreads_every_disruption_and_follows_each_join_with_a_leave() -> None:
    opts = ChaosOptions(messages=1000, rate=10, kills=3, terms=1, joins=2, join_kills=1, pauses=1)
    plan = plan_disruptions(opts)
    kinds = Counter(step.kind for step in plan)
    assert kinds == {"kill": 3, "term": 1, "join": 3, "leave": 2, "kill_b": 1, "pause": 1}
    times = [step.at_s for step in plan]
    assert times == sorted(times)
    assert times[0] >= 10  # within the middle 80% of 100 s
    assert times[-1] <= 90
    for index, step in enumerate(plan):
        if step.kind == "join":
            assert plan[index + 1].kind in ("leave", "kill_b")


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_each_bad_kind_is_rejected_by_the_codec_with_its_reason(kind: str) -> None:
    import random

    value = bad_value(kind, "nonce-1", random.Random(1))
    record = RawRecord(value=value, key=None, topic="t", partition=0, offset=0, timestamp_ms=T0)
    with pytest.raises(PoisonRecord) as caught:
        decode_message(record, max_bytes=64 * 1024)
    assert caught.value.reason == BAD_KINDS[kind]


def test_inputs_hold_about_the_bad_fraction_and_unique_values() -> None:
    inputs = make_inputs(ChaosOptions(messages=2000, bad_fraction=0.05, seed=3), "r")
    bad = [i for i in inputs if i.id is None]
    assert 60 <= len(bad) <= 140
    assert len({i.value for i in inputs}) == len(inputs)


def good(message_id: str) -> Input:
    return Input(orjson.dumps({"id": message_id}), message_id, None)


def test_assess_counts_losses_duplicates_disagreements_and_inexact_windows() -> None:
    inputs = [good("a"), good("b"), good("c"), Input(b"\xff1", None, "invalid_utf8")]
    observed = Observed()
    observed.event_time_ms = {"a": T0 + 1, "b": T0 + 2, "c": T0 + TUMBLING_MS + 1}
    observed.events["a"] += ["POSITIVE", "POSITIVE"]  # a duplicate after a crash
    observed.events["b"] += ["NEGATIVE"]
    observed.dead_letters.append((b"\xff1", "invalid_utf8"))
    start = "2025-11-20T10:00:00.000Z"
    observed.finals[f"all|tumbling|{start}"] = {"counts": {"POSITIVE": 1, "NEGATIVE": 1}}
    result = assess(inputs, observed, lambda _m: ["all"], T0 + 10 * TUMBLING_MS, lambda _iso: T0)
    assert result["lost"] == 1
    assert result["lost_ids"] == ["c"]
    assert result["duplicate_events"] == 1
    assert result["label_disagreements"] == 0
    assert (result["bad_not_dead_lettered"], result["bad_with_wrong_reason"]) == (0, 0)
    assert (result["windows_exact"], result["windows_total"]) == (1, 1)

    observed.events["b"].append("POSITIVE")  # a copy with another label
    observed.finals[f"all|tumbling|{start}"] = {"counts": {"POSITIVE": 2, "NEGATIVE": 1}}
    result = assess(inputs, observed, lambda _m: ["all"], T0 + 10 * TUMBLING_MS, lambda _iso: T0)
    assert result["label_disagreements"] == 1
    assert (result["windows_exact"], result["windows_total"]) == (0, 1)


def test_a_dead_letter_with_the_wrong_reason_is_reported() -> None:
    inputs = [Input(b"x", None, "invalid_json")]
    observed = Observed()
    observed.dead_letters.append((b"x", "oversize"))
    result = assess(inputs, observed, lambda _m: [], T0, lambda _iso: T0)
    assert result["bad_with_wrong_reason"] == 1


def test_stall_watch_measures_lag_without_progress_only() -> None:
    watch = StallWatch()
    watch.observe(0.0, {"p0": 10, "p1": 10}, {"p0": 0, "p1": 10})
    watch.observe(5.0, {"p0": 10, "p1": 12}, {"p0": 0, "p1": 11})
    watch.observe(9.0, {"p0": 10, "p1": 14}, {"p0": 4, "p1": 13})
    watch.observe(12.0, {"p0": 10, "p1": 14}, {"p0": 4, "p1": 14})
    assert watch.longest_s == {"p0": 5.0, "p1": 0.0}  # 0-5 s stood still, then moved at 9 s
    assert watch.worst() == 5.0
