"""The event codec: every dead-letter reason, the accepted shapes, and a fuzzed never-crash promise."""

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_clf.errors import EventError, Reason
from stream_clf.worker.events import Source, TextEvent, dead_letter_headers, decode_event, encode_result

LIMIT = 8192


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, Reason.INVALID_JSON),
        (b"", Reason.INVALID_JSON),
        (b'{"text": "unterminated', Reason.INVALID_JSON),
        (b'{"text": "a"} trailing', Reason.INVALID_JSON),
        (b'{"text": ' + b"[" * 2000 + b"]" * 2000 + b"}", Reason.INVALID_JSON),
        (b"[" * 500 + b"]" * 500, Reason.NOT_AN_OBJECT),
        (b'{"a":' * 200 + b"1" + b"}" * 200, Reason.MISSING_TEXT),
        (b'{"text": "\\ud800"}', Reason.INVALID_JSON),
        (b"[1, 2]", Reason.NOT_AN_OBJECT),
        (b'"just a string"', Reason.NOT_AN_OBJECT),
        (b"null", Reason.NOT_AN_OBJECT),
        (b'{"body": "no text field"}', Reason.MISSING_TEXT),
        (b'{"text": 3}', Reason.TEXT_NOT_STRING),
        (b'{"text": null}', Reason.TEXT_NOT_STRING),
        (b'{"text": ["a"]}', Reason.TEXT_NOT_STRING),
        (b'{"text": ""}', Reason.EMPTY_TEXT),
        (b'{"text": " \\n\\t\\u3000"}', Reason.EMPTY_TEXT),
        (b'{"text": "' + b"x" * LIMIT + b'"}', Reason.TOO_LARGE),
        (b'{"text": "caf\xe9"}', Reason.INVALID_UTF8),
        (b'{"text": "\xed\xa0\x80"}', Reason.INVALID_UTF8),
    ],
)
def test_each_malformed_event_is_rejected_with_its_reason(value, reason):
    with pytest.raises(EventError) as caught:
        decode_event(value, LIMIT)
    assert caught.value.reason is reason
    assert caught.value.detail
    assert "\n" not in caught.value.detail


def test_a_valid_event_keeps_its_id_text_and_meta():
    event = decode_event(b'{"id": "a-1", "text": "Hello", "meta": {"user": 7}, "extra": true}', LIMIT)
    assert event == TextEvent(text="Hello", id="a-1", meta={"user": 7})


@pytest.mark.parametrize(
    ("raw_id", "expected"), [(None, None), (12, "12"), (1.5, "1.5"), (True, "true"), ({"x": 1}, None)]
)
def test_non_string_ids_are_kept_as_json_text_or_dropped(raw_id, expected):
    value = orjson.dumps({"id": raw_id, "text": "t"})
    assert decode_event(value, LIMIT).id == expected


def test_text_with_nul_rtl_emoji_and_combining_marks_is_accepted_unchanged():
    text = "a\x00b שלום 👍🏽 e\u0301"
    assert decode_event(orjson.dumps({"text": text}), LIMIT).text == text


def test_a_utf8_byte_order_mark_is_ignored():
    assert decode_event(b'\xef\xbb\xbf{"text": "hi"}', LIMIT).text == "hi"


def test_result_record_has_the_contract_fields():
    source = Source("texts", 2, 41)
    value = orjson.loads(
        encode_result(
            event_id=source.default_id,
            label="pos",
            scores={"neg": 0.25, "pos": 0.75},
            model="m",
            model_version="v1",
            source=source,
            meta={"k": 1},
            truncated=True,
        )
    )
    assert value == {
        "id": "texts:2:41",
        "label": "pos",
        "score": 0.75,
        "scores": {"neg": 0.25, "pos": 0.75},
        "model": "m",
        "model_version": "v1",
        "source": {"topic": "texts", "partition": 2, "offset": 41},
        "meta": {"k": 1},
        "truncated": True,
        "chunks": 1,
    }


def test_top_k_and_multi_label_fields_are_added_on_request():
    value = orjson.loads(
        encode_result(
            event_id="e",
            label="b",
            scores={"a": 0.2, "b": 0.7, "c": 0.6},
            model="m",
            model_version="v",
            source=Source("t", 0, 0),
            meta=None,
            truncated=False,
            chunks=3,
            top_k=2,
            labels=["b", "c"],
        )
    )
    assert value["chunks"] == 3
    assert value["top_k"] == [{"label": "b", "score": 0.7}, {"label": "c", "score": 0.6}]
    assert value["labels"] == ["b", "c"]


def test_dead_letter_headers_name_the_reason_and_the_source():
    error = EventError(Reason.EMPTY_TEXT, "blank\nline")
    headers = dict(dead_letter_headers(error, Source("texts", 0, 9)))
    assert headers == {
        "error.reason": b"empty_text",
        "error.detail": b"blank line",
        "source.topic": b"texts",
        "source.partition": b"0",
        "source.offset": b"9",
    }


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(st.one_of(st.binary(max_size=300), JSON.map(orjson.dumps)))
def test_any_bytes_decode_to_an_encodable_event_or_are_rejected_with_a_reason(value):
    try:
        event = decode_event(value, LIMIT)
    except EventError as error:
        assert error.reason in Reason
    else:
        assert event.text.strip()
        source = Source("t", 0, 0)
        encode_result(
            event_id=event.id or source.default_id,
            label="a",
            scores={"a": 1.0},
            model="m",
            model_version="v",
            source=source,
            meta=event.meta,
            truncated=False,
        )


@given(st.text(min_size=1).filter(str.strip), st.one_of(st.none(), st.text()), JSON)
def test_any_valid_object_round_trips(text, event_id, meta):
    value = orjson.dumps({"id": event_id, "text": text, "meta": meta})
    assert decode_event(value, 1 << 20) == TextEvent(text=text, id=event_id, meta=meta)
