"""Drift: how far a window of scored events is from a reference profile.

scored events (and dead letters) -> **profiles** per drift window (event time) and source ->
compare with the reference profile -> a drift record per window and source (population stability
index and Jensen-Shannon divergence per distribution; accuracy and expected calibration error
where events carry ``gold_label``).

Distributions: token length (fixed bins), predicted label, confidence (the score, in 0.05 bins), the
shares of ``uncertain`` and ``truncated`` events, and dead letters per reason (their share of the
window's inputs; dead letters have no trusted source, so they count under ``all`` only).

PSI is ``sum((a - e) * ln(a / e))`` over bins with each share floored at :data:`PSI_FLOOR` (an
empty bin would make it infinite); by the usual reading, under 0.1 is stable, 0.1-0.2 a moderate
shift and over 0.2 a significant one (the alert threshold). JS divergence is in bits (0 to 1).
A window with fewer than ``min_count`` events is reported but never flagged: a handful of events
says nothing about a distribution. Pure: no clocks, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.core.errors import ConfigurationError
from stream.core.windows import GLOBAL_KEY, UNKNOWN_SOURCE

# Token-length bins: upper edges (exclusive); the last bin is everything longer.
LENGTH_EDGES: tuple[int, ...] = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
CONFIDENCE_BINS = 20  # [0, 0.05), ..., [0.95, 1.0]
ECE_BINS = 10
PSI_FLOOR = 1e-4
PSI_ALERT = 0.2
PROFILE_FORMAT = 1
DISTRIBUTIONS = ("token_length", "label", "confidence", "uncertain", "truncated")


class DriftReferenceError(ConfigurationError, ValueError):
    """The reference profile cannot be read or has nothing to compare with."""


_GOLD_NAMES = {
    "positive": "POSITIVE", "pos": "POSITIVE", "negative": "NEGATIVE", "neg": "NEGATIVE",
    "neutral": "NEUTRAL", "neu": "NEUTRAL",
}  # fmt: skip


def gold_class(value: Any) -> str | None:
    """The class a ``gold_label`` names (any case, or pos/neg/neu); None for labels that do not
    name one (a file's ``0``/``4`` means nothing without its label map)."""
    if not isinstance(value, str):
        return None
    return _GOLD_NAMES.get(value.strip().lower())


def length_bin(tokens: int) -> str:
    lower = 0
    for edge in LENGTH_EDGES:
        if tokens < edge:
            return f"{lower}-{edge - 1}"
        lower = edge
    return f"{LENGTH_EDGES[-1]}+"


def confidence_bin(score: float) -> str:
    index = min(CONFIDENCE_BINS - 1, max(0, int(score * CONFIDENCE_BINS)))
    return f"{index / CONFIDENCE_BINS:.2f}"


@dataclass
class Profile:
    """Counts per distribution (bin -> count), plus dead letters and gold-label calibration."""

    events: int = 0
    dead_letters: int = 0
    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {name: {} for name in DISTRIBUTIONS}
    )
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    # calibration over events with gold_label: per confidence bin (of ECE_BINS), n/correct/sum
    labelled: int = 0
    correct: int = 0
    calibration: dict[int, list[float]] = field(default_factory=dict)

    def add_event(self, event: Mapping[str, Any]) -> None:
        self.events += 1
        score = float(event.get("score", 0.0))
        self._bump("token_length", length_bin(int(event.get("token_count", 0))))
        self._bump("label", str(event.get("label")))
        self._bump("confidence", confidence_bin(score))
        self._bump("uncertain", str(bool(event.get("uncertain", False))).lower())
        self._bump("truncated", str(bool(event.get("truncated", False))).lower())
        gold = gold_class(event.get("gold_label"))
        if gold is not None:
            right = gold == str(event.get("label")).upper()
            self.labelled += 1
            self.correct += right
            index = min(ECE_BINS - 1, int(score * ECE_BINS))
            n, hits, confidence = self.calibration.get(index, [0.0, 0.0, 0.0])
            self.calibration[index] = [n + 1, hits + right, confidence + score]

    def add_dead_letter(self, reason: str) -> None:
        self.dead_letters += 1
        self.dead_letter_reasons[reason] = self.dead_letter_reasons.get(reason, 0) + 1

    def _bump(self, distribution: str, key: str) -> None:
        bins = self.counts[distribution]
        bins[key] = bins.get(key, 0) + 1

    def merge(self, other: Profile) -> None:
        self.events += other.events
        self.dead_letters += other.dead_letters
        for name, bins in other.counts.items():
            for key, count in bins.items():
                self.counts[name][key] = self.counts[name].get(key, 0) + count
        for reason, count in other.dead_letter_reasons.items():
            self.dead_letter_reasons[reason] = self.dead_letter_reasons.get(reason, 0) + count
        self.labelled += other.labelled
        self.correct += other.correct
        for index, values in other.calibration.items():
            mine = self.calibration.get(index, [0.0, 0.0, 0.0])
            self.calibration[index] = [a + b for a, b in zip(mine, values, strict=True)]

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def ece(self) -> float | None:
        """Expected calibration error over the gold-labelled events (see
        :func:`expected_calibration_error`)."""
        if not self.labelled:
            return None
        gap = sum(abs(hits - confidence) for _n, hits, confidence in self.calibration.values())
        return gap / self.labelled

    def dead_letter_rate(self) -> float:
        total = self.events + self.dead_letters
        return self.dead_letters / total if total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "events": self.events,
            "dead_letters": self.dead_letters,
            "counts": self.counts,
            "dead_letter_reasons": self.dead_letter_reasons,
            "labelled": self.labelled,
            "correct": self.correct,
            "calibration": {str(k): v for k, v in self.calibration.items()},
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Profile:
        if document.get("format") != PROFILE_FORMAT:
            raise DriftReferenceError(
                f"not a drift reference profile (format {document.get('format')!r}, "
                f"expected {PROFILE_FORMAT}); build one with `sentistream drift reference`"
            )
        profile = cls(
            events=int(document["events"]),
            dead_letters=int(document.get("dead_letters", 0)),
            dead_letter_reasons=dict(document.get("dead_letter_reasons", {})),
            labelled=int(document.get("labelled", 0)),
            correct=int(document.get("correct", 0)),
            calibration={int(k): list(v) for k, v in document.get("calibration", {}).items()},
        )
        for name in DISTRIBUTIONS:
            profile.counts[name] = {str(k): int(v) for k, v in document["counts"][name].items()}
        if profile.events == 0:
            raise DriftReferenceError("the reference profile holds no events")
        return profile


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    lower: float  # confidence bin [lower, upper)
    upper: float
    n: int
    confidence: float  # mean score in the bin
    accuracy: float  # share of the bin's predictions that were right


