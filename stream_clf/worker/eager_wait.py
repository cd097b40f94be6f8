"""A ``wait_first`` that makes no task for a coroutine that finishes without waiting.

Faust's fetcher hands every message to its streams through mode's
``Service.wait_first(callback(message), suspend_flow.wait())``. mode makes a task of each argument and of
the service's ``stopped`` and ``crashed`` events (four per message), waits for the first to finish and
cancels the other three. The callback almost never waits (it puts the event in a stream's buffer that
has room), so this was the largest part of the event loop's cost per event: about a fifth of a
profile of the worker on short texts.

:class:`EagerWaitFirst` runs the first coroutine's first step at once, as mode's first task would have
run it. When that step finishes it, its result is the answer, with no task made; otherwise mode's wait
goes on with the rest of it, from where the step stopped, racing the other arguments as before.
"""

import inspect
from collections.abc import Coroutine, Generator
from typing import Any

from mode import Service
from mode.services import WaitArgT, WaitResults
from mode.utils.times import Seconds

__all__ = ["EagerWaitFirst"]


class EagerWaitFirst(Service):
    """Mixed into a mode service (before it) to make its ``wait_first`` eager."""

    async def wait_first(self, *coros: WaitArgT, timeout: Seconds | None = None) -> WaitResults:
        """mode's ``wait_first``, except that a first argument that is a coroutine and finishes in its first
        step, while the service neither stopped nor crashed, wins (or fails) alone. The others are then
        closed unstarted. mode would have cancelled them, and reported ``suspend_flow`` beside the
        callback when both were done, which Faust's fetcher never reads."""
        first, *others = coros
        if not inspect.iscoroutine(first) or self._stopped.is_set() or self._crashed.is_set():
            return await super().wait_first(*coros, timeout=timeout)
        try:
            waiting_on = first.send(None)
        except StopIteration as finished:
            _close_unstarted(others)
            return WaitResults([first], [finished.value], False)
        except BaseException:  # as mode's would, the caller gets the error
            _close_unstarted(others)
            raise
        return await super().wait_first(_rest(first, waiting_on), *others, timeout=timeout)


def _close_unstarted(coros: list[WaitArgT]) -> None:
    for coro in coros:
        if inspect.iscoroutine(coro):
            coro.close()


async def _rest(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Any:
    """What is left of ``coro``, stepped once by hand where it yielded ``waiting_on`` to the loop."""
    return await _Resumed(coro, waiting_on)


class _Resumed:
    """Awaiting it drives a coroutine on from a step taken by hand: the task that awaits it sees the future
    the coroutine waits on, and what the task sends or throws reaches the coroutine."""

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as error:  # the task's cancellation, above all: the coroutine handles it
                step = coro.throw
                argument: Any = error
            else:
                step = coro.send
                argument = sent
            try:
                waiting_on = step(argument)
            except StopIteration as finished:
                return finished.value
