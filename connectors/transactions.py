"""Exactly-once publishing (Apache Kafka only): a scored take's outputs and its input offsets in
one Kafka transaction.

take -> begin -> send events, dead letters, facts -> add the take's input offsets to the
transaction (the group's commit) -> commit. Consumers that read committed records
(librdkafka's default) see all of a take's outputs or none, and never a take twice: a crash
before the commit leaves the transaction open, the restarted worker's producer (same
transactional id) aborts it and the take is read again from the previous commit.

Why not Faust's ``processing_guarantee="exactly_once"``: it binds one transactional producer to
each input partition and to the event being processed, while a take spans partitions and is
published from its own task (README, "Exactly-once on Apache Kafka").
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

from connectors.clients import aiokafka_config
from stream.core.pipeline import OutRecord
from stream.settings import KafkaSettings


class TransactionalPublisher:
    """One transactional producer per worker. ``transactional_id`` must be unique per worker and
    stable across its restarts: a restarted worker's producer then fences its predecessor and
    aborts the transaction it left open, so read-committed consumers wait for nothing."""

    def __init__(
        self,
        kafka: KafkaSettings,
        transactional_id: str,
        group_id: str,
        transaction_timeout_s: float,
    ) -> None:
        if kafka.embedded:
            raise ValueError("the embedded broker has no transactions")
        self.transactional_id = transactional_id
        self.group_id = group_id
        self._config = {
            **aiokafka_config(kafka),
            "transactional_id": transactional_id,
            "enable_idempotence": True,
            "acks": "all",
            # A worker that dies and never comes back blocks read-committed consumers of its
            # output partitions until its open transaction times out.
            "transaction_timeout_ms": int(transaction_timeout_s * 1000),
        }
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> AIOKafkaProducer:
        """The producer, started on first use (aiokafka binds it to the running loop). Its
        InitProducerId fences the previous incarnation and aborts what that left open."""
        if self._producer is None:
            producer = AIOKafkaProducer(**self._config)
            await producer.start()
            self._producer = producer
        return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def publish(
        self, records: Sequence[tuple[str, OutRecord]], offsets: Mapping[tuple[str, int], int]
    ) -> None:
        """Send ``records`` (topic, record) and commit ``offsets`` ((topic, partition) -> the
        next offset to read) for the group, atomically. Raises on any failure (the transaction
        is aborted, nothing of it is visible)."""
        producer = await self.start()
        async with producer.transaction():
            pending: list[Any] = []
            for topic, record in records:
                pending.append(
                    await producer.send(
                        topic,
                        value=record.value,
                        key=record.key,
                        partition=record.partition,
                        headers=record.headers or None,
                        timestamp_ms=record.timestamp_ms,
                    )
                )
            await asyncio.gather(*pending)
            commit = {TopicPartition(t, p): offset for (t, p), offset in offsets.items()}
            if commit:
                await producer.send_offsets_to_transaction(commit, self.group_id)
