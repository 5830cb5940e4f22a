"""Windowed ratios end to end: controlled event times -> worker(s) -> aggregates topic and HTTP.

Every channel's events are spread over all 4 input partitions, in event-time order within each
partition (every 10th event 12 s out of order, within grace). Stream time is the lowest of the
partitions' highest event times, so how the worker interleaves partitions cannot make an on-time
event late. Late events are produced once the on-time ones were scored, so their lateness is
unambiguous too; then far-future events on every partition close the remaining windows.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.producer import RecordProducer
from connectors.sink import read_topics
from stream.core.codec import format_time_ms
from stream.core.windows import aggregate_keys
from stream.settings import KafkaSettings, TopicSettings
from stream.worker_process import WorkerProcess
from tests.conftest import Collector, Outputs, WorkerFactory

pytestmark = [pytest.mark.broker, pytest.mark.slow]

T0 = 1_763_632_800_000  # 2025-11-20T10:00:00Z, a multiple of 300 s
TUMBLING_MS, HOPPING_MS, HOP_MS, GRACE_MS = 60_000, 300_000, 60_000, 30_000
FLUSH_AT = T0 + 3_600_000
CHANNELS = [
    ("twitter", "#general"),
    ("twitter", "@brand"),
    ("reddit", "r/gadgets"),
    ("chat", "#dev"),
]
POSITIVE_TEXTS = ["I love this, wonderful news 😍", "best day ever, thank you!", "so happy with it"]
NEGATIVE_TEXTS = ["I hate this, awful", "worst service ever, terrible", "this is so disappointing"]
WORKER_ENV = {
    "SENTISTREAM_WINDOW_TUMBLING_S": "60",
    "SENTISTREAM_WINDOW_HOPPING_S": "300",
    "SENTISTREAM_WINDOW_HOP_S": "60",
    "SENTISTREAM_WINDOW_GRACE_S": "30",
    "SENTISTREAM_WINDOW_HISTORY": "100",
    "SENTISTREAM_AGGREGATE_UPDATE_INTERVAL_S": "0.5",
    "SENTISTREAM_IDLE_FLUSH_S": "3600",
}


@dataclass(frozen=True)
class Input:
    id: str
    source: str
    channel: str
    time_ms: int
    text: str
    kind: str  # "on_time", "late" or "flush"
    partition: int


PARTITIONS = 4


def on_time_inputs() -> list[Input]:
    """240 events over 6 minutes; channel = index % 4, partition = (index // 4) % 4, so every
    channel is spread over every partition."""
    inputs: list[Input] = []
    for index in range(240):
        source, channel = CHANNELS[index % len(CHANNELS)]
        time_ms = T0 + index * 1_500 - (12_000 if index % 10 == 9 else 0)
        texts = POSITIVE_TEXTS if (index * 7) % 5 < 3 else NEGATIVE_TEXTS
        text = texts[index % len(texts)]
        partition = (index // len(CHANNELS)) % PARTITIONS
        inputs.append(Input(f"e{index:03d}", source, channel, time_ms, text, "on_time", partition))
    return inputs


def late_inputs() -> list[Input]:
    """8 events whose windows closed long ago, two on each partition."""
    return [
        Input(f"late{i}", *CHANNELS[i % len(CHANNELS)], T0 + 5_000, "so happy", "late", i % 4)
        for i in range(8)
    ]


def flush_inputs() -> list[Input]:
    """A far-future event per channel and partition: stream time passes every earlier window."""
    return [
        Input(f"flush{c}-{p}", source, channel, FLUSH_AT, "fine", "flush", p)
        for c, (source, channel) in enumerate(CHANNELS)
        for p in range(PARTITIONS)
    ]


def produce(kafka: KafkaSettings, topics: TopicSettings, inputs: list[Input]) -> None:
    assert topics.input_partitions == PARTITIONS
    producer = RecordProducer(kafka)
    for item in inputs:
        message = {
            "id": item.id,
            "text": item.text,
            "source": item.source,
            "channel": item.channel,
            "timestamp": item.time_ms,
        }
        producer.send(topics.input_topic, orjson.dumps(message), partition=item.partition)
    assert producer.flush().failed == 0


def feed_in_phases(
    kafka: KafkaSettings,
    topics: TopicSettings,
    collect: Collector,
    worker: WorkerProcess,
    on_time: list[Input],
) -> list[Input]:
    """Produce on-time events, wait until all were scored, then the late ones, then the flush."""
    produce(kafka, topics, on_time)
    collect(topics, expected=len(on_time_inputs()), worker=worker, distinct=True)
    rest = late_inputs() + flush_inputs()
    produce(kafka, topics, rest)
    return on_time_inputs() + rest


WindowKey = str  # "<key>|<kind>|<start>", as on the aggregates topic


def expected_windows(inputs: list[Input], outputs: Outputs) -> dict[WindowKey, dict[str, Any]]:
    """Reference counts from the events the worker published (their labels and scores)."""
    windows: dict[WindowKey, dict[str, Any]] = defaultdict(
        lambda: {"POSITIVE": 0, "NEGATIVE": 0, "score_sum": 0.0, "uncertain": Counter()}
    )
    for item in inputs:
        if item.kind != "on_time":
            continue
        event = outputs.events[item.id][0]  # a duplicate after a crash has the same label
        starts = {
            "tumbling": [item.time_ms // TUMBLING_MS * TUMBLING_MS],
            "hopping": [
                item.time_ms // HOP_MS * HOP_MS - i * HOP_MS for i in range(HOPPING_MS // HOP_MS)
            ],
        }
        for key in aggregate_keys(item.source, item.channel):
            for kind, kind_starts in starts.items():
                for start in kind_starts:
                    window = windows[f"{key}|{kind}|{format_time_ms(start)}"]
                    window[event["label"]] += 1
                    window["score_sum"] += event["score"]
                    if event.get("uncertain"):
                        window["uncertain"][event["label"]] += 1
    return dict(windows)


def read_finals(
    kafka: KafkaSettings,
    topics: TopicSettings,
    wanted: set[WindowKey],
    workers: list[WorkerProcess],
) -> dict[WindowKey, dict[str, Any]]:
    finals: dict[WindowKey, dict[str, Any]] = {}
    deadline = time.monotonic() + 180

    def done() -> bool:
        for worker in workers:
            if worker.exit_code() is not None:
                pytest.fail(f"worker exited {worker.exit_code()}:\n{worker.log_tail()}")
        return wanted <= set(finals)

    for record in read_topics(kafka, [topics.aggregates_topic], deadline=deadline, until=done):
        value = orjson.loads(record.value or b"")
        key = (record.key or b"").decode()
        assert key == f"{value['key']}|{value['window']}|{value['window_start']}"
        if value["final"]:
            if key in finals:  # a final published again after a crash must say the same
                assert _counts(finals[key]) == _counts(value)
            finals[key] = value
    missing = wanted - set(finals)
    assert not missing, f"{len(missing)} windows never got a final, e.g. {sorted(missing)[:3]}"
    return finals


def _counts(value: dict[str, Any]) -> tuple[int, int]:
    return value["counts"]["POSITIVE"], value["counts"]["NEGATIVE"]


def assert_exact(
    finals: dict[WindowKey, dict[str, Any]], expected: dict[WindowKey, dict[str, Any]]
) -> None:
    for window_key, want in expected.items():
        got = finals[window_key]
        assert _counts(got) == (want["POSITIVE"], want["NEGATIVE"]), window_key
        polar = want["POSITIVE"] + want["NEGATIVE"]
        assert got["positive_ratio"] == pytest.approx(want["POSITIVE"] / polar)
        assert got["mean_score"] == pytest.approx(want["score_sum"] / polar)
        unsure = want["uncertain"]
        assert got["uncertain"] == sum(unsure.values()), window_key
        sure = (want["POSITIVE"] - unsure["POSITIVE"], want["NEGATIVE"] - unsure["NEGATIVE"])
        confident = sure[0] / sum(sure) if sum(sure) else None
        assert got["confident_positive_ratio"] == pytest.approx(confident), window_key
    unexpected = {k for k in finals if k not in expected and not _flush_window(k)}
    assert not unexpected, f"finals for windows that should hold nothing: {sorted(unexpected)[:3]}"


def _flush_window(window_key: str) -> bool:
    start = window_key.rsplit("|", 1)[1]
    return start >= format_time_ms(FLUSH_AT - HOPPING_MS)


def http_get(worker: WorkerProcess, path: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{worker.env['SENTISTREAM_WEB_PORT']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def run_and_collect(
    kafka: KafkaSettings,
    topics: TopicSettings,
    collect: Collector,
    workers: list[WorkerProcess],
    inputs: list[Input],
) -> tuple[Outputs, dict[WindowKey, dict[str, Any]], dict[WindowKey, dict[str, Any]]]:
    outputs = collect(topics, expected=len(inputs), worker=workers[-1], distinct=True)
    assert not outputs.dead_letters
    expected = expected_windows(inputs, outputs)
    finals = read_finals(kafka, topics, set(expected), workers)
    return outputs, expected, finals


def test_windows_are_exact_on_the_topic_and_over_http(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
) -> None:
    # A threshold between the negative (~0.99) and positive (~0.997) texts' scores: the negative
    # events are uncertain, counted apart in their windows.
    worker = start_worker(minilm, topics, SENTISTREAM_CONFIDENCE_THRESHOLD="0.995", **WORKER_ENV)
    inputs = feed_in_phases(kafka, topics, collect, worker, on_time_inputs())

    outputs, expected, finals = run_and_collect(kafka, topics, collect, [worker], inputs)
    assert_exact(finals, expected)
    flags = [copies[0]["uncertain"] for copies in outputs.events.values()]
    assert any(flags), "no event below the threshold: the uncertain counts were not exercised"
    assert not all(flags), "every event below the threshold"

    late = sum(1 for item in inputs if item.kind == "late")
    status, body = http_get(worker, "/aggregates?key=all&window=tumbling&last=100")
    assert status == 200
    assert body["late_events"] == late
    served = {f"all|tumbling|{w['window_start']}": w for w in body["closed"]}
    for window_key, want in expected.items():
        if window_key.startswith("all|tumbling|"):
            assert _counts(served[window_key]) == (want["POSITIVE"], want["NEGATIVE"])
    assert [w["window_start"] for w in body["current"]] == [format_time_ms(FLUSH_AT)]

    status, body = http_get(worker, "/aggregates/keys")
    assert status == 200
    wanted_keys = {k for item in inputs for k in aggregate_keys(item.source, item.channel)}
    assert set(body["keys"]) == wanted_keys

    assert http_get(worker, "/aggregates?window=tumbling")[0] == 400
    status, body = http_get(worker, "/aggregates?key=all&window=sliding")
    assert status == 400
    assert "window" in body["error"]
    assert http_get(worker, "/aggregates?key=all&last=-3")[0] == 400
    assert http_get(worker, "/aggregates?key=source%3Dnowhere")[0] == 404


def test_windows_stay_exact_across_a_worker_restart(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
) -> None:
    on_time = on_time_inputs()
    first = start_worker(minilm, topics, **WORKER_ENV)
    produce(kafka, topics, on_time[:120])
    seen = 0
    for record in read_topics(kafka, [topics.aggregates_topic], deadline=time.monotonic() + 120):
        seen += orjson.loads(record.value or b"")["final"]
        if seen >= 20:  # some windows already final, others open: restart mid-stream
            break
    assert seen >= 20, first.log_tail()
    # A deployment's restart: SIGTERM. (After a SIGKILL, exactness held in 4 of 5 runs here;
    # in the fifth 3 of 200 events were missing from one window: see the issue notes.)
    assert first.stop() == 0

    second = start_worker(minilm, topics, **WORKER_ENV)
    inputs = feed_in_phases(kafka, topics, collect, second, on_time[120:])
    _, expected, finals = run_and_collect(kafka, topics, collect, [second], inputs)
    assert_exact(finals, expected)


def test_two_workers_in_one_group_give_the_same_windows_as_one(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
) -> None:
    workers = [start_worker(minilm, topics, **WORKER_ENV) for _ in range(2)]
    inputs = feed_in_phases(kafka, topics, collect, workers[-1], on_time_inputs())

    _, expected, finals = run_and_collect(kafka, topics, collect, workers, inputs)
    assert_exact(finals, expected)
    keys_by_worker = [set(http_get(w, "/aggregates/keys")[1]["keys"]) for w in workers]
    assert all(keys_by_worker), "each worker owns some aggregate keys"
    assert not keys_by_worker[0] & keys_by_worker[1], "a key is owned by exactly one worker"
    # Either worker answers for any key: the request is routed to the key's owner.
    answers = [http_get(w, "/aggregates?key=all&window=hopping&last=100") for w in workers]
    assert [status for status, _ in answers] == [200, 200]
    assert answers[0][1] == answers[1][1]
