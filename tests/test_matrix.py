"""The matrix file and its expansion: releases, proxy images, cells, groups, selection, CI JSON.

Checks the real ``e2e/data/matrix.yaml`` against the releases' own files, then the selection rules, and
every way a malformed matrix file or an unknown name must end: one ``UsageError`` line
that names the input. Bad matrix files are written to ``tmp_path``.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.errors import UsageError
from e2e.matrix import (
    DEFAULT_MATRIX_FILE,
    Matrix,
    MatrixCell,
    Selection,
    adhoc_proxy_image,
    github_actions_matrix,
    github_actions_matrix_json,
    group_cells,
    load_matrix,
    version_key,
)

GCR_PROXY = "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"
QUAY_PROXY = "quay.io/brancz/kube-rbac-proxy:v0.18.0"
LINES = [f"v0.{minor}" for minor in range(10, 21)]

# The cert-manager version each line's quick install used (kserve/kserve hack/quick_install.sh at the release tag).
CERT_MANAGER = {
    "v0.10": "v1.3.0",
    "v0.11": "v1.3.0",
    "v0.12": "v1.3.0",
    "v0.13": "v1.9.0",
    "v0.14": "v1.15.1",
    "v0.15": "v1.16.1",
    "v0.16": "v1.16.1",
    "v0.17": "v1.17.0",
    "v0.18": "v1.17.0",
    "v0.19": "v1.17.0",
    "v0.20": "v1.17.0",
}
CELL_ID = re.compile(r"^kserve-(v\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)--([a-z0-9.-]+)--k8s-(\d+\.\d+)(?:--([a-z0-9-]+))?$")


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return load_matrix()


@pytest.fixture(scope="module")
def raw_matrix() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_MATRIX_FILE.read_text())


def write_matrix(tmp_path: Path, data: Any, name: str = "matrix.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def usage_error_line(excinfo: pytest.ExceptionInfo[UsageError], *names: str) -> str:
    """The error's message, checked to be one line that names every input in ``names``."""
    message = str(excinfo.value)
    assert message and "\n" not in message, repr(message)
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    return message


# -- the real matrix file against the releases ----------------------------------------------


def test_every_minor_line_from_v0_10_to_v0_20_has_exactly_one_latest_patch(matrix: Matrix) -> None:
    lines = {release.line for release in matrix.releases}
    assert set(LINES) <= lines
    for line in LINES:
        members = [r for r in matrix.releases if r.line == line]
        latest = [r for r in members if r.latest_patch]
        assert len(latest) == 1, f"{line}: latest_patch on {[r.version for r in latest]}"
        # the flagged one is the newest release of its line in the file
        assert latest[0].version == max((r.version for r in members), key=version_key)


def test_release_files_follow_the_v0_12_rename(matrix: Matrix) -> None:
    for release in matrix.releases:
        assert release.files[0] == "kserve.yaml"
        if version_key(release.version) < version_key("v0.12.0"):
            assert release.files == ("kserve.yaml", "kserve-runtimes.yaml"), release.version
            assert release.runtimes_file == "kserve-runtimes.yaml"
        else:
            assert release.files == ("kserve.yaml", "kserve-cluster-resources.yaml"), release.version
            assert release.runtimes_file == "kserve-cluster-resources.yaml"


def test_shipped_proxy_image_switches_to_quay_at_v0_14(matrix: Matrix) -> None:
    for release in matrix.releases:
        expected = GCR_PROXY if version_key(release.version) < version_key("v0.14.0") else QUAY_PROXY
        assert release.proxy_image == expected, release.version


def test_cert_manager_versions_match_the_quick_installs(matrix: Matrix) -> None:
    for release in matrix.releases:
        assert release.cert_manager == CERT_MANAGER[release.line], release.version


def test_every_release_uses_the_controller_names_of_the_real_manifests(matrix: Matrix) -> None:
    for release in matrix.releases:
        profile = release.profile
        assert (profile.namespace, profile.deployment) == ("kserve", "kserve-controller-manager")
        assert (profile.manager_container, profile.proxy_container) == ("manager", "kube-rbac-proxy")
        assert profile.metrics_service == "kserve-controller-manager-metrics-service"
        assert profile.metrics_port == 8443 and isinstance(profile.metrics_port, int)
        assert profile.config_map == "inferenceservice-config"


