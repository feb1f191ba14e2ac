"""`yume play` in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven by selenium)
opens the page, holds D, then the right arrow. The server must receive exactly those inputs in order, frames
must reach the canvas, and the page's fps and latency fields must be filled. The screenshot is kept (set
YUME_PLAY_SCREENSHOT=PATH to copy it, as the README's was made).

The model is the shipped tiny base (yume/weights/tiny_base): real worlds on the screen, its Euler schedule."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from test_play import running

BASE = Path(__file__).resolve().parents[1] / "yume" / "weights" / "tiny_base"


def chrome(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make test` installs them)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=960,820", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def wait_for(predicate, what: str, timeout: float = 90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_page_drives_the_world_with_held_keys(tmp_path, caplog):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from yume.config import load_profile
    from yume.play.launch import build_server
    from yume.play.server import PlayConfig

    server = build_server(BASE, load_profile("tiny", tmp_path / "work"), cfg=PlayConfig(port=0))
    shot = tmp_path / "play.png"
    with caplog.at_level(logging.INFO, logger="yume.play"), running(server) as port:
        driver = chrome(tmp_path)
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            text = lambda id_: driver.find_element(By.ID, id_).text  # noqa: E731
            wait_for(lambda: text("chunks").isdigit() and int(text("chunks")) >= 2, "the first chunks")
            driver.find_element(By.ID, "screen").click()
            ActionChains(driver).key_down("d").perform()
            wait_for(lambda: text("action") == "D:·", "a chunk generated with D held")
            ActionChains(driver).key_up("d").key_down(Keys.ARROW_RIGHT).perform()
            wait_for(lambda: text("action") == "None:→", "a chunk generated with the right arrow held")
            ActionChains(driver).key_up(Keys.ARROW_RIGHT).perform()
            wait_for(lambda: text("action") == "None:·", "a chunk with nothing held")
            wait_for(lambda: re.fullmatch(r"\d+(\.\d)?", text("fps")), "the fps field")
            assert float(text("fps")) > 0
            assert re.fullmatch(r"\d+ ms", text("latency")) and re.fullmatch(r"\d+ ms", text("chunk-time"))
            assert int(text("tokens")) > 0 and text("error") == ""
            painted = driver.execute_script(
                "const c = document.getElementById('screen');"
                "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                "let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2]; return s;")
            assert painted > 0  # frames reached the canvas
            driver.save_screenshot(str(shot))
        finally:
            driver.quit()
    received = [r.getMessage().split(" ")[-1] for r in caplog.records if " input #" in r.getMessage()]
    assert received == ["None:·", "D:·", "None:·", "None:→", "None:·"]
    assert shot.stat().st_size > 10_000
    if os.environ.get("YUME_PLAY_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["YUME_PLAY_SCREENSHOT"])
