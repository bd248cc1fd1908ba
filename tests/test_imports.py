"""tl_core's import graph: no cycles, counting imports inside functions, and the layers' rules.

Every `import` and `from ... import` of a tl_core module is parsed (module level and inside
functions alike: an import inside a function delays a cycle, it does not remove it). A package's
__init__ counts as a module: importing `tl_core.store` runs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "tl_core"


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in ENGINE.rglob("*.py")}


def _imports(module: str) -> set[str]:
    """The tl_core modules `module` imports, anywhere in its file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import name`: the module pkg.name where it is one, else pkg itself
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    # importing tl_core.store.summary runs tl_core/store/__init__.py first: a package counts too
    found |= {".".join(m.split(".")[:i]) for m in found for i in range(2, m.count(".") + 1)}
    return {m for m in found if m in MODULES and m != module and not module.startswith(m + ".")}


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_tl_core_has_no_import_cycle_even_through_imports_inside_functions():
    assert _cycles() == []


def test_the_cycle_check_finds_a_cycle_hidden_inside_a_function(monkeypatch):
    # a -> b at module level, b -> a inside a function: the check must see it
    monkeypatch.setitem(GRAPH, "tl_core.errors", GRAPH["tl_core.errors"] | {"tl_core.settings"})
    monkeypatch.setitem(GRAPH, "tl_core.settings", GRAPH["tl_core.settings"] | {"tl_core.errors"})
    assert ["tl_core.errors", "tl_core.settings"] in _cycles()


def _under(package: str) -> list[str]:
    return [m for m in MODULES if m == package or m.startswith(package + ".")]


@pytest.mark.parametrize(
    "low, high",
    [
        (low, high)
        for low in ("tl_core.data", "tl_core.models")
        for high in (
            "tl_core.training",
            "tl_core.analysis",
            "tl_core.inference",
            "tl_core.executors",
            "tl_core.service",
            "tl_core.cli",
        )
    ],
)
def test_data_and_models_never_import_the_layers_above_them(low, high):
    wrong = {m: sorted(t for t in GRAPH[m] if t == high or t.startswith(high + ".")) for m in _under(low)}
    assert {m: t for m, t in wrong.items() if t} == {}


@pytest.mark.parametrize("low", ["tl_core.training", "tl_core.analysis", "tl_core.inference", "tl_core.store"])
def test_what_a_run_does_never_imports_where_runs_are_sent(low):
    # executors/ starts runs (the worker, the standby, Ray) and places them: it sits above what it runs
    wrong = {m: sorted(t for t in GRAPH[m] if t.startswith("tl_core.executors")) for m in _under(low)}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_the_engine_never_imports_the_service_or_the_front_ends():
    front = ("tl_core.service", "tl_core.cli", "tl_core.__main__")  # `python -m tl_core` is the CLI
    engine = [m for m in MODULES if not m.startswith(front)]
    wrong = {m: sorted(t for t in GRAPH[m] if t.startswith(("tl_core.service", "tl_core.cli"))) for m in engine}
    assert {m: t for m, t in wrong.items() if t} == {}
    for path in ENGINE.rglob("*.py"):  # streamlit, plotly, the pages and ui are the dashboard's alone
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        assert not {n.split(".")[0] for n in names} & {"streamlit", "plotly", "ui", "pages"}, path
