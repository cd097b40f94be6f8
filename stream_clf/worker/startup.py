"""Start-up of the worker: check everything, build the shared parts once, run the loop of its guarantee.

Everything that can be wrong with the configuration is found here, before any loop starts, and
reported as one line (see :mod:`stream_clf.cli`). The connection, the batch step, the metrics, the
consumer state and the web server are built here, once, and handed to whichever loop runs:
Faust's agent (at-least-once) or the transactional loop (exactly-once). How the worker ends is
:mod:`~stream_clf.worker.stopping`'s.
"""

import asyncio
import logging
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import faust
from confluent_kafka import KafkaException

from stream_clf.errors import BrokerError, ConfigError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.control import CLIENT_ID_PREFIX, KafkaControlFeed, ensure_control_topics, new_worker_id
from stream_clf.kafka.control_records import InstanceLease
from stream_clf.kafka.fleet import FleetWatch
from stream_clf.kafka.leases import EXPIRY_SECONDS, InstanceHold, take_instance
from stream_clf.kafka.limits import TopicLimit, producer_limits, read_limits
from stream_clf.kafka.topics import ensure_topics, publish_compression, wait_for_broker
from stream_clf.model.bundle import ModelBundle
from stream_clf.model.classifier import Classifier
from stream_clf.ops.health import ConsumerState, Readiness
from stream_clf.ops.logs import configure_logging, logging_config
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.ops.tracing import BatchTracing, NoTracing, OtelTracing
from stream_clf.ops.web.routes import Routes
from stream_clf.ops.web.server import serve_in_thread
from stream_clf.settings import WorkerSettings
from stream_clf.worker.core import BatchStep
from stream_clf.worker.faust_app import WorkerApp, create_app
from stream_clf.worker.model_roots import ModelRoots
from stream_clf.worker.models import ModelHolder, ModelLoader, ModelSet
from stream_clf.worker.publisher import PRODUCER_SETTINGS, BatchPublisher
from stream_clf.worker.routing import Routing
from stream_clf.worker.schema_wait import SchemaWait
from stream_clf.worker.stopping import Stop, watch_signals
from stream_clf.worker.swaps import SwapFollower
from stream_clf.worker.transactional import run_exactly_once
from stream_clf.worker.wire_formats import ResultFormat, event_decoder, result_format

__all__ = ["BROKER_WAIT_SECONDS", "run_worker"]

log = logging.getLogger(__name__)

BROKER_WAIT_SECONDS = 30.0
# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). A lane
# returning from ONNX Runtime, or the tokenizer, waited behind the event loop for that long; at
# 200 paced short texts/s p99 latency fell from 0.8-1.0 s to 0.2-0.6 s with 0.5 ms.
GIL_SWITCH_SECONDS = 0.0005
# Room for a record's key, headers, batch framing and a result's own fields on top of an input value.
_RECORD_OVERHEAD = 64 * 1024


def run_worker(settings: WorkerSettings) -> int:
    """Run the worker until SIGTERM or SIGINT, or until its loop fails for good; return the exit code."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    configure_logging(settings.logs.log_level, settings.logs.log_format)
    connection = settings.connection.connect()
    load = ModelLoader(_builder(settings), _label_check(settings))
    models = _load_models(settings, load)
    topics = _prepare_topics(settings, connection)
    metrics = WorkerMetrics(max_batch=settings.batching.max_batch)
    holder = ModelHolder(models, on_change=lambda current: metrics.in_service(_in_service(current)))
    metrics.lanes.set(models.default.classifier.lanes)
    worker_id = new_worker_id(settings.delivery.instance)
    tracing = _tracing(settings, worker_id)
    swaps = _follow_swaps(settings, connection, worker_id=worker_id, holder=holder, load=load, metrics=metrics)
    written = _result_format(settings)
    routing = Routing(
        settings.topics.output,
        settings.topics.dlq,
        settings.models.top_k,
        review=settings.review_output if settings.models.min_confidence else None,
        shadow=settings.shadow_output if settings.models.shadow_model else None,
        min_confidence=settings.models.min_confidence,
        limits=topics.limits,
        dropped=metrics.dropped,
        encode=written.encode,
        media_type=written.media_type,
    )
    state = ConsumerState()
    readiness = Readiness(connection, state, stall_seconds=settings.delivery.stall_seconds, vital=[swaps.failure])
    fleet = FleetWatch(
        connection,
        settings.delivery.group,
        settings.topics.input,
        settings.control.topics[1],
        me=worker_id,
        skipped=swaps.skipped,
    ).start()
    server = _serve_web(settings, Routes(metrics, readiness, fleet.snapshot))
    _log_start(settings, connection, swaps, holder, topics.compression)
    parts = _Parts(
        connection,
        BatchStep(holder, routing, metrics, tracing),
        metrics,
        state,
        topics.compression,
        producer_limits(topics.limits),
        CLIENT_ID_PREFIX + worker_id,
        SchemaWait(event_decoder(settings.events), state, metrics),
    )
    stop = Stop()
    swaps.start()
    hold = None
    try:
        if settings.delivery.exactly_once:
            hold = _take_instance(settings, connection, worker_id)
        run = _run_transactional if settings.delivery.exactly_once else _run_faust
        run(settings, parts, stop)
    finally:
        if hold is not None:
            hold.release(clean=stop.exit_code == 0)
        swaps.close()
        fleet.stop()
        server.shutdown()
        tracing.close()
    log.info("event=worker_stop guarantee=%s exit_code=%d", settings.delivery.guarantee, stop.exit_code)
    return stop.exit_code


def _result_format(settings: WorkerSettings) -> ResultFormat:
    """How results, and the review and shadow copies in use, are written."""
    topics = {"result": settings.topics.output}
    if settings.models.min_confidence:
        topics["review"] = settings.review_output
    if settings.models.shadow_model:
        topics["shadow"] = settings.shadow_output
    return result_format(settings.events, topics)


def _tracing(settings: WorkerSettings, worker_id: str) -> BatchTracing:
    """Micro-batch spans to ``--otel``'s collector, or none."""
    endpoint = settings.logs.otel
    if endpoint is None:
        return NoTracing()
    return OtelTracing(endpoint, worker_id, max_links=settings.batching.max_batch)


