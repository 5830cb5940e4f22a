"""Bytes in, bytes out: decode and validate input records; encode events and dead letters.

raw bytes -> size check -> UTF-8 -> JSON object -> input contract -> Message. Every failure raises
:class:`PoisonRecord` with a reason code; nothing here quotes the message text in an error.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from stream.core.errors import DeadLetterReason, PoisonRecord, Stage
from stream.core.records import Message, RawRecord

OPTIONAL_STRING_FIELDS = ("source", "channel", "author", "lang")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
# ASCII digits only: str.isdigit() also accepts '²', which int() then rejects with a ValueError.
_EPOCH_MILLIS = re.compile(r"-?[0-9]+")

# Dead-letter headers: the reason and the record's origin travel beside the untouched bytes.
HEADER_REASON = "dlq.reason"
HEADER_ERROR = "dlq.error"
HEADER_STAGE = "dlq.stage"
HEADER_SOURCE_TOPIC = "dlq.source.topic"
HEADER_SOURCE_PARTITION = "dlq.source.partition"
HEADER_SOURCE_OFFSET = "dlq.source.offset"
HEADER_FAILED_AT = "dlq.failed_at"


def derive_id(record: RawRecord) -> str:
    """A stable id for a message that brought none: the same record always gets the same id."""
    return f"{record.topic}/{record.partition}/{record.offset}"


def decode_message(record: RawRecord, *, max_bytes: int) -> Message:
    """Decode and validate one input record; raises :class:`PoisonRecord`."""
    raw = record.value
    if not raw:
        raise PoisonRecord(DeadLetterReason.EMPTY_PAYLOAD, "record value is empty")
    if len(raw) > max_bytes:
        raise PoisonRecord(
            DeadLetterReason.OVERSIZE, f"payload is {len(raw)} bytes, the limit is {max_bytes}"
        )
    try:
        text_json = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoisonRecord(
            DeadLetterReason.INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}"
        ) from None
    try:
        payload = orjson.loads(text_json)
    except orjson.JSONDecodeError as exc:
        raise PoisonRecord(
            DeadLetterReason.INVALID_JSON, f"not JSON: {exc.msg} at position {exc.pos}"
        ) from None
    if not isinstance(payload, dict):
        raise PoisonRecord(
            DeadLetterReason.NOT_AN_OBJECT, f"expected a JSON object, got {_json_type(payload)}"
        )
    return _validate(payload, record)


def _validate(payload: dict[str, Any], record: RawRecord) -> Message:
    if "text" not in payload or payload["text"] is None:
        raise PoisonRecord(DeadLetterReason.MISSING_TEXT, "the required field 'text' is missing")
    text = payload["text"]
    if not isinstance(text, str):
        raise PoisonRecord(
            DeadLetterReason.TEXT_NOT_STRING,
            f"'text' must be a string, got {_json_type(text)}",
        )
    if not text.strip():
        raise PoisonRecord(DeadLetterReason.EMPTY_TEXT, "'text' is empty")

    optional: dict[str, str | None] = {}
    for name in OPTIONAL_STRING_FIELDS:
        value = payload.get(name)
        if value is not None and not isinstance(value, str):
            raise PoisonRecord(
                DeadLetterReason.INVALID_FIELD,
                f"'{name}' must be a string, got {_json_type(value)}",
            )
        optional[name] = value

    return Message(
        id=_message_id(payload.get("id"), record),
        text=text,
        event_time_ms=_event_time_ms(payload.get("timestamp"), record),
        gold_label=_gold_label(payload.get("label")),
        **optional,
    )


def _message_id(value: Any, record: RawRecord) -> str:
    if value is None or value == "":
        return derive_id(record)
    # Numeric ids are common (tweet ids); they are kept as their decimal string.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PoisonRecord(
            DeadLetterReason.INVALID_FIELD,
            f"'id' must be a string or integer, got {_json_type(value)}",
        )
    return str(value)


def _event_time_ms(value: Any, record: RawRecord) -> int:
    """Event time: the message's own ``timestamp`` (ISO-8601 or epoch millis), else the record's."""
    if value is None:
        if record.timestamp_ms is None:
            raise PoisonRecord(
                DeadLetterReason.INVALID_FIELD, "no 'timestamp' and no Kafka record timestamp"
            )
        return record.timestamp_ms
    if isinstance(value, bool):
        raise PoisonRecord(DeadLetterReason.INVALID_FIELD, "'timestamp' must not be a boolean")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        return parse_timestamp_ms(value)
    raise PoisonRecord(
        DeadLetterReason.INVALID_FIELD,
        f"'timestamp' must be ISO-8601 or epoch millis, got {_json_type(value)}",
    )


def parse_timestamp_ms(value: str) -> int:
    """ISO-8601 (naive means UTC) or a string of epoch milliseconds -> epoch milliseconds."""
    stripped = value.strip()
    if _EPOCH_MILLIS.fullmatch(stripped):
        return int(stripped)
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError:
        raise PoisonRecord(
            DeadLetterReason.INVALID_FIELD, "'timestamp' is neither ISO-8601 nor epoch millis"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # Integer arithmetic: float seconds * 1000 lands just below some millisecond values and
    # int() would then truncate it one millisecond early (e.g. ...03.095Z -> ...03.094).
    return (parsed - _EPOCH) // _ONE_MS


def _gold_label(value: Any) -> str | None:
    """A reference label carried for evaluation; never used for scoring."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PoisonRecord(
            DeadLetterReason.INVALID_FIELD,
            f"'label' must be a string or integer, got {_json_type(value)}",
        )
    return str(value)


def _json_type(value: Any) -> str:
    match value:
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case list():
            return "array"
        case dict():
            return "object"
        case str():
            return "string"
        case _:
            return type(value).__name__


def format_time_ms(epoch_ms: int | float) -> str:
    """Epoch milliseconds -> ISO-8601 UTC with milliseconds, e.g. ``2026-11-20T09:15:02.000Z``."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def encode_json(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value)


def dead_letter_headers(
    record: RawRecord, reason: DeadLetterReason, detail: str, stage: Stage, failed_at_ms: int
) -> list[tuple[str, bytes]]:
    """The original headers, then ours: reason, error text, stage and the record's origin."""
    ours = {
        HEADER_REASON: str(reason),
        HEADER_ERROR: detail,
        HEADER_STAGE: str(stage),
        HEADER_SOURCE_TOPIC: record.topic,
        HEADER_SOURCE_PARTITION: str(record.partition),
        HEADER_SOURCE_OFFSET: str(record.offset),
        HEADER_FAILED_AT: format_time_ms(failed_at_ms),
    }
    kept = [(name, value) for name, value in record.headers if not name.startswith("dlq.")]
    return kept + [(name, value.encode()) for name, value in ours.items()]
