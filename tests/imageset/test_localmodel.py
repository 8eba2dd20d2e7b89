"""KServe's local model controller (v0.14 on): its binary recipe, its image, and its planning.

Release manifests from v0.14 run ``kserve-localmodel-controller-manager`` (image
``kserve/kserve-localmodel-controller:<version>``, built from the release's
``cmd/localmodel``). The unit tests use the stand-in world of ``helpers.imageset_world``;
the integration test builds the real image from the real binary with a Docker engine
(skipped without one, failing with ``CI=true``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from helpers.imageset_world import (
    FakeWorld,
    by_reference,
    docker_run,
    release_manifest,
    require_docker_engine,
)
from helpers.release_files import SessionReleaseFiles

from e2e import binaries
from e2e.availability import unavailable
from e2e.errors import EnvironmentMissing, UsageError
from e2e.imageset import components
from e2e.manifests import ManifestLock, ReleaseFiles, ReleaseManifest
from e2e.matrix import load_matrix

MANAGER, LOCALMODEL = binaries.KSERVE_MANAGER, binaries.KSERVE_LOCALMODEL
LOCALMODEL_COMMAND = next(c for c in components.RELEASE_COMMANDS if c.binary == LOCALMODEL)


def localmodel_deployment(image: str, name: str = "kserve-localmodel-controller-manager") -> str:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "kserve"},
        "spec": {"template": {"spec": {"containers": [{"name": "manager", "image": image, "command": ["/manager"]}]}}},
    }
    return yaml.safe_dump(deployment)


@pytest.fixture()
def localmodel_files(tmp_path: Path) -> ReleaseFiles:
    """v0.14.0 runs the local model controller (under a reference of its own); v0.13.1 does not;
    v0.16.0 runs it and the LLMInferenceService controller."""
    directory = tmp_path / "lm-manifests"
    for version, extra in (
        ("v0.13.1", ""),
        ("v0.14.0", "---\n" + localmodel_deployment("example.org/kserve/localmodel:v0.14.0-custom")),
        (
            "v0.16.0",
            "---\n"
            + localmodel_deployment("kserve/kserve-localmodel-controller:v0.16.0")
            + "---\n"
            + localmodel_deployment("kserve/llmisvc-controller:v0.16.0", name="llmisvc-controller-manager"),
        ),
    ):
        path = directory / "kserve" / version / "kserve.yaml"
        path.parent.mkdir(parents=True)
        proxy = "quay.io/brancz/kube-rbac-proxy:v0.18.0"
        path.write_text(release_manifest(version, f"kserve/kserve-controller:{version}", proxy) + extra)
    return ReleaseFiles(offline_dir=directory, lock=ManifestLock(tmp_path / "lock.json"))


# ---------------------------------------------------------------------------- the binary


def test_the_localmodel_recipe_builds_cmd_localmodel_of_the_release_module() -> None:
    rec = binaries.recipe(LOCALMODEL, "v0.14.0")
    assert (rec.module, rec.package, rec.style, rec.ldflags) == (
        "github.com/kserve/kserve",
        "github.com/kserve/kserve/cmd/localmodel",
        "source",
        (),
    )
    assert LOCALMODEL in binaries.IMAGE_COMPONENTS and LOCALMODEL in binaries.VERSIONED_COMPONENTS
    assert binaries.env_var(LOCALMODEL, "v0.14.0") == "KSERVE_COMPAT_KSERVE_LOCALMODEL_V0_14_0"
    assert binaries.bin_dir_name(LOCALMODEL, "v0.20.0") == "kserve-localmodel-v0.20.0"
    assert binaries.DEFAULT_VERSIONS[LOCALMODEL] == binaries.DEFAULT_VERSIONS[MANAGER]


def test_a_release_before_localmodel_is_one_line() -> None:
    with pytest.raises(UsageError) as caught:
        binaries.recipe(LOCALMODEL, "v0.13.1")
    assert str(caught.value) == "kserve-localmodel v0.13.1: KServe has cmd/localmodel from v0.14.0 on"


@pytest.fixture()
def build_recorder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """binaries' builds replaced: each go build's components are recorded; nothing is built."""
    groups: list[list[str]] = []
    monkeypatch.setenv("KSERVE_COMPAT_CACHE", str(tmp_path / "cache"))
    for name in list(os.environ):
        if name.startswith("KSERVE_COMPAT_KSERVE_") or name == "KSERVE_COMPAT_BIN_DIR":
            monkeypatch.delenv(name)

    def build_missing(recipes: Sequence[binaries.Recipe]) -> dict[str, Path]:
        groups.append([r.component for r in recipes])
        return {r.component: tmp_path / r.component for r in recipes}

    monkeypatch.setattr(binaries, "_build_missing", build_missing)
    monkeypatch.setattr(binaries, "go_binary", lambda: "/usr/bin/true")
    return groups


def test_ensure_all_builds_the_manager_and_localmodel_of_a_release_in_one_go_build(
    build_recorder: list[list[str]],
) -> None:
    summary = binaries.ensure_all([MANAGER, LOCALMODEL])
    assert build_recorder == [[MANAGER, LOCALMODEL]]
    assert {(r.component, r.version, r.status) for r in summary.results} == {
        (MANAGER, "v0.20.0", "built"),
        (LOCALMODEL, "v0.20.0", "built"),
    }


def test_ensure_together_builds_only_what_is_missing_in_one_go_build(
    build_recorder: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(binaries.ensure_together([MANAGER, LOCALMODEL], "v0.14.0")) == {MANAGER, LOCALMODEL}
    manager = tmp_path / "kserve-manager-v0.14.0"
    manager.write_text("#!/bin/sh\n")
    manager.chmod(0o755)
    monkeypatch.setenv(binaries.env_var(MANAGER, "v0.14.0"), str(manager))
    found = binaries.ensure_together([MANAGER, LOCALMODEL], "v0.14.0")
    assert found[MANAGER] == manager
    assert build_recorder == [[MANAGER, LOCALMODEL], [LOCALMODEL]]


def test_ensure_together_refuses_commands_of_different_modules(build_recorder: list[list[str]]) -> None:
    with pytest.raises(UsageError, match=r"^built together: kserve-manager .*expected commands of one module version$"):
        binaries.ensure_together([MANAGER, "helm"], "v0.14.0")
    assert build_recorder == []


# ---------------------------------------------------------------------------- the image


def test_the_localmodel_image_has_the_layout_of_its_dockerfile(tmp_path: Path) -> None:
    binary = tmp_path / "localmodel"
    binary.write_bytes(b"binary")
    third_party = tmp_path / "third_party"
    (third_party / "library").mkdir(parents=True)
    (third_party / "library" / "LICENSE").write_text("license")
    reference = "kserve/kserve-localmodel-controller:v0.14.0"
    recipe, content = components.command_image(LOCALMODEL_COMMAND, "v0.14.0", reference, binary, third_party)
    assert recipe.references == (reference,)
    assert content.entrypoint == ("/manager",)
    assert content.user == "65532"
    assert content.files["manager"] == binary
    assert "third_party/library/LICENSE" in content.files
    assert recipe.inputs["component"] == "kserve-localmodel-controller"
    controller, _ = components.controller_image("v0.14.0", "kserve/kserve-controller:v0.14.0", binary, third_party)
    assert controller.inputs["component"] == "kserve-controller"  # the controller's recipe is unchanged


def test_the_reference_is_read_from_the_release_manifest(release_files: SessionReleaseFiles) -> None:
    matrix = load_matrix()
    for version, expected in (("v0.14.0", "kserve/kserve-localmodel-controller:v0.14.0"), ("v0.12.1", None)):
        release = matrix.release(version)
        text = release_files.kserve(version)
        manifest = ReleaseManifest.parse(text, source=version, profile=release.profile)
        assert components.deployment_image(manifest, components.LOCALMODEL_DEPLOYMENT) == expected


def test_a_localmodel_image_is_planned_only_for_a_release_that_runs_it(
    world: FakeWorld,
    localmodel_files: ReleaseFiles,
) -> None:
    images = components.required_images(["v0.13.1", "v0.14.0"], ["quay-v0.18.0"], ["1.34"], files=localmodel_files)
    planned = [i for i in images if i.component == components.KSERVE_LOCALMODEL_CONTROLLER]
    assert [(i.reference, i.version, i.status) for i in planned] == [
        ("example.org/kserve/localmodel:v0.14.0-custom", "v0.14.0", "missing")
    ]


def test_a_refused_release_makes_its_localmodel_image_unavailable_with_the_reason(
    world: FakeWorld,
    localmodel_files: ReleaseFiles,
) -> None:
    world.unavailable_binaries[(LOCALMODEL, "v0.14.0")] = "github.com/kserve/kserve@v0.14.0: 403"
    found = by_reference(components.required_images(["v0.14.0"], ["quay-v0.18.0"], ["1.34"], files=localmodel_files))
    image = found["example.org/kserve/localmodel:v0.14.0-custom"]
    assert (image.status, image.detail) == ("unavailable", "github.com/kserve/kserve@v0.14.0: 403")


@pytest.fixture()
def together(world: FakeWorld, monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[str, ...], str]]:
    """What ``binaries.ensure_together`` was asked for: (commands, version), one per go build."""
    asked: list[tuple[tuple[str, ...], str]] = []

    def ensure_together(names: Sequence[str], version: str) -> dict[str, Path]:
        asked.append((tuple(names), version))
        return {name: world.built_binaries.get((name, version)) or world.binary(name, version) for name in names}

    monkeypatch.setattr(binaries, "ensure_together", ensure_together)
    return asked


def test_the_controller_and_localmodel_binaries_come_from_one_build(
    world: FakeWorld,
    localmodel_files: ReleaseFiles,
    together: list[tuple[tuple[str, ...], str]],
) -> None:
    results = by_reference(
        components.ensure_images(["v0.13.1", "v0.14.0"], ["quay-v0.18.0"], ["1.34"], files=localmodel_files)
    )
    assert results["kserve/kserve-controller:v0.14.0"].status == "built"
    assert results["example.org/kserve/localmodel:v0.14.0-custom"].status == "built"
    assert "example.org/kserve/localmodel:v0.14.0-custom" in world.imported
    # v0.14.0's two commands are asked for together; v0.13.1 has no local model controller.
    assert together[0] == ((MANAGER, LOCALMODEL), "v0.14.0")
    assert all(version == "v0.14.0" for _, version in together)


def test_the_llmisvc_image_is_read_from_the_release_manifest(release_files: SessionReleaseFiles) -> None:
    matrix = load_matrix()
    for version, expected in (("v0.16.0", "kserve/llmisvc-controller:v0.16.0"), ("v0.14.0", None)):
        release = matrix.release(version)
        manifest = ReleaseManifest.parse(release_files.kserve(version), source=version, profile=release.profile)
        assert components.deployment_image(manifest, components.LLMISVC_DEPLOYMENT) == expected


def test_every_command_a_release_runs_comes_from_its_one_build(
    world: FakeWorld,
    localmodel_files: ReleaseFiles,
    together: list[tuple[tuple[str, ...], str]],
) -> None:
    results = by_reference(components.ensure_images(["v0.16.0"], ["quay-v0.18.0"], ["1.34"], files=localmodel_files))
    llmisvc = results["kserve/llmisvc-controller:v0.16.0"]
    assert (llmisvc.component, llmisvc.status) == (components.KSERVE_LLMISVC_CONTROLLER, "built")
    assert results["kserve/kserve-localmodel-controller:v0.16.0"].status == "built"
    assert {names for names, _ in together} == {(MANAGER, LOCALMODEL, binaries.KSERVE_LLMISVC)}


# ---------------------------------------------------------------------------- real


@pytest.mark.parametrize("version", ["v0.14.0", "v0.20.0"])
def test_a_real_localmodel_image_runs_its_binary(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(binaries.ENV_FROM_IMAGE, raising=False)
    require_docker_engine()
    try:
        binary = binaries.ensure_together([MANAGER, LOCALMODEL], version)[LOCALMODEL]
    except EnvironmentMissing as exc:
        unavailable(str(exc))
    module = binaries.cached_module_dir(binaries.KSERVE_MODULE, version)
    third_party = module / "third_party" if module else None
    reference = f"kserve/kserve-localmodel-controller:{version}"
    built = components.build_image(
        *components.command_image(LOCALMODEL_COMMAND, version, reference, binary, third_party)
    )
    result = docker_run(built, "--help")
    assert "-leader-elect" in result.stdout + result.stderr
    inspected = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Config.User}} {{json .Config.Entrypoint}}", reference],
        capture_output=True,
        text=True,
        check=True,
    )
    assert inspected.stdout.strip() == '65532 ["/manager"]'


def test_a_real_llmisvc_image_runs_its_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(binaries.ENV_FROM_IMAGE, raising=False)
    require_docker_engine()
    try:
        binary = binaries.ensure(binaries.KSERVE_LLMISVC, "v0.16.0")
    except EnvironmentMissing as exc:
        unavailable(str(exc))
    command = next(c for c in components.RELEASE_COMMANDS if c.binary == binaries.KSERVE_LLMISVC)
    reference = "kserve/llmisvc-controller:v0.16.0"
    built = components.build_image(*components.command_image(command, "v0.16.0", reference, binary, None))
    result = docker_run(built, "--help")
    assert "-metrics-addr" in result.stdout + result.stderr
