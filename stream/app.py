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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import faust
import orjson
from aiohttp.web import Request as AiohttpRequest
from confluent_kafka import KafkaException
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
from connectors.group_offsets import GroupOffsets, partition_name
from connectors.model_control import ControlFollower, control_topic
from connectors.publisher import TakePublisher
from connectors.transactions import TransactionalPublisher
from stream.classify_service import API_TOPIC, ClassifyRequests
from stream.core.aggregation import (
    Aggregator,
    aggregates_view,
    current_record,
    facts_records,
    parse_aggregates_query,
)
from stream.core.batching import ArrivalRate, CostLine, DeadlineTake, collect_batch
from stream.core.candidates import Candidate
from stream.core.classify_api import (
    ApiError,
    ApiLimits,
    TokenBucket,
    openapi_document,
    parse_classify_request,
    retry_after_header,
)
from stream.core.codec import (
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    encode_json,
)
from stream.core.drift import DriftTracker
from stream.core.errors import EXIT_UNPUBLISHED, UnavailableError
from stream.core.health import (
    PartitionProgress,
    Phase,
    ProgressTracker,
    current_partitions,
    health_answer,
)
from stream.core.live import RecentTakes
from stream.core.model_versions import ActiveModel, WorkerStatus
from stream.core.pipeline import (
    BatchOutcome,
    Classifier,
    LanguageDetector,
    OutRecord,
    next_offsets,
    process_batch,
    split_outcome,
)
from stream.core.records import RawRecord
from stream.core.windows import WindowPolicy, default_policy
from stream.faust_fixes import (
    PARTITIONED_MEMORY_STORE,
    SeekBeforeDeliveryTableManager,
    fixed_transport_urls,
)
from stream.metrics import CONTENT_TYPE, WorkerMetrics
from stream.model_swap import ModelLoader, ModelSlot, warm_up
from stream.settings import Settings, pipeline_config

log = logging.getLogger(__name__)

# Partition progress is checked this often; records waiting this long without progress = stall.
PROGRESS_CHECK_S = 5.0
STALL_AFTER_S = 30.0
# A scorer is *current* on an input partition when it has no lag or finished a record produced
# this recently; a report of it is believed this long (see stream.core.windows idleness).
CURRENT_WITHIN_S = 10.0
CURRENT_BELIEVED_S = 3 * PROGRESS_CHECK_S
# How long a shutdown waits for the batch in flight to be scored and published before giving up.
SHUTDOWN_GRACE_S = 60.0


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


