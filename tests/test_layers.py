"""The codebase's shape, read from its source with `ast`: imports run one way, no cycles, small modules.

Layers, lowest first: core (`canonstore/*.py`: errors, atomic, provenance, units, _time) < splits < formats <
preprocess | loaders (siblings) < training < the API (`canonstore/`: `__init__.py`, `cli.py`, `_cli_options.py`,
`__main__.py`, `lightning.py`). Imports inside functions count: a lazy import may defer a heavy dependency,
never hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

FOLDERS = {  # source folder -> the package it installs as (pyproject.toml's package-dir)
    "canonstore": "canonstore",
    "splits": "canonstore.splits",
    "formats": "canonstore.formats",
    "preprocess": "canonstore.preprocess",
    "loaders": "canonstore.loaders",
    "training": "canonstore.training",
}
LAYER = {
    "canonstore": 0,
    "canonstore.splits": 1,
    "canonstore.formats": 2,
    "canonstore.preprocess": 3,
    "canonstore.loaders": 3,
    "canonstore.training": 4,
}
# the top: may import anything
API = {"canonstore", "canonstore.cli", "canonstore._cli_options", "canonstore.__main__", "canonstore.lightning"}
MAX_LINES = 300
# loaders read raw files only through this public reading API of preprocess
LOADERS_MAY_IMPORT = {"canonstore.preprocess.sources"}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> int:
    if module in API:
        return 5
    return max(level for package, level in LAYER.items() if module == package or module.startswith(package + "."))


def package_of(module: str) -> str:
    return max((p for p in LAYER if module == p or module.startswith(p + ".")), key=len)


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """Every canonstore module `path` imports, at any depth of the file (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("canonstore"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("canonstore")}
    return {m for m in found if m in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(path, known) - {m} for m, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), iteratively."""
    index, low, on, stack, found, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_sees_every_package_and_a_cycle_when_there_is_one():
    known = modules()
    assert {package_of(m) for m in known} == set(LAYER) and len(known) > 60
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_run_one_way(graph):
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer(d) > layer(m))
    assert upward == []


def test_preprocess_and_loaders_are_siblings(graph):
    crossing = sorted(
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if (package_of(m) == "canonstore.preprocess" and package_of(d) == "canonstore.loaders")
        or (
            package_of(m) == "canonstore.loaders"
            and package_of(d) == "canonstore.preprocess"
            and d not in LOADERS_MAY_IMPORT
        )
    )
    assert crossing == []


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_every_module_is_small_and_says_its_job():
    too_long, silent = [], []
    for module, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_LINES:
            too_long.append(f"{module}: {len(text.splitlines())} lines")
        doc = ast.get_docstring(ast.parse(text))
        if not doc or not doc.strip():
            silent.append(module)
    assert too_long == [] and silent == []
