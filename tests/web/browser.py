"""Drive the real ComfyUI page in headless Chromium (Debian's /usr/bin/chromium through Playwright's
Python client; its bundled browser download is never used)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.request

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def skip_tutorial(base: str) -> None:
    """Keep the first-run templates dialog from covering the canvas."""
    req = urllib.request.Request(f"{base}/settings/Comfy.TutorialCompleted", data=json.dumps(True).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=10).read()


@contextlib.contextmanager
def comfy_page(base: str, *, width: int = 1600, height: int = 1000, timeout_ms: int = 60000):
    """A Playwright page with the ComfyUI app loaded (``window.app.graph`` ready)."""
    from playwright.sync_api import sync_playwright

    skip_tutorial(base)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(base, wait_until="domcontentloaded", timeout=timeout_ms)
            page.wait_for_function("() => window.app && window.app.graph && window.app.graph._nodes !== undefined",
                                   timeout=timeout_ms)
            yield page
        finally:
            browser.close()
