"""Settings from the environment, and the Kafka client configuration built from them."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest
from pydantic import ValidationError

from connectors.clients import aiokafka_config, consumer_config, faust_settings, producer_config
from stream.settings import BrokerProfile, KafkaSettings, Settings

PASSWORD = "hunter2-sasl-secret"
KEY_PASSWORD = "key-passphrase-secret"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without any of our variables."""
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "SENTISTREAM_")):
            monkeypatch.delenv(name)


def set_env(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


# --- Settings.from_env ----------------------------------------------------------------------------


def test_defaults_without_environment() -> None:
    settings = Settings.from_env()
    assert settings.topics.input_topic == "sentiment.input"
    assert settings.topics.events_topic == "sentiment.events"
    assert settings.topics.deadletter_topic == "sentiment.deadletter"
    assert settings.topics.input_partitions == 4
    assert settings.topics.replication_factor == 1
    assert settings.model == "distilbert-base-uncased-finetuned-sst-2-english"
    assert settings.model_revision is None
    assert settings.app_id == "sentistream"
    assert settings.batch_size == 16
    assert settings.batch_take == 128
    assert settings.backend == "auto"
    assert settings.max_message_bytes == 64 * 1024
    assert settings.redact_text is False
    assert settings.kafka.bootstrap_servers == "localhost:9092"
    assert settings.kafka.security_protocol == "PLAINTEXT"
    assert settings.kafka.broker_profile is BrokerProfile.KAFKA
    assert settings.kafka.sasl_password is None


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        SENTISTREAM_INPUT_TOPIC="posts.raw",
        SENTISTREAM_EVENTS_TOPIC="posts.scored",
        SENTISTREAM_DEADLETTER_TOPIC="posts.dlq",
        SENTISTREAM_INPUT_PARTITIONS="12",
        SENTISTREAM_MODEL="/models/tweet-roberta",
        SENTISTREAM_BATCH_SIZE="8",
        SENTISTREAM_REDACT_TEXT="true",
        SENTISTREAM_TORCH_THREADS="2",
        SENTISTREAM_INFERENCE_LANES="2",
        SENTISTREAM_DATA_DIR="/var/lib/sentistream",
        SENTISTREAM_LOG_LEVEL="debug",
        KAFKA_BOOTSTRAP_SERVERS="b1:9092,b2:9092",
        KAFKA_BROKER_PROFILE="embedded",
    )
    settings = Settings.from_env()
    assert settings.topics.input_topic == "posts.raw"
    assert settings.topics.events_topic == "posts.scored"
    assert settings.topics.deadletter_topic == "posts.dlq"
    assert settings.topics.input_partitions == 12
    assert settings.model == "/models/tweet-roberta"
    assert settings.batch_size == 8
    assert settings.redact_text is True
    assert settings.torch_threads == 2
    assert settings.inference_lanes == 2
    assert settings.data_dir == Path("/var/lib/sentistream")
    assert settings.log_level == "debug"
    assert settings.kafka.bootstrap_servers == "b1:9092,b2:9092"
    assert settings.kafka.broker_profile is BrokerProfile.EMBEDDED
    assert settings.kafka.embedded


def test_from_env_keyword_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, SENTISTREAM_BATCH_SIZE="8")
    assert Settings.from_env(batch_size=3).batch_size == 3


@pytest.mark.parametrize(
    ("variable", "read"),
    [
        ("SENTISTREAM_INPUT_TOPIC", lambda s: s.topics.input_topic == "sentiment.input"),
        ("SENTISTREAM_INPUT_PARTITIONS", lambda s: s.topics.input_partitions == 4),
        ("SENTISTREAM_MODEL", lambda s: s.model.startswith("distilbert")),
        ("SENTISTREAM_TORCH_THREADS", lambda s: s.torch_threads is None),
        ("SENTISTREAM_INFERENCE_LANES", lambda s: s.inference_lanes is None),
        ("SENTISTREAM_BATCH_SIZE", lambda s: s.batch_size == 16),
        ("KAFKA_BOOTSTRAP_SERVERS", lambda s: s.kafka.bootstrap_servers == "localhost:9092"),
        ("KAFKA_SASL_MECHANISM", lambda s: s.kafka.sasl_mechanism is None),
        ("KAFKA_SASL_PASSWORD", lambda s: s.kafka.sasl_password is None),
        ("KAFKA_SSL_CA_LOCATION", lambda s: s.kafka.ssl_ca_location is None),
        ("KAFKA_BROKER_PROFILE", lambda s: s.kafka.broker_profile is BrokerProfile.KAFKA),
    ],
)
def test_empty_environment_variable_counts_as_unset(
    monkeypatch: pytest.MonkeyPatch, variable: str, read: Callable[[Settings], bool]
) -> None:
    monkeypatch.setenv(variable, "")
    assert read(Settings.from_env())


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SENTISTREAM_INPUT_PARTITIONS", "0"),
        ("SENTISTREAM_BATCH_SIZE", "lots"),
        ("SENTISTREAM_INFERENCE_LANES", "0"),
        ("SENTISTREAM_LOG_LEVEL", "verbose"),
        ("SENTISTREAM_WEB_PORT", "70000"),
        ("KAFKA_SECURITY_PROTOCOL", "TLS"),
        ("KAFKA_SASL_MECHANISM", "GSSAPI"),
        ("KAFKA_BROKER_PROFILE", "redpanda"),
    ],
)
def test_invalid_environment_value_is_rejected(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.split("_", 1)[1].lower()):
        Settings.from_env()