def test_proxy_aliases_and_their_status(matrix: Matrix) -> None:
    by_alias = {p.alias: p for p in matrix.proxies}
    assert by_alias["gcr-v0.13.1"].image == GCR_PROXY
    assert by_alias["gcr-v0.13.1"].status == "retired" and by_alias["gcr-v0.13.1"].retired
    assert by_alias["k8s-v0.13.1"].image == "registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1"
    assert by_alias["k8s-v0.13.1"].status == "frozen" and not by_alias["k8s-v0.13.1"].retired
    assert by_alias["quay-v0.13.1"].image == "quay.io/brancz/kube-rbac-proxy:v0.13.1"
    assert by_alias["quay-v0.18.0"].image == QUAY_PROXY
    assert by_alias["quay-v0.18.0"].status == "served"
    assert [p.alias for p in matrix.proxies if p.retired] == ["gcr-v0.13.1"]
    newest = [p for p in matrix.proxies if p.newest]
    assert len(newest) == 1
    # the newest flag sits on the highest tag of the file
    assert newest[0].tag == max((p.tag for p in matrix.proxies), key=version_key)


def test_proxy_tag_is_read_from_the_reference(matrix: Matrix) -> None:
    assert matrix.proxy("quay-v0.18.0").tag == "v0.18.0"
    adhoc = matrix.proxy_for_image("registry.example:5000/kube-rbac-proxy")
    assert adhoc.tag == ""  # a port is not a tag
    assert matrix.proxy_for_image(QUAY_PROXY) is matrix.proxy("quay-v0.18.0")
    other = matrix.proxy_for_image("quay.io/brancz/kube-rbac-proxy:v0.99.0")
    assert (other.alias, other.status, other.tag) == ("adhoc-quay-brancz-v0.99.0", "served", "v0.99.0")


def test_every_minor_from_1_32_to_1_37_with_the_patch_built_of_it(matrix: Matrix) -> None:
    assert [k.version for k in matrix.kubernetes] == ["1.32", "1.33", "1.34", "1.35", "1.36", "1.37"]
    assert [k.build for k in matrix.kubernetes] == ["v1.32.9", "v1.33.13", "v1.34.4", "v1.35.4", "v1.36.3", "v1.37.2"]
    for kube in matrix.kubernetes:
        assert re.fullmatch(r"1\.\d+", kube.version), kube.version
        assert kube.build.startswith(f"v{kube.version}.")
        if kube.node_image is not None:  # a published one, where pinned
            assert kube.node_image.startswith(f"kindest/node:v{kube.version}."), kube.node_image
    assert [k.version for k in matrix.kubernetes if k.default] == ["1.34"]


def test_k8s_all_selects_every_minor_and_no_k8s_the_default_ones(matrix: Matrix) -> None:
    every = matrix.select(Selection.from_options(kserve="v0.13.1", proxy="quay-v0.22.1", k8s="all"))
    assert [c.kubernetes.version for c in every] == [k.version for k in matrix.kubernetes]
    default = matrix.select(Selection.from_options(kserve="v0.13.1", proxy="quay-v0.22.1"))
    assert [c.kubernetes.version for c in default] == ["1.34"]
    patch = matrix.select(Selection.from_options(kserve="v0.13.1", proxy="quay-v0.22.1", k8s="v1.35.4,1.35"))
    assert [c.kubernetes.version for c in patch] == ["1.35"]
    with pytest.raises(UsageError) as excinfo:
        matrix.select(Selection.from_options(k8s="1.99"))
    assert str(excinfo.value) == (
        "--k8s 1.99: unknown Kubernetes version; expected one of 1.32, 1.33, 1.34, 1.35, 1.36, 1.37 or all"
    )


def test_variants_are_data(matrix: Matrix) -> None:
    assert matrix.variant("drop-logtostderr").args_drop == ("--logtostderr=true",)
    assert matrix.variant("http2-disable").args_add == ("--http2-disable",)
    quiet = matrix.variant("quiet")
    assert (quiet.args_drop, quiet.args_add) == (("--v=10",), ("--v=0",))
    context = matrix.variant("shipped-security-context").security_context
    assert context is not None and context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}


