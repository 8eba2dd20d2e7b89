"""``kserve-compat audit`` against the real KServe release manifests and crafted ones."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.paths import REPO
from helpers.registry_server import (
    RunningRegistry,
    registry_serving,
)
from helpers.release_files import MIRRORED_KSERVE_VERSIONS, SessionReleaseFiles

from e2e.audit import (
    EXIT_CLEAN,
    EXIT_RETIRED,
    EXIT_UNAVAILABLE,
    EXIT_UNCHECKED,
    AuditReport,
    audit,
    image_uses,
    manifest_sources,
    render_markdown,
    render_table,
)
from e2e.errors import UsageError
from e2e.manifests import kserve_file
from e2e.matrix import version_key

GCR_PROXY = "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"
QUAY_PROXY = "quay.io/brancz/kube-rbac-proxy:v0.18.0"
SHA = "sha256:" + "c" * 64

# Runs the real command line, as a user does (one-line errors, exit codes).
CLI = "import sys, e2e.cli as cli; sys.exit(cli.main(sys.argv[1:]))"


def kserve_compat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


@pytest.fixture(scope="module")
def releases(release_files: SessionReleaseFiles) -> list[Path]:
    """Every mirrored release's kserve.yaml on disk (offline directory or cache)."""
    return [release_files.kserve_path(version) for version in MIRRORED_KSERVE_VERSIONS]


@pytest.fixture(scope="module")
def release_reports(releases: list[Path]) -> dict[str, AuditReport]:
    return {m.parent.name: audit(manifest_sources([str(m)], io.StringIO())) for m in releases}


# -- the real release manifests -------------------------------------------------------------


def test_every_release_is_judged_by_its_proxy_image(
    release_reports: dict[str, AuditReport], release_files: SessionReleaseFiles
) -> None:
    for version, report in release_reports.items():
        manifest = release_files.kserve_path(version)
        proxies = [
            image
            for image in report.images
            if any(use.container == "kube-rbac-proxy" and use.name == "kserve-controller-manager" for use in image.uses)
        ]
        assert len(proxies) == 1, version
        proxy = proxies[0]
        if version_key(version) < version_key("v0.14.0"):
            assert proxy.image == GCR_PROXY, version
            assert [image.image for image in report.retired] == [GCR_PROXY], version
            assert proxy.retirement is not None
            assert proxy.retirement.replacements[0] == ("registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1", "frozen")
            assert report.exit_code == EXIT_RETIRED, version
        else:
            assert proxy.image == QUAY_PROXY, version
            assert report.retired == [], version
            assert report.exit_code == EXIT_CLEAN, version
        use = proxy.uses[0]
        assert (use.kind, use.namespace, use.field) == (
            "Deployment",
            "kserve",
            "spec.template.spec.containers[1].image",
        )
        assert manifest.read_text().splitlines()[use.line - 1].strip() == f"image: {proxy.image}"


def test_the_three_old_lines_are_flagged(release_reports: dict[str, AuditReport]) -> None:
    flagged = {version for version, report in release_reports.items() if report.exit_code == EXIT_RETIRED}
    assert flagged == {"v0.10.1", "v0.12.1", "v0.13.0-rc0"} & set(release_reports)
    assert {"v0.10.1", "v0.12.1", "v0.13.0-rc0"} <= set(release_reports), "fixture releases went missing"


def test_serving_runtimes_are_walked(release_files: SessionReleaseFiles) -> None:
    resources = release_files.kserve_path("v0.14.0", "kserve-cluster-resources.yaml")
    report = audit(manifest_sources([str(resources)], io.StringIO()))
    kinds = {use.kind for image in report.images for use in image.uses}
    assert "ClusterServingRuntime" in kinds
    assert any(image.image.startswith("kserve/sklearnserver:") for image in report.images)


