"""decode_message and dead-letter headers: bytes in, a Message or a reasoned PoisonRecord out."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from stream.core.codec import (
    HEADER_ERROR,
    HEADER_FAILED_AT,
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    HEADER_STAGE,
    dead_letter_headers,
    decode_message,
    derive_id,
    format_time_ms,
    parse_timestamp_ms,
)
from stream.core.errors import DeadLetterReason, PoisonRecord, Stage
from stream.core.records import Message, RawRecord

LIMIT = 64 * 1024
KAFKA_TS = 1_700_000_000_000  # 2023-11-14T22:13:20.000Z
# 2026-11-20T09:15:02Z, worked out independently with calendar.timegm.
NOV_20_0915_02 = 1_795_166_102_000
SECRET = "MY-SECRET-DIARY-ENTRY-7f3a"


def raw(
    value: bytes | None,
    *,
    key: bytes | None = b"k-1",
    topic: str = "sentiment.input",
    partition: int = 2,
    offset: int = 41,
    timestamp_ms: int | None = KAFKA_TS,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> RawRecord:
    return RawRecord(
        value=value,
        key=key,
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
        headers=headers,
    )


def as_json(payload: Any) -> bytes:
    return orjson.dumps(payload)


def decode(value: bytes | None, **record: Any) -> Message:
    return decode_message(raw(value, **record), max_bytes=LIMIT)


def poison_of(value: bytes | None, *, max_bytes: int = LIMIT, **record: Any) -> PoisonRecord:
    with pytest.raises(PoisonRecord) as caught:
        decode_message(raw(value, **record), max_bytes=max_bytes)
    return caught.value


def payload_of_exact_size(size: int) -> bytes:
    shell = as_json({"text": ""})
    payload = as_json({"text": "a" * (size - len(shell))})
    assert len(payload) == size
    return payload


# --- every reason the codec produces, with its stage ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason", "stage"),
    [
        (b"", DeadLetterReason.EMPTY_PAYLOAD, Stage.DECODE),
        (None, DeadLetterReason.EMPTY_PAYLOAD, Stage.DECODE),
        (b'{"text": "\xff"}', DeadLetterReason.INVALID_UTF8, Stage.DECODE),
        (b'{"text": "caf\xc3"}', DeadLetterReason.INVALID_UTF8, Stage.DECODE),
        (b"\xfe\xff{}", DeadLetterReason.INVALID_UTF8, Stage.DECODE),
        (b'{"text": "hello"', DeadLetterReason.INVALID_JSON, Stage.DECODE),
        (b'{"text": "hel', DeadLetterReason.INVALID_JSON, Stage.DECODE),
        (b"{text: 'hello'}", DeadLetterReason.INVALID_JSON, Stage.DECODE),
        (b'{"text": "hello",}', DeadLetterReason.INVALID_JSON, Stage.DECODE),
        (b"hello world", DeadLetterReason.INVALID_JSON, Stage.DECODE),
        (b"   ", DeadLetterReason.INVALID_JSON, Stage.DECODE),
        (b'["hello"]', DeadLetterReason.NOT_AN_OBJECT, Stage.VALIDATE),
        (b"[]", DeadLetterReason.NOT_AN_OBJECT, Stage.VALIDATE),
        (b"42", DeadLetterReason.NOT_AN_OBJECT, Stage.VALIDATE),
        (b"3.5", DeadLetterReason.NOT_AN_OBJECT, Stage.VALIDATE),
        (b'"hello"', DeadLetterReason.NOT_AN_OBJECT, Stage.VALIDATE),
        (b"null", DeadLetterReason.NOT_AN_OBJECT, Stage.VALIDATE),
        (b"true", DeadLetterReason.NOT_AN_OBJECT, Stage.VALIDATE),
        (b"{}", DeadLetterReason.MISSING_TEXT, Stage.VALIDATE),
        (b'{"body": "hello"}', DeadLetterReason.MISSING_TEXT, Stage.VALIDATE),
        (b'{"text": null}', DeadLetterReason.MISSING_TEXT, Stage.VALIDATE),
        (b'{"text": 5}', DeadLetterReason.TEXT_NOT_STRING, Stage.VALIDATE),
        (b'{"text": 1.5}', DeadLetterReason.TEXT_NOT_STRING, Stage.VALIDATE),
        (b'{"text": ["hello"]}', DeadLetterReason.TEXT_NOT_STRING, Stage.VALIDATE),
        (b'{"text": {"en": "hello"}}', DeadLetterReason.TEXT_NOT_STRING, Stage.VALIDATE),
        (b'{"text": true}', DeadLetterReason.TEXT_NOT_STRING, Stage.VALIDATE),
        (b'{"text": false}', DeadLetterReason.TEXT_NOT_STRING, Stage.VALIDATE),
        (b'{"text": ""}', DeadLetterReason.EMPTY_TEXT, Stage.VALIDATE),
        (b'{"text": "   "}', DeadLetterReason.EMPTY_TEXT, Stage.VALIDATE),
        (b'{"text": "\\n\\t "}', DeadLetterReason.EMPTY_TEXT, Stage.VALIDATE),
    ],
)
def test_decode_rejects_bad_payload_with_reason_and_stage(
    value: bytes | None, reason: DeadLetterReason, stage: Stage
) -> None:
    poison = poison_of(value)
    assert poison.reason is reason
    assert poison.stage is stage


@pytest.mark.parametrize(
    "fields",
    [
        {"source": 5},
        {"source": ["twitter"]},
        {"channel": {"name": "general"}},
        {"channel": True},
        {"author": 12345},
        {"lang": False},
        {"lang": 1.5},
        {"id": True},
        {"id": False},
        {"id": 1.5},
        {"id": ["a"]},
        {"id": {"n": 1}},
        {"timestamp": "yesterday"},
        {"timestamp": "2026-13-45T99:00:00Z"},
        {"timestamp": "-"},
        {"timestamp": "--5"},  # passes a naive lstrip("-").isdigit() check
        {"timestamp": "\u00b2"},  # superscript two: isdigit() but not int()-able
        {"timestamp": "1\u00b2"},
        {"timestamp": "\u0661\u0662\u0663"},  # Arabic-Indic digits are not epoch millis
        {"timestamp": ""},
        {"timestamp": True},
        {"timestamp": False},
        {"timestamp": [1]},
        {"timestamp": {"ms": 1}},
        {"label": True},
        {"label": [1]},
        {"label": 0.5},
    ],
)
def test_decode_rejects_wrongly_typed_field_as_invalid_field(fields: dict[str, Any]) -> None:
    poison = poison_of(as_json({"text": "fine text", **fields}))
    assert poison.reason is DeadLetterReason.INVALID_FIELD
    assert poison.stage is Stage.VALIDATE
    assert next(iter(fields)) in poison.detail


def test_decode_without_any_timestamp_is_invalid_field() -> None:
    poison = poison_of(as_json({"text": "fine text"}), timestamp_ms=None)
    assert poison.reason is DeadLetterReason.INVALID_FIELD
    assert poison.stage is Stage.VALIDATE


# --- size limit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [16, 100, 1000])
def test_decode_accepts_payload_exactly_at_the_limit(limit: int) -> None:
    message = decode_message(raw(payload_of_exact_size(limit)), max_bytes=limit)
    assert len(message.text) == limit - len(b'{"text":""}')


@pytest.mark.parametrize("limit", [16, 100, 1000])
def test_decode_rejects_payload_one_byte_over_the_limit_as_oversize(limit: int) -> None:
    poison = poison_of(payload_of_exact_size(limit + 1), max_bytes=limit)
    assert poison.reason is DeadLetterReason.OVERSIZE
    assert poison.stage is Stage.DECODE
    assert str(limit + 1) in poison.detail
    assert str(limit) in poison.detail


def test_decode_checks_size_before_parsing() -> None:
    # Oversize and invalid UTF-8 at once: the cheap size check wins, nothing is decoded.
    poison = poison_of(b'{"text": "\xff' + b"a" * 100 + b'"}', max_bytes=50)
    assert poison.reason is DeadLetterReason.OVERSIZE


# --- the message text never leaks into an error ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (f'{{"text": "{SECRET} \xff"}}'.encode("latin-1"), DeadLetterReason.INVALID_UTF8),
        (f'{{"text": "{SECRET}'.encode(), DeadLetterReason.INVALID_JSON),
        (f'{{"text": "{SECRET}",}}'.encode(), DeadLetterReason.INVALID_JSON),
        (f'{{"text": "{SECRET}" "x"}}'.encode(), DeadLetterReason.INVALID_JSON),
        (as_json([SECRET]), DeadLetterReason.NOT_AN_OBJECT),
        (as_json(SECRET), DeadLetterReason.NOT_AN_OBJECT),
        (as_json({"text": [SECRET]}), DeadLetterReason.TEXT_NOT_STRING),
        (as_json({"text": {"body": SECRET}}), DeadLetterReason.TEXT_NOT_STRING),
        (as_json({"body": SECRET}), DeadLetterReason.MISSING_TEXT),
        (as_json({"text": SECRET, "source": 7}), DeadLetterReason.INVALID_FIELD),
        (as_json({"text": SECRET, "id": [SECRET]}), DeadLetterReason.INVALID_FIELD),
        (as_json({"text": SECRET, "timestamp": SECRET}), DeadLetterReason.INVALID_FIELD),
        (as_json({"text": SECRET, "label": [SECRET]}), DeadLetterReason.INVALID_FIELD),
        (as_json({"text": SECRET * 10}), DeadLetterReason.OVERSIZE),
    ],
)
def test_poison_detail_never_quotes_the_message(value: bytes, reason: DeadLetterReason) -> None:
    poison = poison_of(value, max_bytes=200)
    assert poison.reason is reason
    assert SECRET not in poison.detail
    assert SECRET not in str(poison)
    assert poison.__cause__ is None  # `from None`: no chained exception quoting the payload


# --- id -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("id_value", "expected"),
    [
        ("msg-001", "msg-001"),
        ("  spaced  ", "  spaced  "),
        (123, "123"),
        (0, "0"),
        (-7, "-7"),
        (1_850_000_000_000_000_001, "1850000000000000001"),  # tweet-sized ids lose no digits
    ],
)
def test_decode_keeps_given_id_as_string(id_value: str | int, expected: str) -> None:
    assert decode(as_json({"text": "hi", "id": id_value})).id == expected


@pytest.mark.parametrize(
    "payload", [{"text": "hi"}, {"text": "hi", "id": ""}, {"text": "hi", "id": None}]
)
def test_decode_derives_id_from_record_origin_when_missing(payload: dict[str, Any]) -> None:
    message = decode(as_json(payload), topic="posts", partition=3, offset=917)
    assert message.id == "posts/3/917"


def test_derived_id_is_stable_and_unique_per_offset() -> None:
    value = as_json({"text": "hi"})
    first = decode(value, offset=10).id
    again = decode(value, offset=10).id
    other = decode(value, offset=11).id
    assert first == again == derive_id(raw(value, offset=10))
    assert other != first


# --- timestamp ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "expected_ms"),
    [
        ("2026-11-20T09:15:02Z", NOV_20_0915_02),
        ("2026-11-20T09:15:02.000Z", NOV_20_0915_02),
        ("2026-11-20T09:15:02.123Z", NOV_20_0915_02 + 123),
        ("2026-11-20T09:15:02.999Z", NOV_20_0915_02 + 999),
        # float seconds * 1000 lands just below these; truncating would lose a millisecond
        ("2038-10-26T01:12:03.095Z", 2_171_668_323_095),
        ("1972-02-24T14:04:37.732Z", 67_788_277_732),
        ("2026-11-20T09:15:02+00:00", NOV_20_0915_02),
        ("2026-11-20T11:15:02+02:00", NOV_20_0915_02),
        ("2026-11-20T04:15:02-05:00", NOV_20_0915_02),
        ("2026-11-20T09:15:02", NOV_20_0915_02),  # naive: UTC
        ("2026-11-20 09:15:02", NOV_20_0915_02),
        ("  2026-11-20T09:15:02Z  ", NOV_20_0915_02),
        (NOV_20_0915_02 + 456, NOV_20_0915_02 + 456),
        (str(NOV_20_0915_02 + 456), NOV_20_0915_02 + 456),
        (f" {NOV_20_0915_02} ", NOV_20_0915_02),
        (0, 0),
    ],
)
def test_decode_reads_event_time_from_timestamp(timestamp: str | int, expected_ms: int) -> None:
    message = decode(as_json({"text": "hi", "timestamp": timestamp}))
    assert message.event_time_ms == expected_ms


def test_decode_falls_back_to_kafka_timestamp_when_message_has_none() -> None:
    assert decode(as_json({"text": "hi"}), timestamp_ms=1234567).event_time_ms == 1234567


def test_decode_prefers_message_timestamp_over_kafka_timestamp() -> None:
    value = as_json({"text": "hi", "timestamp": "2026-11-20T09:15:02Z"})
    assert decode(value, timestamp_ms=KAFKA_TS).event_time_ms == NOV_20_0915_02


def test_iso_timestamps_round_trip_to_the_exact_millisecond() -> None:
    rng = random.Random(20261120)
    for _ in range(5000):
        epoch_ms = rng.randrange(0, 4_102_444_800_000)  # 1970 .. 2100
        assert parse_timestamp_ms(format_time_ms(epoch_ms)) == epoch_ms, format_time_ms(epoch_ms)


# --- optional fields ------------------------------------------------------------------------------


def test_decode_carries_optional_fields() -> None:
    message = decode(
        as_json(
            {
                "id": "m1",
                "text": "  Loving it  ",
                "source": "mastodon",
                "channel": "#general",
                "author": "alice",
                "lang": "en",
                "label": "positive",
                "timestamp": "2026-11-20T09:15:02Z",
                "extra": {"ignored": True},
            }
        )
    )
    assert message == Message(
        id="m1",
        text="  Loving it  ",  # validation does not clean
        event_time_ms=NOV_20_0915_02,
        source="mastodon",
        channel="#general",
        author="alice",
        lang="en",
        gold_label="positive",
    )


def test_decode_leaves_absent_optional_fields_none() -> None:
    message = decode(as_json({"text": "hi", "source": None}))
    assert (message.source, message.channel, message.author, message.lang) == (None,) * 4
    assert message.gold_label is None


@pytest.mark.parametrize(("label", "expected"), [(4, "4"), (0, "0"), ("neg", "neg")])
def test_decode_carries_label_as_gold_label_string(label: int | str, expected: str) -> None:
    assert decode(as_json({"text": "hi", "label": label})).gold_label == expected


# --- format_time_ms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch_ms", "expected"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (999, "1970-01-01T00:00:00.999Z"),
        (NOV_20_0915_02, "2026-11-20T09:15:02.000Z"),
        (NOV_20_0915_02 + 7, "2026-11-20T09:15:02.007Z"),
        (NOV_20_0915_02 + 120, "2026-11-20T09:15:02.120Z"),
        (float(NOV_20_0915_02 + 5), "2026-11-20T09:15:02.005Z"),
    ],
)
def test_format_time_ms_writes_utc_iso_with_milliseconds(
    epoch_ms: int | float, expected: str
) -> None:
    assert format_time_ms(epoch_ms) == expected


# --- dead-letter headers --------------------------------------------------------------------------


def test_dead_letter_headers_name_reason_stage_and_origin() -> None:
    record = raw(b"{}", topic="posts", partition=5, offset=1234)
    headers = dict(
        dead_letter_headers(
            record,
            DeadLetterReason.MISSING_TEXT,
            "the required field 'text' is missing",
            Stage.VALIDATE,
            NOV_20_0915_02,
        )
    )
    assert headers[HEADER_REASON] == b"missing_text"
    assert headers[HEADER_STAGE] == b"validate"
    assert headers[HEADER_ERROR] == b"the required field 'text' is missing"
    assert headers[HEADER_SOURCE_TOPIC] == b"posts"
    assert headers[HEADER_SOURCE_PARTITION] == b"5"
    assert headers[HEADER_SOURCE_OFFSET] == b"1234"
    assert headers[HEADER_FAILED_AT] == b"2026-11-20T09:15:02.000Z"
    assert all(name.startswith("dlq.") for name in headers)


def test_dead_letter_headers_keep_original_headers_and_replace_incoming_dlq_ones() -> None:
    record = raw(
        b"{}",
        headers=(
            ("trace-id", b"abc"),
            ("dlq.reason", b"stale-from-an-earlier-hop"),
            ("dlq.custom", b"x"),
            ("content-type", b"application/json"),
        ),
    )
    headers = dead_letter_headers(
        record, DeadLetterReason.INVALID_JSON, "not JSON", Stage.DECODE, 0
    )
    names = [name for name, _ in headers]
    assert headers[:2] == [("trace-id", b"abc"), ("content-type", b"application/json")]
    assert "dlq.custom" not in names
    assert names.count(HEADER_REASON) == 1
    assert dict(headers)[HEADER_REASON] == b"invalid_json"
    assert all(isinstance(value, bytes) for _, value in headers)
