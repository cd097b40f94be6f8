"""``stream-clf soak`` in its short form: steady load of every length, nothing lost, memory flat after warm-up.

The 20-minute run is done by hand; docs/delivery.md records it.
"""

import subprocess
import sys

import orjson
import pytest

from stream_clf.tools.bench.soak import MAX_RSS_GROWTH

pytestmark = pytest.mark.broker


def test_a_short_soak_loses_nothing_and_memory_stays_flat(kafka_bootstrap, tiny_bundle, tmp_path):
    report_file = tmp_path / "soak.json"
    command = [sys.executable, "-m", "stream_clf", "soak", "--model", str(tiny_bundle), "--minutes", "0.5",
               "--rate", "40", "--interval", "3", "--mix", "lengths", "--brokers", kafka_bootstrap,
               "--json", str(report_file)]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    report = orjson.loads(report_file.read_bytes())
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    assert (report["sent"], report["received"], report["lost"]) == (1200, 1200, 0)
    assert len(report["samples"]) >= 8
    assert all(sample["rss_mib"] > 0 for sample in report["samples"])
    assert report["rss_growth_after_warmup"] <= MAX_RSS_GROWTH
    assert report["worker_exit_code"] == 0
    assert "PASSED" in finished.stdout
