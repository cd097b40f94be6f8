"""Events in, records out: what was consumed, published, dead-lettered, refitted, dropped or skipped."""

from prometheus_client import CollectorRegistry, Counter, Gauge

from stream_clf.errors import Reason

__all__ = ["FlowMetrics"]

# The series a dashboard or an alert reads are there from the start, at 0, where their labels are known
# beforehand: a query over them has a value before anything happened, rather than no data.
REFITTED = (("result", "bare"), ("review", "bare"), ("dead_letter", "head"))
DROPPED = ("result", "dead_letter", "review", "shadow")
CONTROL_KINDS = ("swap", "status", "lease", "other")


class FlowMetrics:
    """Counts of what went in and what came out of the worker."""

    def _register_flow(self, r: CollectorRegistry) -> None:
        self.events_in = Counter(
            "stream_clf_events_consumed", "Events read from the input topics", ["topic"], registry=r
        )
        self.results_out = Counter("stream_clf_results", "Results published to the output topic", registry=r)
        self.dead_letters = Counter(
            "stream_clf_dead_letters", "Events published to the dead-letter topic, by reason", ["reason"], registry=r
        )
        for reason in Reason:  # every reason is a series from the start, at 0
            self.dead_letters.labels(reason=reason.value)
        self.refitted_records = Counter(
            "stream_clf_refitted_records",
            "Records published in a smaller form because their topic refused them whole: role result or review"
            " without meta (form bare), dead letters cut to the head of their value (form head)",
            ["role", "form"],
            registry=r,
        )
        for role, form in REFITTED:
            self.refitted_records.labels(role=role, form=form)
        self.dropped_records = Counter(
            "stream_clf_dropped_records",
            "Records left out because no form of them fits their topic (each one also a log line), by role",
            ["role"],
            registry=r,
        )
        for role in DROPPED:
            self.dropped_records.labels(role=role)
        self.transaction_aborts = Counter(
            "stream_clf_transaction_aborts",
            "Exactly-once transactions aborted, by cause: record (a record was refused; the batch is then"
            " committed event by event) or the broker's error",
            ["cause"],
            registry=r,
        )
        self.transaction_aborts.labels(cause="record")
        self.control_skipped = Counter(
            "stream_clf_control_records_skipped",
            "Control-topic records skipped as malformed (each one also a log line), by kind: swap, status, lease,"
            " other",
            ["kind"],
            registry=r,
        )
        for kind in CONTROL_KINDS:
            self.control_skipped.labels(kind=kind)
        self.registry_unavailable = Counter(
            "stream_clf_schema_registry_unavailable",
            "Asks for a schema the Schema Registry did not answer (its events wait, in order, and are asked again)",
            registry=r,
        )
        self.registry_waiting = Gauge(
            "stream_clf_schema_registry_waiting",
            "1 while events wait for a schema because the Schema Registry does not answer",
            registry=r,
        )
        # An event touches its topic's series: the child is looked up once (labels() per event cost
        # the event loop more than the rest of the metrics together).
        self._consumed: dict[str, Counter] = {}

    def consumed(self, topic: str) -> None:
        counter = self._consumed.get(topic)
        if counter is None:
            counter = self._consumed[topic] = self.events_in.labels(topic=topic)
        counter.inc()

    def dead_letter(self, reason: str) -> None:
        self.dead_letters.labels(reason=reason).inc()

    def refitted(self, role: str, form: str) -> None:
        """A record went out in a smaller ``form`` than whole, to fit its topic."""
        self.refitted_records.labels(role=role, form=form).inc()

    def dropped(self, role: str) -> None:
        """A record was left out: no form of it fits its topic."""
        self.dropped_records.labels(role=role).inc()
