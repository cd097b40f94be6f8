"""The pipeline's stages: where each one's time goes (busy, starved, blocked), and the inference lanes."""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["STAGE_STATES", "StageClock", "StageMetrics"]

# Where a stage's time goes: working, waiting for input, or waiting for room (or an answer) downstream.
STAGE_STATES = ("busy", "starved", "blocked")


class StageMetrics:
    """A clock per stage, and the busy time of the inference lanes."""

    def _register_stages(self, r: CollectorRegistry) -> None:
        self.stage_seconds = Counter(
            "stream_clf_stage_seconds",
            "Time each stage of the worker spent busy, starved (waiting for input) or blocked (waiting"
            " downstream); the inference lanes count only busy time, summed over lanes",
            ["stage", "state"],
            registry=r,
        )
        self.lanes = Gauge("stream_clf_inference_lanes", "ONNX Runtime calls that run at once", registry=r)
        self._lane_busy = self.stage_seconds.labels(stage="lanes", state="busy")

    def stage(self, name: str) -> "StageClock":
        """A clock for one stage (a task or a thread that takes its turn in the pipeline)."""
        return StageClock(self.stage_seconds, name)

    def lane_busy(self, seconds: float) -> None:
        """One ONNX Runtime call (feeds built and run) took ``seconds`` in a lane."""
        self._lane_busy.inc(seconds)


class StageClock:
    """Where one stage's time goes. Each :meth:`enter` closes the span since the last one under the
    state the stage was in; one call per change of state keeps it cheap enough for a per-event loop."""

    def __init__(self, counter: Counter, stage: str) -> None:
        self._counters = {state: counter.labels(stage=stage, state=state) for state in STAGE_STATES}
        self._state = "starved"
        self._since = time.perf_counter()

    def enter(self, state: str) -> None:
        now = time.perf_counter()
        self._counters[self._state].inc(now - self._since)
        self._state, self._since = state, now

    def add(self, state: str, seconds: float) -> None:
        """Count ``seconds`` in ``state`` (for work measured elsewhere, such as in a thread)."""
        self._counters[state].inc(seconds)