def create_app(
    settings: Settings,
    classifier: Classifier,
    load_model: ModelLoader | None = None,
    *,
    canary: Candidate | None = None,
    shadow: Candidate | None = None,
    detect_languages: LanguageDetector | None = None,
    language_models: Mapping[str, Classifier] | None = None,
    drift: DriftTracker | None = None,
) -> faust.App:
    """A Faust app that scores ``settings.topics.input_topic`` with ``classifier``; with
    ``load_model``, it follows the model control topic and swaps to each promoted version; a
    ``canary`` scores its share of the messages for real, a ``shadow`` its share for comparison
    (``settings.topics.shadow_topic``); with ``drift``, each closed drift window is compared with
    the reference and published to ``settings.topics.drift_topic``."""
    faust_kwargs = faust_settings(settings.kafka, settings.session_timeout_s)
    faust_kwargs["broker"] = fixed_transport_urls(faust_kwargs["broker"])
    app = faust.App(
        settings.app_id,
        datadir=str(settings.data_dir),
        web_port=settings.web_port,
        web_host="0.0.0.0",  # noqa: S104 - the worker's HTTP side is meant to be scraped
        canonical_url=settings.web_url or f"http://{socket.gethostname()}:{settings.web_port}",
        topic_disable_leader=True,
        # Standby replicas would run the aggregate timers on copies they do not own.
        table_standby_replicas=0,
        TableManager=SeekBeforeDeliveryTableManager,
        consumer_group_instance_id=settings.group_instance_id,
        topic_replication_factor=settings.topics.replication_factor,
        **faust_kwargs,
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
    shadow_topic = app.topic(topics.shadow_topic, key_serializer="raw", value_serializer="raw")
    metrics = WorkerMetrics(
        model=classifier.name,
        version=classifier.version,
        backend=str(getattr(classifier, "backend", "custom")),
        device=str(getattr(classifier, "device", "unknown")),
    )
    facts_topic, _aggregator = wire_aggregates(app, settings, metrics)
    config = pipeline_config(settings)
    slot = ModelSlot(classifier)
    if load_model is not None:
        wire_model_control(app, settings, slot, load_model, metrics)
    # One scorer thread: the model runs off the event loop, so heartbeats and commits go on.
    scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
    take = max(settings.batch_take, settings.batch_size)
    # Input events, and None when a classify API request waits (it wakes an idle loop).
    queue: asyncio.Queue[EventT[bytes] | None] = asyncio.Queue(maxsize=2 * take)

    def wake() -> None:
        if not queue.full():  # a full queue means a take is coming anyway
            queue.put_nowait(None)

    classify = ClassifyRequests(wake)
    max_wait_s = settings.batch_max_wait_ms / 1000
    # Deadline-driven takes: a take waits for more messages while its oldest message's latency
    # budget allows, until the take is large enough to keep up (stream.core.batching.DeadlineTake).
    deadline = DeadlineTake(settings.latency_target_ms) if settings.latency_target_ms else None
    take_cost = CostLine()
    arrivals = ArrivalRate()

    def take_budget_s(items: Sequence[EventT[bytes] | None]) -> float:
        if deadline is None:
            return 0.0
        oldest = next((item for item in items if item is not None), None)
        if oldest is None:  # only classify API wake-ups: their callers wait, score now
            return 0.0
        now = now_ms()
        size = len(items)
        wait_ms = deadline.wait_ms(
            oldest_age_ms=now - oldest.message.timestamp * 1000,
            take_size=size,
            max_size=take,
            take_cost=take_cost.line(),
            arrivals_per_ms=arrivals.per_ms(now),
        )
        return wait_ms / 1000

    transactions = (
        TransactionalPublisher(
            settings.kafka,
            settings.scorer_transactional_id(f"{socket.gethostname()}-{settings.web_port}"),
            group_id=settings.app_id,
            transaction_timeout_s=settings.session_timeout_s,
        )
        if settings.processing_guarantee == "exactly_once"
        else None
    )
    # At-least-once: a take's outputs go through one librdkafka producer on a thread of its own
    # (connectors.publisher: Faust's per-record send was a third of the loop's time).
    publisher = TakePublisher(settings.kafka) if transactions is None else None
    publisher_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publisher")

    def score_take(records: Sequence[RawRecord], model: Classifier) -> BatchOutcome:
        return process_batch(
            records, model, config, now_ms,
            canary=canary, shadow=shadow, detect_languages=detect_languages,
            language_models=language_models,
        )  # fmt: skip

    events_name, deadletter_name, facts_name, shadow_name = (
        topic.get_topic_name()
        for topic in (events_topic, deadletter_topic, facts_topic, shadow_topic)
    )

    def take_outputs(outcome: BatchOutcome) -> list[tuple[str, OutRecord]]:
        """Every record a take publishes, by topic name."""
        outputs = [(events_name, r) for r in outcome.event_records(settings.event_key)]
        outputs += [(deadletter_name, record) for record in outcome.dead_letters]
        facts = facts_records(outcome, topics.input_partitions, per_model=canary is not None)
        outputs += [(facts_name, record) for record in facts]
        outputs += [(shadow_name, record) for record in outcome.shadow]
        return outputs

    def publish_take(outcome: BatchOutcome) -> None:
        assert publisher is not None
        publisher.publish(take_outputs(outcome))

    async def publish(records: Sequence[RawRecord], outcome: BatchOutcome) -> None:
        """Send every output record and wait until the broker has acknowledged each one; with
        exactly-once, in one transaction that also commits the take's input offsets. At least
        once, the records are built and sent on the publisher's thread, off the event loop."""
        if transactions is not None:
            await transactions.publish(take_outputs(outcome), next_offsets(records))
        elif publisher is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(publisher_thread, publish_take, outcome)

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

        async def feed() -> None:
            async for event in stream.events():
                arrivals.observe(now_ms())
                await queue.put(event)

        async def publish_then_ack(
            events: Sequence[EventT[bytes]], records: Sequence[RawRecord], outcome: BatchOutcome
        ) -> None:
            await publish(records, outcome)
            published_ms = now_ms()
            metrics.record_batch(records, outcome, published_ms)
            recent.add(published_ms, len(records), [
                published_ms - r.timestamp_ms for r in records if r.timestamp_ms
            ])  # fmt: skip
            observe_drift(records, outcome)
            health.finished(records, published_ms if outcome.events else None)
            log_batch(records, outcome)
            for event in events:
                await stream.ack(event)

        if transactions is not None:
            await transactions.start()  # fences a previous incarnation, aborting what it left open
        feeder = asyncio.ensure_future(feed())
        loop = asyncio.get_running_loop()
        publishing: asyncio.Future[None] | None = None
        try:
            while True:
                items = await collect_batch(queue, take, max_wait_s, take_budget_s)
                events = [item for item in items if item is not None]
                requests = classify.drain()  # classify API texts join this take
                if not events and not requests:
                    continue
                records = [raw_record(event.message) for event in events]
                api_records = classify.records(requests, now_ms())
                # Scoring this take overlaps publishing the previous one (at most one of each in
                # flight; takes are published and acked in the order they were read).
                scoring_started = loop.time()
                try:
                    outcome = await loop.run_in_executor(
                        scorer, score_take, [*records, *api_records], slot.current
                    )
                except BaseException as exc:
                    classify.fail(requests, exc)
                    raise
                take_cost.observe(
                    len(records) + len(api_records), (loop.time() - scoring_started) * 1000
                )
                if api_records:
                    outcome, api_events, api_dead = split_outcome(outcome, API_TOPIC)
                    classify.answer(requests, api_events, api_dead)
                if not events:
                    continue
                if publishing is not None:
                    await finish(publishing)
                publishing = asyncio.ensure_future(publish_then_ack(events, records, outcome))
                publishing.add_done_callback(_exit_if_failed)
        finally:
            feeder.cancel()
            if publishing is not None:
                await finish(publishing)
            if transactions is not None:
                await transactions.stop()
            if publisher is not None:
                publisher_thread.submit(publisher.close)
            publisher_thread.shutdown(wait=False)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.exposition(), content_type=CONTENT_TYPE)

    health = wire_health(app, settings, metrics, facts_topic)
    latest_drift: dict[str, dict[str, Any]] = {}
    observe_drift = wire_drift(app, settings, drift, metrics, latest_drift)
    recent = RecentTakes()

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            model = slot.current
            status, body = health.answer(model=model.name, version=model.version)
            return self.json(body, status=status)

    wire_classify_api(app, settings, classify)

    @app.page("/dashboard")
    class Dashboard(View):
        async def get(self, request: Request) -> Response:
            return self.html(DASHBOARD_HTML)

    @app.page("/dashboard/status")
    class DashboardStatus(View):
        async def get(self, request: Request) -> Response:
            model = slot.current
            return self.json({
                "worker": app.conf.canonical_url.human_repr(),
                "model": {"name": model.name, "version": model.version,
                          "backend": str(getattr(model, "backend", "custom"))},
                "now": asdict(recent.summary(now_ms())),
                "drift_enabled": drift is not None,
                "drift": latest_drift,
            })  # fmt: skip

    return app


