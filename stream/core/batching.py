"""Batching: which messages the model scores together, and how a failing batch is narrowed down.

clean -> *plan batches* (length-sorted, bounded by size and padded tokens) -> score; on a model
failure, *split and retry* until the record at fault stands alone.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def plan_batches(
    lengths: Sequence[int],
    *,
    max_size: int,
    max_tokens: int,
    overhead_tokens: float | None = None,
) -> list[list[int]]:
    """Group item indices into batches that waste little padding.

    Items are sorted by length so each batch pads to a near-equal length; a batch holds at most
    ``max_size`` items and at most ``max_tokens`` padded tokens (``len(batch) * longest``), in the
    manner of TEI's ``max-batch-tokens``. An item longer than ``max_tokens`` gets a batch of its
    own. Every index appears in exactly one batch; the caller maps results back by index.

    ``overhead_tokens``: what one forward pass costs beyond its padded tokens, in tokens (the
    model's fixed cost per pass over its cost per token). With it, the sorted items are split
    where that is cheapest in all (fewest of ``overhead_tokens * passes + padded tokens``): a
    small take of mixed lengths becomes a pass of short texts and one of long ones rather than
    one pass padded to the longest. None: as few passes as the bounds allow.
    """
    if max_size < 1 or max_tokens < 1:
        raise ValueError("max_size and max_tokens must be positive")
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    if overhead_tokens is None:
        return _fewest_passes(order, lengths, max_size, max_tokens)
    sorted_lengths = [lengths[i] for i in order]
    # best[j]: (passes, padded tokens) of the cheapest split of the first j sorted items; cut[j]:
    # where its last pass starts. Costs are computed from those integers in one step, so splits
    # of equal cost are equal to the bit and the first found (fuller passes first) is kept.
    best = [(0, 0)] * (len(order) + 1)
    cheapest = [0.0] + [float("inf")] * len(order)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = sorted_lengths[end - 1]  # ascending: a pass pads to its last item
        for start in range(end - 1, max(0, end - max_size) - 1, -1):
            size = end - start
            if size > 1 and size * longest > max_tokens:
                break
            passes, padded = best[start][0] + 1, best[start][1] + size * longest
            cost = overhead_tokens * passes + padded
            if cost < cheapest[end]:
                cheapest[end], best[end], cut[end] = cost, (passes, padded), start
    batches: list[list[int]] = []
    end = len(order)
    while end:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return batches[::-1]


def _fewest_passes(
    order: Sequence[int], lengths: Sequence[int], max_size: int, max_tokens: int
) -> list[list[int]]:
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


async def collect_batch(
    queue: asyncio.Queue[T],
    max_size: int,
    max_wait_s: float,
    budget_s: Callable[[Sequence[T]], float] | None = None,
) -> list[T]:
    """Wait for one item, then take what else is queued, up to ``max_size`` items.

    With ``max_wait_s == 0`` and no ``budget_s`` the batch is just what accumulated meanwhile: a
    lone item goes at once, and under load batches fill while the previous one is being scored.
    A positive ``max_wait_s`` tops a short batch up for at most that long after its first item.
    ``budget_s(batch)`` (a :class:`DeadlineTake`) says how much longer the batch may wait for more
    now; it is asked again after each item joins, and ``max_wait_s``, when positive, caps it.
    """
    batch = [await queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait_s
    while len(batch) < max_size:
        if not queue.empty():
            batch.append(queue.get_nowait())
            continue
        if budget_s is not None:
            budget_deadline = loop.time() + budget_s(batch)
            deadline = min(budget_deadline, deadline) if max_wait_s > 0 else budget_deadline
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
    return batch


class CostLine:
    """What a unit of work costs, learned from the work done so far: an exponentially weighted
    least-squares line ``ms = fixed + per_unit * units`` (recent observations weigh most, so a
    model swap or a busier machine is followed within a few dozen). The worker fits one to its
    takes (units: texts) and the runner one to its forward passes (units: padded tokens).

    ``min_spread``: the standard deviation of ``units`` below which no slope is fitted."""

    def __init__(self, decay: float = 0.95, min_spread: float = 0.5) -> None:
        self.decay = decay
        self.min_spread = min_spread
        self.forget()

    def forget(self) -> None:
        """Drop every observation (a one-off cost that says nothing of the next ones)."""
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, units: float, ms: float) -> None:
        if units <= 0 or ms < 0:
            return
        d = self.decay
        self._w = d * self._w + 1
        self._x = d * self._x + units
        self._y = d * self._y + ms
        self._xx = d * self._xx + units * units
        self._xy = d * self._xy + units * ms

    def line(self) -> tuple[float, float] | None:
        """(fixed ms, ms per unit); None until the observations spread enough to fit a slope."""
        if self._w == 0:
            return None
        mean_x, mean_y = self._x / self._w, self._y / self._w
        variance = self._xx / self._w - mean_x * mean_x
        if variance < self.min_spread**2:
            return None
        slope = max(0.0, (self._xy / self._w - mean_x * mean_y) / variance)
        return max(0.0, mean_y - slope * mean_x), slope

    def fixed_in_units(self, default: float, lowest: float, highest: float) -> float:
        """The fixed cost expressed in units (fixed / per unit), within ``[lowest, highest]``;
        ``default`` until a line is fitted. For a forward pass: ``plan_batches``'s
        ``overhead_tokens``."""
        fitted = self.line()
        if fitted is None:
            return default
        fixed, per_unit = fitted
        if per_unit <= 0:
            return highest
        return min(highest, max(lowest, fixed / per_unit))


class ArrivalRate:
    """Messages per millisecond, an exponentially weighted average over recent arrivals.

    Messages fetched together arrive in the same millisecond: they are counted into the interval
    that ends at the next distinct arrival time, so bursts count by their messages.
    """

    def __init__(self, half_life_ms: float = 1000.0) -> None:
        self.half_life_ms = half_life_ms
        self._rate = 0.0
        self._last_ms: float | None = None
        self._pending = 0  # arrivals at ``_last_ms``, not yet in the rate

    def observe(self, now_ms: float, count: int = 1) -> None:
        if self._last_ms is None:
            self._last_ms, self._pending = now_ms, count
            return
        elapsed = now_ms - self._last_ms
        if elapsed <= 0:
            self._pending += count
            return
        keep = float(0.5 ** (elapsed / self.half_life_ms))
        self._rate = keep * self._rate + (1 - keep) * self._pending / elapsed
        self._last_ms, self._pending = now_ms, count

    def per_ms(self, now_ms: float) -> float:
        """The rate now: it decays while nothing arrives."""
        if self._last_ms is None:
            return 0.0
        return self._rate * float(0.5 ** (max(0.0, now_ms - self._last_ms) / self.half_life_ms))


@dataclass(frozen=True, slots=True)
class DeadlineTake:
    """How long a take may wait for more messages under a latency target
    (``SENTISTREAM_LATENCY_TARGET_MS``).

    Scoring messages one or two at a time costs more per message than in larger takes (a fixed
    cost per take and per forward pass), so at partial load small takes can keep the scorer
    busier than the load needs, and the tail grows from queueing. A take therefore waits for
    more messages, but only:

    - until it reaches the *keep-up size*: the smallest take the scorer scores in at most
      ``utilisation`` of the time its messages take to arrive at the current rate (from the
      take cost line ``fixed + per_text * n``). Under light load that is one message (nothing
      waits); as the rate nears what the scorer can take, it grows to ``max_size``;
    - while the oldest message's budget lasts: its age + the predicted scoring time of the take
      + a publishing margin stays under the target, and at least one more message is expected
      (at the current rate) before the budget ends. At saturation the oldest message's budget is
      spent, so nothing waits.

    Measured on a 2-core AMD EPYC (onnx-int8): waiting only for the budget (the rule before the
    keep-up size) let takes at 25% of the max rate wait until their oldest message was ~80 ms
    old: p50 53 ms against 19 ms without a target.
    """

    target_ms: float
    publish_margin_ms: float = 15.0
    utilisation: float = 0.8

    def keep_up_size(
        self, fixed_ms: float, per_text_ms: float, arrivals_per_ms: float, max_size: int
    ) -> int:
        """The smallest take scored in at most ``utilisation`` of the time its messages take to
        arrive: ``fixed + per_text * n <= utilisation * n / rate``."""
        if arrivals_per_ms <= 0:
            return 1
        spare_ms = self.utilisation / arrivals_per_ms - per_text_ms  # per message, after its own
        if spare_ms <= 0:  # even full takes cannot keep up: make them as large as allowed
            return max_size
        return min(max_size, max(1, math.ceil(fixed_ms / spare_ms)))

    def wait_ms(
        self,
        *,
        oldest_age_ms: float,
        take_size: int,
        max_size: int,
        take_cost: tuple[float, float] | None,
        arrivals_per_ms: float,
    ) -> float:
        """Milliseconds the take may still wait for another message (0: score it now).
        ``take_cost``: (fixed ms, ms per text) of scoring a take (None: not yet known)."""
        if take_size >= max_size or take_cost is None:
            return 0.0
        fixed_ms, per_text_ms = take_cost
        if take_size >= self.keep_up_size(fixed_ms, per_text_ms, arrivals_per_ms, max_size):
            return 0.0
        predicted_ms = fixed_ms + per_text_ms * (take_size + 1)
        left = self.target_ms - self.publish_margin_ms - max(0.0, oldest_age_ms) - predicted_ms
        if arrivals_per_ms * left < 1.0:  # no message expected before the budget ends
            return 0.0
        return min(left, self.target_ms)
