"""Replay planning without a broker: option parsing, checking the broker's answers, ranges, state;
and the ``sentistream replay`` option errors (one line, exit 1, before any connection)."""

from __future__ import annotations

import os

import pytest

from stream.cli import main
from stream.core.replay_plan import (
    CheckedRecord,
    PartitionProgress,
    ReplayRequest,
    ReplaySpecError,
    ReplayState,
    TimeRange,
    check_name,
    offset_to_check,
    parse_offsets,
    parse_time,
    partition_range,
    start_for_time,
)

T = 1_790_000_000_000  # a start time, epoch ms


# --- options ----------------------------------------------------------------------------------


def test_offsets_spec_maps_partitions_to_offsets() -> None:
    assert parse_offsets("0:120,1:95", "--start-offsets") == {0: 120, 1: 95}
    assert parse_offsets(" 3:0 , 0:7 ", "--end-offsets") == {3: 0, 0: 7}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("0:120,x:1", "'x:1'"),
        ("0:-5", "'0:-5'"),
        ("120", "'120'"),
        ("0:1,,1:2", "''"),
        ("0:1,0:2", "partition 0 is given twice"),
    ],
)
def test_malformed_offsets_spec_names_the_option_and_the_bad_part(spec: str, problem: str) -> None:
    with pytest.raises(ReplaySpecError, match="--start-offsets") as raised:
        parse_offsets(spec, "--start-offsets")
    assert problem in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-20T09:15:00Z", 1_795_166_100_000),
        ("2026-11-20T09:15:00", 1_795_166_100_000),  # naive means UTC
        ("2026-11-20T10:15:00+01:00", 1_795_166_100_000),
        ("2026-11-20T09:15:00.250Z", 1_795_166_100_250),
        ("1795166100000", 1_795_166_100_000),
    ],
)
def test_times_are_iso_8601_or_epoch_millis(text: str, expected: int) -> None:
    assert parse_time(text, "--start-time") == expected


def test_unparseable_time_names_the_option() -> None:
    with pytest.raises(ReplaySpecError, match="--end-time: expected ISO-8601"):
        parse_time("yesterday", "--end-time")


@pytest.mark.parametrize("name", ["", "../escape", "a b", "x" * 121, "-leading-dash"])
def test_replay_names_that_cannot_be_file_names_are_refused(name: str) -> None:
    with pytest.raises(ReplaySpecError, match="--name"):
        check_name(name)


def test_time_range_keeps_start_inclusive_end_exclusive() -> None:
    window = TimeRange(start_ms=T, end_ms=T + 1000)
    assert [window.admits(t) for t in (T - 1, T, T + 999, T + 1000)] == [False, True, True, False]
    assert not window.admits(None), "a record without a timestamp is outside a bounded range"
    assert TimeRange(start_ms=T).admits(T + 10**9)
    assert TimeRange().admits(None), "no time range: every record"


def test_time_range_must_not_be_empty() -> None:
    with pytest.raises(ReplaySpecError, match="--start-time must be before --end-time"):
        TimeRange(start_ms=T, end_ms=T)


def test_request_refuses_a_start_offset_after_its_end_offset() -> None:
    with pytest.raises(ReplaySpecError, match="partition 1: start offset 9 is after end offset 4"):
        ReplayRequest("in", "input", "in", start_offsets={1: 9}, end_offsets={0: 1, 1: 4})


def test_request_refuses_to_score_a_topic_into_itself() -> None:
    with pytest.raises(ReplaySpecError, match="--to-topic must differ"):
        ReplayRequest("posts", "topic", "posts", deadletter="posts.dlq", model="m")


def test_request_names_the_partitions_its_offset_specs_name() -> None:
    assert ReplayRequest("in", "input", "in").named_partitions is None
    request = ReplayRequest("in", "input", "in", start_offsets={0: 1}, end_offsets={2: 5})
    assert request.named_partitions == {0, 2}


def test_request_differences_name_what_a_resume_changed() -> None:
    first = ReplayRequest("in", "topic", "backfill", "backfill.dlq", "m", TimeRange(T, T + 5))
    stored = first.to_json()
    assert first.differences(stored) == []
    changed = ReplayRequest("in", "topic", "backfill", "backfill.dlq", "m2", TimeRange(T, T + 6))
    assert changed.differences(stored) == ["end_time_ms", "model"]


# --- checking the broker's time lookup -----------------------------------------------------------


def test_kafka_answer_is_used_when_the_record_before_it_is_older() -> None:
    # Kafka: offset 40 is the first record at or after T; record 39 is older.
    assert offset_to_check(40, low=0, high=100) == 39
    assert start_for_time(T, 40, 0, 100, CheckedRecord(39, T - 1)) == 40


