"""Driving the analyst's page in headless Chromium: Debian's ``chromium`` + ``chromium-driver``.

Selenium is pointed at ``/usr/bin/chromedriver`` and ``/usr/bin/chromium`` explicitly, with
``SE_OFFLINE=true``, so selenium-manager never downloads a driver or a browser.  Also used by
hand for the README's screenshot (docs/serve.md says how).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
from pathlib import Path
from typing import Any

from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = (
    "Debian's chromium + chromium-driver are needed (`make test` installs them: "
    "apt-get install -y chromium chromium-driver)"
)


def driver(width: int = 1400, height: int = 1800) -> Any:
    """A headless Chromium session (a readable failure when the Debian packages are missing)."""
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager: never reach out for drivers or browsers
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for exe in (CHROMIUM, CHROMEDRIVER):
        if not exe.exists() and not shutil.which(exe.name):
            raise AssertionError(f"{exe}: missing. {MISSING}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--disable-extensions",
        "--no-first-run",
    ):
        opts.add_argument(arg)
    service = Service(str(CHROMEDRIVER if CHROMEDRIVER.exists() else shutil.which("chromedriver")))
    return webdriver.Chrome(service=service, options=opts)


def spliced_jpeg(photos: Path, out: Path, max_side: int = 320, min_side: int = 128, seed: int = 0) -> Path:
    """One splice made by `make-splices` from ``photos``, saved as a JPEG carrying its host photo's
    EXIF (as a forger's re-save would): the page then has both a splice and a claimed EXIF."""
    from exiflang.eval.benchmark.splices import make_splices

    make_splices([photos], out / "set", 1, seed, authentic=0, max_side=max_side, min_side=min_side, progress=False)
    row = next(csv.DictReader((out / "set" / "manifest.csv").open()))
    host = Image.open(row["host_file"])
    path = out / "spliced.jpg"
    Image.open(out / "set" / row["image"]).convert("RGB").save(
        path, "JPEG", quality=95, exif=host.info.get("exif", b"")
    )
    return path


def wait_for(drv: Any, condition, timeout: float, what: str) -> Any:
    """Poll ``condition(drv)`` until truthy; an AssertionError naming ``what`` (and the page's
    error box) after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition(drv)
        if value:
            return value
        time.sleep(0.25)
    err = drv.execute_script("return document.getElementById('error').textContent")
    raise AssertionError(f"page: {what} not seen in {timeout} s (error box: {err!r})")


def choose(drv: Any, path: Path) -> None:
    """Give the page's file input ``path`` (what choosing a photo in the dialog does)."""
    from selenium.webdriver.common.by import By

    drv.find_element(By.ID, "file").send_keys(str(path))


def overlay_pixels(drv: Any) -> dict:
    """What the overlay canvas holds: size, opaque pixels, the spread of its red channel, the sum of its RGB."""
    return drv.execute_script("""
        const c = document.getElementById('overlay');
        if (!c.width || !c.height) return {width: 0, height: 0, opaque: 0, spread: 0, total: 0};
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let opaque = 0, lo = 255, hi = 0, total = 0;
        for (let i = 0; i < d.length; i += 4) {
          if (d[i + 3] > 0) opaque++;
          lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]);
          total += d[i] + d[i + 1] + d[i + 2];
        }
        return {width: c.width, height: c.height, opaque: opaque, spread: hi - lo, total: total};
    """)


def thumbnails(drv: Any) -> list[dict] | None:
    """The neighbours' thumbnails once every one has loaded (``None`` before): each image's
    natural size and alt text, or the message shown in its place."""
    return drv.execute_script("""
        const items = [...document.querySelectorAll('#neighbours li')];
        if (!items.length) return null;
        const out = [];
        for (const li of items) {
          const img = li.querySelector('img'), missing = li.querySelector('.no-thumb');
          if (missing) { out.push({missing: missing.textContent}); continue; }
          if (!img || !img.complete || !img.naturalWidth) return null;
          out.push({width: img.naturalWidth, height: img.naturalHeight, alt: img.alt});
        }
        return out;
    """)


def screenshot(drv: Any, path: Path) -> Path:
    """The whole page (the window resized to its height) as a PNG at ``path``."""
    height = drv.execute_script("return document.documentElement.scrollHeight")
    drv.set_window_size(drv.get_window_size()["width"], max(800, min(int(height) + 40, 4000)))
    path.parent.mkdir(parents=True, exist_ok=True)
    png = drv.get_screenshot_as_png()
    Image.open(io.BytesIO(png)).save(path)
    return path
