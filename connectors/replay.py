"""Replay a topic to backfill results: re-feed its records to the input topic, or score them into
a backfill topic with a chosen model, resumably. ``sentistream replay`` runs :func:`run_replay`.

plan (per partition [start, end), checked against what the broker says while fetching; see
stream.core.replay_plan) -> read a chunk (assign(), the replay's own group id, nothing committed)
-> keep records inside the time range -> re-feed them untouched, or decode/clean/score/enrich
them as the worker does -> produce, wait for the broker's acknowledgements -> record progress in
the state file -> next chunk.

Progress lives in ``<data dir>/replays/<name>.json``, not in committed offsets of the replay's
group: the file also holds the plan (the end offsets fixed at the first run, the request a resume
must repeat) and the counts, and it is replaced atomically after each acknowledged chunk, so a
resumed replay starts exactly after the last chunk the broker acknowledged. A crash between the
acknowledgement and the write produces that chunk again on resume (at least once; consumers
dedupe on the event key); a clean stop (SIGINT/SIGTERM, ``--stop-after``) repeats nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, TopicPartition
from confluent_kafka import Message as KafkaMessage
from tqdm import tqdm

from connectors.admin import ensure_topics
from connectors.clients import consumer_config
from connectors.producer import RecordProducer
from stream.core.errors import UnavailableError
from stream.core.pipeline import Classifier, OutRecord, PipelineConfig, process_batch
from stream.core.records import RawRecord
from stream.core.replay_plan import (
    CheckedRecord,
    PartitionProgress,
    ReplayRequest,
    ReplayState,
    offset_to_check,
    partition_range,
    start_for_time,
)
from stream.settings import KafkaSettings

log = logging.getLogger(__name__)

BROKER_TIMEOUT_S = 30.0  # metadata, watermark and time lookups; the checking fetches
STALL_TIMEOUT_S = 60.0  # no record and no end-of-partition from any unfinished partition
POLL_S = 0.5
DELIVERY_TIMEOUT_S = 120.0


class ReplayError(UnavailableError):
    """The replay cannot go on; the message is one line for the operator."""


def group_id(name: str) -> str:
    """The replay's own consumer group: assign() only, never a commit, never the pipeline's."""
    return f"sentistream-replay-{name}"


def state_path(data_dir: Path, name: str) -> Path:
    return data_dir / "replays" / f"{name}.json"


# --- the state file -----------------------------------------------------------------------------


class StateFile:
    """A replay's state on disk, replaced atomically; a lock file keeps two runs of one replay
    apart."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> ReplayState | None:
        try:
            data = orjson.loads(self.path.read_bytes())
            return ReplayState.from_json(data)
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
            raise ReplayError(
                f"state file {self.path} is unreadable ({exc}); use --restart to start over"
            ) from None

    def save(self, state: ReplayState) -> None:
        """Write to a temporary file, fsync it, rename it over the old one, fsync the folder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".json.tmp")
        with temporary.open("wb") as handle:
            handle.write(orjson.dumps(state.to_json(), option=orjson.OPT_INDENT_2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_suffix(".lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ReplayError(
                    f"replay {self.path.stem!r} is already running (lock {lock.name})"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


# --- reading the source -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """What one checking fetch of a partition saw: its first record there (None at the end) and
    the high watermark of the fetch response."""

    record: CheckedRecord | None
    high: int


class SourceReader:
    """The source topic through one assign()-only consumer of the replay's own group."""

    def __init__(self, kafka: KafkaSettings, topic: str, name: str) -> None:
        self.topic = topic
        self._consumer = Consumer(
            consumer_config(
                kafka,
                group_id(name),
                **{
                    "enable.partition.eof": True,
                    "enable.auto.offset.store": False,
                    # A planned offset that no longer exists is an error, not a silent jump.
                    "auto.offset.reset": "error",
                    "fetch.wait.max.ms": 100,
                },
            )
        )

    def close(self) -> None:
        self._consumer.close()

    def partitions(self, topic: str | None = None) -> list[int]:
        """The partitions of the source (or of ``topic``); empty when the topic does not exist."""
        name = topic or self.topic
        metadata = self._consumer.list_topics(name, timeout=BROKER_TIMEOUT_S).topics.get(name)
        if metadata is None or metadata.error is not None:
            return []
        return sorted(metadata.partitions)

    def listed_watermarks(self, partition: int) -> tuple[int, int]:
        """(low, high) as ListOffsets says; the high one can be low on the embedded broker."""
        low, high = self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=BROKER_TIMEOUT_S
        )
        return int(low), int(high)

    def offsets_for_time(self, partitions: Sequence[int], time_ms: int) -> dict[int, int]:
        """The broker's time lookup: per partition the earliest offset at or after ``time_ms``
        (-1: none). Only a hint: see :func:`start_for_time`."""
        wanted = [TopicPartition(self.topic, p, time_ms) for p in partitions]
        found = self._consumer.offsets_for_times(wanted, timeout=BROKER_TIMEOUT_S)
        return {tp.partition: int(tp.offset) for tp in found}

    def probe(self, offsets: dict[int, int]) -> dict[int, Probe]:
        """Fetch each partition at the given offset: the first record there and the high
        watermark the broker reported with it (right even where ListOffsets is not)."""
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in offsets.items()])
        seen: dict[int, Probe] = {}
        deadline = time.monotonic() + BROKER_TIMEOUT_S
        try:
            while len(seen) < len(offsets):
                if time.monotonic() > deadline:
                    missing = sorted(set(offsets) - set(seen))
                    raise ReplayError(f"no answer from {self.topic} partitions {missing}")
                for message in self._consumer.consume(len(offsets), POLL_S):
                    partition = message.partition()
                    if partition in seen or partition not in offsets:
                        continue
                    error = message.error()
                    if error is not None and error.code() != KafkaError._PARTITION_EOF:
                        self.check_error(error, partition)
                        continue
                    high = self._cached_high(partition)
                    if error is not None:  # end of partition: its offset is the end
                        seen[partition] = Probe(None, max(high, int(message.offset())))
                    else:
                        offset, stamp = int(message.offset()), _timestamp(message)
                        record = CheckedRecord(offset, -1 if stamp is None else stamp)
                        seen[partition] = Probe(record, max(high, offset + 1))
        finally:
            self._consumer.unassign()
        return seen

    def start(self, positions: dict[int, int]) -> None:
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in positions.items()])

    def consume(self, limit: int) -> list[KafkaMessage]:
        return list(self._consumer.consume(limit, POLL_S))

    def stop_reading(self, partition: int) -> None:
        self._consumer.incremental_unassign([TopicPartition(self.topic, partition)])

    def _cached_high(self, partition: int) -> int:
        _, high = self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), cached=True
        )
        return int(high)

    def check_error(self, error: KafkaError, partition: int | None) -> None:
        """Log a retriable error (librdkafka retries it); raise :class:`ReplayError` for others."""
        if error.retriable() or error.code() in (
            KafkaError._TRANSPORT,
            KafkaError._ALL_BROKERS_DOWN,
        ):
            log.warning("reading %s: %s (retrying)", self.topic, error.str())
            return
        where = self.topic if partition is None else f"{self.topic}[{partition}]"
        raise ReplayError(f"reading {where} failed: {error.str()}")


