"""Fixes for Faust components that are wrong, each a small named subclass at the depth of the bug.

Each class names the upstream behaviour it corrects; ``stream.app`` plugs them in. Nothing here
reads another library's private attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from faust.stores import STORES
from faust.stores.memory import Store as MemoryStore
from faust.streams import current_event
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP, EventT
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