def test_version_key_orders_pre_releases_first() -> None:
    versions = ["v0.14.1", "v0.13.0-rc0", "v0.9.0", "v0.13.1", "v0.13.0", "v0.10.1"]
    assert sorted(versions, key=version_key) == ["v0.9.0", "v0.10.1", "v0.13.0-rc0", "v0.13.0", "v0.13.1", "v0.14.1"]
    for bad in ("0.14.0", "v0.14", "latest", "v0.14.0/../x"):
        with pytest.raises(UsageError) as excinfo:
            version_key(bad)
        usage_error_line(excinfo, bad)


# -- selection --------------------------------------------------------------------------


def test_default_selection_is_latest_patches_times_every_proxy_and_kubernetes(matrix: Matrix) -> None:
    cells = matrix.select(Selection())
    latest = [r for r in matrix.releases if r.latest_patch]
    assert len(cells) == len(latest) * len(matrix.proxies) * len([k for k in matrix.kubernetes if k.default])
    assert {c.release.version for c in cells} == {r.version for r in latest}
    assert "v0.14.0" not in {c.release.version for c in cells}  # not a latest patch
    assert all(c.variant is None for c in cells)


def test_all_releases_adds_the_older_patches(matrix: Matrix) -> None:
    cells = matrix.select(Selection(all_releases=True))
    assert {c.release.version for c in cells} == {r.version for r in matrix.releases}
    assert {"v0.13.0-rc0", "v0.14.0"} <= {c.release.version for c in cells}


def test_kserve_selection_takes_any_release_of_the_file(matrix: Matrix) -> None:
    cells = matrix.select(Selection.from_options(kserve="v0.15.2, v0.14.0"))
    assert {c.release.version for c in cells} == {"v0.14.0", "v0.15.2"}
    # --kserve wins over --all-releases
    both = matrix.select(Selection.from_options(kserve="v0.14.0", all_releases=True))
    assert {c.release.version for c in both} == {"v0.14.0"}


def test_proxy_selection_by_alias_or_image(matrix: Matrix) -> None:
    cells = matrix.select(Selection.from_options(kserve="v0.14.1", proxy="quay-v0.18.0,k8s-v0.13.1"))
    assert {c.proxy.alias for c in cells} == {"quay-v0.18.0", "k8s-v0.13.1"}
    assert len(cells) == 2  # the default minor
    by_image = matrix.select(Selection.from_options(kserve="v0.14.1", proxy=QUAY_PROXY))
    assert {c.proxy.alias for c in by_image} == {"quay-v0.18.0"}


def test_k8s_selection_with_or_without_v(matrix: Matrix) -> None:
    version = matrix.kubernetes[0].version
    for spelled in (version, f"v{version}"):
        cells = matrix.select(Selection.from_options(k8s=spelled))
        assert {c.kubernetes.version for c in cells} == {version}


def test_variant_selection_adds_variant_cells_beside_the_plain_ones(matrix: Matrix) -> None:
    plain = matrix.select(Selection.from_options(kserve="v0.14.1", proxy="quay-v0.18.0"))
    cells = matrix.select(
        Selection.from_options(kserve="v0.14.1", proxy="quay-v0.18.0", variants="quiet,http2-disable")
    )
    assert len(cells) == 3 * len(plain)
    assert {c.id for c in cells if c.variant is None} == {c.id for c in plain}
    for base in plain:
        assert f"{base.id}--quiet" in {c.id for c in cells}
        assert f"{base.id}--http2-disable" in {c.id for c in cells}


def test_cell_selection_is_exact_and_duplicates_collapse(matrix: Matrix) -> None:
    wanted = ["kserve-v0.14.0--quay-v0.18.0--k8s-1.33", "kserve-v0.10.1--gcr-v0.13.1--k8s-1.34--quiet"]
    cells = matrix.select(Selection.from_options(cells=[",".join(wanted), wanted[0]]))
    assert [c.id for c in cells] == [wanted[1], wanted[0]]  # sorted by release
    assert cells[0].variant is not None and cells[0].variant.name == "quiet"
    dup = matrix.select(Selection.from_options(kserve="v0.14.0,v0.14.0", proxy="quay-v0.18.0,quay-v0.18.0"))
    assert len(dup) == len({c.id for c in dup}) == 1


