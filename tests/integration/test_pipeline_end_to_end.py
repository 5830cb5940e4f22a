"""The whole pipeline on a real broker with a real worker process and a real model."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.producer import RecordProducer
from stream.core.codec import (
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    HEADER_STAGE,
)
from stream.settings import KafkaSettings, TopicSettings
from stream.worker_process import WorkerProcess
from tests.conftest import Collector, WorkerFactory

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EVENT_FIELDS = {
    "id", "source", "channel", "author", "lang", "label", "score", "probabilities", "model_name",
    "model_version", "inference_time_ms", "batch_size", "text_length", "token_count", "truncated",
    "event_time", "processed_at", "text", "lang_detected",
}  # fmt: skip

OPENERS = ["Honestly", "ok so", "lol", "Wow", "Ugh", "Not gonna lie", "Just saying", "Hmm"]
BODIES = [
    "this update is fantastic and the team nailed it",
    "worst customer service I have ever dealt with",
    "the new album is pure joy from start to finish",
    "my train is late again and nobody tells us anything",
    "loving the weather today, perfect for a run",
    "the app keeps crashing every time I open it",
    "great match last night, what a comeback",
    "refund still not processed after three weeks",
]
DECORATIONS = ["", " @friend", " #GreatDay", " https://t.co/abc123", " &amp; more", " 😍", " 😡🔥"]


@dataclass(frozen=True)
class BadInput:
    value: bytes
    reason: str


def bad_inputs(count: int) -> list[BadInput]:
    """Unique bad records of every kind; each value is unique so a dead letter maps back."""
    makers = [
        lambda i: BadInput(f"not json {i}".encode(), "invalid_json"),
        lambda i: BadInput(b'{"id": "bad-%d", "text": "caf\xe9 \xff"}' % i, "invalid_utf8"),
        lambda i: BadInput(f"[{i}, 2]".encode(), "not_an_object"),
        lambda i: BadInput(f'{{"id": "bad-{i}"}}'.encode(), "missing_text"),
        lambda i: BadInput(f'{{"id": "bad-{i}", "text": {i}}}'.encode(), "text_not_string"),
        lambda i: BadInput(f'{{"id": "bad-{i}", "text": "   "}}'.encode(), "empty_text"),
        lambda i: BadInput(orjson.dumps({"id": f"bad-{i}", "text": "x " * 40_000}), "oversize"),
        lambda i: BadInput(
            f'{{"id": "bad-{i}", "text": "https://example.com/{i}"}}'.encode(),
            "empty_after_cleaning",
        ),
        lambda i: BadInput(
            f'{{"id": "bad-{i}", "text": "hi", "timestamp": "yesterday"}}'.encode(),
            "invalid_field",
        ),
        lambda i: BadInput(
            f'{{"id": "bad-{i}", "text": "hi", "source": 7}}'.encode(), "invalid_field"
        ),
        lambda i: BadInput(
            f'{{"id": "bad-{i}", "text": "truncated'.encode() + str(i).encode(), "invalid_json"
        ),
    ]
    return [makers[i % len(makers)](i) for i in range(count)]


def good_message(index: int, rng: random.Random, with_id: bool = True) -> dict[str, object]:
    text = f"{rng.choice(OPENERS)} {rng.choice(BODIES)}{rng.choice(DECORATIONS)} ({index})"
    message: dict[str, object] = {
        "text": text,
        "source": rng.choice(["twitter", "reddit", "chat"]),
        "channel": rng.choice(["#general", "r/gadgets", "@brand"]),
        "author": f"user{index % 37}",
        "timestamp": 1_763_600_000_000 + index * 250,
    }
    if with_id:
        message["id"] = f"msg-{index:05d}"
    return message


def test_every_message_ends_as_exactly_one_event_or_dead_letter(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
) -> None:
    rng = random.Random(7)
    good = [good_message(i, rng, with_id=i % 100 != 0) for i in range(1900)]
    bad = bad_inputs(100)
    records: list[tuple[bytes | None, bytes]] = [
        (str(m["id"]).encode() if "id" in m else None, orjson.dumps(m)) for m in good
    ]
    records += [(None, b.value) for b in bad]
    rng.shuffle(records)

    worker = start_worker(minilm, topics, SENTISTREAM_BATCH_SIZE="32")
    producer = RecordProducer(kafka)
    for key, value in records:
        producer.send(topics.input_topic, value, key=key)
    assert producer.flush().sent == len(records)

    outputs = collect(topics, expected=len(records), worker=worker)

    assert outputs.count == len(records), "an input produced more than one output"
    duplicated = {i: len(v) for i, v in outputs.events.items() if len(v) > 1}
    assert not duplicated
    with_id = {str(m["id"]) for m in good if "id" in m}
    derived = set(outputs.events) - with_id
    assert with_id <= set(outputs.events), (
        f"missing events: {sorted(with_id - set(outputs.events))[:5]}"
    )
    assert len(derived) == sum(1 for m in good if "id" not in m)
    assert all(i.startswith(f"{topics.input_topic}/") for i in derived)

    for (event,) in outputs.events.values():
        assert set(event) >= EVENT_FIELDS
        assert event["label"] in {"POSITIVE", "NEGATIVE"}
        probabilities = event["probabilities"]
        assert isinstance(probabilities, dict)
        assert event["score"] == max(probabilities.values())
        assert abs(sum(probabilities.values()) - 1) < 1e-5
        assert event["model_name"] == str(minilm)
        assert str(event["model_version"]).startswith("sha256:")
        assert "@friend" not in str(event["text"])
        assert "https://" not in str(event["text"])

    expected_reason = {b.value: b.reason for b in bad}
    assert len(outputs.dead_letters) == len(bad)
    for record in outputs.dead_letters:
        value = record.value or b""
        assert value in expected_reason, f"dead letter with altered bytes: {value[:60]!r}"
        assert record.headers[HEADER_REASON].decode() == expected_reason.pop(value)
        assert record.headers[HEADER_SOURCE_TOPIC].decode() == topics.input_topic
        assert int(record.headers[HEADER_SOURCE_PARTITION]) in range(topics.input_partitions)
        assert int(record.headers[HEADER_SOURCE_OFFSET]) >= 0
        assert record.headers[HEADER_STAGE] in {b"decode", b"validate", b"clean"}
    assert not expected_reason, "some bad inputs got no dead letter"

    metrics = scrape_metrics(worker, until=lambda m: m["sentistream_messages_in_total"] >= 2000)
    assert metrics["sentistream_messages_in_total"] == len(records)
    assert metrics["sentistream_events_out_total"] == len(good)
    dead = {k: v for k, v in metrics.items() if k.startswith("sentistream_dead_letters_total")}
    assert sum(dead.values()) == len(bad)
    assert metrics['sentistream_dead_letters_total{reason="invalid_json"}'] == sum(
        1 for b in bad if b.reason == "invalid_json"
    )
    assert metrics["sentistream_batch_size_sum"] == len(good)  # every scored text, one pass each
    assert metrics["sentistream_take_size_sum"] == len(records)
    assert 0 < metrics["sentistream_padding_efficiency"] <= 1
    assert metrics["sentistream_end_to_end_latency_seconds_count"] == len(records)
    assert (
        metrics["sentistream_model_latency_seconds_count"]
        == metrics["sentistream_batch_size_count"]
    )
    assert metrics["sentistream_process_peak_resident_memory_bytes"] > 50 * 2**20
    (info,) = [k for k in metrics if k.startswith("sentistream_model_info")]
    assert f'model="{minilm}"' in info

    # Everything is committed: /health says so per input partition, and so does the lag gauge.
    inputs = [f"{topics.input_topic}/{p}" for p in range(topics.input_partitions)]
    status, health = wait_for_health(worker, until=lambda h: all(
        h.get("partitions", {}).get(p, {}).get("lag") == 0 for p in inputs
    ))  # fmt: skip
    assert status == 200, health
    assert health["status"] == "ok"
    assert health["phase"] == "running"
    assert health["last_event_ms"] is not None
    assert sum(health["partitions"][p]["committed"] for p in inputs) == len(records)
    metrics = scrape_metrics(worker, until=lambda m: True)
    for partition in inputs:
        assert metrics[f'sentistream_consumer_lag{{partition="{partition}"}}'] == 0
    assert metrics["sentistream_rebalances_total"] >= 1
    assert metrics["sentistream_recovery_seconds_count"] >= 1
    assert 'backend="onnx-int8"' in info  # the CPU default


def scrape_metrics(
    worker: WorkerProcess, until: Callable[[dict[str, float]], bool], timeout: float = 20.0
) -> dict[str, float]:
    """The worker's /metrics as {'name{labels}': value}, once ``until`` holds (or at timeout)."""
    port = worker.env["SENTISTREAM_WEB_PORT"]
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            body = response.read().decode()
        metrics: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                metrics[name] = float(value)
        if until(metrics) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.5)


