"""Browser fixtures for the end-to-end tests: Debian's Chromium driven by Playwright, never downloaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import webui
from tests.conftest import REQUIRE_SERVICES

CHROMIUM = Path("/usr/bin/chromium")


def require(ok: bool, reason: str) -> None:
    """Skip with ``reason`` where a prerequisite is missing; fail instead under REWARDHUB_REQUIRE_SERVICES=1."""
    if ok:
        return
    if REQUIRE_SERVICES:
        pytest.fail(reason + "; REWARDHUB_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(reason)


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
