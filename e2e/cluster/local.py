"""The dockerless provider: a real control plane, with local processes playing pod containers.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run as processes,
so Deployments really roll out (kwok plays the kubelet of one fake node). No container
runs, so the provider plays the containers the checks talk to:

- every container whose image is a kserve-controller image runs as the real KServe
  manager binary of that release (``e2e/local/manager.py``), with the container's args and
  env (ports moved to free loopback ports, ``--leader-elect`` dropped; recorded), and the
  admission webhooks are pointed at it (``e2e/local/webhooks.py``), so the API server calls
  the real webhooks and the real controller reconciles the InferenceServices. Its webhook
  serving pair is the Secret cert-manager v1.11.5 issues from the release's Certificate
  (controller and cainjector played as processes, ``e2e/local/certmanager.py``). A release
  whose manager cannot be built gets a stand-in that marks what it serves;
- every container whose image is an llmisvc-controller image (v0.16's LLMInferenceService
  controller) runs as that release's ``cmd/llmisvc``, played the same way, and its webhooks
  are pointed at it; one whose binary cannot be had is not played (its webhooks are
  removed, with the reason);
- every container whose image is a kube-rbac-proxy image runs as the real
  kube-rbac-proxy binary of that version, with the container's own args (the listen
  address moved to a free loopback port; the upstream only where it names a port of
  another container of the pod, which then is where that container's process listens);
- each authenticates as the pod's ServiceAccount through a TokenRequest token;
- every predictor pod's ``kserve/sklearnserver`` container, once KServe created it, runs as
  that release's own sklearnserver (``e2e/local/predictor.py``) with the args KServe
  generated; the model its storage initializer would fetch is placed instead (recorded).

``sync_workloads`` reads the Deployments back from the API server, so the image patch is
exercised for real: what runs is what the API server stored. How each container's process
is started: ``e2e/local/players.py``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client

from e2e import binaries
from e2e.cluster.provider import ClusterInfo, ClusterProvider, ProviderFactory, no_endpoint_change
from e2e.errors import EnvironmentMissing, HarnessError, WorkloadFailed, WorkloadUnavailable
from e2e.labels import label_selector, parse_equality_selector, selects
from e2e.local import certmanager, prometheus, webhooks
from e2e.local.controlplane import (
    ControlPlane,
    loopback_apiserver_args,
    loopback_apiserver_deviation,
    resolve_binaries,
)
from e2e.local.manager import (
    ManagerExited,
    StandInManager,
    build_controllers_together,
    is_llmisvc_image,
    is_manager_image,
)
from e2e.local.played import PlayedContainer, SyncReport, port_free
from e2e.local.players import ContainerPlayer
from e2e.local.processes import ProcessExitedEarly
from e2e.local.proxy_runner import (
    is_proxy_image,
    proxy_binary_for,
    proxy_version_of,
)
from e2e.local.service_relay import ServiceRelay
from e2e.local.sklearnserver import SklearnServerProcess, SklearnServerUnavailable, is_sklearnserver_image
from e2e.matrix import Matrix, load_matrix
from e2e.scrape import ScrapeJob
from e2e.secrets import redact
from e2e.targets import ServiceTarget

log = logging.getLogger(__name__)

DEVIATIONS = [
    "no kubelet: kwok marks pods Running on a fake node; the provider runs the controller pods' manager and "
    "kube-rbac-proxy containers and the predictor pods' model servers as processes (each restarts when its own "
    "spec changes, not with the whole pod)",
]
# Re-exported: where tests and the CLI have always found them.
__all__ = ["LocalCluster", "LocalProviderFactory", "is_proxy_image", "proxy_binary_for", "proxy_version_of"]


class LocalCluster(ClusterProvider):
    runs_pods = False  # kwok fakes pod status; the provider plays only what checks talk to

    def __init__(
        self,
        control_plane: ControlPlane,
        name: str,
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
        self._player = ContainerPlayer(control_plane, self._workdir, self.info.deviations)
        # Pods whose model server or controller cannot run here: (namespace, pod labels, why).
        self._unplayable: list[tuple[str, dict[str, str], str]] = []
        self._sync_lock = threading.Lock()
        self._prometheus: prometheus.PrometheusProcess | None = None
        self._relays: dict[ServiceTarget, ServiceRelay] = {}
        self.last_sync = SyncReport()
        self._api: k8s_client.ApiClient | None = None
        self._api_lock = threading.Lock()

    # -- the provider interface -----------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def api_client(self) -> k8s_client.ApiClient:
        # One admin client for the cluster's life (its pool is thread-safe): a new one per
        # call read the kubeconfig and made a TLS handshake each time, a few per cell.
        with self._api_lock:
            if self._api is None:
                self._api = self.control_plane.api_client()
            return self._api

    @contextlib.contextmanager
    def endpoint(self, target: ServiceTarget) -> Iterator[str]:
        """The address of the process playing the container behind a Service port (a model
        server started since the last sync is waited for until it accepts)."""
        played, port = self._behind(target.namespace, target.name, target.port)
        if played is None:
            raise self._nothing_behind(target)
        self._ensure_pod_alive(played)
        if isinstance(played.runner, SklearnServerProcess):
            try:
                played.runner.wait_ready()
            except ProcessExitedEarly:
                raise self._exited(played) from None
        yield played.addresses[port]

    def _nothing_behind(self, target: ServiceTarget) -> HarnessError:
        selector = k8s_client.CoreV1Api(self.api_client()).read_namespaced_service(target.name, target.namespace)
        for namespace, labels, why in self._unplayable:
            if namespace == target.namespace and selects(selector.spec.selector or {}, labels):
                return WorkloadUnavailable(why)
        return HarnessError(
            f"service {target.namespace}/{target.name}:{target.port}: no local process plays a container behind it"
        )

    def _behind(self, namespace: str, service_name: str, service_port: int) -> tuple[PlayedContainer | None, int]:
        """The played container a Service port reaches, and the container port it targets."""
        core = k8s_client.CoreV1Api(self.api_client())
        service = core.read_namespaced_service(service_name, namespace)
        selector = service.spec.selector or {}
        port = next((p for p in service.spec.ports or [] if p.port == service_port), None)
        if port is None:
            raise HarnessError(f"service {namespace}/{service_name} has no port {service_port}")
        wanted = port.target_port if port.target_port is not None else port.port
        for played in self._played.values():
            if played.namespace != namespace or not selects(selector, played.pod_labels):
                continue
            number = played.container_ports.get(wanted)
            if number is None and isinstance(wanted, int):
                number = wanted
            if number in played.addresses:
                return played, number
        return None, 0

    def load_images(self, images: Sequence[str]) -> None:
        """Make sure a binary exists for every kube-rbac-proxy image (others need nothing;
        a KServe manager is built, or found unavailable, when its Deployment is played)."""
        for image in images:
            if self._plays_proxy(image):
                proxy_binary_for(image, self.proxy_binaries)

    def _plays_proxy(self, image: str) -> bool:
        """Is ``image`` a kube-rbac-proxy this provider runs as a process?"""
        return image in self.proxy_binaries or is_proxy_image(image)

    def sync_workloads(self) -> list[str]:
        """Run, restart or stop the played containers so they match the Deployments as
        stored; then point the admission webhooks at the played managers. One sync at a
        time: two would start two processes for one container."""
        with self._sync_lock:
            return self._sync_workloads()

    def _sync_workloads(self) -> list[str]:
        api = self.api_client()
        report = SyncReport()
        wanted: set[tuple[str, str, str]] = set()
        self._unplayable.clear()
        deployments = k8s_client.AppsV1Api(api).list_deployment_for_all_namespaces().items
        # A release's manager and llmisvc controller compile in one go build when both are missing.
        build_controllers_together(c.image for d in deployments for c in d.spec.template.spec.containers)
        for deployment in deployments:
            # Managers first: a proxy's upstream may name the manager's port in the pod.
            containers = sorted(deployment.spec.template.spec.containers, key=lambda c: not is_manager_image(c.image))
            for container in containers:
                manager = is_manager_image(container.image)
                llmisvc = is_llmisvc_image(container.image)
                model_server = is_sklearnserver_image(container.image)
                if not manager and not llmisvc and not model_server and not self._plays_proxy(container.image):
                    continue
                key = (deployment.metadata.namespace, deployment.metadata.name, container.name)
                if model_server and key not in self._played and not self._has_pods(api, deployment):
                    continue  # played once the ReplicaSet made a pod (its storage initializer says what to place)
                wanted.add(key)
                current = self._played.get(key)
                args = tuple(container.args or [])
                if current and current.image == container.image and current.args == args and current.runner.alive:
                    report.kept.append("/".join(key))
                    continue
                previous_logs = ""
                if current:
                    # Like a kubelet's "previous" log: only a restart of the same container
                    # spec keeps it. A swap is a new pod, whose logs start empty.
                    if current.image == container.image and current.args == args:
                        previous_logs = current.runner.logs()
                    self._stop(current)
                if manager:
                    what, played = self._player.manager(api, deployment, container, args)
                elif llmisvc or model_server:
                    # Either may be impossible here (binary or venv not to be had): the
                    # container is then not played, and what it serves says why.
                    play, unavailable = (
                        (self._player.llmisvc, WorkloadUnavailable)
                        if llmisvc
                        else (self._player.model_server, SklearnServerUnavailable)
                    )
                    try:
                        what, played = play(api, deployment, container, args)
                    except unavailable as exc:
                        wanted.discard(key)
                        labels = dict(deployment.spec.template.metadata.labels or {})
                        self._unplayable.append((deployment.metadata.namespace, labels, str(exc)))
                        report.notes.append(f"{'/'.join(key)}: not played: {exc}")
                        continue
                else:
                    what, binary = proxy_binary_for(container.image, self.proxy_binaries)
                    played = self._player.proxy(api, deployment, container, binary, args, self._played.values())
                played.previous_logs = previous_logs
                self._played[key] = played
                report.started.append(f"{'/'.join(key)} as {what}")
                report.notes += [f"{'/'.join(key)}: {port_free(note)}" for note in played.runner.remap_notes]
        for key in set(self._played) - wanted:
            self._stop(self._played.pop(key))
        self._route_webhooks(api)
        self.last_sync = report
        return report.notes

    def _route_webhooks(self, api: k8s_client.ApiClient) -> None:
        """Point Service-backed admission webhooks at the played managers (or remove those
        nothing real serves); recorded once as deviations of the cluster."""

        def resolve(namespace: str, name: str, port: int) -> tuple[str | None, str]:
            try:
                played, number = self._behind(namespace, name, port)
            except k8s_client.ApiException as exc:
                return None, f"its Service answers {exc.status}"
            if played is None:
                return None, self._why_not_played(namespace, name)
            if isinstance(played.runner, StandInManager):
                return None, "only a stand-in plays its manager (no manager binary of this release; see its deviation)"
            return played.addresses[number], ""

        issued = self._player.issued
        routing = webhooks.route_admission_webhooks(
            api, resolve, self.control_plane.ca_file.read_bytes(), injected=set(issued)
        )
        for line in webhooks.deviations(routing):
            if line not in self.info.deviations:
                self.info.deviations.append(line)
        if issued and self._player.cert_manager is not None:
            # The API server verifies the played webhooks with what the cainjector injects:
            # wait for it (rewriting clientConfig to a URL first or after does not matter).
            for source, ca_pem in issued.items():
                certmanager.wait_injected(api, source, ca_pem, self._player.cert_manager)

    def _why_not_played(self, namespace: str, service_name: str) -> str:
        """Why no process plays the pods behind a Service: the recorded reason of an
        unplayable pod it selects (e.g. no binary of that controller), else the general one."""
        try:
            service = k8s_client.CoreV1Api(self.api_client()).read_namespaced_service(service_name, namespace)
        except k8s_client.ApiException:
            service = None
        selector = (service.spec.selector or {}) if service is not None else {}
        for unplayable_namespace, labels, why in self._unplayable:
            if selector and unplayable_namespace == namespace and selects(selector, labels):
                return f"its controller is not played: {why}"
        return "no process here plays the pods behind it"

    def container_logs(self, namespace: str, pod_selector: str, container: str, previous: bool = False) -> str:
        selector = parse_equality_selector(pod_selector)
        texts = []
        for played in self._played.values():
            if played.namespace == namespace and played.container == container and selects(selector, played.pod_labels):
                texts.append(played.previous_logs if previous else played.runner.logs())
        return "\n".join(texts)

    def observed_images(self, namespace: str, pod_selector: str, container: str) -> list[str] | None:
        selector = parse_equality_selector(pod_selector)
        return [
            played.image
            for played in self._played.values()
            if played.namespace == namespace
            and played.container == container
            and selects(selector, played.pod_labels)
            and played.runner.alive
        ]

    def why_nothing_serves(self) -> str:
        stand_ins = [p for p in self._played.values() if p.role == "stand-in"]
        if not stand_ins:
            return ""
        return (
            f"nothing reconciles the sample InferenceServices: {stand_ins[0].deployment}'s manager is a stand-in "
            "(see its deviation), so no predictor exists to ask; inference is not checked"
        )

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
        if self._player.cert_manager is not None:
            for name, text in self._player.cert_manager.logs().items():
                (directory / f"{name}.log").write_text(redact(text))
        for played in self._played.values():
            name = f"{played.namespace}_{played.deployment}_{played.container}"
            (directory / f"{name}.log").write_text(redact(played.runner.logs()))
            if played.previous_logs:
                (directory / f"{name}.previous.log").write_text(redact(played.previous_logs))

    def delete(self) -> None:
        # Every played process is signalled first, so they all shut down together (a
        # manager or a model server takes up to a second), then each is waited for.
        for played in self._played.values():
            played.runner.terminate()
        if self._player.cert_manager is not None:
            self._player.cert_manager.terminate()
        self.control_plane.terminate()
        if self._prometheus is not None:
            self._prometheus.stop()
        for relay in self._relays.values():
            relay.stop()
        for played in list(self._played.values()):
            self._stop(played)
        self._played.clear()
        if self._player.cert_manager is not None:
            self._player.cert_manager.stop()
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
        """Raise with evidence if a played container has exited: ``ManagerExited`` (the
        cell is an error) for a manager, ``WorkloadFailed`` for a proxy or cert-manager."""
        if self._player.cert_manager is not None:
            self._player.cert_manager.ensure_running()
        for played in self._played.values():
            if not played.runner.alive:
                raise self._exited(played)

    def _ensure_pod_alive(self, played: PlayedContainer) -> None:
        """Raise as ``check_alive`` does if a container of ``played``'s pod has exited."""
        for other in self._played.values():
            if other.pod == played.pod and not other.runner.alive:
                raise self._exited(other)

    @staticmethod
    def _has_pods(api: k8s_client.ApiClient, deployment: Any) -> bool:
        selector = label_selector(deployment.spec.selector)
        pods = k8s_client.CoreV1Api(api).list_namespaced_pod(deployment.metadata.namespace, label_selector=selector)
        return bool(pods.items)

    def _stop(self, played: PlayedContainer) -> None:
        for relay in self._relays.values():  # see ServiceRelay.disconnect
            relay.disconnect(played.runner.address)
        played.runner.stop()

    @staticmethod
    def _exited(played: PlayedContainer) -> HarnessError:
        code = played.runner.exit_code
        evidence = [f"exit code {code}", *played.runner.tail_lines(15)]
        message = f"{played.container} ({played.image}) exited with code {code}"
        if played.role in ("manager", "llmisvc"):
            return ManagerExited(message, evidence)
        return WorkloadFailed(message, evidence)


