"""A real Kubernetes control plane made of local processes: etcd and kube-apiserver,
optionally kube-controller-manager, kube-scheduler and kwok (fake nodes that "run" pods).

Everything listens on free loopback ports and lives in one temporary directory (removed on
exit unless ``keep=True``), so several control planes can run side by side. The API server
authenticates with client certificates and ServiceAccount tokens and authorizes with RBAC,
exactly the delegated authn/authz path kube-rbac-proxy uses in a real cluster.

    with ControlPlane(resolve_binaries()) as cp:
        api = cp.api_client()
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import requests
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from e2e.command import run
from e2e.errors import EnvironmentMissing, HarnessError
from e2e.local.pki import ClusterPki, create_cluster_pki, write_private_file
from e2e.local.processes import ManagedProcess, StartsAndStops, free_loopback_port, wait_ready
from e2e.unverified_tls import ignore_insecure_request_warnings

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
POD_CIDR = "10.244.0.1/24"
FAKE_NODE_NAME = "kwok-node-0"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

# Most of the API server's CPU while KServe installs goes to its garbage collector (the
# InferenceService CRD is ~700 KB of schema, copied and converted on every status update).
# Collecting less often trades memory a throwaway control plane can spare for about a third
# less CPU (`nox -s bench`). A GOGC the user set wins (the environment is inherited).
APISERVER_GOGC = "400"


class ControlPlaneError(HarnessError):
    """The local control plane could not be started or used."""


@dataclass(frozen=True)
class ControlPlaneBinaries:
    """Paths of the executables a ``ControlPlane`` runs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path | None = None
    kube_scheduler: Path | None = None
    kwok: Path | None = None

    def missing_controllers(self) -> list[str]:
        """Components ``with_controllers=True`` needs that have no path here."""
        wanted = {
            "kube-controller-manager": self.kube_controller_manager,
            "kube-scheduler": self.kube_scheduler,
            "kwok": self.kwok,
        }
        return [name for name, path in wanted.items() if path is None]


def resolve_binaries(
    kubernetes_version: str | None = None, *, with_controllers: bool = False, build: bool = True
) -> ControlPlaneBinaries:
    """Find (or, with ``build``, compile) the control plane binaries via ``e2e.binaries``.

    Raises ``EnvironmentMissing`` (or the binaries module's build errors) naming the first
    binary that cannot be had.
    """
    from e2e import binaries
    from e2e.local import kubeadm  # the build machinery is only needed here

    version = kubernetes_version or binaries.KUBERNETES_VERSION
    # etcd as that version's kubeadm deploys it (v1.34: 3.6.5, v1.35: 3.6.6, ...); the default
    # version's is the binaries' default, so the default control plane needs no kubeadm.
    etcd = (
        binaries.DEFAULT_VERSIONS["etcd"]
        if version == binaries.KUBERNETES_VERSION
        else kubeadm.etcd_version(version, build=build)
    )

    if build:
        # Kubernetes' own commands of one version compile in one go build (a third of the time
        # of one build each), kubeadm with them when it named the etcd above.
        wanted_kube = ["kube-apiserver", *(["kube-controller-manager", "kube-scheduler"] if with_controllers else [])]
        binaries.ensure_together(wanted_kube, version)

    def find(component: str) -> Path:
        # Kubernetes' own components follow the Kubernetes version, etcd follows kubeadm's choice.
        wanted = version if component.startswith("kube-") else etcd if component == "etcd" else None
        return binaries.ensure(component, wanted, build=build)

    return ControlPlaneBinaries(
        etcd=find("etcd"),
        kube_apiserver=find("kube-apiserver"),
        kube_controller_manager=find("kube-controller-manager") if with_controllers else None,
        kube_scheduler=find("kube-scheduler") if with_controllers else None,
        kwok=find("kwok") if with_controllers else None,
    )


