"""Which part of the harness may import which: no import circle anywhere in ``e2e/``; the story
(scenarios, their steps, a cell's run) on top, the harness that schedules clusters under it,
the install under that, the cluster providers and image building at the bottom, knowing
nothing of KServe or of the story. Imports inside functions and under ``TYPE_CHECKING``
count: a deferred import is still a tie."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers.paths import REPO
from helpers.providers import StandInProvider

from e2e import kserve
from e2e.targets import ServiceTarget

E2E = REPO / "e2e"
CLUSTER = E2E / "cluster"
# package or module -> what it must never import (a prefix covers the modules under it)
FORBIDDEN = {
    "e2e.cluster": ("e2e.install", "e2e.run", "e2e.cell", "e2e.scenario", "e2e.steps", "e2e.plugin"),
    "e2e.imageset": ("e2e.install", "e2e.run", "e2e.cell", "e2e.scenario", "e2e.steps", "e2e.plugin"),
    "e2e.install": ("e2e.run", "e2e.cell", "e2e.scenario", "e2e.steps", "e2e.plugin"),
    "e2e.run": ("e2e.cell", "e2e.scenario", "e2e.steps", "e2e.plugin"),
    "e2e.cell": ("e2e.scenario", "e2e.steps", "e2e.plugin"),
}


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(E2E.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Each module of e2e/ -> the modules of e2e/ it imports (anywhere in the file)."""
    modules = {_module_name(path): path for path in E2E.rglob("*.py")}
    return {name: {m for m in _imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_circle_in_the_harness() -> None:
    graph = _import_graph()
    circles = _circles(graph)
    assert not circles, "; ".join(
        " <-> ".join(circle)
        + " ("
        + ", ".join(f"{a} -> {b}" for a in circle for b in sorted(graph[a]) if b in circle)
        + ")"
        for circle in circles
    )


def test_the_circle_finder_finds_one() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_what_stands_above_it(layer: str) -> None:
    graph = _import_graph()
    wrong = sorted(
        f"{module} -> {imported}"
        for module, imports in graph.items()
        if module == layer or module.startswith(f"{layer}.")
        for imported in imports
        if any(imported == above or imported.startswith(f"{above}.") for above in FORBIDDEN[layer])
    )
    assert not wrong, wrong


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.py")), ids=lambda p: p.name)
def test_a_cluster_module_imports_nothing_of_kserve(path: Path) -> None:
    assert not {m for m in _imported_modules(path) if m == "e2e.kserve" or m.startswith("e2e.kserve.")}


@pytest.mark.parametrize("runs_pods", [True, False])
def test_the_predictor_service_is_reached_once_kserve_says_ready(
    monkeypatch: pytest.MonkeyPatch, runs_pods: bool
) -> None:
    """Both tiers: on kind the kubelet's pods are behind the Service, locally the processes
    that play them; the harness asks the provider for the Service either way."""
    isvc = {
        "metadata": {"namespace": "samples", "name": "iris"},
        "status": {"address": {"url": "http://iris-predictor.samples.svc.cluster.local"}},
    }
    monkeypatch.setattr(kserve, "wait_inference_service_ready", lambda api, namespace, name, **_: isvc)
    provider = StandInProvider(address="127.0.0.1:8080", runs_pods=runs_pods)
    with kserve.inference_endpoint(provider, "samples", "iris") as address:
        assert address == "127.0.0.1:8080"
    assert provider.reached == [ServiceTarget("samples", "iris-predictor", 80)]
