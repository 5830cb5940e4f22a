"""The model control topic: one compacted partition that every worker reads whole (no consumer
group: each worker must see every record), and that ``sentistream models`` writes.

read_control (start-up: the whole topic folded) -> ControlFollower (then every new record).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from connectors.admin import ensure_topics
from connectors.clients import consumer_config
from connectors.group_offsets import end_offset
from connectors.producer import RecordProducer
from stream.core.errors import UnavailableError
from stream.core.model_versions import ActiveModel, ControlState, WorkerStatus, parse_control
from stream.core.pipeline import OutRecord
from stream.settings import KafkaSettings


def control_topic(app_id: str) -> str:
    """One control topic per consumer group (app id): its workers run one model."""
    return f"{app_id}-model-control"


def ensure_control_topic(kafka: KafkaSettings, topic: str, timeout: float = 30.0) -> None:
    ensure_topics(kafka, {topic: 1}, compacted={topic}, timeout=timeout)


def publish_control(kafka: KafkaSettings, topic: str, records: Sequence[OutRecord]) -> None:
    producer = RecordProducer(kafka)
    for record in records:
        producer.send(topic, record.value, key=record.key, partition=0)
    report = producer.flush(30)
    if report.failed:
        raise UnavailableError(f"control topic {topic}: {'; '.join(report.errors)}")


class ControlFollower:
    """Reads the control topic from the beginning; :meth:`read_to_end` folds what is there,
    :meth:`poll` returns each later record. Blocking: run it off the event loop."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.topic = topic
        self._consumer = Consumer(
            consumer_config(kafka, f"sentistream-control-{uuid.uuid4().hex}", **{"log_level": 3})
        )
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self.state = ControlState()

    def read_to_end(self, timeout: float = 30.0) -> ControlState:
        """Everything written so far, folded."""
        deadline = time.monotonic() + timeout
        try:
            end = end_offset(self._consumer, TopicPartition(self.topic, 0), timeout)
        except KafkaException as exc:
            raise UnavailableError(
                f"control topic {self.topic}: {exc.args[0].str() if exc.args else exc}"
            ) from None
        position = 0
        while position < end:
            if time.monotonic() >= deadline:
                raise UnavailableError(
                    f"control topic {self.topic}: read {position} of {end} records in {timeout} s"
                )
            message = self._consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                raise UnavailableError(f"control topic {self.topic}: {error.str()}")
            position = (message.offset() or 0) + 1
            self.state.apply(parse_control(message.key(), message.value()))
        return self.state

    def poll(self, timeout: float) -> ActiveModel | WorkerStatus | None:
        """The next record, parsed (None: none within ``timeout``, or one not understood)."""
        message = self._consumer.poll(timeout)
        if message is None or message.error() is not None:
            return None
        update = parse_control(message.key(), message.value())
        self.state.apply(update)
        return update

    def close(self) -> None:
        self._consumer.close()


def read_control(kafka: KafkaSettings, topic: str, timeout: float = 30.0) -> ControlState:
    follower = ControlFollower(kafka, topic)
    try:
        return follower.read_to_end(timeout)
    finally:
        follower.close()
