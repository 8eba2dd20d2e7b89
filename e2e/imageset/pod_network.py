"""The pod network of a kind cluster with workers, on node images built here.

A node image built here carries a one-node CNI (a ptp conflist on a fixed range: see
``node.py``). Pods on two nodes need each node's own share of the pod subnet and a route to
every other node's share: kind's kindnetd does that, but its module is not one the Go module
proxy serves. kube-router is a real multi-node CNI it does serve
(``github.com/cloudnativelabs/kube-router/v2``): run with ``--run-router`` only, it writes the
node's podCIDR into the bridge conflist each node mounts at ``/etc/cni/net.d`` and installs a
route to every other node's podCIDR (learnt over iBGP between the nodes). Its image is the
binary built here on a Debian rootfs with the iptables, ipset and iproute2 it runs.

A published kind node image needs none of this: its kindnetd is multi-node already.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e2e import binaries
from e2e.docker_cli import image_id
from e2e.imageset.docker_image import RECIPE_LABEL, ImageRecipe, docker, file_sha256, is_current

REPOSITORY = "kserve-compat.local/kube-router"
BASE_REPOSITORY = "kserve-compat/kube-router-base"
BASE_PACKAGES = ("iptables", "ipset", "iproute2")
NAMESPACE = "kube-system"
NAME = "kube-router"
# Where each node reads its CNI config: a host folder per node is mounted there (hiding the
# node image's one-node conflist), holding the template below; kube-router fills in the range.
NODE_CNI_DIR = "/etc/cni/net.d"
CNI_CONF_FILE = "10-kube-router.conflist"
HEALTH_PORT = 20244


def version() -> str:
    return binaries.DEFAULT_VERSIONS[binaries.KUBE_ROUTER]


def cni_conf_template() -> str:
    """The bridge conflist every node starts with; ``host-local`` without a range until
    kube-router inserts the node's podCIDR (``--enable-cni``)."""
    config = {
        "cniVersion": "0.3.1",
        "name": "kubernetes",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "kube-bridge",
                "isDefaultGateway": True,
                "hairpinMode": True,  # a pod reaches itself through its own Service
                "ipam": {"type": "host-local"},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }
    return json.dumps(config, indent=2) + "\n"


def kube_router_args() -> list[str]:
    """Routes only: kube-proxy (in the node image) keeps Services and no policy is enforced.
    Pod traffic leaving the pod network is masqueraded (``--enable-pod-egress``, as kindnetd
    does): whatever it reaches off the cluster (the kind network's gateway) has no route back
    to a pod's address; between pods, addresses are kept."""
    return [
        "--run-router=true",
        "--run-firewall=false",
        "--run-service-proxy=false",
        "--enable-cni=true",
        "--enable-pod-egress=true",
        "--enable-ibgp=true",
        "--enable-overlay=false",  # the nodes share one Docker network: direct routes
        "--bgp-graceful-restart=true",
        f"--health-port={HEALTH_PORT}",
    ]


def manifest(image: str) -> list[dict[str, Any]]:
    """kube-router's ServiceAccount, its read access, and its DaemonSet on every node."""
    labels = {"k8s-app": NAME}
    rules = [
        {"apiGroups": [""], "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
    ]  # fmt: skip
    container = {
        "name": NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": kube_router_args(),
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "KUBE_ROUTER_CNI_CONF_FILE", "value": f"{NODE_CNI_DIR}/{CNI_CONF_FILE}"},
        ],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": HEALTH_PORT}, "periodSeconds": 3},
        "securityContext": {"privileged": True},
        "volumeMounts": [
            {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True},
            {"name": "cni-conf-dir", "mountPath": NODE_CNI_DIR},
            {"name": "xtables-lock", "mountPath": "/run/xtables.lock"},
        ],
    }
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": "system-node-critical",
                    "serviceAccountName": NAME,
                    "hostNetwork": True,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [container],
                    "volumes": [
                        {"name": "lib-modules", "hostPath": {"path": "/lib/modules"}},
                        {"name": "cni-conf-dir", "hostPath": {"path": NODE_CNI_DIR}},
                        {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
                    ],
                },
            },
        },
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": NAME},
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": NAME},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
        daemonset,
    ]  # fmt: skip