def test_cell_id_format(matrix: Matrix) -> None:
    cell = MatrixCell(matrix.release("v0.14.0"), matrix.proxy("quay-v0.18.0"), matrix.k8s("1.33"))
    assert cell.id == "kserve-v0.14.0--quay-v0.18.0--k8s-1.33"
    with_variant = MatrixCell(cell.release, cell.proxy, cell.kubernetes, matrix.variant("drop-logtostderr"))
    assert with_variant.id == "kserve-v0.14.0--quay-v0.18.0--k8s-1.33--drop-logtostderr"
    assert cell.group_key == with_variant.group_key == ("v0.14.0", "1.33")


def test_every_cell_id_round_trips(matrix: Matrix) -> None:
    cells = matrix.select(Selection(all_releases=True, k8s=("all",), variants=tuple(v.name for v in matrix.variants)))
    assert len(cells) == len(matrix.all_cells()) * (1 + len(matrix.variants))
    for cell in cells:
        match = CELL_ID.match(cell.id)
        assert match, cell.id
        assert match.group(1) == cell.release.version and match.group(2) == cell.proxy.alias
        assert matrix.cell(cell.id) == cell


def test_order_is_stable_and_grouped_by_cluster(matrix: Matrix) -> None:
    selection = Selection(all_releases=True, variants=("quiet",))
    first = [c.id for c in matrix.select(selection)]
    assert [c.id for c in matrix.select(selection)] == first
    # the same cells named in reverse come back in the same order
    assert [c.id for c in matrix.select(Selection(cells=tuple(reversed(first))))] == first
    cells = matrix.select(selection)
    keys = [c.group_key for c in cells]
    # each (release, k8s) forms one contiguous run, releases ascending, pre-releases first
    runs = [key for i, key in enumerate(keys) if i == 0 or keys[i - 1] != key]
    assert len(runs) == len(set(runs))
    assert runs == sorted(runs, key=lambda k: (version_key(k[0]), k[1]))
    versions = [k[0] for k in runs]
    assert versions.index("v0.13.0-rc0") < versions.index("v0.13.1")
    # within a group: the file's proxy order, the plain cell before its variants
    proxy_order = [p.alias for p in matrix.proxies]
    group = [c for c in cells if c.group_key == runs[0]]
    assert [c.proxy.alias for c in group if c.variant is None] == proxy_order
    assert group[0].variant is None and group[1].variant is not None


def test_groups_share_release_and_kubernetes(matrix: Matrix) -> None:
    cells = matrix.select(Selection.from_options(kserve="v0.13.1,v0.14.1", variants="quiet", k8s="1.33,1.34"))
    groups = group_cells(cells)
    assert len(groups) == 2 * 2
    assert [cell for group in groups for cell in group.cells] == cells  # a partition, in order
    for group in groups:
        assert group.id == f"kserve-{group.release.version}--k8s-{group.kubernetes.version}"
        assert {c.group_key for c in group.cells} == {(group.release.version, group.kubernetes.version)}
        assert len(group.cells) == 2 * len(matrix.proxies)


def test_github_matrix_has_one_entry_per_group(matrix: Matrix) -> None:
    cells = matrix.select(Selection.from_options(kserve="v0.10.1,v0.14.1", proxy="quay-v0.18.0,gcr-v0.13.1"))
    text = github_actions_matrix_json(cells)
    assert "\n" not in text  # fits one GITHUB_OUTPUT line
    data = json.loads(text)
    assert data == github_actions_matrix(cells)
    assert list(data) == ["include"]
    groups = group_cells(cells)
    assert [entry["group"] for entry in data["include"]] == [g.id for g in groups]
    for entry, group in zip(data["include"], groups, strict=True):
        assert entry["kserve"] == group.release.version and entry["k8s"] == group.kubernetes.version
        ids = entry["cells"].split(",")
        assert ids == [c.id for c in group.cells]
        assert all(matrix.cell(cell_id).group_key == (entry["kserve"], entry["k8s"]) for cell_id in ids)


def test_github_matrix_of_nothing_is_an_empty_include() -> None:
    assert json.loads(github_actions_matrix_json([])) == {"include": []}