def test_settings_read_the_environment_when_built_not_when_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = Settings.from_env()
    monkeypatch.setenv("SENTISTREAM_INPUT_TOPIC", "later.topic")
    assert first.topics.input_topic == "sentiment.input"
    assert Settings.from_env().topics.input_topic == "later.topic"


# --- librdkafka spelling --------------------------------------------------------------------------


def test_librdkafka_config_omits_unset_security_options() -> None:
    assert KafkaSettings().librdkafka_config() == {
        "bootstrap.servers": "localhost:9092",
        "security.protocol": "PLAINTEXT",
    }


def test_librdkafka_config_emits_dotted_sasl_and_ssl_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        KAFKA_BOOTSTRAP_SERVERS="broker.example:9093",
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="svc-sentiment",
        KAFKA_SASL_PASSWORD=PASSWORD,
        KAFKA_SSL_CA_LOCATION="/etc/kafka/ca.pem",
        KAFKA_SSL_CERTIFICATE_LOCATION="/etc/kafka/client.pem",
        KAFKA_SSL_KEY_LOCATION="/etc/kafka/client.key",
        KAFKA_SSL_KEY_PASSWORD=KEY_PASSWORD,
    )
    assert KafkaSettings().librdkafka_config() == {
        "bootstrap.servers": "broker.example:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc-sentiment",
        "sasl.password": PASSWORD,
        "ssl.ca.location": "/etc/kafka/ca.pem",
        "ssl.certificate.location": "/etc/kafka/client.pem",
        "ssl.key.location": "/etc/kafka/client.key",
        "ssl.key.password": KEY_PASSWORD,
    }


def test_librdkafka_config_emits_only_the_options_that_are_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CA_LOCATION="/ca.pem")
    config = KafkaSettings().librdkafka_config()
    assert config["ssl.ca.location"] == "/ca.pem"
    assert not any(key.startswith("sasl.") for key in config)
    assert "ssl.key.password" not in config


def test_passwords_never_appear_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="svc",
        KAFKA_SASL_PASSWORD=PASSWORD,
        KAFKA_SSL_KEY_PASSWORD=KEY_PASSWORD,
    )
    settings = Settings.from_env()
    for shown in (repr(settings), str(settings), repr(settings.kafka), settings.model_dump_json()):
        assert PASSWORD not in shown
        assert KEY_PASSWORD not in shown
    assert "svc" in repr(settings.kafka)


# --- connectors.clients: per-profile client configuration -----------------------------------------


def kafka_settings(profile: BrokerProfile, **fields: Any) -> KafkaSettings:
    return KafkaSettings(broker_profile=profile, **fields)


def test_producer_config_on_embedded_sends_one_record_per_request() -> None:
    config = producer_config(kafka_settings(BrokerProfile.EMBEDDED))
    assert config["batch.num.messages"] == 1
    assert config["linger.ms"] == 0
    assert config["enable.idempotence"] is False
    assert config["acks"] == "all"


def test_producer_config_on_kafka_has_no_embedded_workarounds() -> None:
    config = producer_config(kafka_settings(BrokerProfile.KAFKA))
    assert "batch.num.messages" not in config
    assert config["linger.ms"] == 5
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["bootstrap.servers"] == "localhost:9092"


@pytest.mark.parametrize("profile", list(BrokerProfile))
def test_producer_config_extra_settings_win(profile: BrokerProfile) -> None:
    config = producer_config(kafka_settings(profile), **{"linger.ms": 99, "client.id": "loader"})
    assert config["linger.ms"] == 99
    assert config["client.id"] == "loader"


def test_consumer_config_on_embedded_shortens_session_timeout() -> None:
    config = consumer_config(kafka_settings(BrokerProfile.EMBEDDED), "group-a")
    assert config["session.timeout.ms"] == 6000
    assert config["group.id"] == "group-a"
    assert config["enable.auto.commit"] is False


