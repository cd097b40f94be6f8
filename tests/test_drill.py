"""What the drill counts of a stream, in process: lost, repeated and out-of-order answers, the longest
pause of one input partition (also one that stalls at the end of the stream), and latency."""

import subprocess
import sys

import pytest

from stream_clf.tools.drill.traffic import Answer, tally

SENT = {f"d{i}": (f"key-{i % 2}", i // 2, float(i)) for i in range(6)}  # one event a second, two keys


def test_a_clean_stream_has_nothing_lost_repeated_or_out_of_order():
    answers = [Answer(f"d{i}", i + 0.5, False, partition=i % 2) for i in range(6)]
    seen = tally(SENT, answers, since=0.0, until=6.0)
    assert (seen.sent, seen.answered, seen.lost, seen.duplicates, seen.out_of_order) == (6, 6, 0, 0, 0)
    assert seen.latency["p50"] == pytest.approx(0.5)
    assert seen.longest_pause == pytest.approx(2.0), "each partition answers every two seconds"


def test_lost_repeated_and_out_of_order_answers_are_each_counted():
    answers = [
        Answer("d0", 0.5, False, 0),
        Answer("d2", 2.5, False, 0),
        Answer("d0", 2.6, False, 0),  # a repeat
        Answer("d3", 3.5, False, 1),
        Answer("d1", 3.6, False, 1),  # key-1's first event, after its second: out of order
        Answer("d5", 5.5, True, -1),  # a dead letter
    ]
    seen = tally(SENT, answers, since=0.0, until=6.0)
    assert (seen.lost, seen.duplicates, seen.out_of_order, seen.dead_letters) == (1, 1, 1, 1)  # d4 lost


def test_a_partition_that_stalls_at_the_end_paused_until_its_next_answer():
    answers = [Answer(f"d{i}", i + 0.5, False, partition=i % 2) for i in range(4)]
    answers.append(Answer("d5", 30.0, False, partition=1))  # partition 1 stalled from 3.5 s to 30 s
    seen = tally(SENT, answers, since=0.0, until=6.0)
    assert seen.longest_pause == pytest.approx(26.5)
    assert seen.pause_at == pytest.approx(3.5)
    assert seen.lost == 1


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--model", "/nonexistent"], "stream-clf drill: error: model bundle '/nonexistent': no such directory"),
        (["--workers", "0"], "stream-clf drill: error: argument --workers: expected a whole number >= 1"),
        (["--rate", "0"], "stream-clf drill: error: --rate must be above 0 and --settle at least 0"),
    ],
)
def test_a_bad_flag_stops_the_drill_with_one_line_before_anything_starts(flags, line):
    finished = subprocess.run(
        [sys.executable, "-m", "stream_clf", "drill", *flags], capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines()[-1].startswith(line)
    assert "Traceback" not in finished.stderr
