"""Control records that are not what they claim: every field of the wrong type, keys that lie, values
that are not JSON. Shared by the in-process protocol tests and the tests through the broker."""

import orjson

from stream_clf.kafka.control_records import SwapRequest


def malformed_requests(group: str) -> list[tuple[bytes | None, bytes | None]]:
    """Swap requests that are not ones: every field of the wrong type, keys that lie, values that are not JSON."""
    good = orjson.loads(SwapRequest(group, "*", "m", "0123456789abcdef").encode())

    def request(key: str | bytes, **fields: object) -> tuple[bytes, bytes]:
        raw = key if isinstance(key, bytes) else key.encode()
        return raw, orjson.dumps({**good, **fields})

    return [
        request(f"swap/{group}/x", target=["a"], model="m"),  # the record: a list where a string goes
        request(f"swap/{group}", at="yesterday"),
        request(f"swap/{group}/other", target="other", at={"when": 1}),
        request(f"swap/{group}", model=123),
        request(f"swap/{group}", expect=None),
        request(f"swap/{group}", group=["g"]),
        request(f"swap/{group}", request=True),
        request(f"swap/{group}", previous=7),
        request(f"swap/{group}", at=True),
        request(f"swap/{group}", group="another-group"),  # the key says one group, the value another
        request(b"swap/\xff\xfe", target="*"),
        request("nonsense", target="*"),
        (f"swap/{group}".encode(), b'{"group": "half a record'),
        (f"swap/{group}".encode(), b"[1, 2, 3]"),
        (f"swap/{group}".encode(), b'"a string"'),
    ]  # (a record with no key cannot be: the broker refuses it on a compacted topic)


def malformed_statuses(group: str) -> list[tuple[bytes, bytes]]:
    good = {"group": group, "worker": "w", "serving": {}, "configured": {}, "at": 1.0}

    def status(**fields: object) -> tuple[bytes, bytes]:
        return f"status/{group}/w".encode(), orjson.dumps({**good, **fields})

    return [
        status(group=5),
        status(worker=None),
        status(serving="all of them"),
        status(serving={"*": {"model": 1, "version": "x"}}),
        status(seconds="3"),
        status(outcome="exploded"),
        status(follows="yes"),
    ]
