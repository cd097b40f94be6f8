"""No single record takes the group down, through the real broker: results that outgrow their topic,
dead letters over the dead-letter topic's limit, topics created beforehand with small limits, records
the broker refuses at delivery, and megabyte texts. Each costs one smaller record or one dead letter;
the events around it are answered, in order; the worker never exits."""

import hashlib
import uuid
from collections import defaultdict

import orjson
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from stream_clf.kafka.connection import Connection
from stream_clf.kafka.topics import ensure_topics
from stream_clf.tools.broker import free_port
from tests.kafka_helpers import Record, Topics, collect, produce
from tests.web_helpers import scrape, wait_for_status

pytestmark = pytest.mark.broker

GUARANTEES = {"at-least-once": (), "exactly-once": ("--guarantee", "exactly-once", "--instance", "poison")}
KEYS = 3


def _event(i: int, **fields: object) -> tuple[bytes, bytes]:
    """Event ``i`` on key ``k(i % KEYS)``, carrying its sequence number in its id."""
    return f"k{i % KEYS}".encode(), orjson.dumps({"id": f"e{i}", "text": f"an ordinary review, number {i}", **fields})


def _big_meta_event(i: int) -> tuple[bytes, bytes]:
    """An event of 950,041 bytes whose ``meta`` of 1e15s is echoed as 1000000000000000.0 each, so that
    its result is about 3.7 times the event (what a producer wrote by hand, not orjson)."""
    head = orjson.dumps({"id": f"e{i}", "text": f"an ordinary review, number {i}"})[:-1] + b',"meta":['
    count = (950_041 - len(head) - 2 + 1) // 5
    value = head + b",".join([b"1e15"] * count) + b"]}"
    value = value[:-2] + b" " * (950_041 - len(value)) + b"]}"
    assert len(value) == 950_041
    return f"k{i % KEYS}".encode(), value


def _answers(records: list[Record], topics: Topics) -> dict[str, Record]:
    """The one output or dead-letter record of each event, by the event's id (asserted unique)."""
    found: dict[str, Record] = {}
    for record in records:
        event_id = orjson.loads(record.value)["id"] if record.topic == topics.output else _id_of_dead_letter(record)
        assert event_id not in found, f"two records for {event_id}"
        found[event_id] = record
    return found


def _id_of_dead_letter(record: Record) -> str:
    return "dead@" + record.headers["source.offset"].decode() + "/" + record.headers["source.partition"].decode()


