"""The shipped alert rules and Grafana dashboard against a real Prometheus (Debian's package) scraping
live workers: two of one group that process events (with a shadow model, --min-confidence and a swap,
so that every panel has something to show), and a third whose events are written through a Schema
Registry that does not answer: it reads them, waits for their schema (as it must: an outage never
dead-letters an event) and finishes none.

Every panel's PromQL, evaluated through Prometheus's HTTP API, returns series with finite values; the
no-progress alert fires for the stalled worker and only for it, from the shipped rules file with only
its ``for:`` durations shortened (promtool's tests, beside it, run them as shipped)."""

import math
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest
import yaml

from stream_clf.model.bundle import load_bundle
from stream_clf.tools.broker import free_port
from stream_clf.tools.build.tiny_model import build_tiny_bundle
from tests.kafka_helpers import Topics, WorkerProcess, collect, ids_seen, keyed_events, produce, produce_steadily
from tests.web_helpers import wait_for_status

pytestmark = pytest.mark.broker

ROOT = Path(__file__).parent.parent
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "stream-clf.json"
DOCS = ROOT / "docs" / "operations.md"


def _needs(tool: str | None, name: str) -> str:
    if tool is None:
        pytest.skip(f"no {name}: run .ci/system-packages (Debian's prometheus package)")
    return tool


def test_promtool_checks_and_unit_tests_every_rule_with_its_shipped_durations():
    promtool = _needs(PROMTOOL, "promtool")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"], cwd=RULES.parent, capture_output=True, text=True, timeout=120
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((RULES.parent / "alerts.test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert fired == alerts, "every rule is shown firing in the unit tests"
    runbook = DOCS.read_text()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            anchor = rule["annotations"]["runbook"].partition("#")[2]
            assert anchor == rule["alert"].lower()
            assert f"#### {rule['alert']}" in runbook, f"no runbook entry for {rule['alert']}"


def _shortened(rules: Path, to: Path, duration: str) -> Path:
    """The shipped rules with every ``for:`` set to ``duration``, and nothing else changed."""
    document = yaml.safe_load(rules.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = duration
    to.write_text(yaml.safe_dump(document))
    return to


class Prometheus:
    """Debian's Prometheus on loopback, scraping ``targets`` every second, with ``rules``."""

    def __init__(self, root: Path, targets: list[str], rules: Path) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "stream-clf", "static_configs": [{"targets": targets}]}],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = root / "prometheus.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._await_ready()

    def _await_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            try:
                self.api("/api/v1/status/buildinfo")
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("Prometheus did not answer")

    def api(self, path: str, **query: str) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = orjson.loads(response.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("/api/v1/query", query=expr)["result"]

    def firing(self) -> list[dict]:
        return [alert for alert in self.api("/api/v1/alerts")["alerts"] if alert["state"] == "firing"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def test_every_panel_has_finite_series_and_a_stalled_worker_fires_the_no_progress_alert(
    kafka_bootstrap, tiny_bundle, tmp_path
):
    _needs(PROMETHEUS, "prometheus")
    topics, stalled_topics = Topics.fresh(kafka_bootstrap), Topics.fresh(kafka_bootstrap)
    unanswered = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    control = f"control-{topics.group}"
    shadow = build_tiny_bundle(tmp_path / "shadow", seed=8)
    swapped = build_tiny_bundle(tmp_path / "swapped", seed=9)
    ports = [free_port() for _ in range(3)]
    served = ("--control-topic", control, "--shadow-model", str(shadow), "--min-confidence", "0.9",
              "--model-root", str(tmp_path))  # fmt: skip
    workers = [
        WorkerProcess(kafka_bootstrap, topics, tiny_bundle, tmp_path / f"w{i}.log",
                      ("--web-port", str(ports[i]), "--instance", f"w{i}", *served)).start()
        for i in range(2)
    ] + [
        WorkerProcess(kafka_bootstrap, stalled_topics, tiny_bundle, tmp_path / "stalled.log",
                      ("--web-port", str(ports[2]), "--instance", "stalled", "--schema-registry", unanswered)).start()
    ]  # fmt: skip
    rules = _shortened(RULES, tmp_path / "alerts.yml", "5s")
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{port}" for port in ports], rules)
    try:
        for port in ports:
            wait_for_status(port, "/readyz", 200, timeout=120)
        feeder = produce_steadily(kafka_bootstrap, topics.input, keyed_events(600), seconds=20)
        framed = [(key, b"\x00\x00\x00\x00\x07" + value) for key, value in keyed_events(50)]  # schema id 7
        produce(kafka_bootstrap, stalled_topics.input, framed)
        time.sleep(5)
        swap = [sys.executable, "-m", "stream_clf", "swap", "--brokers", kafka_bootstrap, "--group", topics.group,
                "--control-topic", control, "--model", str(swapped),
                "--expect-version", load_bundle(swapped).version]  # fmt: skip
        answered = subprocess.run(swap, capture_output=True, text=True, timeout=120)
        assert answered.returncode == 0, answered.stdout + answered.stderr
        feeder.join()
        collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 600), timeout=120, watch=workers)
        time.sleep(3)  # a few more scrapes

        for panel in orjson.loads(DASHBOARD.read_bytes())["panels"]:
            for target in panel["targets"]:
                series = prometheus.query(target["expr"])
                assert series, f"panel {panel['title']!r}: {target['expr']} returns no series"
                for one in series:
                    value = float(one["value"][1])
                    assert math.isfinite(value), f"panel {panel['title']!r}: {target['expr']} = {value} {one}"

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stalled = [a for a in prometheus.firing() if a["labels"]["alertname"] == "StreamClfNoProgress"]
            if stalled:
                break
            time.sleep(1)
        assert [alert["labels"]["instance"] for alert in stalled] == [f"127.0.0.1:{ports[2]}"]
        others = {alert["labels"]["alertname"] for alert in prometheus.firing()} - {"StreamClfNoProgress"}
        assert others <= {"StreamClfAbstentionRate"}, "the healthy workers abstain (a random model) and nothing else"
        for worker in workers:
            worker.assert_running()
    finally:
        prometheus.stop()
        for worker in workers:
            worker.kill()
