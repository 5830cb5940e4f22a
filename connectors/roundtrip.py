"""Send messages through the running pipeline and collect each one's result (``sentistream eval``).

messages (unique ids, keyed by id) -> input topic -> [running worker] -> events topic (keyed by
message id) / dead-letter topic (original key kept) -> matched back by id.

The results are read from the events and dead-letter topics' end offsets as they were *before* the
first message was sent, with partitions assigned by hand: nothing older is read, and no consumer
group is joined or committed to.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from connectors.clients import consumer_config
from connectors.group_offsets import end_offset
from connectors.producer import RecordProducer
from stream.core.codec import HEADER_REASON
from stream.core.errors import UnavailableError
from stream.settings import KafkaSettings, TopicSettings

METADATA_TIMEOUT_S = 15.0


class RoundTripError(UnavailableError):
    """The messages could not be sent, or their results did not all come back in time."""


@dataclass
class RoundTrip:
    """What came back for the messages sent, by message id."""

    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead_letters: dict[str, str] = field(default_factory=dict)  # message id -> dlq.reason
    duplicates: int = 0  # results seen again for an id already answered (at-least-once)

    def answered(self, message_id: str) -> bool:
        return message_id in self.events or message_id in self.dead_letters


def run_through_pipeline(
    kafka: KafkaSettings,
    topics: TopicSettings,
    messages: Sequence[tuple[str, bytes]],
    *,
    timeout_s: float,
    on_progress: Callable[[int, int], None] | None = None,
) -> RoundTrip:
    """Produce ``(message id, value)`` pairs to the input topic, keyed by id, and wait until each
    id came back as an event or a dead letter. Raises :class:`RoundTripError` when a message could
    not be sent, or after ``timeout_s`` seconds (counted from the last acknowledged send) with
    results still missing. ``on_progress(answered, total)`` is called as results arrive."""
    wanted = {message_id for message_id, _ in messages}
    if len(wanted) != len(messages):
        raise ValueError("message ids must be unique")
    consumer = Consumer(consumer_config(kafka, f"sentistream-eval-{uuid.uuid4().hex[:12]}"))
    try:
        consumer.assign(_end_offsets(consumer, [topics.events_topic, topics.deadletter_topic]))
        _send(kafka, topics.input_topic, messages)
        result = RoundTrip()
        deadline = time.monotonic() + timeout_s
        answered = 0
        while answered < len(wanted):
            if time.monotonic() >= deadline:
                missing = len(wanted) - answered
                raise RoundTripError(
                    f"{missing} of {len(wanted)} messages got no event or dead letter within "
                    f"{timeout_s:g} s: is a worker consuming {topics.input_topic!r} and publishing "
                    f"to {topics.events_topic!r}? (raise --timeout for a slow worker)"
                )
            record = consumer.poll(0.5)
            if record is None:
                continue
            error = record.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RoundTripError(f"reading results failed: {error}")
            message_id = _message_id(record.key(), record.value())
            if message_id not in wanted:
                continue  # another client's traffic on the same topics
            if result.answered(message_id):
                result.duplicates += 1
                continue
            if record.topic() == topics.events_topic:
                result.events[message_id] = orjson.loads(record.value() or b"{}")
            else:
                headers = {name: value or b"" for name, value in record.headers() or []}
                reason = headers.get(HEADER_REASON, b"unknown").decode("utf-8", "replace")
                result.dead_letters[message_id] = reason
            answered += 1
            if on_progress is not None:
                on_progress(answered, len(wanted))
        return result
    finally:
        consumer.close()


def _end_offsets(consumer: Consumer, names: Sequence[str]) -> list[TopicPartition]:
    assignment = []
    # All topics at once: asking for one missing topic waits out the whole timeout.
    existing = consumer.list_topics(timeout=METADATA_TIMEOUT_S).topics
    for name in names:
        metadata = existing.get(name)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise RoundTripError(
                f"topic {name!r} does not exist: start the worker first (it creates its topics) "
                f"and point SENTISTREAM_EVENTS_TOPIC/SENTISTREAM_DEADLETTER_TOPIC at its topics"
            )
        for partition in sorted(metadata.partitions):
            high = end_offset(consumer, TopicPartition(name, partition), METADATA_TIMEOUT_S)
            assignment.append(TopicPartition(name, partition, high))
    return assignment


def _send(kafka: KafkaSettings, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
    producer = RecordProducer(kafka)
    for message_id, value in messages:
        producer.send(topic, value, key=message_id.encode())
    report = producer.flush()
    if report.failed:
        first = report.errors[0] if report.errors else "unknown error"
        raise RoundTripError(
            f"{report.failed} of {len(messages)} messages could not be sent to {topic!r}: {first}"
        )


def _message_id(key: bytes | None, value: bytes | None) -> str | None:
    """Events are keyed by message id; a dead letter keeps the key it was sent with."""
    if key:
        return key.decode("utf-8", "replace")
    try:
        payload = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    message_id = payload.get("id") if isinstance(payload, dict) else None
    return str(message_id) if message_id is not None else None
