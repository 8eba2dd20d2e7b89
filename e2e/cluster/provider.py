"""The one interface both cluster providers implement: kind (containers) and local (processes).

Everything that talks to the API server (apply, patch, wait, tokens, checks, diagnostics)
is shared code that takes a ``ClusterProvider``; only what a cluster *is* differs:
how it is created, how a Service is reached from the test process, how images get onto
nodes, who runs the pods' containers, and where container logs come from.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from e2e.errors import HarnessError, WorkloadUnavailable
from e2e.manifests import container_images
from e2e.targets import ServiceTarget

if TYPE_CHECKING:
    from e2e.imageset.offline import LocalImageSet
    from e2e.matrix import KServeRelease
    from e2e.scrape import ScrapeJob

__all__ = ["ClusterInfo", "ClusterProvider", "ProviderFactory", "ServiceTarget", "no_endpoint_change"]


@dataclass
class ClusterInfo:
    """What the report records about the cluster a cell ran on."""

    provider: str
    name: str
    kubernetes_version: str = ""
    # How this cluster differs from a real one (e.g. webhooks removed). Listed in reports.
    deviations: list[str] = field(default_factory=list)


@dataclass
class CertManagerInstall:
    """The cert-manager a provider installs instead of the release's, and why it differs."""

    documents: list[dict[str, Any]]
    deviations: list[str] = field(default_factory=list)


@dataclass
class SamplesServing:
    """How the samples' model server is had: a model store to fetch from (a ``storageUri``
    the samples are rewritten to), or why inference cannot be checked; and what differs."""

    model_store_uri: str = ""
    unavailable: str = ""
    deviations: list[str] = field(default_factory=list)


