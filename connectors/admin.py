"""Create the pipeline's topics up front, with their partition counts (confluent AdminClient)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream.core.errors import UnavailableError
from stream.settings import KafkaSettings, TopicSettings

log = logging.getLogger(__name__)


def aggregate_input_topic(app_id: str) -> str:
    """The internal topic that re-keys scored events by aggregate key (one per consumer group)."""
    return f"{app_id}-aggregate-input"


def pipeline_topics(topics: TopicSettings, app_id: str) -> dict[str, int]:
    """Topic name -> partitions for every topic the worker reads or writes (Faust creates its
    table changelog itself)."""
    return {
        topics.input_topic: topics.input_partitions,
        topics.events_topic: topics.input_partitions,
        topics.deadletter_topic: topics.input_partitions,
        topics.aggregates_topic: topics.input_partitions,
        aggregate_input_topic(app_id): topics.input_partitions,
    }


def ensure_topics(
    kafka: KafkaSettings,
    partitions_by_topic: Mapping[str, int],
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
    compacted: Collection[str] = (),
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. ``compacted`` topics
    get ``cleanup.policy=compact`` (real Kafka only: the embedded broker does not compact)."""
    admin = AdminClient({**kafka.librdkafka_config(), "log_level": 2})
    existing = topic_names(kafka, timeout, admin=admin)
    wanted = [
        NewTopic(
            name,
            num_partitions=count,
            replication_factor=replication_factor,
            config={"cleanup.policy": "compact"}
            if name in compacted and not kafka.embedded
            else {},
        )
        for name, count in partitions_by_topic.items()
        if name not in existing
    ]
    if not wanted:
        return []
    created: list[str] = []
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    log.info("created topics %s", created)
    return created


class BrokerUnreachable(UnavailableError):
    """The brokers did not answer a metadata request; the message is one line."""


def topic_names(
    kafka: KafkaSettings, timeout: float = 10.0, *, admin: AdminClient | None = None
) -> set[str]:
    """The topics the cluster has; raises :class:`BrokerUnreachable` instead of waiting forever.

    librdkafka's own connection errors (one line every few milliseconds) are kept quiet here: the
    exception says the same once. ``admin``: a client the caller goes on using.
    """
    if admin is None:
        admin = AdminClient({**kafka.librdkafka_config(), "log_level": 2})
    try:
        return set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise BrokerUnreachable(
            f"the broker at {kafka.bootstrap_servers} did not answer within {timeout:.0f} s "
            f"({exc.args[0].str()})"
        ) from None