CLASSIFY_TIMEOUT_S = 30.0


def wire_classify_api(app: faust.App, settings: Settings, classify: ClassifyRequests) -> None:
    """``POST /v1/classify`` and ``GET /v1/openapi.json``: the decisions are in
    stream.core.classify_api; the texts are scored by the agent's loop with its next take."""
    limits = api_limits(settings)
    bucket = TokenBucket(limits.rate_per_s, limits.burst)
    document = openapi_document(limits)

    def error(problem: ApiError, view: View, **headers: str) -> Response:
        return view.json(problem.body(), status=problem.status, headers=headers or None)

    @app.page("/v1/openapi.json")
    class OpenApi(View):
        async def get(self, request: Request) -> Response:
            return self.json(document)

    @app.page("/v1/classify")
    class Classify(View):
        async def post(self, request: Request) -> Response:
            http = cast(AiohttpRequest, request)  # Faust's web driver is aiohttp
            wait = bucket.take(str(http.remote or "unknown"), time.monotonic())
            if wait:
                problem = ApiError(429, "rate_limited", f"too many requests; retry in {wait:.2f} s")
                return error(problem, self, **{"Retry-After": retry_after_header(wait)})
            if http.content_type != "application/json":
                return error(ApiError(415, "unsupported_media_type",
                                      "send the body as application/json"), self)  # fmt: skip
            body = await read_limited(http, limits.max_request_bytes)
            if body is None:
                return error(ApiError(413, "request_too_large", "the request body is over "
                                      f"{limits.max_request_bytes} bytes"), self)  # fmt: skip
            parsed = parse_classify_request(body, limits)
            if isinstance(parsed, ApiError):
                return error(parsed, self)
            answer = classify.submit(parsed)
            try:
                results = await asyncio.wait_for(answer, CLASSIFY_TIMEOUT_S)
            except TimeoutError:
                return error(ApiError(503, "timeout", "the worker could not score in time"), self)
            return self.json({"results": results})


