"""What a replay reads and how far it got: the pure part of ``sentistream replay``.

options (offset specs, times) + what the broker reports (watermarks, time lookups, the timestamp
of one checked record) -> a range per partition -> progress per partition, kept as JSON.

Broker answers are checked before they are trusted: the embedded broker's time lookup is
approximate (it answers 0 for any time) and its ListOffsets end offsets can be too low. A start
offset found by time is used only when the record just before it is older than the start time;
otherwise the partition is read from its beginning, and the reader filters records by timestamp.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from stream.core.codec import parse_timestamp_ms
from stream.core.errors import ConfigurationError, PoisonRecord

ReplayMode = Literal["input", "topic"]
STATE_VERSION = 1
_OFFSET_PAIR = re.compile(r"([0-9]+):([0-9]+)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")


class ReplaySpecError(ConfigurationError, ValueError):
    """A replay option is malformed or contradicts another; the message names the option."""


def parse_offsets(spec: str, option: str) -> dict[int, int]:
    """``'0:120,1:95'`` -> ``{0: 120, 1: 95}`` (partition -> offset)."""
    offsets: dict[int, int] = {}
    for part in spec.split(","):
        match = _OFFSET_PAIR.fullmatch(part.strip())
        if match is None:
            raise ReplaySpecError(
                f"{option}: expected PARTITION:OFFSET pairs separated by commas "
                f"(e.g. 0:120,1:95), got {part.strip()!r}"
            )
        partition, offset = int(match[1]), int(match[2])
        if partition in offsets:
            raise ReplaySpecError(f"{option}: partition {partition} is given twice")
        offsets[partition] = offset
    return offsets


def parse_time(value: str, option: str) -> int:
    """ISO-8601 (naive means UTC) or epoch milliseconds -> epoch milliseconds."""
    try:
        return parse_timestamp_ms(value)
    except PoisonRecord:
        raise ReplaySpecError(
            f"{option}: expected ISO-8601 (e.g. 2026-11-20T09:15:00Z) or epoch milliseconds, "
            f"got {value!r}"
        ) from None


def check_name(name: str) -> str:
    """A replay's name becomes a file name and a consumer group id: keep it plain."""
    if not _NAME.fullmatch(name):
        raise ReplaySpecError(
            f"--name: use letters, digits, '.', '_' and '-' (at most 120), got {name!r}"
        )
    return name


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Record timestamps to keep: ``start_ms <= ts < end_ms``; a missing bound is open."""

    start_ms: int | None = None
    end_ms: int | None = None

    def __post_init__(self) -> None:
        if self.start_ms is not None and self.end_ms is not None and self.start_ms >= self.end_ms:
            raise ReplaySpecError("--start-time must be before --end-time")

    @property
    def bounded(self) -> bool:
        return self.start_ms is not None or self.end_ms is not None

    def admits(self, timestamp_ms: int | None) -> bool:
        """A record without a timestamp is outside every bounded range."""
        if not self.bounded:
            return True
        if timestamp_ms is None or timestamp_ms < 0:
            return False
        if self.start_ms is not None and timestamp_ms < self.start_ms:
            return False
        return self.end_ms is None or timestamp_ms < self.end_ms


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """What a replay reads and where its output goes. A resumed replay must ask the same."""

    source: str
    mode: ReplayMode
    target: str  # the input topic (mode "input") or the backfill events topic (mode "topic")
    deadletter: str | None = None  # mode "topic" only
    model: str | None = None  # mode "topic" only
    time_range: TimeRange = field(default_factory=TimeRange)
    start_offsets: Mapping[int, int] | None = None
    end_offsets: Mapping[int, int] | None = None

    def __post_init__(self) -> None:
        if self.start_offsets and self.end_offsets:
            for partition, start in self.start_offsets.items():
                end = self.end_offsets.get(partition)
                if end is not None and start > end:
                    raise ReplaySpecError(
                        f"partition {partition}: start offset {start} is after end offset {end}"
                    )
        if self.mode == "topic" and self.target == self.source:
            raise ReplaySpecError("--to-topic must differ from the source topic")
        if self.mode == "topic" and self.deadletter in (self.target, self.source):
            raise ReplaySpecError("--deadletter-topic must differ from the source and --to-topic")

    @property
    def named_partitions(self) -> set[int] | None:
        """The partitions the offset specs name; None when they name none (replay them all)."""
        if not self.start_offsets and not self.end_offsets:
            return None
        return set(self.start_offsets or {}) | set(self.end_offsets or {})

    def to_json(self) -> dict[str, Any]:
        def offsets(spec: Mapping[int, int] | None) -> dict[str, int] | None:
            return None if spec is None else {str(p): o for p, o in sorted(spec.items())}

        return {
            "source": self.source,
            "mode": self.mode,
            "target": self.target,
            "deadletter": self.deadletter,
            "model": self.model,
            "start_time_ms": self.time_range.start_ms,
            "end_time_ms": self.time_range.end_ms,
            "start_offsets": offsets(self.start_offsets),
            "end_offsets": offsets(self.end_offsets),
        }

    def differences(self, stored: Mapping[str, Any]) -> list[str]:
        """The request fields that differ from a stored request (empty: the same replay)."""
        mine = self.to_json()
        return sorted(
            key for key in mine.keys() | stored.keys() if mine.get(key) != stored.get(key)
        )


# --- from the broker's answers to a range per partition --------------------------------------


@dataclass(frozen=True, slots=True)
class CheckedRecord:
    """One record fetched to check a broker answer: its offset and timestamp."""

    offset: int
    timestamp_ms: int


def offset_to_check(answer: int, low: int, high: int) -> int | None:
    """Which record confirms a time lookup's ``answer``: the one just before it (for "no record
    at or after that time", the last one). None when there is nothing to check."""
    if answer < 0:
        return high - 1 if high > low else None
    if low < answer <= high:
        return answer - 1
    return None


