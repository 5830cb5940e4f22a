"""What the live page says "now": messages per second and end-to-end latency percentiles over the
last few seconds of published takes. Pure: the caller passes the clock's readings."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LiveSummary:
    messages: int  # published in the horizon
    per_second: float
    p50_ms: float | None
    p95_ms: float | None
    horizon_s: float


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(len(sorted_values), rank) - 1]


class RecentTakes:
    """Takes published in the last ``horizon_ms``: their time, size and each message's latency."""

    def __init__(self, horizon_ms: int = 10_000) -> None:
        self.horizon_ms = horizon_ms
        self._takes: deque[tuple[int, int, list[float]]] = deque()

    def add(self, at_ms: int, messages: int, latencies_ms: Sequence[float]) -> None:
        self._takes.append((at_ms, messages, list(latencies_ms)))

    def summary(self, now_ms: int) -> LiveSummary:
        while self._takes and self._takes[0][0] <= now_ms - self.horizon_ms:
            self._takes.popleft()
        messages = sum(count for _, count, _ in self._takes)
        latencies = sorted(value for _, _, values in self._takes for value in values)
        return LiveSummary(
            messages=messages,
            per_second=messages / (self.horizon_ms / 1000),
            p50_ms=percentile(latencies, 0.50),
            p95_ms=percentile(latencies, 0.95),
            horizon_s=self.horizon_ms / 1000,
        )