async def read_limited(request: AiohttpRequest, limit: int) -> bytes | None:
    """The body, or None once it is over ``limit`` bytes (read no further)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        return None
    chunks, size = [], 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def api_limits(settings: Settings) -> ApiLimits:
    return ApiLimits(
        max_texts=settings.api_max_texts,
        max_text_bytes=settings.max_message_bytes,
        max_request_bytes=settings.api_max_request_bytes,
        rate_per_s=settings.api_rate_per_s,
        burst=settings.api_burst,
    )


DRIFT_CHECK_S = 2.0
DEAD_LETTER_SOURCE = (HEADER_SOURCE_TOPIC, HEADER_SOURCE_PARTITION, HEADER_SOURCE_OFFSET)
# The live page (/dashboard): static HTML whose script reads /dashboard/status and /aggregates.
DASHBOARD_HTML = (Path(__file__).parent / "web" / "dashboard.html").read_text(encoding="utf-8")


def wire_drift(
    app: faust.App,
    settings: Settings,
    tracker: DriftTracker | None,
    metrics: WorkerMetrics,
    latest: dict[str, dict[str, Any]],
) -> Callable[[Sequence[RawRecord], BatchOutcome], None]:
    """Feed each published take to ``tracker``; a timer publishes the windows it closes (key: the
    source), sets the drift gauges and keeps each source's latest record in ``latest`` (the live
    page's). Without a tracker, a no-op."""
    if tracker is None:
        return lambda _records, _outcome: None
    drift_topic = app.topic(settings.topics.drift_topic, key_serializer="raw",
                            value_serializer="raw")  # fmt: skip
    worker = f"{socket.gethostname()}:{settings.web_port}"

    def observe(records: Sequence[RawRecord], outcome: BatchOutcome) -> None:
        now = now_ms()
        for event in outcome.events:
            tracker.add_event(
                event.payload, event.message.event_time_ms, origin=event.origin, now_ms=now
            )
        if not outcome.dead_letters:
            return
        # a dead letter has no trusted event time: its input record's Kafka timestamp stands in
        times = {(r.topic, str(r.partition), str(r.offset)): r.timestamp_ms for r in records}
        for dead in outcome.dead_letters:
            headers = {name: value.decode() for name, value in dead.headers}
            topic, partition, offset = (headers.get(name, "") for name in DEAD_LETTER_SOURCE)
            where = (topic, partition, offset)
            tracker.add_dead_letter(
                headers.get(HEADER_REASON, "unknown"), times.get(where) or now,
                origin=f"{where[0]}/{where[1]}", now_ms=now,
            )  # fmt: skip

    @app.timer(interval=DRIFT_CHECK_S)  # type: ignore[untyped-decorator]
    async def publish_drift() -> None:
        for record in tracker.close_due(now_ms()):
            metrics.record_drift(record)
            document = {**record.to_json(), "worker": worker}
            latest[record.source] = document
            await _send(drift_topic, OutRecord(key=record.source.encode(),
                                               value=encode_json(document)))  # fmt: skip

    return observe


