"""Reports: JSON round trip and shard merging, the grid, recommendations, HTML, JUnit, exit codes.

Sample results are built the way an e2e run builds them; no cluster is involved.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers.paths import REPO

from e2e import report
from e2e.cli import COMMANDS
from e2e.errors import UsageError
from e2e.matrix import Matrix, load_matrix
from e2e.pytest_report import record
from e2e.results import CellResult, CheckResult, CheckStatus, SecurityFinding, Verdict
from e2e.secrets import register

# Long and JWT-shaped, as a real ServiceAccount token is; never a real credential.
FAKE_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJmYWtlLWJ1dC1sb25nLXRva2VuIn0.ZmFrZS1zaWduYXR1cmUtZm9yLXRlc3Rz"

IMAGES = {
    "gcr-v0.13.1": "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1",
    "k8s-v0.13.1": "registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1",
    "quay-v0.13.1": "quay.io/brancz/kube-rbac-proxy:v0.13.1",
    "quay-v0.18.0": "quay.io/brancz/kube-rbac-proxy:v0.18.0",
    "quay-v0.18.2": "quay.io/brancz/kube-rbac-proxy:v0.18.2",
    "quay-v0.22.1": "quay.io/brancz/kube-rbac-proxy:v0.22.1",
}
PASSING_CHECKS = (
    ("image-in-use", "pod runs the patched image"),
    ("metrics-no-token", "expected 401, got 401"),
    ("metrics-no-rbac", "expected 403, got 403"),
    ("metrics-with-rbac", "expected 200 with controller_runtime_reconcile_total, got 200"),
    ("inference-v1", "predictions [1, 1]"),
)


def cell(
    kserve: str,
    alias: str,
    verdict: Verdict = Verdict.PASS,
    *,
    k8s: str = "1.34",
    provider: str = "kind",
    variant: str = "",
    leak: bool = False,
    failing: tuple[str, str] | None = None,
    reason: str = "",
    started_at: float = 1_700_000_000.0,
) -> CellResult:
    cell_id = f"kserve-{kserve}--{alias}--k8s-{k8s}" + (f"--{variant}" if variant else "")
    result = CellResult(
        cell_id=cell_id,
        provider=provider,
        kserve_version=kserve,
        proxy_alias=alias,
        proxy_image=IMAGES[alias],
        kubernetes_version=k8s,
        variant=variant,
        reason=reason,
        started_at=started_at,
        duration_s=42.5,
    )
    if verdict in (Verdict.PASS, Verdict.FAIL, Verdict.ERROR):
        for name, detail in PASSING_CHECKS:
            result.add(CheckResult(name, CheckStatus.PASS, detail))
    if failing is not None:
        status = CheckStatus.ERROR if verdict is Verdict.ERROR else CheckStatus.FAIL
        result.add(CheckResult(failing[0], status, failing[1], evidence=["proxy log: E1127 dial tcp refused"]))
    if leak:
        result.findings.append(
            SecurityFinding("token-leak", "the caller's bearer token appears in the proxy's logs at --v=10")
        )
    result.verdict = verdict
    result.conclude()
    return result


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return load_matrix()


@pytest.fixture
def sample() -> list[CellResult]:
    """A realistic spread: every verdict, a leak, a variant, a local-tier group."""
    return [
        cell("v0.12.1", "gcr-v0.13.1", Verdict.IMAGE_UNAVAILABLE, reason="ErrImagePull: gcr.io/kubebuilder: 404"),
        cell("v0.12.1", "k8s-v0.13.1", leak=True),
        cell("v0.12.1", "quay-v0.18.2"),
        cell("v0.12.1", "quay-v0.22.1"),
        cell("v0.14.1", "quay-v0.18.0", leak=True),
        cell("v0.14.1", "quay-v0.18.2"),
        cell("v0.14.1", "quay-v0.22.1", Verdict.FAIL, failing=("metrics-no-token", "expected 401, got 500")),
        cell("v0.20.0", "quay-v0.22.1", Verdict.ERROR, failing=("rollout", "TimeoutError: rollout did not finish")),
        cell("v0.20.0", "quay-v0.18.2"),
        cell("v0.20.0", "quay-v0.13.1", Verdict.SKIPPED, reason="--allow-paths not supported before v0.14"),
        cell("v0.14.1", "quay-v0.18.0", variant="quiet"),
    ]


# -- JSON ---------------------------------------------------------------------------


def test_save_result_round_trips_through_json(tmp_path: Path) -> None:
    original = cell("v0.14.1", "quay-v0.22.1", Verdict.FAIL, failing=("metrics-no-token", "expected 401, got 500"))
    original.deviations.append("admission webhooks removed")

    path = report.save_result(original, tmp_path)

    assert path == tmp_path / f"{original.cell_id}.json"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    (loaded,) = report.load_results([path])
    assert loaded.to_dict() == original.to_dict()
    assert loaded.verdict is Verdict.FAIL and loaded.failing_check is not None


def test_a_cell_id_that_is_not_a_file_name_is_refused(tmp_path: Path) -> None:
    result = cell("v0.14.1", "quay-v0.18.2")
    result.cell_id = "../escape"

    with pytest.raises(UsageError, match="expected a file name"):
        report.save_result(result, tmp_path / "results")
    assert not (tmp_path / "escape.json").exists()


def test_shards_in_two_directories_merge_and_the_newer_duplicate_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "shard-1", tmp_path / "shard-2"
    old = cell("v0.14.1", "quay-v0.18.2", Verdict.FAIL, failing=("metrics-no-token", "got 500"), started_at=100.0)
    new = cell("v0.14.1", "quay-v0.18.2", started_at=200.0)
    other = cell("v0.12.1", "quay-v0.22.1")
    report.save_result(new, first)
    report.save_result(other, first)
    report.save_result(old, second)  # a re-run shard that happens to be older

    for order in ([first, second], [second, first]):
        merged = report.load_results(order)
        assert sorted(r.cell_id for r in merged) == sorted([new.cell_id, other.cell_id])
        assert next(r for r in merged if r.cell_id == new.cell_id).verdict is Verdict.PASS


def test_same_cell_on_two_providers_stays_two_results(tmp_path: Path) -> None:
    report.save_result(cell("v0.14.1", "quay-v0.18.2", provider="kind"), tmp_path / "kind")
    report.save_result(cell("v0.14.1", "quay-v0.18.2", provider="local"), tmp_path / "local")

    merged = report.load_results([tmp_path / "kind", tmp_path / "local"])

    assert [r.provider for r in merged] == ["kind", "local"]


def test_merged_report_json_is_itself_an_input(tmp_path: Path, sample: list[CellResult]) -> None:
    paths = report.write_reports(sample, tmp_path / "out")

    again = report.load_results([paths["json"]])

    assert sorted(r.to_dict()["cell_id"] for r in again) == sorted(r.cell_id for r in sample)


def test_malformed_json_is_a_one_line_usage_error_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "kserve-v0.14.1--quay-v0.18.2--k8s-1.34.json"
    broken.write_text('{"cell_id": "x",\n  oops')

    with pytest.raises(UsageError) as raised:
        report.load_results([tmp_path])

    assert str(broken) in str(raised.value) and "\n" not in str(raised.value)


def test_a_named_json_file_that_is_not_a_cell_result_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text('{"include": []}')

    with pytest.raises(UsageError, match=r"other\.json: expected a cell result"):
        report.load_results([tmp_path / "other.json"])


def test_other_json_in_a_results_directory_is_passed_over(tmp_path: Path, sample: list[CellResult]) -> None:
    # kind's exported logs hold JSON of their own (a node's inspect.json) beside the results.
    report.save_result(sample[0], tmp_path)
    (tmp_path / "diagnostics" / "kind" / "node").mkdir(parents=True)
    (tmp_path / "diagnostics" / "kind" / "node" / "inspect.json").write_text('[{"Id": "abc"}]')
    (tmp_path / "other.json").write_text('{"include": []}')

    assert [r.cell_id for r in report.load_results([tmp_path])] == [sample[0].cell_id]


def test_a_directory_with_only_other_json_has_no_results(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text('{"include": []}')

    with pytest.raises(UsageError, match="no result JSON files found"):
        report.load_results([tmp_path])


def test_results_are_read_from_every_group_folder_below_the_directory(
    tmp_path: Path, sample: list[CellResult]
) -> None:
    # The CI summary job's layout: each group's artifact holds reports/<group>/..., merged.
    for index, result in enumerate(sample):
        report.save_result(result, tmp_path / "reports" / f"group-{index % 2}")

    loaded = report.load_results([tmp_path / "reports"])

    assert sorted((r.provider, r.cell_id) for r in loaded) == sorted({(r.provider, r.cell_id) for r in sample})


def test_missing_path_and_empty_directory_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file or directory"):
        report.load_results([tmp_path / "nope"])
    with pytest.raises(UsageError, match="no result JSON files found"):
        report.load_results([tmp_path])


# -- the grid -------------------------------------------------------------------------


def _grid_rows(markdown: str) -> dict[str, list[str]]:
    """The first grid's rows: KServe version -> cell texts."""
    rows: dict[str, list[str]] = {}
    for line in markdown.splitlines():
        if line.startswith("| v"):
            name, *cells = [part.strip() for part in line.strip("|").split("|")]
            rows.setdefault(name, cells)
    return rows