def guard_openings(api_server_addresses: Sequence[str]) -> list[list[str]]:
    """The iptables rules a node image's egress guard needs on a cluster with workers (it lets
    pods reach the pod network and their own node's API server only): a pod reaches the API
    server on the control-plane node, and the replies of a pod's server to a connection from
    another node (the API server calling a webhook) leave through FORWARD."""
    chain = GUARD_CHAIN
    rules = [["iptables", "-w", "-I", chain, "1", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j",
              "RETURN"]]  # fmt: skip
    rules += [
        ["iptables", "-w", "-I", chain, "1", "-d", address, "-p", "tcp", "--dport", "6443", "-j", "RETURN"]
        for address in api_server_addresses
    ]
    return rules


GUARD_CHAIN = "KSERVE-COMPAT-FORWARD"
# kube-router inserts its own ACCEPTs for the bridge at the top of FORWARD when it starts:
# ahead of the guard's jump, they would let pod traffic leave the node unchecked (seen here:
# a connection to a Service address not yet rewritten by kube-proxy reached a server off the
# node, which answered Prometheus's scrapes with 404).
KUBE_ROUTER_FORWARD_MARK = "-i kube-bridge"


def guard_jump(pod_subnet: str) -> list[str]:
    """The FORWARD rule that sends pod traffic through the node image's egress guard."""
    return ["-s", pod_subnet, "-j", GUARD_CHAIN]


def guard_first(pod_subnet: str) -> list[list[str]]:
    """Put the guard's jump back at the top of FORWARD, once kube-router's rules are in."""
    return [
        ["iptables", "-w", "-D", "FORWARD", *guard_jump(pod_subnet)],
        ["iptables", "-w", "-I", "FORWARD", "1", *guard_jump(pod_subnet)],
    ]


def forward_rules(iptables_s: str) -> list[str]:
    """The rules of ``iptables -S FORWARD``'s output, in order, without the policy line."""
    return [line.removeprefix("-A FORWARD ").strip() for line in iptables_s.splitlines() if line.startswith("-A ")]


def image_recipe(base: str, binary: Path) -> ImageRecipe:
    return ImageRecipe(
        (f"{REPOSITORY}:{version()}",),
        {"binary_sha256": file_sha256(binary), "base": image_id(base) or base, "args": "entrypoint"},
    )


def build_kube_router_image() -> str:
    """kube-router's image (built unless current): its binary on a Debian rootfs with the
    tools it runs, the node's iptables backend picked as kube-proxy's image does."""
    from e2e.imageset import node

    base = node.debootstrap_image(
        node.base_recipe(packages=BASE_PACKAGES, repository=BASE_REPOSITORY),
        BASE_PACKAGES,
        node.remove_from_rootfs,
        "",
        "kube-router's image",
    )
    binary = binaries.ensure(binaries.KUBE_ROUTER, version())
    recipe = image_recipe(base, binary)
    if is_current(recipe):
        return recipe.name
    dockerfile = (
        f"FROM {base}\n"
        "COPY iptables-wrapper /usr/sbin/iptables-wrapper\n"
        f"RUN {node.INSTALL_IPTABLES_WRAPPER} >/dev/null\n"
        "COPY kube-router /usr/local/bin/kube-router\n"
        'ENTRYPOINT ["/usr/local/bin/kube-router"]\n'
        f'LABEL {RECIPE_LABEL}="{recipe.digest()}"\n'
    )
    context = node.tar_files(
        {
            "Dockerfile": (dockerfile.encode(), 0o644),
            "iptables-wrapper": (node.IPTABLES_WRAPPER.encode(), 0o755),
            "kube-router": (binary, 0o755),
        }
    )
    previous = image_id(recipe.name)
    docker(["build", "--quiet", "-t", recipe.name, "-"], f"image {recipe.name}", input_bytes=context)
    node.drop_replaced(recipe.name, previous)
    return recipe.name
