"""What every measurement through the broker shares: a broker (a local one unless one is given), a
service started and always stopped, and latency measured at a pace."""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_clf.tools.bench.streaming import RunningService, Track, measure_latency, paced_texts, start_service
from stream_clf.tools.broker import LocalKafka, free_port

__all__ = ["Bench", "kafka_for"]


@contextlib.contextmanager
def kafka_for(brokers: str | None, root: Path, track: Track | None = None) -> Iterator[tuple[str, dict[str, int]]]:
    """The bootstrap servers to measure through: ``brokers``, or a local broker started under ``root``
    (and stopped after); with the processes it adds to the machine, by name."""
    if brokers is not None:
        yield brokers, {}
        return
    broker = LocalKafka(root / "kafka", port=free_port(), controller_port=free_port())
    advance = track("starting a local Kafka broker", 1) if track else None
    broker.start()
    if advance:
        advance(1)
    try:
        yield broker.bootstrap, {"broker": broker.pid} if broker.pid else {}
    finally:
        broker.stop()


@dataclass(frozen=True)
class Bench:
    """A run's broker, scratch directory and progress bars, and the processes sharing the cores."""

    bootstrap: str
    root: Path
    track: Track
    others: dict[str, int]  # processes sharing the cores, name to pid
    timeout: float

    @contextlib.contextmanager
    def serving(self, command: list[str], log: str, *, ready: bool = False) -> Iterator[RunningService]:
        """``command`` (``python -m`` arguments) started against fresh topics, stopped however the block ends."""
        service = start_service(command, self.bootstrap, partitions=4, log=self.root / log)
        try:
            if ready:
                service.wait_ready(timeout=180)
            yield service
        finally:
            service.stop()

    def latency_at(self, service: RunningService, texts: list[str], pace: float, seconds: float, title: str) -> Any:
        """Produce-to-result latencies of ``texts`` sent at ``pace`` events/s for ``seconds``."""
        paced = paced_texts(texts, pace, seconds)
        return measure_latency(
            self.bootstrap, service, paced, pace=pace, timeout=self.timeout, advance=self.track(title, len(paced))
        )
