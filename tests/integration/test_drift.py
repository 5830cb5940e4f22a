"""Drift end to end: `sentistream drift reference` profiles GLUE SST-2 dev scored by the shared
MiniLM; a worker given that profile publishes a drift record per event-time window and source.
A window of SST-2 dev sentences drawn like the reference stays quiet; a window of negative
sentences only is flagged for its label distribution."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.admin import ensure_topics
from connectors.producer import RecordProducer
from connectors.sink import read_topics
from stream.cli import main
from stream.settings import KafkaSettings, TopicSettings
from tests.conftest import SST2_DEV, Collector, WorkerFactory, require

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.one_broker]

WINDOW_S = 60
START_MS = 1_780_000_000_000 - (1_780_000_000_000 % (WINDOW_S * 1000))  # a window boundary


def labelled_dev() -> list[tuple[str, str]]:
    rows = require(SST2_DEV).read_text(encoding="utf-8").splitlines()[1:]
    return [(line.rsplit("\t", 1)[0], line.rsplit("\t", 1)[1]) for line in rows if line.strip()]


def test_a_label_shift_is_flagged_and_a_window_like_the_reference_is_not(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SENTISTREAM_BACKEND", "torch-fp32")
    reference = tmp_path / "reference.json"
    code = main(["drift", "reference", str(SST2_DEV), "--format", "sst2", "--model", str(minilm),
                 "--out", str(reference)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    profile = orjson.loads(reference.read_bytes())
    assert profile["events"] == 872
    assert profile["labelled"] == 872
    assert profile["correct"] == 780  # the shared model's 89.45% on GLUE dev

    drift_topic = f"{topics.events_topic}.drift"
    ensure_topics(kafka, {drift_topic: 1})
    worker = start_worker(
        minilm, topics,
        SENTISTREAM_BACKEND="torch-fp32", SENTISTREAM_DRIFT_REFERENCE=str(reference),
        SENTISTREAM_DRIFT_TOPIC=drift_topic, SENTISTREAM_DRIFT_WINDOW_S=str(WINDOW_S),
        SENTISTREAM_DRIFT_MIN_COUNT="50", SENTISTREAM_WINDOW_GRACE_S="1",
        SENTISTREAM_PARTITION_IDLE_S="3",
    )  # fmt: skip
    dev = labelled_dev()
    like_reference = dev[::4][:150]  # every 4th sentence: both labels, as in the file
    negatives = [row for row in dev if row[1] == "0"][:150]
    messages: list[dict[str, Any]] = []
    for window, rows in enumerate((like_reference, negatives)):
        for index, (text, label) in enumerate(rows):
            at = START_MS + window * WINDOW_S * 1000 + index * 300  # 45 s of event time
            gold = "POSITIVE" if label == "1" else "NEGATIVE"  # names: the worker has no map
            messages.append({"id": f"d{window}-{index}", "text": text, "label": gold,
                             "source": "reviews", "timestamp": at})  # fmt: skip
    # one late-enough message moves stream time past both windows' end + grace
    messages.append({"id": "closer", "text": "fine", "source": "reviews",
                     "timestamp": START_MS + 3 * WINDOW_S * 1000})  # fmt: skip
    producer = RecordProducer(kafka)
    for message in messages:
        producer.send(topics.input_topic, orjson.dumps(message), key=message["id"].encode())
    producer.flush()
    collect(topics, expected=len(messages), worker=worker)

    records: dict[tuple[int, str], dict[str, Any]] = {}
    for record in read_topics(kafka, [drift_topic], idle_timeout=15.0):
        document = orjson.loads(record.value or b"")
        records[(document["window_start_ms"] - START_MS, document["source"])] = document
        if len(records) >= 4:
            break
    quiet = records[(0, "source=reviews")]
    shifted = records[(WINDOW_S * 1000, "source=reviews")]
    assert quiet["events"] == 150
    assert quiet["drifted"] == []
    assert quiet["psi"]["label"] < 0.1
    assert 0.8 < quiet["accuracy"] <= 1.0
    assert quiet["ece"] is not None
    assert shifted["events"] == 150
    assert "label" in shifted["drifted"]
    assert shifted["psi"]["label"] > 0.2
    assert records[(0, "all")]["events"] == 150

    port = worker.env["SENTISTREAM_WEB_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'sentistream_drift_psi{distribution="label",source="source=reviews"}' in metrics
    assert "sentistream_window_accuracy" in metrics