def _grid_header(markdown: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith("| KServe |"))
    return [part.strip() for part in line.strip("|").split("|")][1:]


def test_grid_shows_one_symbol_per_verdict_and_the_security_marker_apart(
    sample: list[CellResult], matrix: Matrix
) -> None:
    kind_134 = [r for r in sample if not r.variant]

    grid = report.markdown_grid(kind_134, matrix)

    header = _grid_header(grid)
    rows = _grid_rows(grid)
    at = {alias: header.index(alias) for alias in header}
    assert rows["v0.12.1"][at["gcr-v0.13.1"]] == "🚫"
    assert rows["v0.12.1"][at["k8s-v0.13.1"]] == "✅ 🔓"  # compatible, and leaking: both shown
    assert rows["v0.12.1"][at["quay-v0.22.1"]] == "✅"
    assert rows["v0.14.1"][at["quay-v0.22.1"]] == "❌"
    assert rows["v0.20.0"][at["quay-v0.22.1"]] == "⚠️"
    assert rows["v0.20.0"][at["quay-v0.13.1"]] == "⏭️"
    assert rows["v0.12.1"][at["quay-v0.18.0"]] == "—"  # not run


def test_grid_has_a_legend_for_every_symbol(sample: list[CellResult]) -> None:
    grid = report.markdown_grid(sample)

    legend = next(line for line in grid.splitlines() if line.startswith("**Legend:**"))
    for symbol in ("✅", "❌", "🚫", "⚠️", "⏭️", "—", "🔓"):
        assert symbol in legend


