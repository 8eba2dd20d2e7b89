"""One kind cluster of a cluster group: created (or reused) through pytest-kind, its registry
mirrors, images, workloads, logs and Prometheus; deleted with its group."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import tenacity
import yaml
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e import diagnostics, scrape
from e2e.apply import Applier
from e2e.cluster import cgroup_freezer
from e2e.cluster.kind.commands import (
    DockerCommands,
    KindCommands,
    allow_cgroup_v1_deviation,
    cluster_config_yaml,
    engine_cgroup_version,
    kubectl_environment,
    kubelet_refuses_cgroup_v1,
    node_names,
    parse_kind_clusters,
    port_forward_argv,
)
from e2e.cluster.kind.forwarding import NotReady, port_forward
from e2e.cluster.kind.pod_network import PodNetwork, cni_folders
from e2e.cluster.kind.tools import (
    INOTIFY_HINT,
    PRIVILEGED_CAPS_HINT,
    ToolPaths,
    inotify_shortfall,
    pin_tool_versions,
    privileged_containers_refused,
)
from e2e.cluster.mirrors import NODE_CERTS_DIR, MirrorMode, NodeMirrors, upstream_name
from e2e.cluster.provider import CertManagerInstall, ClusterInfo, ClusterProvider, SamplesServing
from e2e.command import last_lines, run
from e2e.data import MANIFESTS_DIR
from e2e.docker_cli import image_exists, image_id
from e2e.errors import EnvironmentMissing, HarnessError, UsageError, WorkloadFailed, WorkloadUnavailable
from e2e.imageset import release_install
from e2e.imageset.offline import LocalImageSet
from e2e.imageset.pod_network import build_kube_router_image
from e2e.matrix import KServeRelease
from e2e.rollout import wait_for_rollout
from e2e.targets import ServiceTarget

if TYPE_CHECKING:
    from e2e.scrape import ScrapeJob

log = logging.getLogger(__name__)

PROMETHEUS_MANIFEST = MANIFESTS_DIR / "prometheus.yaml"
# After a creation that did not finish, the delete watches for node containers the engine was
# still creating (the `docker run` it answers was killed by the same Ctrl-C): until none has
# been seen for LATE_NODE_QUIET_S, and LATE_NODE_LIMIT_S at most.
LATE_NODE_QUIET_S = 5.0
LATE_NODE_LIMIT_S = 60.0
LATE_NODE_RECHECK_S = 0.25

# -- the provider -----------------------------------------------------------------------


@dataclass(frozen=True)
class KindOptions:
    """How clusters are kept or reused. ``keep_cluster`` is pytest-kind's ``--keep-cluster``."""

    keep_cluster: bool = False
    keep_on_failure: bool = False
    reuse_cluster: bool = False
    kind_bin: Path | None = None
    kubectl_bin: Path | None = None
    docker: str = "docker"
    node_ready_timeout: float = 180.0
    # The image set built by `kserve-compat images` (``--local-images``): nothing is pulled.
    local_images: bool = False
    # --registry-mirror HOST=URL: the user's registries the nodes pull those hosts from.
    user_registries: tuple[tuple[str, str], ...] = ()
    # --kind-workers N: worker nodes besides the control plane (kind then keeps the control
    # plane tainted: workloads land on the workers).
    workers: int = 0


