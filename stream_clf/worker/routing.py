"""Where each event's records go, what they hold, and the smaller forms they take when a topic refuses them.

::

    event ─► result ──────────► output topic        (one of these two, always; each with the event's
                                                       trace context, and CloudEvents headers of its own)
        or ─► dead letter ────► dead-letter topic
        and ─► review copy (it abstained), shadow answer (a shadow model runs): copies, beside it

    a record its topic refuses (too large; no key for a compacted topic) ─► its next form:
      result ─► result without meta ─► dead letter (result_too_large / result_refused)
      dead letter ─► dead letter with the head of the value, its size and SHA-256 ─► dropped (one log line)
      review copy ─► review copy without meta ─► dropped;  shadow answer ─► dropped

Each record is checked against its topic's limits (read at start) before it is handed over, so a
refusal is planned, in read order, rather than met at delivery; one met at delivery anyway (a limit
changed under a running worker) goes the same way (:meth:`Routing.instead`).
"""

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from stream_clf.errors import EventError, Reason
from stream_clf.formats.cloudevents import result_headers, trace_headers
from stream_clf.kafka.limits import Refusal, TopicLimit, wire_size
from stream_clf.model.abstain import MinConfidence
from stream_clf.model.classifier import Prediction
from stream_clf.worker.events import TextEvent, dead_letter_headers, encode_result, encode_review, encode_shadow
from stream_clf.worker.records import Form, InFlight, Outcome, OutRecord, Role

__all__ = ["Routing"]

log = logging.getLogger(__name__)
_NO_LIMIT = TopicLimit(max_bytes=1 << 62)


