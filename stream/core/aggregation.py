"""The windowed-ratio step: facts records -> one key's state -> finals and updates to publish.

scored batch -> ``facts_records`` (one facts record per aggregate key, keyed by it) -> facts
topic -> ``Aggregator.step`` (the key's stored state, the record, the time) -> the new state
and the window records to publish. The worker publishes a step's finals and waits for the
broker's acks *before* it saves the state that closed them (a crash in between re-closes the
window and publishes the same final again, never loses it), then publishes its updates.

Besides facts, the facts topic carries two control records: a key's *tick* (the key was quiet:
re-evaluate stream time and the idle flush) and *current* reports (the scorers of these input
partitions were keeping up at this time: see ``windows.advance_stream_time``). Pure: the clock
is passed in, nothing here touches Kafka or Faust.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.core.codec import format_time_ms
from stream.core.pipeline import BatchOutcome, OutRecord
from stream.core.windows import (
    WINDOW_KINDS,
    KeyState,
    ScoredFact,
    UpdateThrottle,
    WindowCounts,
    WindowPolicy,
    advance_stream_time,
    aggregate_keys,
    close_due,
    close_idle,
    fold_facts,
    model_key,
    resume_partitions,
    window_record,
)

MAX_LAST = 1000  # closed windows one /aggregates request may ask for


def fact_key(key: str) -> bytes:
    """Facts are keyed by the JSON string of the aggregate key: the table's HTTP router hashes
    table keys in that form, so a request is routed to the worker that owns the key."""
    return orjson.dumps(key)


def facts_records(
    outcome: BatchOutcome, input_partitions: int, per_model: bool = False
) -> list[OutRecord]:
    """The batch's facts, one record per aggregate key (keyed by it) listing that key's facts in
    input order: a few records per batch rather than three per event. ``per_model`` (a canary
    run): each event also counts under ``model=<the version that scored it>``."""
    facts: dict[str, list[dict[str, Any]]] = {}
    for event in outcome.events:
        message, prediction = event.message, event.prediction
        value = {
            "t": message.event_time_ms,
            "l": prediction.label,
            "s": prediction.score,
            "m": event.payload["model_name"],
            "o": event.origin,
            "n": event.offset,
            "p": input_partitions,
        }
        if event.payload.get("uncertain"):
            value["u"] = 1
        if event.payload.get("out_of_scope"):
            value["x"] = 1
        keys = aggregate_keys(message.source, message.channel)
        if per_model:
            keys.append(model_key(str(event.payload["model_version"])))
        for key in keys:
            facts.setdefault(key, []).append(value)
    return [
        OutRecord(key=fact_key(key), value=orjson.dumps({"facts": values}))
        for key, values in facts.items()
    ]


def current_record(origins: Sequence[str], at_ms: int) -> OutRecord:
    """A report that the scorers of ``origins`` were keeping up at ``at_ms`` (sent to every
    facts partition, so every aggregate owner hears it)."""
    return OutRecord(key=None, value=orjson.dumps({"current": sorted(origins), "at": at_ms}))


def tick_record(key: str, at_ms: int) -> OutRecord:
    return OutRecord(key=fact_key(key), value=orjson.dumps({"tick": at_ms}))


def fact_from(key: str, value: Mapping[str, Any]) -> ScoredFact:
    return ScoredFact(
        key=key,
        event_time_ms=int(value["t"]),
        label=str(value["l"]),
        score=float(value["s"]),
        model_name=str(value["m"]),
        origin=str(value["o"]),
        offset=int(value["n"]),
        partitions=int(value.get("p", 1)),
        uncertain=bool(value.get("u", 0)),
        in_scope=not value.get("x", 0),
    )


@dataclass(frozen=True)
class Step:
    """What one facts-topic record did to its key: ``state`` to save (None: unchanged), then
    ``finals`` (publish and wait for acks before saving) and ``updates`` (publish after)."""

    state: dict[str, Any] | None = None
    finals: list[OutRecord] = field(default_factory=list)
    updates: list[OutRecord] = field(default_factory=list)


@dataclass
class Aggregator:
    """The per-key step and its timers, for the keys one worker owns.

    Holds only what may be lost with the worker: which keys it took over since its last
    rebalance, the update throttle, when each quiet key was last ticked, and the latest
    *current* report per input partition. Everything that must survive a crash is in the
    key's state, which the caller stores.
    """

    policy: WindowPolicy
    update_interval_ms: int
    idle_after_ms: int
    current_for_ms: int  # a *current* report is believed this long
    throttle: UpdateThrottle = field(init=False)
    taken_over: set[str] = field(default_factory=set)
    ticks_sent: dict[str, int] = field(default_factory=dict)
    current_at: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.throttle = UpdateThrottle(self.update_interval_ms)

    def rebalanced(self) -> None:
        """Partitions moved: every key is taken over afresh when it is next seen."""
        self.taken_over.clear()

    def current_origins(self, now_ms: int) -> set[str]:
        return {o for o, at in self.current_at.items() if now_ms - at <= self.current_for_ms}

    def step(
        self, key: str | None, value: Mapping[str, Any], stored: dict[str, Any] | None, now_ms: int
    ) -> Step:
        if "current" in value:
            at = int(value["at"])
            for origin in value["current"]:
                self.current_at[str(origin)] = max(self.current_at.get(str(origin), 0), at)
            return Step()
        if key is None:
            raise ValueError("a facts or tick record without a key")
        state = KeyState.from_json(stored) if stored else KeyState(key)
        # Taking the key over changes its state even when nothing else does: it is saved then.
        resumed = key not in self.taken_over
        if resumed:
            self.taken_over.add(key)
            resume_partitions(state, now_ms)
        current = self.current_origins(now_ms)
        if "tick" not in value:
            # A record lists a batch's facts for this key (a bare fact: older workers).
            facts = [fact_from(key, fact) for fact in value.get("facts", [value])]
            result = fold_facts(state, facts, self.policy, now_ms, current)
            updated = {(kind, window.start_ms): window for kind, window in result.updated}
            still_open = [
                (kind, w)
                for (kind, start), w in updated.items()
                if start in state.open.get(kind, {})
            ]
            return self._publish(state, result.closed, still_open, now_ms)
        # Time passes without facts: silent partitions may have gone idle (stream time moves
        # on), or the whole key has (idle flush closes its windows).
        self.ticks_sent.pop(key, None)
        if not state.has_open_windows():
            return Step(state.to_json() if resumed else None)
        advance_stream_time(state, self.policy, now_ms, current)
        closed = close_due(state, self.policy)
        if now_ms - state.last_event_wall_ms >= self.idle_after_ms:
            closed += close_idle(state, self.policy)
        if not closed:
            return Step(state.to_json() if resumed else None)
        return self._publish(state, closed, [], now_ms)

    def _publish(
        self,
        state: KeyState,
        closed: Sequence[tuple[str, WindowCounts]],
        updated: Sequence[tuple[str, WindowCounts]],
        now_ms: int,
    ) -> Step:
        key = state.key
        self.throttle.forget([(key, kind, w.start_ms) for kind, w in closed])
        due_now = [
            (kind, w) for kind, w in updated if self.throttle.offer((key, kind, w.start_ms), now_ms)
        ]
        return Step(
            state.to_json(),
            finals=self.window_records(state, closed, final=True),
            updates=self.window_records(state, due_now, final=False),
        )

    def window_records(
        self, state: KeyState, windows: Iterable[tuple[str, WindowCounts]], *, final: bool
    ) -> list[OutRecord]:
        out = []
        for kind, window in windows:
            key, value = window_record(
                state, kind, window, self.policy, final=final, format_time=format_time_ms
            )
            out.append(OutRecord(key=key.encode(), value=orjson.dumps(value)))
        return out

    def held_updates(
        self, now_ms: int, stored: Callable[[str], dict[str, Any] | None]
    ) -> list[OutRecord]:
        """Updates the throttle held back whose interval has passed (still-open windows)."""
        out: list[OutRecord] = []
        for key, kind, start in self.throttle.due(now_ms):
            data = stored(key)
            if not data:
                continue
            state = KeyState.from_json(data)
            window = state.open.get(kind, {}).get(start)
            if window is not None:
                out += self.window_records(state, [(kind, window)], final=False)
        return out

    def ticks_due(
        self, now_ms: int, states: Iterable[tuple[str, dict[str, Any] | None]]
    ) -> list[OutRecord]:
        """Ticks for quiet keys with open windows, sent through the key's own facts partition
        (so they are ordered with its facts): its owner re-evaluates stream time and the idle
        flush."""
        every = min(self.idle_after_ms, self.policy.partition_idle_ms)
        out = []
        for key, data in states:
            if not data or not KeyState.stored_has_open_windows(data):
                continue
            quiet_for = now_ms - int(data["last_event_wall_ms"])
            if quiet_for >= every and now_ms - self.ticks_sent.get(key, 0) >= every:
                self.ticks_sent[key] = now_ms
                out.append(tick_record(key, now_ms))
        return out


@dataclass(frozen=True)
class AggregatesQuery:
    key: str
    kind: str
    last: int


def parse_aggregates_query(query: Mapping[str, str]) -> AggregatesQuery | str:
    """``/aggregates`` parameters, or the problem to answer with 400."""
    key = query.get("key")
    kind = query.get("window", "tumbling")
    last = query.get("last", "10")
    if not key:
        return "query parameter 'key' is required (see /aggregates/keys)"
    if kind not in WINDOW_KINDS:
        return f"'window' must be one of {', '.join(WINDOW_KINDS)}, got {kind!r}"
    if not last.isdigit() or not 0 <= int(last) <= MAX_LAST:
        return f"'last' must be an integer from 0 to {MAX_LAST}, got {last!r}"
    return AggregatesQuery(key, kind, int(last))


def aggregates_view(
    stored: dict[str, Any], query: AggregatesQuery, policy: WindowPolicy
) -> dict[str, Any]:
    """The ``/aggregates`` answer for one key: its open windows and the last closed ones."""
    state = KeyState.from_json(stored)
    kind = query.kind

    def view(window: WindowCounts, *, final: bool) -> dict[str, Any]:
        return window_record(state, kind, window, policy, final=final, format_time=format_time_ms)[
            1
        ]

    current = sorted(state.open.get(kind, {}).values(), key=lambda w: w.start_ms)
    closed = state.closed.get(kind, [])[-query.last :] if query.last else []
    return {
        "key": query.key,
        "window": kind,
        "late_events": state.late.get(kind, 0),
        "stream_time": None
        if state.stream_time_ms is None
        else format_time_ms(state.stream_time_ms),
        "current": [view(w, final=False) for w in current],
        "closed": [view(w, final=True) for w in closed],
    }
