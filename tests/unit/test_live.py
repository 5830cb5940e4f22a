"""The live page's "now" numbers (stream.core.live)."""

from __future__ import annotations

from stream.core.live import RecentTakes, percentile


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.5) is None


def test_only_takes_inside_the_horizon_count() -> None:
    recent = RecentTakes(horizon_ms=10_000)
    recent.add(1_000, 10, [100.0] * 10)
    recent.add(9_000, 30, [20.0] * 30)
    now = recent.summary(10_500)  # the first take is 9.5 s old: still in
    assert now.messages == 40
    assert now.per_second == 4.0
    assert now.p50_ms == 20.0
    assert now.p95_ms == 100.0
    later = recent.summary(11_500)  # now it is 10.5 s old: gone
    assert later.messages == 30
    assert later.p95_ms == 20.0
    assert recent.summary(30_000).p50_ms is None
