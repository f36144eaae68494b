"""Body limits (issue 7): 413 by Content-Length up front, by counted bytes for chunked bodies, 408 on a stall.

The middleware is driven through raw ASGI messages here, so the test controls exactly how the body
arrives (chunk sizes, stalls) and sees how much of it the app pulled.
"""

from __future__ import annotations

import json
import math
import time

import anyio
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

from service.limits import install_limits
from service.settings import load_settings

LIMIT = 1000


class Doc(BaseModel):
    text: str


def _app(idle_timeout: float = 5.0) -> tuple[FastAPI, dict[str, int]]:
    """A toy app: a streaming route that 'writes' each chunk it reads, and a JSON route."""
    app = FastAPI()
    seen = {"calls": 0, "written": 0}

    @app.post("/stream")
    async def stream(request: Request) -> dict[str, int]:
        seen["calls"] += 1
        async for chunk in request.stream():
            seen["written"] += len(chunk)
        return {"bytes": seen["written"]}

    @app.post("/doc")
    def doc(body: Doc) -> dict[str, int]:
        seen["calls"] += 1
        return {"chars": len(body.text)}

    install_limits(app, load_settings({"max_body_bytes": LIMIT}, environ={}), idle_timeout=idle_timeout)
    return app, seen


def _call(app: FastAPI, path: str, chunks: list[bytes], *, content_length: int | None = None,
          stall_after: int | None = None) -> tuple[int, dict[str, str], bytes, int]:
    """POST `chunks` as separate http.request messages; returns status, headers, body and how many
    chunks the app pulled. With `stall_after`, the client goes silent after that many chunks."""
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 6340)}
    pulled = 0
    out: dict[str, object] = {"body": b""}

    async def receive() -> dict[str, object]:
        nonlocal pulled
        if pulled == stall_after or pulled >= len(chunks):
            await anyio.sleep(math.inf if pulled == stall_after else 3600)
        pulled += 1
        return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            assert "status" not in out, "two responses started"
            out["status"] = message["status"]
            out["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            out["body"] = out["body"] + message.get("body", b"")

    async def main() -> None:
        with anyio.fail_after(10):
            await app(scope, receive, send)

    anyio.run(main)
    return out["status"], out["headers"], out["body"], pulled


def test_declared_length_above_the_limit_is_413_before_the_app_or_body_is_touched():
    app, seen = _app()
    status, headers, body, pulled = _call(app, "/stream", [b"x" * 10], content_length=LIMIT + 1)
    problem = json.loads(body)
    assert status == 413 and headers["content-type"] == "application/problem+json"
    assert problem["status"] == 413 and str(LIMIT) in problem["detail"]
    assert problem["errors"][0]["field"] == "body"
    assert pulled == 0 and seen == {"calls": 0, "written": 0}


def test_chunked_body_is_cut_at_the_chunk_that_crosses_the_limit():
    app, seen = _app()
    chunks = [b"y" * 300] * 10  # 3000 bytes, no Content-Length
    status, _, body, pulled = _call(app, "/stream", chunks)
    assert status == 413 and str(LIMIT) in json.loads(body)["detail"]
    # 300, 600, 900 pass; the 4th chunk makes 1200 > 1000: the app never receives it, nor any after
    assert pulled == 4 and seen["written"] == 900


def test_chunked_json_body_over_the_limit_is_413_not_a_parse_error():
    app, seen = _app()
    payload = json.dumps({"text": "z" * 2000}).encode()
    status, _, body, _ = _call(app, "/doc", [payload[:700], payload[700:]])
    assert status == 413 and json.loads(body)["status"] == 413 and seen["calls"] == 0


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_at_the_limit_passes_whole(declared):
    app, seen = _app()
    chunks = [b"a" * 250] * 4
    status, _, body, pulled = _call(app, "/stream", chunks, content_length=LIMIT if declared else None)
    assert status == 200 and json.loads(body) == {"bytes": LIMIT} and pulled == 4 and seen["written"] == LIMIT


def test_a_stalled_upload_is_answered_408_after_the_idle_timeout():
    app, seen = _app(idle_timeout=0.2)
    start = time.monotonic()
    status, _, body, pulled = _call(app, "/stream", [b"b" * 100] * 5, stall_after=2)
    assert time.monotonic() - start < 3 and status == 408 and "0.2 s" in json.loads(body)["detail"]
    assert pulled == 2 and seen["written"] == 200


def _npy(X) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, X)
    return buf.getvalue()


def _read_answer(sock) -> tuple[bytes, bytes]:
    """The head and the body (by Content-Length) of one HTTP/1.1 answer read from a socket."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-answer: {answer!r}"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(head.lower().partition(b"content-length: ")[2].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-body: {body!r}"
        body += chunk
    return head, body


def test_a_real_server_refuses_huge_declared_and_streamed_bodies_and_writes_nothing(tmp_path, rng):
    import socket

    import httpx
    import numpy as np

    from tests.e2e.conftest import start_server, stop_server

    limit = 1_000_000
    base, proc = start_server(tmp_path / "data", {"LOGITSEARCH_MAX_BODY_BYTES": str(limit)})
    try:
        client = httpx.Client(base_url=base, timeout=30)
        assert client.put("/v1/collections/big", json={"dim": 100, "metrics": ["euc"]}).status_code == 201
        bulk = "/v1/collections/big/points/bulk"

        # 10 GB announced, nothing sent: the answer comes at once, the body is never read
        host, port = base.removeprefix("http://").split(":")
        start = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f"POST {bulk}?start=0 HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {10 * 1024**3}\r\n\r\n".encode())
            head, problem = _read_answer(s)
        assert time.monotonic() - start < 5
        assert head.startswith(b"HTTP/1.1 413") and str(limit) in json.loads(problem)["detail"], head

        # a chunked upload (no length) of 2.4 MB is cut at the limit, inside the streamed ingest
        X = rng.normal(0, 1, (6000, 100)).astype(np.float32)
        body = _npy(X)
        sent = 0

        def chunks():
            nonlocal sent
            for i in range(0, len(body), 65536):
                sent += len(body[i:i + 65536])
                yield body[i:i + 65536]

        r = client.post(bulk, params={"start": 0}, content=chunks(), headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 413 and str(limit) in r.json()["detail"], r.text
        assert client.get("/v1/collections/big").json()["count"] == 0, "a cut upload wrote points"

        # the same data in pieces under the limit goes in whole
        for start_row in range(0, 6000, 2000):
            r = client.post(bulk, params={"start": start_row}, content=_npy(X[start_row:start_row + 2000]),
                            headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 200, r.text
        assert client.get("/v1/collections/big").json()["count"] == 6000
        client.close()
    finally:
        stop_server(proc)
