"""/docs and /redoc work offline (issue 15): every file they need comes from the server itself.

One real server with API keys configured (the docs must stay open, like /openapi.json). The pages
are fetched and every script, style and icon they reference is fetched from the same server; no
page names an external http(s) address. Headless Chromium then opens Swagger UI and ReDoc and must
see every operation of the OpenAPI document rendered, no console error, and no request leaving
127.0.0.1 (ReDoc's own attribution logo excepted: its bundle hard-codes it and hides it when it
cannot load). The screenshots are kept under test-artifacts/.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from service.app import DOCS_ASSETS
from tests.browser import ARTIFACTS
from tests.e2e.conftest import start_server, stop_server

REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
KEYS = {"LOGITSEARCH_API_KEY": "docs-write-key-0123456789", "LOGITSEARCH_READ_API_KEY": "docs-read-key-0123456789"}


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "spec-url") and value:
                self.refs.append(value)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base, proc = start_server(tmp_path_factory.mktemp("docs") / "data", KEYS)
    try:
        yield base
    finally:
        stop_server(proc)


def _operations(base: str) -> list[tuple[str, str]]:
    paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    return [(m, p) for p, item in paths.items() for m in item]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_and_every_asset_they_reference_come_from_the_server(server, page):
    r = httpx.get(f"{server}{page}")  # no key: the docs are open
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert re.findall(r"https?://[^\s\"'<>]+", r.text) == []
    parser = _Refs()
    parser.feed(r.text)
    assert parser.refs, "the page references no assets?"
    scripts = 0
    for ref in parser.refs:
        url = urljoin(f"{server}{page}", ref)
        assert urlsplit(url).netloc == urlsplit(server).netloc, ref
        got = httpx.get(url)
        assert got.status_code == 200 and got.content, (ref, got.status_code)
        scripts += ref.endswith(".js")
        if ref.endswith(".js"):
            assert ref.startswith(DOCS_ASSETS) and got.headers["content-type"].startswith("text/javascript")
            assert len(got.content) > 100_000  # the real bundle, not a stub
    assert scripts == 1
    assert httpx.get(f"{server}/openapi.json").status_code == 200


def _off_host(server: str, requests: list[str]) -> list[str]:
    host = urlsplit(server).netloc
    return [u for u in requests if urlsplit(u).scheme in ("http", "https") and urlsplit(u).netloc != host]


def test_swagger_ui_renders_every_operation_offline(server, browser):
    page = browser.open(f"{server}/docs")
    page.page.wait_for_selector(".opblock", timeout=20_000)
    shown = page.page.eval_on_selector_all(
        ".opblock", "els => els.map(e => [e.querySelector('.opblock-summary-method').textContent.trim(),"
                    " e.querySelector('.opblock-summary-path').getAttribute('data-path')])")
    browser.screenshot(page, ARTIFACTS / "docs-swagger.png")
    assert sorted((m.lower(), p) for m, p in shown) == sorted(_operations(server))
    assert page.errors == []
    assert _off_host(server, page.requests) == []
    assert any(u.endswith(f"{DOCS_ASSETS}/swagger-ui-bundle.js") for u in page.requests)


def test_redoc_renders_every_operation_offline(server, browser):
    page = browser.open(f"{server}/redoc")
    page.page.wait_for_selector("[data-section-id^='operation/']", timeout=20_000)
    sections = page.page.eval_on_selector_all("[data-section-id^='operation/']", "els => els.length")
    browser.screenshot(page, ARTIFACTS / "docs-redoc.png")
    assert sections == len(_operations(server))
    # ReDoc's bundle always asks for its attribution logo (hard-coded in redoc.standalone.js) and
    # hides the image when it cannot load: offline that is the one request that leaves, and fails.
    off = _off_host(server, page.requests)
    assert off in ([], [REDOC_LOGO])
    errors = [e for e in page.errors if REDOC_LOGO not in e]
    if off:  # Chromium's console line for that failed image does not name it
        errors.remove("console error: Failed to load resource: net::ERR_NAME_NOT_RESOLVED")
    assert errors == []