def reliability_bins(
    scores: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """The reliability diagram's bins: mean confidence against accuracy, for non-empty bins."""
    grouped: dict[int, list[tuple[float, bool]]] = {}
    for score, right in zip(scores, correct, strict=True):
        grouped.setdefault(min(bins - 1, int(score * bins)), []).append((score, right))
    return [
        ReliabilityBin(
            lower=index / bins,
            upper=(index + 1) / bins,
            n=len(members),
            confidence=sum(s for s, _ in members) / len(members),
            accuracy=sum(r for _, r in members) / len(members),
        )
        for index, members in sorted(grouped.items())
    ]


def expected_calibration_error(
    scores: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS
) -> float | None:
    """The mean gap between confidence and accuracy per confidence bin, weighted by the bin's
    share of the predictions (Guo et al. 2017); None without predictions."""
    total = len(scores)
    if not total:
        return None
    return (
        sum(b.n * abs(b.accuracy - b.confidence) for b in reliability_bins(scores, correct, bins))
        / total
    )


def shares(counts: Mapping[str, int], keys: Iterable[str]) -> list[float]:
    total = sum(counts.values())
    return [(counts.get(key, 0) / total) if total else 0.0 for key in keys]


def psi(expected: Sequence[float], actual: Sequence[float], floor: float = PSI_FLOOR) -> float:
    """Population stability index of ``actual`` against ``expected`` (shares over the same bins)."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, floor), max(a, floor)
        total += (a - e) * math.log(a / e)
    return total


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence in bits: 0 for equal distributions, 1 for disjoint ones."""

    def kl(x: Sequence[float], m: Sequence[float]) -> float:
        return sum(a * math.log2(a / b) for a, b in zip(x, m, strict=True) if a > 0)

    middle = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    return max(0.0, (kl(p, middle) + kl(q, middle)) / 2)


@dataclass(frozen=True, slots=True)
class DistributionDrift:
    psi: float
    js: float


@dataclass(frozen=True, slots=True)
class DriftRecord:
    """One window of one source against the reference: what the worker publishes."""

    window_start_ms: int
    window_end_ms: int
    source: str
    events: int
    dead_letters: int
    distributions: dict[str, DistributionDrift]
    dead_letter_rate: float
    reference_dead_letter_rate: float
    dead_letter_reasons: dict[str, int]
    accuracy: float | None
    ece: float | None
    labelled: int
    enough_events: bool
    drifted: list[str]  # the distributions whose PSI is over the alert threshold

    @property
    def max_psi(self) -> float:
        return max((d.psi for d in self.distributions.values()), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
            "source": self.source,
            "events": self.events,
            "dead_letters": self.dead_letters,
            "psi": {name: round(d.psi, 6) for name, d in self.distributions.items()},
            "js": {name: round(d.js, 6) for name, d in self.distributions.items()},
            "max_psi": round(self.max_psi, 6),
            "dead_letter_rate": round(self.dead_letter_rate, 6),
            "reference_dead_letter_rate": round(self.reference_dead_letter_rate, 6),
            "dead_letter_reasons": self.dead_letter_reasons,
            "accuracy": self.accuracy,
            "ece": self.ece,
            "labelled": self.labelled,
            "enough_events": self.enough_events,
            "drifted": self.drifted,
        }


def compare(
    reference: Profile,
    window: Profile,
    *,
    window_start_ms: int,
    window_end_ms: int,
    source: str,
    min_count: int,
    alert_psi: float = PSI_ALERT,
) -> DriftRecord:
    distributions = {}
    for name in DISTRIBUTIONS:
        keys = sorted(set(reference.counts[name]) | set(window.counts[name]))
        expected = shares(reference.counts[name], keys)
        actual = shares(window.counts[name], keys)
        distributions[name] = DistributionDrift(
            psi(expected, actual), js_divergence(expected, actual)
        )
    enough = window.events >= min_count
    drifted = [name for name, d in distributions.items() if enough and d.psi > alert_psi]
    return DriftRecord(
        window_start_ms=window_start_ms,
        window_end_ms=window_end_ms,
        source=source,
        events=window.events,
        dead_letters=window.dead_letters,
        distributions=distributions,
        dead_letter_rate=window.dead_letter_rate(),
        reference_dead_letter_rate=reference.dead_letter_rate(),
        dead_letter_reasons=dict(window.dead_letter_reasons),
        accuracy=window.accuracy,
        ece=window.ece,
        labelled=window.labelled,
        enough_events=enough,
        drifted=drifted,
    )


class DriftTracker:
    """Profiles per (window start, source) by event time. A window is compared and dropped once
    stream time passes its end plus ``grace_ms``, or at :meth:`flush`.

    Stream time is a watermark, as for the windowed ratios: each input partition's highest event
    time, and the lowest of those over the partitions heard from in the last ``idle_ms`` of wall
    time (one partition read ahead of another cannot make the other's events late; a partition
    that went quiet stops holding the others back)."""

    def __init__(
        self,
        reference: Profile,
        window_ms: int,
        grace_ms: int,
        min_count: int,
        idle_ms: int = 30_000,
    ) -> None:
        if window_ms <= 0:
            raise ValueError("the drift window must be positive")
        self.reference = reference
        self.window_ms = window_ms
        self.grace_ms = grace_ms
        self.min_count = min_count
        self.idle_ms = idle_ms
        self.open: dict[tuple[int, str], Profile] = {}
        self.partitions: dict[str, tuple[int, int]] = {}  # origin -> (highest event time, seen at)
        self.late_events = 0

    def stream_time_ms(self, now_ms: int) -> int | None:
        if not self.partitions:
            return None
        active = [t for t, seen in self.partitions.values() if now_ms - seen < self.idle_ms]
        if not active:
            return max(t for t, _ in self.partitions.values())
        return min(active)

    def _window(self, start: int, source: str) -> Profile:
        return self.open.setdefault((start, source), Profile())

    def _start(self, time_ms: int, now_ms: int) -> int | None:
        start = (time_ms // self.window_ms) * self.window_ms
        stream_time = self.stream_time_ms(now_ms)
        if stream_time is not None and start + self.window_ms + self.grace_ms <= stream_time:
            return None  # that window was closed already
        return start

    def add_event(
        self, event: Mapping[str, Any], event_time_ms: int, *, origin: str = "", now_ms: int = 0
    ) -> None:
        """``origin``: the input partition the event came from; ``now_ms``: the wall clock."""
        start = self._start(event_time_ms, now_ms)
        if start is None:
            self.late_events += 1
        else:
            source = str(event.get("source") or UNKNOWN_SOURCE)
            self._window(start, GLOBAL_KEY).add_event(event)
            self._window(start, f"source={source}").add_event(event)
        self._advance(origin, event_time_ms, now_ms)

    def add_dead_letter(
        self, reason: str, time_ms: int, *, origin: str = "", now_ms: int = 0
    ) -> None:
        start = self._start(time_ms, now_ms)
        if start is None:
            self.late_events += 1
        else:
            self._window(start, GLOBAL_KEY).add_dead_letter(reason)
        self._advance(origin, time_ms, now_ms)

    def _advance(self, origin: str, time_ms: int, now_ms: int) -> None:
        highest, _seen = self.partitions.get(origin, (time_ms, now_ms))
        self.partitions[origin] = (max(highest, time_ms), now_ms)

    def close_due(self, now_ms: int = 0) -> list[DriftRecord]:
        stream_time = self.stream_time_ms(now_ms)
        if stream_time is None:
            return []
        due = [k for k in self.open if k[0] + self.window_ms + self.grace_ms <= stream_time]
        return self._close(due)

    def flush(self) -> list[DriftRecord]:
        return self._close(list(self.open))

    def _close(self, keys: list[tuple[int, str]]) -> list[DriftRecord]:
        records = []
        for start, source in sorted(keys):
            profile = self.open.pop((start, source))
            records.append(
                compare(
                    self.reference, profile, window_start_ms=start,
                    window_end_ms=start + self.window_ms, source=source,
                    min_count=self.min_count,
                )
            )  # fmt: skip
        return records
