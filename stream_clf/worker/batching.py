"""Micro-batching: group items as they arrive into batches bounded by a count, a wait and a cost.

A batch closes when it holds ``max_items``, when adding the next item would take its total cost
past ``max_cost`` (the token budget, as text-embeddings-inference's ``max-batch-tokens``), or when
``max_wait`` seconds have passed since its first item arrived, whichever comes first. It never
waits for a first item to start a clock, and the clock runs from the item's own arrival (``arrived``,
when given) rather than from when the batch was asked for: a consumer that asks for a batch only
when it can start one (the pipeline does, when an inference slot is free) takes everything that
queued meanwhile at once, without waiting again. An item too costly on its own makes a batch by itself.
The queue in front is bounded, so a slow consumer of batches pushes back on the producer of items
instead of buffering without limit.
"""

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["MicroBatcher"]

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """An asyncio queue that hands items out in micro-batches, in arrival order."""

    def __init__(
        self,
        max_items: int,
        max_wait: float,
        capacity: int,
        *,
        max_cost: int | None = None,
        cost: Callable[[T], int] = lambda _: 0,
        arrived: Callable[[T], float] | None = None,
    ) -> None:
        if max_items < 1 or capacity < 1 or max_wait < 0 or (max_cost is not None and max_cost < 1):
            raise ValueError("max_items, capacity and max_cost must be >= 1 and max_wait >= 0")
        self.max_items = max_items
        self.max_wait = max_wait
        self.max_cost = max_cost
        self._cost = cost
        self._arrived = arrived  # an item's arrival, on the event loop's clock (time.monotonic)
        self._queue: asyncio.Queue[T] = asyncio.Queue(capacity)
        self._carried: list[T] = []  # an item that did not fit the last batch: the next one starts with it

    def __len__(self) -> int:
        return self._queue.qsize() + len(self._carried)

    async def put(self, item: T) -> None:
        """Add an item, waiting while the queue is full."""
        await self._queue.put(item)

    def drain(self) -> list[T]:
        """Take every item queued and not yet in a batch, in arrival order."""
        items, self._carried = self._carried, []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    async def next_batch(self) -> list[T]:
        """Wait for the next batch: at least one item, at most ``max_items`` and ``max_cost``."""
        first = self._carried.pop() if self._carried else await self._queue.get()
        batch, total = [first], self._cost(first)
        started = self._arrived(first) if self._arrived else asyncio.get_running_loop().time()
        deadline = started + self.max_wait
        while len(batch) < self.max_items:
            if self._queue.empty():
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await self._queue.get()
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            if self.max_cost is not None and total + self._cost(item) > self.max_cost:
                self._carried.append(item)
                break
            batch.append(item)
            total += self._cost(item)
        return batch
