"""The consumer's eager ``wait_first`` answers as mode's does, without a task for a callback that does not wait."""

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from mode import Service

from stream_clf.worker.eager_wait import EagerWaitFirst


class _Eager(EagerWaitFirst, Service):
    pass


KINDS = pytest.mark.parametrize("kind", [Service, _Eager], ids=["mode", "eager"])


def _run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(test())


def _counting_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task]:
    made: list[asyncio.Task] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    loop.set_task_factory(factory)
    return made


@KINDS
def test_a_callback_that_does_not_wait_is_answered_without_a_task(kind: type[Service]):
    async def test() -> tuple[int, Any, str]:
        service, suspended = kind(), asyncio.Event()
        made = _counting_tasks(asyncio.get_running_loop())

        async def deliver() -> str:
            return "delivered"

        other = suspended.wait()
        results = await service.wait_first(deliver(), other)
        await asyncio.sleep(0)
        assert not results.stopped
        assert inspect.getcoroutinestate(other) == inspect.CORO_CLOSED, "nothing is left pending or unawaited"
        return len(made), results.results, kind.__name__

    made, results, name = _run(test)
    assert results == ["delivered"]
    assert made == (0 if name == "_Eager" else 4), "mode makes a task of each argument, of stopped and of crashed"


@KINDS
def test_a_callback_that_waits_is_awaited_to_its_result(kind: type[Service]):
    async def test() -> list[Any]:
        service, suspended = kind(), asyncio.Event()
        loop = asyncio.get_running_loop()
        room = loop.create_future()
        loop.call_later(0.05, room.set_result, None)

        async def deliver() -> str:
            await asyncio.sleep(0)
            await room  # the stream's buffer was full
            return "delivered"

        results = await service.wait_first(deliver(), suspended.wait())
        assert not results.stopped
        return results.results

    assert _run(test) == ["delivered"]


@KINDS
def test_a_waiting_callback_is_cancelled_when_the_flow_is_suspended_first(kind: type[Service]):
    async def test() -> list[str]:
        service, suspended, seen = kind(), asyncio.Event(), []
        asyncio.get_running_loop().call_later(0.05, suspended.set)

        async def deliver() -> None:
            try:
                await asyncio.Event().wait()  # room never comes
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        results = await service.wait_first(deliver(), suspended.wait())
        await asyncio.sleep(0.01)
        assert not results.stopped
        assert results.results == [True]
        return seen

    assert _run(test) == ["cancelled"]


@KINDS
def test_cancelling_the_caller_cancels_a_waiting_callback(kind: type[Service]):
    async def test() -> list[str]:
        service, seen = kind(), []

        async def deliver() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        caller = asyncio.ensure_future(service.wait_first(deliver(), asyncio.Event().wait()))
        await asyncio.sleep(0.02)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.sleep(0.01)
        return seen

    assert _run(test) == ["cancelled"]


@KINDS
@pytest.mark.parametrize("waits_first", [False, True], ids=["at once", "after waiting"])
def test_a_callbacks_error_reaches_the_caller(kind: type[Service], waits_first: bool):
    async def test() -> None:
        service = kind()

        async def deliver() -> None:
            if waits_first:
                await asyncio.sleep(0.01)
            raise ValueError("undecodable")

        with pytest.raises(ValueError, match="undecodable"):
            await service.wait_first(deliver(), asyncio.Event().wait())

    _run(test)


@KINDS
def test_a_stopped_service_reports_stopped(kind: type[Service]):
    async def test() -> bool:
        service = kind()
        service._stopped.set()

        async def deliver() -> str:
            return "delivered"

        return (await service.wait_first(deliver(), asyncio.Event().wait())).stopped

    assert _run(test) is True
