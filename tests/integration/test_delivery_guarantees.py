"""At-least-once: what survives a crash, and what never leaves the worker when redaction is on."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from connectors.producer import RecordProducer
from connectors.sink import read_topics
from stream.settings import KafkaSettings, TopicSettings
from stream.worker_process import WorkerProcess
from tests.conftest import Collector, WorkerFactory

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def produce_numbered(
    kafka: KafkaSettings, topics: TopicSettings, prefix: str, count: int
) -> list[str]:
    """``count`` messages keyed by their ids, half of them positive; returns the ids."""
    ids = [f"{prefix}-{i:04d}" for i in range(count)]
    producer = RecordProducer(kafka)
    for index, message_id in enumerate(ids):
        text = f"message {index}: {'great stuff' if index % 2 else 'awful stuff'}"
        value = orjson.dumps({"id": message_id, "text": text})
        producer.send(topics.input_topic, value, key=message_id.encode())
    producer.flush()
    return ids


def kill_after_events(
    kafka: KafkaSettings, topics: TopicSettings, worker: WorkerProcess, events: int
) -> None:
    """SIGKILL ``worker`` once ``events`` events were published (a crash mid-stream)."""
    seen = 0
    deadline = time.monotonic() + 120
    for _record in read_topics(kafka, [topics.events_topic], deadline=deadline):
        seen += 1
        if seen >= events:
            break
    assert seen >= events, worker.log_tail()
    worker.kill()


def test_a_crashed_worker_loses_nothing_after_restart(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
) -> None:
    ids = produce_numbered(kafka, topics, "crash", 1200)
    first = start_worker(minilm, topics)
    kill_after_events(kafka, topics, first, 200)  # SIGKILL mid-stream: no graceful commit

    second = start_worker(minilm, topics)
    outputs = collect(topics, expected=len(ids), worker=second, distinct=True)

    assert set(outputs.events) == set(ids), "messages were lost across the crash"
    assert not outputs.dead_letters


def test_redacted_worker_publishes_and_logs_no_message_text(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
) -> None:
    secret = "zebracornsecret"
    worker = start_worker(
        minilm, topics, SENTISTREAM_REDACT_TEXT="true", SENTISTREAM_LOG_LEVEL="debug"
    )
    producer = RecordProducer(kafka)
    producer.send(topics.input_topic, orjson.dumps({"id": "r1", "text": f"I love {secret}"}))
    producer.send(topics.input_topic, orjson.dumps({"id": "r2", "text": 42, "note": secret}))
    producer.send(topics.input_topic, f'{{"id": "r3", "text": "{secret}'.encode())
    producer.flush()

    outputs = collect(topics, expected=3, worker=worker)

    (event,) = outputs.events["r1"]
    assert "text" not in event
    assert secret not in orjson.dumps(event).decode()
    assert len(outputs.dead_letters) == 2
    for record in outputs.dead_letters:
        assert all(secret.encode() not in value for value in record.headers.values())
        assert secret.encode() in (record.value or b""), "dead letters keep the original bytes"
    worker.stop()
    assert secret not in worker.log_path.read_text(errors="replace")


def test_exactly_once_publishes_every_input_once_across_a_crash(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
) -> None:
    """With SENTISTREAM_PROCESSING_GUARANTEE=exactly_once a take's outputs and its input offsets
    commit in one transaction: a SIGKILL mid-stream loses nothing and duplicates nothing for a
    read-committed consumer. The embedded broker has no transactions: the worker refuses."""
    eos = {
        "SENTISTREAM_PROCESSING_GUARANTEE": "exactly_once",
        # The restarted worker keeps its transactional id: it fences its predecessor and aborts
        # the transaction the SIGKILL left open.
        "SENTISTREAM_TRANSACTIONAL_ID": f"{topics.input_topic}-scorer",
    }
    if kafka.embedded:
        refused = start_worker(minilm, topics, **eos)
        deadline = time.monotonic() + 60
        while refused.exit_code() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert refused.exit_code() == 2, refused.log_tail()
        assert "needs Apache Kafka" in refused.log_tail()
        return

    ids = produce_numbered(kafka, topics, "eos", 1200)
    first = start_worker(minilm, topics, **eos)
    kill_after_events(kafka, topics, first, 200)  # SIGKILL mid-stream, a transaction likely open

    second = start_worker(minilm, topics, **eos)
    outputs = collect(topics, expected=len(ids), worker=second)

    assert set(outputs.events) == set(ids), "messages were lost across the crash"
    duplicated = sorted(m for m, copies in outputs.events.items() if len(copies) > 1)
    assert not duplicated, f"{len(duplicated)} inputs published twice: {duplicated[:5]}"
    assert not outputs.dead_letters
