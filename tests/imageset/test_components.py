"""The kind tier's component images: references, recipes, selection, and real builds.

The unit tests run against a stand-in world (binaries' status, the Docker engine, the node
image builder, a release manifest directory written here). The integration tests build the
real images from the real binaries with a Docker engine (skipped without one, failing with
``CI=true``), and run them.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.imageset_world import (
    FakeWorld,
    by_reference,
    docker_run,
    release_manifest,
    require_binary,
    require_docker_engine,
)

from e2e import binaries, cli
from e2e.errors import EnvironmentMissing
from e2e.imageset import components, serving
from e2e.imageset import docker_image as docker_image_module
from e2e.manifests import ManifestLock, ReleaseFiles
from e2e.matrix import load_matrix

REFUSED = (
    "github.com/kserve/kserve@v0.18.0: the Go module proxy does not serve it "
    "(reading https://proxy.golang.org/...: 403 Forbidden)"
)


# ---------------------------------------------------------------------------- references


def matrix_proxy_versions() -> set[str]:
    return {binaries.proxy_version_for_tag(p.image) for p in load_matrix().proxies}


@pytest.mark.parametrize("version", sorted(set(binaries.PROXY_VERSIONS) | matrix_proxy_versions()))
def test_a_proxy_image_is_never_tagged_under_the_retired_registry(version: str) -> None:
    references = components.proxy_references(version)
    assert references[0] == f"quay.io/brancz/kube-rbac-proxy:{version}"
    assert not any(reference.startswith("gcr.io/") for reference in references)
    if version == "v0.13.1":
        assert references[1:] == ("registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1",)
    else:
        assert references[1:] == ()


def test_cert_manager_references_are_the_charts_repositories_at_the_release_version() -> None:
    assert [components.cert_manager_reference(c) for c in components.CERT_MANAGER_IMAGES] == [
        "quay.io/jetstack/cert-manager-controller:v1.11.5",
        "quay.io/jetstack/cert-manager-webhook:v1.11.5",
        "quay.io/jetstack/cert-manager-cainjector:v1.11.5",
    ]


# ---------------------------------------------------------------------------- layouts and recipes


def test_the_proxy_image_has_the_upstream_layout(tmp_path: Path) -> None:
    binary = tmp_path / "kube-rbac-proxy"
    binary.write_bytes(b"proxy")
    recipe, content = components.proxy_image("v0.18.0", binary)
    assert recipe.references == ("quay.io/brancz/kube-rbac-proxy:v0.18.0",)
    assert content.files["usr/local/bin/kube-rbac-proxy"] == binary
    assert content.entrypoint == ("/usr/local/bin/kube-rbac-proxy",)
    assert content.user == "65532:65532"
    assert b"nonroot:x:65532:65532" in content.files["etc/passwd"]  # type: ignore[operator]


def test_the_controller_and_cert_manager_images_have_their_release_layouts(tmp_path: Path) -> None:
    binary = tmp_path / "bin"
    binary.write_bytes(b"x")
    third_party = tmp_path / "third_party" / "library"
    third_party.mkdir(parents=True)
    (third_party / "license.txt").write_text("MIT\n")
    recipe, content = components.controller_image(
        "v0.14.0", "kserve/kserve-controller:v0.14.0", binary, third_party.parent
    )
    assert recipe.references == ("kserve/kserve-controller:v0.14.0",)
    assert content.entrypoint == ("/manager",) and content.files["manager"] == binary
    assert "third_party/library/license.txt" in content.files
    assert content.user == "65532"

    module = tmp_path / "module"
    module.mkdir()
    (module / "LICENSE").write_text("Apache\n")
    (module / "LICENSES").write_text("notices\n")
    recipe, content = components.cert_manager_image("cert-manager-webhook", "v1.11.5", binary, module)
    assert recipe.references == ("quay.io/jetstack/cert-manager-webhook:v1.11.5",)
    assert content.entrypoint == ("/app/cmd/webhook/webhook",)
    assert content.user == "1000"
    assert content.files["licenses/LICENSE"] == module / "LICENSE"


def test_the_recipe_changes_with_the_binary_and_only_then(tmp_path: Path) -> None:
    binary = tmp_path / "kube-rbac-proxy"
    binary.write_bytes(b"build 1")
    first = components.proxy_image("v0.18.0", binary)[0].digest()
    assert components.proxy_image("v0.18.0", binary)[0].digest() == first
    binary.write_bytes(b"build 2")
    assert components.proxy_image("v0.18.0", binary)[0].digest() != first
    assert (
        components.proxy_image("v0.18.2", binary)[0].digest() != components.proxy_image("v0.18.0", binary)[0].digest()
    )


# ---------------------------------------------------------------------------- cert-manager's manifest


def fake_cert_manager_module(root: Path) -> Path:
    chart = root / "deploy" / "charts" / "cert-manager"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.template.yaml").write_text(
        "apiVersion: v1\nname: cert-manager\nversion: v0.1.0\nappVersion: v0.1.0\n"
        'annotations:\n  artifacthub.io/prerelease: "{{IS_PRERELEASE}}"\n'
    )
    (chart / "values.yaml").write_text("installCRDs: false\n")
    (chart / "templates" / "deployment.yaml").write_text("kind: Deployment\n")
    crds = root / "deploy" / "crds"
    crds.mkdir(parents=True)
    (crds / "crd-b.yaml").write_text("kind: CustomResourceDefinition\nmetadata: {name: b}\n")
    (crds / "crd-a.yaml").write_text("kind: CustomResourceDefinition\nmetadata: {name: a}")
    return root


def test_the_chart_gets_its_version_and_its_crds_behind_install_crds(tmp_path: Path) -> None:
    module = fake_cert_manager_module(tmp_path / "module")
    chart = tmp_path / "chart"
    components._write_chart(module, "v1.11.5", chart)
    metadata = yaml.safe_load((chart / "Chart.yaml").read_text())
    assert (metadata["version"], metadata["appVersion"]) == ("v1.11.5", "v1.11.5")
    assert not (chart / "Chart.template.yaml").exists()
    assert (chart / "templates" / "crds.yaml").read_text() == (
        "{{- if .Values.installCRDs }}\n"
        "kind: CustomResourceDefinition\nmetadata: {name: a}\n---\n"
        "kind: CustomResourceDefinition\nmetadata: {name: b}\n"
        "{{- end }}\n"
    )


def test_the_manifest_is_namespace_then_crds_then_the_rest() -> None:
    rendered = (
        "---\n# Source: a.yaml\nkind: ServiceAccount\nmetadata: {name: sa}\n"
        "---\n# Source: crds.yaml\nkind: CustomResourceDefinition\nmetadata: {name: c}\n"
        "---\n# Source: d.yaml\nkind: Deployment\nmetadata: {name: d}\n"
    )
    text = components._assemble_manifest("kind: Namespace\nmetadata: {name: cert-manager}\n", rendered)
    kinds = [document["kind"] for document in yaml.safe_load_all(text)]
    assert kinds == ["Namespace", "CustomResourceDefinition", "ServiceAccount", "Deployment"]


# ---------------------------------------------------------------------------- planning


def test_required_images_of_a_selection(world: FakeWorld, manifest_files: ReleaseFiles) -> None:
    world.binary(binaries.PROXY, "v0.18.0")
    world.current_images.add("quay.io/brancz/kube-rbac-proxy:v0.18.0")
    world.binary(binaries.KSERVE_MANAGER, "v0.14.0")
    world.unavailable_binaries[(binaries.PROXY, "v0.13.1")] = "github.com/brancz/kube-rbac-proxy@v0.13.1: 403"
    world.unavailable_binaries[(binaries.KSERVE_MANAGER, "v0.18.0")] = REFUSED
    images = components.required_images(
        ["v0.13.1", "v0.14.0", "v0.18.0"],
        ["quay-v0.22.1", "k8s-v0.13.1", "gcr-v0.13.1", "quay-v0.18.0"],
        ["1.34"],
        files=manifest_files,
    )
    found = by_reference(images)
    assert found["kserve-compat/kind-node:v1.34.4"].status == "missing"
    retired = found["gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"]
    assert (retired.status, "retired" in retired.detail) == ("unavailable", True)
    frozen = found["quay.io/brancz/kube-rbac-proxy:v0.13.1"]
    assert frozen.also_tagged == ("registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1",)
    assert (frozen.status, frozen.detail) == ("unavailable", "github.com/brancz/kube-rbac-proxy@v0.13.1: 403")
    assert found["quay.io/brancz/kube-rbac-proxy:v0.18.0"].status == "built"
    assert found["quay.io/brancz/kube-rbac-proxy:v0.22.1"].status == "missing"
    assert found["kserve/kserve-controller:v0.14.0"].status == "missing"
    assert (found["kserve/kserve-controller:v0.18.0"].status, found["kserve/kserve-controller:v0.18.0"].detail) == (
        "unavailable",
        REFUSED,
    )
    assert "kserve/kserve-controller:v0.13.1" in found
    assert {"quay.io/jetstack/cert-manager-controller:v1.11.5", "quay.io/jetstack/cert-manager-webhook:v1.11.5"} <= set(
        found
    )
    assert not any(image.reference.startswith("gcr.io/") and image.status != "unavailable" for image in images)


def test_only_the_selected_proxy_images_are_planned(world: FakeWorld, manifest_files: ReleaseFiles) -> None:
    """A release's shipped proxy (v0.13.1 ships the retired gcr.io tag) is not installed by
    the harness, which puts the first cell's image in place: only selected aliases count."""
    images = components.required_images(["v0.13.1"], ["quay-v0.22.1"], ["1.34"], files=manifest_files)
    assert [i.reference for i in images if i.component == binaries.PROXY] == ["quay.io/brancz/kube-rbac-proxy:v0.22.1"]


