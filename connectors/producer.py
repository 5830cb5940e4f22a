"""Put records on a topic with confluent-kafka, counting what the broker acknowledged."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from connectors.clients import producer_config
from stream.settings import KafkaSettings


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class RecordProducer:
    """A thin producer that waits for every delivery report before :meth:`flush` returns."""

    def __init__(self, kafka: KafkaSettings, **config: Any) -> None:
        self._producer = Producer(producer_config(kafka, **config))
        self.report = DeliveryReport()

    def _on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is None:
            self.report.sent += 1
        else:
            self.report.failed += 1
            self.report.errors.append(str(error))

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
        partition: int | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"key": key, "headers": headers, "on_delivery": self._on_delivery}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> DeliveryReport:
        remaining = self._producer.flush(timeout)
        if remaining:
            self.report.failed += remaining
            self.report.errors.append(f"{remaining} records not delivered within {timeout}s")
        return self.report


def produce_values(
    kafka: KafkaSettings, topic: str, values: Iterable[bytes], *, keys: Iterable[bytes | None] = ()
) -> DeliveryReport:
    """Produce each value (with the matching key, if given) and wait for all deliveries."""
    producer = RecordProducer(kafka)
    key_iter = iter(keys)
    for value in values:
        producer.send(topic, value, key=next(key_iter, None))
    return producer.flush()
