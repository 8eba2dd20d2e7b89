"""The image set's stand-in world: binaries' status, the Docker engine and the node image
builder replaced by recorders, and an offline manifest directory written here. Used by the
unit tests of e2e/imageset/ (their fixtures are in tests/imageset/conftest.py); the real
builds use ``require_docker_engine``, ``require_binary`` and ``docker_run``.
"""

from __future__ import annotations

import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from e2e import binaries
from e2e.availability import unavailable
from e2e.errors import EnvironmentMissing
from e2e.imageset import components
from e2e.imageset import docker_image as docker_image_module
from e2e.manifests import ManifestLock, ReleaseFiles


def release_manifest(version: str, controller: str, proxy: str) -> str:
    """The part of a KServe release manifest the image set reads: the controller Deployment."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "kserve-controller-manager", "namespace": "kserve"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "manager", "image": controller, "command": ["/manager"]},
                        {"name": "kube-rbac-proxy", "image": proxy, "args": ["--secure-listen-address=0.0.0.0:8443"]},
                    ]
                }
            }
        },
    }
    return yaml.safe_dump(deployment)


def write_manifest_files(tmp_path: Path) -> ReleaseFiles:
    """An offline manifest directory with two releases (one ships the retired proxy image)."""
    directory = tmp_path / "manifests"
    for version, proxy in (
        ("v0.13.1", "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"),
        ("v0.14.0", "quay.io/brancz/kube-rbac-proxy:v0.18.0"),
        ("v0.18.0", "quay.io/brancz/kube-rbac-proxy:v0.18.0"),
        ("v0.20.0", "quay.io/brancz/kube-rbac-proxy:v0.18.0"),
    ):
        path = directory / "kserve" / version / "kserve.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(release_manifest(version, f"kserve/kserve-controller:{version}", proxy))
    return ReleaseFiles(offline_dir=directory, lock=ManifestLock(tmp_path / "lock.json"))


@dataclass
class FakeNodeImage:
    reference: str
    kubernetes_version: str


@dataclass
class FakeWorld:
    """What the stand-ins answer, and what was asked of them."""

    tmp: Path
    built_binaries: dict[tuple[str, str], Path]
    unavailable_binaries: dict[tuple[str, str], str]
    current_images: set[str]
    imported: list[str]
    node_built: list[str]
    node_status: str = "missing"
    engine: str | None = None
    fail_build: dict[str, Exception] | None = None

    def binary(self, component: str, version: str) -> Path:
        path = self.tmp / "bin" / component / version / component
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{component} {version}\n".encode())
        path.chmod(0o755)
        self.built_binaries[(component, version)] = path
        return path


def install_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeWorld:
    """binaries, docker and the node image builder replaced by recorders."""
    state = FakeWorld(tmp_path, {}, {}, set(), [], [])
    monkeypatch.setenv("KSERVE_COMPAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(binaries.ENV_FROM_IMAGE, raising=False)

    def status(component: str, version: str | None = None) -> binaries.BinaryResult:
        key = (component, version or binaries.DEFAULT_VERSIONS[component])
        if key in state.built_binaries:
            return binaries.BinaryResult(key[0], key[1], "built", state.built_binaries[key])
        if key in state.unavailable_binaries:
            return binaries.BinaryResult(key[0], key[1], "unavailable", None, state.unavailable_binaries[key])
        return binaries.BinaryResult(key[0], key[1], "missing", None)

    def ensure(component: str, version: str | None = None, *, build: bool = True) -> Path:
        key = (component, version or binaries.DEFAULT_VERSIONS[component])
        if key in state.unavailable_binaries:
            raise binaries.BuildUnavailable(state.unavailable_binaries[key])
        return state.built_binaries.get(key) or state.binary(*key)

    def build_image(recipe: docker_image_module.ImageRecipe, content: docker_image_module.ImageContent) -> str:
        failure = (state.fail_build or {}).get(recipe.name)
        if failure:
            raise failure
        state.imported.append(recipe.name)
        state.current_images.update(recipe.references)
        return recipe.name

    def is_current(recipe: docker_image_module.ImageRecipe) -> bool:
        return all(reference in state.current_images for reference in recipe.references)

    def build_node_image(kubernetes_version: str) -> FakeNodeImage:
        state.node_built.append(kubernetes_version)
        return FakeNodeImage(f"kserve-compat/kind-node:{kubernetes_version}", kubernetes_version)

    node = types.ModuleType("e2e.imageset.node")
    node.node_kubernetes_version = lambda minor: {"1.33": "v1.33.8", "1.34": "v1.34.4"}[minor]  # type: ignore[attr-defined]
    node.node_image_status = lambda version: (state.node_status, "")  # type: ignore[attr-defined]
    node.build_node_image = build_node_image  # type: ignore[attr-defined]
    node.node_reference = lambda version: f"kserve-compat/kind-node:{version}"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "e2e.imageset.node", node)
    monkeypatch.setattr(binaries, "status", status)
    monkeypatch.setattr(binaries, "ensure", ensure)
    monkeypatch.setattr(binaries, "docker_engine_unreachable_reason", lambda: state.engine)
    monkeypatch.setattr(components, "build_image", build_image)
    monkeypatch.setattr(components, "is_current", is_current)
    monkeypatch.setattr(binaries, "cached_module_dir", lambda module, version: None)
    monkeypatch.setattr(binaries, "module_dir", lambda module, version: tmp_path / "no-module")
    monkeypatch.setattr(components, "cert_manager_manifest_status", lambda version: ("built", ""))
    return state


def by_reference(images: list[components.PlannedImage]) -> dict[str, components.PlannedImage]:
    return {image.reference: image for image in images}


def require_docker_engine() -> None:
    reason = binaries.docker_engine_unreachable_reason()
    if reason:
        unavailable(f"the image set is built with a Docker engine: {reason}")


def require_binary(component: str, version: str | None = None) -> Path:
    """The real binary, built if go is here (minutes the first time)."""
    try:
        return binaries.ensure(component, version)
    except EnvironmentMissing as exc:
        unavailable(str(exc))


def docker_run(image: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "run", "--rm", image, *args], capture_output=True, text=True, timeout=120, check=False
    )
