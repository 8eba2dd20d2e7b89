"""A stand-in cluster provider for tests that need the provider interface, not a cluster.

Its Kubernetes API, when a test has one, is a real control plane's (``kubeconfig``; without
one, a client configured for no server); each
Service answers at one fixed address (the targets asked for are recorded); logs are what
``logs_for`` says (empty by default; the requests are recorded); loading images, syncing
workloads and deleting do nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from kubernetes import client as k8s_client

from e2e.cluster.provider import ClusterInfo, ClusterProvider, ServiceTarget


class StandInProvider(ClusterProvider):
    def __init__(
        self,
        kubeconfig: Path | None = None,
        *,
        name: str = "stand-in",
        address: str = "127.0.0.1:1",
        runs_pods: bool = True,
    ) -> None:
        self.info = ClusterInfo(provider="stand-in", name=name)
        self._kubeconfig = kubeconfig
        self.address = address
        self.runs_pods = runs_pods
        self.reached: list[ServiceTarget] = []
        self.log_requests: list[tuple[str, str, str, bool]] = []

    @property
    def kubeconfig(self) -> Path:
        if self._kubeconfig is None:
            raise AssertionError("this stand-in has no API server; the test did not expect one to be used")
        return self._kubeconfig

    def api_client(self) -> k8s_client.ApiClient:
        if self._kubeconfig is None:
            return k8s_client.ApiClient()  # configured for no server: a call on it fails
        return super().api_client()

    @contextlib.contextmanager
    def endpoint(self, target: ServiceTarget) -> Iterator[str]:
        self.reached.append(target)
        yield self.address

    def load_images(self, images: Sequence[str]) -> None:
        pass

    def sync_workloads(self) -> list[str]:
        return []

    def container_logs(self, namespace: str, pod_selector: str, container: str, previous: bool = False) -> str:
        self.log_requests.append((namespace, pod_selector, container, previous))
        return self.logs_for(container, previous)

    def logs_for(self, container: str, previous: bool) -> str:
        """What ``kubectl logs`` would print; a subclass tells a story."""
        return ""

    def export_logs(self, directory: Path) -> None:
        pass

    def delete(self) -> None:
        pass
