"""The dockerless provider: a real control plane, with local processes playing pod containers.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run as processes,
so Deployments really roll out (kwok plays the kubelet of one fake node). No container
runs, so the provider plays the containers the checks talk to:

- every container whose image is a kube-rbac-proxy image runs as the real
  kube-rbac-proxy binary of that version, with the container's own args (only the listen
  and upstream addresses are remapped to free loopback ports; the remap is recorded),
  authenticated as the pod's ServiceAccount through a TokenRequest token;
- its upstream, the KServe manager's metrics endpoint, is a stand-in serving Prometheus
  text the way controller-runtime does;
- inference is answered by a local KServe model server (see ``inference_endpoint``).

``sync_workloads`` reads the Deployments back from the API server, so the image patch is
exercised for real: what runs is what the API server stored.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client

from e2e.cluster.provider import ClusterInfo, ClusterProvider, ProviderFactory, no_endpoint_change
from e2e.errors import EnvironmentMissing, HarnessError, WorkloadFailed, WorkloadUnavailable
from e2e.images import ImageReference
from e2e.labels import parse_equality_selector, selects
from e2e.local import binaries, prometheus
from e2e.local.controlplane import ControlPlane, resolve_binaries
from e2e.local.metrics_upstream import MetricsUpstream
from e2e.local.processes import ProcessExitedEarly, free_loopback_port
from e2e.local.proxy_runner import ProxyProcess, remap_ports
from e2e.local.service_relay import ServiceRelay
from e2e.scrape import ScrapeJob
from e2e.secrets import redact
from e2e.targets import ServiceTarget
from e2e.tokens import kubeconfig_for_service_account

log = logging.getLogger(__name__)

PROXY_REPOSITORY_NAME = "kube-rbac-proxy"

DEVIATIONS = [
    "no kubelet: kwok marks pods Running on a fake node; the provider runs the proxy container as a process",
    "the KServe manager's metrics endpoint is a stand-in serving controller-runtime style metrics",
    "inference is answered by a local KServe model server process, not by InferenceService pods",
]


def proxy_version_of(image: str) -> str | None:
    """The kube-rbac-proxy version an image runs, or None if it is not a kube-rbac-proxy image.

    gcr.io/kubebuilder, registry.k8s.io/kubebuilder and quay.io/brancz hold the same
    builds of each tag, so the repository's registry does not matter here. A patched
    build's tag (``v0.18.0-fix1``) is its own version (see ``binaries.proxy_version_or_tag``).
    """
    ref = ImageReference.parse(image)
    if not is_proxy_image(image) or not ref.tag:
        return None
    return binaries.proxy_version_or_tag(ref.tag)


def is_proxy_image(image: str) -> bool:
    """Is ``image`` of a repository named kube-rbac-proxy (whatever its registry and tag)?"""
    return ImageReference.parse(image).name.rsplit("/", 1)[-1] == PROXY_REPOSITORY_NAME


def proxy_binary_for(image: str, given: Mapping[str, Path] | None = None) -> tuple[str, Path]:
    """(what runs, the binary) for a kube-rbac-proxy image; WorkloadUnavailable with the
    reason when no binary exists and none can be made.

    ``given`` (``--proxy-binary``) wins; then the per-version variable, the bin dir and the
    cache (``binaries.locate``); then, for a released version, a build from the Go module
    proxy or a copy out of the published image (``binaries.ensure_proxy``).
    """
    if given and image in given:
        return f"kube-rbac-proxy from --proxy-binary {given[image]}", given[image]
    version = proxy_version_of(image)
    if version is None:
        raise WorkloadUnavailable(
            f"{image}: its tag names no kube-rbac-proxy version; give its binary with --proxy-binary PATH"
        )
    found = binaries.locate(binaries.PROXY, version)
    if found is not None:
        return f"kube-rbac-proxy {version}", found
    if not binaries.is_release_version(version):
        raise WorkloadUnavailable(
            f"{image}: no local binary of this patched build; give it with --proxy-binary PATH or "
            f"{binaries.env_var(binaries.PROXY, version)}"
        )
    ok, reason = binaries.buildable(binaries.PROXY, version)
    if not ok:
        raise WorkloadUnavailable(f"{image}: no local kube-rbac-proxy {version} binary ({reason})")
    try:
        return f"kube-rbac-proxy {version}", binaries.ensure_proxy(version)
    except binaries.BuildUnavailable as exc:
        raise WorkloadUnavailable(f"{image}: no local kube-rbac-proxy {version} binary ({exc})") from None


@dataclass
class PlayedContainer:
    """A container of a Deployment that this provider runs as a local process."""

    namespace: str
    deployment: str
    container: str
    image: str
    args: tuple[str, ...]
    pod_labels: dict[str, str]
    container_ports: dict[str | int, int]  # port name and number -> the original port
    proxy: ProxyProcess
    upstream: MetricsUpstream
    previous_logs: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.deployment, self.container)


@dataclass
class SyncReport:
    started: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class LocalCluster(ClusterProvider):
    runs_pods = False  # kwok fakes pod status; the provider plays only what checks talk to

    def __init__(
        self,
        control_plane: ControlPlane,
        name: str,
        model_server: Callable[[], Any | None] = lambda: None,
        proxy_binaries: Mapping[str, Path] | None = None,
    ) -> None:
        self.control_plane = control_plane
        # Image reference -> the binary that plays it (--proxy-binary, for ad-hoc images).
        self.proxy_binaries: dict[str, Path] = dict(proxy_binaries or {})
        self.info = ClusterInfo(
            provider="local",
            name=name,
            kubernetes_version=control_plane.kubernetes_version,
            deviations=list(DEVIATIONS),
        )
        self._workdir = Path(tempfile.mkdtemp(prefix="kserve-compat-workloads-"))
        self._played: dict[tuple[str, str, str], PlayedContainer] = {}
        self._ports: dict[tuple[str, str, str], int] = {}
        self._instances = itertools.count(1)
        self._model_server = model_server
        self._prometheus: prometheus.PrometheusProcess | None = None
        self._relays: dict[ServiceTarget, ServiceRelay] = {}
        self.last_sync = SyncReport()

    # -- the provider interface -----------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def api_client(self) -> k8s_client.ApiClient:
        return self.control_plane.api_client()

    @contextlib.contextmanager
    def endpoint(self, target: ServiceTarget) -> Iterator[str]:
        """The address of the process playing the container behind a Service port."""
        core = k8s_client.CoreV1Api(self.api_client())
        service = core.read_namespaced_service(target.name, target.namespace)
        selector = service.spec.selector or {}
        port = next((p for p in service.spec.ports or [] if p.port == target.port), None)
        if port is None:
            raise HarnessError(f"service {target.namespace}/{target.name} has no port {target.port}")
        wanted = port.target_port if port.target_port is not None else port.port
        for played in self._played.values():
            if played.namespace != target.namespace or not selects(selector, played.pod_labels):
                continue
            if wanted in played.container_ports:
                if not played.proxy.alive:
                    raise self._exited(played)
                yield played.proxy.address
                return
        raise HarnessError(
            f"service {target.namespace}/{target.name}:{target.port}: no local process plays a container behind it"
        )

    def load_images(self, images: Sequence[str]) -> None:
        """Make sure a binary exists for every kube-rbac-proxy image (others need nothing)."""
        for image in images:
            if self._plays(image):
                proxy_binary_for(image, self.proxy_binaries)

    def _plays(self, image: str) -> bool:
        """Is ``image`` a kube-rbac-proxy this provider runs as a process?"""
        return image in self.proxy_binaries or is_proxy_image(image)

    def sync_workloads(self) -> list[str]:
        """Run, restart or stop proxy processes so they match the Deployments as stored."""
        api = self.api_client()
        report = SyncReport()
        wanted: set[tuple[str, str, str]] = set()
        for deployment in k8s_client.AppsV1Api(api).list_deployment_for_all_namespaces().items:
            for container in deployment.spec.template.spec.containers:
                if not self._plays(container.image):
                    continue
                key = (deployment.metadata.namespace, deployment.metadata.name, container.name)
                wanted.add(key)
                current = self._played.get(key)
                args = tuple(container.args or [])
                if current and current.image == container.image and current.args == args and current.proxy.alive:
                    report.kept.append("/".join(key))
                    continue
                previous_logs = ""
                if current:
                    # Like a kubelet's "previous" log: only a restart of the same container
                    # spec keeps it. A swap is a new pod, whose logs start empty.
                    if current.image == container.image and current.args == args:
                        previous_logs = current.proxy.logs()
                    self._stop(current)
                what, binary = proxy_binary_for(container.image, self.proxy_binaries)
                played = self._start(api, deployment, container, binary, args)
                played.previous_logs = previous_logs
                self._played[key] = played
                report.started.append(f"{'/'.join(key)} as {what}")
                report.notes += [f"{'/'.join(key)}: {_port_free(note)}" for note in played.proxy.remap_notes]
        for key in set(self._played) - wanted:
            self._stop(self._played.pop(key))
        self.last_sync = report
        return report.notes

    def container_logs(self, namespace: str, pod_selector: str, container: str, previous: bool = False) -> str:
        selector = parse_equality_selector(pod_selector)
        texts = []
        for played in self._played.values():
            if played.namespace == namespace and played.container == container and selects(selector, played.pod_labels):
                texts.append(played.previous_logs if previous else played.proxy.logs())
        return "\n".join(texts)

    def observed_images(self, namespace: str, pod_selector: str, container: str) -> list[str] | None:
        selector = parse_equality_selector(pod_selector)
        return [
            played.image
            for played in self._played.values()
            if played.namespace == namespace
            and played.container == container
            and selects(selector, played.pod_labels)
            and played.proxy.alive
        ]

    @contextlib.contextmanager
    def inference_endpoint(self, namespace: str, name: str) -> Iterator[str]:
        """A local KServe model server stands in for the predictor pod (no kubelet here)."""
        server = self._model_server()
        if server is None:
            raise WorkloadUnavailable("no local model server was started for this run")
        yield server.base_url.removeprefix("http://")

    def start_prometheus(self, jobs: Sequence[ScrapeJob]) -> None:
        """A Prometheus process scraping each Service through a relay that reaches whatever
        plays it at that moment (so it can start before the release is installed)."""
        binary = prometheus.require()
        addresses = {}
        for job in jobs:
            if job.target not in self._relays:
                resolve = functools.partial(self._played_address, job.target)
                self._relays[job.target] = ServiceRelay(resolve, name=job.target.name).start()
            addresses[job.name] = self._relays[job.target].address
        self._prometheus = prometheus.PrometheusProcess(binary, jobs, addresses, self._workdir / "prometheus").start()

    def _played_address(self, target: ServiceTarget) -> str:
        with self.endpoint(target) as address:
            return address

    def prometheus_endpoint(self) -> contextlib.AbstractContextManager[str]:
        if self._prometheus is None:
            raise WorkloadUnavailable("no Prometheus was started for this cluster")
        try:
            self._prometheus.wait_ready()
        except ProcessExitedEarly as exc:
            raise WorkloadFailed(f"prometheus exited: {exc}", exc.last_lines[-15:]) from None
        return no_endpoint_change(self._prometheus.address)

    def export_logs(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.control_plane.export_logs(directory / "control-plane")
        if self._prometheus is not None:
            (directory / "prometheus.log").write_text(redact(self._prometheus.logs()))
        for played in self._played.values():
            name = f"{played.namespace}_{played.deployment}_{played.container}"
            (directory / f"{name}.log").write_text(redact(played.proxy.logs()))
            if played.previous_logs:
                (directory / f"{name}.previous.log").write_text(redact(played.previous_logs))

    def delete(self) -> None:
        if self._prometheus is not None:
            self._prometheus.stop()
        for relay in self._relays.values():
            relay.stop()
        for played in list(self._played.values()):
            self._stop(played)
        self._played.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)

    # -- what the local tier adds -------------------------------------------------------

    def recover(self) -> str | None:
        """Restart the API server if it died (the run goes on); proxies keep their tokens."""
        apiserver = self.control_plane.processes.get("kube-apiserver")
        if apiserver is not None and not apiserver.alive:
            code = apiserver.exit_code
            self.control_plane.restart_apiserver()
            return f"kube-apiserver had exited (code {code}); restarted"
        return super().recover()

    def check_alive(self) -> None:
        """Raise ``WorkloadFailed`` with evidence if a played container has exited."""
        for played in self._played.values():
            if not played.proxy.alive:
                raise self._exited(played)

    def _start(
        self, api: k8s_client.ApiClient, deployment: Any, container: Any, binary: Path, args: tuple[str, ...]
    ) -> PlayedContainer:
        namespace, name = deployment.metadata.namespace, deployment.metadata.name
        pod_spec = deployment.spec.template.spec
        account = pod_spec.service_account_name or "default"
        workdir = self._workdir / f"{namespace}_{name}_{container.name}"
        workdir.mkdir(parents=True, exist_ok=True)
        # The proxy authenticates as the pod's ServiceAccount: the release's own
        # ClusterRoleBinding decides whether its TokenReviews and SARs are allowed.
        kubeconfig = kubeconfig_for_service_account(
            api,
            server=self.control_plane.server,
            ca=self.control_plane.ca_file,
            namespace=namespace,
            service_account=account,
            path=workdir / "kubeconfig",
        )
        upstream = MetricsUpstream().start()
        # The same container keeps its port across restarts, as a Service keeps its
        # address: a prober sees the swap as an outage, not as a vanished endpoint.
        key = (namespace, name, container.name)
        listen_port = self._ports.setdefault(key, free_loopback_port())
        proxy_args, notes = remap_ports(list(args), listen_port, upstream.url)
        proxy = ProxyProcess(
            binary,
            proxy_args,
            kubeconfig=kubeconfig,
            workdir=workdir,
            # One log per process, as a container instance has its own log.
            name=f"{name}-{container.name}-{next(self._instances)}",
            remap_notes=notes,
        )
        try:
            proxy.start()
        except ProcessExitedEarly as exc:
            upstream.stop()
            raise WorkloadFailed(
                f"{container.name} ({container.image}) exited at start: {exc}",
                [str(exc), *proxy.process.tail_lines(15)],
            ) from None
        except BaseException:
            upstream.stop()
            raise
        ports: dict[str | int, int] = {}
        for port in container.ports or []:
            ports[port.container_port] = port.container_port
            if port.name:
                ports[port.name] = port.container_port
        return PlayedContainer(
            namespace=namespace,
            deployment=name,
            container=container.name,
            image=container.image,
            args=args,
            pod_labels=dict(deployment.spec.template.metadata.labels or {}),
            container_ports=ports,
            proxy=proxy,
            upstream=upstream,
        )

    def _stop(self, played: PlayedContainer) -> None:
        for relay in self._relays.values():  # see ServiceRelay.disconnect
            relay.disconnect(played.proxy.address)
        played.proxy.stop()
        played.upstream.stop()

    @staticmethod
    def _exited(played: PlayedContainer) -> WorkloadFailed:
        lines = played.proxy.process.tail_lines(15)
        return WorkloadFailed(
            f"{played.container} ({played.image}) exited with code {played.proxy.exit_code}",
            [f"exit code {played.proxy.exit_code}", *lines],
        )


def _port_free(remap_note: str) -> str:
    """``--flag: OLD -> NEW`` with NEW's port dropped, so notes repeat identically per cell."""
    flag_and_old, _, new = remap_note.partition(" -> ")
    return (
        f"{flag_and_old} -> {'the metrics stand-in' if 'upstream' in flag_and_old else 'a loopback port'}"
        if new
        else remap_note
    )