def _timestamp(message: KafkaMessage) -> int | None:
    kind, stamp = message.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE else int(stamp)


def plan_replay(reader: SourceReader, request: ReplayRequest) -> dict[int, PartitionProgress]:
    """Each partition's [start, end): offsets as asked, else found by time, else the beginning,
    up to the high watermark seen while fetching now (records produced later are not replayed)."""
    partitions = reader.partitions()
    if not partitions:
        raise ReplayError(f"source topic {request.source!r} does not exist")
    named = request.named_partitions
    if named is not None:
        unknown = sorted(named - set(partitions))
        if unknown:
            raise ReplayError(
                f"{request.source} has partitions {partitions[0]}..{partitions[-1]}, not {unknown}"
            )
        partitions = sorted(named)
    listed = {p: reader.listed_watermarks(p) for p in partitions}
    start_ms = request.time_range.start_ms
    by_time = {} if start_ms is None else reader.offsets_for_time(partitions, start_ms)
    to_fetch: dict[int, int] = {}
    for p, (low, listed_high) in listed.items():
        check = None if start_ms is None else offset_to_check(by_time[p], low, listed_high)
        to_fetch[p] = check if check is not None else max(low, listed_high - 1)
    probes = reader.probe(to_fetch)
    plan: dict[int, PartitionProgress] = {}
    for p, (low, _) in listed.items():
        probe = probes[p]
        start = (request.start_offsets or {}).get(p)
        if start is None and start_ms is not None:
            start = start_for_time(start_ms, by_time[p], low, probe.high, probe.record)
            if start == low and by_time[p] != low:
                log.info("partition %d: time lookup not confirmed, reading from %d", p, low)
        end = (request.end_offsets or {}).get(p)
        plan[p] = partition_range(p, low, probe.high, start, end)
    return plan


