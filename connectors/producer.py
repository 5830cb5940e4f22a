"""Put records on a topic with confluent-kafka, counting what the broker acknowledged.

:func:`produce_file` is ``sentistream produce``: file lines (``connectors.files``) -> records keyed
by message id -> the topic, paced, with a summary of what was sent, failed and skipped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from tqdm import tqdm

from connectors.clients import producer_config
from connectors.files import (
    EMPTY_LINE,
    CsvOptions,
    FileFormat,
    FileFormatError,
    ParsedLine,
    SkippedLine,
    count_lines,
    iter_lines,
    read_records,
)
from stream.settings import KafkaSettings


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class RecordProducer:
    """A thin producer that waits for every delivery report before :meth:`flush` returns."""

    def __init__(self, kafka: KafkaSettings, **config: Any) -> None:
        self._producer = Producer(producer_config(kafka, **config))
        self.report = DeliveryReport()

    def _on_delivery(
        self, error: KafkaError | None, _message: Message, context: str | None = None
    ) -> None:
        if error is None:
            self.report.sent += 1
        else:
            self.report.failed += 1
            self.report.errors.append(f"{context}: {error.str()}" if context else str(error))

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
        """Queue one record; ``context`` (e.g. ``line 7``) prefixes its delivery error, if any.

        Raises ``KafkaException`` for a record the client refuses locally (e.g. too large).
        """
        on_delivery = (
            self._on_delivery
            if context is None
            else lambda error, message: self._on_delivery(error, message, context)
        )
        kwargs: dict[str, Any] = {"key": key, "headers": headers, "on_delivery": on_delivery}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> DeliveryReport:
        remaining = self._producer.flush(timeout)
        if remaining:
            self.report.failed += remaining
            self.report.errors.append(f"{remaining} records not delivered within {timeout}s")
        return self.report


def produce_values(
    kafka: KafkaSettings, topic: str, values: Iterable[bytes], *, keys: Iterable[bytes | None] = ()
) -> DeliveryReport:
    """Produce each value (with the matching key, if given) and wait for all deliveries."""
    producer = RecordProducer(kafka)
    key_iter = iter(keys)
    for value in values:
        producer.send(topic, value, key=next(key_iter, None))
    return producer.flush()


# --- Producing a file: lines -> parsed payloads -> keyed records, paced, with a summary. -------

# Each line's bytes as they are: the pipeline decodes them and dead-letters bad ones.
RAW: Literal["raw"] = "raw"
ProduceFormat = FileFormat | Literal["raw"]
LISTED = 20  # skipped lines and failures kept for the summary; the rest are only counted


class RecordSender(Protocol):
    """What :func:`produce_file` needs from a producer (:class:`RecordProducer`, or a fake)."""

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
        partition: int | None = None,
        context: str | None = None,
    ) -> None: ...

    def flush(self, timeout: float = 60.0) -> DeliveryReport: ...


@dataclass(frozen=True, slots=True)
class ProduceOptions:
    fmt: ProduceFormat = FileFormat.JSONL
    csv: CsvOptions | None = None
    labels_path: str | Path | None = None  # tweeteval
    id_prefix: str | None = None
    source: str | None = None  # stamped on messages that carry none
    channel: str | None = None
    rate: float | None = None  # messages per second, at most
    limit: int | None = None  # messages to send, at most
    strict: bool = False  # stop at the first malformed line


@dataclass
class ProduceSummary:
    topic: str
    lines: int = 0  # input lines accounted for (read, parsed or skipped)
    queued: int = 0  # records handed to the producer
    sent: int = 0  # acknowledged by the broker
    failed: int = 0  # refused by the client or not acknowledged by the broker
    failures: list[str] = field(default_factory=list)  # the first LISTED, each naming its line
    skipped: list[SkippedLine] = field(default_factory=list)  # the first LISTED
    skipped_count: int = 0
    aborted: str | None = None  # why producing stopped early (--strict, a bad file, Ctrl-C)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.aborted is None


@dataclass(frozen=True, slots=True)
class RawLine:
    line_no: int
    value: bytes
    key: bytes | None


class Pacer:
    """At most ``rate`` calls of :meth:`wait` per second, evenly spaced: a slow stretch is not
    made up for with a burst afterwards."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        now = self._clock()
        if self._next is not None and now < self._next:
            self._sleep(self._next - now)
            now = self._next  # the slot it was due in: oversleeping does not drift the rate
        self._next = now + self._interval


def read_raw_lines(
    path: str | Path, stream: BinaryIO | None = None
) -> Iterator[RawLine | SkippedLine]:
    """Each non-blank line's bytes untouched (but for its line ending), keyed by its JSON ``id``
    when it has one."""
    for line_no, line in iter_lines(path, stream):
        value = line.removesuffix(b"\n").removesuffix(b"\r")
        if not value.strip():
            yield SkippedLine(line_no, EMPTY_LINE)
        else:
            yield RawLine(line_no, value, _raw_key(value))


