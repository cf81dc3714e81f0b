"""The hot path's import graph: apps call each other one way only, and metrics modules are
leaves. Read from the source (every import, at module level or inside a function)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

APPS = Path(__file__).resolve().parents[2] / "apps"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _app_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in APPS.rglob("*.py"):
        parts = path.relative_to(APPS).parts
        # Migrations are history; management commands (demo seeding) are not the app's code.
        if "migrations" in parts or "management" in parts:
            continue
        for module in _imports(path):
            if module.startswith("apps.") and module.split(".")[1] != parts[0]:
                graph[parts[0]].add(module.split(".")[1])
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    def visit(node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                return [*path[path.index(nxt) :], nxt]
            if (found := visit(nxt, [*path, nxt])) is not None:
                return found
        return None

    for start in sorted(graph):
        if (found := visit(start, [start])) is not None:
            return found
    return None


def test_apps_import_each_other_one_way_only():
    graph = _app_graph()

    # The flash sale sits below checkout: orders call it, it never calls orders
    assert "flashsales" in graph["orders"]
    assert "orders" not in graph["flashsales"]
    assert "orders" not in graph["inventory"]
    assert _cycle(graph) is None


def test_metrics_modules_are_leaves():
    # Services count their outcomes through metrics, so metrics must never reach back into a
    # write path (a cycle). A scrape-time collector may read selectors.
    write_paths = ("services", "checkout", "tasks", "api", "views")
    for path in APPS.glob("*/metrics.py"):
        reached = {m for m in _imports(path) if m.startswith("apps.")}
        assert not {m for m in reached if m.split(".")[2] in write_paths}, path
    # The hot path's metrics import nothing from the apps at all.
    for app in ("orders", "flashsales"):
        assert not {m for m in _imports(APPS / app / "metrics.py") if m.startswith("apps.")}
