"""At-least-once publishing of a scored take's outputs with one librdkafka producer.

The scoring agent hands a take's records (events, dead letters, facts, shadow comparisons) to
:meth:`TakePublisher.publish`, on a thread of its own: each record is queued in librdkafka's C
queue, then the flush sends them (batched per partition on Apache Kafka; one record per request
on the embedded broker, see ``connectors.clients.producer_config``) and waits for every
acknowledgement. Only then does the agent ack the take's input events.

Why not Faust's ``Topic.send``: each record there costs a future, a pending message, aiokafka's
Python batch builder and a request of its own on the event loop; with the null classifier that
was about a third of the worker's event-loop time (py-spy, README "Performance").

Partitioning is Java's murmur2 (``murmur2_random``), as aiokafka and Faust's router use: the facts
topic is co-partitioned with the aggregates table, whose HTTP router hashes table keys that way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from connectors.clients import producer_config
from stream.core.errors import UnavailableError
from stream.core.pipeline import OutRecord
from stream.settings import KafkaSettings

# How long one take's flush may wait for acknowledgements before the take counts as unpublished.
FLUSH_TIMEOUT_S = 60.0
# While librdkafka's queue is full, wait this long for deliveries before queueing again.
QUEUE_FULL_WAIT_S = 0.05


class TakePublisher:
    """One producer per worker. :meth:`publish` blocks (run it off the event loop) and is called
    for one take at a time; it raises :class:`UnavailableError` unless every record was
    acknowledged."""

    def __init__(
        self, kafka: KafkaSettings, flush_timeout_s: float = FLUSH_TIMEOUT_S, **config: Any
    ) -> None:
        self.flush_timeout_s = flush_timeout_s
        self._producer = Producer(
            producer_config(
                kafka,
                **{
                    "partitioner": "murmur2_random",
                    "linger.ms": 0,
                    # Python runs only for failed records: a callback per acknowledged record
                    # took the GIL from the scorer thread once per record.
                    "delivery.report.only.error": True,
                    **config,
                },
            )
        )
        self._failures: list[str] = []

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error.str()}")

    def publish(self, records: Sequence[tuple[str, OutRecord]]) -> None:
        """Send ``records`` ((topic, record), in order per partition) and wait for every
        acknowledgement."""
        self._failures = []
        produce = self._producer.produce
        for topic, record in records:
            options: dict[str, Any] = {"on_delivery": self._on_delivery}
            if record.headers:
                options["headers"] = record.headers
            if record.partition is not None:
                options["partition"] = record.partition
            if record.timestamp_ms is not None:
                options["timestamp"] = record.timestamp_ms
            while True:
                try:
                    produce(topic, record.value, record.key, **options)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self._producer.poll(QUEUE_FULL_WAIT_S)
        left = self._producer.flush(self.flush_timeout_s)
        if left:
            raise UnavailableError(
                f"{left} of {len(records)} records were not acknowledged within "
                f"{self.flush_timeout_s:.0f} s"
            )
        if self._failures:
            raise UnavailableError(
                f"{len(self._failures)} of {len(records)} records were not published "
                f"(first: {self._failures[0]})"
            )

    def close(self) -> None:
        """Deliver what is still queued (a publish that timed out), then let go."""
        self._producer.flush(self.flush_timeout_s)
