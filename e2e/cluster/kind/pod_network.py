"""Starting the pod network of a kind cluster with workers on node images built here:
kube-router (what it is and why: ``e2e/imageset/pod_network.py``) on every node, and the
node image's egress guard adjusted for pods on two nodes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import tenacity
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e import diagnostics
from e2e.apply import Applier
from e2e.cluster.kind.forwarding import NotReady
from e2e.command import run
from e2e.errors import HarnessError
from e2e.imageset import node
from e2e.imageset import pod_network as kube_router

log = logging.getLogger(__name__)

SELECTOR = f"k8s-app={kube_router.NAME}"
FORWARD_RULES_TIMEOUT_S = 60.0


def cni_folders(parent: Path, nodes: Sequence[str]) -> list[Path]:
    """A host folder per node, to be mounted at its CNI config folder, holding the bridge
    conflist kube-router completes with the node's range."""
    folders = []
    for node_name in nodes:
        folder = parent / node_name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / kube_router.CNI_CONF_FILE).write_text(kube_router.cni_conf_template())
        folders.append(folder)
    return folders


@dataclass(frozen=True)
class PodNetwork:
    cluster: str
    nodes: Sequence[str]  # node containers, the control plane first
    docker: str = "docker"
    ready_timeout_s: float = 180.0

    def open_guards(self, api_server: str) -> None:
        """What pods on two nodes need through the egress guard (before any pod runs)."""
        for node_name in self.nodes:
            for rule in kube_router.guard_openings([api_server]):
                run([self.docker, "exec", node_name, *rule], f"open the egress guard of {node_name}")

    def start(
        self, api: k8s_client.ApiClient, image: str, container_logs: Callable[[str, str, str, bool], str]
    ) -> None:
        """kube-router's DaemonSet, ready on every node (each node's range in its conflist,
        routes to the others'), then the egress guard back ahead of its FORWARD rules."""
        Applier(api).apply(kube_router.manifest(image))
        apps = k8s_client.AppsV1Api(api)
        last_seen = ["not read yet"]

        def ready() -> None:
            status = apps.read_namespaced_daemon_set(kube_router.NAME, kube_router.NAMESPACE).status
            last_seen[0] = f"{status.number_ready or 0}/{len(self.nodes)} ready"
            if (status.number_ready or 0) < len(self.nodes):
                raise NotReady(last_seen[0])

        try:
            tenacity.Retrying(
                stop=tenacity.stop_after_delay(self.ready_timeout_s),
                wait=tenacity.wait_exponential(multiplier=1, min=1, max=10),
                retry=tenacity.retry_if_exception_type((NotReady, ApiException)),
                before_sleep=lambda _: log.info(
                    "waiting for kube-router on the %d nodes of %s (last seen: %s)",
                    len(self.nodes), self.cluster, last_seen[0],
                ),
                reraise=True,
            )(ready)  # fmt: skip
        except (NotReady, ApiException):
            evidence = diagnostics.pod_failure_evidence(
                api, kube_router.NAMESPACE, SELECTOR,
                lambda container, previous: container_logs(kube_router.NAMESPACE, SELECTOR, container, previous),
            ) or []  # fmt: skip
            raise HarnessError(
                f"kind cluster {self.cluster}: kube-router (the pod network) not ready after "
                f"{self.ready_timeout_s:.0f}s (last seen: {last_seen[0]}); " + "; ".join(evidence)[-1500:]
            ) from None
        for node_name in self.nodes:
            self._guard_ahead_of_kube_router(node_name)

    def deviation(self) -> str:
        return (
            f"pod network: kube-router {kube_router.version()} (routes between the {len(self.nodes)} nodes' pod "
            "ranges, bridge CNI), built here, in place of kind's kindnetd, whose module the Go module proxy does "
            "not serve"
        )

    def _forward_rules(self, node_name: str) -> list[str]:
        listed = run([self.docker, "exec", node_name, "iptables", "-w", "-S", "FORWARD"],
                     f"iptables -S FORWARD on {node_name}").stdout  # fmt: skip
        return kube_router.forward_rules(listed)

    def _guard_ahead_of_kube_router(self, node_name: str) -> None:
        """Once kube-router's FORWARD rules are in (it adds them as it starts), the node
        image's egress guard goes back ahead of them, and is checked to be first."""
        try:
            tenacity.Retrying(
                stop=tenacity.stop_after_delay(FORWARD_RULES_TIMEOUT_S),
                wait=tenacity.wait_exponential(multiplier=0.5, max=5),
                retry=tenacity.retry_if_result(
                    lambda rules: not any(kube_router.KUBE_ROUTER_FORWARD_MARK in rule for rule in rules)
                ),
                before_sleep=lambda _: log.info("waiting for kube-router's FORWARD rules on %s", node_name),
            )(self._forward_rules, node_name)
        except tenacity.RetryError:
            raise HarnessError(
                f"kind node {node_name}: kube-router added no FORWARD rule in {FORWARD_RULES_TIMEOUT_S:.0f} s"
            ) from None
        for rule in kube_router.guard_first(node.POD_SUBNET):
            run([self.docker, "exec", node_name, *rule], f"the egress guard first on {node_name}")
        first = self._forward_rules(node_name)[:1]
        if first != [" ".join(kube_router.guard_jump(node.POD_SUBNET))]:
            raise HarnessError(f"kind node {node_name}: the egress guard is not first in FORWARD (first: {first})")
