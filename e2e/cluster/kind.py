"""The kind tier: one kind cluster (Docker containers as nodes) per cluster group.

Wraps pytest-kind's ``pytest_kind.cluster.KindCluster`` rather than forking it: pytest-kind
downloads the pinned ``kind``/``kubectl`` binaries and creates, reuses and deletes the
cluster. This module adds what the harness needs around it: pinned tool versions, the
node image from the matrix, a cluster config built in code, port-forwards that wait for
kubectl's "Forwarding from" line and keep one local address while kubectl is restarted
under it (a pod replaced by a rollout ends a Service port-forward), registry mirrors the
kubelet pulls every image through (``mirrors.py``), and one-line errors when Docker is missing.

Trap (pytest-kind reads its tool versions at import time): ``pytest_kind.cluster`` copies
``KIND_VERSION``/``KUBECTL_VERSION`` from the environment into module globals when it is
first imported (defaults v0.17.0 / v1.25.3, too old for current node images), and pytest
imports it through its ``pytest11`` entry point *before* any conftest runs.
``pin_tool_versions()`` therefore sets the environment (for imports still to come and for
child processes) *and* rewrites the module globals if pytest-kind is already imported;
importing this module calls it once. Exporting the variables before pytest starts (nox,
CI) makes the order irrelevant.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import queue
import re
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from e2e.cache import cache_root
from e2e.cluster import cgroup_freezer
from e2e.cluster.mirrors import NODE_CERTS_DIR, MirrorMode, NodeMirrors, registry_binary, upstream_name
from e2e.cluster.provider import CertManagerInstall, ClusterInfo, ClusterProvider, ProviderFactory, SamplesServing
from e2e.data import MANIFESTS_DIR
from e2e.errors import EnvironmentMissing, HarnessError, UsageError, WorkloadFailed, WorkloadUnavailable
from e2e.imageset import release_install
from e2e.imageset.offline import LocalImageSet, image_present
from e2e.matrix import KServeRelease, Matrix, load_matrix
from e2e.rollout import wait_for_rollout
from e2e.targets import ServiceTarget

if TYPE_CHECKING:
    from e2e.scrape import ScrapeJob

log = logging.getLogger(__name__)

# kind v0.32.0 supports node images for Kubernetes 1.33-1.36 (node images published for it
# need its containerd handling). kubectl 1.34 talks to 1.33-1.35
# servers (kubectl's +-1 minor skew policy); 1.34.8 is the patch of kind v0.32.0's image.
KIND_VERSION = "v0.32.0"
KUBECTL_VERSION = "v1.34.8"
PINNED_TOOL_VERSIONS: Mapping[str, str] = {"KIND_VERSION": KIND_VERSION, "KUBECTL_VERSION": KUBECTL_VERSION}

CLUSTER_NAME_PREFIX = "kcompat-"
PROMETHEUS_MANIFEST = MANIFESTS_DIR / "prometheus.yaml"
CLUSTER_NAME_MAX = 40  # node containers are NAME-control-plane: keep hostnames well under 63
# After a creation that did not finish, the delete watches for node containers the engine was
# still creating (the `docker run` it answers was killed by the same Ctrl-C): until none has
# been seen for LATE_NODE_QUIET_S, and LATE_NODE_LIMIT_S at most.
LATE_NODE_QUIET_S = 5.0
LATE_NODE_LIMIT_S = 60.0
LATE_NODE_RECHECK_S = 0.25

DOCKER_MISSING_HINT = "the kind tier needs one — run `nox -s local` for the dockerless tier"

# runc's error when it is asked for a capability the host's bounding set lacks: a privileged
# container (every kind node is one) asks for all of them. Some VMs lack CAP_SYS_RESOURCE.
PRIVILEGED_CAPS_ERROR = "unable to apply caps: operation not permitted"
PRIVILEGED_CAPS_HINT = (
    f"this Docker engine cannot run privileged containers, which kind's nodes are ({PRIVILEGED_CAPS_ERROR}: "
    "the host lacks a capability runc grants them); as root, run `.ci/docker-engine` from the kserve-compat "
    "repository: it registers a runtime that drops CAP_SYS_RESOURCE"
)

# kubectl prints one line per listener; the IPv4 one is what the harness dials.
_FORWARDING_FROM = re.compile(r"^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)\s*$")
# What kubectl prints once the pod it forwards to is gone (it may or may not exit).
_FORWARD_LOST = re.compile(r"lost connection to pod|an error occurred forwarding")


def pin_tool_versions(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Pin pytest-kind's kind and kubectl versions; returns the versions in force.

    A version the user exported wins (that is pytest-kind's own interface). Call before
    ``pytest_kind`` is imported, or any time after: an already imported module has its
    globals rewritten, which works because pytest-kind reads them at call time.
    """
    env = os.environ if environ is None else environ
    in_force = {}
    for name, pinned in PINNED_TOOL_VERSIONS.items():
        in_force[name] = env.setdefault(name, pinned)
    imported = sys.modules.get("pytest_kind.cluster")
    if imported is not None and environ is None:
        for name, version in in_force.items():
            setattr(imported, name, version)
    return in_force


