"""Model versions in production: a registry, promotion and rollback published to the control
topic, and workers that swap models under a steady stream without a restart or a rebalance."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.producer import RecordProducer
from stream.cli import main
from stream.settings import KafkaSettings, TopicSettings
from stream.worker_process import WorkerProcess
from tests.conftest import Collector, WorkerFactory, app_id_for

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.one_broker]

MESSAGES = 900
RATE = 30.0  # per second: the stream lasts 30 s


def metric(worker: WorkerProcess, name: str) -> float:
    url = f"http://127.0.0.1:{worker.env['SENTISTREAM_WEB_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def registry(
    tmp_path: Path, minilm: Path, kafka: KafkaSettings, topics: TopicSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:  # fmt: skip
    """1.0.0: the shared MiniLM; 1.1.0: the same folded into one sigmoid logit (other weights,
    same labels); 1.2.0: a checkpoint whose weights are garbage (it cannot load)."""
    from models.checkpoints import fold_to_single_logit

    root = tmp_path / "registry"
    for name, value in {
        "SENTISTREAM_MODEL_REGISTRY": str(root),
        "SENTISTREAM_APP_ID": app_id_for(topics),
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_BROKER_PROFILE": str(kafka.broker_profile),
    }.items():
        monkeypatch.setenv(name, value)
    folded = fold_to_single_logit(minilm, tmp_path / "folded")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((minilm / "config.json").read_bytes())
    (broken / "model.safetensors").write_bytes(b"not weights at all")
    assert main(["models", "add", str(minilm), "--version", "1.0.0", "--link"]) == 0
    assert main(["models", "add", str(folded), "--version", "1.1.0", "--notes", "one logit"]) == 0
    assert main(["models", "add", str(broken), "--version", "1.2.0"]) == 0
    return root


def test_versions_are_immutable_and_must_be_semantic(
    registry: Path, minilm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["models", "add", str(minilm), "--version", "1.0.0"]) == 2
    assert "already in the registry (immutable)" in capsys.readouterr().err
    assert main(["models", "add", str(minilm), "--version", "v2"]) == 2
    assert "not a semantic version" in capsys.readouterr().err
    assert main(["models", "rollback"]) == 2
    assert "nothing was promoted" in capsys.readouterr().err
    assert main(["models", "promote", "9.9.9"]) == 2
    assert "no version 9.9.9" in capsys.readouterr().err


def test_a_promotion_swaps_every_event_to_the_new_version_without_a_rebalance(
    registry: Path,
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "promote", "1.0.0"]) == 0
    # A worker that starts after a promotion runs the promoted version, not SENTISTREAM_MODEL's.
    worker = start_worker(minilm, topics, SENTISTREAM_BACKEND="torch-fp32")
    ids = [f"swap-{i:04d}" for i in range(MESSAGES)]

    def produce() -> None:
        producer = RecordProducer(kafka)
        started = time.monotonic()
        for index, message_id in enumerate(ids):
            pause = started + index / RATE - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            text = f"message {index}: {'great stuff' if index % 3 else 'awful stuff'}"
            value = orjson.dumps({"id": message_id, "text": text})
            producer.send(topics.input_topic, value, key=message_id.encode(), partition=index % 4)
        producer.flush()

    wait_for(lambda: _healthy(worker), 120, "the worker's first assignment")
    rebalances = metric(worker, "sentistream_rebalances_total")
    stream = threading.Thread(target=produce)
    stream.start()
    time.sleep(6)
    promoted_ms = time.time() * 1000
    assert main(["models", "promote", "1.1.0"]) == 0
    wait_for(lambda: metric(worker, "sentistream_model_swaps_total") >= 1, 60, "the swap")
    assert main(["models", "promote", "1.2.0"]) == 0  # cannot load: the worker stays on 1.1.0
    wait_for(lambda: metric(worker, "sentistream_model_load_failures_total") >= 1, 60, "failure")
    capsys.readouterr()
    wait_for(lambda: _listed(capsys, "FAILED to load 1.2.0"), 30, "the failure on the topic")
    assert main(["models", "rollback"]) == 0  # to 1.1.0: what the worker runs already
    assert main(["models", "rollback"]) == 0  # to 1.0.0: a swap back
    wait_for(lambda: metric(worker, "sentistream_model_swaps_total") >= 2, 60, "the rollback")
    stream.join()

    outputs = collect(topics, expected=len(ids), worker=worker)
    assert set(outputs.events) == set(ids), "a swap lost messages"
    twice = [m for m, copies in outputs.events.items() if len(copies) > 1]
    assert not twice, f"a swap scored {len(twice)} messages twice"
    assert not outputs.dead_letters

    # Per input partition, in input order, the version changes only at batch boundaries and only
    # forward: 1.0.0, then 1.1.0, then 1.0.0 again (after the rollback).
    by_partition: dict[int, list[str]] = defaultdict(list)
    for index, message_id in enumerate(ids):
        (event,) = outputs.events[message_id]
        by_partition[index % 4].append(str(event["model_version"]))
    for partition, versions in by_partition.items():
        runs = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
        assert runs in (["1.0.0", "1.1.0", "1.0.0"], ["1.0.0", "1.1.0"], ["1.1.0", "1.0.0"]), (
            partition, runs,
        )  # fmt: skip
    seen = {str(copies[0]["model_version"]) for copies in outputs.events.values()}
    assert seen == {"1.0.0", "1.1.0"}, "1.2.0 never scored anything"
    first_new = min(
        _ms(copies[0]["processed_at"])
        for copies in outputs.events.values()
        if copies[0]["model_version"] == "1.1.0"
    )
    with capsys.disabled():  # a measurement for the README, not an assertion
        print(f"\npromote -> first event scored by 1.1.0: {(first_new - promoted_ms) / 1000:.1f} s")

    assert metric(worker, "sentistream_rebalances_total") == rebalances, "a swap rebalanced"
    assert metric(worker, "sentistream_model_swaps_total") == 2
    assert metric(worker, "sentistream_model_load_failures_total") == 1

    capsys.readouterr()
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^1\.0\.0\s+active", listing, re.MULTILINE), listing
    # both rollbacks undid their promotions: nothing was promoted before 1.0.0
    assert re.search(r"^1\.1\.0\s+\d{4}-", listing, re.MULTILINE), listing
    assert "runs 1.0.0" in listing  # each worker's latest status: the rollback's swap


def _healthy(worker: WorkerProcess) -> bool:
    url = f"http://127.0.0.1:{worker.env['SENTISTREAM_WEB_PORT']}/health"
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        if worker.exit_code() is not None:
            pytest.fail(f"worker exited:\n{worker.log_tail()}")
        return False


def _listed(capsys: pytest.CaptureFixture[str], text: str) -> bool:
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    return text in listing and "runs 1.1.0" in listing


def test_a_canary_and_a_shadow_run_beside_the_primary_and_compare_reports_them(
    registry: Path,
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Canary 1.1.0 (the folded one-logit copy: same labels) scores half of the messages; a
    shadow (1.1.0 again) re-scores every message after whichever model scored it."""
    shadow_topic = f"{topics.input_topic}.shadow"
    worker = start_worker(
        minilm,
        topics,
        SENTISTREAM_BACKEND="torch-fp32",
        SENTISTREAM_MODEL_REGISTRY=str(registry),
        SENTISTREAM_CANARY_MODEL="1.1.0",
        SENTISTREAM_CANARY_FRACTION="0.5",
        SENTISTREAM_SHADOW_MODEL="1.1.0",
        SENTISTREAM_SHADOW_TOPIC=shadow_topic,
    )
    producer = RecordProducer(kafka)
    ids = [f"cs-{i:03d}" for i in range(200)]
    for index, message_id in enumerate(ids):
        good = index % 3 != 0
        text = f"{index}: {'what a great day, love it' if good else 'awful, I hate this'}"
        value = {"id": message_id, "text": text, "label": "POSITIVE" if good else "NEGATIVE"}
        producer.send(topics.input_topic, orjson.dumps(value), key=message_id.encode())
    producer.flush()
    outputs = collect(topics, expected=len(ids), worker=worker)

    versions = {m: str(copies[0]["model_version"]) for m, copies in outputs.events.items()}
    canaried = [m for m, v in versions.items() if v == "1.1.0"]
    assert 60 < len(canaried) < 140, "about half go to the canary"
    primary_versions = set(versions.values()) - {"1.1.0"}
    assert len(primary_versions) == 1, primary_versions
    assert primary_versions.pop().startswith("sha256:"), "the rest: SENTISTREAM_MODEL's weights"

    monkeypatch.setenv("SENTISTREAM_SHADOW_TOPIC", shadow_topic)
    monkeypatch.setenv("SENTISTREAM_EVENTS_TOPIC", topics.events_topic)
    capsys.readouterr()
    assert main(["compare", "--shadow"]) == 0
    report = capsys.readouterr().out
    assert "vs shadow 1.1.0: " in report
    assert report.count("agreement 100.00%") == 2, report  # primary and canary both vs the shadow
    assert "accuracy on" in report
    assert main(["compare", "--canary"]) == 0
    versions_report = capsys.readouterr().out
    canary_row = next(line for line in versions_report.splitlines() if line.startswith("1.1.0"))
    assert f" {len(canaried)} " in canary_row, versions_report

    # windows per model version, served over HTTP
    status, body = _get(worker, "/aggregates/keys")
    assert status == 200
    assert "model=1.1.0" in body["keys"], body


def _get(worker: WorkerProcess, path: str) -> tuple[int, dict[str, Any]]:
    import json

    url = f"http://127.0.0.1:{worker.env['SENTISTREAM_WEB_PORT']}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read())


def _ms(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000