def start_for_time(
    start_ms: int, answer: int, low: int, high: int, checked: CheckedRecord | None
) -> int:
    """The offset to start reading at for records at or after ``start_ms``.

    ``answer`` is the broker's time lookup (-1: no record that late), ``high`` the high watermark
    seen while fetching, ``checked`` the record at :func:`offset_to_check`. Kafka's answer is the
    earliest offset whose record is at or after the time, so the record before it is older; when
    that does not hold, or cannot be checked, fall back to ``low`` (the reader filters by time).
    Starting early costs reading; starting late would lose records.
    """
    if high <= low or answer == low:
        return low
    if answer < 0:
        last = high - 1
        if checked is not None and checked.offset == last and checked.timestamp_ms < start_ms:
            return high
        return low
    if low < answer <= high:
        before = answer - 1
        if checked is not None and checked.offset == before and checked.timestamp_ms < start_ms:
            return answer
    return low


@dataclass(slots=True)
class PartitionProgress:
    """One partition of a replay: read ``[start, end)``; ``next`` is the first offset whose output
    was not acknowledged yet. Counts add up over resumed runs."""

    partition: int
    start: int
    end: int
    next: int
    done: bool = False
    read: int = 0
    filtered: int = 0  # read, but outside the time range
    produced: int = 0
    dead_lettered: int = 0
    note: str | None = None  # what the planner or reader adjusted, for the summary

    @property
    def remaining(self) -> int:
        return 0 if self.done else max(self.end - self.next, 0)


def partition_range(
    partition: int, low: int, high: int, start: int | None, end: int | None
) -> PartitionProgress:
    """Clamp a requested ``[start, end)`` (None: the beginning / the high watermark) to what the
    partition holds, ``[low, high)``, saying what was clamped."""
    notes = []
    end_offset = high if end is None else end
    if end_offset > high:
        notes.append(f"end {end_offset} is past the partition's end {high}")
        end_offset = high
    start_offset = low if start is None else start
    if start_offset < low:
        notes.append(f"offsets before {low} no longer exist")
        start_offset = low
    if start_offset > end_offset:
        notes.append(f"start {start_offset} is past the end {end_offset}")
        start_offset = end_offset
    return PartitionProgress(
        partition,
        start=start_offset,
        end=end_offset,
        next=start_offset,
        done=start_offset >= end_offset,
        note="; ".join(notes) or None,
    )


@dataclass(slots=True)
class ReplayState:
    """A replay's plan and progress, as stored between runs."""

    name: str
    request: dict[str, Any]
    partitions: dict[int, PartitionProgress]

    @property
    def finished(self) -> bool:
        return all(progress.done for progress in self.partitions.values())

    def totals(self) -> PartitionProgress:
        return total_of(self.partitions.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "request": self.request,
            "finished": self.finished,
            "partitions": [asdict(p) for _, p in sorted(self.partitions.items())],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReplayState:
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) for a malformed state."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unknown state version {data.get('version')!r}")
        partitions = [PartitionProgress(**entry) for entry in data["partitions"]]
        return cls(
            name=str(data["name"]),
            request=dict(data["request"]),
            partitions={p.partition: p for p in partitions},
        )


def total_of(partitions: Iterable[PartitionProgress]) -> PartitionProgress:
    total = PartitionProgress(partition=-1, start=0, end=0, next=0, done=True)
    for p in partitions:
        total.start += p.start
        total.end += p.end
        total.next += p.next
        total.done = total.done and p.done
        total.read += p.read
        total.filtered += p.filtered
        total.produced += p.produced
        total.dead_lettered += p.dead_lettered
    return total
