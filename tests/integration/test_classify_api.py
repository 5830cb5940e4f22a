"""``POST /v1/classify`` on a worker that is scoring a stream: answers in the event schema with
the stream's own model, nothing of it is published, clear 4xx answers, a per-client rate limit,
and schemathesis fuzzing against the served OpenAPI document (no 5xx, documented statuses only)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.producer import RecordProducer
from stream.settings import KafkaSettings, TopicSettings
from tests.conftest import Collector, WorkerFactory

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.one_broker]

TEXTS = ["I absolutely loved this film", "the worst service I have ever had",
         "@bob check https://x.co/a it is #NotGreat", "fine, I guess"]  # fmt: skip


BURST = 1500
EVENT_FIELDS = {"label", "score", "probabilities", "model_name", "model_version",
                "inference_time_ms", "text_length", "token_count", "truncated"}  # fmt: skip


def post(
    base: str, body: bytes, content_type: str = "application/json"
) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(f"{base}/v1/classify", data=body, method="POST",
                                     headers={"Content-Type": content_type})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, orjson.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read()), dict(exc.headers)


def test_classify_shares_the_streams_model_answers_4xx_clearly_limits_rate_and_survives_fuzzing(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
    tmp_path: Path,
) -> None:
    from models.runner import RunnerOptions, SentimentRunner

    # one worker for everything (each worker costs ~20 s of start-up): a burst big enough for the
    # checks and the fuzzing, then a rate slow enough that the burst's end is a clear 429
    worker = start_worker(
        minilm, topics, SENTISTREAM_BACKEND="torch-fp32", SENTISTREAM_API_MAX_TEXTS="8",
        SENTISTREAM_API_BURST=str(BURST), SENTISTREAM_API_RATE_PER_S="0.2",
    )  # fmt: skip
    base = f"http://127.0.0.1:{worker.env['SENTISTREAM_WEB_PORT']}"
    producer = RecordProducer(kafka)
    streamed = 300
    answers: list[tuple[int, Any, dict[str, str]]] = []

    def stream() -> None:  # the stream runs while the API is asked
        for index in range(streamed):
            producer.send(
                topics.input_topic, orjson.dumps({"id": f"s{index}", "text": TEXTS[index % 4]})
            )
            if index % 30 == 0:
                producer.flush()
                time.sleep(0.1)
        producer.flush()

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the web server answers once the worker is up
        try:
            with urllib.request.urlopen(f"{base}/v1/openapi.json", timeout=5) as response:
                assert orjson.loads(response.read())["openapi"].startswith("3.")
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    feeder = threading.Thread(target=stream)
    feeder.start()
    for _ in range(10):
        answers.append(post(base, orjson.dumps({"texts": TEXTS})))
    feeder.join()
    outputs = collect(topics, expected=streamed, worker=worker)
    assert len(outputs.events) == streamed  # no API text was published
    assert all(key.startswith("s") for key in outputs.events)

    reference = SentimentRunner(str(minilm), RunnerOptions(device="cpu", backend="torch-fp32"))
    stream_event = outputs.events["s0"][0]
    for status, body, _headers in answers:
        assert status == 200, body
        results = body["results"]
        assert len(results) == len(TEXTS)
        for result in results:
            assert set(result) >= EVENT_FIELDS
            assert result["model_version"] == stream_event["model_version"]
    cleaned = [outputs.events[f"s{i}"][0]["text"] for i in range(4)]  # the worker's cleaning
    expected = reference.predict(cleaned).predictions
    for result, prediction in zip(answers[-1][1]["results"], expected, strict=True):
        assert result["label"] == prediction.label
        assert result["score"] == pytest.approx(prediction.score, abs=1e-4)

    single = post(base, orjson.dumps({"text": "a lovely day"}))
    assert single[0] == 200
    assert single[1]["results"][0]["label"] == "POSITIVE"
    link_only = post(base, orjson.dumps({"texts": ["https://x.co/a", "nice"]}))
    assert link_only[0] == 200
    assert link_only[1]["results"][0]["error"]["code"] == "empty_after_cleaning"
    assert link_only[1]["results"][1]["label"] == "POSITIVE"
    for body, content_type, status, code in [
        (b"{oops", "application/json", 400, "invalid_json"),
        (b'{"texts": []}', "application/json", 400, "invalid_request"),
        (orjson.dumps({"texts": ["a"] * 9}), "application/json", 400, "too_many_texts"),
        (orjson.dumps({"text": "x" * 17_000}), "application/json", 400, "text_too_long"),
        (b"x" * 2_000_000, "application/json", 413, "request_too_large"),
        (b'{"text": "hi"}', "text/plain", 415, "unsupported_media_type"),
    ]:
        answer = post(base, body, content_type)
        assert (answer[0], answer[1]["error"]["code"]) == (status, code), answer[1]

    # schemathesis against the served document: no 5xx, documented statuses, schema-conform
    # answers, schema-invalid requests rejected
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    fuzz = subprocess.run(
        [st, "run", f"{base}/v1/openapi.json", "--wait-for-schema", "60",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
         "response_schema_conformance,negative_data_rejection",
         "--max-examples", "40", "--seed", "7", "--workers", "1", "--no-color"],
        capture_output=True, text=True, timeout=480, cwd=tmp_path,
    )  # fmt: skip
    assert fuzz.returncode == 0, fuzz.stdout[-6000:] + fuzz.stderr[-2000:]

    # the rest of the burst, then 429 with Retry-After (quick 400s spend the tokens)
    limited = None
    for _ in range(BURST + 5):
        status, body, headers = post(base, b"{oops")
        if status == 429:
            limited = (body, headers)
            break
        assert status == 400
    assert limited is not None, "no 429 after the burst"
    assert limited[0]["error"]["code"] == "rate_limited"
    assert int(limited[1]["Retry-After"]) >= 1
