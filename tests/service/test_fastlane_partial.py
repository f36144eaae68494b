"""The fast lane and the FastAPI route answer `allow_partial` alike, byte for byte (issue 13).

An unsharded collection ignores the field (the answer is the one without it, never flagged partial);
in a batch it belongs to the batch, and on one search of a batch it is a 422 naming that search. The
partial answers of a sharded collection are compared the same way in tests/ray/test_certificate_global.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.service.test_fastlane import C, Q, pair  # noqa: F401  (the module's fixture)

_TOOK = re.compile(rb'"took_ms":[-+0-9.eE]+')

CASES: list[tuple[str, str, Any]] = [
    ("search partial", "search", {"vector": Q, "k": 5, "metric": "euc", "allow_partial": True}),
    ("search not partial", "search", {"vector": Q, "k": 5, "metric": "euc", "allow_partial": False}),
    ("by id partial", "search", {"id": "img-3.jpg", "k": 5, "metric": "tri", "temperature": 10, "allow_partial": True}),
    ("partial not a bool", "search", {"vector": Q, "allow_partial": "sometimes"}),
    ("batch partial", "search/batch", {"searches": [{"vector": Q, "k": 3}, {"id": 105, "k": 2}], "allow_partial": True}),
    ("partial on one search of a batch", "search/batch", {"searches": [{"vector": Q}, {"vector": Q, "allow_partial": True}]}),
]


@pytest.mark.parametrize("label,tail,body", CASES, ids=[c[0] for c in CASES])
def test_allow_partial_answers_are_the_same_bytes_on_both_paths_issue_13(pair, label, tail, body):
    fast, slow = pair
    content = json.dumps(body).encode()
    a, b = (c.post(f"{C}/fl/{tail}", content=content, headers={"content-type": "application/json"})
            for c in (fast, slow))
    assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"]), (a.text, b.text)
    assert _TOOK.sub(b"", a.content) == _TOOK.sub(b"", b.content)
    if a.status_code == 200:
        plain = {k: v for k, v in body.items() if k != "allow_partial"}
        c = fast.post(f"{C}/fl/{tail}", json=plain)
        assert _TOOK.sub(b"", c.content) == _TOOK.sub(b"", a.content)  # ignored: never partial
        assert b'"partial"' not in a.content and b'"missing_shards"' not in a.content
    elif label == "partial on one search of a batch":
        assert a.status_code == 422 and a.json()["errors"][0]["field"] == "searches.1.allow_partial"
    else:
        assert a.status_code == 422 and "allow_partial" in a.text
