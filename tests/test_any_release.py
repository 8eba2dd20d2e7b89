"""Any KServe release: what a release ships is read from its manifest, not from the matrix.

The matrix file lists defaults per minor line; the proxy image and args a release really
ships come from its controller Deployment (``e2e.manifests.shipped_proxy``). Release
manifests are obtained only through the harness's resolver (``KSERVE_COMPAT_MANIFEST_DIR``,
then the cache, then a download); where none answers the test is skipped (failed in CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.release_files import session_release_files

from e2e.errors import NotInOfflineDirectory
from e2e.manifests import (
    ManifestLock,
    ReleaseFiles,
    ReleaseManifest,
    load_release_manifest,
    shipped_proxy,
)
from e2e.matrix import DEFAULT_MATRIX_FILE, KServeRelease, Matrix, load_matrix

GCR_PROXY = "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"
QUAY_PROXY = "quay.io/brancz/kube-rbac-proxy:v0.18.0"
SHIPPED_ARGS = (
    "--secure-listen-address=0.0.0.0:8443",
    "--upstream=http://127.0.0.1:8080/",
    "--logtostderr=true",
    "--v=10",
)


@pytest.fixture(scope="module")
def files() -> ReleaseFiles:
    """The tests' one resolver (``tests/helpers/release_files.py``): a run never pins into the repository."""
    return session_release_files()


def manifest_of(release: KServeRelease, files: ReleaseFiles) -> ReleaseManifest:
    session_release_files().kserve_path(release.version)  # skips (fails in CI) when no source has it
    return load_release_manifest(release, files)


def matrix_without(tmp_path: Path, *versions: str, **changes: dict[str, Any]) -> Matrix:
    """The real matrix file minus some release entries, with some entries changed."""
    raw = yaml.safe_load(DEFAULT_MATRIX_FILE.read_text())
    raw["releases"] = [entry for entry in raw["releases"] if entry["version"] not in versions]
    for entry in raw["releases"]:
        entry.update(changes.get(entry["version"], {}))
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_matrix(path)


@pytest.mark.parametrize(("version", "image"), [("v0.13.0-rc0", GCR_PROXY), ("v0.14.0", QUAY_PROXY)])
def test_the_shipped_proxy_is_read_from_the_deployment(files: ReleaseFiles, version: str, image: str) -> None:
    release = load_matrix().release(version)
    manifest = manifest_of(release, files)
    shipped = shipped_proxy(release, manifest)
    container = next(
        c for c in manifest.deployment()["spec"]["template"]["spec"]["containers"] if c["name"] == "kube-rbac-proxy"
    )
    assert (shipped.image, shipped.args) == (container["image"], tuple(container["args"]))
    assert (shipped.image, shipped.args) == (image, SHIPPED_ARGS)
    assert not shipped.disagrees
    assert shipped.notes() == [f"KServe {version} ships {image} with args {' '.join(SHIPPED_ARGS)}"]


def test_the_manifest_wins_over_the_matrix_and_that_is_noted(files: ReleaseFiles, tmp_path: Path) -> None:
    wrong = "quay.io/brancz/kube-rbac-proxy:v0.22.1"
    matrix = matrix_without(tmp_path, **{"v0.14.0": {"proxy_image": wrong}})
    release = matrix.release("v0.14.0")
    assert release.proxy_image == wrong
    shipped = shipped_proxy(release, manifest_of(release, files))
    assert shipped.image == QUAY_PROXY and shipped.disagrees
    assert shipped.notes()[-1] == (
        f"the matrix entry v0.14.0 expects {wrong}; the release manifest's Deployment ships {QUAY_PROXY}, "
        "which is what this run used"
    )


@pytest.mark.parametrize(
    ("version", "entry", "image"), [("v0.13.0-rc0", "v0.13.1", GCR_PROXY), ("v0.14.0", "v0.14.1", QUAY_PROXY)]
)
def test_an_unlisted_release_is_installed_from_its_own_manifest(
    files: ReleaseFiles, tmp_path: Path, version: str, entry: str, image: str
) -> None:
    matrix = matrix_without(tmp_path, version)
    release = matrix.release(version)
    assert release.derived_from == entry
    manifest = manifest_of(release, files)
    assert manifest.source == f"kserve {version} kserve.yaml"
    shipped = shipped_proxy(release, manifest)
    assert (shipped.image, shipped.args, shipped.derived_from) == (image, SHIPPED_ARGS, entry)
    assert any(f"line's entry {entry}" in note for note in shipped.notes())


def test_an_unlisted_release_without_files_is_found_out_when_fetched(tmp_path: Path) -> None:
    offline = tmp_path / "mirror"
    (offline / "kserve").mkdir(parents=True)
    files = ReleaseFiles(offline_dir=offline, lock=ManifestLock(tmp_path / "lock.json"))
    release = load_matrix().release("v0.15.0")
    with pytest.raises(NotInOfflineDirectory) as caught:
        load_release_manifest(release, files)
    message = str(caught.value)
    assert "kserve v0.15.0 kserve.yaml" in message and str(offline) in message and "\n" not in message


# -- preflight reads the exact version a cluster runs ------------------------------------------


@pytest.mark.parametrize(
    ("image", "described"),
    [
        (
            "kserve/kserve-controller:v0.15.0",
            "; its line ships quay.io/brancz/kube-rbac-proxy:v0.18.0 (defaults of v0.15.2)",
        ),
        ("kserve/kserve-controller:v0.15.2", "; the release ships quay.io/brancz/kube-rbac-proxy:v0.18.0"),
        ("kserve/kserve-controller:v0.99.0", "; no release line the matrix knows"),
    ],
)
def test_preflight_takes_the_version_a_cluster_runs(image: str, described: str) -> None:
    from e2e.matrix import load_matrix
    from e2e.preflight.cluster import installed_version

    matrix = load_matrix()
    profile = matrix.releases[0].profile
    deployment = {"spec": {"template": {"spec": {"containers": [{"name": profile.manager_container, "image": image}]}}}}
    found = installed_version(deployment, profile, matrix)
    assert found.version == image.rsplit(":", 1)[1]
    assert found.describe().endswith(described), found.describe()