def wire_model_control(
    app: faust.App,
    settings: Settings,
    slot: ModelSlot,
    load_model: ModelLoader,
    metrics: WorkerMetrics,
) -> None:
    """Follow the control topic: each promoted version is loaded beside the running model and
    swapped in at a batch boundary; every attempt is reported on the topic (``models list``)."""
    topic_name = control_topic(settings.app_id)
    status_topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    worker = settings.group_instance_id or app.conf.canonical_url.human_repr()

    async def report(active: ActiveModel, error: str | None) -> None:
        status = WorkerStatus(worker, active.version, error is None, slot.version, error, now_ms())
        await _send(status_topic, status.record(), partition=0)

    async def swap_to(active: ActiveModel) -> None:
        loop = asyncio.get_running_loop()
        log.info("model control: loading %s (%s) beside %s", active.version, active.path,
                 slot.version)  # fmt: skip
        try:
            candidate = await loop.run_in_executor(None, load_model, active)
            await loop.run_in_executor(None, warm_up, candidate)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the worker on its model
            metrics.model_load_failures.inc()
            error = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.error("model control: %s not loaded, staying on %s (%s)", active.version,
                      slot.version, error)  # fmt: skip
            await report(active, error)
            return
        previous = slot.swap(candidate)
        metrics.model_swapped(
            model=candidate.name,
            version=candidate.version,
            backend=str(getattr(candidate, "backend", "custom")),
            device=str(getattr(candidate, "device", "unknown")),
        )
        log.info("model control: now scoring with %s (was %s)", candidate.version,
                 previous.version)  # fmt: skip
        await report(active, None)

    @app.task  # type: ignore[untyped-decorator]
    async def follow_model_control() -> None:
        loop = asyncio.get_running_loop()
        # One thread owns the follower's consumer: a cancelled poll still runs to its end there,
        # and the close queued behind it never races it.
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-control")
        follower = ControlFollower(settings.kafka, topic_name)
        try:
            while True:
                try:
                    state = await loop.run_in_executor(reader, follower.read_to_end)
                    break
                except UnavailableError as exc:  # a broker hiccup must not end the worker
                    log.warning("model control: %s; retrying", exc)
                    await asyncio.sleep(PROGRESS_CHECK_S)
            if state.active is not None and state.active.version != slot.version:
                await swap_to(state.active)  # promoted between start-up and now
            while not app.should_stop:
                update = await loop.run_in_executor(reader, follower.poll, 1.0)
                if isinstance(update, ActiveModel) and update.version != slot.version:
                    await swap_to(update)
        finally:
            reader.submit(follower.close)
            reader.shutdown(wait=False)