# -- any KServe release ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "entry"),
    [("v0.11.1", "v0.11.2"), ("v0.15.0", "v0.15.2"), ("v0.13.0", "v0.13.1"), ("v0.16.1", "v0.16.0"),
     ("v0.14.0-rc1", "v0.14.1"), ("v0.20.3", "v0.20.0")],
)
def test_an_unlisted_release_takes_the_defaults_of_its_lines_latest_patch(
    matrix: Matrix, version: str, entry: str
) -> None:
    release = matrix.release(version)
    base = matrix.release(entry)
    assert release.version == version and release.derived_from == entry
    assert (release.files, release.cert_manager, release.proxy_image, release.profile) == (
        base.files, base.cert_manager, base.proxy_image, base.profile
    )
    assert release.line == base.line and not release.latest_patch


def test_a_listed_release_is_the_files_entry(matrix: Matrix) -> None:
    release = matrix.release("v0.13.0-rc0")
    assert release.derived_from == "" and release.cert_manager == "v1.9.0"
    assert release in matrix.releases


def test_kserve_selection_takes_unlisted_patch_versions(matrix: Matrix) -> None:
    cells = matrix.select(Selection.from_options(kserve="v0.11.1,v0.15.0", proxy="quay-v0.18.0", k8s="1.34"))
    assert [c.id for c in cells] == [
        "kserve-v0.11.1--quay-v0.18.0--k8s-1.34",
        "kserve-v0.15.0--quay-v0.18.0--k8s-1.34",
    ]
    assert [c.release.derived_from for c in cells] == ["v0.11.2", "v0.15.2"]
    assert [g.id for g in group_cells(cells)] == ["kserve-v0.11.1--k8s-1.34", "kserve-v0.15.0--k8s-1.34"]


def test_a_cell_id_may_name_an_unlisted_release(matrix: Matrix) -> None:
    cell = matrix.cell("kserve-v0.15.0--quay-v0.22.1--k8s-1.33--quiet")
    assert (cell.release.version, cell.release.derived_from) == ("v0.15.0", "v0.15.2")
    assert cell.id == "kserve-v0.15.0--quay-v0.22.1--k8s-1.33--quiet"


