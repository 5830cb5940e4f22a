"""Window arithmetic: scored facts -> tumbling/hopping windows -> counts, ratios, records."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass

import orjson
import pytest

from stream.core.codec import format_time_ms
from stream.core.windows import (
    GLOBAL_KEY,
    FoldResult,
    KeyState,
    ScoredFact,
    UpdateThrottle,
    WindowCounts,
    WindowId,
    WindowKind,
    WindowPolicy,
    WindowSpec,
    aggregate_keys,
    close_idle,
    default_policy,
    describe_key,
    fold_event,
    fold_facts,
    positive_ratio,
    resume_partitions,
    window_record,
)

# 2027-01-15T08:00:00.000Z: a multiple of every step used here (60 s, 100 s, 300 s).
BASE = 1_800_000_000_000
BASE_ISO = "2027-01-15T08:00:00.000Z"
MINUTE = 60_000
GRACE = 30_000
POLICY = default_policy()  # tumbling 60 s; hopping 300 s every 60 s; grace 30 s; history 10
LABELS = ("POSITIVE", "NEGATIVE", "NEUTRAL")


@dataclass
class Feeder:
    """Folds facts into one KeyState, numbering offsets per origin like a consumer would."""

    state: KeyState
    policy: WindowPolicy = POLICY
    next_offset: int = 0

    def feed(
        self,
        event_time_ms: int,
        label: str = "POSITIVE",
        score: float = 0.9,
        *,
        origin: str = "scored/0",
        offset: int | None = None,
        now_ms: int = 0,
        uncertain: bool = False,
        in_scope: bool = True,
    ) -> FoldResult:
        if offset is None:
            offset = self.next_offset
            self.next_offset += 1
        fact = ScoredFact(
            key=self.state.key,
            event_time_ms=event_time_ms,
            label=label,
            score=score,
            model_name="minilm",
            origin=origin,
            offset=offset,
            uncertain=uncertain,
            in_scope=in_scope,
        )
        return fold_event(self.state, fact, self.policy, now_ms)


def new_feeder(policy: WindowPolicy = POLICY, key: str = GLOBAL_KEY) -> Feeder:
    return Feeder(KeyState(key), policy)


def snapshot(state: KeyState) -> bytes:
    """A deep, immutable picture of the state (to_json shares its dicts with the live state)."""
    return orjson.dumps(state.to_json())


def open_counts(state: KeyState, kind: WindowKind) -> dict[int, dict[str, int]]:
    return {start: dict(w.counts) for start, w in state.open.get(kind, {}).items()}


def expected_counts(events: list[tuple[int, str]], spec: WindowSpec) -> dict[int, dict[str, int]]:
    """Brute force: each step-aligned start whose window [start, start + size) holds t."""
    windows: dict[int, Counter[str]] = {}
    for t, label in events:
        start = (t - spec.size_ms) // spec.step_ms * spec.step_ms
        while start <= t:
            if start <= t < start + spec.size_ms:
                windows.setdefault(start, Counter())[label] += 1
            start += spec.step_ms
    return {start: dict(c) for start, c in windows.items()}


# --- WindowSpec.starts_for ----------------------------------------------------------------------

TUMBLING = WindowSpec("tumbling", MINUTE, MINUTE)
HOPPING = WindowSpec("hopping", 5 * MINUTE, MINUTE)


@pytest.mark.parametrize(
    ("event_time_ms", "start"),
    [
        (0, 0),
        (1, 0),
        (59_999, 0),
        (60_000, 60_000),
        (60_001, 60_000),
        (119_999, 60_000),
        (BASE, BASE),
        (BASE + 59_999, BASE),
        (BASE + 60_000, BASE + 60_000),
    ],
)
def test_tumbling_event_belongs_to_exactly_one_window_starting_on_a_boundary(
    event_time_ms: int, start: int
) -> None:
    assert TUMBLING.starts_for(event_time_ms) == [start]


@pytest.mark.parametrize(
    "event_time_ms", [300_000, 300_001, 359_999, 360_000, 425_123, BASE, BASE + 299_999]
)
def test_hopping_event_belongs_to_five_windows_oldest_first_each_containing_it(
    event_time_ms: int,
) -> None:
    starts = HOPPING.starts_for(event_time_ms)
    assert len(starts) == 5
    assert starts == sorted(starts)
    assert [b - a for a, b in itertools.pairwise(starts)] == [MINUTE] * 4
    for start in starts:
        assert start % MINUTE == 0
        assert start <= event_time_ms < start + HOPPING.size_ms
    # ... and they are all the windows containing it.
    assert set(starts) == set(expected_counts([(event_time_ms, "X")], HOPPING))


def test_hopping_on_boundary_opens_new_window_and_leaves_the_one_ending_there() -> None:
    starts = HOPPING.starts_for(300_000)
    assert starts == [60_000, 120_000, 180_000, 240_000, 300_000]
    assert 0 not in starts  # [0, 300_000) ends exactly at t: end is exclusive


@pytest.mark.parametrize(
    ("kind", "size_ms", "step_ms"),
    [
        ("hopping", 300_000, 70_000),  # size not a multiple of step
        ("hopping", 60_000, 120_000),  # step larger than size
        ("tumbling", 60_000, 30_000),  # tumbling must advance by its size
        ("tumbling", 0, 0),
        ("hopping", 0, 60_000),
        ("hopping", 300_000, 0),
        ("tumbling", -60_000, -60_000),
    ],
)
def test_invalid_window_spec_raises_value_error(
    kind: WindowKind, size_ms: int, step_ms: int
) -> None:
    with pytest.raises(ValueError, match=r"window|tumbling"):
        WindowSpec(kind, size_ms, step_ms)


def test_default_policy_converts_seconds_to_milliseconds() -> None:
    policy = default_policy(tumbling_s=10, hopping_s=120, hop_s=30, grace_s=5, history=3)
    assert policy.spec("tumbling") == WindowSpec("tumbling", 10_000, 10_000)
    assert policy.spec("hopping") == WindowSpec("hopping", 120_000, 30_000)
    assert policy.grace_ms == 5_000
    assert policy.history == 3
    with pytest.raises(KeyError):
        policy.spec("session")


# --- aggregate keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "channel", "keys"),
    [
        (None, None, ["all", "source=unknown"]),
        ("", None, ["all", "source=unknown"]),
        ("twitter", None, ["all", "source=twitter"]),
        ("twitter", "", ["all", "source=twitter"]),
        ("twitter", "news", ["all", "source=twitter", "source=twitter,channel=news"]),
        (None, "news", ["all", "source=unknown", "source=unknown,channel=news"]),
    ],
)
def test_aggregate_keys_cover_overall_source_and_channel(
    source: str | None, channel: str | None, keys: list[str]
) -> None:
    assert aggregate_keys(source, channel) == keys


@pytest.mark.parametrize(
    ("source", "channel"),
    [(None, None), ("twitter", None), ("twitter", "news"), (None, "news"), ("rss", "a-b_c")],
)
def test_describe_key_inverts_aggregate_keys(source: str | None, channel: str | None) -> None:
    overall, by_source, *by_channel = aggregate_keys(source, channel)
    expected_source = source or "unknown"
    assert describe_key(overall) == {"dimension": "all", "source": None, "channel": None}
    assert describe_key(by_source) == {
        "dimension": "source",
        "source": expected_source,
        "channel": None,
    }
    if channel:
        assert by_channel
        assert describe_key(by_channel[0]) == {
            "dimension": "channel",
            "source": expected_source,
            "channel": channel,
        }
    else:
        assert by_channel == []


# --- ratios -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("positive", "negative", "ratio"),
    [(3, 1, 0.75), (1, 1, 0.5), (0, 2, 0.0), (2, 0, 1.0), (1, 2, 1 / 3), (0, 0, None)],
)
def test_positive_ratio_is_positive_over_polar(
    positive: int, negative: int, ratio: float | None
) -> None:
    assert positive_ratio(positive, negative) == pytest.approx(ratio)


def test_window_with_only_neutral_has_no_ratio_but_a_mean() -> None:
    window = WindowCounts(0)
    window.add("NEUTRAL", 0.5)
    window.add("NEUTRAL", 0.7)
    assert window.total == 2
    assert window.positive_ratio is None
    assert window.mean_score == pytest.approx(0.6)


def test_empty_window_has_no_ratio_and_no_mean() -> None:
    window = WindowCounts(0)
    assert window.total == 0
    assert window.positive_ratio is None
    assert window.mean_score is None


def test_window_counts_labels_and_averages_scores() -> None:
    window = WindowCounts(0)
    for label, score in [("POSITIVE", 0.9), ("POSITIVE", 0.8), ("NEGATIVE", 0.7), ("NEUTRAL", 0.6)]:
        window.add(label, score)
    assert window.counts == {"POSITIVE": 2, "NEGATIVE": 1, "NEUTRAL": 1}
    assert window.total == 4
    assert window.positive_ratio == pytest.approx(2 / 3)
    assert window.mean_score == pytest.approx(0.75)


# --- fold_event: counting -----------------------------------------------------------------------


def test_fold_counts_each_label_in_its_tumbling_and_hopping_windows() -> None:
    feeder = new_feeder()
    events = [
        (BASE + 1_000, "POSITIVE"),
        (BASE + 2_000, "NEGATIVE"),
        (BASE + 59_999, "POSITIVE"),
        (BASE + 60_000, "NEUTRAL"),
        (BASE + 61_000, "NEGATIVE"),
    ]
    for t, label in events:
        result = feeder.feed(t, label)
        assert not result.duplicate
        assert result.closed == []
        assert result.late_kinds == []
        assert [kind for kind, _ in result.updated] == ["tumbling"] + ["hopping"] * 5
        assert [w.start_ms for _, w in result.updated] == TUMBLING.starts_for(
            t
        ) + HOPPING.starts_for(t)

    assert open_counts(feeder.state, "tumbling") == {
        BASE: {"POSITIVE": 2, "NEGATIVE": 1},
        BASE + MINUTE: {"NEUTRAL": 1, "NEGATIVE": 1},
    }
    assert open_counts(feeder.state, "hopping") == expected_counts(events, HOPPING)
    assert open_counts(feeder.state, "hopping")[BASE] == {
        "POSITIVE": 2,
        "NEGATIVE": 2,
        "NEUTRAL": 1,
    }
    assert feeder.state.stream_time_ms == BASE + 61_000
    assert feeder.state.late == {}
    assert feeder.state.model_name == "minilm"


def test_fold_sums_scores_for_the_mean() -> None:
    feeder = new_feeder()
    feeder.feed(BASE + 1, "POSITIVE", 0.9)
    feeder.feed(BASE + 2, "NEGATIVE", 0.6)
    window = feeder.state.open["tumbling"][BASE]
    assert window.mean_score == pytest.approx(0.75)
    assert window.positive_ratio == pytest.approx(0.5)


def test_fold_records_wall_clock_and_offset_of_counted_event() -> None:
    feeder = new_feeder()
    feeder.feed(BASE, origin="scored/3", offset=41, now_ms=123_456)
    assert feeder.state.last_event_wall_ms == 123_456
    assert feeder.state.offsets == {"scored/3": 41}


# --- fold_event: dedupe -------------------------------------------------------------------------


@pytest.mark.parametrize("replayed_offset", [0, 5, 9])
@pytest.mark.parametrize("replayed_time", [BASE + 1_000, BASE + 10 * MINUTE])
def test_replayed_offset_is_duplicate_and_changes_nothing(
    replayed_offset: int, replayed_time: int
) -> None:
    feeder = new_feeder()
    feeder.feed(BASE, origin="scored/0", offset=5)
    feeder.feed(BASE + 2_000, origin="scored/0", offset=9)
    before = snapshot(feeder.state)

    result = feeder.feed(replayed_time, "NEGATIVE", origin="scored/0", offset=replayed_offset)

    assert result.duplicate
    assert result.updated == []
    assert result.closed == []
    assert result.late_kinds == []
    assert snapshot(feeder.state) == before


def test_next_offset_after_watermark_is_counted() -> None:
    feeder = new_feeder()
    feeder.feed(BASE, origin="scored/0", offset=9)
    result = feeder.feed(BASE + 1, origin="scored/0", offset=10)
    assert not result.duplicate
    assert feeder.state.open["tumbling"][BASE].total == 2
    assert feeder.state.offsets == {"scored/0": 10}


def test_offset_zero_is_counted_the_first_time() -> None:
    feeder = new_feeder()
    assert not feeder.feed(BASE, origin="scored/0", offset=0).duplicate
    assert feeder.feed(BASE, origin="scored/0", offset=0).duplicate
    assert feeder.state.open["tumbling"][BASE].total == 1


def test_each_origin_has_its_own_offset_watermark() -> None:
    feeder = new_feeder()
    feeder.feed(BASE, origin="scored/0", offset=100)
    result = feeder.feed(BASE + 1, origin="scored/1", offset=3)
    assert not result.duplicate
    assert feeder.state.offsets == {"scored/0": 100, "scored/1": 3}
    assert feeder.state.open["tumbling"][BASE].total == 2
    # scored/1's low watermark does not reopen scored/0's range, nor the reverse.
    assert feeder.feed(BASE + 2, origin="scored/0", offset=50).duplicate
    assert not feeder.feed(BASE + 3, origin="scored/1", offset=50).duplicate
    assert feeder.state.open["tumbling"][BASE].total == 3


# --- fold_event: event time, grace, lateness ----------------------------------------------------


def test_out_of_order_event_within_grace_counts_in_its_own_window() -> None:
    feeder = new_feeder()
    feeder.feed(BASE + 10_000, "POSITIVE")
    feeder.feed(BASE + 70_000, "POSITIVE")  # next minute; BASE window open until BASE+90_000
    result = feeder.feed(BASE + 30_000, "NEGATIVE")
    assert result.late_kinds == []
    assert open_counts(feeder.state, "tumbling") == {
        BASE: {"POSITIVE": 1, "NEGATIVE": 1},
        BASE + MINUTE: {"POSITIVE": 1},
    }
    assert feeder.state.stream_time_ms == BASE + 70_000  # not moved back
    assert feeder.state.late == {}


def test_late_event_is_not_counted_in_closed_tumbling_window() -> None:
    feeder = new_feeder()
    feeder.feed(BASE + 10_000)
    result = feeder.feed(BASE + 95_000)  # tumbling BASE closes at BASE + 60 s + 30 s
    assert ("tumbling", BASE) in [(k, w.start_ms) for k, w in result.closed]

    result = feeder.feed(BASE + 20_000, "NEGATIVE")

    assert "tumbling" in result.late_kinds
    assert feeder.state.late["tumbling"] == 1
    assert BASE not in feeder.state.open["tumbling"]
    assert feeder.state.closed["tumbling"][-1].counts == {"POSITIVE": 1}
    assert all(kind != "tumbling" for kind, _ in result.updated)


def test_late_event_still_counts_in_open_hopping_windows_and_marks_hopping_late() -> None:
    feeder = new_feeder()
    feeder.feed(BASE + 10_000)
    feeder.feed(BASE + 95_000)  # closes hopping [BASE-240 s, BASE+60 s) too
    before = open_counts(feeder.state, "hopping")

    result = feeder.feed(BASE + 20_000, "NEGATIVE")

    assert result.late_kinds == ["tumbling", "hopping"]
    assert feeder.state.late == {"tumbling": 1, "hopping": 1}
    counted = [w.start_ms for kind, w in result.updated if kind == "hopping"]
    assert counted == [BASE - 3 * MINUTE, BASE - 2 * MINUTE, BASE - MINUTE, BASE]
    after = open_counts(feeder.state, "hopping")
    for start in counted:
        assert after[start].get("NEGATIVE", 0) == before[start].get("NEGATIVE", 0) + 1
    assert BASE - 4 * MINUTE not in after


def test_hopping_late_counter_untouched_when_no_hopping_window_was_missed() -> None:
    # Hopping 300 s every 100 s: the oldest hopping window holding BASE+10 s ends at BASE+100 s,
    # so it is still open when the tumbling window [BASE, BASE+60 s) has closed.
    policy = WindowPolicy(
        specs=(WindowSpec("tumbling", MINUTE, MINUTE), WindowSpec("hopping", 300_000, 100_000)),
        grace_ms=GRACE,
    )
    feeder = new_feeder(policy)
    feeder.feed(BASE + 10_000)
    feeder.feed(BASE + 95_000)

    result = feeder.feed(BASE + 20_000, "NEGATIVE")

    assert result.late_kinds == ["tumbling"]
    assert feeder.state.late == {"tumbling": 1}
    assert [w.start_ms for kind, w in result.updated if kind == "hopping"] == [
        BASE - 200_000,
        BASE - 100_000,
        BASE,
    ]


@pytest.mark.parametrize(
    ("stream_time_ms", "late"),
    [
        (BASE + MINUTE + GRACE - 1, False),  # one ms before end + grace: still open
        (BASE + MINUTE + GRACE, True),  # exactly end + grace: closed (>=)
        (BASE + MINUTE + GRACE + 1, True),
    ],
)
def test_window_closes_exactly_at_end_plus_grace(stream_time_ms: int, late: bool) -> None:
    feeder = new_feeder()
    feeder.feed(BASE)
    result = feeder.feed(stream_time_ms, "NEUTRAL")
    assert (("tumbling", BASE) in [(k, w.start_ms) for k, w in result.closed]) is late
    assert (BASE in feeder.state.open["tumbling"]) is not late

    result = feeder.feed(BASE + 59_999, "NEGATIVE")

    assert ("tumbling" in result.late_kinds) is late
    assert feeder.state.late.get("tumbling", 0) == int(late)
    if not late:
        assert feeder.state.open["tumbling"][BASE].counts == {"POSITIVE": 1, "NEGATIVE": 1}


def test_closed_windows_move_from_open_to_closed_with_their_counts() -> None:
    feeder = new_feeder()
    feeder.feed(BASE + 1_000, "POSITIVE")
    feeder.feed(BASE + 2_000, "NEGATIVE")
    feeder.feed(BASE + 61_000, "NEUTRAL")

    result = feeder.feed(BASE + 90_000, "POSITIVE")

    assert [(k, w.start_ms) for k, w in result.closed] == [
        ("tumbling", BASE),
        ("hopping", BASE - 4 * MINUTE),
    ]
    assert [w.counts for _, w in result.closed] == [{"POSITIVE": 1, "NEGATIVE": 1}] * 2
    assert [w.start_ms for w in feeder.state.closed["tumbling"]] == [BASE]
    assert [w.start_ms for w in feeder.state.closed["hopping"]] == [BASE - 4 * MINUTE]
    assert BASE not in feeder.state.open["tumbling"]
    assert BASE - 4 * MINUTE not in feeder.state.open["hopping"]
    assert feeder.state.has_open_windows()


def test_closed_history_keeps_only_the_latest_windows_per_kind() -> None:
    policy = default_policy(history=3)
    feeder = new_feeder(policy)
    for minute in range(10):
        feeder.feed(BASE + minute * MINUTE + 1)
    feeder.feed(BASE + 60 * MINUTE)

    tumbling = [w.start_ms for w in feeder.state.closed["tumbling"]]
    hopping = [w.start_ms for w in feeder.state.closed["hopping"]]
    assert tumbling == [BASE + 7 * MINUTE, BASE + 8 * MINUTE, BASE + 9 * MINUTE]
    assert hopping == [BASE + 7 * MINUTE, BASE + 8 * MINUTE, BASE + 9 * MINUTE]


def test_stream_time_is_the_highest_event_time_seen_and_never_goes_back() -> None:
    rng = random.Random(7)
    feeder = new_feeder()
    highest = None
    for _ in range(300):
        t = BASE + rng.randint(0, 20 * MINUTE)
        feeder.feed(t)
        highest = t if highest is None else max(highest, t)
        assert feeder.state.stream_time_ms == highest


# --- close_idle ---------------------------------------------------------------------------------


def test_idle_flush_closes_every_open_window() -> None:
    feeder = new_feeder()
    feeder.feed(BASE + 1_000)
    feeder.feed(BASE + 61_000)
    open_before = {
        (kind, start) for kind, windows in feeder.state.open.items() for start in windows
    }
    assert len(open_before) == 2 + 6

    closed = close_idle(feeder.state, POLICY)

    assert {(kind, w.start_ms) for kind, w in closed} == open_before
    assert not feeder.state.has_open_windows()
    assert len(feeder.state.closed["tumbling"]) == 2
    assert len(feeder.state.closed["hopping"]) == 6
    # stream time is past end + grace of the newest closed window
    assert feeder.state.stream_time_ms == BASE + MINUTE + 5 * MINUTE + GRACE


def test_event_for_an_idle_flushed_window_is_late() -> None:
    feeder = new_feeder()
    feeder.feed(BASE + 1_000)
    feeder.feed(BASE + 61_000)
    close_idle(feeder.state, POLICY)
    closed_before = snapshot(feeder.state)

    result = feeder.feed(BASE + 61_500, "NEGATIVE")

    assert result.late_kinds == ["tumbling", "hopping"]
    assert result.updated == []
    assert feeder.state.late == {"tumbling": 1, "hopping": 1}
    assert not feeder.state.has_open_windows()
    restored = KeyState.from_json(orjson.loads(closed_before))
    assert feeder.state.closed == restored.closed


def test_event_after_idle_flush_for_a_new_window_is_counted() -> None:
    feeder = new_feeder()
    feeder.feed(BASE + 1_000)
    close_idle(feeder.state, POLICY)
    assert feeder.state.stream_time_ms == BASE + 5 * MINUTE + GRACE

    result = feeder.feed(BASE + 6 * MINUTE)

    assert result.late_kinds == []
    assert open_counts(feeder.state, "tumbling") == {BASE + 6 * MINUTE: {"POSITIVE": 1}}


def test_idle_flush_of_state_without_windows_changes_nothing() -> None:
    state = KeyState("all")
    before = snapshot(state)
    assert close_idle(state, POLICY) == []
    assert snapshot(state) == before


# --- KeyState JSON ------------------------------------------------------------------------------


def busy_state() -> KeyState:
    """Open and closed windows of both kinds, two origins, late events."""
    feeder = new_feeder(key="source=twitter,channel=news")
    feeder.feed(BASE + 1_000, "POSITIVE", 0.9, origin="scored/0", offset=10, now_ms=5)
    feeder.feed(BASE + 2_000, "NEGATIVE", 0.8, origin="scored/1", offset=3, now_ms=6)
    feeder.feed(BASE + 95_000, "NEUTRAL", 0.55, origin="scored/0", offset=11, now_ms=7)
    feeder.feed(BASE + 96_000, "POSITIVE", 0.6, origin="scored/1", offset=4, now_ms=8)
    feeder.feed(BASE + 3_000, "NEGATIVE", 0.7, origin="scored/1", offset=5, now_ms=9)  # late
    assert feeder.state.closed
    assert feeder.state.late
    return feeder.state


def test_key_state_round_trips_through_json() -> None:
    state = busy_state()
    assert KeyState.from_json(state.to_json()) == state


def test_key_state_round_trips_through_orjson_bytes_with_int_window_starts() -> None:
    state = busy_state()
    restored = KeyState.from_json(orjson.loads(orjson.dumps(state.to_json())))
    assert restored == state
    for windows in restored.open.values():
        assert all(type(start) is int for start in windows)
        assert all(start == w.start_ms for start, w in windows.items())
    assert all(type(v) is int for v in restored.offsets.values())


def test_empty_key_state_round_trips() -> None:
    state = KeyState("all")
    restored = KeyState.from_json(orjson.loads(orjson.dumps(state.to_json())))
    assert restored == state
    assert restored.stream_time_ms is None


def test_restored_state_keeps_counting_and_deduplicating_like_the_original() -> None:
    original = busy_state()
    restored = KeyState.from_json(orjson.loads(orjson.dumps(original.to_json())))
    facts = [
        ScoredFact(original.key, BASE + 96_000, "POSITIVE", 0.6, "minilm", "scored/0", 11),  # dup
        ScoredFact(original.key, BASE + 97_000, "POSITIVE", 0.6, "minilm", "scored/0", 12),
        ScoredFact(original.key, BASE + 50_000, "NEGATIVE", 0.6, "minilm", "scored/1", 5),  # late
        ScoredFact(original.key, BASE + 9 * MINUTE, "NEGATIVE", 0.6, "minilm", "scored/1", 6),
    ]
    for fact in facts:
        a = fold_event(original, fact, POLICY, 100)
        b = fold_event(restored, fact, POLICY, 100)
        assert a.duplicate == b.duplicate
        assert a.late_kinds == b.late_kinds
        assert a.closed == b.closed
        assert snapshot(original) == snapshot(restored)
    assert fold_event(restored, facts[0], POLICY, 100).duplicate


@pytest.mark.parametrize("seed", range(20))
def test_a_records_facts_folded_at_once_match_folding_them_one_by_one(seed: int) -> None:
    """fold_facts (the aggregates agent: one record per key and take) does per record what
    fold_event does per fact: same state, same closed windows in the same order, same late and
    duplicate facts, on shuffled takes from two partitions with late, out-of-order and re-read
    facts and windows closing mid-take."""
    rng = random.Random(seed)
    one_by_one, at_once = KeyState(GLOBAL_KEY), KeyState(GLOBAL_KEY)
    offsets = {"in/0": 0, "in/1": 0}
    now_ms, event_time = 0, BASE
    for _take in range(40):
        facts = []
        for _ in range(rng.randint(1, 30)):
            origin = rng.choice(list(offsets))
            offset = offsets[origin]
            if rng.random() < 0.1 and offset > 3:
                offset -= rng.randint(1, 3)  # re-read after a crash
            else:
                offsets[origin] += 1
            event_time += rng.choice([0, 1_000, 20_000, 70_000])
            jitter = rng.choice([0, 0, -5_000, -45_000, -4 * MINUTE])  # out of order, late
            label = rng.choice(LABELS[:2])
            fact = ScoredFact(
                GLOBAL_KEY, event_time + jitter, label, rng.random(), "minilm", origin, offset, 2
            )
            facts.append(fact)
        now_ms += rng.choice([10, 1_000, 40_000])
        expected = FoldResult()
        for fact in facts:
            single = fold_event(one_by_one, fact, POLICY, now_ms)
            expected.duplicate |= single.duplicate
            expected.updated += single.updated
            expected.closed += single.closed
            expected.late_kinds += single.late_kinds
        got = fold_facts(at_once, facts, POLICY, now_ms)
        assert snapshot(at_once) == snapshot(one_by_one)
        assert [(k, w.start_ms) for k, w in got.closed] == [
            (k, w.start_ms) for k, w in expected.closed
        ]
        assert [(k, w.start_ms) for k, w in got.updated] == [
            (k, w.start_ms) for k, w in expected.updated
        ]
        assert (got.late_kinds, got.duplicate) == (expected.late_kinds, expected.duplicate)
    # the takes did close windows and count late facts
    assert one_by_one.closed
    assert one_by_one.late


# --- window_record ------------------------------------------------------------------------------


def test_window_record_key_and_fields() -> None:
    feeder = new_feeder(key="source=twitter,channel=news")
    feeder.feed(BASE + 1_000, "POSITIVE", 0.9)
    feeder.feed(BASE + 2_000, "POSITIVE", 0.8)
    feeder.feed(BASE + 3_000, "NEGATIVE", 0.7)
    window = feeder.state.open["tumbling"][BASE]

    key, value = window_record(
        feeder.state, "tumbling", window, POLICY, final=False, format_time=format_time_ms
    )

    assert key == f"source=twitter,channel=news|tumbling|{BASE_ISO}"
    assert value == {
        "key": "source=twitter,channel=news",
        "dimension": "channel",
        "source": "twitter",
        "channel": "news",
        "window": "tumbling",
        "window_start": BASE_ISO,
        "window_end": "2027-01-15T08:01:00.000Z",
        "window_size_s": 60.0,
        "window_step_s": 60.0,
        "counts": {"POSITIVE": 2, "NEGATIVE": 1},
        "total": 3,
        "positive_ratio": pytest.approx(2 / 3),
        "uncertain": 0,
        "out_of_scope": 0,
        "confident_positive_ratio": pytest.approx(2 / 3),
        "mean_score": pytest.approx(0.8),
        "late_events": 0,
        "final": False,
        "model_name": "minilm",
        "stream_time": "2027-01-15T08:00:03.000Z",
    }
    orjson.dumps(value)  # the record is JSON-serialisable as it stands


def test_uncertain_events_count_in_the_window_and_leave_the_confident_ratio() -> None:
    feeder = new_feeder()
    feeder.feed(BASE + 1_000, "POSITIVE", 0.95)
    feeder.feed(BASE + 2_000, "POSITIVE", 0.55, uncertain=True)
    feeder.feed(BASE + 3_000, "POSITIVE", 0.60, uncertain=True)
    feeder.feed(BASE + 4_000, "NEGATIVE", 0.90)
    window = feeder.state.open["tumbling"][BASE]

    _key, value = window_record(
        feeder.state, "tumbling", window, POLICY, final=False, format_time=format_time_ms
    )

    assert value["counts"] == {"POSITIVE": 3, "NEGATIVE": 1}
    assert value["positive_ratio"] == pytest.approx(3 / 4)
    assert value["uncertain"] == 2
    assert value["confident_positive_ratio"] == pytest.approx(1 / 2)
    # the uncertain counts survive the table's round trip
    restored = KeyState.from_json(orjson.loads(snapshot(feeder.state)))
    assert restored.open["tumbling"][BASE].uncertain == {"POSITIVE": 2}


def test_a_state_saved_before_uncertain_counts_existed_still_loads() -> None:
    window = WindowCounts.from_json({"start_ms": BASE, "counts": {"POSITIVE": 1}, "score_sum": 0.9})
    assert window.uncertain == {}
    assert window.confident_positive_ratio == 1.0


def test_window_record_of_hopping_window_reports_size_and_step() -> None:
    feeder = new_feeder()
    feeder.feed(BASE + 1_000)
    window = feeder.state.open["hopping"][BASE - MINUTE]
    key, value = window_record(
        feeder.state, "hopping", window, POLICY, final=True, format_time=format_time_ms
    )
    assert key == "all|hopping|2027-01-15T07:59:00.000Z"
    assert value["dimension"] == "all"
    assert value["window_end"] == "2027-01-15T08:04:00.000Z"
    assert (value["window_size_s"], value["window_step_s"]) == (300.0, 60.0)
    assert value["final"] is True


@pytest.mark.parametrize(
    ("labels", "counts", "ratio"),
    [
        (["POSITIVE"], {"POSITIVE": 1, "NEGATIVE": 0}, 1.0),
        (["NEGATIVE"], {"POSITIVE": 0, "NEGATIVE": 1}, 0.0),
        (["NEUTRAL"], {"POSITIVE": 0, "NEGATIVE": 0, "NEUTRAL": 1}, None),
        (["NEUTRAL", "POSITIVE"], {"POSITIVE": 1, "NEGATIVE": 0, "NEUTRAL": 1}, 1.0),
        ([], {"POSITIVE": 0, "NEGATIVE": 0}, None),
    ],
)
def test_window_record_counts_always_hold_positive_and_negative(
    labels: list[str], counts: dict[str, int], ratio: float | None
) -> None:
    state = KeyState("source=rss", stream_time_ms=BASE)
    window = WindowCounts(BASE)
    for label in labels:
        window.add(label, 0.5)
    _, value = window_record(
        state, "tumbling", window, POLICY, final=True, format_time=format_time_ms
    )
    assert value["counts"] == counts
    assert list(value["counts"])[:2] == ["POSITIVE", "NEGATIVE"]
    assert value["positive_ratio"] == ratio
    assert value["mean_score"] == (0.5 if labels else None)
    assert value["total"] == len(labels)
    assert (value["dimension"], value["source"], value["channel"]) == ("source", "rss", None)


def test_window_record_reports_late_events_of_its_kind() -> None:
    state = KeyState("all", stream_time_ms=BASE, late={"tumbling": 3, "hopping": 1})
    window = WindowCounts(BASE)
    _, tumbling = window_record(
        state, "tumbling", window, POLICY, final=True, format_time=format_time_ms
    )
    _, hopping = window_record(
        state, "hopping", window, POLICY, final=True, format_time=format_time_ms
    )
    assert tumbling["late_events"] == 3
    assert hopping["late_events"] == 1
    _, none_late = window_record(
        KeyState("all"), "hopping", window, POLICY, final=True, format_time=format_time_ms
    )
    assert none_late["late_events"] == 0


@pytest.mark.parametrize(
    ("stream_time_ms", "expected"),
    [(None, None), (0, "1970-01-01T00:00:00.000Z"), (BASE, BASE_ISO)],
)
def test_window_record_stream_time_is_none_only_before_any_event(
    stream_time_ms: int | None, expected: str | None
) -> None:
    state = KeyState("all", stream_time_ms=stream_time_ms)
    _, value = window_record(
        state, "tumbling", WindowCounts(0), POLICY, final=False, format_time=format_time_ms
    )
    assert value["stream_time"] == expected


# --- UpdateThrottle -----------------------------------------------------------------------------

W1: WindowId = ("all", "tumbling", BASE)
W2: WindowId = ("all", "hopping", BASE)


def test_throttle_publishes_first_update_and_holds_the_next_until_interval() -> None:
    throttle = UpdateThrottle(1_000)
    assert throttle.offer(W1, 10_000)
    assert not throttle.offer(W1, 10_500)
    assert throttle.due(10_999) == []
    assert throttle.due(11_000) == [W1]
    assert throttle.due(20_000) == []  # due() counted it as published


def test_throttle_due_restarts_the_interval() -> None:
    throttle = UpdateThrottle(1_000)
    throttle.offer(W1, 10_000)
    throttle.offer(W1, 10_100)
    assert throttle.due(11_000) == [W1]
    assert not throttle.offer(W1, 11_999)
    assert throttle.offer(W1, 12_000)
    assert throttle.due(50_000) == []  # the held 11_999 update went out with the 12_000 one


def test_throttle_publishes_again_once_interval_passed() -> None:
    throttle = UpdateThrottle(1_000)
    assert throttle.offer(W1, 0)
    assert not throttle.offer(W1, 999)
    assert throttle.offer(W1, 1_999)  # 1_999 - 0 >= 1_000
    assert throttle.due(100_000) == []


def test_throttle_forget_drops_held_update_and_history() -> None:
    throttle = UpdateThrottle(1_000)
    throttle.offer(W1, 0)
    assert not throttle.offer(W1, 10)
    throttle.forget([W1])
    assert throttle.due(5_000) == []
    assert throttle.offer(W1, 20)  # no memory of the update at 0


def test_throttle_windows_are_independent() -> None:
    throttle = UpdateThrottle(1_000)
    assert throttle.offer(W1, 0)
    assert throttle.offer(W2, 10)
    assert not throttle.offer(W1, 20)
    assert not throttle.offer(W2, 30)
    assert throttle.due(1_005) == [W1]
    assert throttle.due(1_009) == []
    assert throttle.due(1_010) == [W2]
    throttle.offer(W1, 3_000)
    assert not throttle.offer(W1, 3_001)
    throttle.forget([W2])
    assert throttle.due(9_000) == [W1]


def test_throttle_due_returns_several_windows_sorted() -> None:
    throttle = UpdateThrottle(100)
    windows: list[WindowId] = [("b", "tumbling", 5), ("a", "hopping", 9), ("a", "hopping", 1)]
    for window in windows:
        throttle.offer(window, 0)
        throttle.offer(window, 1)
    assert throttle.due(100) == sorted(windows)


# --- property: every in-order (or within-grace) fact is counted exactly once --------------------


def random_facts(seed: int, count: int, *, max_lag_ms: int) -> list[tuple[int, str]]:
    """Event times that never fall more than ``max_lag_ms`` behind the highest one so far."""
    rng = random.Random(seed)
    events: list[tuple[int, str]] = []
    highest = BASE + rng.randint(0, MINUTE)
    for _ in range(count):
        highest += rng.choice([0, 0, rng.randint(1, 5_000), rng.randint(1, 40_000)])
        t = highest - (rng.randint(0, max_lag_ms) if max_lag_ms else 0)
        events.append((t, rng.choice(LABELS)))
    return events


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("max_lag_ms", [0, GRACE - 1])
def test_facts_within_grace_are_each_counted_once_in_every_window_holding_them(
    seed: int, max_lag_ms: int
) -> None:
    policy = default_policy(history=10_000)
    feeder = new_feeder(policy)
    events = random_facts(seed, 500, max_lag_ms=max_lag_ms)
    for t, label in events:
        result = feeder.feed(t, label, 0.75)
        assert result.late_kinds == []

    state = feeder.state
    assert state.late == {}
    for kind, spec in (("tumbling", TUMBLING), ("hopping", HOPPING)):
        expected = expected_counts(events, spec)
        closed = {w.start_ms: w for w in state.closed.get(kind, [])}
        still_open = state.open.get(kind, {})
        assert closed.keys().isdisjoint(still_open)
        assert closed, "the run spans enough time for windows to close"
        for start, window in closed.items():
            assert window.counts == expected[start]
        every = {start: dict(w.counts) for start, w in {**closed, **still_open}.items()}
        assert every == expected
        windows_per_fact = spec.size_ms // spec.step_ms
        total = sum(w.total for w in closed.values()) + sum(w.total for w in still_open.values())
        assert total == len(events) * windows_per_fact


def two_partition_fact(time_ms: int, partition: int, offset: int) -> ScoredFact:
    return ScoredFact("all", time_ms, "POSITIVE", 0.9, "m", f"in/{partition}", offset, partitions=2)


def test_stream_time_waits_for_the_slowest_input_partition() -> None:
    state = KeyState("all")
    fold_event(state, two_partition_fact(BASE + 1_000, 0, 0), POLICY, now_ms=0)
    fold_event(state, two_partition_fact(BASE + 5 * MINUTE, 0, 1), POLICY, now_ms=10)
    assert state.stream_time_ms is None, "partition 1 has not spoken yet: nothing may close"
    fold_event(state, two_partition_fact(BASE + 2_000, 1, 0), POLICY, now_ms=20)
    assert state.stream_time_ms == BASE + 2_000
    assert not state.closed
    assert not state.late
    assert state.open["tumbling"][BASE].counts == {"POSITIVE": 2}
    result = fold_event(state, two_partition_fact(BASE + 5 * MINUTE, 1, 1), POLICY, now_ms=30)
    assert ("tumbling", BASE) in [(kind, w.start_ms) for kind, w in result.closed]


def test_a_silent_partition_stops_holding_stream_time_back_after_the_idle_period() -> None:
    state = KeyState("all")
    fold_event(state, two_partition_fact(BASE + 1_000, 0, 0), POLICY, now_ms=0)
    fold_event(state, two_partition_fact(BASE + 5 * MINUTE, 0, 1), POLICY, now_ms=1_000)
    assert state.stream_time_ms is None
    idle = POLICY.partition_idle_ms
    result = fold_event(state, two_partition_fact(BASE + 5 * MINUTE + 1, 0, 2), POLICY, now_ms=idle)
    assert state.stream_time_ms == BASE + 5 * MINUTE + 1
    assert ("tumbling", BASE) in [(kind, w.start_ms) for kind, w in result.closed]


def state_after_a_restart_gap() -> KeyState:
    """Two partitions fed up to BASE + 2 min by the previous owner, restored 40 s (more than the
    idle allowance) after its last fact."""
    state = KeyState("all")
    for offset, minute in enumerate((0, 1, 2)):
        for partition in (0, 1):
            fact = two_partition_fact(BASE + minute * MINUTE, partition, offset)
            fold_event(state, fact, POLICY, now_ms=minute)
    return KeyState.from_json(orjson.loads(orjson.dumps(state.to_json())))


RESTORED_AT = 40_000


def test_a_backlog_read_after_a_restart_gap_is_late_without_resuming_the_partitions() -> None:
    state = state_after_a_restart_gap()
    fold_event(state, two_partition_fact(BASE + 4 * MINUTE, 0, 3), POLICY, now_ms=RESTORED_AT)
    result = fold_event(
        state, two_partition_fact(BASE + 2 * MINUTE + 10_000, 1, 3), POLICY, now_ms=RESTORED_AT
    )
    assert result.late_kinds == ["tumbling", "hopping"], "partition 1 judged idle across the gap"


def test_resumed_partitions_hold_stream_time_for_the_backlog_read_second() -> None:
    state = state_after_a_restart_gap()
    resume_partitions(state, RESTORED_AT)
    fold_event(state, two_partition_fact(BASE + 4 * MINUTE, 0, 3), POLICY, now_ms=RESTORED_AT)
    assert state.stream_time_ms == BASE + 2 * MINUTE, "partition 1 still holds stream time"
    result = fold_event(
        state, two_partition_fact(BASE + 2 * MINUTE + 10_000, 1, 3), POLICY, now_ms=RESTORED_AT
    )
    assert result.late_kinds == []
    assert state.open["tumbling"][BASE + 2 * MINUTE].counts == {"POSITIVE": 3}


def test_a_resumed_partition_that_stays_silent_is_idle_one_allowance_later() -> None:
    state = state_after_a_restart_gap()
    resume_partitions(state, RESTORED_AT)
    later = RESTORED_AT + POLICY.partition_idle_ms
    fold_event(state, two_partition_fact(BASE + 4 * MINUTE, 0, 3), POLICY, now_ms=later)
    assert state.stream_time_ms == BASE + 4 * MINUTE


def test_stored_state_tells_whether_windows_are_open_without_decoding() -> None:
    feeder = new_feeder()
    assert not KeyState.stored_has_open_windows(feeder.state.to_json())
    feeder.feed(BASE + 1_000)
    assert KeyState.stored_has_open_windows(feeder.state.to_json())
    close_idle(feeder.state, POLICY)
    assert not KeyState.stored_has_open_windows(feeder.state.to_json())


def test_out_of_scope_events_are_counted_apart_from_the_labels() -> None:
    feeder = new_feeder()
    feeder.feed(BASE + 1_000, "POSITIVE", 0.9)
    feeder.feed(BASE + 2_000, "NEGATIVE", 0.9, in_scope=False)
    window = feeder.state.open["tumbling"][BASE]
    _key, value = window_record(
        feeder.state, "tumbling", window, POLICY, final=False, format_time=format_time_ms
    )
    assert value["counts"] == {"POSITIVE": 1, "NEGATIVE": 0}
    assert value["out_of_scope"] == 1
    assert value["positive_ratio"] == 1.0
    restored = KeyState.from_json(orjson.loads(snapshot(feeder.state)))
    assert restored.open["tumbling"][BASE].out_of_scope == 1
