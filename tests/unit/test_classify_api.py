"""The classify API's request checks, results and rate limit (stream.core.classify_api), and how
its texts are taken out of a take's outcome (stream.core.pipeline.split_outcome)."""

from __future__ import annotations

import orjson
import pytest

from stream.core.classify_api import (
    ApiError,
    ApiLimits,
    TokenBucket,
    api_result,
    openapi_document,
    parse_classify_request,
    retry_after_header,
)

LIMITS = ApiLimits(max_texts=3, max_text_bytes=80, max_request_bytes=200)  # 20 characters


def test_one_text_or_a_list_of_texts() -> None:
    assert parse_classify_request(b'{"text": "great"}', LIMITS) == ["great"]
    assert parse_classify_request(b'{"texts": ["a", "b c"]}', LIMITS) == ["a", "b c"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{nope", 400, "invalid_json"),
        (b'["a"]', 400, "invalid_request"),
        (b'{"text": "a", "texts": ["b"]}', 400, "invalid_request"),
        (b'{"txt": "a"}', 400, "invalid_request"),
        (b"{}", 400, "invalid_request"),
        (b'{"texts": "a"}', 400, "invalid_request"),
        (b'{"texts": []}', 400, "invalid_request"),
        (b'{"texts": ["a", 3]}', 400, "invalid_text"),
        (b'{"text": "   "}', 400, "empty_text"),
        (b'{"texts": ["a", "b", "c", "d"]}', 400, "too_many_texts"),
        (b'{"text": "' + b"x" * 21 + b'"}', 400, "text_too_long"),
        (b'{"text": "' + b"x" * 300 + b'"}', 413, "request_too_large"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_code(body: bytes, status: int, code: str) -> None:
    problem = parse_classify_request(body, LIMITS)
    assert isinstance(problem, ApiError)
    assert (problem.status, problem.code) == (status, code)
    assert set(problem.body()["error"]) == {"code", "message"}


def test_any_text_within_the_character_limit_is_within_the_byte_limit() -> None:
    widest = "😀" * LIMITS.max_text_chars  # 4 bytes a character
    assert parse_classify_request(orjson.dumps({"text": widest}), LIMITS) == [widest]
    assert len(widest.encode()) == LIMITS.max_text_bytes


def test_a_result_has_the_event_fields_without_ids_or_text() -> None:
    payload = {"id": "api-1-0", "source": None, "text": "secret", "label": "POSITIVE",
               "score": 0.9, "probabilities": {"POSITIVE": 0.9, "NEGATIVE": 0.1},
               "model_name": "m", "model_version": "v", "inference_time_ms": 3.0,
               "text_length": 6, "token_count": 3, "truncated": False}  # fmt: skip
    result = api_result(payload)
    assert "text" not in result
    assert "id" not in result
    assert result["label"] == "POSITIVE"
    assert result["token_count"] == 3


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    assert [bucket.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.take("a", 100.0)
    assert wait == pytest.approx(0.5)
    assert retry_after_header(wait) == "1"
    assert bucket.take("b", 100.0) == 0.0  # clients are apart
    assert bucket.take("a", 100.5) == 0.0  # one token back after 1/rate
    assert bucket.take("a", 100.5) > 0.0


def test_the_openapi_document_names_the_limits_and_statuses() -> None:
    document = openapi_document(LIMITS)
    operation = document["paths"]["/v1/classify"]["post"]
    assert set(operation["responses"]) == {"200", "400", "413", "415", "429", "503"}
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["oneOf"][1]["properties"]["texts"]["maxItems"] == 3
    orjson.dumps(document)  # serialisable as served


def test_split_outcome_takes_the_api_texts_out_of_a_take() -> None:
    from stream.core.codec import encode_json
    from stream.core.pipeline import PipelineConfig, process_batch, split_outcome
    from stream.core.records import RawRecord
    from tests.unit.test_pipeline import FakeClassifier, fixed_clock

    def record(topic: str, offset: int, key: bytes, value: bytes) -> RawRecord:
        return RawRecord(value=value, key=key, topic=topic, partition=0, offset=offset,
                         timestamp_ms=1_700_000_000_000)  # fmt: skip

    records = [  # API records are keyed by their id, as stream.classify_service makes them
        record("input", 0, b"k0", encode_json({"id": "k0", "text": "good"})),
        record("<api>", 0, b"a0", encode_json({"id": "a0", "text": "bad"})),
        record("input", 1, b"k1", b"{broken"),
        record("<api>", 1, b"a1", encode_json({"id": "a1", "text": "https://x.com/only-a-link"})),
    ]
    outcome = process_batch(records, FakeClassifier(), PipelineConfig(), fixed_clock)
    stream, api_events, api_dead = split_outcome(outcome, "<api>")
    assert [e.message.id for e in stream.events] == ["k0"]
    assert [e.message.id for e in api_events] == ["a0"]
    assert [d.key for d in api_dead] == [b"a1"]
    assert len(stream.dead_letters) == 1
    assert dict(stream.reasons) == {"invalid_json": 1}
    assert stream.scored_batches == outcome.scored_batches  # the forward passes ran once for both
