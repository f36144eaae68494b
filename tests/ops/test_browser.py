"""The headless-browser helper itself: it reports what a person would see go wrong."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def _png() -> str:
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot(np.arange(3))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode()


def test_browser_sees_console_errors_images_and_takes_a_screenshot(browser, tmp_path: Path) -> None:
    html = tmp_path / "p.html"
    html.write_text(f"<html><body><img src='data:image/png;base64,{_png()}'>"
                    "<img src='data:image/png;base64,AAAA'><script>console.error('boom')</script></body></html>")
    page = browser.open(html.as_uri())
    assert any("boom" in e for e in page.errors)
    decoded = [w * h > 0 for _, w, h in browser.images_decoded(page)]
    assert decoded == [True, False]
    shot = browser.screenshot(page, tmp_path / "shot.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