class LocalProviderFactory(ProviderFactory):
    """One real control plane (with controllers and kwok) per cluster group."""

    name = "local"

    def __init__(
        self,
        *,
        keep: bool = False,
        kubernetes_version: str | None = None,
        proxy_binaries: Mapping[str, Path] | None = None,
    ) -> None:
        self.keep = keep
        self.proxy_binaries = dict(proxy_binaries or {})
        self.kubernetes_version = kubernetes_version or binaries.KUBERNETES_VERSION
        self.model_server: Any | None = None

    def preflight(self) -> None:
        missing = [
            component
            for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
            if binaries.locate(component, self.kubernetes_version if component.startswith("kube-") else None) is None
        ]
        if missing:
            raise EnvironmentMissing(
                f"local tier: no {', '.join(missing)} binary; run `nox -s binaries` (needs Go) or point "
                "KSERVE_COMPAT_BIN_DIR at prebuilt binaries"
            )

    @contextlib.contextmanager
    def cluster(self, group_id: str, kubernetes_version: str) -> Iterator[LocalCluster]:
        # The matrix's Kubernetes version names kind node images; locally we run the
        # control plane we built, whose version the report records.
        control_plane_binaries = resolve_binaries(self.kubernetes_version, with_controllers=True, build=False)
        with ControlPlane(control_plane_binaries, with_controllers=True, keep=self.keep) as control_plane:
            # The run's model server may still be starting: the cluster asks for it when needed.
            cluster = LocalCluster(
                control_plane, group_id, model_server=lambda: self.model_server, proxy_binaries=self.proxy_binaries
            )
            try:
                yield cluster
            finally:
                cluster.delete()

    def plan(self, group_id: str, kubernetes_version: str) -> list[str]:
        return [
            f"start etcd + kube-apiserver {self.kubernetes_version} + controllers + kwok (one fake node)"
            f" for {group_id}",
            "play kube-rbac-proxy containers as local processes of the matching version",
        ]