# Kubernetes 1.37's kube-apiserver refuses a loopback --advertise-address with an endpoint
# reconciler (seen here on v1.37.2: "cannot use public IP 127.0.0.1 with endpoint reconciler:
# ... may not be in the loopback range"). This API server listens on loopback only, so from
# 1.37 the `kubernetes` Service's endpoints are left unreconciled: nothing here reads them
# (every process is given the API server's address in its kubeconfig).
LOOPBACK_ADVERTISE_REFUSED_FROM = (1, 37)
NO_ENDPOINT_RECONCILER = "--endpoint-reconciler-type=none"


def loopback_apiserver_args(kubernetes_version: str) -> list[str]:
    """What kube-apiserver of ``kubernetes_version`` (``v1.37.2``) needs to advertise 127.0.0.1."""
    major, minor = (int(part) for part in kubernetes_version.removeprefix("v").split(".")[:2])
    return [NO_ENDPOINT_RECONCILER] if (major, minor) >= LOOPBACK_ADVERTISE_REFUSED_FROM else []


def loopback_apiserver_deviation(kubernetes_version: str) -> str:
    return (
        f"kube-apiserver {kubernetes_version} runs with {NO_ENDPOINT_RECONCILER}: from 1.37 it refuses its loopback "
        "address with an endpoint reconciler, so the Service default/kubernetes has no endpoints here"
    )


