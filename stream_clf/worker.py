"""Start-up of the worker: load and check the model, reach the broker, create topics, run Faust.

Everything that can be wrong with the configuration is found here, before Faust starts, and
reported as one line (see :mod:`stream_clf.cli`).
"""

import logging

import faust

from stream_clf.app import create_app
from stream_clf.bundle import load_bundle
from stream_clf.classifier import Classifier
from stream_clf.logs import logging_config
from stream_clf.settings import WorkerSettings
from stream_clf.topics import ensure_topics, largest_record_limit, wait_for_broker

__all__ = ["BROKER_WAIT_SECONDS", "run_worker"]

log = logging.getLogger(__name__)

BROKER_WAIT_SECONDS = 30.0
# Room for a record's key, headers and batch framing on top of its value.
_RECORD_OVERHEAD = 64 * 1024


def run_worker(settings: WorkerSettings) -> None:
    """Run the worker until SIGTERM or SIGINT; exits the process (0 on a clean stop)."""
    bundle = load_bundle(settings.model)
    classifier = Classifier(bundle, threads=settings.threads)
    wait_for_broker(settings.brokers, BROKER_WAIT_SECONDS)
    ensure_topics(settings.brokers, settings.input, settings.partitions)
    record_limit = largest_record_limit(settings.brokers, settings.input)
    ensure_topics(settings.brokers, [settings.output], settings.partitions)
    # Dead letters carry the original value, so their topic must take records as large as the inputs.
    ensure_topics(settings.brokers, [settings.dlq], settings.partitions, {"max.message.bytes": str(record_limit)})
    app = create_app(settings, classifier, max_record_bytes=record_limit + _RECORD_OVERHEAD)
    log.info(
        "event=worker_start model=%s model_version=%s labels=%s input=%s output=%s dlq=%s group=%s",
        bundle.name,
        bundle.version,
        ",".join(bundle.labels),
        ",".join(settings.input),
        settings.output,
        settings.dlq,
        settings.group,
    )
    worker = faust.Worker(
        app,
        quiet=True,
        redirect_stdouts=False,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level),
    )
    worker.execute_from_commandline()
