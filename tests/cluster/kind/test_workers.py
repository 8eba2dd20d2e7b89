"""Kind clusters with workers (``--kind-workers N``): the config kind is given, the pod
network a node image built here gets (kube-router: ``e2e/imageset/pod_network.py``), what
the plan says and the refusal of a bad count. The real two-node cluster runs in
``test_operator_site.py`` (the outage on the node without the retired image)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.release_files import session_release_files

from e2e.cluster.kind.commands import cluster_config, node_names
from e2e.errors import HarnessError, UsageError
from e2e.imageset import pod_network
from e2e.run import kind_worker_count

OURS = "kserve-compat/kind-node:v1.34.4"


def test_a_config_with_workers_gives_each_node_its_own_cni_folder_and_the_mirrors(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    cni = [tmp_path / "cp", tmp_path / "w1", tmp_path / "w2"]
    config = cluster_config(OURS, {"disableDefaultCNI": True}, certs, workers=2, cni_dirs=cni)
    assert [node["role"] for node in config["nodes"]] == ["control-plane", "worker", "worker"]
    assert all(node["image"] == OURS for node in config["nodes"])
    for node, folder in zip(config["nodes"], cni, strict=True):
        assert node["extraMounts"] == [
            {"hostPath": str(certs), "containerPath": "/etc/containerd/certs.d", "readOnly": True},
            {"hostPath": str(folder), "containerPath": "/etc/cni/net.d"},
        ]
    # Without a pod network of ours (a published node image: kindnetd), no CNI folder is mounted.
    published = cluster_config("kindest/node:v1.34.8", None, certs, workers=1)
    assert [len(node["extraMounts"]) for node in published["nodes"]] == [1, 1]


def test_a_cni_folder_per_node_or_none(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="2 nodes but 1 CNI folders"):
        cluster_config(OURS, workers=1, cni_dirs=[tmp_path])


def test_node_names_are_kinds() -> None:
    assert node_names("c", 0) == ["c-control-plane"]
    assert node_names("c", 3) == ["c-control-plane", "c-worker", "c-worker2", "c-worker3"]


@pytest.mark.parametrize("text", ["x", "-1", "5", "1.5", ""])
def test_a_bad_worker_count_is_a_usage_error_naming_it(text: str) -> None:
    with pytest.raises(UsageError, match=rf"--kind-workers {text}: expected a number of worker nodes from 0 to 4"):
        kind_worker_count(text)


def test_the_cni_template_leaves_the_range_to_kube_router() -> None:
    template = json.loads(pod_network.cni_conf_template())
    bridge, portmap = template["plugins"]
    assert bridge["type"] == "bridge" and bridge["ipam"] == {"type": "host-local"}  # no range: the node's podCIDR
    assert portmap["type"] == "portmap"


def test_kube_router_runs_routes_only_on_every_node_and_reads_the_mounted_conflist() -> None:
    documents = pod_network.manifest("kserve-compat.local/kube-router:v2.1.0")
    assert [d["kind"] for d in documents] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"]
    spec = documents[-1]["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["tolerations"] == [{"operator": "Exists"}]  # the control plane too
    (container,) = spec["containers"]
    assert container["image"] == "kserve-compat.local/kube-router:v2.1.0"
    args = container["args"]
    assert "--run-router=true" in args and "--run-firewall=false" in args and "--run-service-proxy=false" in args
    assert "--enable-pod-egress=true" in args  # off the pod network, masqueraded: replies find their way back
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBE_ROUTER_CNI_CONF_FILE"] == f"{pod_network.NODE_CNI_DIR}/{pod_network.CNI_CONF_FILE}"
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    assert volumes["cni-conf-dir"] == pod_network.NODE_CNI_DIR


def test_the_egress_guard_lets_pods_reach_the_api_server_and_answer_other_nodes() -> None:
    rules = pod_network.guard_openings(["172.18.0.2"])
    assert rules[0][-6:] == ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]
    assert rules[1][-8:] == ["-d", "172.18.0.2", "-p", "tcp", "--dport", "6443", "-j", "RETURN"]
    assert all(rule[:5] == ["iptables", "-w", "-I", "KSERVE-COMPAT-FORWARD", "1"] for rule in rules)


def plan(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp_path), "KSERVE_COMPAT_MANIFEST_DIR": str(
        session_release_files().offline_directory())}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "e2e.cli", "run", "--provider", "kind", "--kserve", "v0.14.0", "--proxy",
         "quay-v0.22.1", "--k8s", "1.34", "--plan", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_the_plan_names_the_workers_and_the_pod_network(tmp_path: Path) -> None:
    done = plan(tmp_path, "--local-images", "--kind-workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "one control-plane node and 2 workers (the control plane tainted: workloads on the workers)" in done.stdout
    assert "pod network: kube-router v2.1.0 built from its Go module" in done.stdout
    assert "wait for the nodes to be Ready" in done.stdout
    # A published node image (online) has kind's own kindnetd: no kube-router.
    online = plan(tmp_path, "--kind-workers", "1")
    assert online.returncode == 0, online.stdout + online.stderr
    assert "and 1 worker (" in online.stdout and "kube-router" not in online.stdout


def test_a_bad_worker_count_stops_the_run_with_one_line_and_exit_2(tmp_path: Path) -> None:
    done = plan(tmp_path, "--kind-workers", "9")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--kind-workers 9: expected a number of worker nodes from 0 to 4" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_the_egress_guard_goes_back_ahead_of_kube_routers_accepts() -> None:
    # What `iptables -S FORWARD` showed on a worker once kube-router had started.
    listed = """-P FORWARD ACCEPT
-A FORWARD -m comment --comment "allow outbound node port traffic on node interface with which node ip is associated" -o eth0 -j ACCEPT
-A FORWARD -m comment --comment "allow outbound traffic to pods" -o kube-bridge -j ACCEPT
-A FORWARD -m comment --comment "allow inbound traffic to pods" -i kube-bridge -j ACCEPT
-A FORWARD -s 10.244.0.0/16 -j KSERVE-COMPAT-FORWARD
"""  # noqa: E501
    rules = pod_network.forward_rules(listed)
    assert len(rules) == 4 and any(pod_network.KUBE_ROUTER_FORWARD_MARK in rule for rule in rules)
    assert rules[-1] == " ".join(pod_network.guard_jump("10.244.0.0/16"))
    delete, insert = pod_network.guard_first("10.244.0.0/16")
    assert delete == ["iptables", "-w", "-D", "FORWARD", "-s", "10.244.0.0/16", "-j", "KSERVE-COMPAT-FORWARD"]
    assert insert == ["iptables", "-w", "-I", "FORWARD", "1", "-s", "10.244.0.0/16", "-j", "KSERVE-COMPAT-FORWARD"]
