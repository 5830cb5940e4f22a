"""produce_file with a fake producer: keys, stamping, raw lines, limits, --strict, the summary."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, KafkaException

from connectors.files import FileFormat, SkippedLine
from connectors.producer import (
    LISTED,
    RAW,
    DeliveryReport,
    Pacer,
    ProduceOptions,
    produce_file,
    summary_lines,
)


class FakeProducer:
    """Records what was sent; refuses the values in ``refuse`` as librdkafka does (raises)."""

    def __init__(self, refuse: tuple[bytes, ...] = ()) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, str | None]] = []
        self.refuse = refuse
        self.flushed = 0

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
        partition: int | None = None,
        context: str | None = None,
    ) -> None:
        if value in self.refuse:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message too large"))
        self.sent.append((topic, value, key, context))

    def flush(self, timeout: float = 60.0) -> DeliveryReport:
        self.flushed += 1
        return DeliveryReport(sent=len(self.sent))


def test_parsed_messages_are_sent_as_json_keyed_by_id_with_source_stamped() -> None:
    fake = FakeProducer()
    summary = produce_file(
        fake,
        "topic-a",
        "-",
        ProduceOptions(fmt=FileFormat.JSONL, source="twitter", channel="#c"),
        stream=io.BytesIO(b'{"id": 5, "text": "a", "source": "reddit"}\n{"text": "b"}\n'),
    )
    assert [(topic, orjson.loads(value or b""), key) for topic, value, key, _ in fake.sent] == [
        ("topic-a", {"id": 5, "text": "a", "source": "reddit", "channel": "#c"}, b"5"),
        (
            "topic-a",
            {"id": "stdin:2", "text": "b", "source": "twitter", "channel": "#c"},
            b"stdin:2",
        ),
    ]
    assert (summary.sent, summary.failed, summary.skipped_count, summary.ok) == (2, 0, 0, True)
    assert fake.flushed == 1


def test_raw_sends_each_lines_bytes_untouched_keyed_by_its_json_id() -> None:
    content = b'{"id": "r1", "text": "ok"}\r\nnot json \xff\n\n[1]\n{"text": "no id"}'
    fake = FakeProducer()
    summary = produce_file(fake, "in", "-", ProduceOptions(fmt=RAW), stream=io.BytesIO(content))
    assert [(value, key) for _, value, key, _ in fake.sent] == [
        (b'{"id": "r1", "text": "ok"}', b"r1"),
        (b"not json \xff", None),
        (b"[1]", None),
        (b'{"text": "no id"}', None),
    ]
    assert summary.skipped == [SkippedLine(3, "empty line")]
    assert summary.ok


def test_limit_stops_after_that_many_messages_not_lines() -> None:
    fake = FakeProducer()
    summary = produce_file(
        fake,
        "in",
        "-",
        ProduceOptions(fmt=FileFormat.TEXT, limit=2),
        stream=io.BytesIO(b"a\n\nb\nc\nd\n"),
    )
    assert [key for _, _, key, _ in fake.sent] == [b"stdin:1", b"stdin:3"]
    assert (summary.sent, summary.lines, summary.skipped_count) == (2, 3, 1)


def test_strict_stops_at_the_first_malformed_line_and_names_it() -> None:
    fake = FakeProducer()
    summary = produce_file(
        fake,
        "in",
        "-",
        ProduceOptions(fmt=FileFormat.JSONL, strict=True),
        stream=io.BytesIO(b'{"text": "a"}\n\n{"text": "b"}\n[2]\n{"text": "never"}\n'),
    )
    assert [key for _, _, key, _ in fake.sent] == [b"stdin:1", b"stdin:3"]
    assert summary.aborted == "line 4: not_an_object: expected a JSON object, got array (--strict)"
    assert not summary.ok
    assert fake.flushed == 1, "what was queued before the bad line is still delivered"


def test_refused_records_count_as_failed_with_their_line() -> None:
    fake = FakeProducer(refuse=(b'{"id":"stdin:2","text":"too big"}',))
    summary = produce_file(
        fake,
        "in",
        "-",
        ProduceOptions(fmt=FileFormat.TEXT),
        stream=io.BytesIO(b"ok\ntoo big\nok\n"),
    )
    assert (summary.sent, summary.failed, summary.ok) == (2, 1, False)
    assert summary.failures == ["line 2: Message too large"]


def test_a_file_that_cannot_be_read_ends_the_run_with_a_reason(tmp_path: Path) -> None:
    fake = FakeProducer()
    summary = produce_file(fake, "in", tmp_path / "absent.txt", ProduceOptions(fmt=FileFormat.TEXT))
    assert summary.aborted is not None
    assert summary.aborted.startswith(f"cannot read {tmp_path / 'absent.txt'}: ")
    assert fake.sent == []


def test_summary_lists_the_first_skipped_lines_then_counts_the_rest() -> None:
    content = b"".join(b"[%d]\n" % n for n in range(LISTED + 5)) + b'{"text": "x"}\n'
    fake = FakeProducer()
    summary = produce_file(
        fake, "in", "-", ProduceOptions(fmt=FileFormat.JSONL), stream=io.BytesIO(content)
    )
    lines = summary_lines(summary)
    assert lines[0] == f"sent 1 records to in, 0 failed, {LISTED + 5} lines skipped"
    assert lines[1] == "skipped:"
    assert lines[2] == "  line 1: not_an_object: expected a JSON object, got array"
    assert lines[1 + LISTED] == f"  line {LISTED}: not_an_object: expected a JSON object, got array"
    assert lines[2 + LISTED] == "  ... and 5 more"
    assert len(lines) == 3 + LISTED


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_pacer_spaces_calls_evenly_at_the_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(4.0, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        pacer.wait()
    assert clock.sleeps == [0.25, 0.25, 0.25]


def test_pacer_does_not_burst_to_make_up_for_a_slow_stretch() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    pacer.wait()
    clock.now += 5.0  # the producer was busy for 50 slots
    pacer.wait()
    pacer.wait()
    pacer.wait()
    assert clock.sleeps == [0.1, 0.1]
