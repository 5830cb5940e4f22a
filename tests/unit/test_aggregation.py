"""The per-key aggregation step: facts records in, the key's new state and window records out."""

from __future__ import annotations

from typing import Any

import orjson

from stream.core.aggregation import (
    MAX_LAST,
    AggregatesQuery,
    Aggregator,
    aggregates_view,
    current_record,
    fact_key,
    parse_aggregates_query,
    tick_record,
)
from stream.core.windows import default_policy

T0 = 1_763_632_800_000  # a multiple of 60 s
TOPIC = "in"
ORIGINS = [f"{TOPIC}/{p}" for p in range(4)]
NOW = 2_000_000_000_000


def aggregator(**kw: Any) -> Aggregator:
    policy = default_policy(tumbling_s=60, hopping_s=300, hop_s=60, grace_s=10, history=100)
    return Aggregator(
        policy,
        update_interval_ms=kw.get("update_interval_ms", 0),
        idle_after_ms=kw.get("idle_after_ms", 3_600_000),
        current_for_ms=15_000,
    )


def fact(t: int, label: str, partition: int, offset: int) -> dict[str, Any]:
    return {
        "t": t,
        "l": label,
        "s": 0.9,
        "m": "m",
        "o": f"{TOPIC}/{partition}",
        "n": offset,
        "p": 4,
    }


def facts(*items: dict[str, Any]) -> dict[str, Any]:
    return {"facts": list(items)}


def decode(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value or b"") for r in records]


def tumbling(records: list[Any]) -> list[tuple[str, dict[str, int]]]:
    return [(v["window_start"], v["counts"]) for v in decode(records) if v["window"] == "tumbling"]


def test_a_facts_record_is_folded_and_the_new_state_returned_with_its_updates() -> None:
    agg = aggregator()
    step = agg.step("all", facts(fact(T0 + 1_000, "POSITIVE", 0, 0)), None, NOW)
    assert step.state is not None
    assert step.finals == []
    assert tumbling(step.updates) == [("2025-11-20T10:00:00.000Z", {"POSITIVE": 1, "NEGATIVE": 0})]
    step = agg.step("all", facts(fact(T0 + 2_000, "NEGATIVE", 0, 1)), step.state, NOW + 1)
    assert tumbling(step.updates)[0][1] == {"POSITIVE": 1, "NEGATIVE": 1}


def test_finals_come_with_the_state_that_closed_them_and_duplicates_count_once() -> None:
    agg = aggregator()
    state = None
    for p in range(4):  # every partition reaches past the first window's end + grace
        first = agg.step("all", facts(fact(T0 + 1_000, "POSITIVE", p, 0)), state, NOW)
        state = first.state
    again = agg.step("all", facts(fact(T0 + 1_000, "POSITIVE", 0, 0)), state, NOW)  # re-sent
    state = again.state
    closing: list[Any] = []
    for p in range(4):
        step = agg.step("all", facts(fact(T0 + 75_000, "NEGATIVE", p, 1)), state, NOW)
        state, closing = step.state, closing + step.finals
    finals = [v for v in decode(closing) if v["window"] == "tumbling"]
    assert [(v["window_start"], v["counts"], v["final"]) for v in finals] == [
        ("2025-11-20T10:00:00.000Z", {"POSITIVE": 4, "NEGATIVE": 0}, True)
    ]


def test_a_tick_without_open_windows_changes_nothing_once_the_key_is_taken_over() -> None:
    agg = aggregator()
    taken = agg.step("all", orjson.loads(tick_record("all", NOW).value or b""), None, NOW)
    assert taken.state is not None  # taking the key over is saved
    assert agg.step("all", {"tick": NOW + 1}, taken.state, NOW + 1).state is None
    agg.rebalanced()
    assert agg.step("all", {"tick": NOW + 2}, taken.state, NOW + 2).state is not None