def test_grid_rows_sort_by_semver_and_columns_follow_the_matrix(matrix: Matrix) -> None:
    results = [cell("v0.10.1", "quay-v0.22.1"), cell("v0.9.0", "gcr-v0.13.1"), cell("v0.10.1", "k8s-v0.13.1")]

    grid = report.markdown_grid(results, matrix)

    assert list(_grid_rows(grid)) == ["v0.9.0", "v0.10.1"]  # not string order
    assert _grid_header(grid) == ["gcr-v0.13.1", "k8s-v0.13.1", "quay-v0.22.1"]


def test_one_grid_per_provider_kubernetes_version_and_variant(sample: list[CellResult]) -> None:
    rollback = cell("v0.14.0", "quay-v0.22.1")
    rollback.variant = rollback.scenario = "rollback"  # a scenario's own grid (CellRun: grid="rollback")
    results = [*sample, cell("v0.10.1", "quay-v0.18.2", provider="local", k8s="1.33"), rollback]

    grid = report.markdown_grid(results)

    titles = [line for line in grid.splitlines() if line.startswith("### ")]
    assert titles == [
        "### kind · Kubernetes 1.34",
        "### kind · Kubernetes 1.34 · variant quiet",
        "### kind · Kubernetes 1.34 · rollback scenario",
        "### local · Kubernetes 1.33",
    ]


