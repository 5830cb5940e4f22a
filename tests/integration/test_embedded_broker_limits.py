"""Kafka behaviour the embedded broker (Tansu 0.6) gets wrong.

Each test states what real Kafka does. On the embedded broker it is marked xfail(strict): the
test must fail there (documenting the limit, see README "Embedded broker") and must pass on a
real Kafka (``KAFKA_BOOTSTRAP_SERVERS=... pytest -m full_kafka``).
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.admin import ensure_topics
from stream.settings import KafkaSettings

pytestmark = [pytest.mark.broker, pytest.mark.full_kafka]


def test_end_offset_counts_every_record_of_a_batched_produce_request(kafka: KafkaSettings) -> None:
    topic = f"test.{uuid.uuid4().hex[:10]}.batched"
    ensure_topics(kafka, {topic: 1})
    producer = Producer({**kafka.librdkafka_config(), "linger.ms": 200, "batch.num.messages": 1000})
    for index in range(10):
        producer.produce(topic, f"record {index}".encode())
    assert producer.flush(30) == 0

    consumer = Consumer({**kafka.librdkafka_config(), "group.id": f"probe-{uuid.uuid4()}"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()
    assert (low, high) == (0, 10)
