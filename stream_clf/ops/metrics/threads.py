"""CPU time of the worker's threads by role: where its cores go.

The worker's process CPU says how much it uses; this says who. Its threads are named for their job
(``lane_0``, ``tokenize_0``, ``inference_1``, ``kafka-client``, ``deliveries``...), and each role's
counter sums the threads of that name without the number (``lane``, ``tokenize``): the event loop is
``MainThread``. What no Python thread accounts for (ONNX Runtime's own pool when one call runs on
several threads, librdkafka's threads) is ``other``. Read from ``/proc`` at each scrape (Linux); where
that cannot be read, nothing is exported.
"""

import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["OTHER", "ThreadCpu", "cpu_seconds", "role_of"]

OTHER = "other"
_NUMBERED = re.compile(r"[-_]\d+$")
_UNNAMED = re.compile(r"Thread-\d+ \((.+)\)")  # Python's name for a thread not given one: its target's


def role_of(thread_name: str) -> str:
    """The role a thread's name gives: the name without its number (``lane_1`` is a ``lane``); for a
    thread named by Python (``Thread-5 (process_request_thread)``), its target's name."""
    unnamed = _UNNAMED.fullmatch(thread_name)
    return unnamed.group(1) if unnamed else _NUMBERED.sub("", thread_name)


class ThreadCpu(Collector):
    """``stream_clf_thread_cpu_seconds_total{thread=role}``: the CPU seconds of the process's threads by role.

    A counter never goes down: a thread that ends keeps its last reading in its role's total, and
    ``other`` (the process's time less its Python threads') never falls below its last value.
    """

    def __init__(self, proc: Path = Path("/proc/self")) -> None:
        self._proc = proc
        self._lock = threading.Lock()
        self._live: dict[tuple[int, int, str], tuple[str, float]] = {}  # thread -> role, seconds last read
        self._ended: Counter[str] = Counter()
        self._other = 0.0

    def collect(self) -> Iterator[CounterMetricFamily]:
        totals = self._totals()
        if totals is None:
            return
        family = CounterMetricFamily(
            "stream_clf_thread_cpu_seconds",
            "CPU time of the worker's threads by role (a thread's name without its number; the event loop"
            " is MainThread, and other is what no Python thread accounts for: ONNX Runtime's own pool, librdkafka)",
            labels=["thread"],
        )
        for role, seconds in sorted(totals.items()):
            family.add_metric([role], seconds)
        yield family

    def _totals(self) -> dict[str, float] | None:
        with self._lock:
            live: dict[tuple[int, int, str], tuple[str, float]] = {}
            for thread in threading.enumerate():
                if thread.native_id is None or thread.ident is None:
                    continue  # not started yet
                seconds = cpu_seconds(self._proc / "task" / str(thread.native_id) / "stat")
                if seconds is not None:
                    live[thread.native_id, thread.ident, thread.name] = (role_of(thread.name), seconds)
            process = cpu_seconds(self._proc / "stat")  # read after the threads: it includes them
            if process is None:
                return None
            for key, (role, seconds) in self._live.items():
                if key not in live:
                    self._ended[role] += seconds
            self._live = live
            totals = Counter(self._ended)
            for role, seconds in live.values():
                totals[role] += seconds
            self._other = max(self._other, process - sum(totals.values()))
            return {**totals, OTHER: self._other}


def cpu_seconds(stat: Path) -> float | None:
    """User plus system CPU seconds from a ``/proc`` stat file; None where it cannot be read."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
