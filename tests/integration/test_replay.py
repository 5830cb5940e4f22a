"""``sentistream replay`` on a real broker: time and offset ranges scored into a backfill topic
with the real model, re-feeding the input topic untouched, stopping and resuming without gaps or
repeats, and the embedded broker's approximate time lookups and wrong end offsets.

Source topics are built with explicit record timestamps; outputs are read back to the end of
each partition (end-of-partition events), so a missing or repeated record fails the test.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from connectors.admin import ensure_topics
from connectors.clients import consumer_config
from connectors.producer import RecordProducer
from connectors.replay import (
    NoProgress,
    Refeed,
    ReplayOptions,
    run_replay,
    state_path,
    stop_on_signals,
)
from connectors.sink import ConsumedRecord
from stream.cli import main
from stream.core.replay_plan import ReplayRequest
from stream.settings import KafkaSettings

pytestmark = pytest.mark.broker

BASE_MS = 1_790_000_000_000  # the source's record times: BASE_MS + i * 1000 (+ partition)
PARTITIONS = 3
PER_PARTITION = 8
NOT_JSON = b"this record is not JSON"
READ_DEADLINE_S = 60.0  # a guard against a hang, not a timing assertion


def fresh_topic(kind: str) -> str:
    return f"test.{uuid.uuid4().hex[:10]}.{kind}"


def read_to_end(kafka: KafkaSettings, topic: str) -> list[ConsumedRecord]:
    """Every record of ``topic``, reading each partition up to its end-of-partition event."""
    consumer = Consumer(
        consumer_config(kafka, f"test-reader-{uuid.uuid4()}", **{"enable.partition.eof": True})
    )
    records: list[ConsumedRecord] = []
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        deadline = time.monotonic() + READ_DEADLINE_S
        while len(at_end) < len(partitions):
            assert time.monotonic() < deadline, f"{topic}: no end of {set(partitions) - at_end}"
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                at_end.add(message.partition())
                continue
            records.append(
                ConsumedRecord(
                    topic=topic,
                    partition=message.partition(),
                    offset=message.offset(),
                    key=message.key(),
                    value=message.value(),
                    headers={name: value or b"" for name, value in message.headers() or []},
                    timestamp_ms=message.timestamp()[1],
                )
            )
    finally:
        consumer.close()
    return records


def message_id(record: ConsumedRecord) -> str:
    return (record.key or b"").decode()


@pytest.fixture(scope="module")
def source(kafka: KafkaSettings, sst2_sentences: list[str]) -> list[ConsumedRecord]:
    """3 partitions x 8 records, record i of partition p at BASE_MS + i s + p ms, keyed by id,
    with a header; two are not JSON (one inside the 2 s..5 s range, one outside)."""
    topic = fresh_topic("source")
    ensure_topics(kafka, {topic: PARTITIONS})
    producer = RecordProducer(kafka)
    for i in range(PER_PARTITION):
        for p in range(PARTITIONS):
            key = f"m-{p}-{i}"
            bad = (p, i) in ((1, 3), (2, 6))
            text = sst2_sentences[p * PER_PARTITION + i]
            value = NOT_JSON if bad else orjson.dumps({"id": key, "text": text})
            headers = [("trace", f"trace-{p}-{i}".encode())]
            stamp = BASE_MS + i * 1000 + p
            producer.send(topic, value, key.encode(), headers, timestamp_ms=stamp, partition=p)
    report = producer.flush()
    assert report.failed == 0, report.errors
    records = read_to_end(kafka, topic)
    assert len(records) == PARTITIONS * PER_PARTITION
    return records


def source_topic(source: list[ConsumedRecord]) -> str:
    return source[0].topic


Replay = Callable[..., tuple[int, str, str]]


@pytest.fixture
def replay(
    kafka: KafkaSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    minilm: Path,
) -> Replay:
    """Run ``sentistream replay ARGS`` in this process; returns (exit code, stdout, stderr)."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_BROKER_PROFILE": str(kafka.broker_profile),
        "SENTISTREAM_DATA_DIR": str(tmp_path),
        "SENTISTREAM_MODEL": str(minilm),
        "SENTISTREAM_TORCH_THREADS": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["replay", "--no-progress", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def summary_totals(out: str) -> list[int]:
    """read, filtered, produced, dead-lettered from the summary's total line."""
    line = next(line for line in out.splitlines() if line.split()[:1] == ["total"])
    return [int(n) for n in line.split()[1:]]


def events_by_id(kafka: KafkaSettings, topic: str) -> dict[str, list[dict[str, Any]]]:
    events: dict[str, list[dict[str, Any]]] = {}
    for record in read_to_end(kafka, topic):
        event = orjson.loads(record.value or b"")
        assert record.key == str(event["id"]).encode(), "events are keyed by message id"
        events.setdefault(str(event["id"]), []).append(event)
    return events


@pytest.mark.slow
def test_time_range_backfill_scores_exactly_the_records_in_range_once(
    kafka: KafkaSettings, source: list[ConsumedRecord], replay: Replay, minilm: Path
) -> None:
    backfill = fresh_topic("backfill")
    start, end = BASE_MS + 2000, BASE_MS + 5000
    code, out, err = replay(
        "--name",
        "time-range",
        "--source",
        source_topic(source),
        "--to-topic",
        backfill,
        "--start-time",
        "2026-09-21T14:13:22Z",  # = BASE_MS + 2 s, as ISO-8601
        "--end-time",
        str(end),
    )
    assert code == 0, err
    in_range = [r for r in source if start <= r.timestamp_ms < end]
    assert len(in_range) == 9
    valid = {message_id(r) for r in in_range if r.value != NOT_JSON}
    events = events_by_id(kafka, backfill)
    assert set(events) == valid
    assert all(len(copies) == 1 for copies in events.values())
    for event in (copies[0] for copies in events.values()):
        assert event["label"] in ("POSITIVE", "NEGATIVE")
        assert event["model_name"] == str(minilm)
        assert set(event["probabilities"]) == {"POSITIVE", "NEGATIVE"}
    [dead] = read_to_end(kafka, f"{backfill}.deadletter")
    bad = next(r for r in in_range if r.value == NOT_JSON)
    assert (dead.value, dead.key) == (NOT_JSON, bad.key)
    assert dead.headers["dlq.reason"] == b"invalid_json"
    assert dead.headers["dlq.source.offset"] == str(bad.offset).encode()
    assert dead.headers["trace"] == bad.headers["trace"], "original headers kept"
    read, filtered, produced, dead_lettered = summary_totals(out)
    # Kafka's time lookup starts at offset 2; the embedded broker's answers 0 (read and filtered).
    assert (read - filtered, produced, dead_lettered) == (9, 8, 1)


@pytest.mark.slow
def test_offset_range_backfill_scores_exactly_those_offsets_once(
    kafka: KafkaSettings, source: list[ConsumedRecord], replay: Replay
) -> None:
    backfill = fresh_topic("backfill")
    code, out, err = replay(
        "--name",
        "offset-range",
        "--source",
        source_topic(source),
        "--to-topic",
        backfill,
        "--deadletter-topic",
        f"{backfill}.dead",
        "--start-offsets",
        "0:1,2:5",
        "--end-offsets",
        "0:4",
    )
    assert code == 0, err
    wanted = [
        r
        for r in source
        if (r.partition == 0 and 1 <= r.offset < 4) or (r.partition == 2 and r.offset >= 5)
    ]
    events = events_by_id(kafka, backfill)
    assert set(events) == {message_id(r) for r in wanted if r.value != NOT_JSON}
    assert all(len(copies) == 1 for copies in events.values())
    dead = read_to_end(kafka, f"{backfill}.dead")
    assert [message_id(d) for d in dead] == [message_id(r) for r in wanted if r.value == NOT_JSON]
    assert len(wanted) == 6
    assert summary_totals(out) == [6, 0, 5, 1]


def test_refeed_offset_range_keeps_bytes_keys_headers_and_timestamps(
    kafka: KafkaSettings, source: list[ConsumedRecord], replay: Replay
) -> None:
    target = fresh_topic("input")
    ensure_topics(kafka, {target: PARTITIONS})
    code, _, err = replay(
        "--name",
        "refeed",
        "--source",
        source_topic(source),
        "--to-input",
        "--input-topic",
        target,
        "--start-offsets",
        "0:2,1:0",
        "--end-offsets",
        "0:5,1:2",
    )
    assert code == 0, err
    wanted = [
        r for r in source if (r.partition, r.offset) in {(0, 2), (0, 3), (0, 4), (1, 0), (1, 1)}
    ]

    def essence(r: ConsumedRecord) -> tuple[Any, ...]:
        return (r.partition, r.key, r.value, tuple(sorted(r.headers.items())), r.timestamp_ms)

    arrived = read_to_end(kafka, target)
    assert Counter(map(essence, arrived)) == Counter(map(essence, wanted))


def test_stopped_replay_resumes_without_gaps_or_repeats(
    kafka: KafkaSettings, source: list[ConsumedRecord], replay: Replay, tmp_path: Path
) -> None:
    target = fresh_topic("input")
    ensure_topics(kafka, {target: PARTITIONS})
    args = ["--name", "resume", "--source", source_topic(source), "--to-input"]
    args += ["--input-topic", target, "--chunk-size", "4"]

    code, out, _ = replay(*args, "--stop-after", "10")
    assert code == 130
    assert "stopped before the end" in out
    first = read_to_end(kafka, target)
    assert len(first) == 10
    stored = orjson.loads(state_path(tmp_path, "resume").read_bytes())
    assert sum(p["next"] - p["start"] for p in stored["partitions"]) == 10
    assert not stored["finished"]

    code, out, err = replay(*args)
    assert code == 0, err
    arrived = read_to_end(kafka, target)
    assert Counter(map(message_id, arrived)) == Counter(map(message_id, source))
    assert summary_totals(out) == [24, 0, 24, 0]

    code, out, _ = replay(*args)
    assert (code, "already finished" in out) == (0, True)
    assert len(read_to_end(kafka, target)) == len(source), "a finished replay produces nothing"
    code, _, err = replay(*args, "--start-offsets", "0:3")
    assert code == 1
    assert "was started with other options (start_offsets)" in err


class SignalOnFirstChunk(NoProgress):
    """A progress display that sends this process SIGTERM when the first chunk is recorded."""

    def __init__(self) -> None:
        self.signalled = False

    def advance(self, partition: int, offsets: int) -> None:
        if not self.signalled:
            self.signalled = True
            signal.raise_signal(signal.SIGTERM)


def test_sigterm_stops_after_the_current_chunk_and_the_replay_resumes(
    kafka: KafkaSettings, source: list[ConsumedRecord], tmp_path: Path
) -> None:
    target = fresh_topic("input")
    ensure_topics(kafka, {target: PARTITIONS})
    request = ReplayRequest(source_topic(source), "input", target)
    options = ReplayOptions("sigterm", request, chunk_size=5)

    def run(progress: NoProgress) -> tuple[bool, int]:
        stop = threading.Event()
        with stop_on_signals(stop):
            result = run_replay(
                kafka,
                tmp_path,
                options,
                lambda partitions: Refeed(target, partitions),
                stop=stop,
                progress=lambda _state: progress,
            )
        return result.finished, result.read_this_run

    assert run(SignalOnFirstChunk()) == (False, 5)
    assert len(read_to_end(kafka, target)) == 5
    assert run(NoProgress()) == (True, len(source) - 5)
    arrived = read_to_end(kafka, target)
    assert Counter(map(message_id, arrived)) == Counter(map(message_id, source))


def test_start_time_in_the_future_replays_nothing(
    kafka: KafkaSettings, source: list[ConsumedRecord], replay: Replay
) -> None:
    target = fresh_topic("input")
    ensure_topics(kafka, {target: PARTITIONS})
    code, out, err = replay(
        "--name",
        "future",
        "--source",
        source_topic(source),
        "--to-input",
        "--input-topic",
        target,
        "--start-time",
        "2099-01-01T00:00:00Z",
    )
    assert code == 0, err
    assert read_to_end(kafka, target) == []
    read, filtered, produced, _ = summary_totals(out)
    # Kafka's time lookup answers "nothing that late" (nothing read); the embedded broker's
    # answers 0, so everything is read and filtered out on the client.
    assert produced == 0
    assert read == filtered


def test_time_bounds_inside_a_produce_batch_include_exactly_the_records_in_range(
    kafka: KafkaSettings, replay: Replay
) -> None:
    """Records sent in batched produce requests: the embedded broker finds times only per batch
    and reports a wrong end offset (test_embedded_broker_limits.py); neither may cost a record."""
    topic, target = fresh_topic("batched"), fresh_topic("input")
    ensure_topics(kafka, {topic: 1, target: 1})
    batching = RecordProducer(kafka, **{"batch.num.messages": 1000, "linger.ms": 200})
    for batch in (range(10), range(10, 15)):
        for i in batch:
            value = orjson.dumps({"id": f"b-{i}", "text": f"record {i}"})
            batching.send(topic, value, f"b-{i}".encode(), timestamp_ms=BASE_MS + i * 1000)
        assert batching.flush().failed == 0
    code, _, err = replay(
        "--name",
        "mid-batch",
        "--source",
        topic,
        "--to-input",
        "--input-topic",
        target,
        "--start-time",
        str(BASE_MS + 4500),  # between records 4 and 5 of the first batch
        "--end-time",
        str(BASE_MS + 12000),  # record 12 of the second batch is the first one out
    )
    assert code == 0, err
    arrived = [message_id(r) for r in read_to_end(kafka, target)]
    assert arrived == [f"b-{i}" for i in range(5, 12)]
