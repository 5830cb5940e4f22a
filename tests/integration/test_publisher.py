"""The worker's at-least-once publisher (connectors.publisher) against a real broker: what it
sends arrives as sent, keyed records land where Faust's router looks for them, and a take that
is not acknowledged raises instead of passing silently."""

from __future__ import annotations

import time
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner

from connectors.admin import ensure_topics
from connectors.broker import free_port
from connectors.publisher import TakePublisher
from connectors.sink import read_topics
from stream.core.errors import UnavailableError
from stream.core.pipeline import OutRecord
from stream.settings import KafkaSettings

PARTITIONS = 4


def test_a_take_arrives_as_sent_and_keys_land_on_murmur2_partitions(kafka: KafkaSettings) -> None:
    topic = f"test.{uuid.uuid4().hex[:10]}.published"
    ensure_topics(kafka, {topic: PARTITIONS})
    keyed = [OutRecord(key=f'"key-{n}"'.encode(), value=f"v{n}".encode()) for n in range(40)]
    pinned = OutRecord(key=None, value=b"pinned", partition=2, headers=[("reason", b"x")])
    stamped = OutRecord(key=b"stamped", value=b"stamped", timestamp_ms=1_700_000_000_123)
    publisher = TakePublisher(kafka)
    try:
        publisher.publish([(topic, record) for record in [*keyed, pinned, stamped]])
    finally:
        publisher.close()

    read = {
        record.value: record
        for record in read_topics(kafka, [topic], idle_timeout=5, deadline=time.monotonic() + 60)
    }
    assert len(read) == len(keyed) + 2
    murmur2 = DefaultPartitioner()
    everywhere = list(range(PARTITIONS))
    for record in keyed:
        got = read[record.value]
        assert got.key == record.key
        # Faust's table router (aiokafka's partitioner) must find the facts where they landed.
        assert got.partition == murmur2(record.key, everywhere, everywhere)
    assert len({read[record.value].partition for record in keyed}) > 1
    assert read[b"pinned"].partition == 2
    assert read[b"pinned"].headers == {"reason": b"x"}
    assert read[b"stamped"].timestamp_ms == 1_700_000_000_123


def nowhere() -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")


def test_a_take_not_acknowledged_in_time_raises() -> None:
    publisher = TakePublisher(nowhere(), flush_timeout_s=0.5, log_level=0)
    with pytest.raises(UnavailableError, match="2 of 2 records were not acknowledged"):
        publisher.publish([("t", OutRecord(key=b"a", value=b"1"))] * 2)


def test_a_record_the_client_gives_up_on_raises() -> None:
    # librdkafka reports only failed deliveries (delivery.report.only.error): this is one.
    publisher = TakePublisher(nowhere(), flush_timeout_s=30, log_level=0,
                              **{"message.timeout.ms": 300})  # fmt: skip
    with pytest.raises(UnavailableError, match=r"1 of 1 records were not published .*timed out"):
        publisher.publish([("t", OutRecord(key=b"a", value=b"1"))])
