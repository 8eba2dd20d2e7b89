"""Start the process that plays one container of a Deployment (local tier).

Each played process gets a directory of its own under the cluster's work dir, authenticates
as the pod's ServiceAccount (a TokenRequest token in its kubeconfig, so the release's own
RBAC decides), and keeps its ports across restarts, as a Service keeps its address. A KServe
manager gets its webhook serving pair from the Secret cert-manager (played here too, started
for the first manager that needs it) issues from the release's Certificate.
``LocalCluster.sync_workloads`` decides what to play; this module knows how.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client

from e2e import binaries
from e2e.errors import WorkloadFailed, WorkloadUnavailable
from e2e.local import certmanager, predictor, sklearnserver
from e2e.local.certmanager import CertManager
from e2e.local.controlplane import ControlPlane
from e2e.local.manager import (
    LLMISVC_METRICS_DEFAULT,
    METRICS_FLAG,
    PROBE_FLAG,
    SERVING_CERTS,
    ManagerExited,
    ManagerProcess,
    StandInManager,
    container_env,
    controller_binary_for,
    flags_of,
    manager_binary_for,
    remap_manager_args,
    write_serving_pair,
    write_serving_secret,
)
from e2e.local.played import PlayedContainer, pod_upstream
from e2e.local.processes import ProcessExitedEarly, free_loopback_port
from e2e.local.proxy_runner import UPSTREAM_FLAG, ProxyProcess, flag_value, remap_ports
from e2e.tokens import kubeconfig_for_service_account

SERVING_CERT_DEVIATION = (
    "webhook serving certificate written by the harness (signed by the local control plane's CA) into the "
    "manager's TMPDIR, not issued by cert-manager; the webhooks' caBundle set by the harness, not by its cainjector"
)


def serving_secret_of(deployment: Any, container: Any) -> str | None:
    """The Secret a container mounts where controller-runtime reads its webhook serving pair
    (``.../k8s-webhook-server/serving-certs``), if it mounts one."""
    volumes = {volume.name: volume for volume in deployment.spec.template.spec.volumes or []}
    for mount in container.volume_mounts or []:
        if mount.mount_path.rstrip("/").endswith(str(SERVING_CERTS)):
            volume = volumes.get(mount.name)
            if volume is not None and volume.secret is not None:
                return str(volume.secret.secret_name)
    return None


class ContainerPlayer:
    """Starts played containers of one local cluster; records its deviations in ``deviations``."""

    def __init__(self, control_plane: ControlPlane, workdir: Path, deviations: list[str]) -> None:
        self.control_plane = control_plane
        self._workdir = workdir
        self._deviations = deviations
        self._ports: dict[tuple[str, str, str, str], int] = {}  # (ns, deployment, container, use)
        self._instances = itertools.count(1)
        #: cert-manager's controller and cainjector, started for the first Certificate a
        #: played manager needs (None until then).
        self.cert_manager: CertManager | None = None
        #: The Certificates (``namespace/name``) cert-manager issued for played managers, with
        #: their CA: webhook configurations injected from them keep the cainjector's caBundle.
        self.issued: dict[str, bytes] = {}

    def _port(self, key: tuple[str, str, str], purpose: str) -> int:
        # The same container keeps its ports across restarts, as a Service keeps its
        # address: a prober sees the swap as an outage, not as a vanished endpoint.
        return self._ports.setdefault((*key, purpose), free_loopback_port())

    def _kubeconfig(self, api: k8s_client.ApiClient, deployment: Any, workdir: Path) -> Path:
        """A kubeconfig with a token of the pod's ServiceAccount: the release's own RBAC
        decides what the played process may do."""
        return kubeconfig_for_service_account(
            api,
            server=self.control_plane.server,
            ca=self.control_plane.ca_file,
            namespace=deployment.metadata.namespace,
            service_account=deployment.spec.template.spec.service_account_name or "default",
            path=workdir / "kubeconfig",
        )

    def _workdir_of(self, deployment: Any, container: Any) -> Path:
        workdir = self._workdir / f"{deployment.metadata.namespace}_{deployment.metadata.name}_{container.name}"
        workdir.mkdir(parents=True, exist_ok=True)
        return workdir

    def proxy(
        self,
        api: k8s_client.ApiClient,
        deployment: Any,
        container: Any,
        binary: Path,
        args: tuple[str, ...],
        others: Iterable[PlayedContainer],
    ) -> PlayedContainer:
        """kube-rbac-proxy; its upstream pointed at the process playing that port of the pod
        among ``others``, if one does."""
        namespace, name = deployment.metadata.namespace, deployment.metadata.name
        workdir = self._workdir_of(deployment, container)
        kubeconfig = self._kubeconfig(api, deployment, workdir)
        key = (namespace, name, container.name)
        upstream = pod_upstream(others, (namespace, name), flag_value(args, UPSTREAM_FLAG))
        proxy_args, notes = remap_ports(list(args), self._port(key, "listen"), upstream)
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
            raise WorkloadFailed(
                f"{container.name} ({container.image}) exited at start: {exc}",
                [str(exc), *proxy.tail_lines(15)],
            ) from None
        played = PlayedContainer.of(deployment, container, args, proxy, "proxy")
        played.addresses = {port: proxy.address for port in set(played.container_ports.values())}
        return played

    def model_server(
        self, api: k8s_client.ApiClient, deployment: Any, container: Any, args: tuple[str, ...]
    ) -> tuple[str, PlayedContainer]:
        """A predictor's model server: the release's own sklearnserver (``predictor``)."""
        key = (deployment.metadata.namespace, deployment.metadata.name, container.name)
        # KServe's servers bind every interface: ports free on all of them, kept per container.
        http, grpc = (self._ports.setdefault((*key, use), sklearnserver.free_port()) for use in ("http", "grpc"))
        server, deviation, pod_port = predictor.start_model_server(
            api,
            deployment,
            container,
            args,
            workdir=self._workdir_of(deployment, container),
            http_port=http,
            grpc_port=grpc,
            name=f"{deployment.metadata.name}-{container.name}-{next(self._instances)}",
        )
        if deviation not in self._deviations:
            self._deviations.append(deviation)
        played = PlayedContainer.of(deployment, container, args, server, "model-server")
        played.addresses = {pod_port: server.address}
        return server.env.describe(), played

    def _deviation(self, line: str) -> None:
        if line not in self._deviations:
            self._deviations.append(line)

    def _serving_pair(self, api: k8s_client.ApiClient, deployment: Any, container: Any, tmpdir: Path) -> None:
        """Write the manager's webhook serving pair where its Secret volume would be mounted:
        the Secret cert-manager issued from the release's Certificate, or (no Certificate
        names the mounted Secret) a pair the harness signs with the control plane's CA."""
        namespace, name = deployment.metadata.namespace, deployment.metadata.name
        secret = serving_secret_of(deployment, container)
        certificate = certmanager.certificate_for_secret(api, namespace, secret) if secret else None
        if secret is None or certificate is None:
            if not (tmpdir / "k8s-webhook-server").exists():
                write_serving_pair(self.control_plane.pki, tmpdir, f"{name}-webhook-server")
            self._deviation(SERVING_CERT_DEVIATION)
            return
        certificate_name = certificate["metadata"]["name"]
        # Before cert-manager first sees it: the first issue already covers the loopback URL.
        certmanager.add_loopback_ip(api, certificate)
        cert_manager = self._running_cert_manager()
        pair = certmanager.wait_issued(api, namespace, certificate_name, cert_manager)
        write_serving_secret(pair, tmpdir)
        self.issued[f"{namespace}/{certificate_name}"] = pair["ca.crt"]
        self._deviation(certmanager.issued_deviation(namespace, certificate_name, secret))
        self._deviation(certmanager.AUTH_DEVIATION)
        substituted = certmanager.version_deviation(api)
        if substituted is not None:
            self._deviation(substituted)

    def _running_cert_manager(self) -> CertManager:
        """cert-manager's processes, started on first use; ``CertManagerExited`` if one died."""
        if self.cert_manager is None:
            controller, cainjector = certmanager.binaries_for_version()
            self.cert_manager = CertManager(
                controller,
                cainjector,
                kubeconfig=self.control_plane.kubeconfig,
                workdir=self._workdir / "cert-manager",
            ).start()
        self.cert_manager.ensure_running()
        return self.cert_manager

    def manager(
        self, api: k8s_client.ApiClient, deployment: Any, container: Any, args: tuple[str, ...]
    ) -> tuple[str, PlayedContainer]:
        """The KServe manager of the image's release, or a labelled stand-in when none can
        be built here."""
        namespace, name = deployment.metadata.namespace, deployment.metadata.name
        metrics = (flag_value(args, METRICS_FLAG) or ":8080").rpartition(":")[2]
        try:
            what, binary = manager_binary_for(container.image)
        except WorkloadUnavailable as exc:
            stand_in = StandInManager(str(exc)).start()
            # What it means first: reports shorten long deviations, and the reason is long.
            deviation = (
                f"{namespace}/{name} container {container.name} played by a stand-in serving synthetic "
                "controller-runtime metrics (metrics-content and metrics-scrape are stand-in results; nothing "
                f"reconciles the InferenceServices): {exc}"
            )
            if deviation not in self._deviations:
                self._deviations.append(deviation)
            played = PlayedContainer.of(deployment, container, args, stand_in, "stand-in")
            played.addresses = {int(metrics): stand_in.address}
            return f"a stand-in ({exc})", played
        return what, self._controller(api, deployment, container, args, what, binary, "manager")

    def llmisvc(
        self, api: k8s_client.ApiClient, deployment: Any, container: Any, args: tuple[str, ...]
    ) -> tuple[str, PlayedContainer]:
        """KServe's LLMInferenceService controller (``cmd/llmisvc`` of the image's release),
        played like the manager. ``WorkloadUnavailable`` (with the reason) when no binary
        exists and none can be built: then nothing plays it and its webhooks are removed."""
        what, binary = controller_binary_for(container.image, binaries.KSERVE_LLMISVC)
        return what, self._controller(
            api, deployment, container, args, what, binary, "llmisvc", metrics_default=LLMISVC_METRICS_DEFAULT
        )

    def _controller(
        self,
        api: k8s_client.ApiClient,
        deployment: Any,
        container: Any,
        args: tuple[str, ...],
        what: str,
        binary: Path,
        role: str,
        *,
        metrics_default: str = ":8080",
    ) -> PlayedContainer:
        """A controller-runtime manager binary with the container's args (ports remapped,
        leader election dropped), env, ServiceAccount token and webhook serving pair."""
        namespace, name = deployment.metadata.namespace, deployment.metadata.name
        key = (namespace, name, container.name)
        workdir = self._workdir_of(deployment, container)
        tmpdir = workdir / "tmp"
        self._serving_pair(api, deployment, container, tmpdir)
        probe = self._port(key, "probe") if PROBE_FLAG in flags_of(binary) else None
        manager_args, notes, ports = remap_manager_args(
            args,
            metrics_port=self._port(key, "metrics"),
            webhook_port=self._port(key, "webhook"),
            probe_port=probe,
            metrics_default=metrics_default,
        )
        account = deployment.spec.template.spec.service_account_name or "default"
        env, env_notes = container_env(
            container, namespace=namespace, pod_name=f"{name}-played", service_account=account
        )
        manager = ManagerProcess(
            binary,
            manager_args,
            env=env,
            kubeconfig=self._kubeconfig(api, deployment, workdir),
            tmpdir=tmpdir,
            workdir=workdir,
            metrics_port=self._port(key, "metrics"),
            webhook_port=self._port(key, "webhook"),
            name=f"{name}-{container.name}-{next(self._instances)}",
            notes=[*notes, *env_notes],
            # Its metrics are HTTPS behind authn/authz (controller-runtime's filter): its
            # health probe says when it is ready.
            ready_port=probe if role == "llmisvc" else None,
        )
        try:
            manager.start()
        except ProcessExitedEarly as exc:
            raise ManagerExited(
                f"{container.name} ({what}) exited with code {exc.returncode} at start",
                [f"exit code {exc.returncode}", *manager.tail_lines(15)],
            ) from None
        played = PlayedContainer.of(deployment, container, args, manager, role)
        played.addresses = {port: f"127.0.0.1:{actual}" for port, actual in ports.items()}
        return played
