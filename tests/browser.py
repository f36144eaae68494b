"""Headless Chromium for tests that look at a page as a person would (issues 14 and 15).

    def test_page(browser):                      # skips cleanly without chromium or playwright
        page = browser.open(f"{base}/docs")      # a fresh page; console messages and failed requests recorded
        assert page.errors == []                 # console errors, page errors, failed requests
        browser.screenshot(page, ARTIFACTS / "docs.png")   # kept after the run (gitignored)

Debian's `chromium` (/usr/bin/chromium; `.ci/run` installs it with apt where it is missing) is driven by
the `playwright` package with `executable_path`, so no browser is downloaded. The flags keep Chromium
off the network: this machine has none but loopback.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(os.environ.get("LOGITSEARCH_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions"]


def chromium_path() -> str | None:
    """The Chromium binary to use: $LOGITSEARCH_TEST_CHROMIUM, else chromium on PATH, else None."""
    return os.environ.get("LOGITSEARCH_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    """A page with what went wrong while it loaded: console errors, uncaught exceptions, failed requests."""
    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class Browser:
    def __init__(self, browser: Any) -> None:
        self._browser = browser

    def open(self, url: str, *, timeout_ms: int = 20_000) -> Page:
        """Load `url` in a new page and wait until the network is idle."""
        page = self._browser.new_page()
        out = Page(page)
        page.on("console", lambda m: out.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: out.errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: out.errors.append(f"request failed: {r.url} ({r.failure})"))
        page.on("request", lambda r: out.requests.append(r.url))
        page.goto(url, wait_until="networkidle", timeout=timeout_ms)
        return out

    @staticmethod
    def images_decoded(page: Page) -> list[tuple[str, int, int]]:
        """(src head, naturalWidth, naturalHeight) of every <img>; 0 x 0 means it did not decode."""
        return [(s[:60], w, h) for s, w, h in page.page.evaluate(
            "Array.from(document.images).map(i => [i.src, i.naturalWidth, i.naturalHeight])")]

    @staticmethod
    def screenshot(page: Page, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        page.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module; skips where no browser or no playwright exists.

    Module scope, not session: playwright's sync API keeps an asyncio loop running on the main
    thread while it is open, and every later test that calls asyncio.run() (the async client,
    the body-limit tests) would fail with "cannot be called from a running event loop"."""
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=FLAGS, timeout=30_000)
        try:
            yield Browser(b)
        finally:
            b.close()
