"""A group whose release cannot run here is skipped before any cluster is made.

On the local image set, a release whose controller the Go module proxy refuses to build
(v0.10.1, v0.13.0-rc0, v0.18.0 on 2026-12-07) used to cost a kind cluster, cert-manager and
a Prometheus before its install said so; a whole grid pays that once per such group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.kind import KindOptions, KindProviderFactory
from e2e.cluster.provider import ClusterProvider, ProviderFactory
from e2e.errors import HarnessError
from e2e.imageset import release_install
from e2e.install import CellSkipped
from e2e.matrix import KServeRelease, Selection, load_matrix
from e2e.run import Harness, HarnessOptions, RunPlan

REFUSED = "v0.10.1"
BUILT = "v0.12.1"


class Recorder(ProviderFactory):
    """Refuses REFUSED's release; records which groups a cluster was asked for."""

    name = "recorder"

    def __init__(self, broken: bool = False) -> None:
        self.asked: list[str] = []
        self.broken = broken  # the question itself fails (e.g. Docker went away)

    @contextlib.contextmanager
    def cluster(self, group_id: str, kubernetes_version: str) -> Iterator[ClusterProvider]:
        self.asked.append(group_id)
        raise HarnessError("no cluster in this test")
        yield  # pragma: no cover - a generator for contextmanager

    def plan(self, group_id: str, kubernetes_version: str) -> list[str]:
        return []

    def why_release_cannot_run(self, release: KServeRelease, documents: Sequence[dict[str, Any]]) -> str:
        assert any(doc.get("kind") == "Deployment" for doc in documents)  # the release's own manifest
        if self.broken:
            raise HarnessError("docker image inspect: the engine did not answer")
        return f"kserve/kserve-controller:{release.version}: refused" if release.version == REFUSED else ""


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    selection = Selection.from_options(kserve=f"{REFUSED},{BUILT}", proxy="quay-v0.22.1", k8s="1.34")
    made = Harness(RunPlan.resolve(HarnessOptions(reports_dir=tmp_path, selection=selection)), Recorder())
    yield made
    made.close()


def test_the_cells_of_a_release_that_cannot_run_skip_with_the_reason_and_no_cluster(harness: Harness) -> None:
    cell = load_matrix().cell(f"kserve-{REFUSED}--quay-v0.22.1--k8s-1.34")
    with pytest.raises(CellSkipped, match=f"kserve/kserve-controller:{REFUSED}: refused"):
        harness.cluster_for(cell)
    with pytest.raises(CellSkipped):  # asked once, remembered for the group's other cells
        harness.cluster_for(cell)
    harness._preparer.shutdown(wait=True)  # the next group's preparation, started by the skip
    factory = harness.factory
    assert isinstance(factory, Recorder)
    assert factory.asked == [f"kserve-{BUILT}--k8s-1.34"]


def test_preparing_ahead_passes_over_a_group_that_cannot_run(harness: Harness) -> None:
    harness.prepare_first()
    harness._preparer.shutdown(wait=True)
    factory = harness.factory
    assert isinstance(factory, Recorder)
    assert factory.asked == [f"kserve-{BUILT}--k8s-1.34"]


def clusters_asked_at_start(tmp_path: Path, order: list[str] | None = None, prepare_ahead: int = 2) -> list[str]:
    """The groups whose clusters a run of three runnable groups starts preparing."""
    selection = Selection.from_options(kserve="v0.12.1,v0.14.0,v0.16.0", proxy="quay-v0.22.1", k8s="1.34")
    options = HarnessOptions(reports_dir=tmp_path, selection=selection, prepare_ahead=prepare_ahead)
    made = Harness(RunPlan.resolve(options), Recorder())
    if order is not None:
        made.group_order = order
    try:
        made.prepare_first()
        made._preparer.shutdown(wait=True)
    finally:
        made.close()
    factory = made.factory
    assert isinstance(factory, Recorder)
    return factory.asked


def test_preparing_ahead_follows_the_collected_order_only(tmp_path: Path) -> None:
    """The plugin orders only groups with collected tests (-k may leave some out): no
    cluster is made for a group that no test uses."""
    asked = clusters_asked_at_start(tmp_path, order=["kserve-v0.16.0--k8s-1.34"])
    assert asked == ["kserve-v0.16.0--k8s-1.34"]


def test_when_the_question_fails_the_group_is_tried_and_its_install_says_why(tmp_path: Path) -> None:
    selection = Selection.from_options(kserve=REFUSED, proxy="quay-v0.22.1", k8s="1.34")
    made = Harness(RunPlan.resolve(HarnessOptions(reports_dir=tmp_path, selection=selection)), Recorder(broken=True))
    try:
        assert made.why_group_cannot_run(made.groups[0]) == ""
        with pytest.raises(HarnessError, match="no cluster in this test"):
            made.cluster_for(made.groups[0].cells[0])
    finally:
        made.close()


class ImageSet:
    def __init__(self, present: set[str]) -> None:
        self.present = present

    def missing(self, images: Sequence[str]) -> list[str]:
        return [image for image in images if image not in self.present]


def controller_deployment(manager: str, proxy: str) -> dict[str, Any]:
    containers = [{"name": "manager", "image": manager}, {"name": "kube-rbac-proxy", "image": proxy}]
    return {
        "kind": "Deployment",
        "metadata": {"name": "kserve-controller-manager", "namespace": "kserve"},
        "spec": {"template": {"spec": {"containers": containers}}},
    }


def test_kind_asks_the_image_set_only_on_the_local_image_set() -> None:
    release = load_matrix().release(REFUSED)
    documents = [controller_deployment(f"kserve/kserve-controller:{REFUSED}", "quay.io/brancz/kube-rbac-proxy:v0.22.1")]
    online = KindProviderFactory(load_matrix(), KindOptions(local_images=False))
    assert online.why_release_cannot_run(release, documents) == ""  # the kubelet's pull decides


def test_an_image_of_the_users_own_registry_is_not_asked_of_the_image_set() -> None:
    release = load_matrix().release("v0.13.1")
    documents = [controller_deployment("kserve/kserve-controller:v0.13.1", "quay.io/brancz/kube-rbac-proxy:v0.22.1")]
    empty = ImageSet(set())
    assert release_install.why_release_cannot_run(empty, release, documents, {"docker.io"}) == ""  # type: ignore[arg-type]


def test_on_the_local_image_set_only_the_controllers_own_image_decides() -> None:
    release = load_matrix().release("v0.13.1")
    documents = [
        controller_deployment("kserve/kserve-controller:v0.13.1", "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1")
    ]
    # The proxy's image comes with each cell's swap (a retired one is never built): not asked.
    assert (
        release_install.why_release_cannot_run(ImageSet({"kserve/kserve-controller:v0.13.1"}), release, documents) == ""
    )  # type: ignore[arg-type]
    reason = release_install.why_release_cannot_run(ImageSet(set()), release, documents)  # type: ignore[arg-type]
    assert reason.startswith("kserve/kserve-controller:v0.13.1: not in the local image set")
    assert "kserve-compat images list" in reason


def test_a_share_prepares_only_as_many_ahead_as_it_was_given(tmp_path: Path) -> None:
    assert clusters_asked_at_start(tmp_path, prepare_ahead=1) == ["kserve-v0.12.1--k8s-1.34"]