class LocalProviderFactory(ProviderFactory):
    """One real control plane (with controllers and kwok) per cluster group."""

    name = "local"

    def __init__(
        self,
        matrix: Matrix | None = None,
        *,
        keep: bool = False,
        kubernetes_version: str | None = None,
        proxy_binaries: Mapping[str, Path] | None = None,
    ) -> None:
        """``kubernetes_version`` (a patch, e.g. v1.35.4) runs every group on that control
        plane; without it each group runs the patch the matrix builds of its minor."""
        self.matrix = matrix if matrix is not None else load_matrix()
        self.keep = keep
        self.proxy_binaries = dict(proxy_binaries or {})
        self.kubernetes_version = kubernetes_version

    def build_of(self, kubernetes_minor: str) -> str:
        """The control plane version a group of ``kubernetes_minor`` runs."""
        return self.kubernetes_version or self.matrix.k8s(kubernetes_minor).build

    def preflight(self) -> None:
        components = (
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            *binaries.LOCAL_CERT_MANAGER_COMPONENTS,
        )
        version = self.kubernetes_version or binaries.KUBERNETES_VERSION
        missing = [
            component
            for component in ("etcd", *components)
            if binaries.locate(component, version if component.startswith("kube-") else None) is None
        ]
        if missing:
            raise EnvironmentMissing(
                f"local tier: no {', '.join(missing)} binary; run `nox -s binaries` (needs Go) or point "
                "KSERVE_COMPAT_BIN_DIR at prebuilt binaries"
            )

    @contextlib.contextmanager
    def cluster(self, group_id: str, kubernetes_version: str) -> Iterator[LocalCluster]:
        # Another minor than the default one is built on first use (its control plane, and the
        # kubeadm that names its etcd): logged by the build, minutes once, cached after.
        build = self.build_of(kubernetes_version)
        control_plane_binaries = resolve_binaries(build, with_controllers=True)
        apiserver_args = loopback_apiserver_args(build)
        with ControlPlane(
            control_plane_binaries, with_controllers=True, keep=self.keep, apiserver_args=apiserver_args
        ) as control_plane:
            cluster = LocalCluster(control_plane, group_id, proxy_binaries=self.proxy_binaries)
            if apiserver_args:
                cluster.info.deviations.append(loopback_apiserver_deviation(build))
            try:
                yield cluster
            finally:
                cluster.delete()

    def plan(self, group_id: str, kubernetes_version: str) -> list[str]:
        build = self.build_of(kubernetes_version)
        missing = (
            ""
            if binaries.locate("kube-apiserver", build) is not None
            else f" (not built yet: built on first use, about 15 minutes on 2 cores; `nox -s binaries -- "
            f"--k8s {build} --component kube-apiserver --component kube-controller-manager "
            "--component kube-scheduler --component kubeadm` builds it ahead)"
        )
        return [
            f"start etcd + kube-apiserver {build} + controllers + kwok (one fake node) for {group_id}{missing}",
            "play the KServe manager (the release's binary; webhooks pointed at it), its llmisvc controller where "
            "the release runs one (cmd/llmisvc; its webhooks too) and kube-rbac-proxy containers as local "
            "processes of the matching version",
            f"play cert-manager {certmanager.VERSION}'s controller and cainjector (they issue the release's "
            "webhook Certificate, given ipAddresses [127.0.0.1], and inject its CA)",
            "play each predictor pod's model server with the release's own sklearnserver (its python/ tree; "
            "the iris model placed where the storage initializer would fetch it)",
        ]