@pytest.mark.parametrize("version", ["v0.14", "0.14.0", "0.14.0x", "latest", "v0.14.0-beta", "v0.14.0/../x", "V0.14.0"])
def test_a_malformed_release_tag_names_the_input_and_the_expected_form(matrix: Matrix, version: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        Selection.from_options(kserve=version)
    message = usage_error_line(excinfo, f"--kserve {version}", "vMAJOR.MINOR.PATCH[-rcN]")
    assert excinfo.value.exit_code == 2, message
    with pytest.raises(UsageError) as excinfo:
        matrix.release(version)
    usage_error_line(excinfo, version, "vMAJOR.MINOR.PATCH[-rcN]")


@pytest.mark.parametrize(("version", "line"), [("v0.9.0", "v0.9"), ("v0.99.0", "v0.99"), ("v1.0.0", "v1.0")])
def test_a_line_without_an_entry_has_no_defaults(matrix: Matrix, version: str, line: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        matrix.release(version)
    message = usage_error_line(excinfo, f"--kserve {version}")
    assert message == f"--kserve {version}: no defaults for the {line} line; the matrix has v0.10..v0.20"


# -- ad-hoc proxy images (--proxy-image) ----------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "alias"),
    [
        ("quay.io/me/kube-rbac-proxy:v0.18.0-fix1", "adhoc-quay-me-v0.18.0-fix1"),
        ("registry.example:5000/team/kube-rbac-proxy:v0.19.0", "adhoc-registry-5000-team-v0.19.0"),
        ("localhost:5000/kube-rbac-proxy:Fix_2", "adhoc-localhost-5000-fix-2"),
        ("ghcr.io/me/krp-patched:v1", "adhoc-ghcr-me-krp-patched-v1"),
        ("kube-rbac-proxy", "adhoc-docker-library-latest"),
        ("quay.io/me/kube-rbac-proxy@sha256:" + "ab" * 32, "adhoc-quay-me-sha256-abababababab"),
    ],
)
def test_adhoc_alias_is_derived_from_the_reference(reference: str, alias: str) -> None:
    proxy = adhoc_proxy_image(reference)
    assert (proxy.alias, proxy.image, proxy.adhoc) == (alias, reference, True)
    assert adhoc_proxy_image(reference) == proxy  # deterministic
    assert "--" not in proxy.alias and re.fullmatch(r"[a-z0-9.-]+", proxy.alias)


def test_adhoc_image_is_served_unless_its_registry_is_retired() -> None:
    assert adhoc_proxy_image("quay.io/me/kube-rbac-proxy:v0.18.0-fix1").status == "served"
    retired = adhoc_proxy_image("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.2")
    assert retired.retired and "gcr.io/kubebuilder" in retired.note


def test_proxy_image_adds_an_adhoc_cell_whose_id_round_trips(matrix: Matrix) -> None:
    reference = "quay.io/me/kube-rbac-proxy:v0.18.0-fix1"
    selection = Selection.from_options(kserve="v0.15.0", proxy_images=[reference], k8s="1.34")
    [cell] = matrix.select(selection)
    assert cell.id == "kserve-v0.15.0--adhoc-quay-me-v0.18.0-fix1--k8s-1.34"
    assert cell.proxy.image == reference
    again = Selection(cells=(cell.id,), proxy_images=(reference,))
    assert matrix.select(again) == [cell]
    # beside --proxy: both; a reference the file lists keeps its entry
    both = matrix.select(
        Selection.from_options(kserve="v0.15.0", proxy="quay-v0.22.1", proxy_images=[reference, QUAY_PROXY], k8s="1.34")
    )
    assert [c.proxy.alias for c in both] == ["quay-v0.18.0", "quay-v0.22.1", "adhoc-quay-me-v0.18.0-fix1"]


@pytest.mark.parametrize("reference", ["Quay.io//x", "quay.io/Me/kube-rbac-proxy:v1", "quay.io/me/krp:-bad", "a b"])
def test_a_bad_proxy_image_reference_is_one_usage_error_line(reference: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        Selection.from_options(proxy_images=[reference])
    usage_error_line(excinfo, f"--proxy-image {reference}")


def test_adhoc_aliases_that_collide_are_a_usage_error(matrix: Matrix) -> None:
    with pytest.raises(UsageError) as excinfo:
        matrix.select(Selection(proxy_images=("quay.io/me/kube-rbac-proxy:fix_1", "quay.io/me/kube-rbac-proxy:fix-1")))
    usage_error_line(excinfo, "fix-1", "adhoc-quay-me-fix-1")


def test_proxy_binary_must_be_an_executable_file(tmp_path: Path) -> None:
    reference = "quay.io/me/kube-rbac-proxy:v0.18.0-fix1"
    script = tmp_path / "kube-rbac-proxy"
    script.write_text("#!/bin/sh\n")
    for path in (tmp_path / "missing", tmp_path, script):  # absent, a directory, not executable
        with pytest.raises(UsageError) as excinfo:
            Selection.from_options(proxy_images=[reference], proxy_binary=str(path))
        usage_error_line(excinfo, f"--proxy-binary {path}", "expected an executable file")
    script.chmod(0o755)
    selection = Selection.from_options(proxy_images=[reference], proxy_binary=str(script))
    assert selection.proxy_binaries() == {reference: script}
    with pytest.raises(UsageError) as excinfo:
        Selection.from_options(proxy_binary=str(script))
    usage_error_line(excinfo, "--proxy-binary", "exactly one --proxy-image")


# -- unknown names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selection", "named"),
    [
        (Selection(kserve=("v9.9.9",)), "v9.9.9"),
        (Selection(kserve=("v0.14",)), "v0.14"),
        (Selection(proxy=("quay-v9.9.9",)), "quay-v9.9.9"),
        (Selection(k8s=("1.99",)), "1.99"),
        (Selection(variants=("loud",)), "loud"),
        (Selection(cells=("kserve-v0.14.0--quay-v0.18.0--k8s-1.99",)), "kserve-v0.14.0--quay-v0.18.0--k8s-1.99"),
        (Selection(cells=("kserve-v0.14.0--quay-v0.18.0--k8s-1.33--loud",)), "--loud"),
        (Selection(cells=("v0.14.0",)), "v0.14.0"),
    ],
)
def test_unknown_names_are_one_line_usage_errors(matrix: Matrix, selection: Selection, named: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        matrix.select(selection)
    assert excinfo.value.exit_code == 2
    usage_error_line(excinfo, named)


def test_unknown_names_list_what_exists(matrix: Matrix) -> None:
    with pytest.raises(UsageError) as excinfo:
        matrix.proxy("nope")
    usage_error_line(excinfo, "quay-v0.18.0", "gcr-v0.13.1")
    with pytest.raises(UsageError) as excinfo:
        matrix.k8s("1.2")
    usage_error_line(excinfo, *(k.version for k in matrix.kubernetes))
    with pytest.raises(UsageError) as excinfo:
        matrix.cell("kserve-v0.14.0")
    usage_error_line(excinfo, "kserve-<version>--<proxy alias>--k8s-<version>")


# -- malformed matrix files -----------------------------------------------------------------


def test_the_default_file_and_a_copy_load_the_same(tmp_path: Path, raw_matrix: dict[str, Any]) -> None:
    copied = load_matrix(write_matrix(tmp_path, raw_matrix))
    assert copied.releases == load_matrix().releases
    assert copied.source == tmp_path / "matrix.yaml"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as excinfo:
        load_matrix(tmp_path / "nope.yaml")
    usage_error_line(excinfo, "nope.yaml", "not found")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("profiles:\n  default: {}\nreleases: x: y\n", 3),
        ("profiles:\n  default:\n\tnamespace: kserve\n", 3),
        ("releases:\n  - version: v0.14.0\n    files: [kserve.yaml\nkubernetes: []\n", 4),
    ],
)
def test_invalid_yaml_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as excinfo:
        load_matrix(path)
    usage_error_line(excinfo, str(path), f"line {line}", "not valid YAML")


