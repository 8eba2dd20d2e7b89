"""A kind node left with a frozen cgroup (cgroup v1) is thawed so that it can be deleted.

Seen on our machines: Ctrl-C during a cell tore the node down while its kubelet started a
pod; that pod's cgroup stayed FROZEN, its ``runc init`` could not be killed, and ``docker rm
-f`` of the node failed ("did not receive an exit event") until the cgroup was thawed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from e2e.cluster import cgroup_freezer
from e2e.cluster.kind import KindCluster, KindOptions, ToolPaths, cluster_name

CONTAINER = "049dbbc5017704018625d63dca38735b7b146b0cbf0a145829140c1f11dc9967"


def _cgroup(root: Path, relative: str, state: str) -> Path:
    directory = root / relative
    directory.mkdir(parents=True)
    (directory / "freezer.state").write_text(state + "\n")
    return directory


def test_every_frozen_cgroup_of_the_container_is_thawed_and_no_other(tmp_path: Path) -> None:
    own = _cgroup(tmp_path, f"docker/{CONTAINER}", "THAWED")
    pod = _cgroup(tmp_path, f"docker/{CONTAINER}/kubelet.slice/pod-a.slice/cri-containerd-1.scope", "FROZEN")
    freezing = _cgroup(tmp_path, f"docker/{CONTAINER}/kubelet.slice/pod-b.slice", "FREEZING")
    other = _cgroup(tmp_path, "docker/another-container", "FROZEN")
    assert cgroup_freezer.thaw(CONTAINER, tmp_path) == sorted([pod, freezing])
    assert (pod / "freezer.state").read_text() == "THAWED"
    assert (freezing / "freezer.state").read_text() == "THAWED"
    assert (own / "freezer.state").read_text() == "THAWED\n"  # untouched
    assert (other / "freezer.state").read_text() == "FROZEN\n"  # not this container's


def test_the_systemd_driver_layout_is_found_and_cgroup_v2_has_nothing_to_thaw(tmp_path: Path) -> None:
    scope = _cgroup(tmp_path, f"system.slice/docker-{CONTAINER}.scope", "FROZEN")
    assert cgroup_freezer.thaw(CONTAINER, tmp_path) == [scope]
    assert cgroup_freezer.thaw(CONTAINER, tmp_path / "no-freezer-hierarchy") == []


class _Kind:
    """pytest-kind's cluster: its delete fails ``failures`` times (the engine cannot kill the node)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.deletes = 0

    def delete(self) -> None:
        self.deletes += 1
        if self.deletes <= self.failures:
            raise subprocess.CalledProcessError(1, ["kind", "delete", "cluster"])


def _cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: _Kind, frozen: list[Path]) -> KindCluster:
    monkeypatch.chdir(tmp_path)
    tools = ToolPaths(kind=tmp_path / "kind", kubectl=tmp_path / "kubectl", downloaded=False)
    cluster = KindCluster(cluster_name("kserve-v0.14.1--k8s-1.34"), "node:v1", "1.34", KindOptions(), tools)
    monkeypatch.setattr(cluster, "_kind", kind)
    monkeypatch.setattr(cluster, "_created", True)  # a running cluster: its node froze mid-pod-start
    monkeypatch.setattr(cluster, "_node_container_ids", lambda: [CONTAINER])
    monkeypatch.setattr(cgroup_freezer, "thaw", lambda container: frozen if container == CONTAINER else [])
    return cluster


def test_a_node_that_cannot_be_killed_is_thawed_and_deleted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kind = _Kind(failures=1)
    cluster = _cluster(tmp_path, monkeypatch, kind, [tmp_path / "pod-cgroup"])
    cluster.delete()
    assert kind.deletes == 2
    assert "1 cgroup(s) inside it were left frozen (cgroup v1 freezer); thawed them, deleting again" in caplog.text


def test_without_a_frozen_cgroup_the_delete_error_is_the_engines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind = _Kind(failures=1)
    cluster = _cluster(tmp_path, monkeypatch, kind, [])
    with pytest.raises(subprocess.CalledProcessError):
        cluster.delete()
    assert kind.deletes == 1