def test_failing_check_detail_and_findings_are_listed_under_the_grid(sample: list[CellResult]) -> None:
    grid = report.markdown_grid(sample)

    table_end = max(i for i, line in enumerate(grid.splitlines()) if line.startswith("| v"))
    below = "\n".join(grid.splitlines()[: table_end + 40])
    failing = next(line for line in below.splitlines() if "kserve-v0.14.1--quay-v0.22.1--k8s-1.34`" in line)
    assert "`metrics-no-token`" in failing and "expected 401, got 500" in failing and "❌ fail" in failing
    error = next(line for line in grid.splitlines() if "kserve-v0.20.0--quay-v0.22.1" in line)
    assert "`rollout`" in error and "TimeoutError" in error
    skipped = next(line for line in grid.splitlines() if "kserve-v0.20.0--quay-v0.13.1" in line)
    assert "--allow-paths not supported" in skipped
    unavailable = next(line for line in grid.splitlines() if "kserve-v0.12.1--gcr-v0.13.1" in line)
    assert "expected: retired registry" in unavailable
    assert "**Security findings:**" in grid
    leak = next(line for line in grid.splitlines() if "🔓 `token-leak`" in line)
    assert "kserve-v0.12.1--k8s-v0.13.1--k8s-1.34" in leak


def test_deviations_and_notes_appear_once_per_group() -> None:
    results = [cell("v0.10.1", alias, provider="local") for alias in ("quay-v0.18.2", "quay-v0.22.1")]
    for result in results:
        result.deviations.append("admission webhooks removed")
        result.notes.append("proxy port 8443 remapped to 127.0.0.1:18443")

    grid = report.markdown_grid(results)

    assert grid.count("admission webhooks removed") == 1
    assert grid.count("remapped to 127.0.0.1:18443") == 1


def test_markdown_free_text_cannot_break_the_table_or_hide_as_html() -> None:
    result = cell("v0.10.1", "quay-v0.18.2")
    result.deviations.append("a | b <em>c</em>")

    grid = report.markdown_grid([result])

    assert "a \\| b \\<em\\>c\\</em\\>" in grid


# -- recommendations ------------------------------------------------------------------


def test_recommendations_newest_first_then_quay_then_registry_k8s_then_gcr(matrix: Matrix) -> None:
    results = [
        cell("v0.12.1", "gcr-v0.13.1"),  # e.g. the local tier, which builds from source
        cell("v0.12.1", "k8s-v0.13.1"),
        cell("v0.12.1", "quay-v0.13.1"),
        cell("v0.12.1", "quay-v0.18.2"),
        cell("v0.12.1", "quay-v0.22.1"),
        cell("v0.12.1", "quay-v0.18.0", leak=True),  # passes, but leaks: not recommended
        cell("v0.12.1", "quay-v0.22.1", k8s="1.33"),
        cell("v0.14.1", "quay-v0.22.1", Verdict.FAIL, failing=("metrics-no-token", "got 500")),
        cell("v0.14.1", "quay-v0.22.1", k8s="1.33"),  # passed on one version only: not recommended
        cell("v0.14.1", "quay-v0.18.2", variant="quiet"),  # variants do not count
    ]

    recs = report.recommendations(results, matrix)

    assert [(r.kserve_version, r.rank, r.proxy_alias) for r in recs] == [
        ("v0.12.1", 1, "quay-v0.22.1"),
        ("v0.12.1", 2, "quay-v0.18.2"),
        ("v0.12.1", 3, "quay-v0.13.1"),
        ("v0.12.1", 4, "k8s-v0.13.1"),
        ("v0.12.1", 5, "gcr-v0.13.1"),
    ]
    assert recs[0].cells == (
        "kind/kserve-v0.12.1--quay-v0.22.1--k8s-1.34",
        "kind/kserve-v0.12.1--quay-v0.22.1--k8s-1.33",
    )


def test_recommendation_commands_for_a_chart_without_the_helm_value(matrix: Matrix) -> None:
    (rec,) = report.recommendations([cell("v0.12.1", "quay-v0.18.2")], matrix)

    assert rec.kubectl_commands[0] == (
        "kubectl -n kserve patch deployment kserve-controller-manager --type strategic -p "
        '\'{"spec":{"template":{"spec":{"containers":[{"name":"kube-rbac-proxy",'
        '"image":"quay.io/brancz/kube-rbac-proxy:v0.18.2"}]}}}}\''
    )
    assert rec.helm_command is None
    assert "no value for the proxy image" in rec.helm_note and "kustomize" in rec.helm_note
    assert rec.kustomize_images == (
        "images:\n"
        "  - name: gcr.io/kubebuilder/kube-rbac-proxy\n"
        "    newName: quay.io/brancz/kube-rbac-proxy\n"
        "    newTag: v0.18.2"
    )
    assert rec.shipped_image == "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"


