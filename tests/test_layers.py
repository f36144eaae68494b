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


# --- issue 12: no private reach-ins, and a shard never imports what sits above it ---------------------

PACKAGES = ("core", "indexes", "service")
#: modules a shard is made of: they may be moved into another process, so they must not import the
#: coordinator or the HTTP layer (the coordinator imports them, never the other way round)
SHARD_MODULES = {"service.shard", "service.catalog", "service.idmap", "service.ray_shards"}
ABOVE_SHARDS = ("service.coordinator", "service.app", "service.routes")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def violations(sources: dict[str, str]) -> list[str]:
    """Each import of a private name of another project module, and each shard module importing the
    coordinator or the HTTP layer, in `sources` (module name -> source text)."""
    ours = set(sources)
    out: list[str] = []
    for mod, text in sources.items():
        tree = ast.parse(text)
        aliases: dict[str, str] = {}  # local name -> project module it names
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in PACKAGES:
                        imported.add(a.name)
                        if a.asname:
                            aliases[a.asname] = a.name
                        else:  # `import core.a` binds `core`
                            aliases[a.name.split(".")[0]] = a.name.split(".")[0]
                        for part in a.name.split(".")[1:]:
                            if _private(part):
                                out.append(f"{mod}: import {a.name} (private module)")
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] in PACKAGES:
                imported.add(node.module)
                for part in node.module.split(".")[1:]:
                    if _private(part):
                        out.append(f"{mod}: from {node.module} import ... (private module)")
                for a in node.names:
                    target = f"{node.module}.{a.name}"
                    if target in ours:  # a submodule: `from pkg import mod`
                        imported.add(target)
                        aliases[a.asname or a.name] = target
                    if _private(a.name) and node.module != mod:
                        out.append(f"{mod}: from {node.module} import {a.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                base = node.value
                dotted = []
                while isinstance(base, ast.Attribute):
                    dotted.append(base.attr)
                    base = base.value
                if isinstance(base, ast.Name) and base.id in aliases:
                    target = ".".join([aliases[base.id], *reversed(dotted)])
                    if target != mod:
                        out.append(f"{mod}: {target}.{node.attr}")
        if mod in SHARD_MODULES:
            for name in sorted(imported):
                if name.startswith(ABOVE_SHARDS):
                    out.append(f"{mod}: imports {name} (a shard must not import what sits above it)")
    return sorted(set(out))


def _tree() -> dict[str, str]:
    return {_module_name(p, REPO): p.read_text() for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def test_no_module_imports_a_private_name_of_another_and_shards_import_nothing_above_them() -> None:
    assert violations(_tree()) == []


def test_the_import_checker_catches_each_kind_of_reach_in() -> None:
    sources = {
        "core.a": "def _hidden(): ...\n",
        "core._mod": "x = 1\n",
        "core.b": "from core.a import _hidden\n",
        "core.c": "from core import _mod\n",
        "core.d": "import core.a\ncore.a._hidden()\n",
        "core.e": "from core import a\na._hidden()\n",
        "core.f": "from core.a import _hidden as h  # noqa\n",
        "service.coordinator": "from service.shard import Shard\n",
        "service.shard": "from service.coordinator import merge\nclass Shard: ...\n",
        "service.fine": "import os\nos._exit\nfrom core import a\na.public()\n",
    }
    want = sorted([
        "core.b: from core.a import _hidden",
        "core.c: from core import _mod",
        "core.d: core.a._hidden",
        "core.e: core.a._hidden",
        "core.f: from core.a import _hidden",
        "service.shard: imports service.coordinator (a shard must not import what sits above it)",
    ])
    got = violations(sources)
    assert got == want, got
