"""One settings object, read from the environment once at start-up and passed down.

Kafka connection settings use the ``KAFKA_`` prefix (they are shared with every Kafka tool an
operator already runs); everything the service owns uses ``SENTISTREAM_``. Nothing else in the
project reads ``os.environ``.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.core.cleaning import CleaningRules
from stream.core.pipeline import PipelineConfig

DEFAULT_MODEL = "distilbert-base-uncased-finetuned-sst-2-english"


class BrokerProfile(StrEnum):
    """Which broker we talk to: client workarounds apply only to the embedded one."""

    KAFKA = "kafka"
    EMBEDDED = "embedded"


class KafkaSettings(BaseSettings):
    """Where the brokers are and how to authenticate; passed through to every Kafka client."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore", env_ignore_empty=True)

    bootstrap_servers: str = "localhost:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    broker_profile: BrokerProfile = BrokerProfile.KAFKA

    def librdkafka_config(self) -> dict[str, Any]:
        """The confluent-kafka (librdkafka) spelling of these settings."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": reveal(self.sasl_password),
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": reveal(self.ssl_key_password),
        }
        config.update({key: str(value) for key, value in optional.items() if value is not None})
        return config

    @property
    def embedded(self) -> bool:
        return self.broker_profile is BrokerProfile.EMBEDDED


class TopicSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SENTISTREAM_", extra="ignore", env_ignore_empty=True
    )

    input_topic: str = "sentiment.input"
    events_topic: str = "sentiment.events"
    deadletter_topic: str = "sentiment.deadletter"
    aggregates_topic: str = "sentiment.aggregates"
    shadow_topic: str = "sentiment.shadow"
    drift_topic: str = "sentiment.drift"
    input_partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)


class Settings(BaseSettings):
    """Everything the worker needs; build with :meth:`from_env` once, at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="SENTISTREAM_", extra="ignore", env_ignore_empty=True
    )

    app_id: str = "sentistream"
    model: str = DEFAULT_MODEL
    model_revision: str | None = None
    model_registry: Path | None = None
    shadow_model: str | None = None
    shadow_fraction: float = Field(default=1.0, ge=0, le=1)
    canary_model: str | None = None
    canary_fraction: float = Field(default=0.1, ge=0, le=1)
    device: str = "auto"
    backend: str = "auto"
    model_cache_dir: Path = Path("~/.cache/sentistream")
    torch_threads: int | None = Field(default=None, ge=1)
    inference_lanes: int | None = Field(default=None, ge=1)
    label_map: str | None = None
    binary_threshold: float = Field(default=0.5, gt=0, lt=1)
    confidence_threshold: float | None = Field(default=None, ge=0, le=1)
    detect_language: bool = True
    languages: str | None = None
    language_models: str | None = None
    max_length: int | None = Field(default=None, ge=2)
    batch_size: int = Field(default=16, ge=1)
    batch_take: int = Field(default=128, ge=1)
    batch_max_wait_ms: int = Field(default=0, ge=0)
    # 0 (default): takes never wait on a budget (README Performance: waiting did not pay)
    latency_target_ms: int = Field(default=0, ge=0)
    batch_max_tokens: int = Field(default=4096, ge=1)
    max_message_bytes: int = Field(default=64 * 1024, ge=1)
    redact_text: bool = False
    event_key: Literal["id", "channel"] = "id"
    clean_mentions: bool = True
    clean_urls: bool = True
    clean_hashtags: bool = True
    clean_html: bool = True
    clean_whitespace: bool = True
    window_tumbling_s: float = Field(default=60, gt=0)
    window_hopping_s: float = Field(default=300, gt=0)
    window_hop_s: float = Field(default=60, gt=0)
    window_grace_s: float = Field(default=30, ge=0)
    window_history: int = Field(default=10, ge=0)
    aggregate_update_interval_s: float = Field(default=1.0, ge=0)
    idle_flush_s: float = Field(default=30, gt=0)
    partition_idle_s: float = Field(default=30, gt=0)
    drift_reference: Path | None = None
    drift_window_s: float = Field(default=300, gt=0)
    drift_min_count: int = Field(default=100, ge=1)
    group_instance_id: str | None = None
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    transactional_id: str | None = None
    session_timeout_s: float = Field(default=10, gt=0, le=300)
    api_max_texts: int = Field(default=64, ge=1)
    api_max_request_bytes: int = Field(default=1024 * 1024, ge=1)
    api_rate_per_s: float = Field(default=20.0, gt=0)
    api_burst: int = Field(default=40, ge=1)
    web_port: int = Field(default=6066, ge=0, le=65535)
    web_url: str | None = None
    data_dir: Path = Path(".sentistream-data")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)

    @model_validator(mode="after")
    def _transactions_need_kafka(self) -> Settings:
        if self.processing_guarantee == "exactly_once" and self.kafka.embedded:
            raise ValueError(
                "SENTISTREAM_PROCESSING_GUARANTEE=exactly_once needs Apache Kafka: the embedded "
                "broker has no transactions (use at_least_once there)"
            )
        return self

    def scorer_transactional_id(self, default_suffix: str) -> str:
        """The exactly-once producer's id: unique per worker, stable across its restarts."""
        if self.transactional_id:
            return self.transactional_id
        return f"{self.app_id}-scorer-{self.group_instance_id or default_suffix}"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        return cls(kafka=KafkaSettings(), topics=TopicSettings(), **overrides)


def reveal(secret: SecretStr | None) -> str | None:
    """A secret setting's value, for the client that needs it (never for a log)."""
    return secret.get_secret_value() if secret is not None else None


def pipeline_config(settings: Settings) -> PipelineConfig:
    """The batch pipeline's options (size limit, redaction, cleaning rules) from the settings."""
    return PipelineConfig(
        max_message_bytes=settings.max_message_bytes,
        redact_text=settings.redact_text,
        confidence_threshold=settings.confidence_threshold,
        languages=frozenset(
            code.strip().lower() for code in (settings.languages or "").split(",") if code.strip()
        ),
        cleaning=CleaningRules(
            mentions=settings.clean_mentions,
            urls=settings.clean_urls,
            hashtags=settings.clean_hashtags,
            html_entities=settings.clean_html,
            whitespace=settings.clean_whitespace,
        ),
    )
