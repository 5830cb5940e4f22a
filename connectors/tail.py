"""``sentistream tail``: records from topics -> one JSON line each, dead letters unpacked.

A record whose value is JSON is written as that JSON. A dead letter (a record with a ``dlq.reason``
header) becomes an object with its reason, error, stage, origin and original bytes (as text when
they are UTF-8, else base64). Anything else is ``{"value": text}`` or ``{"value_base64": ...}``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from connectors.admin import BrokerUnreachable, topic_names
from connectors.sink import ConsumedRecord, read_topics
from stream.core.codec import (
    HEADER_ERROR,
    HEADER_FAILED_AT,
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    HEADER_STAGE,
    format_time_ms,
)
from stream.core.errors import UnavailableError
from stream.settings import KafkaSettings

METADATA_TIMEOUT_S = 10.0


class TailError(UnavailableError):
    """The topics cannot be read: the broker does not answer, or a topic does not exist."""


@dataclass(frozen=True, slots=True)
class TailOptions:
    follow: bool = False  # keep waiting for new records until stopped
    from_end: bool = False  # with follow: only records that arrive from now on
    idle_s: float = 2.0  # without follow: stop after this long without a record
    max_records: int | None = None
    with_meta: bool = False  # wrap each line with topic/partition/offset/timestamp/key


def record_json(record: ConsumedRecord, *, with_meta: bool = False) -> Any:
    """The JSON value of one tail line."""
    if HEADER_REASON in record.headers:
        value: Any = dead_letter_json(record)
    else:
        value = value_json(record.value)
    if not with_meta:
        return value
    meta: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": format_time_ms(record.timestamp_ms) if record.timestamp_ms >= 0 else None,
        **_text_or_base64("key", record.key),
    }
    return {**meta, "value": value}


def value_json(value: bytes | None) -> Any:
    """The value as the JSON it holds; else its text (or base64) in an object."""
    if value is None:
        return {"value": None}
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return _text_or_base64("value", value)


def dead_letter_json(record: ConsumedRecord) -> dict[str, Any]:
    headers = record.headers

    def header(name: str) -> str | None:
        raw = headers.get(name)
        return raw.decode("utf-8", "replace") if raw is not None else None

    def number(name: str) -> int | str | None:
        text = header(name)
        return int(text) if text is not None and text.lstrip("-").isdecimal() else text

    return {
        "reason": header(HEADER_REASON),
        "error": header(HEADER_ERROR),
        "stage": header(HEADER_STAGE),
        "source_topic": header(HEADER_SOURCE_TOPIC),
        "source_partition": number(HEADER_SOURCE_PARTITION),
        "source_offset": number(HEADER_SOURCE_OFFSET),
        "failed_at": header(HEADER_FAILED_AT),
        **_text_or_base64("key", record.key),
        **_text_or_base64("original", record.value),
    }


def _text_or_base64(name: str, data: bytes | None) -> dict[str, str | None]:
    """``{name: text}`` when ``data`` is UTF-8, else ``{name_base64: ...}``; None stays None."""
    if data is None:
        return {name: None}
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


def check_topics(kafka: KafkaSettings, topics: Sequence[str]) -> None:
    """Raises :class:`TailError` when the broker does not answer or a topic does not exist."""
    try:
        existing = topic_names(kafka, METADATA_TIMEOUT_S)
    except BrokerUnreachable as exc:
        raise TailError(str(exc)) from None
    missing = [topic for topic in topics if topic not in existing]
    if missing:
        raise TailError(f"no such topic: {', '.join(missing)}")


def tail_topics(
    kafka: KafkaSettings,
    topics: Sequence[str],
    out: BinaryIO,
    options: TailOptions,
    *,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Write each record of ``topics`` to ``out`` as a JSON line; returns how many were written.

    Ends at the end of the topics (``idle_s`` without a record), after ``max_records``, or once
    ``stop()`` is true (with ``follow``, only then).
    """
    check_topics(kafka, topics)
    written = 0
    records = read_topics(
        kafka,
        topics,
        idle_timeout=None if options.follow else options.idle_s,
        until=stop,
        from_end=options.from_end,
    )
    try:
        for record in records:
            out.write(orjson.dumps(record_json(record, with_meta=options.with_meta)) + b"\n")
            out.flush()
            written += 1
            if options.max_records is not None and written >= options.max_records:
                break
    finally:
        records.close()  # leaves the group now, not when the generator is collected
    return written