def _in_order_per_key(records: list[Record], topics: Topics) -> None:
    sequence: dict[bytes | None, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        if record.topic == topics.output:
            sequence[record.key].append(int(orjson.loads(record.value)["id"][1:]))
    for key, seen in sequence.items():
        assert seen == sorted(seen), f"key {key!r}: results out of order {seen}"


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_an_oversized_result_goes_without_meta_and_an_oversized_dead_letter_keeps_its_head(
    guarantee, kafka_bootstrap, tiny_bundle, start_worker
):
    tag = uuid.uuid4().hex[:8]
    topics = Topics(f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"group-{tag}")
    ensure_topics(Connection.to(kafka_bootstrap), [topics.input], 4)  # the default limit; the worker creates the rest
    huge = orjson.dumps({"id": "huge", "text": "word " * 1_000_000})  # 5 MB, compressed to a few KB
    events = [_event(i) for i in range(30)]
    events[10] = _big_meta_event(10)
    events[20] = (events[20][0], huge)
    produce(kafka_bootstrap, topics.input, events, {"compression.type": "lz4", "message.max.bytes": 10_000_000})
    port = free_port()
    worker = start_worker(topics, tiny_bundle, "--web-port", str(port), *GUARANTEES[guarantee])

    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=lambda rs: len(rs) >= 30, timeout=180,
                      settle=3, watch=[worker])  # fmt: skip

    answers = _answers(records, topics)
    assert len(answers) == 30, "one record per event"
    bare = orjson.loads(answers["e10"].value)
    assert bare["meta_dropped"] is True, "the result went without its meta"
    assert bare["meta"] is None
    assert bare["label"] in ("negative", "positive")
    (letter,) = [record for record in records if record.topic == topics.dlq]
    assert letter.headers["error.reason"] == b"too_large"
    assert letter.headers["original.size"] == str(len(huge)).encode()
    assert letter.headers["original.sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert huge.startswith(letter.value), "the head of the value"
    assert 1_000_000 < len(letter.value) < len(huge)
    assert b"value cut to its head" in letter.headers["error.detail"]
    assert {f"e{i}" for i in range(30) if i != 20} <= set(answers), "every neighbour answered"
    _in_order_per_key(records, topics)
    samples = scrape(port)
    assert samples[("stream_clf_refitted_records_total", (("form", "bare"), ("role", "result")))] == 1
    assert samples[("stream_clf_refitted_records_total", (("form", "head"), ("role", "dead_letter")))] == 1
    worker.assert_running()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_an_output_topic_created_small_gets_bare_results_and_result_too_large_dead_letters(
    guarantee, kafka_bootstrap, tiny_bundle, start_worker
):
    tag = uuid.uuid4().hex[:8]
    topics = Topics(f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"group-{tag}")
    ensure_topics(Connection.to(kafka_bootstrap), [topics.input, topics.dlq], 4)
    ensure_topics(Connection.to(kafka_bootstrap), [topics.output], 4, {"max.message.bytes": "20000"})
    events = [_event(i) for i in range(40)]
    events[5] = _event(5, meta={"blob": "m" * 30_000})  # fits once its meta is left out
    events[6] = (events[6][0], orjson.dumps({"id": "e6" + "i" * 30_000, "text": "an id too long for the topic"}))
    events[7] = _event(7, meta={"blob": "m" * 30_000})
    produce(kafka_bootstrap, topics.input, events)
    worker = start_worker(topics, tiny_bundle, *GUARANTEES[guarantee])

    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=lambda rs: len(rs) >= 40, timeout=180,
                      settle=3, watch=[worker])  # fmt: skip

    answers = _answers(records, topics)
    assert len(answers) == 40, "one record per event"
    for bare in ("e5", "e7"):
        result = orjson.loads(answers[bare].value)
        assert result["meta"] is None
        assert result["meta_dropped"] is True
    (letter,) = [record for record in records if record.topic == topics.dlq]
    assert letter.headers["error.reason"] == b"result_too_large"
    assert letter.value == events[6][1], "the dead letter keeps the original bytes"
    assert b"even without meta" in letter.headers["error.detail"]
    assert all(len(record.value) <= 20_000 for record in records if record.topic == topics.output)
    _in_order_per_key(records, topics)
    worker.assert_running()
    assert "event=topic_limit_small" in worker.log.read_text()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_result_the_broker_refuses_at_delivery_becomes_a_dead_letter_and_its_neighbours_are_published(
    guarantee, kafka_bootstrap, tiny_bundle, start_worker
):
    tag = uuid.uuid4().hex[:8]
    topics = Topics(f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"group-{tag}")
    ensure_topics(Connection.to(kafka_bootstrap), [topics.input, topics.dlq], 4)
    # One output partition: every keyless result shares its produce request with keyed neighbours.
    ensure_topics(Connection.to(kafka_bootstrap), [topics.output], 1)
    port = free_port()
    worker = start_worker(topics, tiny_bundle, "--web-port", str(port), *GUARANTEES[guarantee])
    wait_for_status(port, "/readyz", 200)
    # The output topic turns compacted under the running worker: its limits, read at start, say
    # nothing of it, so a keyless result meets the broker's refusal (INVALID_RECORD) at delivery.
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    change = ConfigResource(
        ResourceType.TOPIC,
        topics.output,
        incremental_configs=[ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET)],
    )
    for future in admin.incremental_alter_configs([change]).values():
        future.result(timeout=30)
    # Keyless events among keyed ones: each fails the produce request it shares with its neighbours,
    # which are sent again, and must still come before the next batch's results for their keys.
    keyless = (12, 41, 70)
    events = [_event(i) for i in range(90)]
    for i in keyless:
        events[i] = (None, events[i][1])
    produce(kafka_bootstrap, topics.input, events)

    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=lambda rs: len(rs) >= 90, timeout=180,
                      settle=3, watch=[worker])  # fmt: skip

    answers = _answers(records, topics)
    assert len(answers) == 90, "one record per event"
    letters = [record for record in records if record.topic == topics.dlq]
    assert sorted(letter.value for letter in letters) == sorted(events[i][1] for i in keyless)
    for letter in letters:
        assert letter.headers["error.reason"] == b"result_refused"
        assert letter.key is None
        detail = letter.headers["error.detail"]
        assert b"INVALID_RECORD" in detail or b"validate" in detail
    assert {f"e{i}" for i in range(90) if i not in keyless} <= set(answers)
    _in_order_per_key(records, topics)
    if guarantee == "exactly-once":
        assert scrape(port)[("stream_clf_transaction_aborts_total", (("cause", "record"),))] >= 1
    worker.assert_running()


def _megabyte_of_short_words(i: int) -> bytes:
    """An event of exactly 1,000,000 bytes whose text is short words: about 330,000 tokens."""
    words = ("a", "an", "the", "of", "to", "in", "is", "it", "on", "at", "we", "no", "yes", "cat", "sun")
    text = " ".join(words[(i + n) % len(words)] for n in range(330_000))
    value = orjson.dumps({"id": f"m{i}", "text": text})[: 1_000_000 - 2]
    value = value[: value.rfind(b" ")] + b'"}'
    return value[:-2] + b" " * (1_000_000 - len(value)) + b'"}'


def _peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115 (read at once)
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_two_hundred_megabyte_texts_stay_within_the_byte_bound(
    guarantee, kafka_bootstrap, topics, tiny_bundle, start_worker
):
    budget_mib = 64
    port = free_port()
    worker = start_worker(topics, tiny_bundle, "--web-port", str(port), "--max-buffered-bytes", str(budget_mib << 20),
                          *GUARANTEES[guarantee])  # fmt: skip
    wait_for_status(port, "/readyz", 200)
    assert worker.process is not None
    ready_mib = _peak_rss_mib(worker.process.pid)
    events = [(f"k{i % 8}".encode(), _megabyte_of_short_words(i)) for i in range(200)]
    assert {len(value) for _, value in events} == {1_000_000}
    produce(kafka_bootstrap, topics.input, events, {"compression.type": "lz4", "message.max.bytes": 2_000_000})

    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=lambda rs: len(rs) >= 200, timeout=240,
                      settle=1, watch=[worker])  # fmt: skip

    peak_mib = _peak_rss_mib(worker.process.pid)
    results = [orjson.loads(record.value) for record in records if record.topic == topics.output]
    assert sorted(result["id"] for result in results) == sorted(f"m{i}" for i in range(200))
    assert all(result["truncated"] for result in results)
    print(f"200 events of 1,000,000 bytes, {guarantee}: peak RSS {peak_mib:.0f} MiB, {ready_mib:.0f} MiB when ready")
    # The budget counts the events' keys, values and texts; on top of it come the clients' own copies
    # of what they fetched (within their share of it) and the allocator's free lists: four times the
    # budget, and room for a batch's pieces and results. Before the bound and the cut: 4.6 GiB.
    assert peak_mib <= ready_mib + 4 * budget_mib + 128, (ready_mib, peak_mib)