def wait_for_health(
    worker: WorkerProcess, until: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> tuple[int, dict[str, Any]]:
    """The worker's /health (status, body), once ``until`` holds for the body (or at timeout)."""
    port = worker.env["SENTISTREAM_WEB_PORT"]
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
                status, body = response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:  # 503 while starting or recovering
            status, body = error.code, json.loads(error.read())
        if until(body) or time.monotonic() > deadline:
            return status, body
        time.sleep(0.5)


CLEAR_CASES = {
    "I love this so much, best day ever! 😍": "POSITIVE",
    "@support you guys are amazing, thank you so much 🙌": "POSITIVE",
    "Absolutely brilliant show tonight #BestConcertEver": "POSITIVE",
    "thanks so much, this made my week!!": "POSITIVE",
    "What a wonderful, heartwarming film. Highly recommend.": "POSITIVE",
    "lol this is great": "POSITIVE",
    "This is the worst service I have ever experienced.": "NEGATIVE",
    "@airline lost my luggage again, absolutely furious https://t.co/x1": "NEGATIVE",
    "ugh, my phone died again. terrible battery #fail": "NEGATIVE",
    "I hate waiting on hold for two hours, awful": "NEGATIVE",
    "The food was cold and disgusting, never going back.": "NEGATIVE",
    "so disappointed with this update, everything is broken": "NEGATIVE",
}


def test_clear_social_messages_get_the_right_label_through_the_worker(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
) -> None:
    worker = start_worker(minilm, topics)
    producer = RecordProducer(kafka)
    for index, text in enumerate(CLEAR_CASES):
        producer.send(topics.input_topic, orjson.dumps({"id": f"clear-{index}", "text": text}))
    producer.flush()

    outputs = collect(topics, expected=len(CLEAR_CASES), worker=worker)

    got = {text: outputs.events[f"clear-{i}"][0]["label"] for i, text in enumerate(CLEAR_CASES)}
    assert got == CLEAR_CASES


@pytest.mark.one_broker  # batching and scoring sit above the broker: one broker is enough
@pytest.mark.parametrize("backend", ["torch-fp32", "onnx-fp32"])
def test_batched_worker_results_equal_one_at_a_time_pipeline(
    backend: str,
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    random_distilbert: Path,
    sst2_sentences: list[str],
) -> None:
    from transformers import pipeline

    texts = [*sst2_sentences[:60], " ".join(sst2_sentences[60:140])]  # one over 512 tokens
    worker = start_worker(
        random_distilbert,
        topics,
        SENTISTREAM_BATCH_SIZE="16",
        SENTISTREAM_BATCH_MAX_WAIT_MS="500",
        SENTISTREAM_BACKEND=backend,
    )
    producer = RecordProducer(kafka)
    for index, text in enumerate(texts):
        producer.send(topics.input_topic, orjson.dumps({"id": f"s{index}", "text": text}))
    producer.flush()
    outputs = collect(topics, expected=len(texts), worker=worker)
    assert not outputs.dead_letters

    classify = pipeline(
        "text-classification", model=str(random_distilbert), top_k=None, device="cpu"
    )
    worst = 0.0
    for index in range(len(texts)):
        (event,) = outputs.events[f"s{index}"]
        reference: list[dict[str, Any]] = classify([str(event["text"])], truncation=True)[0]  # type: ignore[assignment]
        expected = {row["label"]: row["score"] for row in reference}
        probabilities = event["probabilities"]
        assert isinstance(probabilities, dict)
        assert set(probabilities) == set(expected)
        worst = max(worst, *(abs(probabilities[k] - expected[k]) for k in expected))
        assert event["label"] == max(expected, key=expected.__getitem__)
    assert worst <= 1e-4
    assert max(int(e[0]["batch_size"]) for e in outputs.events.values()) > 1, "nothing was batched"
    assert outputs.events[f"s{len(texts) - 1}"][0]["truncated"] is True


@pytest.mark.one_broker
def test_a_single_logit_checkpoint_scores_like_its_two_class_origin_through_the_worker(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
    tmp_path: Path,
) -> None:
    """The custom model spec's head: one logit, sigmoid, POSITIVE at p >= 0.5. Folded from the
    shared MiniLM's two classes (logit l1 - l0), it must publish the two-class model's labels and
    scores, with both classes' probabilities."""
    from models.checkpoints import fold_to_single_logit
    from models.runner import RunnerOptions, SentimentRunner

    folded = fold_to_single_logit(minilm, tmp_path / "single-logit")
    texts = [*CLEAR_CASES, *(f"{o} {b}" for o in OPENERS[:4] for b in BODIES[:6])]
    worker = start_worker(folded, topics, SENTISTREAM_BACKEND="torch-fp32")
    producer = RecordProducer(kafka)
    for index, text in enumerate(texts):
        producer.send(topics.input_topic, orjson.dumps({"id": f"one-{index}", "text": text}))
    producer.flush()
    outputs = collect(topics, expected=len(texts), worker=worker)

    two_class = SentimentRunner(str(minilm), RunnerOptions(device="cpu", backend="torch-fp32"))
    events = [outputs.events[f"one-{index}"][0] for index in range(len(texts))]
    # the text the worker scored (cleaned: mentions, URLs, hashtags), scored by the two classes
    reference = two_class.predict([str(event["text"]) for event in events]).predictions
    assert {p.label for p in reference} == {"NEGATIVE", "POSITIVE"}, "a mix proves more"
    for event, expected in zip(events, reference, strict=True):
        assert event["label"] == expected.label
        assert event["score"] == pytest.approx(expected.score, abs=1e-5)
        assert set(event["probabilities"]) == {"NEGATIVE", "POSITIVE"}
        assert event["model_name"] == str(folded)
