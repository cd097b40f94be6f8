"""The live dashboard in a real headless Chromium: it loads cleanly and its numbers move with the stream."""

import os
import shutil
import time
from pathlib import Path

import orjson
import pytest

from stream_clf.kafka.broker import free_port
from tests.kafka_helpers import produce
from tests.web_helpers import wait_for_status

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
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
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
    port = free_port()
    start_worker(topics, tiny_bundle, "--web-port", str(port))
    wait_for_status(port, "/readyz", 200)
    browser.get(f"http://127.0.0.1:{port}/dashboard")
    deadline = time.monotonic() + 20
    while "tiny-random" not in browser.find_element("id", "model").text and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "tiny-random" in browser.find_element("id", "model").text
    before = _number(browser, "results-out")

    events = [(None, orjson.dumps({"id": f"d{i}", "text": f"dashboard event {i}"})) for i in range(60)]
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
    time.sleep(2)  # a few more polls, so the charts have points to draw
    screenshot = Path(os.environ.get("STREAM_CLF_SCREENSHOT", tmp_path / "dashboard.png"))
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
