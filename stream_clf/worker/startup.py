"""Start-up of the worker: check everything, build the shared parts once, run the loop of its guarantee.

Everything that can be wrong with the configuration is found here, before any loop starts, and
reported as one line (see :mod:`stream_clf.cli`). The batch step, the metrics, the consumer state
and the web server are built here, once, and handed to whichever loop runs: Faust's agent
(at-least-once) or the transactional loop (exactly-once).

How the worker ends: SIGTERM or SIGINT stops it cleanly (exit 0) after the batches in flight are
delivered and committed; a loop that fails for good ends it with one ``event=worker_failed`` line
and exit 1, so that an orchestrator restarts it. Either way, a stop that has not finished within
:data:`STOP_DEADLINE_SECONDS` ends the process at once (exit 1): nothing acked is lost, and the
next worker re-reads whatever was not committed.
"""

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faust
from confluent_kafka import KafkaException

from stream_clf.errors import BrokerError, ConfigError
from stream_clf.kafka import clients
from stream_clf.kafka.control import CLIENT_ID_PREFIX, ensure_control_topics, new_worker_id
from stream_clf.kafka.limits import TopicLimit, producer_limits, read_limits
from stream_clf.kafka.topics import ensure_topics, publish_compression, wait_for_broker
from stream_clf.model.bundle import ModelBundle
from stream_clf.model.classifier import Classifier
from stream_clf.ops.health import ConsumerState, Readiness
from stream_clf.ops.logs import configure_logging, logging_config
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.ops.web.routes import Routes
from stream_clf.ops.web.server import serve_in_thread
from stream_clf.settings import WorkerSettings
from stream_clf.worker.core import BatchStep
from stream_clf.worker.faust_app import create_app
from stream_clf.worker.model_roots import ModelRoots
from stream_clf.worker.models import ModelHolder, ModelLoader, ModelSet
from stream_clf.worker.publisher import PRODUCER_SETTINGS, BatchPublisher
from stream_clf.worker.routing import Routing
from stream_clf.worker.swaps import SwapFollower
from stream_clf.worker.transactional import run_exactly_once

__all__ = ["BROKER_WAIT_SECONDS", "STOP_DEADLINE_SECONDS", "run_worker"]

log = logging.getLogger(__name__)

BROKER_WAIT_SECONDS = 30.0
# Within Kubernetes' default termination grace (30 s) and far above a clean stop (a batch or two).
STOP_DEADLINE_SECONDS = 25.0
# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). A lane
# returning from ONNX Runtime, or the tokenizer, waited behind the event loop for that long; at
# 200 paced short texts/s p99 latency fell from 0.8-1.0 s to 0.2-0.6 s with 0.5 ms.
GIL_SWITCH_SECONDS = 0.0005
# Room for a record's key, headers, batch framing and a result's own fields on top of an input value.
_RECORD_OVERHEAD = 64 * 1024


