"""Debian's headless Chromium driven by Playwright (never `playwright install`: the browser is
the system's `/usr/bin/chromium`, installed by `make setup`).

`chromium()` opens a fresh profile and records every request the pages make, so a test can
check that nothing left the gateway's origin. Screenshots go to `test-artifacts/web/`.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Browser:
    context: Any  # playwright's BrowserContext
    requests: list[str] = field(default_factory=list)

    def page(self) -> Any:
        page = self.context.new_page()
        page.set_default_timeout(30_000)
        return page

    def screenshot(self, page: Any, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        page.screenshot(path=str(path), full_page=True)
        return path


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """A fresh headless Chromium profile; skips when the system browser is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (make setup installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="veil-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=ARGS,
                viewport={"width": 1200, "height": 800},
            )
            browser = Browser(context)
            context.on("request", lambda request: browser.requests.append(request.url))
            try:
                yield browser
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
