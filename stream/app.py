"""The Faust wiring: topics, agents, the aggregates table, web views. The only Faust set-up.

input topic (raw bytes) -> take a batch -> [scorer thread: decode/validate -> clean -> score ->
enrich] -> publish events + dead letters + one fact per aggregate key, wait for the broker's acks
-> only then ack the batch.

aggregate-input topic (keyed by aggregate key) -> fold into that key's windows (table entry) ->
publish window updates (throttled) and finals -> aggregates topic; HTTP reads the table.

Why re-key through an internal topic: a window's counts are exact only if one consumer owns all of
its key's events. The events topic is keyed by message id, so the scoring agent publishes one small
"fact" per aggregate key (overall, source, source+channel) to ``<app id>-aggregate-input``, keyed by
that aggregate key; the aggregates table is co-partitioned with it. Each fact carries its input
record's partition and offset: the key's state keeps the highest offset counted per input
partition (in the same table entry as the counts), so facts re-published after a crash or a
rebalance are recognised and never counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
import orjson
from faust.exceptions import SameNode
from faust.types import EventT
from faust.types import Message as FaustMessage
from faust.web import Request, Response, View

from connectors.admin import aggregate_input_topic
from connectors.clients import (
    EMBEDDED_FETCH_MAX_WAIT_MS,
    faust_settings,
    shorten_faust_fetch_wait,
)
from stream.core.batching import collect_batch
from stream.core.codec import format_time_ms
from stream.core.pipeline import BatchOutcome, Classifier, OutRecord, process_batch
from stream.core.records import RawRecord
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
    default_policy,
    fold_event,
    resume_partitions,
    window_record,
)
from stream.faust_fixes import PARTITIONED_MEMORY_STORE
from stream.metrics import CONTENT_TYPE, WorkerMetrics
from stream.settings import Settings, pipeline_config

log = logging.getLogger(__name__)

# How long a shutdown waits for the batch in flight to be scored and published before giving up.
SHUTDOWN_GRACE_S = 60.0
EXIT_UNPUBLISHED = 70


def raw_record(message: FaustMessage) -> RawRecord:
    headers = message.headers or ()
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return RawRecord(
        value=message.value,
        key=message.key,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
        headers=tuple((str(name), bytes(value or b"")) for name, value in pairs),
    )


STALL_CHECK_S = 5.0
STALL_AFTER_S = 10.0


class InputProgress:
    """When the scoring agent was last handed an event, and whether it has work in hand."""

    def __init__(self) -> None:
        self._last_delivery = time.monotonic()
        self.in_flight = 0  # takes being scored or published (scoring overlaps publishing)
        self.queue: asyncio.Queue[Any] | None = None  # events handed over, not yet batched

    def delivered(self) -> None:
        self._last_delivery = time.monotonic()

    @staticmethod
    def is_behind(highwater: int | None, committed: int | None) -> bool:
        """Records wait past the committed offset. Checked only after a quiet spell, when every
        delivered event was acked and committed: so they were never delivered, or delivered and
        then lost to Faust's bookkeeping (both seen after a restart here)."""
        return highwater is not None and highwater > (committed or 0)

    def begin_batch(self) -> None:
        self.in_flight += 1

    def end_batch(self) -> None:
        self.in_flight -= 1
        self._last_delivery = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds with nothing delivered while nothing was queued or being scored."""
        if self.in_flight or (self.queue is not None and not self.queue.empty()):
            return 0.0
        return time.monotonic() - self._last_delivery


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def window_policy(settings: Settings) -> WindowPolicy:
    return default_policy(
        tumbling_s=settings.window_tumbling_s,
        hopping_s=settings.window_hopping_s,
        hop_s=settings.window_hop_s,
        grace_s=settings.window_grace_s,
        history=settings.window_history,
        partition_idle_s=settings.partition_idle_s,
    )


def aggregate_facts(outcome: BatchOutcome, input_partitions: int) -> list[OutRecord]:
    """The batch's facts, one record per aggregate key (keyed by it) listing that key's facts in
    input order: a few records per batch rather than three per event."""
    facts: dict[str, list[dict[str, Any]]] = {}
    for event in outcome.events:
        message, prediction = event.message, event.prediction
        payload = event.payload
        for key in aggregate_keys(message.source, message.channel):
            value = {
                "t": message.event_time_ms,
                "l": prediction.label,
                "s": prediction.score,
                "m": payload["model_name"],
                "o": event.origin,
                "n": event.offset,
                "p": input_partitions,
            }
            facts.setdefault(key, []).append(value)
    return [
        OutRecord(key=fact_key(key), value=orjson.dumps({"facts": values}))
        for key, values in facts.items()
    ]


def fact_key(key: str) -> bytes:
    """Facts are keyed by the JSON string of the aggregate key: the table's HTTP router hashes
    table keys in that form, so a request is routed to the worker that owns the key."""
    return orjson.dumps(key)


def fact_from(key: str, value: dict[str, Any]) -> ScoredFact:
    return ScoredFact(
        key=key,
        event_time_ms=int(value["t"]),
        label=str(value["l"]),
        score=float(value["s"]),
        model_name=str(value["m"]),
        origin=str(value["o"]),
        offset=int(value["n"]),
        partitions=int(value.get("p", 1)),
    )


def create_app(settings: Settings, classifier: Classifier) -> faust.App:
    """A Faust app that scores ``settings.topics.input_topic`` with ``classifier``."""
    app = faust.App(
        settings.app_id,
        datadir=str(settings.data_dir),
        web_port=settings.web_port,
        web_host="0.0.0.0",  # noqa: S104 - the worker's HTTP side is meant to be scraped
        canonical_url=settings.web_url or f"http://{socket.gethostname()}:{settings.web_port}",
        topic_disable_leader=True,
        # Standby replicas would run the aggregate timers on copies they do not own.
        table_standby_replicas=0,
        topic_replication_factor=settings.topics.replication_factor,
        **faust_settings(settings.kafka),
    )
    if settings.kafka.embedded:
        shorten_faust_fetch_wait(EMBEDDED_FETCH_MAX_WAIT_MS)
    topics = settings.topics
    input_topic = app.topic(
        topics.input_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=topics.input_partitions,
    )
    events_topic = app.topic(topics.events_topic, key_serializer="raw", value_serializer="raw")
    deadletter_topic = app.topic(
        topics.deadletter_topic, key_serializer="raw", value_serializer="raw"
    )
    facts_topic = wire_aggregates(app, settings)
    config = pipeline_config(settings)
    metrics = WorkerMetrics(
        model=classifier.name,
        version=classifier.version,
        backend=str(getattr(classifier, "backend", "custom")),
        device=str(getattr(classifier, "device", "unknown")),
    )
    # One scorer thread: the model runs off the event loop, so heartbeats and commits go on.
    scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
    max_wait_s = settings.batch_max_wait_ms / 1000

    async def publish(outcome: BatchOutcome) -> None:
        """Send every output record and wait until the broker has acknowledged each one."""
        pending: list[Any] = []
        for record in outcome.event_records():
            pending.append(await _send(events_topic, record))
        for record in outcome.dead_letters:
            pending.append(await _send(deadletter_topic, record))
        for record in aggregate_facts(outcome, topics.input_partitions):
            pending.append(await _send(facts_topic, record))
        await asyncio.gather(*pending)

    def log_batch(records: Sequence[RawRecord], outcome: BatchOutcome) -> None:
        log.debug(
            "batch: %d in, %d events, %d dead letters %s",
            len(records),
            len(outcome.events),
            len(outcome.dead_letters),
            dict(outcome.reasons),
        )

    @app.agent(input_topic)
    async def score(stream: faust.StreamT[bytes]) -> None:
        # Our own batching rather than Faust's take_events, whose buffer hand-off can stall
        # (faust-streaming #175, #640; seen here after a worker restart). A feeder task queues
        # events; each batch is what queued while the previous one was scored (a lone message is
        # scored at once), at most SENTISTREAM_BATCH_TAKE of them, which the runner sorts by length
        # into forward passes of at most SENTISTREAM_BATCH_SIZE (so under load batches fill and
        # pad little), topped up for at most SENTISTREAM_BATCH_MAX_WAIT_MS. Events are acked
        # only after their results were published: a shutdown or crash before that re-reads them.
        stream.enable_acks = False
        take = max(settings.batch_take, settings.batch_size)
        queue: asyncio.Queue[EventT[bytes]] = asyncio.Queue(maxsize=2 * take)

        async def feed() -> None:
            async for event in stream.events():
                progress.delivered()
                await queue.put(event)

        async def publish_then_ack(
            events: Sequence[EventT[bytes]], records: Sequence[RawRecord], outcome: BatchOutcome
        ) -> None:
            await publish(outcome)
            metrics.record_batch(records, outcome, now_ms())
            log_batch(records, outcome)
            for event in events:
                await stream.ack(event)
            progress.end_batch()

        feeder = asyncio.ensure_future(feed())
        progress.queue = queue
        loop = asyncio.get_running_loop()
        publishing: asyncio.Future[None] | None = None
        try:
            while True:
                events = await collect_batch(queue, take, max_wait_s)
                progress.begin_batch()
                records = [raw_record(event.message) for event in events]
                # Scoring this take overlaps publishing the previous one (at most one of each in
                # flight; takes are published and acked in the order they were read).
                outcome = await loop.run_in_executor(
                    scorer, process_batch, records, classifier, config, now_ms
                )
                if publishing is not None:
                    await finish(publishing)
                publishing = asyncio.ensure_future(publish_then_ack(events, records, outcome))
                publishing.add_done_callback(_exit_if_failed)
        finally:
            feeder.cancel()
            if publishing is not None:
                await finish(publishing)

    progress = InputProgress()

    @app.timer(interval=STALL_CHECK_S)  # type: ignore[untyped-decorator]
    async def unstall_input() -> None:
        """Re-seek the input when it has records but delivers none.

        After a restart Faust can drop records fetched while the input partitions were still
        paused for table recovery and never fetch them again (seen on the embedded broker; cf.
        faust-streaming #175, #640). Seeking back to the committed offsets refetches them; what
        was already delivered and not yet acked is delivered again (at-least-once).
        """
        if progress.stalled_for() < STALL_AFTER_S:
            return
        consumer = app.consumer
        inputs = [tp for tp in consumer.assignment() if tp.topic == topics.input_topic]
        if not inputs:
            return
        # Ask the broker: the consumer's own highwater is stale for a partition it stopped
        # fetching.
        try:
            end_offsets = await asyncio.wait_for(consumer.highwaters(*inputs), STALL_CHECK_S)
        except (TimeoutError, OSError) as exc:
            log.warning("input stall check: end offsets unavailable (%r)", exc)
            return
        committed: dict[Any, int | None] = getattr(consumer, "_committed_offset", {})
        behind = [tp for tp in inputs if progress.is_behind(end_offsets.get(tp), committed.get(tp))]
        if behind:
            log.warning("input stalled with records waiting on %s: seeking to committed", behind)
            progress.delivered()  # restart the quiet-spell clock: give the seek time to work
            await reseek_input(behind)

    async def reseek_input(partitions: Sequence[Any]) -> None:
        """Seek input partitions back to their committed offsets. Only the input: seeking the
        facts topic or a table changelog would replay older table state."""
        committed: dict[Any, int | None] = getattr(app.consumer, "_committed_offset", {})
        for tp in partitions:
            await app.consumer.seek(tp, committed.get(tp) or 0)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.exposition(), content_type=CONTENT_TYPE)

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json(
                {"status": "ok", "model": classifier.name, "version": classifier.version}
            )

    return app


def wire_aggregates(app: faust.App, settings: Settings) -> faust.TopicT:
    """The windowed-ratio side: facts topic -> table of key states -> aggregates topic + HTTP."""
    topics = settings.topics
    policy = window_policy(settings)
    facts_topic = app.topic(
        aggregate_input_topic(settings.app_id),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=topics.input_partitions,
        internal=False,
    )
    aggregates_topic = app.topic(
        topics.aggregates_topic, key_serializer="raw", value_serializer="raw"
    )
    states = app.Table(
        "aggregates",
        default=None,
        key_type=str,
        partitions=topics.input_partitions,
        # Faust's memory store keeps the keys of partitions a rebalance took away.
        store=PARTITIONED_MEMORY_STORE,
    )
    throttle = UpdateThrottle(int(settings.aggregate_update_interval_s * 1000))
    idle_after_ms = int(settings.idle_flush_s * 1000)
    ticks_sent: dict[str, int] = {}

    taken_over: set[str] = set()  # keys this worker resumed since its last rebalance

    @app.on_rebalance_complete.connect
    def forget_taken_over(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        taken_over.clear()

    def load(key: str) -> KeyState:
        stored = states.get(key)
        return KeyState.from_json(stored) if stored else KeyState(key)

    def records_for(
        state: KeyState, windows: Sequence[tuple[str, WindowCounts]], *, final: bool
    ) -> list[OutRecord]:
        out = []
        for kind, window in windows:
            key, value = window_record(
                state, kind, window, policy, final=final, format_time=format_time_ms
            )
            out.append(OutRecord(key=key.encode(), value=orjson.dumps(value)))
        return out

    @app.agent(facts_topic)
    async def aggregate(stream: faust.StreamT[bytes]) -> None:
        # Acked only once the key's new state is in the table. Faust acks a stream's event in a
        # ``finally`` when the agent is cancelled mid-event (faust-streaming 0.15.3,
        # Stream._py_aiter): a shutdown while the finals were being published committed the
        # facts' offset with the state never saved, and a restarted worker never closed that
        # key's windows (seen on Apache Kafka in a restart test).
        stream.enable_acks = False
        async for event in stream.events():
            key = str(orjson.loads(event.key or b'""'))
            state = await fold_record(key, orjson.loads(event.value))
            if state is not None:
                states[key] = state.to_json()
            await stream.ack(event)

    async def fold_record(key: str, value: dict[str, Any]) -> KeyState | None:
        """Fold one facts record (or tick) into its key's state; returns the state to save, or
        None when nothing changed."""
        state = load(key)
        now = now_ms()
        # Taking the key over changes its state even when nothing else does: it is saved then.
        resumed = key not in taken_over
        if resumed:
            taken_over.add(key)
            resume_partitions(state, now)
        if "tick" not in value:
            # A record lists a batch's facts for this key (a bare fact: older workers).
            for fact in value.get("facts", [value]):
                result = fold_event(state, fact_from(key, fact), policy, now)
                if not result.duplicate:
                    await publish_windows(key, state, result.closed, result.updated, now)
            return state
        # Time passes without facts: silent partitions may have gone idle (stream time moves
        # on), or the whole key has (idle flush closes its windows).
        ticks_sent.pop(key, None)
        if not state.has_open_windows():
            return state if resumed else None
        advance_stream_time(state, policy, now)
        closed = close_due(state, policy)
        if now - state.last_event_wall_ms >= idle_after_ms:
            closed += close_idle(state, policy)
        if not closed:
            return state if resumed else None
        await publish_windows(key, state, closed, [], now)
        return state

    async def publish_windows(
        key: str,
        state: KeyState,
        closed: Sequence[tuple[str, WindowCounts]],
        updated: Sequence[tuple[str, WindowCounts]],
        now: int,
    ) -> None:
        closed_ids = [(key, kind, w.start_ms) for kind, w in closed]
        throttle.forget(closed_ids)
        due_now = [(kind, w) for kind, w in updated if throttle.offer((key, kind, w.start_ms), now)]
        # Finals are published and acknowledged before the state that closed them is saved:
        # a crash in between re-closes the window and publishes the same final again.
        pending = [
            await _send(aggregates_topic, record)
            for record in records_for(state, closed, final=True)
        ]
        await asyncio.gather(*pending)
        for record in records_for(state, due_now, final=False):
            await _send(aggregates_topic, record)

    @app.timer(interval=max(settings.aggregate_update_interval_s, 0.1))  # type: ignore[untyped-decorator]
    async def publish_held_updates() -> None:
        now = now_ms()
        for key, kind, start in throttle.due(now):
            stored = states.get(key)
            if not stored:
                continue
            state = KeyState.from_json(stored)
            window = state.open.get(kind, {}).get(start)
            if window is not None:
                for record in records_for(state, [(kind, window)], final=False):
                    await _send(aggregates_topic, record)
        # Quiet keys with open windows get a tick through their own partition (so it is ordered
        # with the key's facts): its owner re-evaluates stream time and the idle flush.
        tick_every_ms = min(idle_after_ms, policy.partition_idle_ms)
        for key, stored in list(states.items()):
            if not stored or not KeyState.stored_has_open_windows(stored):
                continue
            quiet_for = now - int(stored["last_event_wall_ms"])
            if quiet_for >= tick_every_ms and now - ticks_sent.get(key, 0) >= tick_every_ms:
                ticks_sent[key] = now
                await facts_topic.send(key=fact_key(key), value=orjson.dumps({"tick": now}))

    @app.page("/aggregates/keys")
    class AggregateKeys(View):
        async def get(self, request: Request) -> Response:
            keys = sorted(key for key, stored in states.items() if stored)
            return self.json({"keys": keys, "worker": app.conf.canonical_url.human_repr()})

    @app.page("/aggregates")
    class Aggregates(View):
        async def get(self, request: Request) -> Response:
            query = request.query
            key = query.get("key")
            kind = query.get("window", "tumbling")
            last = query.get("last", "10")
            problem = None
            if not key:
                problem = "query parameter 'key' is required (see /aggregates/keys)"
            elif kind not in WINDOW_KINDS:
                problem = f"'window' must be one of {', '.join(WINDOW_KINDS)}, got {kind!r}"
            elif not last.isdigit() or not 0 <= int(last) <= 1000:
                problem = f"'last' must be an integer from 0 to 1000, got {last!r}"
            if problem is not None:
                return self.json({"error": problem}, status=400)
            assert key is not None
            try:  # the key's state lives on the worker that owns its partition: ask it
                return await app.router.route_req(states.name, key, self.web, request)
            except SameNode:
                pass
            stored = states.get(key)
            if not stored:
                return self.json({"error": f"no aggregates for key {key!r}"}, status=404)
            state = KeyState.from_json(stored)
            current = sorted(state.open.get(kind, {}).values(), key=lambda w: w.start_ms)
            closed = state.closed.get(kind, [])[-int(last) :] if int(last) else []
            return self.json(
                {
                    "key": key,
                    "window": kind,
                    "late_events": state.late.get(kind, 0),
                    "stream_time": None
                    if state.stream_time_ms is None
                    else format_time_ms(state.stream_time_ms),
                    "current": [_window_view(state, kind, w, policy, final=False) for w in current],
                    "closed": [_window_view(state, kind, w, policy, final=True) for w in closed],
                }
            )

    return facts_topic


def _window_view(
    state: KeyState, kind: str, window: WindowCounts, policy: WindowPolicy, *, final: bool
) -> dict[str, Any]:
    return window_record(state, kind, window, policy, final=final, format_time=format_time_ms)[1]


async def finish(work: asyncio.Future[None]) -> None:
    """Await a batch's work even if we are cancelled meanwhile (a shutdown lets the batch in
    flight be published). If publishing fails, or a shutdown cannot wait for it, the process
    exits at once: its batch was never acked, so it is re-read after restart (at-least-once)."""
    try:
        await asyncio.shield(work)
        return
    except asyncio.CancelledError:
        try:
            await asyncio.wait_for(asyncio.shield(work), SHUTDOWN_GRACE_S)
        except BaseException as exc:  # noqa: BLE001 - any failure here means unpublished output
            _exit_unpublished(exc)
        raise
    except Exception as exc:  # noqa: BLE001
        _exit_unpublished(exc)


def _exit_if_failed(work: asyncio.Future[None]) -> None:
    if not work.cancelled() and work.exception() is not None:
        _exit_unpublished(work.exception())  # type: ignore[arg-type]


def _exit_unpublished(exc: BaseException) -> None:
    log.critical("could not publish a batch (%r); exiting without committing it", exc)
    logging.shutdown()
    os._exit(EXIT_UNPUBLISHED)


async def _send(topic: faust.TopicT, record: OutRecord) -> Any:
    return await topic.send(key=record.key, value=record.value, headers=record.headers or None)
