"""Read records back from topics: the demo's printer, ``tail``, and the tests' assertions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError

from connectors.clients import consumer_config
from stream.settings import KafkaSettings


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int


def read_topics(
    kafka: KafkaSettings,
    topics: Sequence[str],
    *,
    idle_timeout: float | None = None,
    deadline: float | None = None,
    group_id: str | None = None,
    until: Callable[[], bool] | None = None,
    from_end: bool = False,
) -> Generator[ConsumedRecord, None, None]:
    """Yield records from ``topics`` from the beginning (or, ``from_end``, only those that arrive
    after the partitions were assigned), as they arrive.

    Stops after ``idle_timeout`` seconds without a record once partitions are assigned (joining
    the group can take seconds), at ``deadline`` (a ``time.monotonic()`` value), or once
    ``until()`` is true (checked before every poll); the caller may also just stop iterating.
    """
    reset = {"auto.offset.reset": "latest"} if from_end else {}
    group = group_id or f"sentistream-reader-{uuid.uuid4()}"
    consumer = Consumer(consumer_config(kafka, group, **reset))
    last_seen: float | None = None  # None until the first assignment

    def on_assign(_consumer: Consumer, _partitions: list[Any]) -> None:
        nonlocal last_seen
        last_seen = time.monotonic()

    consumer.subscribe(list(topics), on_assign=on_assign)
    try:
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            if (
                idle_timeout is not None
                and last_seen is not None
                and now - last_seen >= idle_timeout
            ):
                return
            if until is not None and until():
                return
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    continue
                raise RuntimeError(f"consumer error: {error}")
            last_seen = time.monotonic()
            _, timestamp = message.timestamp()
            yield ConsumedRecord(
                topic=message.topic() or "",
                partition=message.partition() or 0,
                offset=message.offset() or 0,
                key=message.key(),
                value=message.value(),
                headers={name: value or b"" for name, value in message.headers() or []},
                timestamp_ms=timestamp,
            )
    finally:
        consumer.close()