def test_ensure_images_builds_what_is_missing_and_then_nothing(world: FakeWorld, manifest_files: ReleaseFiles) -> None:
    world.unavailable_binaries[(binaries.KSERVE_MANAGER, "v0.18.0")] = REFUSED
    results = components.ensure_images(["v0.14.0", "v0.18.0"], ["quay-v0.18.0"], ["1.34"], files=manifest_files)
    assert world.node_built == ["v1.34.4"]
    assert "kserve-compat/kind-node:v1.34.4" in by_reference(results)  # the builder's name
    assert world.imported == [
        "quay.io/brancz/kube-rbac-proxy:v0.18.0",
        "quay.io/jetstack/cert-manager-controller:v1.11.5",
        "quay.io/jetstack/cert-manager-webhook:v1.11.5",
        "quay.io/jetstack/cert-manager-cainjector:v1.11.5",
        "kserve/kserve-controller:v0.14.0",
    ]
    # The fixture's releases have no runtimes file: their serving images cannot be planned.
    serving_images = [image for image in results if image.component == serving.SKLEARNSERVER]
    assert [(image.version, image.status) for image in serving_images] == [
        ("v0.14.0", "unavailable"),
        ("v0.18.0", "unavailable"),
    ]
    assert all("its runtimes cannot be read" in image.detail for image in serving_images)
    others = [image for image in results if image not in serving_images]
    assert {image.status for image in others if image.reference != "kserve/kserve-controller:v0.18.0"} == {"built"}
    world.imported.clear()
    world.node_status = "built"
    again = components.ensure_images(["v0.14.0", "v0.18.0"], ["quay-v0.18.0"], ["1.34"], files=manifest_files)
    assert world.imported == [] and world.node_built == ["v1.34.4"]
    assert [image.status for image in again] == [image.status for image in results]


