"""Kafka behaviour the embedded broker (Tansu 0.6) gets wrong.

Each test states what real Kafka does. On the embedded broker it is marked xfail(strict): the
test must fail there (documenting the limit, see README "Embedded broker") and must pass on a
real Kafka (``KAFKA_BOOTSTRAP_SERVERS=... pytest -m full_kafka``).
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

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


def test_time_lookup_answers_the_first_record_at_or_after_the_time(kafka: KafkaSettings) -> None:
    topic = f"test.{uuid.uuid4().hex[:10]}.times"
    ensure_topics(kafka, {topic: 1})
    base_ms = 1_763_632_800_000
    producer = Producer({**kafka.librdkafka_config(), "linger.ms": 0})
    for index in range(6):
        producer.produce(topic, f"record {index}".encode(), timestamp=base_ms + index * 1000)
        producer.flush(30)
    consumer = Consumer({**kafka.librdkafka_config(), "group.id": f"probe-{uuid.uuid4()}"})
    try:
        wanted = [
            TopicPartition(topic, 0, base_ms + 2500),
            TopicPartition(topic, 0, base_ms + 9000),
        ]
        mid, late = (consumer.offsets_for_times([tp], timeout=10)[0] for tp in wanted)
    finally:
        consumer.close()
    assert mid.offset == 3, "the first record at or after base + 2.5 s is record 3"
    assert late.offset == -1, "no record is that late: the end (-1), not the start"


def test_aggregates_topic_is_compacted_to_the_latest_record_per_key(kafka: KafkaSettings) -> None:
    """The worker creates the aggregates topic compacted (cli.cmd_worker -> ensure_topics), so a
    dashboard reading it from the start gets each window's latest state, not its history."""
    topic = f"test.{uuid.uuid4().hex[:10]}.aggregates"
    ensure_topics(kafka, {topic: 1}, compacted={topic})
    admin = AdminClient(kafka.librdkafka_config())
    # Small segments and an eager cleaner make the broker compact within seconds (the policy is
    # what the worker set; these two only make the test quick).
    quick = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            for name, value in {"segment.ms": "100", "min.cleanable.dirty.ratio": "0.01"}.items()
        ],
    )
    for future in admin.incremental_alter_configs([quick]).values():
        future.result(30)
    [described] = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, topic)]
    ).values()
    assert described.result(30)["cleanup.policy"].value == "compact"

    producer = Producer({**kafka.librdkafka_config(), "linger.ms": 0})
    for round_ in range(50):
        for window in ("w1", "w2"):
            producer.produce(topic, f"{window} update {round_}".encode(), key=window.encode())
        producer.flush(30)
        time.sleep(0.01)
    deadline = time.monotonic() + 90
    kept: dict[bytes, bytes] = {}
    count = 100
    while time.monotonic() < deadline:
        # A new segment is rolled only when a record arrives after segment.ms: keep one coming.
        producer.produce(topic, b"tick", key=b"tick")
        producer.flush(30)
        records = read_all(kafka, topic)
        kept = {key: value for key, value in records}
        count = sum(1 for key, _ in records if key != b"tick")
        if count <= 4:
            break
        time.sleep(1)
    assert count <= 4, f"{count} of 100 records still there: the topic was not compacted"
    assert kept[b"w1"] == b"w1 update 49"
    assert kept[b"w2"] == b"w2 update 49"


def read_all(kafka: KafkaSettings, topic: str) -> list[tuple[bytes, bytes]]:
    consumer = Consumer(
        {
            **kafka.librdkafka_config(),
            "group.id": f"probe-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, low)])
        records: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 20
        position = low
        while position < high and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            records.append((message.key() or b"", message.value() or b""))
            position = message.offset() + 1
        return records
    finally:
        consumer.close()
