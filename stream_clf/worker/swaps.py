"""The worker's side of model swaps: follow the control topic, load what it asks for, switch.

A swap never touches the consumer: no rebalance, no pause, no restart. The new bundle is loaded,
checked and warmed up in this module's thread while the old one keeps serving; then
:meth:`~stream_clf.worker.models.ModelHolder.swap` makes it the model of the next micro-batch.
A bundle that fails (a missing file, a graph that does not load, labels the worker's settings
do not fit) is refused: a log line, ``stream_clf_model_swaps_total{outcome="refused"}``, a status
record saying why, and the old model goes on serving. Swapping back to the previous model is a swap
like any other (``stream-clf swap --rollback``).

At start, before consuming, the worker reads the control topic to its end and applies the latest
swap of each of its targets, if that swap replaced the model this worker was started with (see
:class:`~stream_clf.kafka.control.SwapRequest`): a replica that joins later serves what its peers
serve.
"""

import logging
import threading
import time
from collections.abc import Callable, Sequence

from confluent_kafka import TopicPartition

from stream_clf.kafka import clients
from stream_clf.kafka.control import ControlState, SwapRequest, WorkerStatus, control_producer, read_control
from stream_clf.kafka.security import KafkaSecurity
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.worker.models import DEFAULT_TARGET, ModelHolder, ServedModel

__all__ = ["SwapFollower"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class SwapFollower:
    """Applies the swaps the control topic asks of this worker's group, in the order they were asked."""

    def __init__(
        self,
        *,
        brokers: Sequence[str],
        security: KafkaSecurity,
        topic: str,
        group: str,
        worker: str,
        inputs: Sequence[str],
        holder: ModelHolder,
        load: Callable[[str], ServedModel],
        metrics: WorkerMetrics,
    ) -> None:
        self._brokers = brokers
        self._security = security
        self._topic = topic
        self._group = group
        self.worker = worker
        self._inputs = set(inputs)
        self._holder = holder
        self._load = load
        self._metrics = metrics
        self._configured = _describe_targets(holder)
        self._producer = control_producer(brokers, security)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._offset = 0

    def catch_up(self) -> None:
        """Apply the latest swap of each target this worker serves, if it replaced the model this worker
        was started with; then say what it serves. Call before the worker consumes."""
        state = read_control(self._brokers, self._topic, self._security)
        self._offset = state.offset
        outcome = None
        for request in _latest_swaps(state, self._group):
            configured = self._configured.get(request.target)
            if configured is not None and configured["model"] == request.model:
                continue  # already served: this worker was started with it
            if request.configured not in (None, configured["version"] if configured else None):
                log.info(
                    "event=swap_skipped request=%s target=%s model=%s reason=%r",
                    request.request,
                    request.target,
                    request.model,
                    "this worker was started with another model than the one the swap replaced",
                )
                continue
            outcome = self._apply(request)
        if outcome is None:
            self._report()

    def start(self) -> None:
        """Follow the control topic in a thread of its own until :meth:`close`."""
        self._thread = threading.Thread(target=self._follow, name="swaps", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following and delete this worker's status (it no longer serves)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._producer.produce(self._topic, key=WorkerStatus(self._group, self.worker, {}, {}).key, value=None)
        self._producer.flush(5)

    def _follow(self) -> None:
        consumer = clients.reader(self._brokers, "swaps", self._security)
        consumer.assign([TopicPartition(self._topic, 0, self._offset)])
        state = ControlState()
        try:
            while not self._stop.is_set():
                message = consumer.poll(POLL_SECONDS)
                if message is None or message.error():
                    continue
                request = state.read(message.key(), message.value())
                if isinstance(request, SwapRequest) and request.group == self._group:
                    self._apply(request)
        finally:
            consumer.close()

    def _apply(self, request: SwapRequest) -> str:
        """Load ``request``'s model and serve its target with it, or refuse it; report either way."""
        started = time.perf_counter()
        current = self._holder.current.target(request.target)
        if current is None and request.target not in self._inputs:
            return self._refuse(request, f"topic {request.target!r} is not an input of this worker", started)
        try:
            model = self._load(request.model)
        except Exception as error:  # any failure to load or check: the old model keeps serving
            return self._refuse(request, " ".join(str(error).split())[:300] or type(error).__name__, started)
        self._holder.swap(request.target, model)
        seconds = time.perf_counter() - started
        self._metrics.swapped("applied", seconds, request=request.request, version=model.version)
        log.info(
            "event=model_swapped request=%s target=%s from=%s to=%s model=%s seconds=%.2f",
            request.request,
            request.target,
            current.version if current else None,
            model.version,
            request.model,
            seconds,
        )
        self._report(request, "applied", seconds=seconds)
        return "applied"

    def _refuse(self, request: SwapRequest, reason: str, started: float) -> str:
        seconds = time.perf_counter() - started
        self._metrics.swapped("refused", seconds, request=request.request, reason=reason)
        log.error(
            "event=swap_refused request=%s target=%s model=%s reason=%r",
            request.request,
            request.target,
            request.model,
            reason,
        )
        self._report(request, "refused", reason=reason, seconds=seconds)
        return "refused"

    def _report(
        self,
        request: SwapRequest | None = None,
        outcome: str | None = None,
        *,
        reason: str | None = None,
        seconds: float | None = None,
    ) -> None:
        status = WorkerStatus(
            group=self._group,
            worker=self.worker,
            serving=_describe_targets(self._holder),
            configured=self._configured,
            request=request.request if request else None,
            outcome=outcome,
            reason=reason,
            seconds=seconds,
        )
        self._producer.produce(self._topic, key=status.key, value=status.encode())
        self._producer.flush(10)


def _describe_targets(holder: ModelHolder) -> dict[str, dict[str, str]]:
    """What serves each swap target now: the default model (``*``) and each topic's route."""
    models = holder.current
    targets = {DEFAULT_TARGET: models.default, **models.routes}
    return {target: {"model": model.source, "version": model.version} for target, model in targets.items()}


def _latest_swaps(state: ControlState, group: str) -> list[SwapRequest]:
    return sorted((r for (g, _), r in state.swaps.items() if g == group), key=lambda request: request.at)
