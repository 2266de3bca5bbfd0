"""The shape of the code base, checked by walking every import with ``ast``.

Rules (issue 11): no import cycles, between modules or between bench's subpackages; ``attacks``,
``defenses`` and ``registry`` import nothing from ``bench``; only the CLI and the API reach the site
builder (``leaderboard``). Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "attacks", "defenses", "registry", "leaderboard")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from a import b`` counts as a.b when a.b is a module)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # a name inside a module: the module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, or None (iterative depth-first search)."""
    colour: dict[str, int] = {}
    for root in sorted(g):
        if colour.get(root):
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(g[root]))]
        path = [root]
        colour[root] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop()
            if colour.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not colour.get(nxt):
                colour[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(g.get(nxt, ()))))
    return None


def collapse(g: dict[str, set[str]], depth: int) -> dict[str, set[str]]:
    """The graph between bench's subpackages (``bench.engine``, ``bench.store``, ...)."""
    def unit(m: str) -> str | None:
        parts = m.split(".")
        return ".".join(parts[:depth]) if parts[0] == "bench" and len(parts) >= depth else None

    out: dict[str, set[str]] = {}
    for m, deps in g.items():
        u = unit(m)
        if u is None:
            continue
        out.setdefault(u, set()).update(v for d in deps if (v := unit(d)) is not None and v != u)
    return out


def test_the_walker_sees_imports_and_cycles() -> None:
    g = graph()
    assert "bench.engine.evaluate" in g and "attacks" in g["bench.engine.evaluate"]
    assert "bench.store.database" in g["bench.engine.evaluate"]  # from bench.store.database import ...
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_between_modules() -> None:
    assert find_cycle(graph()) is None


def test_no_import_cycles_between_bench_subpackages() -> None:
    assert find_cycle(collapse(graph(), 2)) is None


def test_attacks_defenses_registry_import_nothing_from_bench() -> None:
    bad = {m: sorted(d for d in deps if d.split(".")[0] == "bench")
           for m, deps in graph().items() if m.split(".")[0] in ("attacks", "defenses", "registry")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_only_the_cli_and_the_api_reach_the_site_builder() -> None:
    reach = {m for m, deps in graph().items()
             if m.startswith("bench") and any(d.split(".")[0] == "leaderboard" for d in deps)}
    assert reach <= {"bench.api"} | {m for m in reach if m.startswith("bench.cli")}, reach
