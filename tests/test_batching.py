"""The micro-batcher: bounded by count and wait, in arrival order, pushing back when full."""

import asyncio
import time

import pytest

from stream_clf.batching import MicroBatcher


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_full_batch_is_handed_out_without_waiting():
    async def scenario():
        batcher = MicroBatcher(max_items=4, max_wait=10.0, capacity=16)
        for i in range(10):
            await batcher.put(i)
        started = time.monotonic()
        batches = [await batcher.next_batch() for _ in range(2)]
        return batches, time.monotonic() - started

    batches, elapsed = run(scenario())
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert elapsed < 1.0


def test_a_partial_batch_closes_after_max_wait_from_its_first_item():
    async def scenario():
        batcher = MicroBatcher(max_items=100, max_wait=0.2, capacity=16)

        async def trickle():
            for i in range(3):
                await batcher.put(i)
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(trickle())
        started = time.monotonic()
        batch = await batcher.next_batch()
        await feeder
        return batch, time.monotonic() - started

    batch, elapsed = run(scenario())
    assert batch == [0, 1, 2]
    assert 0.15 <= elapsed < 1.0


def test_an_idle_batcher_waits_for_the_first_item_without_a_clock():
    async def scenario():
        batcher = MicroBatcher(max_items=10, max_wait=0.05, capacity=4)

        async def late():
            await asyncio.sleep(0.3)
            await batcher.put("late")

        task = asyncio.create_task(late())
        batch = await batcher.next_batch()
        await task
        return batch

    assert run(scenario()) == ["late"]


def test_put_waits_while_the_queue_is_full():
    async def scenario():
        batcher = MicroBatcher(max_items=2, max_wait=0.0, capacity=2)
        await batcher.put(1)
        await batcher.put(2)
        blocked = asyncio.create_task(batcher.put(3))
        await asyncio.sleep(0.05)
        was_blocked = not blocked.done()
        first = await batcher.next_batch()
        await asyncio.wait_for(blocked, 1)
        return was_blocked, first, await batcher.next_batch()

    was_blocked, first, second = run(scenario())
    assert was_blocked
    assert (first, second) == ([1, 2], [3])


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="max_items"):
        MicroBatcher(max_items=0, max_wait=0.1, capacity=1)
