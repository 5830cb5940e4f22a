"""Batching: which messages the model scores together, and how a failing batch is narrowed down.

clean -> *plan batches* (length-sorted, bounded by size and padded tokens) -> score; on a model
failure, *split and retry* until the record at fault stands alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def plan_batches(lengths: Sequence[int], *, max_size: int, max_tokens: int) -> list[list[int]]:
    """Group item indices into batches that waste little padding.

    Items are sorted by length so each batch pads to a near-equal length; a batch holds at most
    ``max_size`` items and at most ``max_tokens`` padded tokens (``len(batch) * longest``), in the
    manner of TEI's ``max-batch-tokens``. An item longer than ``max_tokens`` gets a batch of its
    own. Every index appears in exactly one batch; the caller maps results back by index.
    """
    if max_size < 1 or max_tokens < 1:
        raise ValueError("max_size and max_tokens must be positive")
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[index]  # ascending order: the newcomer is the longest so far
        if current and (len(current) >= max_size or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def padding_cost(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(real tokens, padded tokens) when each batch is padded to its longest item."""
    real = sum(lengths)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
    return real, padded


@dataclass(frozen=True, slots=True)
class Failure(Generic[T]):
    item: T
    error: BaseException


def score_isolating_failures(
    items: Sequence[T], score: Callable[[Sequence[T]], Sequence[R]]
) -> tuple[list[tuple[T, R]], list[Failure[T]]]:
    """Score ``items``; when a call fails, split it in halves and retry each half.

    Returns the (item, result) pairs that succeeded, in input order, and the items that still failed
    when scored alone. One bad item thus costs its batch-mates a retry, never their results.
    ``score`` must return one result per item, in order.
    """
    done: list[tuple[T, R]] = []
    failed: list[Failure[T]] = []

    def attempt(chunk: Sequence[T]) -> None:
        try:
            results = score(chunk)
            if len(results) != len(chunk):
                raise RuntimeError(f"scorer returned {len(results)} results for {len(chunk)} items")
        except Exception as exc:  # noqa: BLE001 - any model error is narrowed down, then reported
            if len(chunk) == 1:
                failed.append(Failure(chunk[0], exc))
                return
            middle = len(chunk) // 2
            attempt(chunk[:middle])
            attempt(chunk[middle:])
            return
        done.extend(zip(chunk, results, strict=True))

    if items:
        attempt(items)
    return done, failed


async def collect_batch(queue: asyncio.Queue[T], max_size: int, max_wait_s: float) -> list[T]:
    """Wait for one item, then take what else is queued, up to ``max_size`` items.

    With ``max_wait_s == 0`` the batch is just what accumulated meanwhile: a lone item goes at
    once, and under load batches fill while the previous one is being scored. A positive
    ``max_wait_s`` tops a short batch up for at most that long after its first item.
    """
    batch = [await queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait_s
    while len(batch) < max_size:
        if not queue.empty():
            batch.append(queue.get_nowait())
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
    return batch
