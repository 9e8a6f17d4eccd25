"""The house rules of feddf/ (docs/architecture.md): no import circle, no import from a lower layer up to a higher
one, no Python file over 450 lines (data files such as generators/class_maps.json and weights are not code).

    .venv/bin/python -m pytest -q tests/test_layers.py

The imports are read with `ast`, not by importing anything. Every import statement is an edge: module-level ones and
the ones inside functions (a lazy import still runs the imported module's code at call time and still ties the two
packages together; the circles this test was written against were half lazy imports). Imports named by strings
(`importlib.import_module(name)`, feddf/__init__.py's lazy attributes) are not seen. Importing `a.b.c` also runs
`a/b/__init__.py`, but that implicit parent edge is not counted: a package's `__init__` re-exporting its own modules
would otherwise make every package a circle.

The layers are of packages (the first name under feddf/; a top-level module such as utils.py is its own package), so
files added to a package follow its package's rules. A package missing from LAYERS fails the test: give it a layer
here and a line in docs/architecture.md. feddf/__init__.py (the root) is in the bottom layer: it imports no feddf
module (its public names are loaded lazily, by string), so any module may import what it binds itself.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

# Lowest first. A module may import from its own layer or below. Two packages of one layer may import each other's
# modules only one way (a package-level circle fails as well).
LAYERS: list[set[str]] = [
    {"__init__", "errors", "checks", "utils", "runfolder"},  # the root (see check_house) and the plain helpers
    {"cache"},                                    # the HDF5 contract (numpy/h5py; no datasets, no models)
    {"data", "models"},                           # datasets as uint8 tensors; the model zoo
    {"federated", "audit", "generators"},         # what uses data and models: training, audits, sampling
    {"flower"},                                   # the Flower engine, on top of feddf/federated
    {"sweep"},                                    # grids of `feddf train` runs (subprocesses) and their tables
    {"api"},                                      # the Python API (feddf.gen/train/audit)
    {"cli", "__main__"},                          # the commands
]
MAX_LINES = 450
ROOT = Path(__file__).resolve().parents[1] / "feddf"


# ------------------------------------------------------------------------------------------------- the checker
def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def read_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder `root`."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, str | None]]:
    """(imported module of the same root package, line, attribute) for every import statement in the file, at any
    depth; attribute is the name taken from the module by `from M import name` when that name is not a module."""
    top = name.split(".")[0]
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, int, str | None]] = []

    def resolve(target: str) -> str | None:
        # the longest known module that `target` names (`from feddf.cache import writer` -> feddf.cache.writer;
        # `from feddf.cache.writer import CacheWriter` -> feddf.cache.writer)
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package of this module, level - 1 packages up
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [(f"{mod}.{a.name}", a.name) for a in node.names]
        else:
            continue
        for t, attr in targets:
            if t.split(".")[0] == top and (r := resolve(t)) is not None and r != name:
                found.append((r, node.lineno, attr if attr is not None and r != t else None))
    return found


def package_of(module: str) -> str:
    """feddf.cache.writer -> cache, feddf.utils -> utils, feddf -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def find_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (a, b, ..., a) through each strongly connected component of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth = longest import chain; fine for a few hundred modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle_in(graph, set(c)) for c in comps]


def _circle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest circle from the component's first node back to itself (breadth-first inside the component)."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w in comp and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("not a circle")  # unreachable for a strongly connected component


