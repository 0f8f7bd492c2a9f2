"""The analyst's page in a real browser: headless Debian Chromium against a real `exiflang serve`.

Uploads a splice made by `make-splices` (a JPEG with its host's EXIF), waits for the result and
checks that the overlay is drawn (canvas pixels), the verdict with its meaning, the claimed
EXIF table and the nearest reference photos' thumbnails (loaded images with alt text) appear;
then a broken JPEG, which must give a readable error.  Screenshots go to
``$EXIFLANG_ARTIFACTS`` (default: the test's tmp folder) as artifacts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.serve import browser

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    path = Path(os.environ.get("EXIFLANG_ARTIFACTS") or tmp_path_factory.mktemp("browser_artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def page(server):
    drv = browser.driver()
    try:
        drv.get(server.url + "/")
        yield drv
    finally:
        drv.quit()


def _text(drv, element_id: str) -> str:
    return drv.execute_script(f"return document.getElementById('{element_id}').textContent").strip()


def test_page_shows_overlay_verdict_and_claimed_exif(page, tiny, tmp_path, artifacts):
    browser.wait_for(page, lambda d: "reference index" in _text(d, "model-line"), 30, "the model line")
    spliced = browser.spliced_jpeg(tiny.test_photos, tmp_path)
    browser.choose(page, spliced)
    browser.wait_for(page, lambda d: _text(d, "verdict"), 300, "the detection verdict")
    # The verdict says what it means in words, the score is ranked or said to be unrankable.
    assert any(w in _text(page, "verdict") for w in ("spliced", "splicing", "Inconclusive", "No verdict"))
    assert "%" in _text(page, "score-text") or "cannot be ranked" in _text(page, "score-text")
    px = browser.overlay_pixels(page)
    assert px["width"] > 100 and px["opaque"] == px["width"] * px["height"] and px["spread"] > 50, px
    browser.wait_for(
        page,
        lambda d: d.execute_script(
            "return !document.getElementById('exif-table').hidden && "
            "document.querySelectorAll('#exif-table tbody tr').length > 0"
        ),
        300,
        "the claimed-EXIF table",
    )
    assert "Make" in _text(page, "exif-table")
    assert _text(page, "exif-verdict")
    browser.wait_for(page, lambda d: _text(d, "camera-verdict"), 300, "the lookup answer")
    # The nearest reference photos as thumbnails: every image loaded (decoded by the browser).
    thumbs = browser.wait_for(page, browser.thumbnails, 60, "the neighbours' thumbnails")
    assert len(thumbs) == 10 and all("missing" not in t for t in thumbs), thumbs
    assert all(max(t["width"], t["height"]) == 128 and t["alt"].startswith("Reference photo ") for t in thumbs), thumbs
    assert "similarity" in thumbs[0]["alt"]
    assert page.execute_script("return document.getElementById('error').hidden")
    browser.screenshot(page, artifacts / "page_splice.png")

    # Keyboard: the drop zone is focusable and the opacity slider redraws the overlay.
    before = browser.overlay_pixels(page)
    page.execute_script(
        "const o = document.getElementById('opacity'); o.value = 0;o.dispatchEvent(new Event('input'));"
    )
    after = browser.overlay_pixels(page)
    assert after != before
    assert page.execute_script(
        "const d = document.getElementById('drop'); d.focus();return document.activeElement === d"
    )
    # A neighbour's EXIF opens from the keyboard (its summary takes focus, Enter toggles it).
    summary = page.find_element(By.CSS_SELECTOR, "#neighbours summary")
    page.execute_script("arguments[0].focus()", summary)
    assert page.switch_to.active_element == summary
    summary.send_keys(Keys.ENTER)
    assert page.execute_script("return document.querySelector('#neighbours details').open")


def test_a_missing_thumbnail_is_a_readable_message(page):
    # Two neighbours as the lookup would send them: one whose index row has no thumbnail, one whose
    # thumbnail the service answers 404 for (no such row): each gets a message, not a broken image.
    page.execute_script("""
        showNeighbours({neighbours: [
          {row: 0, similarity: 0.5, key: "a", exif: {Make: "Acme"}, thumbnail: null},
          {row: 9999, similarity: 0.4, key: "b", exif: {}, thumbnail: "/v1/thumbnail/9999"},
        ]});
    """)
    shown = browser.wait_for(page, browser.thumbnails, 30, "the thumbnails' messages")
    assert shown[0] == {"missing": "No thumbnail: this photo could not be read when the index was built."}
    assert shown[1]["missing"].startswith("Thumbnail not available: row 9999: the reference index has 12 rows")
    assert not page.find_elements(By.CSS_SELECTOR, "#neighbours img")


def test_broken_jpeg_gives_a_readable_error(page, shared_data, artifacts):
    browser.choose(page, shared_data / "malformed" / "3ba6af611cc5467cfdbd5566561b8478.jpg")
    message = browser.wait_for(
        page,
        lambda d: d.execute_script("const e = document.getElementById('error'); return e.hidden ? '' : e.textContent"),
        120,
        "the error",
    )
    assert message.startswith("Could not analyse 3ba6af611cc5467cfdbd5566561b8478.jpg:"), message
    assert "does not decode" in message or "not a readable image" in message, message
    assert "Traceback" not in message and "\n" not in message
    browser.screenshot(page, artifacts / "page_error.png")
