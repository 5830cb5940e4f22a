"""Windowed sentiment ratios: scored events -> windows (event time) -> counts -> ratios.

Pure arithmetic with the clocks passed in. One :class:`KeyState` holds everything about one
aggregate key (``all``, ``source=...``, ``source=...,channel=...``): its open windows, the last
closed ones, its stream time, its late-event counts and, per input partition, the highest input
offset already counted. Keeping all of that in one value lets the worker store it as one table
entry, so counts and the dedupe watermark always change together: a record re-read after a crash
is recognised and not counted twice.

Time rules: a window ``[start, start + size)`` closes when the key's stream time reaches
``end + grace``. Stream time is the highest event time seen, taken per input partition: Kafka
orders records within a partition only, and one worker may read a partition far ahead of another,
so the key's stream time is the *lowest* of its input partitions' highest event times (as a
watermark is in Flink), and it never goes back. A partition that has sent the key nothing for
``partition_idle_ms`` of wall time (or never, since the key appeared) while its scorer keeps up
stops holding it back, so a key fed by one partition (a chat room keyed by channel) still
advances; a partition that is behind, or whose owner is down, keeps holding it back. With one
input partition this is simply the highest event time seen.

An event for a closed window is *late*: it is not counted there and adds one to ``late_events`` of
that window kind. Out-of-order events within grace count in their own window. An idle flush (wall
clock, decided by the caller) closes every open window of a key.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

WindowKind = Literal["tumbling", "hopping"]
WINDOW_KINDS: tuple[WindowKind, ...] = ("tumbling", "hopping")
GLOBAL_KEY = "all"
UNKNOWN_SOURCE = "unknown"


@dataclass(frozen=True, slots=True)
class WindowSpec:
    kind: WindowKind
    size_ms: int
    step_ms: int

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or self.step_ms <= 0:
            raise ValueError("window size and step must be positive")
        if self.size_ms % self.step_ms:
            raise ValueError("window size must be a multiple of its step")
        if self.kind == "tumbling" and self.step_ms != self.size_ms:
            raise ValueError("a tumbling window advances by its size")

    def starts_for(self, event_time_ms: int) -> list[int]:
        """Starts of every window containing ``event_time_ms`` (start inclusive, end exclusive),
        oldest first."""
        latest = (event_time_ms // self.step_ms) * self.step_ms
        count = self.size_ms // self.step_ms
        return [latest - i * self.step_ms for i in reversed(range(count))]


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    specs: tuple[WindowSpec, ...]
    grace_ms: int = 30_000
    history: int = 10  # closed windows kept per key and kind, for the HTTP read side
    partition_idle_ms: int = 30_000  # wall time after which a silent input partition is ignored

    def closes_at(self, spec: WindowSpec, start_ms: int) -> int:
        """The stream time at which ``spec``'s window starting at ``start_ms`` closes: its end
        plus the grace period (:func:`is_closed`)."""
        return start_ms + spec.size_ms + self.grace_ms

    def spec(self, kind: str) -> WindowSpec:
        for spec in self.specs:
            if spec.kind == kind:
                return spec
        raise KeyError(kind)


def default_policy(
    tumbling_s: float = 60,
    hopping_s: float = 300,
    hop_s: float = 60,
    grace_s: float = 30,
    history: int = 10,
    partition_idle_s: float = 30,
) -> WindowPolicy:
    return WindowPolicy(
        specs=(
            WindowSpec("tumbling", int(tumbling_s * 1000), int(tumbling_s * 1000)),
            WindowSpec("hopping", int(hopping_s * 1000), int(hop_s * 1000)),
        ),
        grace_ms=int(grace_s * 1000),
        history=history,
        partition_idle_ms=int(partition_idle_s * 1000),
    )


MODEL_KEY_PREFIX = "model="


def aggregate_keys(source: str | None, channel: str | None) -> list[str]:
    """The keys one event counts under: overall, per source, per source and channel."""
    source_key = f"source={source or UNKNOWN_SOURCE}"
    keys = [GLOBAL_KEY, source_key]
    if channel:
        keys.append(f"{source_key},channel={channel}")
    return keys


def model_key(model_version: str) -> str:
    """The key a canary run counts each event under as well: the version that scored it."""
    return f"{MODEL_KEY_PREFIX}{model_version}"


def describe_key(key: str) -> dict[str, str | None]:
    """``source=x,channel=y`` -> ``{"dimension": "channel", "source": "x", "channel": "y"}``."""
    if key == GLOBAL_KEY:
        return {"dimension": "all", "source": None, "channel": None}
    if key.startswith(MODEL_KEY_PREFIX):
        return {"dimension": "model", "source": None, "channel": None,
                "model_version": key.removeprefix(MODEL_KEY_PREFIX)}  # fmt: skip
    source_part, _, channel_part = key.partition(",channel=")
    source = source_part.removeprefix("source=")
    if channel_part:
        return {"dimension": "channel", "source": source, "channel": channel_part}
    return {"dimension": "source", "source": source, "channel": None}


def positive_ratio(positive: int, negative: int) -> float | None:
    """pos / (pos + neg); None when there is neither."""
    polar = positive + negative
    return positive / polar if polar else None


@dataclass(slots=True)
class WindowCounts:
    start_ms: int
    counts: dict[str, int] = field(default_factory=dict)
    score_sum: float = 0.0
    uncertain: dict[str, int] = field(default_factory=dict)  # label -> events below the threshold
    out_of_scope: int = 0  # events in a language outside SENTISTREAM_LANGUAGES: not in ``counts``

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def positive_ratio(self) -> float | None:
        return positive_ratio(self.counts.get("POSITIVE", 0), self.counts.get("NEGATIVE", 0))

    @property
    def confident_positive_ratio(self) -> float | None:
        """The positive ratio of the events at or above the confidence threshold."""
        return positive_ratio(
            self.counts.get("POSITIVE", 0) - self.uncertain.get("POSITIVE", 0),
            self.counts.get("NEGATIVE", 0) - self.uncertain.get("NEGATIVE", 0),
        )

    @property
    def mean_score(self) -> float | None:
        return self.score_sum / self.total if self.total else None

    def add(self, label: str, score: float, uncertain: bool = False, in_scope: bool = True) -> None:
        if not in_scope:
            self.out_of_scope += 1
            return
        self.counts[label] = self.counts.get(label, 0) + 1
        self.score_sum += score
        if uncertain:
            self.uncertain[label] = self.uncertain.get(label, 0) + 1

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "start_ms": self.start_ms,
            "counts": self.counts,
            "score_sum": self.score_sum,
        }
        if self.uncertain:
            data["uncertain"] = self.uncertain
        if self.out_of_scope:
            data["out_of_scope"] = self.out_of_scope
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WindowCounts:
        return cls(
            int(data["start_ms"]),
            dict(data["counts"]),
            float(data["score_sum"]),
            dict(data.get("uncertain", {})),  # states saved before the threshold existed
            int(data.get("out_of_scope", 0)),
        )


@dataclass(slots=True)
class ScoredFact:
    """What the windows need of one enriched event, and where its input record came from.

    Not frozen: the aggregates agent builds three a message on the event loop, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) cost 1.04 us against 0.17 us."""

    key: str
    event_time_ms: int
    label: str
    score: float
    model_name: str
    origin: str  # input "topic/partition": offsets are compared within one origin only
    offset: int
    partitions: int = 1  # how many partitions the input topic has
    uncertain: bool = False  # scored below the confidence threshold
    in_scope: bool = True  # False: a language outside SENTISTREAM_LANGUAGES, counted apart

    @property
    def origins(self) -> list[str]:
        """Every partition of the input topic, in this fact's ``topic/partition`` spelling."""
        topic = self.origin.rpartition("/")[0]
        return [f"{topic}/{p}" for p in range(self.partitions)]