def test_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as excinfo:
        load_matrix(write_matrix(tmp_path, ["releases"]))
    usage_error_line(excinfo, "matrix.yaml", "mapping")


def _broken(raw: dict[str, Any], change: str) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    if change == "no releases":
        del data["releases"]
    elif change == "empty proxy_images":
        data["proxy_images"] = []
    elif change == "no profiles":
        del data["profiles"]
    elif change == "release without proxy_image":
        del data["releases"][0]["proxy_image"]
    elif change == "release without files":
        del data["releases"][0]["files"]
    elif change == "release without kserve.yaml":
        data["releases"][0]["files"] = ["kserve-runtimes.yaml"]
    elif change == "release with a bad version":
        data["releases"][0]["version"] = "0.10.1"
    elif change == "release with an unknown profile":
        data["releases"][0]["profile"] = "legacy"
    elif change == "profile without a field":
        del data["profiles"]["default"]["metrics_service"]
    elif change == "proxy without image":
        del data["proxy_images"][0]["image"]
    elif change == "kubernetes without build":
        del data["kubernetes"][0]["build"]
    elif change == "kubernetes build of another minor":
        data["kubernetes"][0]["build"] = "v1.31.4"
    elif change == "variant without name":
        del data["variants"][0]["name"]
    elif change == "variant security_context not a mapping":
        data["variants"][0]["security_context"] = "restricted"
    elif change == "duplicate release":
        data["releases"].append(copy.deepcopy(data["releases"][1]))
    elif change == "duplicate proxy":
        data["proxy_images"].append(copy.deepcopy(data["proxy_images"][2]))
    elif change == "duplicate kubernetes":
        data["kubernetes"].append(copy.deepcopy(data["kubernetes"][0]))
    elif change == "duplicate variant":
        data["variants"].append(copy.deepcopy(data["variants"][0]))
    elif change == "bad status":
        data["proxy_images"][0]["status"] = "deprecated"
    else:  # pragma: no cover
        raise AssertionError(change)
    return data


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("no releases", ["'releases'"]),
        ("empty proxy_images", ["'proxy_images'"]),
        ("no profiles", ["'profiles'"]),
        ("release without proxy_image", ["'releases'", "'proxy_image'"]),
        ("release without files", ["'releases'", "'files'"]),
        ("release without kserve.yaml", ["v0.10.1", "kserve.yaml"]),
        ("release with an unknown profile", ["v0.10.1", "legacy"]),
        ("profile without a field", ["default", "metrics_service"]),
        ("proxy without image", ["'proxy_images'", "'image'"]),
        ("kubernetes without build", ["'kubernetes 1.32'", "'build'"]),
        ("kubernetes build of another minor", ["kubernetes 1.32", "v1.31.4", "a patch of 1.32"]),
        ("variant without name", ["'variants'", "'name'"]),
        ("variant security_context not a mapping", ["drop-logtostderr", "security_context"]),
        ("duplicate release", ["'releases'", "v0.11.2", "twice"]),
        ("duplicate proxy", ["'proxy_images'", "quay-v0.13.1", "twice"]),
        ("duplicate kubernetes", ["'kubernetes'", "1.32", "twice"]),
        ("duplicate variant", ["'variants'", "drop-logtostderr", "twice"]),
        ("bad status", ["gcr-v0.13.1", "status"]),
    ],
)
def test_malformed_matrix_is_one_usage_error_line(
    tmp_path: Path, raw_matrix: dict[str, Any], change: str, named: list[str]
) -> None:
    path = write_matrix(tmp_path, _broken(raw_matrix, change))
    with pytest.raises(UsageError) as excinfo:
        load_matrix(path)
    usage_error_line(excinfo, str(path), *named)


