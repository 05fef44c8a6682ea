"""The web page in a real browser: Debian's headless Chromium driven by selenium.

Skipped with the reason when ``chromium`` or ``chromedriver`` is absent (``.ci/run`` installs them).
The server runs in a subprocess on a free 127.0.0.1 port, serving a CB model of the tiny block
dataset (CB places new items from their content).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import train_and_export, write_blocks_folder

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="Debian chromium and chromium-driver are not installed (apt-get install chromium "
           "chromium-driver; .ci/run does it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, *extra: str) -> subprocess.Popen:
    """``latticerec serve`` in a subprocess; returns once /health answers."""
    proc = subprocess.Popen([sys.executable, "-m", "latticerec.serve", str(model), "--port",
                             str(port), *extra], env={**os.environ, "PYTHONPATH": str(SRC)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer /health within 60 s")


def chrome(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1280,900"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


@pytest.fixture
def served(tmp_path):
    model = train_and_export(tmp_path, "cb", write_blocks_folder(tmp_path / "blocks"))
    port = free_port()
    proc = start_server(model, port)
    yield f"http://127.0.0.1:{port}", model
    proc.terminate()
    proc.wait(timeout=10)


def test_page_lists_adds_and_shows_errors(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, model = served
    driver = chrome(tmp_path)
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(url + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert "cb - 40 users, 30 items" in driver.find_element(By.ID, "meta").text

        # a user's list: top-k with scores and titles, and the items they interacted with
        driver.find_element(By.ID, "user").send_keys("u3")
        driver.find_element(By.ID, "k").clear()
        driver.find_element(By.ID, "k").send_keys("5")
        driver.find_element(By.ID, "show").click()
        rows = "#recs tbody tr"
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 5)
        first = driver.find_elements(By.CSS_SELECTOR, rows)[0].text
        assert "item-" in first and "Title" in first
        api = httpx.get(url + "/users/u3/recommendations?k=5").json()["items"]
        assert first.split()[1] == api[0]["item"]
        seen = driver.find_elements(By.CSS_SELECTOR, "#seen a.item")
        assert len(seen) == len(httpx.get(url + "/users/u3/items").json()["items"]) > 0

        # click an item: its similar items
        driver.find_elements(By.CSS_SELECTOR, "#recs a.item")[0].click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar tbody tr")) == 10)
        assert api[0]["item"] in driver.find_element(By.ID, "similar-for").text

        # add an item from pasted feature vectors
        driver.find_element(By.ID, "new-item").send_keys("browser-item")
        driver.find_element(By.ID, "feat-image").send_keys(", ".join(["0.5"] * 8))
        driver.find_element(By.ID, "feat-text").send_keys(" ".join(["1"] * 6))
        driver.find_element(By.ID, "add").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "add-result"), "added browser-item"))
        assert httpx.get(url + "/health").json()["items"] == 31
        assert (model / "added_items.json").exists()

        # errors are shown on the page: a missing modality, then an unknown user
        driver.find_element(By.ID, "new-item").clear()
        driver.find_element(By.ID, "new-item").send_keys("half-item")
        driver.find_element(By.ID, "feat-text").clear()
        driver.find_element(By.ID, "add").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "error"), "modality 'text'"))
        driver.find_element(By.ID, "user").clear()
        driver.find_element(By.ID, "user").send_keys("nobody")
        driver.find_element(By.ID, "show").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "error"), "user 'nobody' is not a user"))
        assert driver.find_element(By.ID, "error").is_displayed()
        assert driver.find_elements(By.CSS_SELECTOR, rows) == []
    finally:
        driver.quit()
