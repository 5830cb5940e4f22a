"""A consumer group's progress read from the broker: committed and end offsets per partition.

The reader is a consumer that never subscribes, so it never joins the group it reads about; the
worker uses it for /health and the lag metrics, the chaos harness to watch workers from outside.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from connectors.clients import consumer_config
from stream.settings import KafkaSettings

LEADER_NOT_YET = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._UNKNOWN_PARTITION,
    }
)


def partition_name(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def end_offset(consumer: Consumer, tp: TopicPartition, timeout: float) -> int:
    """The partition's end offset. A topic just created may not have a leader yet (Apache Kafka
    answers NOT_LEADER_FOR_PARTITION for a moment), and a fresh client or a broker just resumed
    may not know the partition yet: those and other retriable errors are retried until
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            return int(high)
        except KafkaException as exc:
            error = exc.args[0]
            settling = error.code() in LEADER_NOT_YET or error.retriable()
            if not settling or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


class GroupOffsets:
    """Blocking calls (run them off the event loop); one reader per caller, closed by ``close``."""

    def __init__(self, kafka: KafkaSettings, group_id: str) -> None:
        self._consumer = Consumer(consumer_config(kafka, group_id, **{"log_level": 2}))

    def read(
        self, partitions: Iterable[tuple[str, int]], timeout: float = 5.0
    ) -> tuple[dict[str, int], dict[str, int | None]]:
        """End offsets and the group's committed offsets (None: nothing committed) of
        ``partitions``, keyed ``topic/partition``. Raises ``KafkaException`` when the broker
        does not answer within ``timeout``."""
        tps = [TopicPartition(topic, partition) for topic, partition in partitions]
        ends = {
            partition_name(tp.topic, tp.partition): end_offset(self._consumer, tp, timeout)
            for tp in tps
        }
        committed: dict[str, int | None] = {
            partition_name(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
            for tp in (self._consumer.committed(tps, timeout=timeout) if tps else [])
        }
        return ends, committed

    def close(self) -> None:
        self._consumer.close()
