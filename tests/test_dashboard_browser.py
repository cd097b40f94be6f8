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


def test_the_dashboard_loads_cleanly_and_follows_the_stream(
    kafka_bootstrap, topics, tiny_bundle, start_worker, browser, tmp_path
):
    port, control = free_port(), f"control-{topics.group}"
    canary = build_tiny_bundle(tmp_path / "canary", seed=7)
    shadow = build_tiny_bundle(tmp_path / "shadow", seed=8, lowercase=True)
    start_worker(
        topics, tiny_bundle, "--web-port", str(port), "--control-topic", control,
        "--canary-model", str(canary), "--canary-share", "0.3", "--shadow-model", str(shadow),
        "--min-confidence", "0.6",
    )  # fmt: skip
    wait_for_status(port, "/readyz", 200)
    browser.get(f"http://127.0.0.1:{port}/dashboard")
    deadline = time.monotonic() + 20
    while "tiny-random" not in browser.find_element("id", "model").text and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "tiny-random" in browser.find_element("id", "model").text
    before = _number(browser, "results-out")

    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(60)]
    events = [(f"k{i % 20}".encode(), orjson.dumps({"id": f"d{i}", "text": text})) for i, text in enumerate(texts)]
    produce(kafka_bootstrap, topics.input, [*events, (None, b"not json")])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (_number(browser, "results-out"), _number(browser, "dead-letters")) != (
        before + 60,
        1,
    ):
        time.sleep(0.5)
    assert _number(browser, "events-in") == 61
    assert _number(browser, "results-out") == before + 60
    assert _number(browser, "dead-letters") == 1

    swap = [sys.executable, "-m", "stream_clf", "swap", "--brokers", kafka_bootstrap, "--group", topics.group,
            "--control-topic", control, "--model", str(canary)]  # fmt: skip
    assert subprocess.run(swap, capture_output=True, timeout=120).returncode == 0
    produce(kafka_bootstrap, topics.input, events)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _number(browser, "results-out") != before + 120:
        time.sleep(0.5)
    stats = orjson.loads(get(port, "/dashboard/stats.json")[1])
    assert browser.find_element("id", "swaps").text == "1 / 0"
    assert _number(browser, "abstained") == sum(stats["abstentions"].values()) > 0
    assert browser.find_element("id", "agreement").text == f"{stats['shadow']['agreement'] * 100:.1f}%"
    roles = [row.text.split()[0] for row in browser.find_elements("css selector", "#models tr")[1:]]
    assert roles == ["default", "canary", "shadow"]
    rows = len(browser.find_elements("css selector", "#shadow tr"))
    assert rows == 1 + len(stats["shadow"]["table"]), "a header and a row per live label"
    time.sleep(2)  # a few more polls, so the charts have points to draw
    screenshot = Path(os.environ.get("STREAM_CLF_SCREENSHOT", tmp_path / "dashboard.png"))
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