def test_a_failed_build_is_reported_and_the_others_still_built(world: FakeWorld, manifest_files: ReleaseFiles) -> None:
    world.fail_build = {"quay.io/brancz/kube-rbac-proxy:v0.18.0": docker_image_module.ImageBuildFailed("no space")}
    results = by_reference(components.ensure_images(["v0.14.0"], ["quay-v0.18.0"], ["1.34"], files=manifest_files))
    assert (
        results["quay.io/brancz/kube-rbac-proxy:v0.18.0"].status,
        results["quay.io/brancz/kube-rbac-proxy:v0.18.0"].detail,
    ) == (
        "failed",
        "no space",
    )
    assert results["kserve/kserve-controller:v0.14.0"].status == "built"


def test_no_docker_engine_is_one_line_before_anything_is_built(world: FakeWorld, manifest_files: ReleaseFiles) -> None:
    world.engine = "no Docker engine answers (docker version: Cannot connect to the Docker daemon)"
    listed = by_reference(components.required_images(["v0.14.0"], ["quay-v0.18.0"], ["1.34"], files=manifest_files))
    world.binary(binaries.PROXY, "v0.18.0")
    listed = by_reference(components.required_images(["v0.14.0"], ["quay-v0.18.0"], ["1.34"], files=manifest_files))
    assert listed["quay.io/brancz/kube-rbac-proxy:v0.18.0"].detail == world.engine
    with pytest.raises(EnvironmentMissing, match="no Docker engine answers"):
        components.ensure_images(["v0.14.0"], ["quay-v0.18.0"], ["1.34"], files=manifest_files)
    assert world.imported == [] and world.node_built == []


