"""The input formats in process: registry framing and Protobuf message indexes, dotted field paths, plain
text, and the schema cache against a real Schema Registry (unknown ids asked again, then remembered)."""

import orjson
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from hypothesis import given
from hypothesis import strategies as st

from stream_clf.errors import EventError, Reason
from stream_clf.formats.cloudevents import kept_headers, trace_headers
from stream_clf.formats.framing import is_framed, message_indexes, unframe
from stream_clf.formats.paths import Fields, parse_path
from stream_clf.formats.registry import LOOKUPS, RegistryAccess, RegistryUnavailableError, SchemaBook
from stream_clf.tools.broker import free_port
from stream_clf.worker.decoding import EventDecoder


def _zigzag(value: int) -> bytes:
    raw, out = (value << 1) ^ (value >> 63), bytearray()
    while True:
        byte, raw = raw & 0x7F, raw >> 7
        out.append(byte | (0x80 if raw else 0))
        if not raw:
            return bytes(out)


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=8), st.binary(max_size=40))
def test_message_indexes_are_read_as_confluent_writes_them(indexes, body):
    rest = memoryview(_zigzag(len(indexes)) + b"".join(_zigzag(i) for i in indexes) + body)
    assert message_indexes(rest) == (tuple(indexes), body)


def test_the_first_message_is_written_as_one_zero_byte():
    assert message_indexes(memoryview(b"\x00body")) == ((0,), b"body")


@pytest.mark.parametrize(
    "rest", [b"", b"\x80", b"\x02", b"\x01", b"\x02\x01", _zigzag(65) + b"\x00" * 65, b"\xff" * 11]
)
def test_malformed_message_indexes_are_undecodable(rest):
    with pytest.raises(EventError) as caught:
        message_indexes(memoryview(rest))
    assert caught.value.reason is Reason.UNDECODABLE


def test_framing_names_the_schema_id_and_json_or_text_is_never_framed():
    framed = unframe(b"\x00\x00\x00\x01\x07body")
    assert (framed.schema_id, bytes(framed.rest)) == (263, b"body")
    assert not is_framed(b'{"text": "x"}')
    assert not is_framed(b"\x00\x00\x01")  # too short for a header
    with pytest.raises(EventError):
        unframe(b"plain")


def test_text_fields_are_joined_and_missing_ones_say_so():
    fields = Fields((parse_path("review.title"), parse_path("review.body")), parse_path("meta.id"))
    record = {"review": {"title": "Great", "body": "a fine film"}, "meta": {"id": 7}}
    assert fields.text_of(record, Reason.NO_TEXT_FIELD) == "Great a fine film"
    assert fields.id_of(record) == "7"
    assert fields.text_of({"review": {"body": "only body", "title": None}}, Reason.NO_TEXT_FIELD) == "only body"
    for broken, reason in [
        ({"review": {}}, Reason.NO_TEXT_FIELD),
        ({"review": "flat"}, Reason.NO_TEXT_FIELD),
        ({"review": {"title": 3}}, Reason.TEXT_NOT_STRING),
        ({"review": {"title": " ", "body": ""}}, Reason.EMPTY_TEXT),
    ]:
        with pytest.raises(EventError) as caught:
            fields.text_of(broken, Reason.NO_TEXT_FIELD)
        assert caught.value.reason is reason, broken


@pytest.mark.parametrize("path", ["", ".a", "a.", "a..b", " a"])
def test_a_path_with_an_empty_name_is_refused(path):
    with pytest.raises(ValueError, match="dotted field path"):
        parse_path(path)


def test_plain_text_values_are_the_text():
    decode = EventDecoder("text")
    assert decode(b"\xef\xbb\xbfjust words", 100).text == "just words"
    assert decode(b'{"text": "kept whole"}', 100).text == '{"text": "kept whole"}'
    for value, reason in [
        (b"\xff\xfe", Reason.INVALID_UTF8),
        (b"  \n", Reason.EMPTY_TEXT),
        (b"x" * 101, Reason.TOO_LARGE),
    ]:
        with pytest.raises(EventError) as caught:
            decode(value, 100)
        assert caught.value.reason is reason


def test_a_framed_value_without_a_registry_is_an_unknown_schema_and_json_is_read_as_before():
    decode = EventDecoder("auto")
    with pytest.raises(EventError) as caught:
        decode(b"\x00\x00\x00\x00\x05\x02hi", 100)
    assert caught.value.reason is Reason.UNKNOWN_SCHEMA
    assert decode(b'{"id": 1, "text": "hello"}', 100).id == "1"


BINARY = [("ce_specversion", b"1.0"), ("ce_id", b"ce-1"), ("ce_source", b"/s"), ("ce_type", b"t")]
STRUCTURED = [("content-type", b"Application/CloudEvents+JSON; charset=utf-8")]