def _raw_key(value: bytes) -> bytes | None:
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    message_id = payload.get("id") if isinstance(payload, dict) else None
    if isinstance(message_id, bool) or not isinstance(message_id, str | int) or message_id == "":
        return None
    return str(message_id).encode()


def produce_file(
    producer: RecordSender,
    topic: str,
    path: str | Path,
    options: ProduceOptions,
    *,
    stream: BinaryIO | None = None,
    progress: bool = False,
    pacer: Pacer | None = None,
) -> ProduceSummary:
    """Produce every message of a file (``-``: stdin) to ``topic``, keyed by message id, and wait
    for the broker's acknowledgements. Never raises for bad input: bad lines are skipped (or stop
    the run with ``strict``), a file that cannot be read stops it; the summary says which."""
    summary = ProduceSummary(topic)
    if pacer is None and options.rate is not None:
        pacer = Pacer(options.rate)
    total = count_lines(path) if progress and stream is None else None
    # The bar counts lines, or messages when --limit ends the run before the file does.
    by_message = options.limit is not None and (total is None or options.limit < total)
    bar = tqdm(
        total=options.limit if by_message else total,
        unit=" messages" if by_message else " lines",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for item in _items(path, options, stream):
            if not by_message:
                bar.update(item.line_no - summary.lines)
            summary.lines = item.line_no
            if isinstance(item, SkippedLine):
                summary.skipped_count += 1
                if len(summary.skipped) < LISTED:
                    summary.skipped.append(item)
                if options.strict and item.reason != EMPTY_LINE:
                    summary.aborted = f"line {item.line_no}: {item.reason} (--strict)"
                    break
                continue
            if pacer is not None:
                pacer.wait()
            _send(producer, topic, item, options, summary)
            if by_message:
                bar.update()
            if options.limit is not None and summary.queued >= options.limit:
                break
    except (FileFormatError, OSError) as exc:
        summary.aborted = _one_line(exc, path)
    except KeyboardInterrupt:
        summary.aborted = f"interrupted after line {summary.lines}"
    finally:
        bar.close()
        report = producer.flush()
    summary.sent = report.sent
    summary.failed += report.failed
    summary.failures.extend(report.errors[: max(0, LISTED - len(summary.failures))])
    return summary


def _items(
    path: str | Path, options: ProduceOptions, stream: BinaryIO | None
) -> Iterator[ParsedLine | RawLine | SkippedLine]:
    if options.fmt == RAW:
        return read_raw_lines(path, stream)
    return read_records(
        path,
        FileFormat(options.fmt),
        csv=options.csv,
        labels_path=options.labels_path,
        id_prefix=options.id_prefix,
        stream=stream,
    )


def _send(
    producer: RecordSender,
    topic: str,
    item: ParsedLine | RawLine,
    options: ProduceOptions,
    summary: ProduceSummary,
) -> None:
    if isinstance(item, RawLine):
        value, key = item.value, item.key
    else:
        payload = item.payload
        for name, stamp in (("source", options.source), ("channel", options.channel)):
            if stamp is not None and payload.get(name) is None:
                payload[name] = stamp
        value, key = orjson.dumps(payload), str(payload["id"]).encode()
    context = f"line {item.line_no}"
    try:
        producer.send(topic, value, key=key, context=context)
    except KafkaException as exc:  # refused before it left: too large, unknown partition...
        summary.failed += 1
        if len(summary.failures) < LISTED:
            error = exc.args[0] if exc.args else exc
            detail = error.str() if isinstance(error, KafkaError) else str(error)
            summary.failures.append(f"{context}: {detail}")
        return
    summary.queued += 1


def _one_line(exc: BaseException, path: str | Path) -> str:
    if isinstance(exc, OSError):
        return f"cannot read {path}: {exc.strerror or exc}"
    return str(exc)


def summary_lines(summary: ProduceSummary) -> list[str]:
    """What ``sentistream produce`` prints at the end: counts, then the lines that were skipped
    and the records that failed (the first :data:`LISTED` of each)."""
    lines = [
        f"sent {summary.sent} records to {summary.topic}, {summary.failed} failed, "
        f"{summary.skipped_count} lines skipped"
    ]
    if summary.skipped:
        lines.append("skipped:")
        lines += [f"  line {item.line_no}: {item.reason}" for item in summary.skipped]
        if summary.skipped_count > len(summary.skipped):
            lines.append(f"  ... and {summary.skipped_count - len(summary.skipped)} more")
    if summary.failures:
        lines.append("failed:")
        lines += [f"  {failure}" for failure in summary.failures]
        if summary.failed > len(summary.failures):
            lines.append(f"  ... and {summary.failed - len(summary.failures)} more")
    return lines