@dataclass(slots=True)
class KeyState:
    key: str
    stream_time_ms: int | None = None
    last_event_wall_ms: int = 0
    model_name: str | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    partition_times: dict[str, int] = field(default_factory=dict)  # origin -> highest event time
    partition_seen_ms: dict[str, int] = field(default_factory=dict)  # origin -> wall ms, last fact
    origins: list[str] = field(default_factory=list)  # every input partition that may feed the key
    created_wall_ms: int | None = None
    open: dict[str, dict[int, WindowCounts]] = field(default_factory=dict)
    closed: dict[str, list[WindowCounts]] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "stream_time_ms": self.stream_time_ms,
            "last_event_wall_ms": self.last_event_wall_ms,
            "model_name": self.model_name,
            "offsets": self.offsets,
            "partition_times": self.partition_times,
            "partition_seen_ms": self.partition_seen_ms,
            "origins": self.origins,
            "created_wall_ms": self.created_wall_ms,
            "open": {
                kind: [w.to_json() for w in windows.values()] for kind, windows in self.open.items()
            },
            "closed": {kind: [w.to_json() for w in ws] for kind, ws in self.closed.items()},
            "late": self.late,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyState:
        return cls(
            key=data["key"],
            stream_time_ms=data["stream_time_ms"],
            last_event_wall_ms=int(data["last_event_wall_ms"]),
            model_name=data["model_name"],
            offsets={k: int(v) for k, v in data["offsets"].items()},
            partition_times={k: int(v) for k, v in data.get("partition_times", {}).items()},
            partition_seen_ms={k: int(v) for k, v in data.get("partition_seen_ms", {}).items()},
            origins=list(data.get("origins", [])),
            created_wall_ms=data.get("created_wall_ms"),
            open={
                kind: {int(w["start_ms"]): WindowCounts.from_json(w) for w in windows}
                for kind, windows in data["open"].items()
            },
            closed={
                kind: [WindowCounts.from_json(w) for w in ws] for kind, ws in data["closed"].items()
            },
            late={k: int(v) for k, v in data["late"].items()},
        )

    def has_open_windows(self) -> bool:
        return any(self.open.values())

    @staticmethod
    def stored_has_open_windows(data: dict[str, Any]) -> bool:
        """:meth:`has_open_windows` on the stored JSON, without decoding the whole state."""
        return any(data["open"].values())


