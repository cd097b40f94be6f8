"""The control protocol in process: every shape of record a compacted control or status topic can
hold, read the way the worker and `stream-clf swap` read them (the latest record per key wins, a
tombstone deletes, a malformed record is refused with its kind and changes nothing)."""

import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_clf.kafka.control_records import (
    ControlState,
    InstanceLease,
    MalformedRecordError,
    SwapRequest,
    WorkerStatus,
)
from tests.control_records import malformed_requests, malformed_statuses

SERVING = {"*": {"model": "/models/a", "version": "0123456789abcdef"}}


def test_a_request_and_a_status_read_back_as_they_were_written():
    request = SwapRequest("g", "reviews", "/models/b", "fedcba9876543210", previous="/models/a", configured="x")
    status = WorkerStatus("g", "w-1", SERVING, SERVING, request.request, "refused", "no room", 0.5, follows=False)
    state = ControlState()
    assert state.read(request.key, request.encode()) == request
    assert state.read(status.key, status.encode()) == status
    assert request.key == b"swap/g/reviews"
    assert status.key == b"status/g/w-1"
    assert state.swaps == {("g", "reviews"): request}
    assert state.group_statuses("g") == {"w-1": status}


def test_the_latest_record_of_a_key_wins_as_compaction_keeps_it():
    state = ControlState()
    first, second = SwapRequest("g", "*", "/m/1", "1" * 16), SwapRequest("g", "*", "/m/2", "2" * 16)
    routed = SwapRequest("g", "news", "/m/3", "3" * 16)
    other_group = SwapRequest("h", "*", "/m/4", "4" * 16)
    for request in (first, routed, second, other_group):
        state.read(request.key, request.encode())
    assert state.swaps == {("g", "*"): second, ("g", "news"): routed, ("h", "*"): other_group}


def test_a_tombstone_deletes_its_key_and_only_its_key():
    state = ControlState()
    kept, gone = WorkerStatus("g", "w-1", SERVING, SERVING), WorkerStatus("g", "w-2", SERVING, SERVING)
    request = SwapRequest("g", "*", "/m/1", "1" * 16)
    for record in (kept, gone, request):
        state.read(record.key, record.encode())
    assert state.read(gone.key, None) is None
    assert state.read(request.key, None) is None
    assert state.read(b"status/g/never-seen", None) is None  # a tombstone of a key never written
    assert state.group_statuses("g") == {"w-1": kept}
    assert state.swaps == {}


@pytest.mark.parametrize(("key", "value"), malformed_requests("g"))
def test_a_malformed_request_is_refused_as_a_swap_record_and_changes_nothing(key, value):
    state = ControlState()
    valid = SwapRequest("g", "*", "/m/1", "1" * 16)
    state.read(valid.key, valid.encode())
    with pytest.raises(MalformedRecordError) as refused:
        state.read(key, value)
    assert refused.value.kind == ("swap" if key.startswith(b"swap/") else "other")
    assert state.swaps == {("g", "*"): valid}


@pytest.mark.parametrize(("key", "value"), malformed_statuses("g"))
def test_a_malformed_status_is_refused_as_a_status_record_and_changes_nothing(key, value):
    state = ControlState()
    with pytest.raises(MalformedRecordError) as refused:
        state.read(key, value)
    assert refused.value.kind == "status"
    assert state.statuses == {}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (None, b"{}"),  # no key: neither a request nor a status
        (b"", b"{}"),
        (b"swap/", SwapRequest("g", "*", "m", "0" * 16).encode()),  # no group in the key
        (b"status/g", WorkerStatus("g", "w", {}, {}).encode()),  # no worker in the key
        (b"status/g/w", WorkerStatus("g", "other", {}, {}).encode()),  # the key names another worker
        (b"swap/g", b"\xff\xfe not JSON"),
        (b"swap/g", orjson.dumps({"group": "g"})),  # fields missing
        (b"swap/g", SwapRequest("g", "*", "m", "0" * 16).encode().replace(b'"at":', b'"at":1e999,"x":')),  # inf
    ],
)
def test_records_whose_key_or_value_cannot_hold_a_request_or_status_are_refused(key, value):
    with pytest.raises(MalformedRecordError):
        ControlState().read(key, value)


@given(key=st.binary(max_size=64), value=st.one_of(st.none(), st.binary(max_size=256)))
def test_no_record_of_any_bytes_escapes_as_anything_but_a_malformed_record(key, value):
    """Whatever bytes a topic holds, reading them gives a request, a status, a tombstone, or
    MalformedRecordError: never another exception, which would end the reader."""
    try:
        ControlState().read(key, value)
    except MalformedRecordError as error:
        assert error.kind in ("swap", "status", "lease", "other")


@given(
    fields=st.dictionaries(
        st.sampled_from(["group", "target", "model", "expect", "request", "previous", "at", "configured"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.lists(st.integers())),
    )
)
def test_a_request_with_any_field_of_any_type_is_read_or_refused_never_half_read(fields):
    good = orjson.loads(SwapRequest("g", "*", "m", "0" * 16).encode())
    state = ControlState()
    try:
        value = orjson.dumps({**good, **fields})
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        request = state.read(b"swap/g", value)
    except MalformedRecordError:
        assert state.swaps == {}
        return
    assert isinstance(request, SwapRequest)
    assert all(isinstance(getattr(request, name), str) for name in ("group", "target", "model", "expect", "request"))
    assert isinstance(request.at, float | int)
    assert not isinstance(request.at, bool)
    assert math.isfinite(request.at)


def test_an_instance_lease_reads_back_renewed_and_a_tombstone_frees_the_instance():
    lease = InstanceLease("g", "stream-clf-0", "stream-clf-0-1a2b3c4d", "pod-host", 4242)
    state = ControlState()
    assert state.read(lease.key, lease.encode()) == lease
    assert lease.key == b"lease/g/stream-clf-0"
    renewed = lease.renewed()
    assert renewed.beat == 1
    assert state.read(renewed.key, renewed.encode()) == renewed
    assert state.leases == {("g", "stream-clf-0"): renewed}
    assert state.read(lease.key, None) is None
    assert state.leases == {}


LEASE = orjson.loads(InstanceLease("g", "i", "i-1", "h", 1).encode())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"lease/g", orjson.dumps(LEASE)),  # no instance in the key
        (b"lease/g/other", orjson.dumps(LEASE)),  # the key names another instance
        (b"lease/h/i", orjson.dumps(LEASE)),  # ... or another group
        (b"lease/g/i", b"not json"),
        (b"lease/g/i", b"[1, 2]"),
        (b"lease/g/i", orjson.dumps({**LEASE, "pid": "1"})),
        (b"lease/g/i", orjson.dumps({**LEASE, "beat": None})),
        (b"lease/g/i", orjson.dumps({**LEASE, "worker": ""})),
        (b"lease/g/i", orjson.dumps({**LEASE, "host": "h" * 5000})),
        (b"lease/g/i", orjson.dumps({key: value for key, value in LEASE.items() if key != "at"})),
        (b"lease/g/i", orjson.dumps(LEASE).replace(b'"at":', b'"at":1e999,"x":')),
    ],
)
def test_a_malformed_lease_is_refused_as_a_lease_record_and_changes_nothing(key, value):
    state = ControlState()
    held = InstanceLease("g", "i", "i-1", "h", 1)
    state.read(held.key, held.encode())
    with pytest.raises(MalformedRecordError) as refused:
        state.read(key, value)
    assert refused.value.kind == "lease"
    assert state.leases == {("g", "i"): held}