class KindCluster(ClusterProvider):
    """A kind cluster for one group, built on pytest-kind's ``KindCluster``."""

    def __init__(
        self,
        name: str,
        node_image: str,
        kubernetes_version: str,
        options: KindOptions,
        tools: ToolPaths,
        image_set: LocalImageSet | None = None,
    ) -> None:
        import pytest_kind.cluster  # after pin_tool_versions() (module import above)

        self.name = name
        self.node_image = node_image
        self.options = options
        # pytest-kind keeps per-cluster state in ./.pytest-kind/NAME (kubeconfig, binaries).
        self._kind = pytest_kind.cluster.KindCluster(
            name, image=node_image, kind_path=tools.kind, kubectl_path=tools.kubectl
        )
        self.state_dir = Path(self._kind.path)
        self.commands = KindCommands(Path(self._kind.kind_path), name, Path(self._kind.kubeconfig_path))
        self.docker = DockerCommands(options.docker)
        self.info = ClusterInfo(provider="kind", name=name, kubernetes_version=kubernetes_version)
        self.image_set = image_set
        # The kubelet pulls every image through these (see mirrors.py): offline they hold what
        # the run pushed from the local image set, online they cache the real registries.
        self.mirrors = NodeMirrors(
            self.state_dir.resolve() / "certs.d",
            self.state_dir.resolve() / "mirrors",
            MirrorMode.offline() if image_set is not None else MirrorMode.online(),
            self._gateway,
            user_registries=dict(options.user_registries),
        )
        self._prometheus_started = False
        self.reused = False
        self.failed = False
        self._deleted = False
        self._created = False  # `kind create` returned: no node container can still be in flight

    @property
    def kubeconfig(self) -> Path:
        return Path(self._kind.kubeconfig_path)

    @property
    def config_file(self) -> Path:
        return self.state_dir / "kind-config.yaml"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster, or reuse one of the same name when allowed; wait for nodes."""
        for tool in (self.commands.kind, Path(self._kind.kubectl_path)):
            tool.parent.mkdir(parents=True, exist_ok=True)
        self._ensure_tools()
        existing = parse_kind_clusters(run(self.commands.get_clusters(), "kind get clusters").stdout)
        if self.name in existing:
            if not self.options.reuse_cluster:
                raise UsageError(
                    f"kind cluster {self.name} already exists; pass --reuse-cluster to use it "
                    f"or delete it with `kind delete cluster --name {self.name}`"
                )
            log.info("reusing kind cluster %s", self.name)
            self.reused = True
            self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
            # pytest-kind only touches the kubeconfig of a cluster it finds: fetch the real one.
            run(self.commands.export_kubeconfig(), f"kind export kubeconfig {self.name}")
            self.mirrors.certs_dir = self._reused_certs_dir()
            self.mirrors.prepare()
        else:
            networking = self.image_set.cluster_networking() if self.image_set else None
            self.mirrors.prepare()
            allow_cgroup_v1 = kubelet_refuses_cgroup_v1(self.info.kubernetes_version) and (
                engine_cgroup_version(self.options.docker) == "1"
            )
            if allow_cgroup_v1:
                self.info.deviations.append(allow_cgroup_v1_deviation(self.info.kubernetes_version))
            self.config_file.write_text(
                cluster_config_yaml(
                    self.node_image,
                    networking,
                    self.mirrors.certs_dir,
                    patch_containerd=self.image_set is None,
                    allow_cgroup_v1=allow_cgroup_v1,
                    workers=self.options.workers,
                    cni_dirs=self._pod_network_dirs() if self.runs_own_pod_network else (),
                )
            )
            log.info("creating kind cluster %s with node image %s", self.name, self.node_image)
        create_started = time.time()
        try:
            self._kind.create(config_file=self.config_file if not self.reused else None)
        except subprocess.CalledProcessError as exc:
            if privileged_containers_refused(self.options.docker, self.node_image):
                raise EnvironmentMissing(f"kind create cluster {self.name}: {PRIVILEGED_CAPS_HINT}") from None
            low = inotify_shortfall()
            raise HarnessError(
                f"kind create cluster {self.name} (image {self.node_image}) exited {exc.returncode}; "
                f"see its output above; its node containers meanwhile: {self._node_history(create_started)}"
                + (f"; {low}: {INOTIFY_HINT}" if low else "")
            ) from None
        self._created = True
        if self.runs_own_pod_network and not self.reused:
            self._start_pod_network()
        self._wait_nodes_ready()

    @property
    def runs_own_pod_network(self) -> bool:
        """Workers on a node image built here: kube-router connects the nodes' pods (a
        published node image has kind's kindnetd, multi-node already)."""
        from e2e.imageset import node

        return self.options.workers > 0 and self.node_image.startswith(f"{node.NODE_IMAGE_REPOSITORY}:")

    def _pod_network_dirs(self) -> list[Path]:
        return cni_folders(self.state_dir.resolve() / "cni", node_names(self.name, self.options.workers))

    def _start_pod_network(self) -> None:
        nodes = node_names(self.name, self.options.workers)
        network = PodNetwork(self.name, nodes, self.options.docker, self.options.node_ready_timeout)
        network.open_guards(self._network_ipv4(nodes[0], "IPAddress"))
        image = build_kube_router_image()
        self.load_images([image])
        network.start(self.api_client(), image, self.container_logs)
        self.info.deviations.append(network.deviation())

    def _reused_certs_dir(self) -> Path:
        """The host folder a reused cluster's nodes read containerd's certs.d from: the run's
        mirrors write their hosts.toml there. It is fixed when the nodes are created, so a
        cluster made from another folder keeps that one; a node without it (made by hand or by
        an older kserve-compat) or one whose folder is gone would pull past the mirrors."""
        listed = run(self.docker.node_states(self.name), f"docker ps (nodes of {self.name})").stdout
        nodes = [line.split("\t", 1)[0] for line in listed.splitlines() if line.strip()]
        if not nodes:
            raise UsageError(f"kind cluster {self.name}: no node container found to reuse")
        inspected = run(self.docker.certs_mounts(nodes), f"docker inspect (nodes of {self.name})").stdout
        sources = {
            name.lstrip("/"): source.strip()
            for name, _, source in (line.partition("\t") for line in inspected.splitlines() if line.strip())
        }
        delete = f"delete it with `kind delete cluster --name {self.name}` and run again"
        unmounted = sorted(node for node in nodes if not sources.get(node))
        if unmounted:
            raise UsageError(
                f"kind cluster {self.name}: node {', '.join(unmounted)} has no {NODE_CERTS_DIR} mount (not made by "
                f"this kserve-compat), so its kubelet would not pull through the run's registry mirrors; {delete}"
            )
        folders = sorted(set(sources[node] for node in nodes))
        if len(folders) > 1:
            raise UsageError(
                f"kind cluster {self.name}: its nodes mount {NODE_CERTS_DIR} from different folders "
                f"({', '.join(folders)}); {delete}"
            )
        folder = Path(folders[0])
        if not folder.is_dir():
            raise UsageError(
                f"kind cluster {self.name}: its nodes read {NODE_CERTS_DIR} from {folder}, which no longer exists "
                f"on this host, so the run's registry mirrors cannot reach them; {delete}"
            )
        if folder != self.mirrors.certs_dir:
            log.info(
                "kind cluster %s was created from another folder: its nodes read %s from %s, where this run's "
                "mirrors write their hosts.toml", self.name, NODE_CERTS_DIR, folder,
            )  # fmt: skip
        return folder

    def _gateway(self) -> str:
        """The node's gateway on the kind network: the one address of this host it reaches."""
        return self._network_ipv4(f"{self.name}-control-plane", "Gateway")

    def _network_ipv4(self, node: str, field: str) -> str:
        """The node's IPv4 ``field`` (IPAddress, Gateway) on its Docker network."""
        listing = run(
            [self.options.docker, "inspect", "--format", f"{{{{range .NetworkSettings.Networks}}}}{{{{.{field}}}}} "
             "{{end}}", node], f"docker inspect {node}",
        ).stdout.split()  # fmt: skip
        ipv4 = [address for address in listing if address.count(".") == 3]
        if not ipv4:
            raise HarnessError(f"kind node {node}: no IPv4 {field} on its network (docker inspect: {listing})")
        return ipv4[0]

    def _wait_nodes_ready(self) -> None:
        core = k8s_client.CoreV1Api(self.api_client())
        last_seen = ["no node listed yet"]

        def check() -> list[str]:
            nodes = core.list_node().items
            states = []
            ready_versions = []
            for node in nodes:
                ready = next((c.status for c in node.status.conditions or [] if c.type == "Ready"), "Unknown")
                states.append(f"{node.metadata.name} Ready={ready}")
                if ready == "True":
                    ready_versions.append(node.status.node_info.kubelet_version)
            last_seen[0] = ", ".join(states) or "no node listed yet"
            if not nodes or len(ready_versions) != len(nodes):
                raise NotReady(last_seen[0])
            return ready_versions

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.options.node_ready_timeout),
            wait=tenacity.wait_exponential(multiplier=1, min=1, max=10),
            retry=tenacity.retry_if_exception_type((NotReady, ApiException, OSError)),
            before_sleep=lambda s: log.info(
                "waiting for the nodes of %s to be Ready (last seen: %s)", self.name, last_seen[0]
            ),
            reraise=True,
        )
        try:
            versions = retrying(check)
        except (NotReady, ApiException, OSError):
            raise HarnessError(
                f"kind cluster {self.name}: nodes not Ready after {self.options.node_ready_timeout:.0f}s "
                f"(last seen: {last_seen[0]})"
            ) from None
        # The matrix names a minor ("1.34"); a node image built here, its exact version ("v1.34.4").
        wanted = self.info.kubernetes_version.removeprefix("v")
        if self.reused and not all(v.removeprefix("v") == wanted or v.startswith(f"v{wanted}.") for v in versions):
            raise UsageError(
                f"kind cluster {self.name} runs {', '.join(sorted(set(versions)))}, not Kubernetes "
                f"{self.info.kubernetes_version}; delete it with `kind delete cluster --name {self.name}`"
            )

    def recover(self) -> str | None:
        """After a failed cell: a node container that is not running (killed, out of memory)
        is the cause the cell's result names; the harness then replaces the cluster."""
        listed = run(self.docker.node_states(self.name), f"docker ps (nodes of {self.name})", timeout=60, check=False)
        down = [
            f"{name} {state} ({status})"
            for name, state, status in (
                line.split("\t", 2) for line in listed.stdout.splitlines() if line.count("\t") == 2
            )
            if state != "running"
        ]
        if down:
            raise HarnessError(f"kind cluster {self.name}: node container {', '.join(down)}")
        return super().recover()

    def mark_failed(self) -> None:
        """Record that a cell failed on this cluster (for keep-on-failure)."""
        self.failed = True

    def keeps_cluster(self) -> bool:
        return (
            self.options.keep_cluster
            or self.reused  # not ours to delete
            or (self.options.keep_on_failure and self.failed)
        )

    def delete(self) -> None:
        if self._deleted:
            return
        try:
            # The mirrors are the run's processes: they stop with it, even when the cluster is
            # kept (a kept cluster pulls nothing new once the run has ended).
            self.mirrors.stop()
        finally:
            if self.keeps_cluster():
                log.info("keeping kind cluster %s (kubeconfig: %s)", self.name, self.kubeconfig)
            else:
                self._deleted = True
                self._delete_cluster()

    def _delete_cluster(self) -> None:
        try:
            self._kind.delete()
        except subprocess.CalledProcessError:
            # A node torn down mid-pod-start can keep a frozen cgroup that no kill reaches.
            thawed = [path for node in self._node_container_ids() for path in cgroup_freezer.thaw(node)]
            if not thawed:
                raise
            log.warning(
                "kind cluster %s: its node could not be killed: %d cgroup(s) inside it were left frozen "
                "(cgroup v1 freezer); thawed them, deleting again",
                self.name,
                len(thawed),
            )
            self._kind.delete()
        if not self._created:
            self._delete_late_nodes()
        # pytest-kind leaves ./.pytest-kind/NAME (kubeconfig of a cluster now gone, its config).
        shutil.rmtree(self.state_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # only when no other cluster's state is in it
            self.state_dir.parent.rmdir()

    def _delete_late_nodes(self) -> None:
        """After a creation that did not finish (Ctrl-C, a failure): Ctrl-C kills the
        `docker run` that `kind create` started, but the engine still completes a request it
        already had, so a node container can appear after the delete. Seen in CI once right
        after the delete, and once more after the delete that followed: so look until none
        has been seen for a while, deleting each one that shows."""
        started = time.monotonic()
        quiet_since = started
        while time.monotonic() - quiet_since < LATE_NODE_QUIET_S:
            late = self._node_container_ids()
            if not late:
                time.sleep(LATE_NODE_RECHECK_S)
                continue
            ids = " ".join(container_id[:12] for container_id in late)
            if time.monotonic() - started > LATE_NODE_LIMIT_S:
                log.error(
                    "kind cluster %s: node container(s) %s still there after %.0f s of deleting; "
                    "remove them with: docker rm -f %s",
                    self.name,
                    ids,
                    LATE_NODE_LIMIT_S,
                    ids,
                )
                return
            log.warning(
                "kind cluster %s: node container(s) appeared after the delete (%s); deleting again",
                self.name,
                self._describe_containers(late),
            )
            self._kind.delete()
            quiet_since = time.monotonic()
            time.sleep(LATE_NODE_RECHECK_S)

    def _node_history(self, since: float) -> str:
        """The engine's events for this cluster's node containers since ``since`` (create,
        start, die with its exit code, destroy), in order; kind removes the nodes of a failed
        create, so these events are what is left to tell how a node ended."""
        try:
            listed = run(
                self.docker.node_events(self.name, since, time.time()), "docker events", timeout=30, check=False
            )
        except HarnessError as exc:
            return f"(docker events did not answer: {exc})"
        events = [
            " ".join(line.replace("<no value>", "").split())  # only "die" has an exit code
            for line in listed.stdout.splitlines()
            if line.strip()
        ]
        # exec_* events are kind's own commands inside the node: not how a node ends.
        shown = [event for event in events if not event.startswith("exec_")]
        return ", ".join(shown) or f"(no event; docker events: {last_lines(listed.stderr)})"

    @staticmethod
    def _describe_containers(container_ids: list[str]) -> str:
        """``id state`` of each container (evidence of how it came to be), or the ids alone."""
        listed = run(
            ["docker", "inspect", "--format", "{{.Id}} {{.State.Status}}", *container_ids],
            "docker inspect (late node containers)",
            timeout=60,
            check=False,
        )
        lines = [line.split(maxsplit=1) for line in listed.stdout.splitlines() if line.strip()]
        described = [f"{parts[0][:12]} {parts[1] if len(parts) > 1 else ''}".strip() for parts in lines]
        return ", ".join(described) or " ".join(container_id[:12] for container_id in container_ids)

    def _node_container_ids(self) -> list[str]:
        """Full ids of this cluster's node containers (empty when the engine does not answer)."""
        listed = run(
            ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=io.x-k8s.kind.cluster={self.name}"],
            f"docker ps (node containers of {self.name})",
            timeout=60,
            check=False,
        )
        return listed.stdout.split() if listed.returncode == 0 else []

    # -- access -------------------------------------------------------------------------

    def _ensure_tools(self) -> None:
        """kind and kubectl as pytest-kind downloads them; where the download fails (no
        internet), built from their Go modules instead and used from the build cache: kind at
        the pinned version, kubectl at the local tier's Kubernetes version (logged)."""
        from e2e import binaries

        for tool, download in (("kind", self._kind.ensure_kind), ("kubectl", self._kind.ensure_kubectl)):
            try:
                download()
            except requests.RequestException as exc:
                version = pin_tool_versions()["KIND_VERSION"] if tool == "kind" else binaries.KUBERNETES_VERSION
                log.warning(
                    "%s: the download failed (%s): building %s %s from its Go module",
                    tool,
                    type(exc).__name__,
                    tool,
                    version,
                )
                built = binaries.ensure(tool, version)
                if tool == "kind":
                    self._kind.kind_path = built
                    self.commands = KindCommands(built, self.name, self.kubeconfig)
                else:
                    self._kind.kubectl_path = built

    def endpoint(self, target: ServiceTarget) -> contextlib.AbstractContextManager[str]:
        self._ensure_tools()
        return port_forward(
            port_forward_argv(Path(self._kind.kubectl_path), target), kubectl_environment(self.kubeconfig)
        )

    # -- the install on the image set built here (--local-images): e2e/imageset/release_install --

    def cert_manager(self, release: KServeRelease) -> CertManagerInstall | None:
        if self.image_set is None:
            return None
        return release_install.cert_manager(self.image_set, self, release)

    def make_pullable(self, release: KServeRelease, documents: Sequence[dict[str, Any]]) -> list[str]:
        if self.image_set is None:
            return super().make_pullable(release, documents)
        return release_install.make_pullable(self.image_set, self, release, documents)

    def serve_samples(self, release: KServeRelease, images: list[str]) -> SamplesServing:
        if self.image_set is None:
            return super().serve_samples(release, images)
        return release_install.serve_samples(self.image_set, self, release, images)

    def load_images(self, images: Sequence[str]) -> None:
        """Make the images pullable from the nodes' mirrors; the kubelet pulls them itself.

        A pull-through mirror (online) fetches on the kubelet's request: nothing to do. Into
        any other mirror an image goes from the local Docker engine (again when the local
        build changed): with the local image set, a retired image is left out, so the
        kubelet's pull fails for real (NotFound), and any other missing one is
        WorkloadUnavailable; without it, an image the engine lacks is left to that pull.
        """
        for image in images:
            host, name = upstream_name(image)
            user_registry = self.mirrors.user_registries.get(host)
            if user_registry is not None:
                log.info("%s: pulled by the nodes from %s (--registry-mirror)", image, user_registry)
                continue
            mirror = self.mirrors.mirror(host)
            if mirror.remote is not None:
                continue
            if self.image_set is not None:
                if not self.image_set.check_loadable(image):
                    continue
            elif not image_exists(image, client=self.options.docker):
                log.info("%s: not in the local Docker engine; the kubelet's pull from the mirror will tell", image)
                continue
            local_id = image_id(image, client=self.options.docker)
            if local_id is None:
                raise HarnessError(f"docker image inspect {image}: no such image in the local Docker engine")
            if mirror.config_digest(name) == local_id:
                log.info("%s: already in the mirror of %s", image, host)
                continue
            mirror.push(image, name, self.options.docker)

    def registry_problem(self) -> list[str]:
        return self.mirrors.broken()

    def start_prometheus(self, jobs: Sequence[ScrapeJob]) -> None:
        """The local tier's Prometheus as a Deployment (``e2e/data/manifests/prometheus.yaml``): its
        image built from the same binary, pulled from the run's mirror; ready by the check."""
        from e2e.imageset.prometheus import build_prometheus_image

        image = build_prometheus_image()
        self.load_images([image])
        template = [d for d in yaml.safe_load_all(PROMETHEUS_MANIFEST.read_text()) if d]
        Applier(self.api_client()).apply(scrape.in_cluster_documents(template, jobs, image))
        self._prometheus_started = True

    def prometheus_endpoint(self) -> contextlib.AbstractContextManager[str]:
        if not self._prometheus_started:
            raise WorkloadUnavailable("no Prometheus was started for this cluster")
        namespace, name = scrape.IN_CLUSTER_NAMESPACE, scrape.IN_CLUSTER_NAME
        api = self.api_client()
        selector = f"app={name}"

        def evidence() -> list[str] | None:
            return diagnostics.pod_failure_evidence(
                api,
                namespace,
                selector,
                lambda container, previous: self.container_logs(namespace, selector, container, previous),
            )

        try:
            wait_for_rollout(api, namespace, name, timeout_s=120, failure_evidence=evidence)
        except HarnessError as exc:
            raise WorkloadFailed(f"prometheus did not become ready: {exc}", getattr(exc, "evidence", [])) from None
        return self.endpoint(ServiceTarget(namespace, name, scrape.IN_CLUSTER_PORT))

    def sync_workloads(self) -> list[str]:
        """Nothing to do: the kubelet runs what the Deployments say."""
        return []

    def container_logs(self, namespace: str, pod_selector: str, container: str, previous: bool = False) -> str:
        core = k8s_client.CoreV1Api(self.api_client())
        pods = core.list_namespaced_pod(namespace, label_selector=pod_selector).items
        parts = []
        for pod in pods:
            try:
                text = core.read_namespaced_pod_log(
                    pod.metadata.name, namespace, container=container, previous=previous
                )
            except ApiException as exc:
                # previous=True on a container that never restarted answers 400.
                text = f"(no {'previous ' if previous else ''}log: {exc.status} {exc.reason})"
            parts.append(f"==> {namespace}/{pod.metadata.name} [{container}] <==\n{text}")
        return "\n".join(parts)

    def export_logs(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        run(self.commands.export_logs(directory), f"kind export logs {self.name}")
