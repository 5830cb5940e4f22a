"""Whether a worker is healthy: its lifecycle phase and each consumed partition's progress.

consumer offsets (end and committed, per partition) + the clock -> lag, last progress, stalled
-> /health's answer (200 or 503 with a reason) and the lag/stall metrics. Pure: offsets and the
time are passed in, so the decisions are tested without a broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Phase = Literal["starting", "recovering", "running", "stopping"]

PHASE_REASONS: dict[Phase, str] = {
    "starting": "starting: waiting for the first partition assignment and table recovery",
    "recovering": "recovering: a rebalance is in progress (tables are being restored)",
    "stopping": "stopping",
}


@dataclass(frozen=True)
class PartitionProgress:
    """One partition at one check: ``lag`` records wait past the committed offset."""

    partition: str  # "topic/partition"
    end_offset: int
    committed: int
    lag: int
    quiet_ms: int  # how long the committed offset has not moved while records waited
    stalled: bool


@dataclass
class ProgressTracker:
    """Remembers when each partition's committed offset last moved (or its lag was zero).

    A partition is stalled when records have waited past its committed offset for
    ``stall_after_ms`` without the committed offset moving: delivered records are committed
    within a few seconds, so this means they are not being delivered or not being finished.
    """

    stall_after_ms: int
    committed: dict[str, int] = field(default_factory=dict)
    moved_at_ms: dict[str, int] = field(default_factory=dict)
    stalled: set[str] = field(default_factory=set)

    def observe(
        self, now_ms: int, end_offsets: Mapping[str, int], committed: Mapping[str, int | None]
    ) -> list[PartitionProgress]:
        """One check of the partitions in ``end_offsets`` (the ones assigned now); partitions
        no longer assigned are forgotten. ``committed`` is the next offset to read (None or
        absent: nothing committed yet, read from 0)."""
        for gone in set(self.committed) - set(end_offsets):
            self.forget(gone)
        report = []
        for partition, end in sorted(end_offsets.items()):
            position = committed.get(partition) or 0
            lag = max(0, end - position)
            if lag == 0 or self.committed.get(partition) != position:
                self.moved_at_ms[partition] = now_ms
            self.committed[partition] = position
            quiet = 0 if lag == 0 else now_ms - self.moved_at_ms.setdefault(partition, now_ms)
            stalled = lag > 0 and quiet >= self.stall_after_ms
            report.append(PartitionProgress(partition, end, position, lag, quiet, stalled))
        return report

    def newly_stalled(self, report: list[PartitionProgress]) -> list[str]:
        """Partitions that became stalled at this check (each stall is counted once)."""
        now = {p.partition for p in report if p.stalled}
        new = sorted(now - self.stalled)
        self.stalled = now
        return new

    def forget(self, partition: str) -> None:
        self.committed.pop(partition, None)
        self.moved_at_ms.pop(partition, None)
        self.stalled.discard(partition)


def current_partitions(
    report: list[PartitionProgress],
    newest_done_ms: Mapping[str, int],
    now_ms: int,
    within_ms: int,
) -> list[str]:
    """The partitions whose scorer is keeping up: no records waiting, or the newest record it
    finished was produced less than ``within_ms`` ago (``newest_done_ms``: partition -> that
    record's Kafka timestamp). Their silence towards a key can be taken as idleness."""
    return [
        p.partition
        for p in report
        if p.lag == 0 or now_ms - newest_done_ms.get(p.partition, -within_ms - now_ms) < within_ms
    ]


def health_answer(
    phase: Phase,
    report: list[PartitionProgress] | None,
    *,
    last_event_ms: int | None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body of ``/health``.

    503 with a reason while starting, recovering or stopping, with no partition assigned, or
    with a stalled partition; 200 otherwise. ``report`` is the latest progress check (None: no
    check yet since the last rebalance).
    """
    body: dict[str, Any] = {**(extra or {}), "phase": phase, "last_event_ms": last_event_ms}
    if report is not None:
        body["partitions"] = {
            p.partition: {"lag": p.lag, "committed": p.committed, "end_offset": p.end_offset}
            for p in report
        }
    reason = PHASE_REASONS.get(phase)
    if reason is None and report is None:
        reason = "starting: partition progress not checked yet"
    if reason is None and report is not None and not report:
        reason = "no partitions assigned to this worker"
    stalled = [p for p in report or [] if p.stalled]
    if reason is None and stalled:
        reason = "stalled: " + ", ".join(
            f"{p.partition} has {p.lag} records waiting and no progress for {p.quiet_ms // 1000} s"
            for p in stalled
        )
    if reason is not None:
        return 503, {**body, "status": "unavailable", "reason": reason}
    return 200, {**body, "status": "ok"}