def _builder(settings: WorkerSettings) -> Callable[[ModelBundle], Classifier]:
    options = settings.classifier_options()
    return lambda bundle: Classifier(bundle, **options)


def _load_models(settings: WorkerSettings, load: ModelLoader) -> ModelSet:
    """Every model the worker starts with, loaded and checked."""
    models = settings.models
    # The shadow model only answers beside the others: the bounds of --min-confidence are not its.
    load_shadow = ModelLoader(_builder(settings))
    return ModelSet(
        default=load(str(models.model)),
        routes={topic: load(source) for topic, source in models.route.items()},
        canary=load(models.canary_model) if models.canary_model else None,
        canary_share=models.canary_share if models.canary_model else 0.0,
        shadow=load_shadow(models.shadow_model) if models.shadow_model else None,
    )


def _follow_swaps(
    settings: WorkerSettings,
    connection: Connection,
    *,
    worker_id: str,
    holder: ModelHolder,
    load: ModelLoader,
    metrics: WorkerMetrics,
) -> SwapFollower:
    """The swap follower, caught up with the control topic (before the worker consumes)."""
    models, control = settings.models, settings.control
    roots = (
        ModelRoots(control.model_root)
        if control.model_root
        else ModelRoots.default([str(models.model), *models.route.values(), *models.extra_models()])
    )
    swaps = SwapFollower(
        feed=KafkaControlFeed(connection, control.topics),
        group=settings.delivery.group,
        worker=worker_id,
        inputs=settings.topics.input,
        holder=holder,
        load=load,
        roots=roots,
        metrics=metrics,
        follows=control.swaps,
    )
    try:
        swaps.catch_up()
    except KafkaException as error:
        raise BrokerError(f"the control topics cannot be read or written: {error.args[0].str()}") from None
    return swaps


def _take_instance(settings: WorkerSettings, connection: Connection, worker_id: str) -> InstanceHold:
    """Exactly-once: hold ``--instance`` (its transactional id) for this process, or stop with one line
    if a live process holds it."""
    delivery = settings.delivery

    def waiting(lease: InstanceLease) -> None:
        log.info(
            "event=instance_lease_found instance=%s holder=%s host=%s: waiting up to %.0fs for it to be renewed",
            lease.instance,
            lease.worker,
            lease.host,
            EXPIRY_SECONDS,
        )

    return take_instance(
        connection,
        settings.control.topics[1],
        group=delivery.group,
        instance=delivery.instance,
        worker=worker_id,
        waiting=waiting,
    )


def _serve_web(settings: WorkerSettings, routes: Routes) -> ThreadingHTTPServer:
    web = settings.web
    try:
        return serve_in_thread(web.web_host, web.web_port, routes)
    except OSError as error:
        raise ConfigError(f"--web-port {web.web_port}: cannot listen on {web.web_host}: {error.strerror}") from None


def _log_start(
    settings: WorkerSettings, connection: Connection, swaps: SwapFollower, holder: ModelHolder, compression: str
) -> None:
    default, security = holder.current.default, connection.security
    log.info(
        "event=worker_start worker=%s model=%s model_version=%s precision=%s provider=%s labels=%s models=%s"
        " input=%s output=%s dlq=%s group=%s guarantee=%s isolation=%s compression=%s security=%s swaps=%s"
        " model_roots=%s",
        swaps.worker,
        default.name,
        default.version,
        default.bundle.precision,
        default.classifier.provider,
        ",".join(default.bundle.labels),
        ",".join(f"{role}:{topic}:{model.version}" for role, topic, model in holder.current.in_service()),
        ",".join(settings.topics.input),
        settings.topics.output,
        settings.topics.dlq,
        settings.delivery.group,
        settings.delivery.guarantee,
        settings.delivery.isolation,
        compression,
        security.protocol + (f"/{security.mechanism}" if security.sasl else ""),
        "on" if settings.control.swaps else "off",
        swaps.roots,
    )