@dataclass(frozen=True)
class Routing:
    """Where each event's records go, and what they hold: a result or a dead letter, and beside a
    result its review copy (``review``, when it abstained) and its shadow answer (``shadow``).

    ``limits`` are the published topics' limits; a topic not named there takes any record.
    ``dropped`` is told the role of each record left out because no form of it fits.
    ``encode`` writes a JSON result, review copy or shadow answer as its topic's registry format
    (``--output-format``; :class:`~stream_clf.formats.results.ResultWriter`), taking (topic, value);
    ``media_type`` names that format in CloudEvents headers.
    """

    output: str
    dlq: str
    top_k: int = 0
    review: str | None = None
    shadow: str | None = None
    min_confidence: MinConfidence | None = None
    limits: Mapping[str, TopicLimit] = field(default_factory=dict)
    dropped: Callable[[str], None] = field(default=lambda role: None, repr=False)
    encode: Callable[[str, bytes], bytes] | None = field(default=None, repr=False)
    media_type: str = "application/json"

    def records(self, record: InFlight, outcome: Outcome) -> list[OutRecord]:
        """The records published for ``record``: one result or one dead letter, then any copies,
        each in the largest form its topic takes (a copy that fits in none is left out)."""
        event, answer, model = record.outcome, outcome.answer, outcome.model
        if not (isinstance(answer, Prediction) and isinstance(event, TextEvent) and model is not None):
            rejected = answer if isinstance(answer, EventError) else event
            assert isinstance(rejected, EventError), "an event is either classified or rejected"
            return self._fitted([self._dead_letter(record, outcome, rejected)])
        records = [self._result(record, outcome, event.meta)]
        if outcome.abstained and self.review is not None and self.min_confidence is not None:
            records.append(self._review(record, outcome, event.meta))
        if outcome.shadow is not None and outcome.shadow_model is not None and self.shadow is not None:
            shadow = encode_shadow(
                event_id=event.id or record.source.default_id,
                source=record.source,
                live=(model.name, model.version, answer),
                shadow=(outcome.shadow_model.name, outcome.shadow_model.version, outcome.shadow),
            )
            headers = self._headers(record, "shadow")
            shadow = self._encoded(self.shadow, shadow)
            records.append(
                OutRecord(self.shadow, record.key, shadow, headers, Role.SHADOW, event=record, outcome=outcome)
            )
        return self._fitted(records)

    def abstains(self, answer: Prediction) -> bool:
        return self.min_confidence is not None and self.min_confidence.abstains(answer.label, answer.score)

    def refusal(self, record: OutRecord) -> Refusal | None:
        """Why ``record``'s topic would refuse it, as far as its limits tell; None when it takes it."""
        return self.limits.get(record.topic, _NO_LIMIT).refusal(record.topic, record.key, record.value, record.headers)

    def instead(self, record: OutRecord, refusal: Refusal) -> OutRecord | None:
        """What to publish in place of ``record``, which its topic refused: its next smaller form,
        itself checked against the limits; None when no form is left (the record is dropped)."""
        while True:
            smaller = self._smaller(record, refusal)
            if smaller is None:
                self._dropped(record, refusal)
                return None
            refusal = self.refusal(smaller)
            if refusal is None:
                return smaller
            record = smaller

    def _fitted(self, records: list[OutRecord]) -> list[OutRecord]:
        fitted = []
        for record in records:
            refusal = self.refusal(record)
            kept = record if refusal is None else self.instead(record, refusal)
            if kept is not None:
                fitted.append(kept)
        return fitted

    def _smaller(self, record: OutRecord, refusal: Refusal) -> OutRecord | None:
        event, outcome = record.event, record.outcome
        if event is None or outcome is None:
            return None
        meta = event.outcome.meta if isinstance(event.outcome, TextEvent) else None
        if record.role is Role.RESULT:
            if record.form is Form.WHOLE and meta is not None:
                return self._result(event, outcome, None)
            reason = Reason.RESULT_TOO_LARGE if refusal.size else Reason.RESULT_REFUSED
            detail = f"its result could not be published ({refusal.detail}), even without meta"
            return self._dead_letter(event, outcome, EventError(reason, detail))
        if record.role is Role.REVIEW and record.form is Form.WHOLE and meta is not None:
            return self._review(event, outcome, None)
        if record.role is Role.DEAD_LETTER and record.form is Form.WHOLE and refusal.size and event.value:
            return self._head(record, event.value)
        return None

    def _result(self, record: InFlight, outcome: Outcome, meta: object) -> OutRecord:
        """The result; ``meta`` None where the event had some means the smaller, bare form."""
        form = _form(record, meta)
        value = self._encoded(self.output, self._json_result(record, outcome, meta, form))
        headers = self._headers(record, "result")
        return OutRecord(self.output, record.key, value, headers, Role.RESULT, form, event=record, outcome=outcome)

    def _json_result(self, record: InFlight, outcome: Outcome, meta: object, form: Form) -> bytes:
        """The result as JSON, whatever ``--output-format`` writes."""
        event, answer, model = record.outcome, outcome.answer, outcome.model
        assert isinstance(event, TextEvent), "only a valid event has a result"
        assert isinstance(answer, Prediction), "only a classified event has a result"
        assert model is not None, "a classified event has its model"
        return encode_result(
            event_id=event.id or record.source.default_id,
            label=answer.label,
            scores=answer.scores,
            model=model.name,
            model_version=model.version,
            source=record.source,
            meta=meta,
            truncated=answer.truncated,
            chunks=answer.chunks,
            top_k=self.top_k,
            labels=answer.labels,
            abstained=outcome.abstained if self.min_confidence is not None else None,
            meta_dropped=form is Form.BARE,
        )

    def _review(self, record: InFlight, outcome: Outcome, meta: object) -> OutRecord:
        event, answer = record.outcome, outcome.answer
        assert isinstance(event, TextEvent), "only a valid event has a review copy"
        assert isinstance(answer, Prediction), "only a classified event has a review copy"
        assert self.review is not None, "review copies have a topic"
        assert self.min_confidence is not None, "only --min-confidence abstains"
        form = _form(record, meta)
        result = self._json_result(record, outcome, meta, form)
        value = self._encoded(self.review, encode_review(result, event.text, self.min_confidence.bound(answer.label)))
        headers = self._headers(record, "review")
        return OutRecord(self.review, record.key, value, headers, Role.REVIEW, form, event=record, outcome=outcome)

    def _encoded(self, topic: str, value: bytes) -> bytes:
        return value if self.encode is None else self.encode(topic, value)

    def _headers(self, record: InFlight, kind: str) -> list[tuple[str, bytes]]:
        """A result's (or copy's) headers: the event's trace context, and CloudEvents attributes of its
        own when the event was a CloudEvent (see :mod:`stream_clf.formats.cloudevents`)."""
        headers = trace_headers(record.headers) if record.headers else []
        event = record.outcome
        if isinstance(event, TextEvent) and event.cloudevent is not None:
            at = record.source
            cloud = result_headers(
                at.topic, at.partition, at.offset, event.cloudevent, kind, media_type=self.media_type
            )
            return [*cloud, *headers]
        return headers

    def _dead_letter(self, record: InFlight, outcome: Outcome, error: EventError) -> OutRecord:
        headers = [*dead_letter_headers(error, record.source), *trace_headers(record.headers)]
        return OutRecord(
            self.dlq, record.key, record.value, headers, Role.DEAD_LETTER, event=record, outcome=outcome,
            reason=error.reason.value,
        )  # fmt: skip

    def _head(self, letter: OutRecord, value: bytes) -> OutRecord | None:
        """The dead letter with only as much of the original value as its topic takes, and the
        value's size and SHA-256 in headers; None when not even the headers fit."""
        headers = [
            *((name, data) for name, data in letter.headers if name != "error.detail"),
            ("error.detail", _cut_detail(letter.headers, len(value))),
            ("original.size", str(len(value)).encode()),
            ("original.sha256", hashlib.sha256(value).hexdigest().encode()),
        ]
        room = self.limits.get(letter.topic, _NO_LIMIT).room - wire_size(letter.key, b"", headers)
        if room <= 0:
            return None
        return replace(letter, value=value[:room], headers=headers, form=Form.HEAD)

    def _dropped(self, record: OutRecord, refusal: Refusal) -> None:
        self.dropped(record.role.value)
        event = record.event
        log.error(
            "event=record_dropped role=%s topic=%s source=%s reason=%r",
            record.role.value,
            record.topic,
            event.source.default_id if event else None,
            refusal.detail,
        )


def _form(record: InFlight, meta: object) -> Form:
    """A result's form: bare when ``meta`` is None and the event had some (it was left out to fit)."""
    event = record.outcome
    return Form.BARE if meta is None and isinstance(event, TextEvent) and event.meta is not None else Form.WHOLE


def _cut_detail(headers: list[tuple[str, bytes]], size: int) -> bytes:
    """The dead letter's detail, saying that its value is only the head of the original."""
    detail = dict(headers).get("error.detail", b"").decode(errors="replace")
    note = f"value cut to its head: the original was {size} bytes, over the dead-letter topic's limit"
    return (f"{detail}; {note}" if detail else note).encode()
