"""Imports point one way: service -> indexes -> core (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "core": {"indexes", "service", "faiss", "fastapi", "pydantic", "sqlite3", "httpx", "starlette"},
    "indexes": {"service", "fastapi", "pydantic", "sqlite3", "httpx", "starlette"},
    "service": set(),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_may(package: str) -> None:
    bad = {}
    for path in (REPO / package).rglob("*.py"):
        hit = _imports(path) & FORBIDDEN[package]
        if hit:
            bad[str(path.relative_to(REPO))] = sorted(hit)
    assert bad == {}