pin_tool_versions()


# -- pure decisions and command lines (tested without Docker) --------------------------


def cluster_name(group_id: str) -> str:
    """A deterministic kind cluster name for a group id.

    ``kserve-v0.14.0--k8s-1.33`` becomes ``kcompat-v0-14-0-k8s-1-33``: lowercase, only
    ``[a-z0-9-]``, at most ``CLUSTER_NAME_MAX`` characters (longer ones keep a hash of the
    full id so two groups never share a cluster).
    """
    short = group_id.lower().removeprefix("kserve-").replace("--", "-")
    short = re.sub(r"[^a-z0-9-]+", "-", short)
    short = re.sub(r"-{2,}", "-", short).strip("-")
    name = CLUSTER_NAME_PREFIX + short
    if len(name) > CLUSTER_NAME_MAX:
        digest = hashlib.sha256(group_id.encode()).hexdigest()[:8]
        name = name[: CLUSTER_NAME_MAX - len(digest) - 1].rstrip("-") + "-" + digest
    return name


# Published node images read no certs.d directory until told to (ours do: see imageset/node.py).
CONTAINERD_CERTS_PATCH = f"""[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{NODE_CERTS_DIR}"
"""


# Kubernetes 1.35 made the kubelet refuse cgroup v1 hosts by default (KubeletConfiguration
# failCgroupV1 defaults to true from v1.35.0; false up to 1.34): on such a host the kubelet
# exits with "kubelet is configured to not run on a host using cgroup v1". Allowed again, as
# a deviation in the report, where the Docker engine runs cgroup v1 (these VMs do).
ALLOW_CGROUP_V1_PATCH = "kind: KubeletConfiguration\nfailCgroupV1: false\n"
KUBELET_REFUSES_CGROUP_V1_FROM = (1, 35)


def allow_cgroup_v1_deviation(kubernetes_version: str) -> str:
    return (
        f"kubelet failCgroupV1: false: this Docker engine runs cgroup v1, which the kubelet of Kubernetes "
        f"{kubernetes_version} refuses by default (from 1.35); a node on cgroup v1 needs the same setting"
    )


def kubelet_refuses_cgroup_v1(kubernetes_version: str) -> bool:
    """Whether this version's kubelet refuses a cgroup v1 host by default (1.35 and later)."""
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", kubernetes_version.strip())
    if match is None:
        return False
    return (int(match.group(1)), int(match.group(2))) >= KUBELET_REFUSES_CGROUP_V1_FROM