def test_release_with_a_bad_version_is_one_usage_error_line(tmp_path: Path, raw_matrix: dict[str, Any]) -> None:
    with pytest.raises(UsageError) as excinfo:
        load_matrix(write_matrix(tmp_path, _broken(raw_matrix, "release with a bad version")))
    usage_error_line(excinfo, "'0.10.1'", "vMAJOR.MINOR.PATCH")


def test_release_with_a_bad_version_names_the_matrix_file(tmp_path: Path, raw_matrix: dict[str, Any]) -> None:
    path = write_matrix(tmp_path, _broken(raw_matrix, "release with a bad version"))
    with pytest.raises(UsageError) as excinfo:
        load_matrix(path)
    usage_error_line(excinfo, str(path), "0.10.1")


def test_unquoted_kubernetes_version_is_not_mangled(tmp_path: Path, raw_matrix: dict[str, Any]) -> None:
    text = yaml.safe_dump(raw_matrix, sort_keys=False).replace("version: '1.33'", "version: 1.30")
    assert "version: 1.30\n" in text
    path = tmp_path / "matrix.yaml"
    path.write_text(text)
    try:
        loaded = load_matrix(path)
    except UsageError as exc:  # rejecting it, naming the value, is fine too
        assert "1.3" in str(exc) and "\n" not in str(exc)
        return
    assert "1.30" in {k.version for k in loaded.kubernetes}


def test_variant_args_as_a_string_are_not_split_into_characters(tmp_path: Path, raw_matrix: dict[str, Any]) -> None:
    data = copy.deepcopy(raw_matrix)
    http2 = next(v for v in data["variants"] if v["name"] == "http2-disable")
    http2["args_add"] = "--http2-disable"
    path = write_matrix(tmp_path, data)
    try:
        loaded = load_matrix(path)
    except UsageError as exc:  # rejecting it, naming the variant, is fine too
        assert "http2-disable" in str(exc) and "\n" not in str(exc)
        return
    assert loaded.variant("http2-disable").args_add == ("--http2-disable",)


def test_list_options_take_repeats_and_commas_alike() -> None:
    repeated = Selection.from_options(kserve=["v0.14.0", "v0.15.0,v0.20.0"], proxy=["quay-v0.22.1"], k8s=["1.34"])
    commas = Selection.from_options(kserve="v0.14.0,v0.15.0,v0.20.0", proxy="quay-v0.22.1", k8s="1.34")
    assert repeated == commas
    assert repeated.kserve == ("v0.14.0", "v0.15.0", "v0.20.0")
    assert Selection.from_options(kserve=["v0.14.0", "v0.14.0"]).kserve == ("v0.14.0",)


@pytest.mark.parametrize("option", ["kserve", "proxy", "k8s"])
def test_cell_with_a_selection_option_it_would_override_is_refused(option: str) -> None:
    with pytest.raises(UsageError, match=rf"--cell kserve-v0.14.0--quay-v0.22.1--k8s-1.34: names exact cells, "
                                         rf"so --{option} would be ignored"):
        Selection.from_options(cells=["kserve-v0.14.0--quay-v0.22.1--k8s-1.34"], **{option: "x"})