@dataclass(frozen=True)
class _Topics:
    """What start-up learns of the topics: their limits and the codec."""

    limits: dict[str, TopicLimit]  # of every topic the worker publishes to
    compression: str


def _prepare_topics(settings: WorkerSettings, connection: Connection) -> _Topics:
    """Reach the cluster, create the topics that are missing and read the limits of all of them."""
    topics, replication = settings.topics, settings.topics.replication
    wait_for_broker(connection, BROKER_WAIT_SECONDS)
    try:
        ensure_topics(connection, topics.input, topics.partitions, replication=replication)
        record_limit = max(limit.max_bytes for limit in read_limits(connection, topics.input).values())
        # Dead letters carry the original value and results echo its meta (review copies also the
        # text), so the topics the worker creates take records as large as the inputs do, plus room
        # for headers and the result's own fields; topics that exist keep their own limits.
        wanted = {"max.message.bytes": str(record_limit + _RECORD_OVERHEAD)}
        ensure_topics(connection, settings.published_topics, topics.partitions, wanted, replication=replication)
        ensure_control_topics(connection, settings.control.topics, replication)
        limits = read_limits(connection, settings.published_topics)
        compression = settings.delivery.compression
        if compression == "auto":
            compression = publish_compression(connection, topics.output)
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
    return _Topics(limits, compression)


def _label_check(settings: WorkerSettings) -> Callable[[ModelBundle], None]:
    """What a served model's labels must fit: the bounds of --min-confidence."""
    bounds = settings.models.min_confidence

    def check(bundle: ModelBundle) -> None:
        if bounds is not None:
            bounds.check(bundle.labels, bundle.name)

    return check


def _in_service(models: ModelSet) -> list[tuple[str, str, str, str, str]]:
    return [(role, topic, m.name, m.version, m.bundle.precision) for role, topic, m in models.in_service()]


@dataclass(frozen=True)
class _Parts:
    """What start-up builds once and hands to the loop of either guarantee."""

    connection: Connection
    step: BatchStep
    metrics: WorkerMetrics
    state: ConsumerState
    compression: str  # of published records, resolved
    producer_limits: dict[str, int]  # keep the producer inside the published topics' limits
    client_id: str  # the consumer's name in its group
    schemas: SchemaWait  # decodes events, fetching their schemas first


def _run_transactional(settings: WorkerSettings, parts: _Parts, stop: Stop) -> None:
    """The exactly-once loop, stopped by SIGTERM or SIGINT after the batch in flight commits."""
    stopping = threading.Event()
    stop.on_request(stopping.set)
    watch_signals(stop)
    try:
        run_exactly_once(
            settings,
            parts.connection,
            parts.step,
            parts.metrics,
            parts.state,
            compression=parts.compression,
            producer_limits=parts.producer_limits,
            client_id=parts.client_id,
            stop=stopping,
            schemas=parts.schemas,
        )
    except Exception as error:
        stop.fail(str(error))


def _run_faust(settings: WorkerSettings, parts: _Parts, stop: Stop) -> None:
    """The Faust app, stopped by SIGTERM or SIGINT once every event it handed out is acked."""
    producer = parts.connection.producer(
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
            parts.connection,
            parts.step,
            parts.metrics,
            parts.state,
            fail=stop.fail,
            publish=publisher,
            datadir=Path(scratch),
            client_id=parts.client_id,
            schemas=parts.schemas,
        )
        worker = _FaustWorker(
            app,
            stop,
            quiet=True,
            redirect_stdouts=False,
            loglevel=settings.logs.log_level,
            logging_config=logging_config(settings.logs.log_level, settings.logs.log_format),
        )
        stop.on_request(lambda: worker.loop.call_soon_threadsafe(worker.stop_on_request, stop.exit_code == 0))
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
    """Faust's worker, whose signals go through :class:`Stop` (for its deadline)."""

    def __init__(self, app: WorkerApp, stop: Stop, **kwargs: object) -> None:
        super().__init__(app, **kwargs)
        self._stop_control = stop
        self._leaving: asyncio.Future | None = None

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

    def stop_on_request(self, cleanly: bool) -> None:
        """Stop; ``cleanly`` (asked by a signal, not a failure): the partitions handed over first."""
        if self._leaving is None:
            self._leaving = asyncio.ensure_future(self._leave() if cleanly else asyncio.sleep(0))
            self._leaving.add_done_callback(lambda _: self._schedule_shutdown(signal.SIGTERM))

    async def _leave(self) -> None:
        app: WorkerApp = self.app
        await app.leave()