def test_cli_exit_codes_on_release_files(release_files: SessionReleaseFiles) -> None:
    old = release_files.kserve_path("v0.10.1")
    new = release_files.kserve_path("v0.14.0")
    result = kserve_compat("audit", str(old))
    assert result.returncode == EXIT_RETIRED, result.stderr
    assert GCR_PROXY in result.stdout and "registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1" in result.stdout
    result = kserve_compat("audit", str(new))
    assert result.returncode == EXIT_CLEAN, result.stderr
    assert "0 on a retired registry" in result.stdout


def test_cli_reads_stdin_and_a_directory_and_writes_json(release_files: SessionReleaseFiles, tmp_path: Path) -> None:
    old = release_files.kserve_path("v0.12.1")
    result = kserve_compat("audit", "-", "--format", "json", stdin=old.read_text())
    assert result.returncode == EXIT_RETIRED, result.stderr
    document = json.loads(result.stdout)
    assert document["exit_code"] == EXIT_RETIRED
    retired = [image for image in document["images"] if image["retired"]]
    assert [image["image"] for image in retired] == [GCR_PROXY]
    assert retired[0]["uses"][0]["source"] == "<stdin>"
    assert retired[0]["retired"]["replacements"][1] == {
        "image": "quay.io/brancz/kube-rbac-proxy:v0.13.1",
        "status": "maintained",
    }

    mirror = release_files.materialize([kserve_file(v) for v in MIRRORED_KSERVE_VERSIONS], tmp_path / "mirror")
    result = kserve_compat("audit", str(mirror / "kserve"), "--format", "markdown")
    assert result.returncode == EXIT_RETIRED, result.stderr
    assert f"| `{GCR_PROXY}` |" in result.stdout


# -- crafted manifests ----------------------------------------------------------------------

WORKLOADS = textwrap.dedent(
    f"""\
    apiVersion: v1
    kind: List
    items:
      - apiVersion: batch/v1
        kind: CronJob
        metadata: {{name: nightly, namespace: jobs}}
        spec:
          jobTemplate:
            spec:
              template:
                spec:
                  initContainers: [{{name: init, image: "busybox"}}]
                  containers: [{{name: work, image: "k8s.gcr.io/pause:3.1"}}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: debug}}
    spec:
      containers: [{{name: app, image: "registry.example/app@{SHA}"}}]
      ephemeralContainers: [{{name: dbg, image: "busybox:latest"}}]
    ---
    apiVersion: serving.kserve.io/v1alpha1
    kind: ServingRuntime
    metadata: {{name: custom, namespace: models}}
    spec:
      containers:
        - name: kserve-container
          image: registry.example/runtime:v1
    ---
    # an empty document and a CRD-like schema with a 'containers' mapping must not confuse it
    ---
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {{name: things.example.com}}
    spec:
      properties:
        containers: {{type: array, items: {{type: object}}}}
    """
)


def test_all_container_lists_of_all_kinds() -> None:
    found = {(image, use.kind, use.container, use.field) for image, use in image_uses("w.yaml", WORKLOADS)}
    assert found == {
        ("busybox", "CronJob", "init", "spec.jobTemplate.spec.template.spec.initContainers[0].image"),
        ("k8s.gcr.io/pause:3.1", "CronJob", "work", "spec.jobTemplate.spec.template.spec.containers[0].image"),
        (f"registry.example/app@{SHA}", "Pod", "app", "spec.containers[0].image"),
        ("busybox:latest", "Pod", "dbg", "spec.ephemeralContainers[0].image"),
        ("registry.example/runtime:v1", "ServingRuntime", "kserve-container", "spec.containers[0].image"),
    }


def test_flags() -> None:
    report = audit([("w.yaml", WORKLOADS)])
    by_image = {image.image: image for image in report.images}
    assert by_image["busybox"].pin == "unpinned"
    assert by_image["busybox:latest"].pin == "unpinned"
    assert by_image[f"registry.example/app@{SHA}"].pin == "digest"
    assert by_image["registry.example/runtime:v1"].pin == "tag"
    assert [image.image for image in report.retired] == ["k8s.gcr.io/pause:3.1"]
    assert report.exit_code == EXIT_RETIRED
    table = render_table(report)
    assert "registry.k8s.io/pause:3.1" in table
    assert "5 images in 1 file: 1 on a retired registry, 2 unpinned, 1 pinned by digest" in table
    assert render_markdown(report).startswith("| Image | Pin | Registry | Where |")