def test_recommendation_uses_the_helm_value_from_v0_20_and_keeps_the_name(matrix: Matrix) -> None:
    (rec,) = report.recommendations([cell("v0.20.0", "quay-v0.18.2")], matrix)

    assert rec.helm_command is not None
    assert "--set kserve.controller.rbacProxyImage=quay.io/brancz/kube-rbac-proxy:v0.18.2" in rec.helm_command
    assert "--version v0.20.0" in rec.helm_command
    assert rec.kustomize_images == "images:\n  - name: quay.io/brancz/kube-rbac-proxy\n    newTag: v0.18.2"


def test_recommendation_commands_use_the_matrix_profile(matrix: Matrix) -> None:
    release = matrix.release("v0.14.1")
    renamed = dataclasses.replace(
        release.profile, namespace="ml-serving", deployment="kserve-ctrl", proxy_container="rbac-proxy"
    )
    custom = dataclasses.replace(matrix, releases=(dataclasses.replace(release, profile=renamed),))

    (rec,) = report.recommendations([cell("v0.14.1", "quay-v0.18.2")], custom)

    assert rec.kubectl_commands[0].startswith("kubectl -n ml-serving patch deployment kserve-ctrl ")
    assert '"name":"rbac-proxy"' in rec.kubectl_commands[0]
    assert rec.kubectl_commands[1] == "kubectl -n ml-serving rollout status deployment/kserve-ctrl"


def test_markdown_report_has_the_recommendation_section(sample: list[CellResult], matrix: Matrix) -> None:
    markdown = report.markdown_report(sample, matrix)

    section = markdown.split("## Recommended proxy image per KServe release", 1)[1]
    assert "| v0.12.1 | `quay.io/brancz/kube-rbac-proxy:v0.22.1` | quay-v0.18.2 |" in section
    assert "| v0.14.1 | `quay.io/brancz/kube-rbac-proxy:v0.18.2` |" in section
    assert "kubectl -n kserve patch deployment kserve-controller-manager" in section
    assert "newTag: v0.22.1" in section


def test_a_release_with_no_clean_image_says_so(matrix: Matrix) -> None:
    markdown = report.markdown_report([cell("v0.14.1", "quay-v0.18.0", leak=True)], matrix)

    assert "| v0.14.1 | none passed cleanly |" in markdown


# -- HTML -----------------------------------------------------------------------------


