"""Micro-batching: group items as they arrive into batches bounded by a count and a wait.

A batch closes when it holds ``max_items`` or when ``max_wait`` seconds have passed since its
first item arrived, whichever comes first; it never waits for a first item to start a clock. The
queue in front of it is bounded, so a slow consumer of batches pushes back on the producer of
items instead of buffering without limit.
"""

import asyncio
from typing import Generic, TypeVar

__all__ = ["MicroBatcher"]

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """An asyncio queue that hands items out in micro-batches, in arrival order."""

    def __init__(self, max_items: int, max_wait: float, capacity: int) -> None:
        if max_items < 1 or capacity < 1 or max_wait < 0:
            raise ValueError("max_items and capacity must be >= 1 and max_wait >= 0")
        self.max_items = max_items
        self.max_wait = max_wait
        self._queue: asyncio.Queue[T] = asyncio.Queue(capacity)

    def __len__(self) -> int:
        return self._queue.qsize()

    async def put(self, item: T) -> None:
        """Add an item, waiting while the queue is full."""
        await self._queue.put(item)

    async def next_batch(self) -> list[T]:
        """Wait for the next batch: at least one item, at most ``max_items``."""
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(batch) < self.max_items:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            try:
                async with asyncio.timeout_at(deadline):
                    batch.append(await self._queue.get())
            except TimeoutError:
                break
        return batch
