"""Start-up of the worker: load and check the model, reach the broker, create topics, run Faust.

Everything that can be wrong with the configuration is found here, before Faust starts, and
reported as one line (see :mod:`stream_clf.cli`).
"""

import logging
import signal
import tempfile
import threading
from pathlib import Path

import faust

from stream_clf.app import create_app
from stream_clf.bundle import load_bundle
from stream_clf.catalog import resolve_model
from stream_clf.classifier import Classifier
from stream_clf.logs import configure_logging, logging_config
from stream_clf.settings import WorkerSettings
from stream_clf.topics import ensure_topics, largest_record_limit, wait_for_broker
from stream_clf.transactional import run_exactly_once

__all__ = ["BROKER_WAIT_SECONDS", "run_worker"]

log = logging.getLogger(__name__)

BROKER_WAIT_SECONDS = 30.0
# Room for a record's key, headers, batch framing and a result's own fields on top of an input value.
_RECORD_OVERHEAD = 64 * 1024


def run_worker(settings: WorkerSettings) -> None:
    """Run the worker until SIGTERM or SIGINT; exits the process (0 on a clean stop)."""
    configure_logging(settings.log_level, settings.log_format)
    bundle = load_bundle(resolve_model(settings.model))
    classifier = Classifier(
        bundle,
        threads=settings.threads,
        windowing=settings.windowing,
        thresholds=settings.thresholds,
        bucket_size=settings.bucket_size,
        bucket_tokens=settings.bucket_tokens,
        provider=settings.provider,
        spinning=settings.spinning,
    )
    security = settings.security
    wait_for_broker(settings.brokers, BROKER_WAIT_SECONDS, security)
    ensure_topics(settings.brokers, settings.input, settings.partitions, security=security)
    record_limit = largest_record_limit(settings.brokers, settings.input, security)
    # Dead letters carry the original value and results echo its meta, so both topics must take
    # records as large as the inputs do, plus room for headers and the result's own fields.
    output_limit = record_limit + _RECORD_OVERHEAD
    ensure_topics(
        settings.brokers,
        [settings.output, settings.dlq],
        settings.partitions,
        {"max.message.bytes": str(output_limit)},
        security=security,
    )
    log.info(
        "event=worker_start model=%s model_version=%s precision=%s provider=%s labels=%s input=%s output=%s"
        " dlq=%s group=%s guarantee=%s security=%s",
        bundle.name,
        bundle.version,
        bundle.precision,
        classifier.provider,
        ",".join(bundle.labels),
        ",".join(settings.input),
        settings.output,
        settings.dlq,
        settings.group,
        settings.guarantee,
        security.protocol + (f"/{security.mechanism}" if security.sasl else ""),
    )
    if settings.guarantee == "exactly-once":
        _run_transactional(settings, classifier, output_limit)
        return
    scratch = tempfile.TemporaryDirectory(prefix="stream-clf-faust-")
    app = create_app(settings, classifier, max_record_bytes=output_limit, datadir=Path(scratch.name))
    worker = faust.Worker(
        app,
        quiet=True,
        redirect_stdouts=False,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level, settings.log_format),
    )
    with scratch:
        worker.execute_from_commandline()


def _run_transactional(settings: WorkerSettings, classifier: Classifier, output_limit: int) -> None:
    """The exactly-once loop, stopped by SIGTERM or SIGINT after the batch in flight commits."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run_exactly_once(settings, classifier, max_record_bytes=output_limit, stop=stop)
    log.info("event=worker_stop guarantee=exactly-once")
