"""The kind tier's pure decisions and command lines (tested without Docker): cluster names,
the cluster config, kind's and docker's argv, cgroup rules."""

from __future__ import annotations

import hashlib
import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from e2e.cluster.mirrors import NODE_CERTS_DIR
from e2e.command import run
from e2e.errors import HarnessError
from e2e.imageset.pod_network import NODE_CNI_DIR
from e2e.targets import ServiceTarget

if TYPE_CHECKING:
    pass

CLUSTER_NAME_PREFIX = "kcompat-"
CLUSTER_NAME_MAX = 40  # node containers are NAME-control-plane: keep hostnames well under 63

# kubectl prints one line per listener; the IPv4 one is what the harness dials.
FORWARDING_FROM = re.compile(r"^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)\s*$")

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
        done = run(
            [docker, "info", "--format", "{{.CgroupVersion}}"], "the engine's cgroup version", timeout=30, check=False
        )
    except HarnessError:
        return ""
    return done.stdout.strip()


def cluster_config(
    node_image: str,
    networking: Mapping[str, Any] | None = None,
    certs_dir: Path | None = None,
    patch_containerd: bool = False,
    allow_cgroup_v1: bool = False,
    *,
    workers: int = 0,
    cni_dirs: Sequence[Path] = (),
) -> dict[str, Any]:
    """The kind cluster config: a control-plane node and ``workers`` worker nodes running
    ``node_image``; ``networking`` is what a node image built here needs (its own CNI instead
    of kind's kindnetd); ``certs_dir`` (the run's registry mirrors) is mounted where containerd
    reads it; ``cni_dirs`` (one per node, the control plane first) where the CNI reads its
    config (the pod network of a cluster with workers, see imageset/pod_network.py);
    ``allow_cgroup_v1`` lets a kubelet of 1.35+ run on a cgroup v1 host."""
    roles = ["control-plane", *["worker"] * workers]
    if cni_dirs and len(cni_dirs) != len(roles):
        raise HarnessError(f"kind cluster config: {len(roles)} nodes but {len(cni_dirs)} CNI folders")
    nodes: list[dict[str, Any]] = []
    for index, role in enumerate(roles):
        node: dict[str, Any] = {"role": role, "image": node_image}
        mounts = []
        if certs_dir is not None:
            mounts.append({"hostPath": str(certs_dir), "containerPath": NODE_CERTS_DIR, "readOnly": True})
        if cni_dirs:
            mounts.append({"hostPath": str(cni_dirs[index]), "containerPath": NODE_CNI_DIR})
        if mounts:
            node["extraMounts"] = mounts
        nodes.append(node)
    config: dict[str, Any] = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "nodes": nodes}
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
    *,
    workers: int = 0,
    cni_dirs: Sequence[Path] = (),
) -> str:
    config = cluster_config(
        node_image, networking, certs_dir, patch_containerd, allow_cgroup_v1, workers=workers, cni_dirs=cni_dirs
    )
    return yaml.safe_dump(config, sort_keys=False)


def node_names(cluster: str, workers: int) -> list[str]:
    """kind's node container names: NAME-control-plane, NAME-worker, NAME-worker2, ..."""
    return [f"{cluster}-control-plane", *(f"{cluster}-worker{index if index > 1 else ''}" for index in
                                          range(1, workers + 1))]  # fmt: skip


def node_platform(machine: str | None = None) -> str:
    """The Docker platform of kind nodes on this host (kind runs nodes natively)."""
    arch = (machine or platform.machine()).lower()
    return "linux/" + {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(arch, arch)


def parse_kind_clusters(stdout: str) -> list[str]:
    """Names printed by ``kind get clusters`` (none: an empty stdout, a note on stderr)."""
    return [line.strip() for line in stdout.splitlines() if line.strip()]


def parse_forwarding_port(line: str) -> int | None:
    """The local port of a ``kubectl port-forward`` "Forwarding from 127.0.0.1:PORT" line."""
    match = FORWARDING_FROM.match(line.strip())
    return int(match.group(1)) if match else None


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