def test_answer_is_not_trusted_when_the_record_before_it_is_already_in_range() -> None:
    # A lookup at batch granularity (or plain wrong) that would skip records: read from the start.
    assert start_for_time(T, 40, 0, 100, CheckedRecord(39, T)) == 0
    assert start_for_time(T, 40, 5, 100, CheckedRecord(39, T + 500)) == 5


def test_answer_is_not_trusted_when_its_record_could_not_be_checked() -> None:
    assert start_for_time(T, 40, 0, 100, None) == 0
    assert start_for_time(T, 40, 0, 100, CheckedRecord(41, T - 1)) == 0, "a gap: not the record"


def test_embedded_broker_zero_for_any_time_reads_from_the_beginning() -> None:
    # The embedded broker answers 0 for every time, a future one included.
    assert offset_to_check(0, low=0, high=100) is None
    assert start_for_time(T, 0, 0, 100, None) == 0


def test_answer_past_the_high_watermark_reads_from_the_beginning() -> None:
    assert offset_to_check(150, low=0, high=100) is None
    assert start_for_time(T, 150, 0, 100, None) == 0


def test_no_record_that_late_means_nothing_to_read_once_the_last_record_confirms_it() -> None:
    assert offset_to_check(-1, low=0, high=100) == 99
    assert start_for_time(T, -1, 0, 100, CheckedRecord(99, T - 1)) == 100
    # The last record is in range after all, or was not the last one: read from the start.
    assert start_for_time(T, -1, 0, 100, CheckedRecord(99, T)) == 0
    assert start_for_time(T, -1, 0, 100, CheckedRecord(90, T - 1)) == 0


def test_empty_partition_starts_and_ends_at_its_low_watermark() -> None:
    assert offset_to_check(-1, low=7, high=7) is None
    assert start_for_time(T, -1, 7, 7, None) == 7


# --- ranges and state ---------------------------------------------------------------------------


def test_range_defaults_to_the_whole_partition() -> None:
    progress = partition_range(2, low=3, high=50, start=None, end=None)
    assert (progress.start, progress.end, progress.next, progress.done) == (3, 50, 3, False)
    assert progress.note is None


def test_range_is_clamped_to_what_the_partition_holds_and_says_so() -> None:
    progress = partition_range(0, low=10, high=50, start=2, end=80)
    assert (progress.start, progress.end) == (10, 50)
    assert (
        progress.note == "end 80 is past the partition's end 50; offsets before 10 no longer exist"
    )


def test_range_starting_past_its_end_is_done_at_once() -> None:
    progress = partition_range(0, low=0, high=50, start=70, end=None)
    assert (progress.start, progress.end, progress.done) == (50, 50, True)
    assert progress.note == "start 70 is past the end 50"


def test_state_survives_a_json_round_trip_with_its_counts() -> None:
    request = ReplayRequest("in", "input", "in", start_offsets={0: 1, 1: 2})
    state = ReplayState(
        "nightly",
        request.to_json(),
        {
            0: PartitionProgress(0, 1, 9, 9, done=True, read=8, filtered=1, produced=7),
            1: PartitionProgress(1, 2, 6, 4, read=2, produced=1, dead_lettered=1, note="n"),
        },
    )
    data = state.to_json()
    assert data["finished"] is False
    assert data["request"]["start_offsets"] == {"0": 1, "1": 2}
    again = ReplayState.from_json(data)
    assert again == state
    assert request.differences(again.request) == []
    totals = again.totals()
    assert (totals.read, totals.filtered, totals.produced, totals.dead_lettered) == (10, 1, 8, 1)


def test_state_of_an_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown state version"):
        ReplayState.from_json({"version": 99, "name": "x", "request": {}, "partitions": []})


# --- the command's option errors: one line, exit 1, no broker needed ----------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to-input", "--start-offsets", "0:abc"], "--start-offsets: expected PARTITION:OFFSET"),
        (["--to-input", "--start-time", "soon"], "--start-time: expected ISO-8601"),
        (
            ["--to-input", "--start-time", "2026-11-21T00:00Z", "--end-time", "2026-11-20T00:00Z"],
            "--start-time must be before --end-time",
        ),
        (["--to-input", "--model", "m"], "--model applies to --to-topic only"),
        (["--to-topic", "backfill", "--input-topic", "x"], "--input-topic applies to --to-input"),
        (["--to-topic", "posts", "--source", "posts"], "--to-topic must differ"),
    ],
)
def test_replay_option_errors_are_one_line_and_exit_2(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "SENTISTREAM_")):
            monkeypatch.delenv(name)
    code = main(["replay", "--name", "r1", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err