class ControlPlane(StartsAndStops):
    """etcd + kube-apiserver (+ controllers and kwok) as local processes; a context manager."""

    def __init__(
        self,
        binaries: ControlPlaneBinaries,
        *,
        with_controllers: bool = False,
        keep: bool = False,
        apiserver_args: Sequence[str] = (),
        ready_timeout: float = 60.0,
    ) -> None:
        if with_controllers and binaries.missing_controllers():
            raise EnvironmentMissing(
                "with_controllers=True: missing binaries " + ", ".join(binaries.missing_controllers())
            )
        self.binaries = binaries
        self.with_controllers = with_controllers
        self.keep = keep
        self.extra_apiserver_args = list(apiserver_args)
        self.ready_timeout = ready_timeout
        self.workdir: Path | None = None
        self.processes: dict[str, ManagedProcess] = {}
        #: Seconds each start phase took, e.g. {"etcd": 0.4, "kube-apiserver": 4.1}.
        self.timings: dict[str, float] = {}
        self.kubernetes_version = ""
        self._pki: ClusterPki | None = None
        self._apiserver_argv: list[str] = []
        self._apiserver_port = 0
        self._etcd_url = ""

    # -- what callers use ----------------------------------------------------------------

    @property
    def pki(self) -> ClusterPki:
        if self._pki is None:
            raise ControlPlaneError("control plane not started: no PKI yet")
        return self._pki

    @property
    def server(self) -> str:
        """The API server URL, e.g. ``https://127.0.0.1:41234``."""
        return f"https://127.0.0.1:{self._apiserver_port}"

    @property
    def ca_file(self) -> Path:
        return self.pki.ca.cert

    @property
    def kubeconfig(self) -> Path:
        """An admin (``system:masters``) kubeconfig, mode 0600: a secret, never log it."""
        return self._dir / "admin.kubeconfig"

    def api_client(self) -> k8s_client.ApiClient:
        """A fresh admin API client (the ``kubernetes`` package)."""
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def logs_dir(self) -> Path:
        return self._dir / "logs"

    def export_logs(self, directory: Path) -> None:
        """Copy every process log (they are removed with the temp dir) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        for log_file in sorted(self.logs_dir().glob("*.log")):
            shutil.copy2(log_file, directory / log_file.name)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        began = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="kserve-compat-cp-"))
        try:
            self._pki = create_cluster_pki(self._dir / "pki")
            self._start_etcd()
            self._start_apiserver()
            self._write_admin_kubeconfig()
            if self.with_controllers:
                self._start_controllers()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - began
        log.info(
            "control plane %s (Kubernetes %s) ready in %.1fs (%s)",
            self.server,
            self.kubernetes_version,
            self.timings["total"],
            ", ".join(f"{name} {secs:.1f}s" for name, secs in self.timings.items()),
        )
        return self

    def stop(self) -> None:
        """Stop every process (newest first) and remove the temp dir unless ``keep``.

        All but etcd are signalled at once (the API server alone takes about a second to
        drain); etcd, started first, is stopped last, once the API server is gone."""
        self.terminate()
        for name, process in reversed(list(self.processes.items())):
            try:
                process.stop()
            except Exception:  # keep tearing down the rest
                log.exception("could not stop %s", name)
        if self.workdir is not None:
            if self.keep:
                log.info("keeping control plane directory %s", self.workdir)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def terminate(self) -> None:
        """Signal every process but etcd (the API server drains against it); ``stop()`` waits."""
        for name, process in self.processes.items():
            if name != "etcd":
                process.terminate()

    def restart_apiserver(self) -> None:
        """Stop the API server if it still runs (e.g. after a kill) and start it again on
        the same port with the same flags; returns once it is ready."""
        old = self.processes["kube-apiserver"]
        old.stop()
        began = time.monotonic()
        self.processes["kube-apiserver"] = ManagedProcess(
            "kube-apiserver", self._apiserver_argv, log_path=old.log_path, env=_apiserver_env()
        ).start()
        self._wait_apiserver_ready()
        log.info("kube-apiserver restarted in %.1fs", time.monotonic() - began)

    # -- internals -----------------------------------------------------------------------

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise ControlPlaneError("control plane not started: no working directory yet")
        return self.workdir

    def _launch(
        self, name: str, argv: Sequence[str | os.PathLike[str]], env: dict[str, str] | None = None
    ) -> ManagedProcess:
        process = ManagedProcess(name, argv, log_path=self.logs_dir() / f"{name}.log", env=env)
        self.processes[name] = process
        return process.start()

    def _start_etcd(self) -> None:
        began = time.monotonic()
        client_port, peer_port = free_loopback_port(), free_loopback_port()
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._launch(
            "etcd",
            [
                self.binaries.etcd,
                "--name=local",
                f"--data-dir={self._dir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=local={peer_url}",
                "--unsafe-no-fsync=true",  # throwaway data: durability buys nothing
                "--log-level=warn",
            ],
        )
        self._etcd_url = client_url
        wait_ready(
            f"etcd at {client_url}",
            lambda: _http_probe(f"{client_url}/health", session=_loopback_session()),
            watched=[etcd],
            timeout=self.ready_timeout,
        )
        self.timings["etcd"] = time.monotonic() - began

    def _start_apiserver(self) -> None:
        began = time.monotonic()
        pki = self.pki
        self._apiserver_port = free_loopback_port()
        self._apiserver_argv = [
            os.fspath(self.binaries.kube_apiserver),
            f"--etcd-servers={self._etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self._apiserver_port}",
            f"--cert-dir={self._dir / 'apiserver'}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_public_key}",
            f"--service-account-signing-key-file={pki.service_account_private_key}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
            *self.extra_apiserver_args,
        ]
        self._launch("kube-apiserver", self._apiserver_argv, env=_apiserver_env())
        self._wait_apiserver_ready()
        self.timings["kube-apiserver"] = time.monotonic() - began

    def _admin_session(self) -> requests.Session:
        session = _loopback_session()
        session.verify = str(self.pki.ca.cert)
        session.cert = (str(self.pki.admin.cert), str(self.pki.admin.key))
        return session

    def _wait_apiserver_ready(self) -> None:
        session = self._admin_session()
        wait_ready(
            f"kube-apiserver at {self.server}/readyz",
            lambda: _http_probe(f"{self.server}/readyz?verbose", session=session),
            watched=[self.processes["kube-apiserver"], self.processes["etcd"]],
            timeout=self.ready_timeout,
        )
        version = session.get(f"{self.server}/version", timeout=5).json()
        self.kubernetes_version = str(version.get("gitVersion", ""))

    def _write_admin_kubeconfig(self) -> None:
        pki = self.pki
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": _b64(pki.ca.cert.read_bytes()),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": _b64(pki.admin.cert.read_bytes()),
                        "client-key-data": _b64(pki.admin.key.read_bytes()),
                    },
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
            "current-context": "local",
        }
        write_private_file(self.kubeconfig, yaml.safe_dump(config).encode())

    def _start_controllers(self) -> None:
        began = time.monotonic()
        pki = self.pki
        kubeconfig = os.fspath(self.kubeconfig)
        delegated = [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",  # one instance: don't wait for a lease
        ]
        controller_manager, scheduler, kwok = (
            self.binaries.kube_controller_manager,
            self.binaries.kube_scheduler,
            self.binaries.kwok,
        )
        if controller_manager is None or scheduler is None or kwok is None:  # checked in __init__
            raise ControlPlaneError("with_controllers=True: controller binaries missing")
        kcm_port, scheduler_port, kwok_port = (free_loopback_port() for _ in range(3))
        self._launch(
            "kube-controller-manager",
            [
                controller_manager,
                *delegated,
                f"--secure-port={kcm_port}",
                f"--cert-dir={self._dir / 'kube-controller-manager'}",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account_private_key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            ],
        )
        self._launch(
            "kube-scheduler",
            [
                scheduler,
                *delegated,
                f"--secure-port={scheduler_port}",
                f"--cert-dir={self._dir / 'kube-scheduler'}",
            ],
        )
        kwok_config = self._dir / "kwok.yaml"
        kwok_config.write_text("")  # kwok's built-in stages; never read ~/.kwok/kwok.yaml
        self._launch(
            "kwok",
            [
                kwok,
                f"--kubeconfig={kubeconfig}",
                f"--config={kwok_config}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=" + "=".join(KWOK_NODE_ANNOTATION),
                "--manage-nodes-with-label-selector=",
                "--node-lease-duration-seconds=40",  # heartbeats: the node stays Ready
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{kwok_port}",
            ],
        )
        insecure = _loopback_session()
        insecure.verify = False  # their self-signed serving certs; /healthz only
        ignore_insecure_request_warnings()
        watched = [*self.processes.values()]
        for name, url in (
            ("kube-controller-manager", f"https://127.0.0.1:{kcm_port}/healthz"),
            ("kube-scheduler", f"https://127.0.0.1:{scheduler_port}/healthz"),
            ("kwok", f"http://127.0.0.1:{kwok_port}/healthz"),
        ):
            wait_ready(
                f"{name} at {url}",
                functools.partial(_http_probe, url, session=insecure),
                watched=watched,
                timeout=self.ready_timeout,
            )
        self._create_fake_node()
        self.timings["controllers"] = time.monotonic() - began

    def _create_fake_node(self) -> None:
        """One Node that kwok keeps Ready; big enough for any test workload, no taints."""
        capacity = {"cpu": "32", "memory": "256Gi", "pods": "110"}
        node = k8s_client.V1Node(
            metadata=k8s_client.V1ObjectMeta(
                name=FAKE_NODE_NAME,
                annotations={KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
                labels={
                    "type": "kwok",
                    "kubernetes.io/hostname": FAKE_NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            ),
            status=k8s_client.V1NodeStatus(allocatable=capacity, capacity=capacity),
        )
        with self.api_client() as api:
            k8s_client.CoreV1Api(api).create_node(node)


def _apiserver_env() -> dict[str, str]:
    return {"GOGC": os.environ.get("GOGC", APISERVER_GOGC)}


def _loopback_session() -> requests.Session:
    """A session that ignores REQUESTS_CA_BUNDLE / HTTPS_PROXY: requests lets those override
    a session's own ``verify``, and nothing on loopback should go through a proxy."""
    session = requests.Session()
    session.trust_env = False
    return session


def _http_probe(url: str, *, session: requests.Session) -> tuple[bool, str]:
    """(answered 200?, a one-line summary of the answer or the connection error)."""
    try:
        response = session.get(url, timeout=3)
    except requests.RequestException as error:
        return False, f"{type(error).__name__}: {error}"
    failed = [line for line in response.text.splitlines() if "failed" in line]
    summary = "; ".join(failed) if failed else response.text.strip()[:200]
    return response.status_code == 200, f"HTTP {response.status_code}: {summary}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def binary_version(binary: Path) -> str:
    """What ``binary --version`` prints, e.g. ``Kubernetes v1.34.4``."""
    result = run([binary, "--version"], f"the version of {binary}", timeout=30, check=False)
    return (result.stdout or result.stderr).strip()