def run_worker(settings: WorkerSettings) -> int:
    """Run the worker until SIGTERM or SIGINT, or until its loop fails for good; return the exit code."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    configure_logging(settings.log_level, settings.log_format)
    options = settings.classifier_options()

    def build(bundle: ModelBundle) -> Classifier:
        return Classifier(bundle, **options)

    load = ModelLoader(build, _label_check(settings))
    # The shadow model only answers beside the others: the bounds of --min-confidence are not its.
    load_shadow = ModelLoader(build)
    models = ModelSet(
        default=load(str(settings.model)),
        routes={topic: load(source) for topic, source in settings.route.items()},
        canary=load(settings.canary_model) if settings.canary_model else None,
        canary_share=settings.canary_share if settings.canary_model else 0.0,
        shadow=load_shadow(settings.shadow_model) if settings.shadow_model else None,
    )
    security = settings.security
    topics = _prepare_topics(settings)
    metrics = WorkerMetrics(max_batch=settings.max_batch)
    holder = ModelHolder(models, on_change=lambda current: metrics.in_service(_in_service(current)))
    metrics.lanes.set(models.default.classifier.lanes)
    worker_id = new_worker_id(settings.instance)
    roots = (
        ModelRoots(settings.model_root)
        if settings.model_root
        else ModelRoots.default([str(settings.model), *settings.route.values(), *_extra_models(settings)])
    )
    swaps = SwapFollower(
        brokers=settings.brokers,
        security=security,
        topics=(settings.control_topic, settings.status_output),
        group=settings.group,
        worker=worker_id,
        inputs=settings.input,
        holder=holder,
        load=load,
        roots=roots,
        metrics=metrics,
        follows=settings.swaps,
    )
    try:
        swaps.catch_up()
    except KafkaException as error:
        raise BrokerError(f"the control topics cannot be read or written: {error.args[0].str()}") from None
    routing = Routing(
        settings.output,
        settings.dlq,
        settings.top_k,
        review=settings.review_output if settings.min_confidence else None,
        shadow=settings.shadow_output if settings.shadow_model else None,
        min_confidence=settings.min_confidence,
        limits=topics.limits,
        dropped=metrics.dropped,
    )
    step = BatchStep(holder, routing, metrics)
    state = ConsumerState()
    readiness = Readiness(
        settings.brokers, state, security=security, stall_seconds=settings.stall_seconds, vital=[swaps.failure]
    )
    try:
        server = serve_in_thread(settings.web_host, settings.web_port, Routes(metrics, readiness))
    except OSError as error:
        raise ConfigError(
            f"--web-port {settings.web_port}: cannot listen on {settings.web_host}: {error.strerror}"
        ) from None
    default = holder.current.default
    log.info(
        "event=worker_start worker=%s model=%s model_version=%s precision=%s provider=%s labels=%s models=%s"
        " input=%s output=%s dlq=%s group=%s guarantee=%s isolation=%s compression=%s security=%s swaps=%s"
        " model_roots=%s",
        worker_id,
        default.name,
        default.version,
        default.bundle.precision,
        default.classifier.provider,
        ",".join(default.bundle.labels),
        ",".join(f"{role}:{topic}:{model.version}" for role, topic, model in holder.current.in_service()),
        ",".join(settings.input),
        settings.output,
        settings.dlq,
        settings.group,
        settings.guarantee,
        settings.isolation,
        topics.compression,
        security.protocol + (f"/{security.mechanism}" if security.sasl else ""),
        "on" if settings.swaps else "off",
        roots,
    )
    parts = _Parts(
        step,
        metrics,
        state,
        topics.compression,
        producer_limits(topics.limits),
        topics.input_record_bytes,
        CLIENT_ID_PREFIX + worker_id,
    )
    stop = _Stop()
    swaps.start()
    try:
        if settings.guarantee == "exactly-once":
            _run_transactional(settings, parts, stop)
        else:
            _run_faust(settings, parts, stop)
    finally:
        swaps.close()
        server.shutdown()
    log.info("event=worker_stop guarantee=%s exit_code=%d", settings.guarantee, stop.exit_code)
    return stop.exit_code


@dataclass(frozen=True)
class _Topics:
    """What start-up learns of the topics: their limits, the input's largest record, the codec."""

    limits: dict[str, TopicLimit]  # of every topic the worker publishes to
    input_record_bytes: int
    compression: str


def _prepare_topics(settings: WorkerSettings) -> _Topics:
    """Reach the cluster, create the topics that are missing and read the limits of all of them."""
    security, replication = settings.security, settings.replication
    wait_for_broker(settings.brokers, BROKER_WAIT_SECONDS, security)
    try:
        ensure_topics(settings.brokers, settings.input, settings.partitions, security=security, replication=replication)
        record_limit = max(
            limit.max_bytes for limit in read_limits(settings.brokers, settings.input, security).values()
        )
        # Dead letters carry the original value and results echo its meta (review copies also the
        # text), so the topics the worker creates take records as large as the inputs do, plus room
        # for headers and the result's own fields; topics that exist keep their own limits.
        wanted = record_limit + _RECORD_OVERHEAD
        ensure_topics(
            settings.brokers,
            settings.published_topics,
            settings.partitions,
            {"max.message.bytes": str(wanted)},
            security=security,
            replication=replication,
        )
        ensure_control_topics(settings.brokers, [settings.control_topic, settings.status_output], security, replication)
        limits = read_limits(settings.brokers, settings.published_topics, security)
        compression = settings.compression
        if compression == "auto":
            compression = publish_compression(settings.brokers, settings.output, security)
    except KafkaException as error:
        raise BrokerError(f"the worker's topics cannot be prepared: {error.args[0].str()}") from None
    for topic, limit in limits.items():
        if limit.max_bytes < record_limit:  # smaller than the inputs: some records will not fit whole
            log.warning(
                "event=topic_limit_small topic=%s max_message_bytes=%d inputs_take=%d: records over its limit are"
                " published smaller (results without meta, dead letters cut to their head) or dead-lettered",
                topic,
                limit.max_bytes,
                record_limit,
            )
    return _Topics(limits, record_limit, compression)


def _extra_models(settings: WorkerSettings) -> list[str]:
    return [model for model in (settings.canary_model, settings.shadow_model) if model]


def _label_check(settings: WorkerSettings) -> Callable[[ModelBundle], None]:
    """What a served model's labels must fit: the bounds of --min-confidence."""

    def check(bundle: ModelBundle) -> None:
        if settings.min_confidence is not None:
            settings.min_confidence.check(bundle.labels, bundle.name)

    return check


def _in_service(models: ModelSet) -> list[tuple[str, str, str, str, str]]:
    return [(role, topic, m.name, m.version, m.bundle.precision) for role, topic, m in models.in_service()]


@dataclass(frozen=True)
class _Parts:
    """What start-up builds once and hands to the loop of either guarantee."""

    step: BatchStep
    metrics: WorkerMetrics
    state: ConsumerState
    compression: str  # of published records, resolved
    producer_limits: dict[str, int]  # keep the producer inside the published topics' limits
    input_record_bytes: int  # the largest record the input topics take
    client_id: str  # the consumer's name in its group


