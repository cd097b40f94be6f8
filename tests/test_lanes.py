"""The lanes hand cores to calls in the order they asked; a fused long model's wide calls take them all."""

import threading
import time

import pytest

from stream_clf.model.lanes import WIDE_ROWS, CoreGate, Layout


def test_a_call_that_needs_every_lane_is_not_overtaken_by_calls_that_need_one():
    gate, order, lock = CoreGate(2), [], threading.Lock()
    first_holds, release_first = threading.Event(), threading.Event()

    def hold(name: str, lanes: int, until: threading.Event | None = None) -> None:
        with gate.hold(lanes):
            with lock:
                order.append(name)
            if name == "narrow, first":
                first_holds.set()
            if until is not None:
                until.wait(5)

    first = threading.Thread(target=hold, args=("narrow, first", 1, release_first))
    first.start()
    assert first_holds.wait(5)
    wide = threading.Thread(target=hold, args=("wide", 2))
    wide.start()
    time.sleep(0.1)  # the wide call is in line, waiting for the first call's lane
    late = threading.Thread(target=hold, args=("narrow, after the wide one", 1))
    late.start()
    time.sleep(0.1)
    assert order == ["narrow, first"], "a lane was free, but the call that asked first needs two"
    release_first.set()
    for thread in (first, wide, late):
        thread.join(5)
    assert order == ["narrow, first", "wide", "narrow, after the wide one"]


def test_two_calls_of_one_lane_run_at_once():
    gate, both = CoreGate(2), threading.Barrier(2, timeout=5)

    def hold() -> None:
        with gate.hold(1):
            both.wait()  # breaks (and fails the test) unless both hold a lane at the same time

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert not both.broken


@pytest.mark.parametrize(
    ("layout", "widest", "wide"),
    [
        (Layout(2, 2, WIDE_ROWS), WIDE_ROWS + 1, True),
        (Layout(2, 2, WIDE_ROWS), WIDE_ROWS, False),
        (Layout(2, 2), 512, False),
        (Layout(2, 1), 512, False),
    ],
)
def test_a_batch_is_wide_only_with_a_row_past_the_wide_rows(layout, widest, wide):
    assert layout.wide(widest) is wide


def test_a_layout_names_itself_as_the_bench_and_the_log_show_it():
    assert [str(Layout(2, 2, 256)), str(Layout(2, 2)), str(Layout(2, 1))] == [
        "2 lanes, batches past 256 tokens on all threads",
        "2 lanes",
        "1 lane",
    ]
