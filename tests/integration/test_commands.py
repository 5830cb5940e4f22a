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

from connectors.admin import ensure_topics
from connectors.broker import free_port
from stream.settings import KafkaSettings

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def run_broker_command(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Start ``sentistream broker ARGS``; returns the process and its first three lines."""
    process = subprocess.Popen(
        [sys.executable, "-m", "stream", "broker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    return process, [process.stdout.readline() for _ in range(3)]


def stop_broker_command(process: subprocess.Popen[str]) -> int:
    try:
        process.send_signal(signal.SIGTERM)
        return process.wait(40)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize(
    ("flags", "profile"),
    [
        pytest.param([], "embedded", id="embedded"),
        pytest.param(["--kafka"], "kafka", id="kafka", marks=pytest.mark.kafka_jars),
    ],
)
def test_broker_command_serves_until_sigterm_then_exits_cleanly(
    flags: list[str], profile: str
) -> None:
    port = free_port()
    process, lines = run_broker_command("--port", str(port), *flags)
    try:
        assert f"127.0.0.1:{port}" in lines[0]
        assert lines[1].strip() == f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}"
        assert lines[2].strip() == f"export KAFKA_BROKER_PROFILE={profile}"
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        assert admin.list_topics(timeout=10).brokers, "the broker answered no metadata"
    finally:
        assert stop_broker_command(process) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


@pytest.mark.kafka_jars
def test_kafka_broker_command_keeps_topics_in_its_data_dir_across_restarts(
    tmp_path: Path,
) -> None:
    port = free_port()
    data_dir = tmp_path / "kafka"
    process, _lines = run_broker_command(
        "--kafka", "--port", str(port), "--data-dir", str(data_dir)
    )
    try:
        settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
        ensure_topics(settings, {"kept.topic": 3})
    finally:
        assert stop_broker_command(process) == 0
    process, _lines = run_broker_command(
        "--kafka", "--port", str(port), "--data-dir", str(data_dir)
    )
    try:
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        topics = admin.list_topics(timeout=10).topics
        assert "kept.topic" in topics
        assert len(topics["kept.topic"].partitions) == 3
    finally:
        assert stop_broker_command(process) == 0
    assert (data_dir / "broker.log").stat().st_size > 0


def run_worker_expecting_failure(
    env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", "worker"],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, "cannot map the model's labels ['joy', 'anger']", id="unknown-labels"),
        pytest.param(
            {"SENTISTREAM_LABEL_MAP": "joy:POSITIVE"},
            "SENTISTREAM_LABEL_MAP names no label for class 1 ('anger')",
            id="incomplete-label-map",
        ),
        pytest.param(
            {"SENTISTREAM_LABEL_MAP": "joy=GLAD"}, "'GLAD' is not one of", id="bad-label-map"
        ),
        pytest.param(
            {"SENTISTREAM_BINARY_THRESHOLD": "1.5"}, "binary_threshold", id="invalid-setting"
        ),
    ],
)
def test_worker_errors_a_user_can_fix_are_one_line_and_exit_2(
    env: dict[str, str], expected: str, tmp_path: Path, minilm: Path
) -> None:
    from models.checkpoints import relabel

    emotions = relabel(minilm, tmp_path / "emotions", {0: "joy", 1: "anger"})
    result = run_worker_expecting_failure({"SENTISTREAM_MODEL": str(emotions), **env}, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("sentistream")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sentistream worker: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_a_label_map_lets_the_worker_load_a_checkpoint_it_does_not_recognise(
    tmp_path: Path, minilm: Path
) -> None:
    """With the map the model loads (the worker says so); no broker is needed to see that."""
    from models.checkpoints import relabel

    emotions = relabel(minilm, tmp_path / "emotions", {0: "anger", 1: "joy"})
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "SENTISTREAM_MODEL": str(emotions),
        "SENTISTREAM_LABEL_MAP": "anger:NEGATIVE,joy:POSITIVE",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker"], env=env, cwd=tmp_path, stderr=out
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if "loaded: backend" in log.read_text(errors="replace"):
                break
            time.sleep(0.2)
        text = log.read_text(errors="replace")
        assert "loaded: backend" in text, text
        assert "cannot map" not in text
    finally:
        process.kill()
        process.wait()


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
