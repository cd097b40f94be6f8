"""The micro-batcher: bounded by count and wait, in arrival order, pushing back when full."""

import asyncio
import time

import pytest

from stream_clf.model.buckets import length_buckets
from stream_clf.worker.batching import MicroBatcher


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


def test_a_batch_asked_for_late_takes_what_queued_and_does_not_wait_again():
    async def scenario():
        arrivals: dict[int, float] = {}
        batcher = MicroBatcher(max_items=100, max_wait=0.3, capacity=16, arrived=arrivals.__getitem__)
        for i in range(3):
            arrivals[i] = time.monotonic()
            await batcher.put(i)
        await asyncio.sleep(0.4)  # the consumer was busy: the first item has waited past max_wait
        started = time.monotonic()
        batch = await batcher.next_batch()
        return batch, time.monotonic() - started

    batch, elapsed = run(scenario())
    assert batch == [0, 1, 2]
    assert elapsed < 0.1


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


def test_the_token_budget_closes_a_batch_and_the_next_one_starts_with_the_item_that_did_not_fit():
    async def scenario():
        batcher = MicroBatcher(max_items=100, max_wait=0.0, capacity=16, max_cost=10, cost=len)
        for item in ["aaaa", "bbbb", "ccc", "dd", "e"]:
            await batcher.put(item)
        return [await batcher.next_batch() for _ in range(2)]

    assert run(scenario()) == [["aaaa", "bbbb"], ["ccc", "dd", "e"]]


def test_an_item_over_the_budget_is_a_batch_of_its_own():
    async def scenario():
        batcher = MicroBatcher(max_items=100, max_wait=0.0, capacity=16, max_cost=10, cost=len)
        for item in ["a", "x" * 50, "b"]:
            await batcher.put(item)
        return [await batcher.next_batch() for _ in range(3)]

    assert run(scenario()) == [["a"], ["x" * 50], ["b"]]


def test_length_buckets_sort_rows_and_respect_the_row_and_token_caps():
    lengths = [300, 12, 40, 512, 41, 13, 200, 39, 14, 250, 11, 600]
    buckets = length_buckets(lengths, max_rows=3, max_tokens=512, max_waste=1.0)
    assert sorted(index for bucket in buckets for index in bucket) == list(range(len(lengths)))
    flattened = [lengths[index] for bucket in buckets for index in bucket]
    assert flattened == sorted(lengths)
    for bucket in buckets:
        assert len(bucket) <= 3
        padded = len(bucket) * max(lengths[index] for index in bucket)
        assert padded <= 512 or len(bucket) == 1  # a row past the cap goes alone
    assert [[lengths[index] for index in bucket] for bucket in buckets] == [
        [11, 12, 13],
        [14, 39, 40],
        [41, 200],
        [250],
        [300],
        [512],
        [600],
    ]


def test_length_buckets_keep_padding_under_the_waste_cap():
    lengths = [100, 101, 102, 103, 180, 190, 200, 400]
    buckets = length_buckets(lengths, max_rows=8, max_tokens=4096, max_waste=0.1)
    assert [[lengths[index] for index in bucket] for bucket in buckets] == [
        [100, 101, 102, 103],
        [180, 190, 200],
        [400],
    ]
    for bucket in buckets:
        padded = len(bucket) * max(lengths[index] for index in bucket)
        assert 1 - sum(lengths[index] for index in bucket) / padded <= 0.1


def test_length_buckets_of_nothing_is_nothing_and_caps_must_be_positive():
    assert length_buckets([], max_rows=8, max_tokens=1024) == []
    with pytest.raises(ValueError, match="max_rows and max_tokens"):
        length_buckets([5], max_rows=0, max_tokens=1024)
