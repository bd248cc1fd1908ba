"""tl_core's import graph, counting imports inside functions, and the cycles in it (a helper for the tests).

`graph(root)` parses every module of tl_core (not the Alembic migrations, which run as scripts) and
lists what each imports from tl_core, wherever the import is: at module level, in a function, under
`if TYPE_CHECKING`. `cycles(graph)` is its strongly connected components of more than one module.
Run as a script (`python tests/import_graph.py [repository root]`) it prints each cycle with the
line of each import in it, and exits 1 when there is one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path, known: set[str]) -> dict[str, int]:
    """{tl_core module imported: line} for every import in the file, wherever it is."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        # `from pkg import mod` names a module when pkg.mod is one; else the name is pkg's.
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tl_core":
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "tl_core":
                continue
            for alias in node.names:
                add(f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in known else mod, node.lineno)
    return found


def graph(root: Path) -> dict[str, dict[str, int]]:
    files = [p for p in (root / "tl_core").rglob("*.py") if "migrations" not in p.parts]
    known = {module_name(p, root) for p in files}
    return {module_name(p, root): imports(p, root, known) for p in files}


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, {}):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def a_path(g: dict[str, dict[str, int]], comp: list[str]) -> list[str]:
    """The shortest cycle through the component's first module: [start, ..., start]."""
    start, members = comp[0], set(comp)
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(g[v]):
            if w == start:
                return paths[v] + [start]
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    raise AssertionError("a strongly connected component without a cycle")


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    g = graph(root)
    found = cycles(g)
    for comp in found:
        path = a_path(g, comp)
        print(
            f"cycle of {len(comp)}: "
            + " -> ".join(f"{a}:{g[a][b]}" for a, b in zip(path, path[1:]))
            + f" -> {path[-1]}"
        )
        print("   modules:", ", ".join(comp))
    print(f"{len(g)} modules, {sum(map(len, g.values()))} imports, {len(found)} cycles")
    sys.exit(1 if found else 0)
