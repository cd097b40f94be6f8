"""The worker's side of model swaps: follow the control topic, load what it asks for, switch.

A swap never touches the consumer: no rebalance, no pause, no restart. The new bundle is loaded,
checked and warmed up in this module's thread while the old one keeps serving; then
:meth:`~stream_clf.worker.models.ModelHolder.swap` makes it the model of the next micro-batch.
A request is refused (a log line, ``stream_clf_model_swaps_total{outcome="refused"}``, a status
saying why, and the old model goes on serving) when its bundle

- lies outside the worker's model roots (:mod:`~stream_clf.worker.model_roots`),
- is not the version the request expects (its content hash), or
- fails to load (a missing file, a graph that does not load, labels the worker's settings do not fit).

Swapping back to the previous model is a swap like any other (``stream-clf swap --rollback``).

At start, before consuming, the worker reads the control topic to its end and applies the latest
swap of each of its targets, if that swap replaced the model this worker was started with (see
:class:`~stream_clf.kafka.control_records.SwapRequest`): a replica that joins later serves what
its peers serve. A malformed record is skipped with one log line and
``stream_clf_control_records_skipped_total``; the follower thread survives any error, and should
it end anyway, the worker's liveness says so. ``--swaps off`` follows nothing: the worker only
reports what it serves.
"""

import logging
import threading
import time
from collections.abc import Sequence

from stream_clf.errors import fails_alone
from stream_clf.kafka.control import ControlFeed, ControlRecord, log_skipped
from stream_clf.kafka.control_records import ControlState, MalformedRecordError, SwapRequest, WorkerStatus
from stream_clf.model.bundle import load_bundle
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.worker.model_roots import ModelRoots
from stream_clf.worker.models import DEFAULT_TARGET, ModelHolder, ModelLoader

__all__ = ["SwapFollower"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# After an error reading the control topic, the follower waits this long before reading on.
RETRY_SECONDS = 1.0


class SwapFollower:
    """Applies the swaps the control topic asks of this worker's group, in the order they were asked,
    and reports this worker's status on the status topic.

    ``feed`` carries the requests and the statuses (:class:`~stream_clf.kafka.control.KafkaControlFeed`:
    the control and status topics); ``follows`` False (``--swaps off``) applies nothing and only reports.
    """

    def __init__(
        self,
        *,
        feed: ControlFeed,
        group: str,
        worker: str,
        inputs: Sequence[str],
        holder: ModelHolder,
        load: ModelLoader,
        roots: ModelRoots,
        metrics: WorkerMetrics,
        follows: bool = True,
    ) -> None:
        self._feed = feed
        self._group = group
        self.worker = worker
        self._inputs = set(inputs)
        self._holder = holder
        self._load = load
        self._roots = roots
        self._metrics = metrics
        self._follows = follows
        self._configured = _describe_targets(holder)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._offset = 0
        self._failure: str | None = None

    def catch_up(self) -> None:
        """Apply the latest swap of each target this worker serves, if it replaced the model this worker
        was started with; then say what it serves. Call before the worker consumes."""
        outcome = None
        if self._follows:
            state = self._feed.read_to_end(self.skipped)
            self._offset = state.offset
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
        """Follow the control topic in a thread of its own until :meth:`close` (not with ``--swaps off``)."""
        if self._follows:
            self._thread = threading.Thread(target=self._guarded, name="swaps", daemon=True)
            self._thread.start()

    @property
    def roots(self) -> ModelRoots:
        """Where a swap may load bundles from."""
        return self._roots

    def failure(self) -> str | None:
        """Why the follower stopped following though it was not asked to; None while it follows."""
        return self._failure

    def close(self) -> None:
        """Stop following and delete this worker's status (it no longer serves)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._feed.close()
        self._feed.report(WorkerStatus(self._group, self.worker, {}, {}).key, None)

    def _guarded(self) -> None:
        try:
            self._follow()
        except BaseException as error:  # nothing below should get here; if anything does, say so
            self._failure = f"the control-topic follower died: {type(error).__name__}: {error}"[:300]
            log.exception("event=swap_follower_died")
            if not fails_alone(error):
                raise

    def _follow(self) -> None:
        self._feed.open(self._offset)
        state = ControlState()
        while not self._stop.is_set():
            try:
                self._take(state, self._feed.poll(POLL_SECONDS))
            except Exception:  # a bug or a broker error must not end following: log it, read on
                log.exception("event=swap_follower_error")
                self._stop.wait(RETRY_SECONDS)

    def _take(self, state: ControlState, record: ControlRecord | None) -> None:
        if record is None:
            return
        try:
            request = state.read(record.key, record.value)
        except MalformedRecordError as error:
            self.skipped(record.topic, record.offset, error)
            return
        if isinstance(request, SwapRequest) and request.group == self._group:
            self._apply(request)

    def skipped(self, topic: str, offset: int, error: MalformedRecordError) -> None:
        """A malformed control-plane record: one log line, and counted in the metrics."""
        log_skipped(topic, offset, error)
        self._metrics.control_skipped.labels(kind=error.kind).inc()

    def _apply(self, request: SwapRequest) -> str:
        """Load ``request``'s model and serve its target with it, or refuse it; report either way."""
        started = time.perf_counter()
        current = self._holder.current.target(request.target)
        if current is None and request.target not in self._inputs:
            return self._refuse(request, f"topic {request.target!r} is not an input of this worker", started)
        try:
            bundle = load_bundle(self._roots.admit(request.model))
            if bundle.version != request.expect:
                return self._refuse(
                    request, f"model {request.model!r} is version {bundle.version}, not {request.expect}", started
                )
            model = self._load.serve(bundle, request.model)
        except BaseException as error:  # any failure to load or check: the old model keeps serving
            if not fails_alone(error):
                raise
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
            follows=self._follows,
        )
        self._feed.report(status.key, status.encode())


def _describe_targets(holder: ModelHolder) -> dict[str, dict[str, str]]:
    """What serves each swap target now: the default model (``*``) and each topic's route."""
    models = holder.current
    targets = {DEFAULT_TARGET: models.default, **models.routes}
    return {target: {"model": model.source, "version": model.version} for target, model in targets.items()}


def _latest_swaps(state: ControlState, group: str) -> list[SwapRequest]:
    return sorted((r for (g, _), r in state.swaps.items() if g == group), key=lambda request: request.at)
