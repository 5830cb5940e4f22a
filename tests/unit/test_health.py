"""Partition progress and the /health decision, with offsets and the clock passed in."""

from __future__ import annotations

from stream.core.health import ProgressTracker, health_answer

P0, P1 = "input/0", "input/1"


def test_a_partition_with_lag_and_a_moving_commit_is_not_stalled() -> None:
    tracker = ProgressTracker(stall_after_ms=30_000)
    for step in range(10):
        report = tracker.observe(step * 10_000, {P0: 1_000}, {P0: step * 50})
    assert [p.stalled for p in report] == [False]
    assert report[0].lag == 1_000 - 450


def test_a_partition_with_lag_and_no_progress_stalls_after_the_limit() -> None:
    tracker = ProgressTracker(stall_after_ms=30_000)
    tracker.observe(0, {P0: 100, P1: 100}, {P0: 40, P1: 100})
    early = tracker.observe(29_999, {P0: 100, P1: 100}, {P0: 40, P1: 100})
    assert not any(p.stalled for p in early)
    late = tracker.observe(30_000, {P0: 100, P1: 100}, {P0: 40, P1: 100})
    assert [(p.partition, p.stalled, p.lag) for p in late] == [(P0, True, 60), (P1, False, 0)]
    assert tracker.newly_stalled(late) == [P0]
    assert tracker.newly_stalled(tracker.observe(31_000, {P0: 100}, {P0: 40})) == []  # once


def test_a_quiet_partition_without_lag_never_stalls() -> None:
    tracker = ProgressTracker(stall_after_ms=1_000)
    for step in range(5):
        report = tracker.observe(step * 10_000, {P0: 7}, {P0: 7})
    assert not report[0].stalled


def test_records_arriving_after_a_quiet_spell_start_a_fresh_allowance() -> None:
    tracker = ProgressTracker(stall_after_ms=30_000)
    tracker.observe(0, {P0: 5}, {P0: 5})
    tracker.observe(100_000, {P0: 5}, {P0: 5})
    report = tracker.observe(110_000, {P0: 9}, {P0: 5})  # new records, not yet committed
    assert report[0].quiet_ms == 10_000
    assert not report[0].stalled


def test_nothing_committed_counts_from_offset_zero() -> None:
    tracker = ProgressTracker(stall_after_ms=10)
    tracker.observe(0, {P0: 3}, {})
    report = tracker.observe(20, {P0: 3}, {P0: None})
    assert (report[0].committed, report[0].lag, report[0].stalled) == (0, 3, True)


def test_a_revoked_partition_is_forgotten_and_starts_fresh_when_it_returns() -> None:
    tracker = ProgressTracker(stall_after_ms=30_000)
    tracker.observe(0, {P0: 10}, {P0: 0})
    tracker.observe(10_000, {}, {})
    report = tracker.observe(35_000, {P0: 10}, {P0: 0})
    assert not report[0].stalled


def test_health_is_503_with_a_reason_until_the_worker_runs_with_partitions() -> None:
    tracker = ProgressTracker(stall_after_ms=30_000)
    report = tracker.observe(0, {P0: 10}, {P0: 10})
    for phase in ("starting", "recovering", "stopping"):
        status, body = health_answer(phase, report, last_event_ms=None)
        assert status == 503
        assert body["reason"].startswith(phase)
    status, body = health_answer("running", None, last_event_ms=None)
    assert (status, body["status"]) == (503, "unavailable")
    status, body = health_answer("running", [], last_event_ms=None)
    assert (status, body["reason"]) == (503, "no partitions assigned to this worker")
    status, body = health_answer("running", report, last_event_ms=123, extra={"model": "m"})
    assert status == 200
    assert body == {
        "model": "m",
        "phase": "running",
        "last_event_ms": 123,
        "partitions": {P0: {"lag": 0, "committed": 10, "end_offset": 10}},
        "status": "ok",
    }


def test_health_names_the_stalled_partition() -> None:
    tracker = ProgressTracker(stall_after_ms=30_000)
    tracker.observe(0, {P0: 10, P1: 10}, {P0: 4, P1: 10})
    status, body = health_answer(
        "running", tracker.observe(45_000, {P0: 10, P1: 10}, {P0: 4, P1: 10}), last_event_ms=1
    )
    assert status == 503
    assert body["reason"] == "stalled: input/0 has 6 records waiting and no progress for 45 s"
