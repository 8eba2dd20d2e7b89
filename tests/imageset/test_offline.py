"""The kind tier on the local image set (``--local-images``): the decisions, without Docker.

Docker is played by a small script that knows a fixed set of images; the release documents
are the real manifests (through the harness's resolver).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.release_files import SessionReleaseFiles

from e2e.cluster.kind import cluster_config
from e2e.errors import WorkloadUnavailable
from e2e.imageset import offline
from e2e.manifests import ReleaseFile, container_images, load_yaml_documents, serving_images

PRESENT = ("quay.io/brancz/kube-rbac-proxy:v0.18.0", "kserve/kserve-controller:v0.14.0")


@pytest.fixture
def fake_docker(tmp_path: Path) -> str:
    """A `docker` that holds exactly ``PRESENT`` (``image inspect`` answers 0 for those)."""
    script = tmp_path / "docker"
    known = " ".join(f'"{image}"' for image in PRESENT)
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2" = "image inspect" ] || exit 64\n'
        "for last; do :; done\n"
        f'for image in {known}; do [ "$last" = "$image" ] && echo sha256:0 && exit 0; done\n'
        'echo "Error: No such image: $last" >&2; exit 1\n'
    )
    script.chmod(0o755)
    return str(script)


def deployment(containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": containers}
    if init:
        spec["initContainers"] = init
    return {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": spec}}}


def test_a_loaded_image_is_loaded_a_retired_one_left_to_the_kubelet_anything_else_skips(fake_docker: str) -> None:
    image_set = offline.LocalImageSet(fake_docker)
    assert image_set.check_loadable("quay.io/brancz/kube-rbac-proxy:v0.18.0") is True
    # gcr.io/kubebuilder is never built: the kubelet's real pull error is the cell's evidence
    assert image_set.check_loadable("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1") is False
    with pytest.raises(WorkloadUnavailable) as raised:
        image_set.check_loadable("quay.io/brancz/kube-rbac-proxy:v0.13.1")
    message = str(raised.value)
    assert message.startswith("quay.io/brancz/kube-rbac-proxy:v0.13.1: not in the local image set")
    assert "kserve-compat images list" in message and "\n" not in message


def test_missing_lists_what_the_engine_lacks_in_order(fake_docker: str) -> None:
    image_set = offline.LocalImageSet(fake_docker)
    wanted = ["kserve/sklearnserver:v0.14.0", *PRESENT, "kserve/storage-initializer:v0.14.0"]
    assert image_set.missing(wanted) == ["kserve/sklearnserver:v0.14.0", "kserve/storage-initializer:v0.14.0"]


def test_container_images_lists_workload_images_once_in_order() -> None:
    documents = [
        deployment(
            [{"name": "a", "image": "one:1"}, {"name": "b", "image": "two:2"}], init=[{"name": "i", "image": "zero:0"}]
        ),
        {"kind": "DaemonSet", "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "one:1"}]}}}},
        {"kind": "Service", "spec": {"containers": [{"image": "not-a-workload:1"}]}},
    ]
    assert container_images(documents) == ["zero:0", "one:1", "two:2"]


def test_serving_images_of_a_real_release_are_the_sklearn_server_and_the_storage_initializer(
    release_files: SessionReleaseFiles,
) -> None:
    text = release_files.read(ReleaseFile("kserve", "v0.14.0", "kserve-cluster-resources.yaml")).decode()
    assert serving_images(load_yaml_documents(text)) == [
        "kserve/sklearnserver:v0.14.0",
        "kserve/storage-initializer:v0.14.0",
    ]


def test_the_switch_is_the_option_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(offline.ENV_LOCAL_IMAGES, raising=False)
    assert not offline.local_images_requested()
    assert offline.local_images_requested(True)
    monkeypatch.setenv(offline.ENV_LOCAL_IMAGES, "1")
    assert offline.local_images_requested()
    monkeypatch.setenv(offline.ENV_LOCAL_IMAGES, "yes")  # only 1 switches it on
    assert not offline.local_images_requested()


def test_the_kind_config_carries_what_a_node_image_built_here_needs() -> None:
    plain = cluster_config("kindest/node:v1.34.8")
    assert "networking" not in plain
    config = cluster_config("kserve-compat/kind-node:v1.34.4", {"disableDefaultCNI": True})
    assert config["networking"] == {"disableDefaultCNI": True}
    assert config["nodes"] == [{"role": "control-plane", "image": "kserve-compat/kind-node:v1.34.4"}]
    yaml.safe_dump(config)  # what is written to the kind config file


class RecordingImageSet(offline.LocalImageSet):
    """The image set of a fake engine that holds ``present``; records what is loaded."""

    def __init__(self, present: set[str]) -> None:
        super().__init__("docker")
        self.present = present

    def missing(self, images: Any) -> list[str]:
        return [image for image in images if image not in self.present]


def test_the_install_loads_the_release_images_built_here_and_notes_the_rest(
    release_files: SessionReleaseFiles,
) -> None:
    from types import SimpleNamespace

    from e2e.imageset import release_install
    from e2e.matrix import load_matrix

    release = load_matrix().release("v0.14.0")
    documents = load_yaml_documents(release_files.read(ReleaseFile("kserve", "v0.14.0", "kserve.yaml")).decode())
    before = copy.deepcopy(documents)
    loaded: list[str] = []
    provider: Any = SimpleNamespace(load_images=lambda images: loaded.extend(images))
    image_set = RecordingImageSet({"kserve/kserve-controller:v0.14.0"})
    notes = release_install.make_pullable(image_set, provider, release, documents)
    # the controller's manager image, never the proxy's (the cell's swap loads that one)
    assert loaded == ["kserve/kserve-controller:v0.14.0"]
    assert any("kserve/kserve-localmodel-controller:v0.14.0" in note for note in notes)
    # The kubelet pulls from the nodes' mirrors with the release's own pull policy: the
    # documents are applied as the release wrote them.
    assert documents == before
    policies = {c.get("imagePullPolicy") for d in documents if d.get("kind") == "Deployment"
                for c in d["spec"]["template"]["spec"]["containers"]}
    assert "Always" in policies
