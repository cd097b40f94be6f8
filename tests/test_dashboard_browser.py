"""The live dashboard in a real headless Chromium: it loads cleanly and its numbers move with the stream."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from stream_clf.tools.broker import free_port
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS, build_tiny_bundle
from tests.kafka_helpers import produce
from tests.web_helpers import get, wait_for_status

pytestmark = pytest.mark.broker

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no Chromium: run .ci/system-packages (Debian's chromium and chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _number(driver, element_id: str) -> int:
    return int(driver.find_element("id", element_id).text)


def _stats(port: int) -> dict:
    return orjson.loads(get(port, "/dashboard/stats.json")[1])


def _group_total(name: str, ports: list[int]) -> int:
    """A count summed over the group's workers (each page counts its own worker's events)."""
    return sum(_stats(port)[name] if name != "dead_letters" else sum(_stats(port)[name].values()) for port in ports)


def _await(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.5)


def _fleet_rows(browser) -> list[list[str]]:
    """The group table's rows, read in one go (the page redraws it every poll)."""
    script = (
        "return [...document.querySelectorAll('#fleet tr')].slice(1).map(r => [...r.cells].map(c => c.textContent))"
    )
    return browser.execute_script(script)


def test_the_dashboard_loads_cleanly_follows_the_stream_and_shows_the_group(
    kafka_bootstrap, topics, tiny_bundle, start_worker, browser, tmp_path
):
    ports, control = [free_port(), free_port()], f"control-{topics.group}"
    port = ports[0]
    canary = build_tiny_bundle(tmp_path / "canary", seed=7)
    shadow = build_tiny_bundle(tmp_path / "shadow", seed=8, lowercase=True)
    served = ("--control-topic", control, "--canary-model", str(canary), "--canary-share", "0.3",
              "--shadow-model", str(shadow), "--min-confidence", "0.6")  # fmt: skip
    # Two workers of one group: the page is served by the first and shows the group, not only itself.
    for name, web in zip(("first", "second"), ports, strict=True):
        start_worker(topics, tiny_bundle, "--web-port", str(web), "--instance", name, *served)
    for web in ports:
        wait_for_status(web, "/readyz", 200)
    browser.get(f"http://127.0.0.1:{port}/dashboard")
    _await(lambda: "tiny-random" in browser.find_element("id", "model").text, timeout=20)
    assert "tiny-random" in browser.find_element("id", "model").text

    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(60)]
    events = [(f"k{i % 20}".encode(), orjson.dumps({"id": f"d{i}", "text": text})) for i, text in enumerate(texts)]
    produce(kafka_bootstrap, topics.input, [*events, (None, b"not json")])
    _await(lambda: (_group_total("results_out", ports), _group_total("dead_letters", ports)) == (60, 1))
    assert _group_total("events_in", ports) == 61
    own = _stats(port)
    _await(lambda: _number(browser, "results-out") == own["results_out"], timeout=10)
    assert _number(browser, "events-in") == own["events_in"]
    assert _number(browser, "results-out") == own["results_out"]
    assert _number(browser, "dead-letters") == sum(own["dead_letters"].values())

    # The group: both members, each input partition with one of them, and the model each serves.
    _await(lambda: len(_fleet_rows(browser)) == 2 and all(row[2] != "none" for row in _fleet_rows(browser)), 30)
    members = _fleet_rows(browser)
    assert sorted(row[0].split("-")[0] for row in members) == ["first", "second"]
    assert sorted(row[0].endswith("(this one)") for row in members) == [False, True]
    assert next(row[0] for row in members if row[0].endswith("(this one)")).startswith("first-")
    partitions = sorted(part for row in members for part in row[2].split())
    assert partitions == sorted(f"{topics.input}/{p}" for p in range(4)), "each partition with one member"
    assert [row[5] for row in members] == [own["model"]["version"]] * 2
    assert all(int(row[4]) >= 0 for row in members)
    assert browser.find_element("id", "fleet-title").text == f"The group {topics.group} · 2 members"

    swap = [sys.executable, "-m", "stream_clf", "swap", "--brokers", kafka_bootstrap, "--group", topics.group,
            "--control-topic", control, "--model", str(canary)]  # fmt: skip
    assert subprocess.run(swap, capture_output=True, timeout=120).returncode == 0
    produce(kafka_bootstrap, topics.input, events)
    _await(lambda: _group_total("results_out", ports) == 120)
    stats = _stats(port)
    _await(lambda: _number(browser, "results-out") == stats["results_out"], timeout=10)
    assert browser.find_element("id", "swaps").text == "1 / 0"
    assert _number(browser, "abstained") == sum(stats["abstentions"].values()) > 0
    assert browser.find_element("id", "agreement").text == f"{stats['shadow']['agreement'] * 100:.1f}%"
    roles = [row.text.split()[0] for row in browser.find_elements("css selector", "#models tr")[1:]]
    assert roles == ["default", "canary", "shadow"]
    rows = len(browser.find_elements("css selector", "#shadow tr"))
    assert rows == 1 + len(stats["shadow"]["table"]), "a header and a row per live label"
    # Both members report the swapped model in the group view (from their statuses).
    _await(lambda: {row[5] for row in _fleet_rows(browser)} == {stats["model"]["version"]}, timeout=30)
    assert {row[5] for row in _fleet_rows(browser)} == {stats["model"]["version"]}
    time.sleep(2)  # a few more polls, so the charts have points to draw
    screenshot = Path(os.environ.get("STREAM_CLF_SCREENSHOT", tmp_path / "dashboard.png"))
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
