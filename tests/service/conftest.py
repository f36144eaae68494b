"""A TestClient over a fresh app per test (tmp data dir), and a checker for problem+json answers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import load_settings


def make_client(data_dir: Path, **overrides: Any) -> TestClient:
    """A TestClient (use it as a context manager: that runs the lifespan) over `data_dir`; the kernel
    warm-up is off unless asked for (it is tested on its own, tests/service/test_warmup.py)."""
    return TestClient(create_app(load_settings({"data_dir": str(data_dir), "warmup_seconds": 0, **overrides},
                                               environ={})))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path / "data") as c:
        yield c


@pytest.fixture
def client_with(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """`client_with(max_batch=3)`: a client whose settings differ; closed at teardown."""
    opened: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        c = make_client(tmp_path / f"data{len(opened)}", **overrides)
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """The RFC 9457 body of `r`, checked: status, media type, members; with `field`, that an entry
    of `errors` names it. Returns the body."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json", r.headers["content-type"]
    body = r.json()
    assert body["status"] == status and isinstance(body["title"], str) and body["title"]
    assert isinstance(body["type"], str) and isinstance(body["detail"], str) and body["detail"]
    if field is not None:
        assert any(e["field"] == field and e["reason"] for e in body.get("errors", [])), body
    return body