def test_a_partition_with_a_silent_owner_holds_windows_open_until_its_backlog_arrives() -> None:
    """Partitions 1-3 send the key nothing for longer than the idle allowance. Only 2 and 3 are
    reported current; 1's owner is down. The window must wait for 1's backlog, then be exact."""
    agg = aggregator()
    state = None
    for p in range(4):
        state = agg.step("all", facts(fact(T0 + 1_000, "POSITIVE", p, 0)), state, NOW).state
    later = NOW + 40_000  # past partition_idle_ms (30 s)
    report = orjson.loads(current_record(["in/0", "in/2", "in/3"], later).value or b"")
    agg.step(None, report, None, later)
    step = agg.step("all", facts(fact(T0 + 90_000, "NEGATIVE", 0, 1)), state, later)
    assert step.finals == []  # partition 1 is silent but not current: no window closes
    step = agg.step("all", facts(fact(T0 + 5_000, "NEGATIVE", 1, 1)), step.state, later + 1)
    assert step.finals == []  # the backlog counts in its window, not late
    step = agg.step("all", facts(fact(T0 + 90_000, "NEGATIVE", 1, 2)), step.state, later + 2)
    finals = tumbling(step.finals)
    assert finals == [("2025-11-20T10:00:00.000Z", {"POSITIVE": 4, "NEGATIVE": 1})]
    assert orjson.loads(step.finals[0].value or b"")["late_events"] == 0


def test_a_key_fed_by_one_partition_advances_once_the_others_are_reported_current() -> None:
    agg = aggregator()
    state = agg.step("chat", facts(fact(T0 + 1_000, "POSITIVE", 2, 0)), None, NOW).state
    later = NOW + 40_000
    step = agg.step("chat", facts(fact(T0 + 90_000, "POSITIVE", 2, 1)), state, later)
    assert step.finals == []  # nothing known about partitions 0, 1 and 3
    report = orjson.loads(current_record(["in/0", "in/1", "in/3"], later).value or b"")
    assert agg.step(None, report, None, later).state is None
    step = agg.step("chat", facts(fact(T0 + 91_000, "POSITIVE", 2, 2)), step.state, later + 1)
    assert tumbling(step.finals) == [("2025-11-20T10:00:00.000Z", {"POSITIVE": 1, "NEGATIVE": 0})]


def test_a_current_report_expires() -> None:
    agg = aggregator()
    agg.step(None, {"current": ["in/0"], "at": NOW}, None, NOW)
    assert agg.current_origins(NOW + 15_000) == {"in/0"}
    assert agg.current_origins(NOW + 15_001) == set()


def test_held_updates_and_ticks_for_quiet_keys() -> None:
    agg = aggregator(update_interval_ms=1_000, idle_after_ms=60_000)
    first = agg.step("all", facts(fact(T0 + 1_000, "POSITIVE", 0, 0)), None, NOW)
    held = agg.step("all", facts(fact(T0 + 2_000, "POSITIVE", 0, 1)), first.state, NOW + 10)
    assert held.updates == []  # throttled
    stored = {"all": held.state}
    assert agg.held_updates(NOW + 500, stored.get) == []
    assert tumbling(agg.held_updates(NOW + 1_010, stored.get))[0][1]["POSITIVE"] == 2
    assert agg.ticks_due(NOW + 1_000, stored.items()) == []
    ticks = agg.ticks_due(NOW + 30_010, stored.items())
    assert [(t.key, orjson.loads(t.value or b"")) for t in ticks] == [
        (fact_key("all"), {"tick": NOW + 30_010})
    ]
    assert agg.ticks_due(NOW + 30_020, stored.items()) == []  # one tick per interval


def test_aggregates_query_validation_and_view() -> None:
    assert isinstance(parse_aggregates_query({}), str)
    assert "window" in str(parse_aggregates_query({"key": "all", "window": "sliding"}))
    assert "last" in str(parse_aggregates_query({"key": "all", "last": "-3"}))
    assert "last" in str(parse_aggregates_query({"key": "all", "last": str(MAX_LAST + 1)}))
    query = parse_aggregates_query({"key": "all", "window": "hopping", "last": "2"})
    assert query == AggregatesQuery("all", "hopping", 2)
    agg = aggregator()
    state = agg.step("all", facts(fact(T0 + 1_000, "POSITIVE", 0, 0)), None, NOW).state
    assert state is not None
    view = aggregates_view(state, AggregatesQuery("all", "tumbling", 10), agg.policy)
    assert view["late_events"] == 0
    assert view["closed"] == []
    assert [w["counts"]["POSITIVE"] for w in view["current"]] == [1]
