"""Client configuration for each Kafka client the project uses, per broker profile.

The ``embedded`` profile carries the workarounds the embedded broker needs (README, "Embedded
broker"); the ``kafka`` profile is plain Kafka with librdkafka/aiokafka defaults.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from stream.settings import KafkaSettings, reveal

# The embedded broker holds each group join for half the session timeout: keep it short.
EMBEDDED_SESSION_TIMEOUT_S = 6.0
EMBEDDED_HEARTBEAT_INTERVAL_S = 1.0
# The embedded broker answers a fetch only when its max wait ends, not when a record arrives, and
# Faust hard-codes aiokafka's fetch_max_wait_ms=1500: on that broker a lone message waited ~0.7 s
# before the worker saw it. Real Kafka returns the fetch as soon as data is there.
EMBEDDED_FETCH_MAX_WAIT_MS = 20


def producer_config(kafka: KafkaSettings, **extra: Any) -> dict[str, Any]:
    """confluent-kafka Producer settings: idempotent, acks=all, and one record per request on the
    embedded broker (its end offsets are wrong when a request carries several)."""
    config: dict[str, Any] = {
        **kafka.librdkafka_config(),
        "acks": "all",
        "enable.idempotence": not kafka.embedded,
        "linger.ms": 5,
    }
    if kafka.embedded:
        config.update({"batch.num.messages": 1, "linger.ms": 0})
    config.update(extra)
    return config


def consumer_config(kafka: KafkaSettings, group_id: str, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **kafka.librdkafka_config(),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    if kafka.embedded:
        config["session.timeout.ms"] = int(EMBEDDED_SESSION_TIMEOUT_S * 1000)
    config.update(extra)
    return config


def aiokafka_config(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka client settings (the exactly-once publisher's producer)."""
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in kafka.bootstrap_servers.split(",")],
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        config["ssl_context"] = _ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        config.update(
            sasl_mechanism=kafka.sasl_mechanism or "PLAIN",
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=reveal(kafka.sasl_password),
        )
    return config


def faust_settings(kafka: KafkaSettings, session_timeout_s: float | None = None) -> dict[str, Any]:
    """Keyword arguments for ``faust.App``: brokers, credentials and profile tuning;
    ``session_timeout_s`` applies on Apache Kafka (the embedded profile has its own)."""
    brokers = [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")]
    settings: dict[str, Any] = {
        "broker": brokers,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
    }
    if session_timeout_s is not None and not kafka.embedded:
        settings["broker_session_timeout"] = session_timeout_s
    credentials = _faust_credentials(kafka)
    if credentials is not None:
        settings["broker_credentials"] = credentials
    if kafka.embedded:
        settings.update(
            broker_session_timeout=EMBEDDED_SESSION_TIMEOUT_S,
            broker_heartbeat_interval=EMBEDDED_HEARTBEAT_INTERVAL_S,
            # aiokafka's batch size is in bytes: 1 means every produce request carries one record.
            producer_max_batch_size=1,
            producer_linger=0.0,
        )
    return settings


def shorten_faust_fetch_wait(max_wait_ms: int) -> None:
    """Make Faust's worker consumer wait at most ``max_wait_ms`` per fetch (it hard-codes 1500).

    Faust offers no setting for this, so its consumer factory is wrapped; the worker process runs
    one app, so the change is process-wide by design. Used only for the embedded broker.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "fetch_wait_ms", None) == max_wait_ms:
        return

    def create_with_short_wait(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms  # read by aiokafka when it starts its Fetcher
        return consumer

    create_with_short_wait.fetch_wait_ms = max_wait_ms  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_with_short_wait  # type: ignore[method-assign]


def _ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(kafka.ssl_ca_location) if kafka.ssl_ca_location else None
    )
    if kafka.ssl_certificate_location:
        context.load_cert_chain(
            str(kafka.ssl_certificate_location),
            str(kafka.ssl_key_location) if kafka.ssl_key_location else None,
            reveal(kafka.ssl_key_password),
        )
    return context


def _faust_credentials(kafka: KafkaSettings) -> Any:
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(kafka))
    password = reveal(kafka.sasl_password)
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=password,
        mechanism=kafka.sasl_mechanism or "PLAIN",
        ssl_context=_ssl_context(kafka) if protocol == "SASL_SSL" else None,
    )
