"""Micro-batch spans (``--otel``) through a real broker, exported by the OpenTelemetry SDK over OTLP/HTTP
to a receiver here that decodes what a collector would get: every event that came with a valid
``traceparent`` is linked from the span of the batch that answered it, and no other."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from stream_clf.ops.tracing import SPAN_NAME
from stream_clf.tools.broker import free_port
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS
from tests.kafka_helpers import Topics, collect, produce

trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2", reason="needs the otel extra"
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]


class Receiver:
    """An OTLP/HTTP traces endpoint: keeps each span it is sent, with its resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict, object]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service.ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for resource_spans in request.resource_spans:
                        resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope in resource_spans.scope_spans:
                            receiver.spans.extend((resource, span) for span in scope.spans)
                answer = trace_service.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


def _traceparent(i: int) -> tuple[str, str]:
    return f"{i + 1:032x}", f"{i + 101:016x}"


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_each_micro_batch_is_a_span_linked_to_the_traces_of_its_events(
    guarantee, kafka_bootstrap, tiny_bundle, start_worker, receiver, monkeypatch
):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # the SDK's export interval, milliseconds
    topics = Topics.fresh(kafka_bootstrap)
    events, traced = [], set()
    for i in range(30):
        trace_id, span_id = _traceparent(i)
        headers = [("traceparent", f"00-{trace_id}-{span_id}-01".encode())]
        if i % 10 == 3:
            headers = [("traceparent", b"00-not-a-trace-context")]  # malformed: no link, still answered
        elif i % 10 == 7:
            headers = []
        else:
            traced.add((trace_id, span_id))
        value = b"{not json" if i == 12 else orjson.dumps({"id": f"e{i}", "text": SAMPLE_TEXTS[i % 6]})
        events.append((f"k{i % 4}".encode(), value, headers))
    produce(kafka_bootstrap, topics.input, events)
    worker = start_worker(topics, tiny_bundle, "--guarantee", guarantee, "--otel", receiver.url)
    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=lambda seen: len(seen) >= len(events),
                      timeout=120, settle=1, watch=[worker])  # fmt: skip
    assert len(records) == len(events)
    assert worker.terminate() == 0  # shutting down exports what is still buffered
    batches = [(resource, span) for resource, span in receiver.spans if span.name == SPAN_NAME]
    assert batches, "no micro-batch span reached the receiver"
    assert {resource["service.name"] for resource, _ in batches} == {"stream-clf"}
    linked = [(link.trace_id.hex(), link.span_id.hex()) for _, span in batches for link in span.links]
    assert sorted(linked) == sorted(traced), "each traced event linked once, from the batch that answered it"
    counts = {
        a.key: sum(b.value.int_value for _, s in batches for b in s.attributes if b.key == a.key)
        for _, span in batches[:1]
        for a in span.attributes
        if a.key in ("messaging.batch.message_count", "stream_clf.results", "stream_clf.dead_letters")
    }
    assert counts == {"messaging.batch.message_count": 30, "stream_clf.results": 29, "stream_clf.dead_letters": 1}
