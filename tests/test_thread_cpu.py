"""The worker's CPU by thread role: a busy thread shows under its role, and no counter ever goes down."""

import os
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.ops.metrics.threads import OTHER, ThreadCpu, role_of


def _cpu_by_role(collector: ThreadCpu) -> dict[str, float]:
    return {sample.labels["thread"]: sample.value for family in collector.collect() for sample in family.samples}


def _burn(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("lane_1", "lane"),
        ("tokenize_0", "tokenize"),
        ("kafka-client", "kafka-client"),
        ("Thread-3", "Thread"),
        ("Thread-5 (process_request_thread)", "process_request_thread"),
    ],
)
def test_a_threads_role_is_its_name_without_its_number(name: str, role: str):
    assert role_of(name) == role


def test_a_busy_thread_is_counted_under_its_role_and_keeps_its_time_after_it_ends():
    collector = ThreadCpu()
    before = _cpu_by_role(collector)
    finished = threading.Event()
    lane = threading.Thread(target=lambda: (_burn(0.3), finished.wait(5)), name="lane_0")
    lane.start()
    time.sleep(0.5)  # burnt, still alive
    during = _cpu_by_role(collector)
    finished.set()
    lane.join(5)
    after = _cpu_by_role(collector)

    assert during["lane"] - before.get("lane", 0.0) >= 0.25
    assert "MainThread" in during
    for role, seconds in during.items():
        assert after[role] >= seconds, f"{role} went down from {seconds} to {after[role]} when a thread ended"


def test_other_is_the_process_time_no_python_thread_accounts_for(tmp_path: Path):
    proc = tmp_path / "proc"
    (proc / "task").mkdir(parents=True)
    stat = "1 (python3) S " + " ".join(["0"] * 10) + " {user} {system} 0 0"
    (proc / "stat").write_text(stat.format(user=300, system=100))  # in clock ticks: 4 s at 100 Hz
    main = threading.main_thread()
    (proc / "task" / str(main.native_id)).mkdir()
    (proc / "task" / str(main.native_id) / "stat").write_text(stat.format(user=50, system=50))
    ticks = 100 / os.sysconf("SC_CLK_TCK")

    cpu = _cpu_by_role(ThreadCpu(proc))

    assert cpu["MainThread"] == pytest.approx(1.0 * ticks)
    assert cpu[OTHER] == pytest.approx(3.0 * ticks)


def test_nothing_is_exported_where_proc_cannot_be_read(tmp_path: Path):
    assert _cpu_by_role(ThreadCpu(tmp_path / "no-proc")) == {}


def test_the_worker_exports_its_threads_cpu():
    metrics = WorkerMetrics(max_batch=8)
    exported = {
        sample.labels.get("thread")
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
        if sample.name == "stream_clf_thread_cpu_seconds_total"
    }
    assert {"MainThread", OTHER} <= exported