def test_consumer_config_on_kafka_keeps_librdkafka_session_timeout() -> None:
    config = consumer_config(kafka_settings(BrokerProfile.KAFKA), "group-a")
    assert "session.timeout.ms" not in config
    assert config["group.id"] == "group-a"
    assert config["auto.offset.reset"] == "earliest"


EMBEDDED_FAUST_KEYS = (
    "producer_max_batch_size",
    "broker_session_timeout",
    "broker_heartbeat_interval",
    "producer_linger",
)


def test_faust_settings_on_embedded_apply_workarounds() -> None:
    settings = faust_settings(kafka_settings(BrokerProfile.EMBEDDED))
    assert settings["producer_max_batch_size"] == 1
    assert settings["broker_session_timeout"] == 6
    assert settings["broker_heartbeat_interval"] == 1
    assert settings["producer_linger"] == 0


def test_faust_settings_on_kafka_apply_no_workarounds() -> None:
    settings = faust_settings(kafka_settings(BrokerProfile.KAFKA))
    for key in EMBEDDED_FAUST_KEYS:
        assert key not in settings
    assert settings["producer_acks"] == -1


def test_the_session_timeout_setting_applies_on_kafka_only() -> None:
    assert Settings.from_env().session_timeout_s == 10
    on_kafka = faust_settings(kafka_settings(BrokerProfile.KAFKA), session_timeout_s=10)
    assert on_kafka["broker_session_timeout"] == 10
    on_embedded = faust_settings(kafka_settings(BrokerProfile.EMBEDDED), session_timeout_s=10)
    assert on_embedded["broker_session_timeout"] == 6


@pytest.mark.parametrize(
    ("servers", "brokers"),
    [
        ("localhost:9092", ["kafka://localhost:9092"]),
        ("a:9092,b:9093", ["kafka://a:9092", "kafka://b:9093"]),
        ("a:9092, b:9093 ,c:9094", ["kafka://a:9092", "kafka://b:9093", "kafka://c:9094"]),
    ],
)
def test_faust_settings_list_every_bootstrap_server(servers: str, brokers: list[str]) -> None:
    assert faust_settings(KafkaSettings(bootstrap_servers=servers))["broker"] == brokers


def test_faust_settings_plaintext_has_no_credentials() -> None:
    assert "broker_credentials" not in faust_settings(KafkaSettings())


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_faust_settings_sasl_ssl_gives_sasl_credentials(
    monkeypatch: pytest.MonkeyPatch, mechanism: str
) -> None:
    set_env(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM=mechanism,
        KAFKA_SASL_USERNAME="svc-sentiment",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    credentials = faust_settings(KafkaSettings())["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "svc-sentiment"
    assert credentials.password == PASSWORD
    assert str(credentials.mechanism.value) == mechanism
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert PASSWORD not in repr(credentials)


def test_faust_settings_sasl_plaintext_has_no_tls_and_defaults_to_plain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_USERNAME="svc",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    credentials = faust_settings(KafkaSettings())["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.ssl_context is None
    assert str(credentials.mechanism.value) == "PLAIN"


def test_faust_settings_ssl_gives_ssl_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, KAFKA_SECURITY_PROTOCOL="SSL")
    credentials = faust_settings(KafkaSettings())["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)


# --- exactly-once -----------------------------------------------------------------------------


def test_exactly_once_is_refused_on_the_embedded_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        KAFKA_BROKER_PROFILE="embedded",
        SENTISTREAM_PROCESSING_GUARANTEE="exactly_once",
    )
    with pytest.raises(ValidationError, match="needs Apache Kafka"):
        Settings.from_env()


def test_exactly_once_on_kafka_gets_a_stable_transactional_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, SENTISTREAM_PROCESSING_GUARANTEE="exactly_once", SENTISTREAM_APP_ID="a")
    assert Settings.from_env().scorer_transactional_id("host-6066") == "a-scorer-host-6066"
    set_env(monkeypatch, SENTISTREAM_GROUP_INSTANCE_ID="worker-3")
    assert Settings.from_env().scorer_transactional_id("host-6066") == "a-scorer-worker-3"
    set_env(monkeypatch, SENTISTREAM_TRANSACTIONAL_ID="pinned")
    assert Settings.from_env().scorer_transactional_id("host-6066") == "pinned"


def test_aiokafka_config_carries_sasl_and_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        KAFKA_BOOTSTRAP_SERVERS="a:9093, b:9093",
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="svc",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    config = aiokafka_config(KafkaSettings())
    assert config["bootstrap_servers"] == ["a:9093", "b:9093"]
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "svc"
    assert config["sasl_plain_password"] == PASSWORD
    assert isinstance(config["ssl_context"], ssl.SSLContext)
    assert "sasl_mechanism" not in aiokafka_config(KafkaSettings(security_protocol="PLAINTEXT"))
