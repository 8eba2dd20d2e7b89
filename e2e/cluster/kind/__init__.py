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
importing this package calls it once (``tools``). Exporting the variables before pytest
starts (nox, CI) makes the order irrelevant.

One module per concern: ``tools`` (versions, the tool cache, Docker's preflight),
``commands`` (pure decisions and command lines, tested without Docker), ``forwarding``,
``cluster`` (``KindCluster``: one group's cluster), ``factory`` (``KindProviderFactory``).
This face names what the rest of the harness uses.
"""

from __future__ import annotations

from e2e.cluster.kind.cluster import KindCluster, KindOptions
from e2e.cluster.kind.commands import (
    CLUSTER_NAME_MAX,
    DockerCommands,
    KindCommands,
    allow_cgroup_v1_deviation,
    cluster_config,
    cluster_config_yaml,
    cluster_name,
    kubectl_environment,
    kubelet_refuses_cgroup_v1,
    node_platform,
    parse_forwarding_port,
    parse_kind_clusters,
    port_forward_argv,
)
from e2e.cluster.kind.factory import KindProviderFactory
from e2e.cluster.kind.forwarding import port_forward
from e2e.cluster.kind.tools import (
    KIND_VERSION,
    KUBECTL_VERSION,
    ToolPaths,
    docker_preflight,
    pin_tool_versions,
    resolve_tools,
)

__all__ = [
    "CLUSTER_NAME_MAX",
    "KIND_VERSION",
    "KUBECTL_VERSION",
    "DockerCommands",
    "KindCluster",
    "KindCommands",
    "KindOptions",
    "KindProviderFactory",
    "ToolPaths",
    "allow_cgroup_v1_deviation",
    "cluster_config",
    "cluster_config_yaml",
    "cluster_name",
    "docker_preflight",
    "kubectl_environment",
    "kubelet_refuses_cgroup_v1",
    "node_platform",
    "parse_forwarding_port",
    "parse_kind_clusters",
    "pin_tool_versions",
    "port_forward",
    "port_forward_argv",
    "resolve_tools",
]