class _Stop:
    """How the worker is asked to end: by a signal (exit 0) or a failure (exit 1), with a deadline."""

    def __init__(self) -> None:
        self.exit_code = 0
        self._request: Callable[[], None] = lambda: None
        self._deadline: threading.Timer | None = None

    def on_request(self, request: Callable[[], None]) -> None:
        """What the running loop does to begin a clean stop."""
        self._request = request

    def signalled(self, signum: int) -> None:
        log.info("event=stop_requested signal=%s", signal.Signals(signum).name)
        self._begin()

    def fail(self, reason: str) -> None:
        """End the worker because its loop failed for good: one line, exit code 1."""
        log.error("event=worker_failed reason=%r", reason)
        self.exit_code = 1
        self._begin()

    def _begin(self) -> None:
        if self._deadline is None:
            self._deadline = threading.Timer(STOP_DEADLINE_SECONDS, self._expire)
            self._deadline.daemon = True
            self._deadline.start()
        self._request()

    def _expire(self) -> None:
        log.error(
            "event=stop_timeout seconds=%.0f: the worker did not stop in time; exiting now", STOP_DEADLINE_SECONDS
        )
        logging.shutdown()
        os._exit(1)


def _run_transactional(settings: WorkerSettings, parts: _Parts, stop: _Stop) -> None:
    """The exactly-once loop, stopped by SIGTERM or SIGINT after the batch in flight commits."""
    stopping = threading.Event()
    stop.on_request(stopping.set)
    _watch_signals(stop)
    try:
        run_exactly_once(
            settings,
            parts.step,
            parts.metrics,
            parts.state,
            compression=parts.compression,
            producer_limits=parts.producer_limits,
            client_id=parts.client_id,
            stop=stopping,
        )
    except Exception as error:
        stop.fail(str(error))


def _watch_signals(stop: _Stop) -> None:
    """Act on SIGTERM and SIGINT from a thread of their own.

    A Python signal handler runs only when the main thread comes back to the interpreter, and the
    exactly-once loop's main thread can sit inside librdkafka for a minute (a transaction commit to
    a broker that stopped answering). The C-level handler writes the signal's number to the wakeup
    socket at once; this thread reads it and starts the stop, and its deadline.
    """
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)  # the watcher acts; the handler only lets the byte be written

    def watch() -> None:
        with reader, writer:  # held open for as long as the process runs
            while received := reader.recv(1):
                stop.signalled(received[0])

    threading.Thread(target=watch, name="signals", daemon=True).start()


def _run_faust(settings: WorkerSettings, parts: _Parts, stop: _Stop) -> None:
    """The Faust app, stopped by SIGTERM or SIGINT once every event it handed out is acked."""
    producer = clients.producer(
        settings.brokers,
        settings.security,
        {
            **PRODUCER_SETTINGS,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": parts.compression,
            **parts.producer_limits,
        },
    )
    publisher = BatchPublisher(producer, parts.step.routing.instead)
    with tempfile.TemporaryDirectory(prefix="stream-clf-faust-") as scratch:
        app = create_app(
            settings,
            parts.step,
            parts.metrics,
            parts.state,
            stop.fail,
            publish=publisher,
            datadir=Path(scratch),
            client_id=parts.client_id,
            input_record_bytes=parts.input_record_bytes,
        )
        worker = _FaustWorker(
            app,
            stop,
            quiet=True,
            redirect_stdouts=False,
            loglevel=settings.log_level,
            logging_config=logging_config(settings.log_level, settings.log_format),
        )
        stop.on_request(lambda: worker.loop.call_soon_threadsafe(worker.stop_on_request))
        try:
            worker.execute_from_commandline()
        except SystemExit as exit:  # Faust's worker always ends by raising it
            if exit.code not in (0, None) and stop.exit_code == 0:
                stop.exit_code = 1
        finally:
            # Every acked event's record is already delivered; what is left belongs to events
            # that were not acked, and will be read again.
            publisher.close(timeout=1.0)


class _FaustWorker(faust.Worker):
    """Faust's worker, whose signals go through :class:`_Stop` (for its deadline)."""

    def __init__(self, app: faust.App, stop: _Stop, **kwargs: object) -> None:
        super().__init__(app, **kwargs)
        self._stop_control = stop

    async def start(self) -> None:
        try:
            await super().start()
        except Exception as error:  # a service failed to start (a client library missing, say)
            self._stop_control.fail(f"the worker could not start: {type(error).__name__}: {error}")
            raise

    def _on_sigterm(self) -> None:
        self._stop_control.signalled(signal.SIGTERM)

    def _on_sigint(self) -> None:
        self._stop_control.signalled(signal.SIGINT)

    def stop_on_request(self) -> None:
        self._schedule_shutdown(signal.SIGTERM)
