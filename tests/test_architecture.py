"""The layers hold: the import contracts in pyproject.toml pass, and no two layers import each other.

docs/architecture.md describes the layers. lint-imports checks the contracts ([tool.importlinter]); the
cycle check below squashes every first-party module into its layer package and looks for a cycle between
them, leaving out only the imports the layers contract ignores (each named there with its reason).
Cycles between modules inside one package are allowed: `python -m tests.test_architecture` lists them.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import grimp

ROOT = Path(__file__).parents[1]
FIRST_PARTY = ("app", "webhooks", "connectors", "jobs", "emulators", "migrations")
# Most specific first: a module belongs to the first package it is in.
PACKAGES = (
    "app.core",
    "app.automation",
    "app.channels",
    "app.web",
    "app.cli",
    "app",
    "webhooks",
    "connectors",
    "jobs",
    "emulators",
    "migrations",
)


def lint_imports() -> subprocess.CompletedProcess[str]:
    """Run lint-imports (the one installed next to this Python) on the repository's contracts."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_are_kept() -> None:
    result = lint_imports()
    assert result.returncode == 0, f"lint-imports failed:\n{result.stdout}\n{result.stderr}"
    assert "0 broken" in result.stdout, result.stdout


def ignored_imports() -> set[tuple[str, str]]:
    """The (importer, imported) pairs the layers contract ignores, from pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    pairs = set()
    for contract in config["contracts"]:
        if contract["type"] == "layers":
            for expression in contract.get("ignore_imports", []):
                importer, _, imported = expression.partition("->")
                pairs.add((importer.strip(), imported.strip()))
    return pairs


def package_of(module: str) -> str:
    """The layer package a first-party module belongs to."""
    return next(p for p in PACKAGES if module == p or module.startswith(p + "."))


def graph() -> grimp.ImportGraph:
    """The first-party import graph (external packages left out)."""
    return grimp.build_graph(*FIRST_PARTY, cache_dir=None)


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan: the groups of nodes that reach each other (only groups of two or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    nodes = set(edges) | {n for targets in edges.values() for n in targets}
    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return sorted(groups)


def package_edges() -> dict[str, dict[str, list[str]]]:
    """Package -> package it imports -> the module imports that make the edge ("a.b -> c.d")."""
    g = graph()
    ignored = ignored_imports()
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for importer in sorted(g.modules):
        for imported in sorted(g.find_modules_directly_imported_by(importer)):
            if (importer, imported) in ignored:
                continue
            a, b = package_of(importer), package_of(imported)
            if a != b:
                out[a][b].append(f"{importer} -> {imported}")
    return out


def test_no_import_cycle_between_packages() -> None:
    edges = package_edges()
    cycles = strongly_connected({a: set(targets) for a, targets in edges.items()})
    details = [
        f"{a} -> {b}: {', '.join(edges[a][b])}"
        for group in cycles
        for a in group
        for b in group
        if b in edges.get(a, {})
    ]
    assert not cycles, "packages importing each other: " + "; ".join(details)


def module_cycles() -> dict[str, list[list[str]]]:
    """Cycles between modules inside one package, by package (information, not a failure)."""
    g = graph()
    by_package: dict[str, dict[str, set[str]]] = defaultdict(dict)
    for importer in g.modules:
        package = package_of(importer)
        inside = {m for m in g.find_modules_directly_imported_by(importer) if package_of(m) == package}
        by_package[package][importer] = inside
    return {p: c for p, edges in sorted(by_package.items()) if (c := strongly_connected(edges))}


if __name__ == "__main__":  # .venv/bin/python -m tests.test_architecture
    for package, groups in module_cycles().items():
        for group in groups:
            print(f"module cycle in {package}: {' <-> '.join(group)}")