class WorkerHealth:
    """What /health reports: the worker's phase (from Faust's rebalance state) and the latest
    progress check of the partitions it consumes (offsets read from the broker)."""

    def __init__(self, app: faust.App, stall_after_ms: int) -> None:
        self.app = app
        self.tracker = ProgressTracker(stall_after_ms=stall_after_ms)
        self.report: list[PartitionProgress] | None = None
        self.last_event_ms: int | None = None
        self.newest_done_ms: dict[str, int] = {}  # input partition -> newest finished record's ts

    def finished(self, records: Sequence[RawRecord], event_published_ms: int | None) -> None:
        """A take's outputs were acknowledged (``event_published_ms``: when, if it had events)."""
        newest = self.newest_done_ms
        for record in records:
            name = partition_name(record.topic, record.partition)
            if record.timestamp_ms is not None:
                newest[name] = max(newest.get(name, record.timestamp_ms), record.timestamp_ms)
        if event_published_ms is not None:
            self.last_event_ms = event_published_ms

    def phase(self) -> Phase:
        app = self.app
        if app.should_stop:
            return "stopping"
        if app.rebalancing_count == 0:
            return "starting"
        return "recovering" if app.rebalancing else "running"

    def answer(self, **extra: Any) -> tuple[int, dict[str, Any]]:
        return health_answer(
            self.phase(), self.report, last_event_ms=self.last_event_ms, extra=extra
        )


def wire_health(
    app: faust.App, settings: Settings, metrics: WorkerMetrics, facts_topic: faust.TopicT
) -> WorkerHealth:
    """A timer that checks the progress of every input and facts partition this worker owns
    (and tells the aggregate owners which input partitions it keeps up with), and the
    rebalance metrics."""
    input_topic = settings.topics.input_topic
    facts_name = facts_topic.get_topic_name()
    watched_topics = {input_topic, facts_name}
    health = WorkerHealth(app, stall_after_ms=int(STALL_AFTER_S * 1000))
    offsets: list[GroupOffsets] = []  # one reader, made on first use
    assigned_at: list[float] = []

    @app.on_partitions_assigned.connect
    async def count_rebalance(sender: Any, /, *args: Any, **kwargs: Any) -> None:
        metrics.rebalances.inc()
        health.report = None  # a fresh check after every assignment
        assigned_at[:] = [time.monotonic()]

    @app.on_rebalance_complete.connect
    async def time_recovery(sender: Any, /, *args: Any, **kwargs: Any) -> None:
        if assigned_at:
            metrics.recovery_seconds.observe(time.monotonic() - assigned_at.pop())

    @app.timer(interval=PROGRESS_CHECK_S)  # type: ignore[untyped-decorator]
    async def check_progress() -> None:
        if health.phase() != "running":
            return
        owned = [
            (tp.topic, tp.partition)
            for tp in app.consumer.assignment()
            if tp.topic in watched_topics
        ]
        if not offsets:
            offsets.append(GroupOffsets(settings.kafka, settings.app_id))
        loop = asyncio.get_running_loop()
        try:
            ends, committed = await loop.run_in_executor(None, offsets[0].read, owned)
        except KafkaException as exc:
            log.warning("progress check: offsets unavailable (%s)", exc)
            return
        now = now_ms()
        report = health.tracker.observe(now, ends, committed)
        stalled = health.tracker.newly_stalled(report)
        for partition in stalled:
            log.warning(
                "partition %s stalled: records waiting, no progress (consumer flow active %s, "
                "flow control active %s, assigned %d partitions)",
                partition,
                getattr(app.consumer, "flow_active", None),  # on Faust's Consumer, not ConsumerT
                app.flow_control.is_active(),
                len(app.consumer.assignment()),
            )
        metrics.record_progress(report, stalled)
        health.report = report
        inputs = [p for p in report if p.partition.rpartition("/")[0] == input_topic]
        current = current_partitions(
            inputs, health.newest_done_ms, now, int(CURRENT_WITHIN_S * 1000)
        )
        if current:
            record = current_record(current, now)
            for facts_partition in range(settings.topics.input_partitions):
                await _send(facts_topic, record, partition=facts_partition)

    @app.on_before_shutdown.connect
    def close_offsets(sender: Any, /, *args: Any, **kwargs: Any) -> None:
        for reader in offsets:
            reader.close()

    return health