def test_a_cloudevents_id_is_the_events_id_unless_an_id_field_is_named():
    value = b'{"id": "own", "text": "hello"}'
    assert EventDecoder("auto")(value, 100, BINARY).id == "ce-1"
    named = EventDecoder("auto", Fields(id=parse_path("id"), id_given=True))
    assert named(value, 100, BINARY).id == "own"
    assert named(value, 100, BINARY).cloudevent == "ce-1"
    structured = orjson.dumps({"specversion": "1.0", "id": "ce-2", "data": {"id": "own", "text": "hi"}})
    assert EventDecoder("auto")(structured, 100, STRUCTURED).id == "ce-2"
    assert named(structured, 100, STRUCTURED).id == "own"
    assert EventDecoder("auto")(value, 100, [("ce_id", b"x")]).cloudevent is None, "no specversion: no CloudEvent"


def test_cloudevents_data_is_read_by_its_content_type_and_broken_ones_say_why():
    decode = EventDecoder("auto")
    assert decode(b"plain words", 100, [*BINARY, ("content-type", b"text/plain")]).text == "plain words"
    as_text = {"specversion": "1.0", "id": "c", "datacontenttype": "text/plain", "data_base64": "aGkgdGhlcmU="}
    assert decode(orjson.dumps(as_text), 100, STRUCTURED).text == "hi there"
    for document, reason in [
        (b"[1]", Reason.NOT_AN_OBJECT),
        (b"{", Reason.INVALID_JSON),
        (orjson.dumps({"specversion": "1.0", "id": 5, "data": {"text": "x"}}), Reason.NOT_AN_OBJECT),
        (orjson.dumps({"specversion": "1.0", "id": "c"}), Reason.MISSING_TEXT),
        (orjson.dumps({"specversion": "1.0", "id": "c", "data_base64": "!!"}), Reason.UNDECODABLE),
        (orjson.dumps({"specversion": "1.0", "id": "c", "data": [1, 2]}), Reason.MISSING_TEXT),
        (orjson.dumps({"specversion": "1.0", "id": "c", "data": {"body": "x"}}), Reason.MISSING_TEXT),
    ]:
        with pytest.raises(EventError) as caught:
            decode(document, 100, STRUCTURED)
        assert caught.value.reason is reason, document


def test_only_trace_context_and_cloudevents_headers_are_kept_and_none_too_long():
    headers = [("TraceParent", b"00-ab-cd-01"), ("x-secret", b"s"), ("ce_id", b"1"), ("ce_big", b"x" * 9000),
               ("tracestate", None)]  # fmt: skip
    assert kept_headers(headers) == [("traceparent", b"00-ab-cd-01"), ("ce_id", b"1")]
    assert kept_headers({"traceparent": b"t"}) == [("traceparent", b"t")], "Faust's mapping too"
    assert trace_headers(kept_headers(headers)) == [("traceparent", b"00-ab-cd-01")]


def test_unknown_schema_ids_are_asked_again_then_remembered_and_retries_are_rationed(schema_registry):
    naps: list[float] = []
    book = SchemaBook(RegistryAccess(schema_registry.url).client(), sleep=naps.append, retried_per_minute=2)
    for unknown in (2**30, 2**30 + 1):
        with pytest.raises(EventError) as caught:
            book.reader(unknown)
        assert caught.value.reason is Reason.UNKNOWN_SCHEMA
    assert book.fetches == 2 * LOOKUPS, "a replica may lag: each asked again"
    with pytest.raises(EventError):
        book.reader(2**30)
    assert book.fetches == 2 * LOOKUPS, "then remembered: no registry call per event"
    with pytest.raises(EventError):
        book.reader(2**30 + 2)
    assert book.fetches == 2 * LOOKUPS + 1, "past the ration, an unknown id is asked once"

    client = SchemaRegistryClient(schema_registry.client_config())
    schema = {"type": "record", "name": "Note", "fields": [{"name": "text", "type": "string"}]}
    schema_id = client.register_schema(f"notes-{free_port()}-value", Schema(orjson.dumps(schema).decode(), "AVRO"))
    assert book.reader(schema_id).format == "avro"
    fetched = book.fetches
    assert book.known(schema_id)
    book.reader(schema_id)
    assert book.fetches == fetched, "a cached schema costs no network call"


def test_a_registry_that_does_not_answer_is_unavailable_not_an_unknown_schema():
    book = SchemaBook(RegistryAccess(f"http://127.0.0.1:{free_port()}").client())
    with pytest.raises(RegistryUnavailableError):
        book.reader(1)
    assert not book.known(1), "asked again once it answers"