class _PageChecker(HTMLParser):
    VOID = frozenset({"meta", "br", "hr", "img", "link", "input", "col", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.mismatches: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(attrs)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.mismatches.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_self_contained_balanced_and_escapes_markup(sample: list[CellResult], matrix: Matrix) -> None:
    sample[6].checks[-1].detail = "expected 401, got <script>alert(1)</script>"

    page = report.html_report(sample, matrix)

    checker = _PageChecker()
    checker.feed(page)
    checker.close()
    assert checker.mismatches == [] and checker.open == []
    assert "script" not in checker.tags and "link" not in checker.tags
    assert not [value for name, value in checker.attributes if name == "src"]
    # Links stay inside the page: each grid cell points at its own details.
    links = [value for name, value in checker.attributes if name == "href"]
    ids = {value for name, value in checker.attributes if name == "id"}
    assert links and all(link.startswith("#") and link[1:] in ids for link in links)
    assert len(links) == len(sample)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    text = "".join(checker.text)
    assert "<script>alert(1)</script>" in text  # shown to the reader as text
    assert "Recommended proxy image per KServe release" in text and "🔓" in text


# -- JUnit ----------------------------------------------------------------------------


def test_junit_has_one_testcase_per_cell_with_the_documented_outcomes(
    tmp_path: Path, sample: list[CellResult], matrix: Matrix
) -> None:
    sample.append(cell("v0.14.1", "quay-v0.18.2", Verdict.IMAGE_UNAVAILABLE, k8s="1.33", reason="quay.io 502"))

    path = report.write_junit(sample, tmp_path / "junit.xml", matrix)

    root = ET.parse(path).getroot()
    cases = {case.get("name"): case for case in root.iter("testcase")}
    assert len(cases) == len(sample) == int(root.get("tests", "0"))
    assert cases["kserve-v0.14.1--quay-v0.22.1--k8s-1.34"].find("failure") is not None
    assert cases["kserve-v0.20.0--quay-v0.22.1--k8s-1.34"].find("error") is not None
    assert cases["kserve-v0.20.0--quay-v0.13.1--k8s-1.34"].find("skipped") is not None
    retired = cases["kserve-v0.12.1--gcr-v0.13.1--k8s-1.34"]
    assert retired.find("skipped") is not None and retired.find("failure") is None
    assert cases["kserve-v0.14.1--quay-v0.18.2--k8s-1.33"].find("failure") is not None  # served image: a failure
    passing = cases["kserve-v0.12.1--quay-v0.22.1--k8s-1.34"]
    assert [child.tag for child in passing] == ["properties"]
    leaking = cases["kserve-v0.12.1--k8s-v0.13.1--k8s-1.34"]
    properties = {p.get("name"): p.get("value") for p in leaking.iter("property")}
    assert properties["verdict"] == "pass" and properties["security_findings"] == "1"
    assert "token-leak" in (leaking.findtext("system-out") or "")
    assert (root.get("failures"), root.get("errors"), root.get("skipped")) == ("2", "1", "2")


def test_junit_properties_name_the_cell_versions_verdict_and_checks() -> None:
    result = cell("v0.14.1", "quay-v0.22.1", Verdict.FAIL, failing=("metrics-no-token", "expected 401, got 500"))

    properties = dict(report.junit_properties(result))

    assert properties["cell_id"] == "kserve-v0.14.1--quay-v0.22.1--k8s-1.34"
    assert properties["provider"] == "kind"
    assert properties["kserve_version"] == "v0.14.1" and properties["kubernetes_version"] == "1.34"
    assert properties["proxy_image"] == "quay.io/brancz/kube-rbac-proxy:v0.22.1"
    assert properties["verdict"] == "fail"
    assert properties["check.metrics-no-token"] == "fail: expected 401, got 500"
    assert properties["check.inference-v1"] == "pass: predictions [1, 1]"
    assert properties["security_findings"] == "0"


def test_pytest_glue_records_properties_and_saves_the_cell(tmp_path: Path) -> None:
    recorded: list[tuple[str, object]] = []
    result = cell("v0.14.1", "quay-v0.18.2")

    saved = record(result, lambda name, value: recorded.append((name, value)), save_to=tmp_path)

    assert ("verdict", "pass") in recorded and ("cell_id", result.cell_id) in recorded
    assert saved == tmp_path / f"{result.cell_id}.json" and saved.is_file()
    assert record(result, lambda name, value: None) is None


# -- secrets --------------------------------------------------------------------------


def test_a_registered_token_never_reaches_any_output(
    tmp_path: Path, sample: list[CellResult], matrix: Matrix, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(FAKE_TOKEN)
    leaky = sample[1]
    # Appended after construction, where the model's own redaction no longer reaches.
    leaky.checks[0].detail = f"Authorization: Bearer {FAKE_TOKEN}"
    leaky.checks[0].evidence.append(f'I1127 request body {{"spec":{{"token":"{FAKE_TOKEN}"}}}}')
    leaky.findings[0].evidence.append(f"token={FAKE_TOKEN}")
    leaky.findings[0].detail = f"saw {FAKE_TOKEN} in the logs"
    leaky.notes.append(f"kubeconfig token {FAKE_TOKEN}")
    sample[6].checks[-1].detail = f"got 500 for {FAKE_TOKEN}"
    sample[6].checks[-1].evidence.append(base64.b64encode(FAKE_TOKEN.encode()).decode())
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))

    outputs = {
        "saved": report.save_result(leaky, tmp_path / "cells").read_text(),
        "markdown": report.markdown_report(sample, matrix),
        "html": report.html_report(sample, matrix),
        "junit-properties": json.dumps([report.junit_properties(r) for r in sample]),
    }
    for kind, path in report.write_reports(sample, tmp_path / "out", matrix).items():
        outputs[kind] = path.read_text()
    report.step_summary(outputs["markdown"])
    outputs["step-summary"] = summary.read_text()

    secret_forms = (FAKE_TOKEN, base64.b64encode(FAKE_TOKEN.encode()).decode(), FAKE_TOKEN[:40])
    for kind, text in outputs.items():
        for form in secret_forms:
            assert form not in text, f"{kind} leaks the token"
    assert "redacted" in outputs["markdown"] and "&lt;redacted&gt;" in outputs["html"]
    json.loads(outputs["json"])  # redaction kept the JSON valid
    ET.fromstring(outputs["junit"])


# -- step summary, exit codes ---------------------------------------------------------


def test_step_summary_appends_only_when_github_sets_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert report.step_summary("# grid") is None

    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert report.step_summary("# grid") == summary
    assert summary.read_text() == "earlier step\n# grid\n\n"


@pytest.mark.parametrize(
    ("results", "strict", "expected"),
    [
        pytest.param([cell("v0.14.1", "quay-v0.18.2")], False, 0, id="pass"),
        pytest.param([cell("v0.14.1", "quay-v0.18.2", Verdict.SKIPPED, reason="not selected")], False, 0, id="skip"),
        pytest.param([cell("v0.14.1", "quay-v0.18.2", Verdict.SKIPPED)], False, 1, id="skip-without-reason"),
        pytest.param([cell("v0.14.1", "quay-v0.18.2", Verdict.FAIL, failing=("c", "500"))], False, 1, id="fail"),
        pytest.param([cell("v0.14.1", "quay-v0.18.2", Verdict.ERROR, reason="boom")], False, 1, id="error"),
        pytest.param([cell("v0.12.1", "gcr-v0.13.1", Verdict.IMAGE_UNAVAILABLE, reason="404")], False, 0, id="retired"),
        pytest.param([cell("v0.12.1", "quay-v0.22.1", Verdict.IMAGE_UNAVAILABLE, reason="502")], False, 1, id="served"),
        pytest.param([cell("v0.14.1", "quay-v0.18.0", leak=True)], False, 0, id="leak"),
        pytest.param([cell("v0.14.1", "quay-v0.18.0", leak=True)], True, 1, id="leak-strict"),
    ],
)
def test_exit_code(results: list[CellResult], strict: bool, expected: int, matrix: Matrix) -> None:
    assert report.exit_code(results, strict=strict, matrix=matrix) == expected


def test_retired_image_is_recognised_without_a_matrix() -> None:
    unavailable = cell("v0.12.1", "gcr-v0.13.1", Verdict.IMAGE_UNAVAILABLE, reason="404")

    assert report.exit_code([unavailable], strict=False) == 0


# -- the command line -----------------------------------------------------------------


# The CLI imports every subcommand's module to build its parser. While the shared tree lacks
# some of them, drive the same ``e2e.cli.main`` with those commands left out.
_WITHOUT_MISSING_COMMANDS = """
import importlib.util, sys
from e2e import cli
for name, (module, _) in list(cli.COMMANDS.items()):
    if importlib.util.find_spec(module) is None:
        del cli.COMMANDS[name]
sys.exit(cli.main(sys.argv[1:]))
"""


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    complete = all(importlib.util.find_spec(module) is not None for module, _ in COMMANDS.values())
    entry = ["-m", "e2e.cli"] if complete else ["-c", _WITHOUT_MISSING_COMMANDS]
    environment = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"} | (env or {})
    return subprocess.run(
        [sys.executable, *entry, "report", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )


def _save_all(results: list[CellResult], directory: Path) -> Path:
    for result in results:
        report.save_result(result, directory)
    return directory


def test_cli_writes_every_format_prints_markdown_and_fails_on_a_failing_cell(
    tmp_path: Path, sample: list[CellResult]
) -> None:
    shards = [_save_all(sample[:5], tmp_path / "shard-1"), _save_all(sample[5:], tmp_path / "shard-2")]
    summary = tmp_path / "summary.md"

    done = _cli(*map(str, shards), "--out", str(tmp_path / "out"), env={"GITHUB_STEP_SUMMARY": str(summary)})

    assert done.returncode == 1, done.stderr
    assert "## Recommended proxy image per KServe release" in done.stdout
    assert "| v0.14.1 |" in done.stdout
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["junit.xml", "report.html", "report.json", "report.md"]
    assert len(json.loads((tmp_path / "out" / "report.json").read_text())) == len(sample)
    assert "# KServe and kube-rbac-proxy compatibility" in summary.read_text()


def test_cli_exits_zero_when_clean_and_nonzero_with_strict_on_a_leak(tmp_path: Path) -> None:
    clean = [
        cell("v0.14.1", "quay-v0.18.2"),
        cell("v0.14.1", "quay-v0.18.0", leak=True),
        cell("v0.12.1", "gcr-v0.13.1", Verdict.IMAGE_UNAVAILABLE, reason="ErrImagePull"),
    ]
    results = _save_all(clean, tmp_path / "results")

    assert _cli(str(results), "--out", str(tmp_path / "out")).returncode == 0
    strict = _cli(str(results), "--out", str(tmp_path / "out"), "--strict")
    assert strict.returncode == 1
    assert "1 of 3 cells fail the run" in strict.stderr


def test_cli_missing_directory_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    done = _cli(str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "nowhere: no such file or directory" in done.stderr


def test_cli_bad_matrix_file_is_one_line_exit_2(tmp_path: Path) -> None:
    results = _save_all([cell("v0.14.1", "quay-v0.18.2")], tmp_path / "results")

    done = _cli(str(results), "--matrix", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "out"))

    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "none.yaml" in done.stderr


def test_report_files_are_readable_by_the_users_group(tmp_path: Path, sample: list[CellResult]) -> None:
    paths = report.write_reports(sample, tmp_path)
    saved = report.save_result(sample[0], tmp_path / "one")
    for path in [*paths.values(), saved]:
        assert path.stat().st_mode & 0o777 == 0o644, path.name


def test_html_sets_an_expected_verdict_apart_from_a_failure(sample: list[CellResult], matrix: Matrix) -> None:
    page = report.html_report(sample, matrix)
    retired = re.search(r'<td class="([^"]*)" title="kserve-v0\.12\.1--gcr-v0\.13\.1--k8s-1\.34[^"]*">', page)
    failed = re.search(r'<td class="([^"]*)" title="kserve-v0\.14\.1--quay-v0\.22\.1--k8s-1\.34[^"]*">', page)
    assert retired and failed
    assert retired.group(1).split() == ["image-unavailable", "expected"]
    assert failed.group(1).split() == ["fail"]
    css_rule = re.search(r"td\.image-unavailable\.expected \{ background: (#[0-9a-f]+)", page)
    assert css_rule and css_rule.group(1) != "#ffebe9"  # not the failure's red
    details = page.split('id="cell-kind-kserve-v0.14.1--quay-v0.22.1--k8s-1.34"')[1].split("</details>")[0]
    assert "metrics-no-token" in details and "expected 401, got 500" in details


def test_a_migration_cell_shows_its_traffic_over_time_as_a_chart(sample: list[CellResult], matrix: Matrix) -> None:
    migration = sample[0]
    migration.traffic = [[0.0, 2, 0, 4, 0], [0.5, 0, 2, 4, 0], [1.0, 1, 1, 4, 0], [1.5, 2, 0, 4, 0]]
    migration.traffic_marks = {"swap": 0.4, "rolled out": 1.3}
    page = report.html_report(sample, matrix)
    checker = _PageChecker()
    checker.feed(page)
    checker.close()
    assert checker.mismatches == [] and checker.open == []
    assert page.count("<svg") == 1 and "script" not in checker.tags  # only the migration cell has one
    chart = page[page.index("<svg"): page.index("</svg>")]
    assert chart.count('fill="#cf222e"') == 2  # the two buckets with failed metrics requests
    assert "0.5 s: 2 failed" in chart and "swap 0.4 s" in chart and "rolled out 1.3 s" in chart
    assert ">inference<" in chart and ">metrics<" in chart
    assert CellResult.from_dict(migration.to_dict()).traffic == migration.traffic  # saved and read back