# ---------------------------------------------------------------------------- the command


def run_cli(argv: list[str]) -> int:
    """``kserve-compat ARGV``'s exit code (argparse's usage errors exit through SystemExit)."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["images", "list", "--kserve", "0.14"], "--kserve 0.14: expected a KServe release tag"),
        (["images", "list", "--kserve", "v9.1.0"], "--kserve v9.1.0: no defaults for the v9.1 line"),
        (["images", "build", "--proxy", "gcr-v9"], "--proxy gcr-v9: unknown proxy image alias; expected one of"),
        (["images", "list", "--k8s", "1.99"], "--k8s 1.99: unknown Kubernetes version; expected one of 1.32, 1.33"),
        (["images", "frobnicate"], "argument action: invalid choice: 'frobnicate'"),
    ],
)
def test_bad_selection_is_one_line_and_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], world: FakeWorld
) -> None:
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert len(err.strip().splitlines()) == 1
    assert world.imported == []


def test_list_prints_every_image_with_its_status_and_reason(
    world: FakeWorld, manifest_files: ReleaseFiles, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world.unavailable_binaries[(binaries.KSERVE_MANAGER, "v0.18.0")] = REFUSED
    world.binary(binaries.PROXY, "v0.18.0")
    world.current_images.add("quay.io/brancz/kube-rbac-proxy:v0.18.0")
    monkeypatch.setattr(ReleaseFiles, "from_environment", classmethod(lambda cls, *a, **k: manifest_files))
    assert cli.main(["images", "list", "--kserve", "v0.18.0", "--proxy", "quay-v0.18.0", "--k8s", "1.34"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split(None, 4) for line in out.splitlines()}
    assert lines["quay.io/brancz/kube-rbac-proxy:v0.18.0"][1:4] == ["kube-rbac-proxy", "v0.18.0", "built"]
    assert lines["kserve/kserve-controller:v0.18.0"][3] == "unavailable"
    assert lines["kserve/kserve-controller:v0.18.0"][4] == REFUSED
    node = next(line for line in out.splitlines() if line.startswith("kserve-compat/kind-node:v1.34.4"))
    assert node.split()[-1] == "missing"
    assert world.imported == []


def test_build_exits_1_when_a_buildable_image_failed(
    world: FakeWorld, manifest_files: ReleaseFiles, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ReleaseFiles, "from_environment", classmethod(lambda cls, *a, **k: manifest_files))
    argv = ["images", "build", "--kserve", "v0.14.0", "--proxy", "quay-v0.18.0", "--k8s", "1.34"]
    world.fail_build = {"kserve/kserve-controller:v0.14.0": docker_image_module.ImageBuildFailed("broken")}
    assert cli.main(argv) == 1
    assert "1 failed" in capsys.readouterr().out
    world.fail_build = None
    assert cli.main(argv) == 0


# ---------------------------------------------------------------------------- real images (Docker)


@pytest.fixture()
def no_from_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(binaries.ENV_FROM_IMAGE, raising=False)  # never pull a refused version


@pytest.mark.usefixtures("no_from_image")
@pytest.mark.parametrize("version", ["v0.15.0", "v0.18.0", "v0.22.1"])
def test_a_real_proxy_image_runs_its_binary(version: str) -> None:
    require_docker_engine()
    binary = require_binary(binaries.PROXY, version)
    reference = components.build_image(*components.proxy_image(version, binary))
    result = docker_run(reference, "--help")
    assert result.returncode == 0, result.stderr
    assert "kube-rbac-proxy" in result.stdout + result.stderr
    assert "--upstream" in result.stdout + result.stderr
    config = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Config.User}} {{json .Config.Entrypoint}}", reference],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert config == '65532:65532 ["/usr/local/bin/kube-rbac-proxy"]'


def write_real_manifest_dir(tmp_path: Path, version: str) -> ReleaseFiles:
    """The controller Deployment as the release ships it (name, containers, images)."""
    path = tmp_path / "manifests" / "kserve" / version / "kserve.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        release_manifest(version, f"kserve/kserve-controller:{version}", "quay.io/brancz/kube-rbac-proxy:v0.18.0")
    )
    return ReleaseFiles(offline_dir=tmp_path / "manifests", lock=ManifestLock(tmp_path / "lock.json"))


@pytest.mark.usefixtures("no_from_image")
def test_the_real_image_set_of_a_release_builds_runs_and_is_then_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_docker_engine()
    for component in ("kserve-manager", "helm", *components.CERT_MANAGER_IMAGES):
        require_binary(component)
    require_binary(binaries.PROXY, "v0.18.0")
    files = write_real_manifest_dir(tmp_path, "v0.20.0")
    # The node image is another module's; here it answers "built" so only components are made.
    node = types.ModuleType("e2e.imageset.node")
    node.node_kubernetes_version = lambda minor: "v1.34.4"  # type: ignore[attr-defined]
    node.node_image_status = lambda version: ("built", "")  # type: ignore[attr-defined]
    node.node_reference = lambda version: f"kserve-compat/kind-node:{version}"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "e2e.imageset.node", node)
    selection: dict[str, Any] = {
        "kserve_versions": ["v0.20.0"],
        "proxy_aliases": ["quay-v0.18.0"],
        "k8s_minors": ["1.34"],
    }

    results = by_reference(components.ensure_images(**selection, files=files))
    # This manifest directory has no runtimes file: no serving images are planned from it
    # (tests/imageset/test_serving.py builds those).
    assert results["(KServe v0.20.0 serving images)"].status == "unavailable"
    assert {r: i.status for r, i in results.items() if i.component not in ("node", serving.SKLEARNSERVER)} == {
        "quay.io/brancz/kube-rbac-proxy:v0.18.0": "built",
        "quay.io/jetstack/cert-manager-controller:v1.11.5": "built",
        "quay.io/jetstack/cert-manager-webhook:v1.11.5": "built",
        "quay.io/jetstack/cert-manager-cainjector:v1.11.5": "built",
        str(components.cert_manager_manifest_path()): "built",
        "kserve/kserve-controller:v0.20.0": "built",
    }

    def image_ids() -> dict[str, str]:
        ids = {}
        for reference in results:
            if reference.startswith(("quay.io/", "kserve/")):
                inspect = ["docker", "image", "inspect", "--format", "{{.Id}}", reference]
                ids[reference] = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip()
        return ids

    before = image_ids()
    again = components.ensure_images(**selection, files=files)
    assert all(image.status == "built" for image in again if image.component != serving.SKLEARNSERVER)
    assert image_ids() == before  # current images are reused, not built again

    manager = docker_run("kserve/kserve-controller:v0.20.0", "--help")
    assert "-metrics-addr" in manager.stdout + manager.stderr
    for component, (repository, _command) in components.CERT_MANAGER_IMAGES.items():
        ran = docker_run(f"{repository}:v1.11.5", "--help")
        assert ran.returncode == 0, f"{component}: {ran.stderr[-500:]}"
    assert (
        subprocess.run(
            ["docker", "image", "inspect", "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"],
            capture_output=True,
            check=False,
        ).returncode
        != 0
    )


@pytest.mark.usefixtures("no_from_image")
def test_the_real_cert_manager_manifest_names_the_images_built_here() -> None:
    require_binary("helm")
    path = components.cert_manager_manifest()
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cert-manager"}}
    crds = sorted(d["metadata"]["name"] for d in documents if d["kind"] == "CustomResourceDefinition")
    assert crds == [
        "certificaterequests.cert-manager.io",
        "certificates.cert-manager.io",
        "challenges.acme.cert-manager.io",
        "clusterissuers.cert-manager.io",
        "issuers.cert-manager.io",
        "orders.acme.cert-manager.io",
    ]
    deployments = [d for d in documents if d["kind"] == "Deployment"]
    images = sorted(c["image"] for d in deployments for c in d["spec"]["template"]["spec"]["containers"])
    assert images == sorted(components.cert_manager_reference(c) for c in components.CERT_MANAGER_IMAGES)
    assert all(d["metadata"].get("namespace") == "cert-manager" for d in deployments)
    assert not [d for d in documents if d["kind"] == "Job"]  # no startupapicheck
