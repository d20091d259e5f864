"""The operator page in a real browser (Debian's chromium + chromium-driver, headless, selenium)
against the real daemon on the folder camera: the latest verdict shows, the NG gallery fills, the
view updates without a reload, and a feedback click writes the file.

Screenshots go to ``test-artifacts/browser/`` (git-ignored). ``make screenshot`` runs this test
with ``EDGE_INSPECTOR_SCREENSHOT=docs/images/operator-page.png`` to refresh README's picture.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_inspector.drift import drift_reference, image_stats
from tests.helpers.page import TOKEN, start_page_daemon
from tests.helpers.station import REPO, stop_daemon
from tests.helpers.tiny_bundle import make_tiny_bundle

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; .ci/run does)")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _click_good_on_newest_card(driver):
    """The newest NG card's id after clicking its "good" button; False (try again) when the gallery
    re-rendered between finding the card and clicking — the daemon keeps publishing results."""
    try:
        card = driver.find_element(By.CSS_SELECTOR, "#gallery .card")
        card_id = card.get_attribute("data-card")
        card.find_element(By.CSS_SELECTOR, "button.fb-good").click()
        return card_id
    except StaleElementReferenceException:
        return False


ARTIFACTS = REPO / "test-artifacts" / "browser"


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def write_line_parts(folder: Path, n: int = 9) -> list[Path]:
    """Parts with a little surface texture (the tiny bundle scores them low); every third one has
    a scratch or a bright spot somewhere (scored high): NG."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.normal(127, 14, (240, 320)).astype(np.float32), (0, 0), 2)
        if i % 3 == 2:
            x, y = int(rng.integers(40, 260)), int(rng.integers(30, 190))
            if i % 2:
                cv2.line(img, (x, y), (x + int(rng.integers(20, 50)), y + int(rng.integers(-20, 20))), 10, 3)
            else:
                cv2.circle(img, (x, y), int(rng.integers(5, 12)), 250, -1)
        path = folder / f"part_{i:04d}.png"
        cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
        paths.append(path)
    return paths


def _shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def test_operator_page_in_a_real_browser(tmp_path, mosquitto, browser):
    images = tmp_path / "images"
    paths = write_line_parts(images)
    # a drift reference as training would write it (good parts only: the NG third shows as drift)
    reference = drift_reference([0.04, 0.05, 0.06] * 10, [image_stats(cv2.imread(str(p))) for p in paths])
    model = make_tiny_bundle(tmp_path / "model", image_size=64, threshold=0.5, drift_reference=reference)
    proc, base = start_page_daemon(tmp_path, mosquitto.port, model, images, camera={"fps": 4.0},
                                   drift={"window": 20, "min_samples": 20})
    try:
        wait = WebDriverWait(browser, 60, poll_frequency=0.2)
        wait.until(lambda d: proc.poll() is None and _loads(d, base))
        browser.execute_script("window.__notReloaded = true")
        verdict = browser.find_element(By.ID, "verdict")
        wait.until(lambda d: verdict.text in ("OK", "NG"))
        first_card = verdict.get_attribute("data-card")
        # live: new parts replace the latest one, in the same page (no reload)
        wait.until(lambda d: verdict.get_attribute("data-card") != first_card)
        assert browser.execute_script("return window.__notReloaded === true")
        assert browser.find_element(By.ID, "link").text == "live"
        # the NG gallery fills as blotched parts pass
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .card")) >= 2)
        assert int(browser.find_element(By.ID, "count-ng").text) >= 2
        assert browser.find_element(By.ID, "latest-img").get_attribute("naturalWidth") != "0"
        wait.until(lambda d: d.find_element(By.ID, "drift").get_attribute("data-status") in ("ok", "alert"))
        _shot(browser, "live.png")

        # feedback: name + token, then "good — false alarm" on the newest NG card
        browser.find_element(By.ID, "who").send_keys("anna")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "why").send_keys("printed marking, not a scratch")
        card_id = wait.until(_click_good_on_newest_card)
        wait.until(lambda d: "saved as good" in d.find_element(By.ID, "feedback-msg").text)
        saved = list((tmp_path / "feedback" / "test" / "good").glob(f"*_c{card_id}.png"))
        assert len(saved) == 1
        record = json.loads(saved[0].with_suffix(".json").read_text())
        assert record["who"] == "anna" and record["why"] == "printed marking, not a scratch" and record["label"] == "good"
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .card .judged")) >= 1)
        shot = _shot(browser, "feedback.png")
        target = os.environ.get("EDGE_INSPECTOR_SCREENSHOT")
        if target:  # make screenshot: README's picture
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, target)
        assert browser.execute_script("return window.__notReloaded === true")
    finally:
        stop_daemon(proc)


def _loads(driver, base: str) -> bool:
    try:
        driver.get(base + "/")
    except Exception:  # noqa: BLE001 - the daemon is still starting
        return False
    return driver.find_elements(By.ID, "verdict") != []
