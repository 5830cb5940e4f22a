"""The ``sentistream`` commands as a user runs them: broker, worker errors, demo."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from connectors.broker import free_port

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_broker_command_serves_kafka_until_sigterm_then_exits_cleanly() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "stream", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        assert f"127.0.0.1:{port}" in first_line
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        assert admin.list_topics(timeout=10).brokers, "the broker answered no metadata"
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("/nonexistent/sentiment-model", "/nonexistent/sentiment-model"),
        ("./no-such-dir", "no-such-dir"),
    ],
)
def test_worker_with_missing_model_says_what_to_set_without_a_traceback(
    model: str, expected: str, tmp_path: Path
) -> None:
    env = {**os.environ, "SENTISTREAM_MODEL": model, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "-m", "stream", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert "SENTISTREAM_MODEL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.broker
def test_demo_runs_end_to_end_and_accounts_for_every_sample_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SENTISTREAM_"))}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "stream", "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    lines = (PROJECT_ROOT / "stream" / "samples" / "demo_messages.jsonl").read_bytes().splitlines()
    total = sum(1 for line in lines if line.strip())
    assert f"{total}/{total} messages accounted for" in output
    assert "POSITIVE" in output
    assert "NEGATIVE" in output
    for reason in ("invalid_json", "not_an_object", "missing_text", "empty_after_cleaning"):
        assert reason in output
    # The windowed ratios, read over HTTP after the idle flush closed every window, add up to the
    # events: every scored message counted in exactly one tumbling window.
    events = int(re.search(r"accounted for: (\d+) events", output).group(1))  # type: ignore[union-attr]
    table = output.split("tumbling 60 s, all sources:")[1].split("last closed")[0]
    rows = re.findall(r"^\s+\S+Z\s+(\d+)\s+(\d+)\s+\S+(.*)$", table, flags=re.M)
    assert rows, output
    assert sum(int(pos) + int(neg) for pos, neg, _ in rows) == events
    assert not any("open" in flag for _, _, flag in rows), "the idle flush closed every window"
    assert time.monotonic() - started < 300
