"""How the project's own brokers are configured and found (nothing is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.broker import EmbeddedBroker, KafkaBroker, kafka_missing
from stream.settings import BrokerProfile


def test_kafka_missing_names_the_set_up_step_when_the_jars_are_absent(tmp_path: Path) -> None:
    problem = kafka_missing(tmp_path)
    if problem is not None and "Java" in problem:
        pytest.skip(problem)  # no java here at all: the other message wins
    assert problem is not None
    assert str(tmp_path) in problem
    assert "./dev setup" in problem


def test_kafka_missing_is_none_once_the_broker_jar_is_there(tmp_path: Path) -> None:
    (tmp_path / "kafka_2.13-4.4.0.jar").write_bytes(b"")
    problem = kafka_missing(tmp_path)
    assert problem is None or "Java" in problem


def test_kafka_broker_is_one_kraft_node_on_loopback_with_its_own_controller_port(
    tmp_path: Path,
) -> None:
    broker = KafkaBroker(19092, data_dir=tmp_path)
    config = broker.server_config()
    assert config["process.roles"] == "broker,controller"
    assert config["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    controller = f"127.0.0.1:{broker.controller_port}"
    assert config["controller.quorum.voters"] == f"1@{controller}"
    assert f"CONTROLLER://{controller}" in config["listeners"]
    assert broker.controller_port != 19092
    assert config["log.dirs"] == str(tmp_path / "logs")
    assert config["auto.create.topics.enable"] == "false", "as in docker-compose.yml"
    assert config["offsets.topic.replication.factor"] == "1"


def test_kafka_broker_extra_config_overrides_the_defaults(tmp_path: Path) -> None:
    broker = KafkaBroker(data_dir=tmp_path, extra_config={"num.partitions": "3"})
    assert broker.server_config()["num.partitions"] == "3"


def test_a_given_data_dir_is_kept_and_a_temporary_one_removed(tmp_path: Path) -> None:
    kept = KafkaBroker(data_dir=tmp_path / "kept")
    kept.data_dir.mkdir()
    kept.cleanup()
    assert kept.data_dir.exists()
    temporary = KafkaBroker()
    assert temporary.data_dir.exists()
    temporary.cleanup()
    assert not temporary.data_dir.exists()


@pytest.mark.parametrize(
    ("kind", "profile"),
    [(EmbeddedBroker, BrokerProfile.EMBEDDED), (KafkaBroker, BrokerProfile.KAFKA)],
    ids=["embedded", "kafka"],
)
def test_export_lines_point_the_commands_at_the_broker_with_its_profile(
    kind: type[EmbeddedBroker | KafkaBroker], profile: BrokerProfile
) -> None:
    broker = kind(19093)
    assert broker.export_lines() == [
        "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19093",
        f"export KAFKA_BROKER_PROFILE={profile}",
    ]
    broker.cleanup()
