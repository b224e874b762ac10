"""The package's import structure: layers only go down, and no module imports one that imports it back.

Layers (docs/architecture.md): ``runtime`` is the torch-free base and never
imports ``train``, ``export``, ``tools`` or torch; ``train`` builds on ``runtime`` and
never imports ``export``; ``export`` may import both; ``tools`` (the demo commands)
sits on top and stays torch-free, so it runs on a runtime-only install. The top
package ``mnist_edge`` (``package/__init__.py``) holds only the version, from
``runtime``, so ``import mnist_edge`` costs no stage. Every import counts, at module
level, inside functions and under ``TYPE_CHECKING`` alike: a reader who opens
a file can trust what it may touch.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "train", "export", "tools")  # folder == mnist_edge.<folder>
TORCH = ("torch", "torchvision", "onnxscript")
FORBIDDEN = {
    "runtime": ("mnist_edge.train", "mnist_edge.export", "mnist_edge.tools", *TORCH),
    "train": ("mnist_edge.export", "mnist_edge.tools"),
    "export": ("mnist_edge.tools",),
    "tools": ("mnist_edge.train", *TORCH),
}
TOP = REPO / "package" / "__init__.py"  # the package itself: mnist_edge
TOP_MAY_IMPORT = ("mnist_edge.runtime",)


def _module_files() -> dict[str, Path]:
    """``mnist_edge.runtime.session`` -> ``runtime/session.py`` for every module of the packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(["mnist_edge", *parts])] = path
    modules["mnist_edge"] = TOP
    return modules


MODULES = _module_files()


def _imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement in a module."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in MODULES else target), node.lineno


def _graph() -> dict[str, set[str]]:
    return {
        name: {target for target, _ in _imports(name, path) if target in MODULES and target != name}
        for name, path in MODULES.items()
    }


def test_the_scan_sees_the_package() -> None:
    graph = _graph()
    assert "mnist_edge.runtime.stream" in graph and "mnist_edge.export.pipeline" in graph
    assert "mnist_edge.runtime.classifier" in graph["mnist_edge.runtime.stream"]
    assert "mnist_edge.train.model" in graph["mnist_edge.export.onnx"]


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_only_go_down_the_layers(package: str) -> None:
    broken = [
        f"{path.relative_to(REPO)}:{line} imports {target}"
        for name, path in MODULES.items()
        if name.startswith(f"mnist_edge.{package}")
        for target, line in _imports(name, path)
        if any(target == bad or target.startswith(f"{bad}.") for bad in FORBIDDEN[package])
    ]
    assert broken == []


def test_the_top_package_imports_only_the_runtime_package() -> None:
    targets = {
        target for target, _ in _imports("mnist_edge", TOP) if target.startswith("mnist_edge")
    }
    assert targets and targets <= set(TOP_MAY_IMPORT)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