def test_invalid_image_reference_counts_as_unavailable() -> None:
    text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: Bad/Image}]\n"
    report = audit([("p.yaml", text)])
    assert report.images[0].pin == "invalid"
    assert report.exit_code == EXIT_UNAVAILABLE
    assert "lowercase" in render_table(report)


def test_directory_walk_is_recursive_and_skips_hidden(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers: [{{name: c, image: {}}}]\n"
    (tmp_path / "a" / "one.yaml").write_text(pod.format("one:v1"))
    (tmp_path / "a" / "b" / "two.yml").write_text(pod.format("two:v1"))
    (tmp_path / "a" / "notes.txt").write_text(pod.format("three:v1"))
    (tmp_path / ".git" / "x.yaml").write_text(pod.format("hidden:v1"))
    names = [name for name, _ in manifest_sources([str(tmp_path)], io.StringIO())]
    assert names == [str(tmp_path / "a" / "b" / "two.yml"), str(tmp_path / "a" / "one.yaml")]


def test_malformed_yaml_names_file_and_line() -> None:
    with pytest.raises(UsageError, match=r"^manifest bad.yaml line 4: not valid YAML"):
        list(image_uses("bad.yaml", "a: 1\nb:\n  - [unclosed\nc: d: e\n"))


@pytest.mark.parametrize(
    ("arguments", "stdin", "message"),
    [
        (["/nonexistent/kserve.yaml"], None, "manifest /nonexistent/kserve.yaml: not found"),
        (["-"], "kind: Pod\nspec: [unclosed\n", "manifest <stdin> line 3: not valid YAML"),
        (["-", "--registry-mirror", "gcr.io"], "", "--registry-mirror 'gcr.io': expected SRC=DST"),
        (["-", "--registry-mirror", "gcr.io=Bad Host"], "", "--registry-mirror 'Bad Host'"),
        (["-", "--format", "xml"], "", "invalid choice: 'xml'"),
        ([], None, "the following arguments are required"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(arguments: list[str], stdin: str | None, message: str) -> None:
    result = kserve_compat("audit", *arguments, stdin=stdin)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_file_on_disk(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\n\tspec: {}\n")
    result = kserve_compat("audit", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith(f"kserve-compat audit: manifest {bad} line 3: not valid YAML")
    assert len(result.stderr.strip().splitlines()) == 1


def test_empty_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = kserve_compat("audit", str(tmp_path))
    assert result.returncode == 2
    assert "no *.yaml or *.yml files" in result.stderr


# -- --probe against a real registry --------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    images = {"kubebuilder/kube-rbac-proxy": ["v0.13.1"], "brancz/kube-rbac-proxy": ["v0.18.0"]}
    with registry_serving(tmp_path_factory.mktemp("audit-registry"), images) as running:
        yield running


def _deployment(*images: str) -> str:
    containers = ", ".join(f"{{name: c{i}, image: '{image}'}}" for i, image in enumerate(images))
    return (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: n}\n"
        f"spec:\n  template:\n    spec:\n      containers: [{containers}]\n"
    )


def test_probe_through_a_mirror_retired_but_available(registry: RunningRegistry) -> None:
    result = kserve_compat(
        "audit",
        "-",
        "--probe",
        "--format",
        "json",
        "--registry-mirror",
        f"gcr.io/kubebuilder={registry.host}/kubebuilder",
        "--registry-mirror",
        f"quay.io/brancz={registry.host}/brancz",
        stdin=_deployment(GCR_PROXY, QUAY_PROXY),
    )
    assert result.returncode == EXIT_RETIRED, result.stderr
    images = {image["image"]: image for image in json.loads(result.stdout)["images"]}
    assert images[GCR_PROXY]["availability"]["status"] == "available"
    assert images[GCR_PROXY]["availability"]["probed"] == f"{registry.host}/kubebuilder/kube-rbac-proxy:v0.13.1"
    assert images[GCR_PROXY]["availability"]["digest"].startswith("sha256:")
    assert images[QUAY_PROXY]["availability"]["status"] == "available"


def test_probe_missing_image_exits_4_even_with_a_retired_one(registry: RunningRegistry) -> None:
    result = kserve_compat(
        "audit",
        "-",
        "--probe",
        "--registry-mirror",
        f"gcr.io/kubebuilder={registry.host}/kubebuilder",
        stdin=_deployment(GCR_PROXY, f"{registry.host}/brancz/kube-rbac-proxy:v0.0.1"),
    )
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert "missing" in result.stdout
    assert "available sha256:" in result.stdout
    assert f"via {registry.host}/kubebuilder/kube-rbac-proxy:v0.13.1" in result.stdout


def test_probe_of_a_registry_that_does_not_answer_is_could_not_check_not_gone() -> None:
    # A closed loopback port: the connection is refused, as when offline or the registry is down.
    result = kserve_compat(
        "audit",
        "-",
        "--probe",
        "--timeout",
        "2",
        "--registry-mirror",
        "quay.io/brancz=127.0.0.1:1/brancz",
        stdin=_deployment(QUAY_PROXY),
    )
    assert result.returncode == EXIT_UNCHECKED, result.stdout + result.stderr
    assert "could not be checked" in result.stdout
    assert "unavailable" not in result.stdout.split("findings:")[1].split("\n\n")[0]
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:4] == ["IMAGE", "PIN", "REGISTRY", "AVAILABILITY"]
    assert row.split()[2:4] == ["unreachable", "unreachable"]


def test_a_gone_image_outranks_one_that_could_not_be_checked(registry: RunningRegistry) -> None:
    result = kserve_compat(
        "audit",
        "-",
        "--probe",
        "--timeout",
        "2",
        "--registry-mirror",
        "quay.io/brancz=127.0.0.1:1/brancz",
        stdin=_deployment(QUAY_PROXY, f"{registry.host}/brancz/kube-rbac-proxy:v0.0.1"),
    )
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert "1 unavailable, 1 could not be checked" in result.stdout


def test_without_probe_the_registry_column_says_not_probed() -> None:
    result = kserve_compat("audit", "-", stdin=_deployment(QUAY_PROXY))
    assert result.returncode == EXIT_CLEAN, result.stderr
    assert result.stdout.splitlines()[1].split()[2:4] == ["not", "probed"]


def test_help_lists_the_exit_codes() -> None:
    result = kserve_compat("audit", "--help")
    assert result.returncode == 0
    codes = result.stdout.split("exit codes:")[1]
    for code in (EXIT_CLEAN, 2, EXIT_RETIRED, EXIT_UNAVAILABLE, EXIT_UNCHECKED):
        assert f"  {code}  " in codes


@pytest.mark.parametrize(("text", "what"), [("", "empty"), ("foo: bar\nlist: [1, 2]\n", "YAML, not Kubernetes")])
def test_input_without_kubernetes_objects_is_a_usage_error(tmp_path: Path, text: str, what: str) -> None:
    source = tmp_path / "input.yaml"
    source.write_text(text)
    result = kserve_compat("audit", str(source))
    assert result.returncode == 2, (what, result.stdout)
    assert result.stderr.strip() == (
        f"kserve-compat audit: {source}: no Kubernetes objects (apiVersion and kind) found; "
        "expected manifests, or Helm/Kustomize output on stdin"
    )


def test_objects_without_containers_are_clean_not_an_error() -> None:
    result = kserve_compat("audit", "-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    assert result.returncode == EXIT_CLEAN, result.stderr
    assert "no container images found" in result.stdout