def wire_aggregates(
    app: faust.App, settings: Settings, metrics: WorkerMetrics
) -> tuple[faust.TopicT, Aggregator]:
    """The windowed-ratio side: facts topic -> table of key states -> aggregates topic + HTTP.
    The per-key step is ``stream.core.aggregation.Aggregator``; this binds it to Faust."""
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
    aggregator = Aggregator(
        policy,
        update_interval_ms=int(settings.aggregate_update_interval_s * 1000),
        idle_after_ms=int(settings.idle_flush_s * 1000),
        current_for_ms=int(CURRENT_BELIEVED_S * 1000),
    )

    @app.on_rebalance_complete.connect
    def forget_taken_over(sender: Any, /, *args: Any, **kwargs: Any) -> None:
        aggregator.rebalanced()

    @app.agent(facts_topic)
    async def aggregate(stream: faust.StreamT[bytes]) -> None:
        # Acked only once the key's new state is in the table. Faust acks a stream's event in a
        # ``finally`` when the agent is cancelled mid-event (faust-streaming 0.15.3,
        # Stream._py_aiter): a shutdown while the finals were being published committed the
        # facts' offset with the state never saved, and a restarted worker never closed that
        # key's windows (seen on Apache Kafka in a restart test).
        stream.enable_acks = False
        async for event in stream.events():
            key = str(orjson.loads(event.key)) if event.key else None
            stored = states.get(key) if key is not None else None
            step = aggregator.step(key, orjson.loads(event.value), stored, now_ms())
            # Finals are acknowledged before the state that closed them is saved: a crash in
            # between re-closes the window and publishes the same final again.
            await asyncio.gather(*[await _send(aggregates_topic, r) for r in step.finals])
            for final in step.finals:
                metrics.record_window(final.key, final.value)
            if step.state is not None:
                states[key] = step.state
            for record in step.updates:
                await _send(aggregates_topic, record)
            await stream.ack(event)

    @app.timer(interval=max(settings.aggregate_update_interval_s, 0.1))  # type: ignore[untyped-decorator]
    async def publish_held_updates() -> None:
        now = now_ms()
        for record in aggregator.held_updates(now, states.get):
            await _send(aggregates_topic, record)
        for record in aggregator.ticks_due(now, list(states.items())):
            await _send(facts_topic, record)

    @app.page("/aggregates/keys")
    class AggregateKeys(View):
        async def get(self, request: Request) -> Response:
            keys = sorted(key for key, stored in states.items() if stored)
            return self.json({"keys": keys, "worker": app.conf.canonical_url.human_repr()})

    @app.page("/aggregates")
    class Aggregates(View):
        async def get(self, request: Request) -> Response:
            query = parse_aggregates_query(request.query)
            if isinstance(query, str):
                return self.json({"error": query}, status=400)
            try:  # the key's state lives on the worker that owns its partition: ask it
                return await app.router.route_req(states.name, query.key, self.web, request)
            except SameNode:
                pass
            stored = states.get(query.key)
            if not stored:
                return self.json({"error": f"no aggregates for key {query.key!r}"}, status=404)
            return self.json(aggregates_view(stored, query, policy))

    return facts_topic, aggregator


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


async def _send(topic: faust.TopicT, record: OutRecord, partition: int | None = None) -> Any:
    return await topic.send(
        key=record.key, value=record.value, headers=record.headers or None, partition=partition
    )
