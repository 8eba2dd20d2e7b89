"""The kind provider's factory: a cluster per group, its plan for --plan, and the checks
before any cluster is made (Docker, privileged containers, the image set)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from e2e.cluster.kind.cluster import KindCluster, KindOptions
from e2e.cluster.kind.commands import cluster_name
from e2e.cluster.kind.tools import (
    INOTIFY_HINT,
    ToolPaths,
    docker_preflight,
    inotify_shortfall,
    pin_tool_versions,
    resolve_tools,
    tool_cache_dir,
)
from e2e.cluster.mirrors import registry_binary
from e2e.cluster.provider import ClusterProvider, ProviderFactory
from e2e.imageset import release_install
from e2e.imageset.offline import LocalImageSet
from e2e.matrix import KServeRelease, Matrix, load_matrix

log = logging.getLogger(__name__)


class KindProviderFactory(ProviderFactory):
    """One kind cluster per cluster group, node image from the matrix."""

    name = "kind"

    def __init__(
        self,
        matrix: Matrix | None = None,
        options: KindOptions | None = None,
        *,
        keep: bool = False,
        keep_on_failure: bool = False,
        reuse: bool = False,
    ) -> None:
        """``options`` wins over the ``keep``/``keep_on_failure``/``reuse`` shorthands."""
        self.matrix = matrix if matrix is not None else load_matrix()
        self.options = options or KindOptions(keep_cluster=keep, keep_on_failure=keep_on_failure, reuse_cluster=reuse)

    def preflight(self) -> None:
        docker_preflight(self.options.docker)
        low = inotify_shortfall()
        if low:  # a single group runs on the default; several clusters at once may not
            log.warning("%s: kind nodes beyond about four at once may fail to start; %s", low, INOTIFY_HINT)
        registry_binary()  # every node pulls through the run's mirrors: no mirror, no cluster
        if not self.options.local_images:
            resolve_tools(self.options.kind_bin, self.options.kubectl_bin)

    def why_release_cannot_run(self, release: KServeRelease, documents: Sequence[dict[str, Any]]) -> str:
        """On the local image set, a controller not built here (e.g. a version the Go module
        proxy refuses) leaves nothing to run; online, the kubelet's pull decides."""
        if not self.options.local_images:
            return ""
        hosts = {host for host, _ in self.options.user_registries}
        return release_install.why_release_cannot_run(LocalImageSet(self.options.docker), release, documents, hosts)

    def _local_cluster(self, group_id: str, kubernetes_version: str) -> KindCluster:
        """A cluster of the local image set: node image and tools built here (when missing)."""
        image_set = LocalImageSet(self.options.docker)
        node = image_set.node_image(kubernetes_version)
        built = image_set.tools(node.kubernetes_version)
        kind_bin, kubectl_bin = self.options.kind_bin or built.kind, self.options.kubectl_bin or built.kubectl
        tools = ToolPaths(kind=kind_bin, kubectl=kubectl_bin, downloaded=False)
        kind = KindCluster(
            cluster_name(group_id), node.reference, node.kubernetes_version, self.options, tools, image_set
        )
        published = self.matrix.k8s(kubernetes_version).node_image
        kind.info.deviations.append(
            f"node image {node.reference} built here from source (Kubernetes {node.kubernetes_version}), "
            + (f"not the published {published.split('@', 1)[0]}" if published else "no published one is pinned")
        )
        return kind

    def _online_cluster(self, group_id: str, kubernetes_version: str) -> KindCluster:
        """A cluster of the matrix's published node image; a minor without one boots the node
        image built here (its absence says how to build it), the rest pulled by the kubelet."""
        kube = self.matrix.k8s(kubernetes_version)
        tools = resolve_tools(self.options.kind_bin, self.options.kubectl_bin)
        if kube.node_image:
            return KindCluster(cluster_name(group_id), kube.node_image, kubernetes_version, self.options, tools)
        node = LocalImageSet(self.options.docker).node_image(kubernetes_version)
        kind = KindCluster(cluster_name(group_id), node.reference, node.kubernetes_version, self.options, tools)
        kind.info.deviations.append(
            f"node image {node.reference} built here from source (Kubernetes {node.kubernetes_version}): "
            f"the matrix pins no published kind node image for Kubernetes {kube.version}"
        )
        return kind

    @contextlib.contextmanager
    def cluster(self, group_id: str, kubernetes_version: str) -> Iterator[ClusterProvider]:
        self.preflight()
        if self.options.local_images:
            kind = self._local_cluster(group_id, kubernetes_version)
        else:
            kind = self._online_cluster(group_id, kubernetes_version)
        try:
            kind.start()
            yield kind
        except BaseException:
            kind.mark_failed()
            raise
        finally:
            kind.delete()

    def plan(self, group_id: str, kubernetes_version: str) -> list[str]:
        from e2e import binaries
        from e2e.imageset import node as node_images

        kube = self.matrix.k8s(kubernetes_version)
        name = cluster_name(group_id)
        versions = pin_tool_versions()
        built_image = f"{node_images.NODE_IMAGE_REPOSITORY}:{kube.build}"
        if self.options.local_images:
            steps = [
                f"local image set (--local-images): kind {binaries.DEFAULT_VERSIONS['kind']} and kubectl "
                f"{kube.build} built from their Go modules; nothing is pulled",
                f"node image {built_image} built from source when missing (Kubernetes {kube.build}, in place of "
                + (f"{kube.node_image.split('@', 1)[0]}" if kube.node_image else "a published one (none is pinned)")
                + ": a deviation in the report)",
            ]
            node_image, pinned = built_image, ""
        else:
            steps = [
                f"kind {versions['KIND_VERSION']}, kubectl {versions['KUBECTL_VERSION']} (pytest-kind; amd64 "
                f"downloads cached in {tool_cache_dir()})"
            ]
            if kube.node_image:
                node_image = kube.node_image
                pinned = (
                    ""
                    if "@sha256:" in node_image
                    else " (not pinned by digest: kind supports only the images built for its release)"
                )
            else:
                steps.append(
                    f"no published kind node image is pinned for Kubernetes {kube.version}: boot {built_image}, "
                    f"built here from source (`nox -s images -- build --k8s {kube.version}`; a deviation in the report)"
                )
                node_image, pinned = built_image, ""
        workers = self.options.workers
        nodes = "one control-plane node" + (
            f" and {workers} worker{'s' if workers > 1 else ''} (the control plane tainted: workloads on the workers)"
            if workers
            else ""
        )
        create = f"create kind cluster {name}: {nodes}, node image {node_image}{pinned}"
        if self.options.reuse_cluster:
            steps.append(
                f"reuse kind cluster {name} if it exists (kubeconfig via `kind export kubeconfig`), else {create}"
            )
        else:
            steps.append(f"{create} (stop if a cluster of that name exists: --reuse-cluster uses it)")
        if workers and node_image == built_image:
            from e2e.imageset import pod_network

            steps.append(
                f"pod network: kube-router {pod_network.version()} built from its Go module (routes between the "
                "nodes' pod ranges, bridge CNI), in place of kind's kindnetd, whose module the Go module proxy "
                "does not serve: a deviation in the report"
            )
        steps += [
            f"wait for the node{'s' if workers else ''} to be Ready (up to {self.options.node_ready_timeout:.0f}s)",
            (
                "the kubelet pulls every image through registry mirrors the run starts (one per registry "
                "host, Debian's docker-registry on loopback, reached from the nodes through the kind "
                "network's gateway; containerd's certs.d mounted into the node): "
                + (
                    "offline, each holds what the run pushed from the local image set; a retired image is "
                    "never pushed, so its pull fails with the registry's 404 (NotFound), as in production"
                    if self.options.local_images
                    else "pull-through caches of the real registries, kept in the harness's cache"
                )
            ),
            *(
                f"{host}: the nodes pull from your registry {url} instead (--registry-mirror; nothing is "
                "pushed there by the run: seed it with `kserve-compat images push --to`)"
                for host, url in self.options.user_registries
            ),
            "reach Services with `kubectl port-forward svc/NAME :PORT`",
            "on failure: `kind export logs` into the cell's diagnostics",
        ]
        if self.options.keep_cluster:
            steps.append(f"keep kind cluster {name} at the end (--keep-cluster)")
        else:
            unless = []
            if self.options.reuse_cluster:
                unless.append("it was reused")
            if self.options.keep_on_failure:
                unless.append("a cell failed (--keep-on-failure)")
            steps.append(
                f"delete kind cluster {name} at the end" + (" unless " + " or ".join(unless) if unless else "")
            )
        return steps