# --- output: re-feed, or score ------------------------------------------------------------------


@dataclass
class ChunkOutput:
    """What a chunk's in-range records became, with counts per source partition."""

    records: list[OutRecord] = field(default_factory=list)
    produced: Counter[int] = field(default_factory=Counter)
    dead_lettered: Counter[int] = field(default_factory=Counter)


class Transform(Protocol):
    def outputs(self, records: Sequence[KafkaMessage]) -> ChunkOutput: ...


class Refeed:
    """``--to-input``: each record's original value, key, headers and timestamp, to the input
    topic; into the same partition number when the input topic has it."""

    def __init__(self, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions

    def outputs(self, records: Sequence[KafkaMessage]) -> ChunkOutput:
        out = ChunkOutput()
        for message in records:
            partition = int(message.partition())
            out.records.append(
                OutRecord(
                    message.key(),
                    message.value(),
                    headers=message.headers() or [],
                    topic=self.topic,
                    timestamp_ms=_timestamp(message),
                    partition=partition if partition < self.partitions else None,
                )
            )
            out.produced[partition] += 1
        return out


class Backfill:
    """``--to-topic``: the worker's own pipeline (decode, validate, clean, score, enrich): events
    keyed by message id to ``events_topic``, dead letters with their original bytes to
    ``deadletter_topic``."""

    def __init__(
        self,
        classifier: Classifier,
        config: PipelineConfig,
        events_topic: str,
        deadletter_topic: str,
        now_ms: Callable[[], int],
    ) -> None:
        self.classifier = classifier
        self.config = config
        self.events_topic = events_topic
        self.deadletter_topic = deadletter_topic
        self.now_ms = now_ms

    def outputs(self, records: Sequence[KafkaMessage]) -> ChunkOutput:
        out = ChunkOutput()
        by_partition: dict[int, list[RawRecord]] = defaultdict(list)
        for message in records:
            by_partition[int(message.partition())].append(raw_record(message))
        for partition, raws in sorted(by_partition.items()):
            outcome = process_batch(raws, self.classifier, self.config, self.now_ms)
            for record in outcome.event_records():
                out.records.append(OutRecord(record.key, record.value, topic=self.events_topic))
            for record in outcome.dead_letters:
                out.records.append(
                    OutRecord(record.key, record.value, record.headers, topic=self.deadletter_topic)
                )
            out.produced[partition] += len(outcome.events)
            out.dead_lettered[partition] += len(outcome.dead_letters)
        return out


def raw_record(message: KafkaMessage) -> RawRecord:
    """A consumed record as the pipeline sees it (as ``stream.app.raw_record`` builds it)."""
    return RawRecord(
        value=message.value(),
        key=message.key(),
        topic=message.topic() or "",
        partition=int(message.partition()),
        offset=int(message.offset()),
        timestamp_ms=_timestamp(message),
        headers=tuple((str(name), bytes(value or b"")) for name, value in message.headers() or ()),
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- progress display ---------------------------------------------------------------------------


class ProgressDisplay(Protocol):
    def advance(self, partition: int, offsets: int) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    def advance(self, partition: int, offsets: int) -> None:
        pass

    def close(self) -> None:
        pass


class BarsProgress:
    """One tqdm bar per partition on stderr, in offsets acknowledged."""

    def __init__(self, state: ReplayState, source: str) -> None:
        self._bars = {
            p.partition: tqdm(
                total=p.end - p.start,
                initial=min(p.next, p.end) - p.start,
                desc=f"{source}[{p.partition}]",
                unit=" rec",
                position=index,
                file=sys.stderr,
                dynamic_ncols=True,
            )
            for index, p in enumerate(sorted(state.partitions.values(), key=lambda p: p.partition))
        }

    def advance(self, partition: int, offsets: int) -> None:
        self._bars[partition].update(offsets)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    name: str
    request: ReplayRequest
    chunk_size: int = 500
    stop_after: int | None = None  # records read in this run, then stop as if interrupted
    restart: bool = False


@dataclass
class ReplayResult:
    state: ReplayState
    finished: bool
    read_this_run: int
    resumed: bool
    state_path: Path


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM ask the replay to stop after its current chunk; a second one stops it at
    once (KeyboardInterrupt: the chunk in flight is produced again on resume)."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("%s: stopping after the current chunk", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def load_or_plan(
    options: ReplayOptions, store: StateFile, reader: SourceReader
) -> tuple[ReplayState, bool]:
    """The stored state of this replay (checked against the request), or a new plan."""
    if options.restart:
        store.discard()
    state = store.load()
    if state is not None:
        differences = options.request.differences(state.request)
        if differences:
            raise ReplayError(
                f"replay {options.name!r} was started with other options "
                f"({', '.join(differences)}); repeat them to resume, or use --restart "
                "(or another --name)"
            )
        return state, True
    plan = plan_replay(reader, options.request)
    state = ReplayState(options.name, options.request.to_json(), plan)
    store.save(state)
    return state, False


def prepare_outputs(kafka: KafkaSettings, request: ReplayRequest, reader: SourceReader) -> int:
    """Create a missing backfill topic (and its dead-letter topic) with the source's partition
    count; the input topic must exist (a typo should not make a new one). Returns the target's
    partition count."""
    if request.mode == "topic":
        wanted = [request.target] + ([request.deadletter] if request.deadletter else [])
        ensure_topics(kafka, dict.fromkeys(wanted, len(reader.partitions())))
    partitions = len(reader.partitions(request.target))
    if not partitions:
        raise ReplayError(
            f"input topic {request.target!r} does not exist (the worker creates it at start-up)"
        )
    return partitions


def run_replay(
    kafka: KafkaSettings,
    data_dir: Path,
    options: ReplayOptions,
    make_transform: Callable[[int], Transform],
    *,
    stop: threading.Event,
    progress: Callable[[ReplayState], ProgressDisplay] = lambda _state: NoProgress(),
) -> ReplayResult:
    """Run (or resume) a replay until it is finished or ``stop`` is set. ``make_transform`` gets
    the target topic's partition count, once the plan stands (loading a model is slow: a bad
    plan fails first). Raises
    :class:`ReplayError` (one line), and lets ``KafkaException`` through."""
    store = StateFile(state_path(data_dir, options.name))
    with store.locked():
        reader = SourceReader(kafka, options.request.source, options.name)
        try:
            state, resumed = load_or_plan(options, store, reader)
            result = ReplayResult(state, state.finished, 0, resumed, store.path)
            if state.finished:
                return result
            transform = make_transform(prepare_outputs(kafka, options.request, reader))
            display = progress(state)
            try:
                result.read_this_run = _replay_chunks(
                    kafka, reader, store, state, options, transform, stop, display
                )
            finally:
                display.close()
            result.finished = state.finished
            return result
        finally:
            reader.close()


@dataclass
class _Reading:
    """Where reading stands, ahead of what was acknowledged: per partition the next offset to
    read and whether the partition's range has been read to its end."""

    position: dict[int, int]
    ended: dict[int, int] = field(default_factory=dict)  # partition -> where reading ended


def _replay_chunks(
    kafka: KafkaSettings,
    reader: SourceReader,
    store: StateFile,
    state: ReplayState,
    options: ReplayOptions,
    transform: Transform,
    stop: threading.Event,
    display: ProgressDisplay,
) -> int:
    active = {p: prog for p, prog in state.partitions.items() if not prog.done}
    reading = _Reading(position={p: prog.next for p, prog in active.items()})
    reader.start(reading.position)
    producer = RecordProducer(kafka)
    read_this_run = 0
    while not state.finished:
        if stop.is_set():
            break
        limit = options.chunk_size
        if options.stop_after is not None:
            limit = min(limit, options.stop_after - read_this_run)
            if limit <= 0:
                break
        chunk = _read_chunk(reader, state, reading, limit, stop)
        outputs = _outputs_in_range(chunk, options.request, transform)
        _produce(producer, outputs.records)
        read_this_run += len(chunk)
        advanced = _record_chunk(state, reading, chunk, outputs)
        store.save(state)
        for partition, offsets in advanced.items():
            display.advance(partition, offsets)
    return read_this_run


def _read_chunk(
    reader: SourceReader,
    state: ReplayState,
    reading: _Reading,
    limit: int,
    stop: threading.Event,
) -> list[KafkaMessage]:
    """Up to ``limit`` records of the unfinished partitions, in order per partition: what is at
    hand (never waiting for a full chunk), or the first that arrive."""
    chunk: list[KafkaMessage] = []
    quiet_since = time.monotonic()
    while len(chunk) < limit and not stop.is_set():
        unread = [p for p in reading.position if p not in reading.ended]
        if not unread:
            break
        messages = reader.consume(limit - len(chunk))
        if not messages:
            if chunk:
                break
            if time.monotonic() - quiet_since > STALL_TIMEOUT_S:
                raise ReplayError(
                    f"no records and no end of partition from {reader.topic} partitions "
                    f"{unread} for {STALL_TIMEOUT_S:.0f} s; progress is saved, run again to resume"
                )
            continue
        quiet_since = time.monotonic()
        for message in messages:
            _take(reader, state, reading, message, chunk)
    return chunk


def _take(
    reader: SourceReader,
    state: ReplayState,
    reading: _Reading,
    message: KafkaMessage,
    chunk: list[KafkaMessage],
) -> None:
    partition = message.partition()
    if partition not in reading.position or partition in reading.ended:
        return
    end = state.partitions[partition].end
    error = message.error()
    if error is not None:
        if error.code() != KafkaError._PARTITION_EOF:
            reader.check_error(error, partition)
        elif int(message.offset()) >= end:
            # Read to the end of the log, and the range ends there: the records between the last
            # one read and the end are gone or were never records (compaction, control records).
            reading.ended[partition] = end
            reader.stop_reading(partition)
        # An end of log before the planned end is not trusted (the plan saw records up to it):
        # reading goes on, and the stall timeout reports a partition that never gets there.
        return
    offset = int(message.offset())
    if offset < reading.position[partition]:
        return  # fetched twice around a re-assignment: already in a chunk
    if offset >= end:
        reading.ended[partition] = end
        reader.stop_reading(partition)
        return
    chunk.append(message)
    reading.position[partition] = offset + 1
    if offset + 1 >= end:
        reading.ended[partition] = end
        reader.stop_reading(partition)


def _outputs_in_range(
    chunk: Sequence[KafkaMessage], request: ReplayRequest, transform: Transform
) -> ChunkOutput:
    in_range = [m for m in chunk if request.time_range.admits(_timestamp(m))]
    return transform.outputs(in_range)


def _produce(producer: RecordProducer, records: Sequence[OutRecord]) -> None:
    """Send and wait for every acknowledgement; raise if any record was not acknowledged."""
    failed_before = producer.report.failed
    for record in records:
        assert record.topic is not None, "replay outputs name their topic"
        producer.send(
            record.topic,
            record.value,
            key=record.key,
            headers=record.headers or None,
            timestamp_ms=record.timestamp_ms,
            partition=record.partition,
        )
    report = producer.flush(DELIVERY_TIMEOUT_S)
    failed = report.failed - failed_before
    if failed:
        raise ReplayError(
            f"the broker did not acknowledge {failed} of {len(records)} records "
            f"({report.errors[-1]}); progress is kept at the last acknowledged chunk, run again "
            "to resume (this chunk is produced again)"
        )


def _record_chunk(
    state: ReplayState, reading: _Reading, chunk: Sequence[KafkaMessage], outputs: ChunkOutput
) -> dict[int, int]:
    """Count an acknowledged chunk into the progress; returns how far each partition moved."""
    read = Counter(int(m.partition()) for m in chunk)
    next_offset = {int(m.partition()): int(m.offset()) + 1 for m in chunk}
    advanced: dict[int, int] = {}
    for partition, progress in state.partitions.items():
        if progress.done:
            continue
        before = progress.next
        progress.read += read[partition]
        progress.produced += outputs.produced[partition]
        progress.dead_lettered += outputs.dead_lettered[partition]
        progress.filtered += (
            read[partition] - outputs.produced[partition] - outputs.dead_lettered[partition]
        )
        progress.next = max(progress.next, next_offset.get(partition, progress.next))
        if partition in reading.ended:
            progress.next = max(progress.next, reading.ended[partition])
            progress.done = True
        if progress.next > before:
            advanced[partition] = min(progress.next, progress.end) - before
    return advanced


# --- the summary ----------------------------------------------------------------------------------


def summary_lines(result: ReplayResult) -> list[str]:
    state = result.state
    request = state.request
    if request["mode"] == "input":
        where = f"re-fed to {request['target']}"
    else:
        where = (
            f"scored into {request['target']} (dead letters: {request['deadletter']}, "
            f"model: {request['model']})"
        )
    if result.finished and result.resumed and not result.read_this_run:
        status = "already finished (--restart runs it again)"
    elif result.finished:
        status = "finished"
    else:
        status = "stopped before the end: run the same command again to resume"
    lines = [
        f"replay {state.name}: {request['source']} {where}",
        status,
        f"records read in this run: {result.read_this_run}; progress: {result.state_path}",
        f"{'partition':>9} {'offsets':>17} {'next':>8} {'read':>8} {'filtered':>8} "
        f"{'produced':>8} {'dead':>8}",
    ]
    rows = sorted(state.partitions.values(), key=lambda p: p.partition)
    for p in [*rows, state.totals()]:
        label = "total" if p.partition < 0 else str(p.partition)
        span = "" if p.partition < 0 else f"{p.start}..{p.end}"
        lines.append(
            f"{label:>9} {span:>17} {'' if p.partition < 0 else p.next:>8} {p.read:>8} "
            f"{p.filtered:>8} {p.produced:>8} {p.dead_lettered:>8}"
            + (f"  ({p.note})" if p.note else "")
        )
    return lines