def bound_names(path: Path) -> set[str]:
    """Names a module binds at its top level (not those a module `__getattr__` serves lazily)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def check_house(root: Path, layers: list[set[str]], max_lines: int = MAX_LINES) -> list[str]:
    """Every broken rule under the package folder `root`, one line each (empty = the house is in order).

    The root package (`root/__init__.py`) sits in the layer of "__init__" in `layers`; any module may import what it
    binds itself (`from feddf import __version__`), never the attributes its `__getattr__` loads by name from a
    higher layer (`from feddf import train` inside feddf/ would be an upward import the graph cannot see)."""
    modules = read_modules(root)
    top = root.name
    own = bound_names(root / "__init__.py") if top in modules else set()
    layer_of = {pkg: i for i, pkgs in enumerate(layers) for pkg in pkgs}
    problems: list[str] = []
    rel = {m: p.relative_to(root.parent).as_posix() for m, p in modules.items()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m in sorted(modules):
        if package_of(m) not in layer_of:
            problems.append(f"{rel[m]}: package {package_of(m)!r} has no layer (add it to LAYERS in "
                            "tests/test_layers.py and to docs/architecture.md)")
            continue
        for target, line, attr in imports_of(m, modules[m], modules):
            graph[m].add(target)
            if target == top and attr is not None and attr not in own:
                problems.append(f"lazy attribute {rel[m]}:{line}: {m} imports {top}.{attr}, which {top}/__init__.py "
                                "loads from another module by name: import it from that module")
            a, b = layer_of[package_of(m)], layer_of.get(package_of(target), -1)
            if b > a:
                problems.append(f"upward import {rel[m]}:{line}: {m} (layer {a}, {package_of(m)}) imports {target} "
                                f"(layer {b}, {package_of(target)})")
        n = len(modules[m].read_text().splitlines())
        if n > max_lines:
            problems.append(f"{rel[m]} has {n} lines (at most {max_lines}): split it along what it does")
    for circle in find_circles(graph):
        problems.append("import circle: " + " -> ".join(circle))
    packages: dict[str, set[str]] = {}
    for m, targets in graph.items():
        packages.setdefault(package_of(m), set()).update(package_of(t) for t in targets if package_of(t) !=
                                                         package_of(m))
    for circle in find_circles(packages):
        problems.append("package circle: " + " -> ".join(circle))
    return list(dict.fromkeys(problems))  # `from m import a, b` is one edge


# ------------------------------------------------------------------------------------------------- the house
def test_feddf_has_no_circle_no_upward_import_no_long_file():
    problems = check_house(ROOT, LAYERS)
    assert not problems, "feddf/ breaks the house rules (docs/architecture.md):\n" + "\n".join(problems)


def test_docs_name_every_package():
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    missing = [p for layer in LAYERS for p in layer if p not in {"__init__", "__main__"} and f"`{p}`" not in doc]
    assert missing == []


# ------------------------------------------------------------------------------------------------- the checker itself
def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


SMALL = [{"__init__", "base"}, {"low"}, {"high"}]


def test_checker_passes_a_clean_package(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/base.py": "import os\n",
        "pkg/low/__init__.py": "from pkg.low import a\n",
        "pkg/low/a.py": "from pkg.base import x\nfrom . import b\n",
        "pkg/low/b.py": "import pkg.base\n",
        "pkg/high/__init__.py": "",
        "pkg/high/c.py": "from ..low.a import y\n\ndef f():\n    from pkg.low import b\n",
    })
    assert check_house(pkg, SMALL) == []


def test_checker_finds_circles_upward_imports_long_files_and_unknown_packages(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/base.py": "",
        "pkg/low/__init__.py": "",
        # a circle of three through a lazy import and a relative one, inside one package
        "pkg/low/a.py": "from pkg.low.b import x\n",
        "pkg/low/b.py": "from . import c\n",
        "pkg/low/c.py": "def f():\n    import pkg.low.a\n",
        # an upward import, in a function body, that also makes a circle low <-> high
        "pkg/low/d.py": "import os\n\n\ndef g():\n    from pkg.high.e import run\n",
        "pkg/high/__init__.py": "",
        "pkg/high/e.py": "from pkg.low import d\n" + "x = 1\n" * 10,
        "pkg/other/__init__.py": "",
    })
    problems = check_house(pkg, SMALL, max_lines=8)
    assert "upward import pkg/low/d.py:5: pkg.low.d (layer 1, low) imports pkg.high.e (layer 2, high)" in problems
    assert "import circle: pkg.low.a -> pkg.low.b -> pkg.low.c -> pkg.low.a" in problems
    assert "import circle: pkg.high.e -> pkg.low.d -> pkg.high.e" in problems
    assert "package circle: high -> low -> high" in problems
    assert "pkg/high/e.py has 11 lines (at most 8): split it along what it does" in problems
    assert any(p.startswith("pkg/other/__init__.py: package 'other' has no layer") for p in problems)
    assert len(problems) == 6, problems


def test_checker_allows_the_roots_own_names_but_not_its_lazy_attributes(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "__version__ = '1'\n_LAZY = {'run': 'pkg.high.e'}\n\n\ndef __getattr__(name):\n    "
                           "import importlib\n    return getattr(importlib.import_module(_LAZY[name]), name)\n",
        "pkg/base.py": "def f():\n    from pkg import __version__\n    import pkg\n",
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "from pkg import run\n",
        "pkg/high/__init__.py": "",
        "pkg/high/e.py": "from pkg import __version__\n\n\ndef run():\n    pass\n",
    })
    assert check_house(pkg, SMALL) == ["lazy attribute pkg/low/a.py:1: pkg.low.a imports pkg.run, which "
                                       "pkg/__init__.py loads from another module by name: import it from that module"]


def test_checker_sees_the_circle_the_issue_was_filed_for(tmp_path):
    # importers -> data/__init__ -> data/byo -> importers: the middle edge is a package re-exporting its module
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/base.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/importers.py": "def load():\n    from pkg.high import get\n",
        "pkg/high/__init__.py": "from pkg.high import byo\n",
        "pkg/high/byo.py": "from pkg.low.importers import decode\n",
    })
    problems = check_house(pkg, SMALL)
    assert "import circle: pkg.high -> pkg.high.byo -> pkg.low.importers -> pkg.high" in problems
    assert "upward import pkg/low/importers.py:2: pkg.low.importers (layer 1, low) imports pkg.high (layer 2, high)" \
        in problems


@pytest.mark.parametrize("src, target, attr", [
    ("import pkg.low.a as q\n", "pkg.low.a", None),
    ("from pkg.low import a\n", "pkg.low.a", None),
    ("from pkg.low import name_in_init\n", "pkg.low", "name_in_init"),
    ("from .low.a import f\n", "pkg.low.a", "f"),
    ("from . import base\n", "pkg.base", None),
    ("import json, pkg.base\n", "pkg.base", None),
    ("from pkg import thing\n", "pkg", "thing"),
])
def test_checker_resolves_import_forms(tmp_path, src, target, attr):
    pkg = _write(tmp_path, {"pkg/__init__.py": "", "pkg/base.py": "", "pkg/low/__init__.py": "",
                            "pkg/low/a.py": "", "pkg/m.py": src})
    modules = read_modules(pkg)
    assert imports_of("pkg.m", modules["pkg.m"], modules) == [(target, 1, attr)]
