"""The Faust wiring: topics, the scoring agent, web views. The only module that sets Faust up.

input topic (raw bytes) -> take a batch -> [scorer thread: decode/validate -> clean -> score ->
enrich] -> publish events + dead letters, wait for the broker's acks -> only then ack the batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import faust
from faust.types import EventT
from faust.types import Message as FaustMessage
from faust.web import Request, Response, View

from connectors.clients import faust_settings
from stream.core.cleaning import CleaningRules
from stream.core.pipeline import BatchOutcome, Classifier, OutRecord, PipelineConfig, process_batch
from stream.core.records import RawRecord
from stream.settings import Settings

log = logging.getLogger(__name__)

# How long a shutdown waits for the batch in flight to be scored and published before giving up.
SHUTDOWN_GRACE_S = 60.0
EXIT_UNPUBLISHED = 70


def pipeline_config(settings: Settings) -> PipelineConfig:
    return PipelineConfig(
        max_message_bytes=settings.max_message_bytes,
        redact_text=settings.redact_text,
        cleaning=CleaningRules(
            mentions=settings.clean_mentions,
            urls=settings.clean_urls,
            hashtags=settings.clean_hashtags,
            html_entities=settings.clean_html,
            whitespace=settings.clean_whitespace,
        ),
    )


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


def create_app(settings: Settings, classifier: Classifier) -> faust.App:
    """A Faust app that scores ``settings.topics.input_topic`` with ``classifier``."""
    app = faust.App(
        settings.app_id,
        datadir=str(settings.data_dir),
        web_port=settings.web_port,
        web_host="0.0.0.0",  # noqa: S104 - the worker's HTTP side is meant to be scraped
        topic_disable_leader=True,
        topic_replication_factor=settings.topics.replication_factor,
        **faust_settings(settings.kafka),
    )
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
    config = pipeline_config(settings)
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
        await asyncio.gather(*pending)

    async def handle(events: Sequence[EventT[bytes]]) -> None:
        records = [raw_record(event.message) for event in events]
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(
            scorer, process_batch, records, classifier, config, now_ms
        )
        await publish(outcome)
        log.debug(
            "batch: %d in, %d events, %d dead letters %s",
            len(records),
            len(outcome.events),
            len(outcome.dead_letters),
            dict(outcome.reasons),
        )

    @app.agent(input_topic)
    async def score(stream: faust.StreamT[bytes]) -> None:
        # take_events acks a batch when the loop comes back for the next one, i.e. only after
        # handle() has published it; a shutdown mid-batch waits for that batch (see finish()).
        batches = cast(faust.Stream[bytes], stream).take_events(settings.batch_size, max_wait_s)
        async for events in batches:
            await finish(asyncio.ensure_future(handle(events)))

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json(
                {"status": "ok", "model": classifier.name, "version": classifier.version}
            )

    return app


async def finish(work: asyncio.Future[None]) -> None:
    """Await a batch's work even if we are cancelled meanwhile.

    Faust acks the batch as soon as this returns or raises, so it must not return before the
    batch is published. If publishing fails or a shutdown cannot wait for it, the process exits
    at once without acking: the batch is re-read after restart (at-least-once, never loss).
    """
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


def _exit_unpublished(exc: BaseException) -> None:
    log.critical("could not publish a batch (%r); exiting without committing it", exc)
    logging.shutdown()
    os._exit(EXIT_UNPUBLISHED)


async def _send(topic: faust.TopicT, record: OutRecord) -> Any:
    return await topic.send(key=record.key, value=record.value, headers=record.headers or None)
