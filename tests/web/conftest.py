"""The browser tests reuse the host tests' real ComfyUI server (skipped without COMFYUI_PATH) and
need Chromium (Debian's package) and Playwright's Python client; they skip and say which is missing."""
from __future__ import annotations

import pytest

from tests.host.conftest import comfy, object_info  # noqa: F401  (fixtures)
from tests.web.browser import chromium_path


@pytest.fixture(scope="session")
def browser_ready():
    if chromium_path() is None:
        pytest.skip("no Chromium: apt-get install chromium (or set CHROMIUM=/path/to/chrome)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("Playwright's Python client is not installed: pip install playwright (its browser download is not needed)")
