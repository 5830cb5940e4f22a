"""Fixes for Faust components that are wrong, each a small named subclass at the depth of the bug.

Each class names the upstream behaviour it corrects; ``stream.app`` plugs them in. Nothing here
reads another library's private attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from faust.stores import STORES
from faust.stores.memory import Store as MemoryStore
from faust.streams import current_event
from faust.types import TP, EventT
from yarl import URL

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
