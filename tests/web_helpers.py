"""Reading a running worker's web endpoints from tests."""

import time
import urllib.error
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["exported_names", "get", "scrape", "wait_for_status"]


def get(port: int, path: str) -> tuple[int, bytes]:
    """Status and body of ``GET http://127.0.0.1:port/path``; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def wait_for_status(port: int, path: str, status: int, timeout: float = 90) -> dict:
    """Poll until ``path`` answers ``status``; return its JSON body."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = get(port, path)
        if seen[0] == status:
            return orjson.loads(seen[1])
        time.sleep(0.5)
    raise AssertionError(f"{path} never answered {status}; last: {seen}")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, keyed by name and sorted labels."""
    status, body = get(port, "/metrics")
    assert status == 200, status
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


# The sample names each kind of metric family writes.
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names(port: int) -> set[str]:
    """Every sample name ``/metrics`` declares, including those of labelled metrics with no series yet."""
    status, body = get(port, "/metrics")
    assert status == 200, status
    return {
        family.name + suffix
        for family in text_string_to_metric_families(body.decode())
        for suffix in _SUFFIXES.get(family.type, ("",))
    }
