"""record_json: how ``sentistream tail`` writes events, dead letters and other records."""

from __future__ import annotations

import base64

from connectors.sink import ConsumedRecord
from connectors.tail import record_json
from stream.core.codec import dead_letter_headers
from stream.core.errors import DeadLetterReason, Stage
from stream.core.records import RawRecord

FAILED_AT_MS = 1_795_166_102_000  # 2026-11-20T09:15:02.000Z


def consumed(
    value: bytes | None,
    *,
    key: bytes | None = b"k1",
    headers: dict[str, bytes] | None = None,
    timestamp_ms: int = FAILED_AT_MS,
) -> ConsumedRecord:
    return ConsumedRecord(
        topic="t.events",
        partition=3,
        offset=41,
        key=key,
        value=value,
        headers=headers or {},
        timestamp_ms=timestamp_ms,
    )


def dead_letter(original: bytes, key: bytes | None) -> ConsumedRecord:
    source = RawRecord(original, key, "t.input", 2, 17, timestamp_ms=0)
    headers = dead_letter_headers(
        source, DeadLetterReason.INVALID_JSON, "not JSON: x at 0", Stage.DECODE, FAILED_AT_MS
    )
    return consumed(original, key=key, headers=dict(headers))


def test_a_json_value_is_written_as_the_json_it_holds() -> None:
    record = consumed(b'{"id": "a", "label": "POSITIVE", "score": 0.9}')
    assert record_json(record) == {"id": "a", "label": "POSITIVE", "score": 0.9}


def test_a_dead_letter_is_unpacked_with_its_origin_and_original_text() -> None:
    assert record_json(dead_letter(b"this is not json", b"m-7")) == {
        "reason": "invalid_json",
        "error": "not JSON: x at 0",
        "stage": "decode",
        "source_topic": "t.input",
        "source_partition": 2,
        "source_offset": 17,
        "failed_at": "2026-11-20T09:15:02.000Z",
        "key": "m-7",
        "original": "this is not json",
    }


def test_a_dead_letter_that_is_not_utf8_keeps_its_bytes_in_base64() -> None:
    original = b'{"text": "caf\xe9"}'
    line = record_json(dead_letter(original, None))
    assert "original" not in line
    assert base64.b64decode(line["original_base64"]) == original
    assert line["key"] is None
    assert line["reason"] == "invalid_json"


def test_a_value_that_is_not_json_is_written_as_text_or_base64() -> None:
    assert record_json(consumed(b"plain words")) == {"value": "plain words"}
    assert record_json(consumed(b"\xff\x00")) == {
        "value_base64": base64.b64encode(b"\xff\x00").decode()
    }
    assert record_json(consumed(None)) == {"value": None}


def test_with_meta_wraps_the_value_with_where_the_record_came_from() -> None:
    record = consumed(b'{"key": "all", "total": 3}', key=b"all|tumbling|x")
    assert record_json(record, with_meta=True) == {
        "topic": "t.events",
        "partition": 3,
        "offset": 41,
        "timestamp": "2026-11-20T09:15:02.000Z",
        "key": "all|tumbling|x",
        "value": {"key": "all", "total": 3},
    }
