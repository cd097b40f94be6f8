"""A bound on the bytes of the events the worker holds between reading them and finishing them.

Counting events is not enough: a backlog of megabyte events, a few hundred of them, takes a pod's
memory. Each event weighs its key, its value and its decoded text (``InFlight.weight``); taking an
event in waits while the held weight would pass the limit, except that an event is always let in
when nothing is held, so one larger than the whole budget goes through, alone.
"""

import asyncio

__all__ = ["ByteBudget"]


class ByteBudget:
    """Bytes held by events in flight, at most ``limit`` (asyncio: one task takes, any task gives)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.events = 0
        self._freed = asyncio.Event()

    async def take(self, weight: int) -> None:
        """Hold ``weight`` more bytes, once there is room for them."""
        while self.held and self.held + weight > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.held += weight
        self.events += 1

    async def emptied(self) -> None:
        """Return once nothing is held."""
        while self.events:
            self._freed.clear()
            await self._freed.wait()

    def give(self, weight: int) -> None:
        """Release ``weight`` bytes taken before."""
        self.held -= weight
        self.events -= 1
        self._freed.set()