@dataclass(slots=True)
class FoldResult:
    duplicate: bool = False  # a fact was already counted (and was skipped)
    updated: list[tuple[str, WindowCounts]] = field(default_factory=list)
    closed: list[tuple[str, WindowCounts]] = field(default_factory=list)
    late_kinds: list[str] = field(default_factory=list)


def is_closed(closes_at_ms: int, stream_time_ms: int | None) -> bool:
    """A window is closed once stream time reached its closing time (``WindowPolicy.closes_at``:
    its end plus the grace period)."""
    return stream_time_ms is not None and stream_time_ms >= closes_at_ms


def fold_event(
    state: KeyState,
    fact: ScoredFact,
    policy: WindowPolicy,
    now_ms: int,
    current: Collection[str] | None = None,
) -> FoldResult:
    """Count ``fact`` into ``state`` (in place); returns what changed and what closed.
    ``current``: as for :func:`advance_stream_time`."""
    return fold_facts(state, [fact], policy, now_ms, current)


def fold_facts(
    state: KeyState,
    facts: Iterable[ScoredFact],
    policy: WindowPolicy,
    now_ms: int,
    current: Collection[str] | None = None,
) -> FoldResult:
    """:func:`fold_event` over ``facts`` in their order (one facts record: a take's facts for one
    key), with the same resulting state; returns every updated window and every closed one.

    What does not change from fact to fact is done once per record: the input partitions that may
    feed the key are merged once per ``(origin, partitions)``, window starts are computed once per
    step, and open windows are closed only once stream time reaches the earliest end + grace among
    them (a window is opened only while it is not yet due)."""
    result = FoldResult()
    origins_seen: set[tuple[str, int]] = set()
    starts: dict[tuple[int, int], list[int]] = {}
    # The stream time at which the earliest open window is due (None: no open window).
    due_at = earliest_due(state, policy)
    specs = list(enumerate(policy.specs))
    counted = False
    for fact in facts:
        origin = fact.origin
        if fact.offset <= state.offsets.get(origin, -1):
            result.duplicate = True  # a record re-read after a crash
            continue
        counted = True
        state.offsets[origin] = fact.offset
        state.model_name = fact.model_name
        event_time = fact.event_time_ms
        for index, spec in specs:
            windows = state.open.setdefault(spec.kind, {})
            missed = False
            bucket = (index, event_time // spec.step_ms)
            spec_starts = starts.get(bucket)
            if spec_starts is None:
                spec_starts = starts[bucket] = spec.starts_for(event_time)
            for start in spec_starts:
                window = windows.get(start)
                if window is None:
                    closes_at = policy.closes_at(spec, start)
                    if is_closed(closes_at, state.stream_time_ms):
                        missed = True
                        continue
                    window = windows[start] = WindowCounts(start)
                    if due_at is None or closes_at < due_at:
                        due_at = closes_at
                window.add(fact.label, fact.score, fact.uncertain, fact.in_scope)
                result.updated.append((spec.kind, window))
            if missed:
                state.late[spec.kind] = state.late.get(spec.kind, 0) + 1
                result.late_kinds.append(spec.kind)
        times = state.partition_times
        previous = times.get(origin)
        if previous is None or event_time > previous:
            times[origin] = event_time
        state.partition_seen_ms[origin] = now_ms
        if state.created_wall_ms is None:
            state.created_wall_ms = now_ms
        if (origin, fact.partitions) not in origins_seen:
            origins_seen.add((origin, fact.partitions))
            state.origins = sorted(set(state.origins) | set(fact.origins) | {origin})
        advance_stream_time(state, policy, now_ms, current)
        stream_time = state.stream_time_ms
        if due_at is not None and stream_time is not None and stream_time >= due_at:
            result.closed += close_due(state, policy)
            due_at = earliest_due(state, policy)
    if counted:
        state.last_event_wall_ms = now_ms
    return result


def earliest_due(state: KeyState, policy: WindowPolicy) -> int | None:
    """The stream time at which the first of ``state``'s open windows is due (None: none open)."""
    return min(
        (policy.closes_at(spec, start)
         for spec in policy.specs for start in state.open.get(spec.kind, {})),
        default=None,
    )  # fmt: skip


def advance_stream_time(
    state: KeyState, policy: WindowPolicy, now_ms: int, current: Collection[str] | None = None
) -> None:
    """Stream time := max(itself, lowest highest-event-time over the partitions still active).

    An active partition that has not sent anything yet holds stream time where it is: its
    first records may be older than everything seen so far.

    Idle means *caught up and quiet*: silent towards this key for ``partition_idle_ms`` and,
    when ``current`` is given, reported as keeping up (its scorer had no backlog). A partition
    whose owner is down, recovering or behind sends no such report, so it keeps holding stream
    time back however long it is silent: its backlog may hold this key's events. ``current``
    None treats every silent partition as caught up (no reports available).
    """
    active_times: list[int] = []
    appeared = now_ms if state.created_wall_ms is None else state.created_wall_ms
    for origin in state.origins or list(state.partition_times):
        last_seen = state.partition_seen_ms.get(origin, appeared)
        caught_up = current is None or origin in current
        if caught_up and now_ms - last_seen >= policy.partition_idle_ms:
            continue
        if origin not in state.partition_times:
            return
        active_times.append(state.partition_times[origin])
    if not active_times:  # all quiet: the highest event time seen anywhere
        active_times = [max(state.partition_times.values(), default=0)]
        if not state.partition_times:
            return
    watermark = min(active_times)
    previous = state.stream_time_ms
    state.stream_time_ms = watermark if previous is None else max(previous, watermark)


def resume_partitions(state: KeyState, now_ms: int) -> None:
    """A worker takes the key over (it started, or a rebalance gave it the key): every input
    partition gets a fresh idle allowance from ``now_ms``.

    The wall time between the previous owner's last fact and this worker's first is nobody's
    idleness: without this, a partition whose backlog is read after another's was judged idle,
    stream time ran past it, and its own backlog was counted late (seen as one fact missing
    from a window after a restart on Apache Kafka). A partition that stays silent is still
    judged idle one allowance later.
    """
    for origin in set(state.origins) | set(state.partition_seen_ms):
        state.partition_seen_ms[origin] = max(state.partition_seen_ms.get(origin, 0), now_ms)


def close_due(state: KeyState, policy: WindowPolicy) -> list[tuple[str, WindowCounts]]:
    """Close every open window of ``state`` whose end + grace the stream time has reached."""
    return _close(
        state,
        policy,
        lambda spec, w: is_closed(policy.closes_at(spec, w.start_ms), state.stream_time_ms),
    )


def close_idle(state: KeyState, policy: WindowPolicy) -> list[tuple[str, WindowCounts]]:
    """Idle flush: close every open window now, and move stream time past them so that a later
    event for one of them is late, exactly as if stream time had reached its end + grace."""
    closed = _close(state, policy, lambda _spec, _w: True)
    for kind, window in closed:
        closes_at = policy.closes_at(policy.spec(kind), window.start_ms)
        state.stream_time_ms = max(state.stream_time_ms or closes_at, closes_at)
    return closed


def _close(state: KeyState, policy: WindowPolicy, due: Any) -> list[tuple[str, WindowCounts]]:
    closed: list[tuple[str, WindowCounts]] = []
    for spec in policy.specs:
        windows = state.open.get(spec.kind, {})
        for start in sorted(windows):
            if due(spec, windows[start]):
                window = windows.pop(start)
                closed.append((spec.kind, window))
                history = state.closed.setdefault(spec.kind, [])
                history.append(window)
                del history[: max(0, len(history) - policy.history)]
    return closed


def window_record(
    state: KeyState,
    kind: str,
    window: WindowCounts,
    policy: WindowPolicy,
    *,
    final: bool,
    format_time: Any,
) -> tuple[str, dict[str, Any]]:
    """The aggregates-topic record for one window: (Kafka key, JSON value).

    The key ``<key>|<window kind>|<window start>`` lets a compacted topic keep the latest state of
    every window.
    """
    spec = policy.spec(kind)
    start = format_time(window.start_ms)
    counts = {label: window.counts.get(label, 0) for label in ("POSITIVE", "NEGATIVE")}
    if "NEUTRAL" in window.counts:
        counts["NEUTRAL"] = window.counts["NEUTRAL"]
    value = {
        "key": state.key,
        **describe_key(state.key),
        "window": kind,
        "window_start": start,
        "window_end": format_time(window.start_ms + spec.size_ms),
        "window_size_s": spec.size_ms / 1000,
        "window_step_s": spec.step_ms / 1000,
        "counts": counts,
        "total": window.total,
        "positive_ratio": window.positive_ratio,
        "uncertain": sum(window.uncertain.values()),
        "out_of_scope": window.out_of_scope,
        "confident_positive_ratio": window.confident_positive_ratio,
        "mean_score": window.mean_score,
        "late_events": state.late.get(kind, 0),
        "final": final,
        "model_name": state.model_name,
        "stream_time": None if state.stream_time_ms is None else format_time(state.stream_time_ms),
    }
    return f"{state.key}|{kind}|{start}", value


WindowId = tuple[str, str, int]  # (key, kind, start)


class UpdateThrottle:
    """At most one non-final update per window per ``interval_ms``; others wait for :meth:`due`."""

    def __init__(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms
        self._last: dict[WindowId, int] = {}
        self._pending: set[WindowId] = set()

    def offer(self, window: WindowId, now_ms: int) -> bool:
        """True: publish this update now. False: it is held and :meth:`due` will return it."""
        last = self._last.get(window)
        if last is None or now_ms - last >= self.interval_ms:
            self._last[window] = now_ms
            self._pending.discard(window)
            return True
        self._pending.add(window)
        return False

    def due(self, now_ms: int) -> list[WindowId]:
        """Held windows whose interval has passed; they count as published now."""
        ready = [w for w in self._pending if now_ms - self._last.get(w, now_ms) >= self.interval_ms]
        for window in ready:
            self._pending.discard(window)
            self._last[window] = now_ms
        return sorted(ready)

    def forget(self, windows: Iterable[WindowId]) -> None:
        """A window closed: its final record supersedes any held update."""
        for window in windows:
            self._pending.discard(window)
            self._last.pop(window, None)
