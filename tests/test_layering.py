"""Which part of the harness may import which: the cluster providers know nothing of KServe."""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import kserve
from e2e.cluster.provider import ClusterInfo, ClusterProvider
from e2e.targets import ServiceTarget

CLUSTER = Path(__file__).resolve().parent.parent / "e2e" / "cluster"


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.py")), ids=lambda p: p.name)
def test_a_cluster_module_imports_nothing_of_kserve(path: Path) -> None:
    assert not {m for m in _imported_modules(path) if m == "e2e.kserve" or m.startswith("e2e.kserve.")}


class _Provider(ClusterProvider):
    def __init__(self, runs_pods: bool) -> None:
        self.info = ClusterInfo(provider="fake", name="c1")
        self.runs_pods = runs_pods
        self.reached: list[ServiceTarget] = []

    @property
    def kubeconfig(self) -> Path:
        raise AssertionError("not used")

    def api_client(self) -> Any:
        return object()

    @contextlib.contextmanager
    def endpoint(self, target: ServiceTarget) -> Iterator[str]:
        self.reached.append(target)
        yield "127.0.0.1:8080"

    def load_images(self, images: Any) -> None: ...
    def sync_workloads(self) -> list[str]:
        return []

    def container_logs(self, namespace: str, pod_selector: str, container: str, previous: bool = False) -> str:
        return ""

    def export_logs(self, directory: Path) -> None: ...
    def delete(self) -> None: ...


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
    provider = _Provider(runs_pods=runs_pods)
    with kserve.inference_endpoint(provider, "samples", "iris") as address:
        assert address == "127.0.0.1:8080"
    assert provider.reached == [ServiceTarget("samples", "iris-predictor", 80)]
