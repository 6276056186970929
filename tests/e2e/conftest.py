"""Browser fixtures for the end-to-end tests: Debian's Chromium driven by Playwright, never downloaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import webui
from tests.conftest import require

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def browser() -> Iterator[Any]:
    require(CHROMIUM.is_file(), f"Debian's Chromium is not at {CHROMIUM} (install it with `apt-get install "
                                "chromium`; this test never downloads a browser)")
    missing = webui.missing_vendor()
    require(not missing, f"{', '.join(missing)} not installed for the web UI; run `{webui.INSTALL_HINT}`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            launched.close()