def engine_cgroup_version(docker: str = "docker") -> str:
    """``1`` or ``2``: the cgroup version of the Docker engine's host (where the nodes run)."""
    try:
        done = subprocess.run(
            [docker, "info", "--format", "{{.CgroupVersion}}"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def cluster_config(
    node_image: str,
    networking: Mapping[str, Any] | None = None,
    certs_dir: Path | None = None,
    patch_containerd: bool = False,
    allow_cgroup_v1: bool = False,
) -> dict[str, Any]:
    """The kind cluster config: one control-plane node running ``node_image``; ``networking``
    is what a node image built here needs (its own CNI instead of kind's kindnetd);
    ``certs_dir`` (the run's registry mirrors) is mounted where containerd reads it;
    ``allow_cgroup_v1`` lets a kubelet of 1.35+ run on a cgroup v1 host."""
    node: dict[str, Any] = {"role": "control-plane", "image": node_image}
    if certs_dir is not None:
        node["extraMounts"] = [{"hostPath": str(certs_dir), "containerPath": NODE_CERTS_DIR, "readOnly": True}]
    config: dict[str, Any] = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "nodes": [node]}
    if networking:
        config["networking"] = dict(networking)
    if certs_dir is not None and patch_containerd:
        config["containerdConfigPatches"] = [CONTAINERD_CERTS_PATCH]
    if allow_cgroup_v1:
        config["kubeadmConfigPatches"] = [ALLOW_CGROUP_V1_PATCH]
    return config


def cluster_config_yaml(
    node_image: str,
    networking: Mapping[str, Any] | None = None,
    certs_dir: Path | None = None,
    patch_containerd: bool = False,
    allow_cgroup_v1: bool = False,
) -> str:
    config = cluster_config(node_image, networking, certs_dir, patch_containerd, allow_cgroup_v1)
    return yaml.safe_dump(config, sort_keys=False)


def node_platform(machine: str | None = None) -> str:
    """The Docker platform of kind nodes on this host (kind runs nodes natively)."""
    arch = (machine or platform.machine()).lower()
    return "linux/" + {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(arch, arch)


def parse_kind_clusters(stdout: str) -> list[str]:
    """Names printed by ``kind get clusters`` (none: an empty stdout, a note on stderr)."""
    return [line.strip() for line in stdout.splitlines() if line.strip()]


def parse_forwarding_port(line: str) -> int | None:
    """The local port of a ``kubectl port-forward`` "Forwarding from 127.0.0.1:PORT" line."""
    match = _FORWARDING_FROM.match(line.strip())
    return int(match.group(1)) if match else None


def docker_error_line(stderr: str) -> str:
    """The last non-empty line of a command's error output, for one-line messages."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "no error output"
    return lines[-1].removeprefix("ERROR: ").removeprefix("Error response from daemon: ")


@dataclass(frozen=True)
class KindCommands:
    """The command lines this tier runs besides those pytest-kind builds itself."""

    kind: Path
    name: str
    kubeconfig: Path

    def get_clusters(self) -> list[str]:
        return [str(self.kind), "get", "clusters"]

    def export_kubeconfig(self) -> list[str]:
        return [str(self.kind), "export", "kubeconfig", "--name", self.name, "--kubeconfig", str(self.kubeconfig)]

    def export_logs(self, directory: Path) -> list[str]:
        return [str(self.kind), "export", "logs", str(directory), "--name", self.name]


@dataclass(frozen=True)
class DockerCommands:
    docker: str = "docker"

    def info(self) -> list[str]:
        return [self.docker, "info", "--format", "{{.ServerVersion}}"]

    def image_inspect_id(self, image: str) -> list[str]:
        return [self.docker, "image", "inspect", "--format", "{{.Id}}", image]

    def node_states(self, cluster: str) -> list[str]:
        """Name, state and status of a kind cluster's node containers (kind labels them)."""
        return [
            self.docker, "ps", "-a", "--filter", f"label=io.x-k8s.kind.cluster={cluster}",
            "--format", "{{.Names}}\t{{.State}}\t{{.Status}}",
        ]  # fmt: skip

    def node_events(self, cluster: str, since: float, until: float) -> list[str]:
        """What the engine did to a kind cluster's node containers between two times: the
        evidence of a node that vanished or died mid-create (who removed it, its exit code)."""
        return [
            self.docker, "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
            "--filter", "type=container", "--filter", f"label=io.x-k8s.kind.cluster={cluster}",
            "--format", "{{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
        ]  # fmt: skip

    def certs_mounts(self, nodes: Sequence[str]) -> list[str]:
        """Each node's name and the host folder mounted at containerd's certs.d (empty: none)."""
        return [
            self.docker, "inspect", "--format",
            f'{{{{.Name}}}}\t{{{{range .Mounts}}}}{{{{if eq .Destination "{NODE_CERTS_DIR}"}}}}{{{{.Source}}}}'
            "{{end}}{{end}}",
            *nodes,
        ]  # fmt: skip

    def run_privileged(self, image: str) -> list[str]:
        """A privileged container of a local image that exits at once (never pulls)."""
        return [self.docker, "run", "--rm", "--pull", "never", "--privileged", "--entrypoint", "true", image]


def port_forward_argv(kubectl: Path, target: ServiceTarget) -> list[str]:
    """``kubectl port-forward`` to a Service; ``:PORT`` lets kubectl pick a free local port."""
    return [
        str(kubectl),
        "port-forward",
        f"svc/{target.name}",
        f":{target.port}",
        "-n",
        target.namespace,
        "--address",
        "127.0.0.1",
    ]


def kubectl_environment(kubeconfig: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for kubectl: ours plus KUBECONFIG.

    pytest-kind's own ``port_forward`` passes KUBECONFIG alone, which drops PATH and HOME
    (exec credential plugins, kubectl's cache directory).
    """
    return {**(os.environ if base is None else base), "KUBECONFIG": str(kubeconfig)}


# -- tools ------------------------------------------------------------------------------


def tool_cache_dir() -> Path:
    return cache_root() / "bin"


@dataclass(frozen=True)
class ToolPaths:
    kind: Path
    kubectl: Path
    downloaded: bool  # pytest-kind fetches them on first use (amd64 builds only)


def resolve_tools(
    kind_bin: Path | None = None,
    kubectl_bin: Path | None = None,
    machine: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> ToolPaths:
    """Where kind and kubectl come from.

    Explicit paths (pytest-kind's ``--kind-bin``/``--kind-kubectl-bin``) win. On amd64
    pytest-kind downloads the pinned versions into a shared cache (it would otherwise fetch
    them again for every cluster name). pytest-kind downloads amd64 builds only: elsewhere
    the binaries come from PATH, or from ``KIND_DOWNLOAD_URL``/``KUBECTL_DOWNLOAD_URL``.
    """
    arch = node_platform(machine).removeprefix("linux/")
    versions = pin_tool_versions()
    cache = tool_cache_dir()
    paths: dict[str, Path] = {}
    downloaded = False
    for tool, explicit, version_var, url_var in (
        ("kind", kind_bin, "KIND_VERSION", "KIND_DOWNLOAD_URL"),
        ("kubectl", kubectl_bin, "KUBECTL_VERSION", "KUBECTL_DOWNLOAD_URL"),
    ):
        version = versions[version_var]
        if explicit is not None:
            paths[tool] = explicit
        elif arch == "amd64" or os.environ.get(url_var):
            paths[tool] = cache / tool / version / tool
            downloaded = True
        elif found := which(tool):
            paths[tool] = Path(found)
        else:
            raise EnvironmentMissing(
                f"{tool}: not on PATH and pytest-kind downloads amd64 builds only (this host is {arch}); "
                f"install {tool} {version} or set {url_var}"
            )
    return ToolPaths(kind=paths["kind"], kubectl=paths["kubectl"], downloaded=downloaded)


def docker_preflight(docker: str = "docker") -> None:
    """Raise ``EnvironmentMissing`` (one line) unless a Docker engine answers."""
    if shutil.which(docker) is None:
        raise EnvironmentMissing(f"docker: no docker client on PATH; {DOCKER_MISSING_HINT}")
    try:
        result = subprocess.run(DockerCommands(docker).info(), capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        raise EnvironmentMissing(f"docker: `docker info` did not answer in 30s; {DOCKER_MISSING_HINT}") from None
    if result.returncode != 0 or not result.stdout.strip():
        raise EnvironmentMissing(
            f"docker: no Docker engine reachable ({docker_error_line(result.stderr)}); {DOCKER_MISSING_HINT}"
        )


def privileged_containers_refused(docker: str, image: str) -> bool:
    """Whether the engine refuses a privileged container of ``image`` for a missing capability.

    Asked after ``kind create cluster`` failed (pytest-kind lets its output go to the terminal
    uncaptured), with the node image kind has just tried: a privileged container again.
    """
    try:
        result = subprocess.run(
            DockerCommands(docker).run_privileged(image), capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode != 0 and PRIVILEGED_CAPS_ERROR in result.stdout + result.stderr


# -- running commands -------------------------------------------------------------------


def _run(argv: Sequence[str], what: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; a failure becomes a one-line HarnessError."""
    log.info("running: %s", " ".join(argv))
    result = subprocess.run(list(argv), capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise HarnessError(
            f"{what}: `{' '.join(argv[:3])} ...` exited {result.returncode}: "
            f"{docker_error_line(result.stderr or result.stdout)}"
        )
    return result


class _NotReady(Exception):
    """What is awaited has not happened yet (the message says what was last seen)."""


class _PortForward:
    """A running ``kubectl port-forward`` whose output is drained by a thread.

    Draining matters after readiness too: kubectl prints "Handling connection for PORT" per
    connection and would block on a full pipe. The drain also watches for the lines kubectl
    prints when the pod it is bound to is gone: depending on the version kubectl then exits
    ("lost connection to pod") or stays up and fails every connection ("an error occurred
    forwarding"), so a live process is no proof of a working forward.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.argv = list(argv)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.last_seen = "nothing yet"
        self.broken: str | None = None  # why this forward must not be used again
        self._ready = False
        self.process = subprocess.Popen(
            self.argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            if not line.startswith("Handling connection"):
                self.last_seen = line
            if _FORWARD_LOST.search(line):
                self.broken = line
            if not self._ready:  # only wait_ready() reads the queue: don't hoard lines after it
                self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self, timeout: float) -> int:
        """The local port once kubectl says it listens; raises when it exits or times out."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise _NotReady(f"no 'Forwarding from' line in {timeout:.0f}s") from None
            if line is None:
                raise _NotReady(f"kubectl exited {self.process.wait()}")
            port = parse_forwarding_port(line)
            if port is not None:
                self._ready = True
                return port

    def unusable(self) -> str | None:
        """Why new connections must not go through this forward, or None."""
        code = self.process.poll()
        if code is not None:
            return f"kubectl exited {code}"
        return self.broken

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # The reader sees EOF once kubectl is gone; closing the pipe under it would race.
        self._reader.join(timeout=5)
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()


class _Relay:
    """A stable ``127.0.0.1:PORT`` in front of kubectl port-forwards restarted on demand.

    kubectl binds a Service port-forward to the one pod it picked at start; when a rollout
    replaces that pod the forward is dead for good, and a caller that keeps one address for
    a whole migration (the background prober) would see an outage that never ends. The
    relay owns the address instead. Each accepted connection is piped (one thread each, at
    most ``max_connections``) to the current kubectl; when kubectl has exited, reported a
    lost pod or refuses the connection, the relay restarts it (bounded, with backoff) and
    retries that connection once. Connections already piped to a dead kubectl just close:
    that is the outage window the prober must count.
    """

    def __init__(
        self,
        where: str,
        start: Callable[[], tuple[_PortForward, int]],
        first: tuple[_PortForward, int],
        stopping: threading.Event,
        max_connections: int = 32,
        connect_timeout: float = 5.0,
    ) -> None:
        self._where = where
        self._start = start
        self._forward: _PortForward | None = first[0]
        self._port = first[1]
        self._stopping = stopping
        self._connect_timeout = connect_timeout
        self._restart_lock = threading.Lock()  # one restart at a time; others wait and reuse it
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # accept() wakes up to notice close()
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept, name=f"relay {where}", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            if not self._slots.acquire(blocking=False):
                log.warning("relay for %s: too many connections, refusing one", self._where)
                client.close()
                continue
            client.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(client,), name=f"relay {self._where} conn", daemon=True)
            with self._lock:
                self._threads.add(thread)
                self._sockets.add(client)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        backend: socket.socket | None = None
        try:
            backend = self._connect()
            if backend is not None:
                self._pipe(client, backend)
        except OSError as exc:  # a reset mid-stream: the client sees its connection close
            log.debug("relay for %s: connection ended: %s", self._where, exc)
        finally:
            for sock in (client, backend):
                if sock is not None:
                    with self._lock:
                        self._sockets.discard(sock)
                    sock.close()
            with self._lock:
                self._threads.discard(threading.current_thread())
            self._slots.release()

    def _connect(self) -> socket.socket | None:
        """A socket to the current kubectl, restarting it once if it turns out dead."""
        for _ in range(2):
            forward, port = self._current()
            if forward is None:
                return None
            try:
                backend = socket.create_connection(("127.0.0.1", port), timeout=self._connect_timeout)
            except OSError as exc:
                forward.broken = forward.broken or f"connecting to kubectl's port {port}: {exc}"
                continue
            backend.settimeout(None)
            with self._lock:
                if self._stopping.is_set():
                    backend.close()
                    return None
                self._sockets.add(backend)
            return backend
        return None

    def _current(self) -> tuple[_PortForward | None, int]:
        """The forward to use: the running one, or a fresh one if it is unusable."""
        with self._restart_lock:
            if self._stopping.is_set():
                return None, 0
            forward = self._forward
            why = forward.unusable() if forward is not None else "the last restart failed"
            if forward is not None and why is None:
                return forward, self._port
            last = forward.last_seen if forward is not None else "nothing"
            log.info("kubectl port-forward %s: restarting (%s; last seen: %s)", self._where, why, last)
            if forward is not None:
                forward.stop()
            self._forward = None
            try:
                self._forward, self._port = self._start()
            except _NotReady as exc:
                if not self._stopping.is_set():
                    log.warning(
                        "kubectl port-forward %s: restart failed (%s); closing one connection", self._where, exc
                    )
                return None, 0
            log.info("kubectl port-forward %s: forwarding again (kubectl port %d)", self._where, self._port)
            return self._forward, self._port

    def _pipe(self, client: socket.socket, backend: socket.socket) -> None:
        """Copy bytes both ways until either side closes (no half-close: HTTP needs none)."""
        peers = {client: backend, backend: client}
        with selectors.DefaultSelector() as selector:
            for sock, peer in peers.items():
                selector.register(sock, selectors.EVENT_READ, (sock, peer))
            while not self._stopping.is_set():
                for key, _ in selector.select(timeout=0.5):
                    source, sink = key.data
                    data = source.recv(65536)
                    if not data:
                        return
                    sink.sendall(data)

    def close(self) -> None:
        """Stop accepting, end every connection and wait for the relay threads."""
        self._stopping.set()
        self._listener.close()
        self._acceptor.join(timeout=5)
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):  # shutdown (not close) wakes a thread blocked on it
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)


@contextlib.contextmanager
def port_forward(
    argv: Sequence[str], env: Mapping[str, str], ready_timeout: float = 30.0, attempts: int = 3
) -> Iterator[str]:
    """Run ``argv`` (a kubectl port-forward) until it listens; yield a stable ``127.0.0.1:PORT``.

    kubectl is (re)started with backoff when it exits early (e.g. the Service has no ready
    endpoint yet) or stays silent. The address yielded is a relay's (see ``_Relay``), which
    outlives kubectl: it restarts kubectl when the pod behind it is replaced. Everything
    (relay threads, sockets, kubectl) is stopped on exit.
    """
    where = " ".join(argv[2:])
    stopping = threading.Event()
    started: list[_PortForward] = []

    def log_retry(state: tenacity.RetryCallState) -> None:
        outcome = state.outcome.exception() if state.outcome else None
        last = started[-1].last_seen if started else "nothing yet"
        log.info(
            "waiting for kubectl port-forward %s (attempt %d: %s; last seen: %s)",
            where,
            state.attempt_number,
            outcome,
            last,
        )

    def nap(seconds: float) -> None:
        stopping.wait(seconds)  # a backoff that ends at once on exit

    @tenacity.retry(
        # Stops early on exit: a restart in progress must not hold the context open.
        stop=tenacity.stop_after_attempt(attempts) | tenacity.stop_when_event_set(stopping),
        wait=tenacity.wait_exponential(multiplier=1, min=1, max=8),
        sleep=nap,
        retry=tenacity.retry_if_exception_type(_NotReady),
        before_sleep=log_retry,
        reraise=True,
    )
    def start() -> tuple[_PortForward, int]:
        started[:] = [f for f in started if f.process.poll() is None]  # keep only what may need stopping
        forward = _PortForward(argv, env)
        started.append(forward)
        try:
            return forward, forward.wait_ready(ready_timeout)
        except _NotReady:
            forward.stop()
            raise

    def stop_all() -> None:
        for forward in list(started):
            forward.stop()

    try:
        first = start()
    except _NotReady as exc:
        last = started[-1].last_seen if started else "nothing"
        raise HarnessError(
            f"kubectl port-forward {where}: not ready after {attempts} attempts ({exc}; last seen: {last})"
        ) from None
    try:
        relay = _Relay(where, start, first, stopping)
    except BaseException:
        stop_all()
        raise
    log.info("port-forward %s: kubectl on 127.0.0.1:%d behind the relay on %s", where, first[1], relay.address)
    try:
        yield relay.address
    finally:
        stopping.set()
        stop_all()  # first: wakes a restart waiting for kubectl's first line
        relay.close()
        stop_all()  # again: a restart may have started kubectl while the relay was closing


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
        existing = parse_kind_clusters(_run(self.commands.get_clusters(), "kind get clusters").stdout)
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
            _run(self.commands.export_kubeconfig(), f"kind export kubeconfig {self.name}")
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
                )
            )
            log.info("creating kind cluster %s with node image %s", self.name, self.node_image)
        create_started = time.time()
        try:
            self._kind.create(config_file=self.config_file if not self.reused else None)
        except subprocess.CalledProcessError as exc:
            if privileged_containers_refused(self.options.docker, self.node_image):
                raise EnvironmentMissing(f"kind create cluster {self.name}: {PRIVILEGED_CAPS_HINT}") from None
            raise HarnessError(
                f"kind create cluster {self.name} (image {self.node_image}) exited {exc.returncode}; "
                f"see its output above; its node containers meanwhile: {self._node_history(create_started)}"
            ) from None
        self._created = True
        self._wait_nodes_ready()

    def _reused_certs_dir(self) -> Path:
        """The host folder a reused cluster's nodes read containerd's certs.d from: the run's
        mirrors write their hosts.toml there. It is fixed when the nodes are created, so a
        cluster made from another folder keeps that one; a node without it (made by hand or by
        an older kserve-compat) or one whose folder is gone would pull past the mirrors."""
        listed = _run(self.docker.node_states(self.name), f"docker ps (nodes of {self.name})").stdout
        nodes = [line.split("\t", 1)[0] for line in listed.splitlines() if line.strip()]
        if not nodes:
            raise UsageError(f"kind cluster {self.name}: no node container found to reuse")
        inspected = _run(self.docker.certs_mounts(nodes), f"docker inspect (nodes of {self.name})").stdout
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
        node = f"{self.name}-control-plane"
        listing = _run(
            [self.options.docker, "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.Gateway}} {{end}}",
             node],
            f"docker inspect {node}",
        ).stdout.split()
        ipv4 = [address for address in listing if address.count(".") == 3]
        if not ipv4:
            raise HarnessError(f"kind node {node}: no IPv4 gateway on its network (docker inspect: {listing})")
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
                raise _NotReady(last_seen[0])
            return ready_versions

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.options.node_ready_timeout),
            wait=tenacity.wait_exponential(multiplier=1, min=1, max=10),
            retry=tenacity.retry_if_exception_type((_NotReady, ApiException, OSError)),
            before_sleep=lambda s: log.info(
                "waiting for the nodes of %s to be Ready (last seen: %s)", self.name, last_seen[0]
            ),
            reraise=True,
        )
        try:
            versions = retrying(check)
        except (_NotReady, ApiException, OSError):
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
        listed = subprocess.run(self.docker.node_states(self.name), capture_output=True, text=True, check=False)
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
            listed = subprocess.run(
                self.docker.node_events(self.name, since, time.time()),
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(docker events did not answer: {exc})"
        events = [
            " ".join(line.replace("<no value>", "").split())  # only "die" has an exit code
            for line in listed.stdout.splitlines()
            if line.strip()
        ]
        # exec_* events are kind's own commands inside the node: not how a node ends.
        shown = [event for event in events if not event.startswith("exec_")]
        return ", ".join(shown) or f"(no event; docker events: {docker_error_line(listed.stderr)})"

    @staticmethod
    def _describe_containers(container_ids: list[str]) -> str:
        """``id state`` of each container (evidence of how it came to be), or the ids alone."""
        listed = subprocess.run(
            ["docker", "inspect", "--format", "{{.Id}} {{.State.Status}}", *container_ids],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lines = [line.split(maxsplit=1) for line in listed.stdout.splitlines() if line.strip()]
        described = [f"{parts[0][:12]} {parts[1] if len(parts) > 1 else ''}".strip() for parts in lines]
        return ", ".join(described) or " ".join(container_id[:12] for container_id in container_ids)

    def _node_container_ids(self) -> list[str]:
        """Full ids of this cluster's node containers (empty when the engine does not answer)."""
        listed = subprocess.run(
            ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=io.x-k8s.kind.cluster={self.name}"],
            capture_output=True,
            text=True,
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
            elif not image_present(image, self.options.docker):
                log.info("%s: not in the local Docker engine; the kubelet's pull from the mirror will tell", image)
                continue
            local_id = _run(self.docker.image_inspect_id(image), f"docker image inspect {image}").stdout.strip()
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
        _run(self.commands.export_logs(directory), f"kind export logs {self.name}")


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
        registry_binary()  # every node pulls through the run's mirrors: no mirror, no cluster
        if not self.options.local_images:
            resolve_tools(self.options.kind_bin, self.options.kubectl_bin)

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
        create = f"create kind cluster {name}: one control-plane node, node image {node_image}{pinned}"
        if self.options.reuse_cluster:
            steps.append(
                f"reuse kind cluster {name} if it exists (kubeconfig via `kind export kubeconfig`), else {create}"
            )
        else:
            steps.append(f"{create} (stop if a cluster of that name exists: --reuse-cluster uses it)")
        steps += [
            f"wait for the node to be Ready (up to {self.options.node_ready_timeout:.0f}s)",
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