class ClusterProvider(abc.ABC):
    """A running cluster the harness can use. Create through a provider's factory."""

    info: ClusterInfo
    #: Whether a kubelet runs the pods' containers. Without one (local tier) nothing serves
    #: admission webhooks or pulls cert-manager's images, so only CRDs of those are applied.
    runs_pods: bool = True
    #: The image set built here that a kind cluster runs on (``--local-images``), else None.
    image_set: LocalImageSet | None = None

    @property
    @abc.abstractmethod
    def kubeconfig(self) -> Path:
        """Path of a kubeconfig file (a secret: never log its contents)."""

    def api_client(self) -> k8s_client.ApiClient:
        """A fresh API client for this cluster, built from the kubeconfig."""
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def server_version(self) -> str:
        """The API server's own version (``v1.35.4``): what the report says really ran."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return str(k8s_client.VersionApi(self.api_client()).get_code().git_version)
        except (ApiException, HTTPError, OSError) as exc:
            return f"unknown ({type(exc).__name__})"

    @abc.abstractmethod
    def endpoint(self, target: ServiceTarget) -> contextlib.AbstractContextManager[str]:
        """A context manager yielding ``host:port`` on this machine that reaches ``target``.

        kind: a ``kubectl port-forward`` to the Service; local: the address of the process
        that plays the pod behind the Service.
        """

    @abc.abstractmethod
    def load_images(self, images: Sequence[str]) -> None:
        """Make images available to the nodes (kind: into the run's registry mirrors, which
        the kubelet pulls from; local: binaries exist)."""

    def registry_problem(self) -> list[str]:
        """Evidence that a registry the nodes pull from is broken (a mirror of the run that
        died), empty when none is: a pull failure is then the image's, not the harness's."""
        return []

    @abc.abstractmethod
    def sync_workloads(self) -> list[str]:
        """Bring the running containers in line with the Deployments in the API server.

        kind: nothing (the kubelet does it); local: start, restart or stop the processes
        that play the controller pod's containers. Returns notes for the report (e.g.
        port remaps), empty when there is nothing to say.
        """

    @abc.abstractmethod
    def container_logs(self, namespace: str, pod_selector: str, container: str, previous: bool = False) -> str:
        """The log text of a container of the pods matching a label selector."""

    def observed_images(self, namespace: str, pod_selector: str, container: str) -> list[str] | None:
        """Images the provider itself knows a container runs, or None to read pod statuses.

        kind: None (the kubelet reports it in the pod status); local: the image whose
        binary the provider started for that container.
        """
        return None

    # -- what the install takes from its cluster (kind on the image set built here overrides) --

    def cert_manager(self, release: KServeRelease) -> CertManagerInstall | None:
        """The cert-manager installed in place of the release's own, or None: the release's."""
        return None

    def make_pullable(self, release: KServeRelease, documents: Sequence[dict[str, Any]]) -> list[str]:
        """Make the release's images pullable before ``documents`` are applied; returns notes.
        By default their hosts' (pull-through) mirrors fetch them; without a kubelet nothing pulls."""
        if self.runs_pods:
            self.load_images(container_images(documents))
        return []

    def serve_samples(self, release: KServeRelease, images: list[str]) -> SamplesServing:
        """How the samples' model server (``images``: the release's server and storage
        initializer) is had; by default from the registries, as the release names it."""
        return SamplesServing()

    def why_nothing_serves(self) -> str:
        """Why no sample model can be served on this cluster once KServe is installed, or
        "" when one can (locally: a release whose manager is only a stand-in reconciles nothing)."""
        return ""

    def start_prometheus(self, jobs: Sequence[ScrapeJob]) -> None:
        """Start a real Prometheus that scrapes ``jobs`` and stops with this cluster.

        Raises ``WorkloadUnavailable`` where the provider runs none (kind, so far: see
        ``e2e/data/manifests/prometheus.yaml``, untested) and ``EnvironmentMissing`` without a binary.
        """
        raise WorkloadUnavailable(f"{self.info.provider} tier: no Prometheus is started yet")

    def prometheus_endpoint(self) -> contextlib.AbstractContextManager[str]:
        """``host:port`` of the HTTP API of the Prometheus ``start_prometheus`` started."""
        raise WorkloadUnavailable(f"{self.info.provider} tier: no Prometheus is started yet")

    def mark_failed(self) -> None:  # noqa: B027 - optional hook
        """A cell failed on this cluster (kind keeps it with ``--keep-on-failure``)."""

    def recover(self) -> str | None:
        """After a failed cell: None if the cluster still answers, else repair it and say how.

        Raises ``HarnessError`` when it cannot be repaired; the harness then replaces the
        group's cluster before the next cell.
        """
        try:
            k8s_client.VersionApi(self.api_client()).get_code(_request_timeout=10)
        except Exception as exc:
            raise HarnessError(f"cluster {self.info.name} does not answer: {type(exc).__name__}") from None
        return None

    @abc.abstractmethod
    def export_logs(self, directory: Path) -> None:
        """Write everything the provider knows about its cluster's logs under ``directory``."""

    @abc.abstractmethod
    def delete(self) -> None:
        """Tear the cluster down (unless the user asked to keep it)."""


class ProviderFactory(abc.ABC):
    """Creates (or reuses) one cluster per ``ClusterGroup``."""

    name: str

    @abc.abstractmethod
    def cluster(self, group_id: str, kubernetes_version: str) -> contextlib.AbstractContextManager[ClusterProvider]:
        """A cluster for a group of cells; torn down on exit unless kept."""

    @abc.abstractmethod
    def plan(self, group_id: str, kubernetes_version: str) -> list[str]:
        """What ``cluster()`` would do, as human-readable steps, without doing it."""

    def preflight(self) -> None:  # noqa: B027 - optional hook: most providers need nothing
        """Raise ``EnvironmentMissing`` with one line when the provider cannot run here."""

    def why_release_cannot_run(self, release: KServeRelease, documents: Sequence[dict[str, Any]]) -> str:
        """Why no cluster of ``release`` (its manifest's ``documents``) could install it here,
        or "" when one can. Asked before a group's cluster is made, so a release that
        cannot run here costs no cluster; most providers find out at install."""
        return ""


@contextlib.contextmanager
def no_endpoint_change(address: str) -> Iterator[str]:
    """An endpoint that is already reachable (used by providers that need no forwarding)."""
    yield address
