"""``stream-clf soak``: the pipeline under a steady load for a long time, watched for leaks and drift.

Events are sent at a fixed rate through a real broker to a worker process; every ``interval``
seconds the results received and the worker's resident memory (RSS) are sampled. After a warm-up
(five minutes, or the first third of a shorter run, at least one interval) resident memory may not
grow by more than 5%. ``--mix lengths`` sends every length from 1 token to ``max_length`` in random
order, so that every shape ONNX Runtime can meet is met.
At the end every event must have its result: the count lost is reported, and must be zero.
"""

import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from stream_clf.errors import StreamClfError
from stream_clf.model.bundle import load_bundle
from stream_clf.model.catalog import resolve_model
from stream_clf.tools.bench.mixes import load_texts
from stream_clf.tools.bench.scaffold import Bench, kafka_for
from stream_clf.tools.bench.streaming import measure_latency, percentile

__all__ = ["MAX_RSS_GROWTH", "SoakOptions", "render_soak", "run_soak"]

MAX_RSS_GROWTH = 0.05
WARMUP_SECONDS = 300.0


@dataclass(frozen=True)
class SoakOptions:
    model: Path = Path("news-int8")
    mix: str = "imdb"
    mix_file: Path | None = None
    seconds: float = 1200.0
    rate: float = 20.0
    interval: float = 30.0
    threads: int = len(os.sched_getaffinity(0))
    brokers: str | None = None


@dataclass
class _Sampler:
    """Counts results as they arrive and samples them with the worker's RSS every ``interval``."""

    pid: int
    interval: float
    received: int = 0

    def __post_init__(self) -> None:
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def count(self, n: int) -> None:
        self.received += n

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        started, last = time.monotonic(), 0
        while not self._stop.wait(self.interval):
            received = self.received
            self.samples.append(
                {
                    "seconds": round(time.monotonic() - started, 1),
                    "events_per_second": (received - last) / self.interval,
                    "rss_mib": _rss_mib(self.pid),
                }
            )
            last = received


def _rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise StreamClfError(f"no VmRSS for process {pid}")


def run_soak(options: SoakOptions, advance: Any) -> dict[str, Any]:
    """Run the soak; ``advance(n)`` is called as results arrive. Returns a JSON-ready report."""
    bundle = load_bundle(resolve_model(options.model))
    count = max(1, round(options.rate * options.seconds))
    texts = load_texts(options.mix, min(count, 5000), options.mix_file, bundle=bundle)
    command = ["stream_clf", "worker", "--model", str(bundle.path), "--threads", str(options.threads)]
    with (
        tempfile.TemporaryDirectory(prefix="stream-clf-soak-") as scratch,
        kafka_for(options.brokers, Path(scratch)) as (bootstrap, others),
    ):
        bench = Bench(bootstrap, Path(scratch), lambda *_: lambda _: None, others, options.seconds + 600)
        with bench.serving([*command, "--log-level", "warning"], "worker.log", ready=True) as worker:
            sampler = _Sampler(worker.process.pid, options.interval)
            sampler.start()
            try:
                latencies = measure_latency(
                    bootstrap,
                    worker,
                    [texts[i % len(texts)] for i in range(count)],
                    pace=options.rate,
                    timeout=options.seconds + 600,
                    advance=lambda n: (sampler.count(n), advance(n)),
                )
            finally:
                sampler.stop()
        exit_code = worker.process.returncode
    return _judge(options, sent=count, latencies=latencies, samples=sampler.samples, exit_code=exit_code,
                  model=bundle.name)  # fmt: skip


def _judge(
    options: SoakOptions, *, sent: int, latencies: list[float], samples: list[dict], exit_code: int, model: str
) -> dict[str, Any]:
    warm = max(1, min(round(WARMUP_SECONDS / options.interval), len(samples) // 3))
    baseline = samples[warm - 1]["rss_mib"] if samples else None
    peak = max((sample["rss_mib"] for sample in samples[warm:]), default=baseline)
    growth = (peak / baseline - 1) if baseline and peak else 0.0
    return {
        "model": model,
        "settings": {
            **asdict(options),
            "model": str(options.model),
            "mix_file": str(options.mix_file) if options.mix_file else None,
        },
        "sent": sent,
        "received": len(latencies),
        "lost": sent - len(latencies),
        "latency": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)} if latencies else {},
        "samples": samples,
        "rss_after_warmup_mib": baseline,
        "rss_peak_mib": max((sample["rss_mib"] for sample in samples), default=None),
        "rss_growth_after_warmup": growth,
        "worker_exit_code": exit_code,
        "passed": sent == len(latencies) and growth <= MAX_RSS_GROWTH and exit_code == 0,
    }


def render_soak(report: dict[str, Any]) -> Group:
    """Throughput and memory over time, then the verdict."""
    table = Table(title=f"soak: {report['model']}, {report['settings']['rate']:g} events/s")
    for column in ("time (s)", "results/s", "worker RSS (MiB)"):
        table.add_column(column, justify="right")
    for sample in report["samples"]:
        table.add_row(f"{sample['seconds']:.0f}", f"{sample['events_per_second']:.1f}", f"{sample['rss_mib']:.1f}")
    latency = report["latency"]
    lines = [
        table,
        f"sent {report['sent']}, received {report['received']}, lost {report['lost']}; latency p50"
        f" {latency.get('p50', 0) * 1000:.0f} ms, p99 {latency.get('p99', 0) * 1000:.0f} ms",
        f"RSS after warm-up {report['rss_after_warmup_mib'] or 0:.1f} MiB, peak {report['rss_peak_mib'] or 0:.1f} MiB,"
        f" growth after warm-up {report['rss_growth_after_warmup']:.1%} (limit {MAX_RSS_GROWTH:.0%})",
        f"worker exit code {report['worker_exit_code']}; {'PASSED' if report['passed'] else 'FAILED'}",
    ]
    return Group(*lines)
