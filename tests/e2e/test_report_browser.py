"""Issue 14: the report in a real headless browser (Debian's chromium; skips cleanly without it),
served by a real uvicorn server over the example data with its payloads: the page loads with no
console error, asks for nothing but itself, every image decodes, the recommendation is there in
words; saved as a file it shows the same offline. A screenshot is kept in test-artifacts/."""

from __future__ import annotations

import json

import httpx
import pytest

from service.client import Client
from tests.browser import ARTIFACTS
from tests.e2e.conftest import REPO, start_server, stop_server

EXAMPLE = REPO / "examples" / "imagenet_effnet_200.npy"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base, proc = start_server(tmp_path_factory.mktemp("report") / "data")
    try:
        with Client(base) as c:
            c.create_collection("imagenet", 1000)
            ids = (REPO / "examples" / "imagenet_effnet_200.txt").read_text().split()
            payloads = [json.loads(line) for line in
                        (REPO / "examples" / "imagenet_effnet_200.payloads.jsonl").read_text().splitlines()]
            c.upload_npy("imagenet", EXAMPLE, ids=ids, payloads=payloads)
        yield base
    finally:
        stop_server(proc)


def test_the_report_loads_in_a_browser_with_every_image_and_the_recommendation(browser, server, tmp_path):
    url = f"{server}/v1/collections/imagenet/report?labels=photo&queries=10"
    page = browser.open(url, timeout_ms=60_000)
    assert page.errors == []
    assert page.requests == [url]  # nothing else fetched: figures and style are inline
    images = browser.images_decoded(page)
    assert len(images) == 3 and all(w >= 600 and h >= 300 for _, w, h in images), images
    words = page.page.inner_text("#recommendation")
    assert "recommended: search with" in words and "tri reaches rho >= 0.99 from t = " in words
    assert "Semantic check" in page.page.inner_text("body")
    rows = page.page.eval_on_selector_all("table tbody tr", "rs => rs.length")
    assert rows >= 6 + 4  # the rho table's metrics and the label table's four searchable metrics
    browser.screenshot(page, ARTIFACTS / "report.png")
    page.page.close()

    # the same page as a file, opened without the server: it still shows everything
    saved = tmp_path / "report.html"
    saved.write_text(httpx.get(url, timeout=120).text, encoding="utf-8")
    offline = browser.open(saved.as_uri())
    assert offline.errors == [] and offline.requests == [saved.as_uri()]
    assert all(w * h > 0 for _, w, h in browser.images_decoded(offline))
    offline.page.close()
