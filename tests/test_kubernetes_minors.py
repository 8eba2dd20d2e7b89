"""Every Kubernetes minor of the matrix, on both tiers: each group runs its minor's own build
(control plane and etcd for the local tier, node image and kubectl for kind). Nothing is
started here; the real runs are in tests/local/test_minor.py and the kind group of .ci/run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from e2e import binaries
from e2e.cluster import kind as kind_tier
from e2e.cluster.kind import KindOptions, KindProviderFactory
from e2e.cluster.local import LocalProviderFactory
from e2e.local import controlplane, kubeadm
from e2e.matrix import load_matrix

MATRIX = load_matrix()

# `kubeadm config images list --kubernetes-version v1.35.4`, as kubeadm v1.35.4 prints it.
KUBEADM_V1_35_4 = """registry.k8s.io/kube-apiserver:v1.35.4
registry.k8s.io/kube-controller-manager:v1.35.4
registry.k8s.io/kube-scheduler:v1.35.4
registry.k8s.io/kube-proxy:v1.35.4
registry.k8s.io/coredns/coredns:v1.13.1
registry.k8s.io/pause:3.10.1
registry.k8s.io/etcd:3.6.6-0
"""


def test_kubeadm_names_the_etcd_of_its_minor() -> None:
    images = kubeadm.image_list(KUBEADM_V1_35_4.splitlines())
    assert images["etcd"] == "registry.k8s.io/etcd:3.6.6-0"
    assert images["coredns"] == "registry.k8s.io/coredns/coredns:v1.13.1"
    assert kubeadm.binary_version_for_image("etcd", "3.6.6-0") == "v3.6.6"
    assert kubeadm.binary_version_for_image("coredns", "v1.13.1") == "v1.13.1"


def test_the_local_control_plane_of_another_minor_takes_its_kubeadms_etcd(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str | None]] = []

    def ensure(component: str, version: str | None = None, *, build: bool = True) -> Path:
        asked.append((component, version))
        return Path("/cache") / component / str(version)

    together: list[tuple[list[str], str]] = []
    monkeypatch.setattr(binaries, "ensure", ensure)
    monkeypatch.setattr(binaries, "ensure_together", lambda components, version: together.append(
        (list(components), version)))  # fmt: skip
    monkeypatch.setattr(kubeadm, "named_images", lambda version, build=True: kubeadm.image_list(
        KUBEADM_V1_35_4.splitlines()))  # fmt: skip
    found = controlplane.resolve_binaries("v1.35.4", with_controllers=True)
    # Its Kubernetes commands are built in one go build, not one each.
    assert together == [(["kube-apiserver", "kube-controller-manager", "kube-scheduler"], "v1.35.4")]
    assert found.etcd == Path("/cache/etcd/v3.6.6")
    assert found.kube_apiserver == Path("/cache/kube-apiserver/v1.35.4")
    assert ("kube-scheduler", "v1.35.4") in asked and ("kwok", None) in asked

    # The default minor needs no kubeadm: its etcd is the binaries' default (what kubeadm v1.34.4 names).
    monkeypatch.setattr(kubeadm, "named_images", lambda *a, **k: pytest.fail("no kubeadm for the default"))
    default = controlplane.resolve_binaries(binaries.KUBERNETES_VERSION)
    assert default.etcd == Path(f"/cache/etcd/{binaries.DEFAULT_VERSIONS['etcd']}") == Path("/cache/etcd/v3.6.5")


@pytest.mark.parametrize("minor", [k.version for k in MATRIX.kubernetes])
def test_each_local_group_runs_its_own_minors_build(minor: str) -> None:
    factory = LocalProviderFactory(MATRIX)
    build = MATRIX.k8s(minor).build
    assert factory.build_of(minor) == build
    assert factory.plan(f"kserve-v0.20.0--k8s-{minor}", minor)[0].startswith(f"start etcd + kube-apiserver {build} ")
    # An explicit version wins for every group (a control plane the user built).
    assert LocalProviderFactory(MATRIX, kubernetes_version="v1.34.4").build_of(minor) == "v1.34.4"


def test_kind_plans_each_minors_node_image_and_kubectl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("plan() must not run anything"))
    offline = KindProviderFactory(MATRIX, KindOptions(local_images=True)).plan("kserve-v0.20.0--k8s-1.36", "1.36")
    text = "\n".join(offline)
    assert "kubectl v1.36.3 built from their Go modules" in text
    assert "node image kserve-compat/kind-node:v1.36.3 built from source when missing" in text
    assert "a published one (none is pinned)" in text
    online = "\n".join(KindProviderFactory(MATRIX).plan("kserve-v0.20.0--k8s-1.36", "1.36"))
    assert "no published kind node image is pinned for Kubernetes 1.36: boot kserve-compat/kind-node:v1.36.3" in online
    assert "node image kserve-compat/kind-node:v1.36.3" in online
    pinned = "\n".join(KindProviderFactory(MATRIX).plan("kserve-v0.20.0--k8s-1.34", "1.34"))
    assert "node image kindest/node:v1.34.8" in pinned


@pytest.mark.parametrize(
    ("version", "refuses"),
    [("v1.34.4", False), ("1.34", False), ("v1.35.4", True), ("1.36", True), ("v1.37.2", True), ("bad", False)],
)
def test_the_kubelet_refuses_cgroup_v1_from_1_35(version: str, refuses: bool) -> None:
    # What k8s.io/kubernetes pkg/kubelet/apis/config/v1beta1/defaults.go sets: FailCgroupV1
    # false up to v1.34.4, true from v1.35.4 (read from the modules; see the kind tier's note).
    assert kind_tier.kubelet_refuses_cgroup_v1(version) is refuses


def test_a_cgroup_v1_engine_gets_the_kubelet_allowance_as_a_deviation() -> None:
    config = kind_tier.cluster_config("kserve-compat/kind-node:v1.35.4", allow_cgroup_v1=True)
    assert config["kubeadmConfigPatches"] == ["kind: KubeletConfiguration\nfailCgroupV1: false\n"]
    assert "kubeadmConfigPatches" not in kind_tier.cluster_config("kserve-compat/kind-node:v1.34.4")
    deviation = kind_tier.allow_cgroup_v1_deviation("v1.35.4")
    assert deviation.startswith("kubelet failCgroupV1: false: this Docker engine runs cgroup v1")
