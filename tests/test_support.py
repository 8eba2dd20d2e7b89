"""Which Kubernetes minors each KServe release supports (e2e/support.py): read from go.mod,
marked in the plan, the matrix listing and the report."""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from e2e import support
from e2e.availability import unavailable
from e2e.data import SUPPORT_FILE
from e2e.matrix import MatrixCell, load_matrix
from e2e.report import html_report, markdown_report
from e2e.results import CellResult, CheckResult, CheckStatus, Verdict
from e2e.support import ReleaseSupport, Support

MATRIX = load_matrix()

GO_MOD_REPLACED = """module github.com/kserve/kserve

go 1.25.8

require (
\tistio.io/client-go v1.27.1
\tk8s.io/api v0.35.3
\tk8s.io/client-go v0.35.3
)

replace (
\tk8s.io/api => k8s.io/api v0.34.5
\tk8s.io/client-go => k8s.io/client-go v0.34.5
)
"""


def cell(release: str, minor: str) -> MatrixCell:
    return MatrixCell(MATRIX.release(release), MATRIX.proxy("quay-v0.22.1"), MATRIX.k8s(minor))


def test_client_go_is_the_required_one_unless_replaced() -> None:
    assert support.client_go_of(GO_MOD_REPLACED) == "v0.34.5"
    required_only = GO_MOD_REPLACED.split("replace (")[0]
    assert support.client_go_of(required_only) == "v0.35.3"
    # istio.io/client-go is not Kubernetes' client.
    assert support.client_go_of("module x\n\nrequire istio.io/client-go v1.27.1\n") is None
    assert support.client_go_of("module x\n\nrequire k8s.io/client-go v0.30.4\n") == "v0.30.4"


def test_a_minor_past_one_minor_of_client_skew_is_outside_support() -> None:
    data = {"v0.14.0": ReleaseSupport("v0.14.0", client_go="v0.30.4")}
    assert support.verdict(cell("v0.14.0", "1.34"), data) == support.SupportVerdict(
        Support.OUTSIDE,
        "KServe v0.14.0 is built against Kubernetes 1.30 (client-go v0.30.4): Kubernetes 1.34 is past 1.31, "
        "one minor of client skew",
        "built against 1.30, supported 1.28-1.31",
    )
    data = {"v0.20.0": ReleaseSupport("v0.20.0", client_go="v0.34.5")}
    inside = support.verdict(cell("v0.20.0", "1.35"), data)
    assert inside.support is Support.INSIDE
    assert inside.reason == (
        "KServe v0.20.0 is built against Kubernetes 1.34 (client-go v0.34.5); supported up to 1.35 "
        "(no documented minimum known)"
    )
    assert support.verdict(cell("v0.20.0", "1.36"), data).support is Support.OUTSIDE


def test_below_the_documented_minimum_is_outside_even_when_go_mod_is_unread() -> None:
    # v0.14's install guide: "Kubernetes 1.28 is the minimally required version" (matrix.yaml).
    assert MATRIX.release("v0.14.0").kubernetes_minimum == "1.28"
    data = {"v0.14.0": ReleaseSupport("v0.14.0", unavailable="403 Forbidden: This module version is not available.")}
    assert support.verdict(cell("v0.14.0", "1.34"), data).support is Support.UNKNOWN
    unknown = support.verdict(cell("v0.14.0", "1.34"), data)
    assert "the Go module proxy answered 403 Forbidden: This module version is not available." in unknown.reason


def test_a_release_missing_from_the_data_says_how_to_read_it() -> None:
    unknown = support.verdict(cell("v0.15.0", "1.34"), {})
    assert unknown.support is Support.UNKNOWN
    assert "kserve-compat matrix --refresh-support --kserve v0.15.0" in unknown.reason


def test_the_data_file_round_trips_and_lists_refusals_with_their_answer(tmp_path: Path) -> None:
    entries = [
        ReleaseSupport("v0.20.0", client_go="v0.34.5"),
        ReleaseSupport("v0.10.1", unavailable="403 Forbidden: This module version is not available."),
    ]
    document = support.support_document(entries, today=datetime.date(2026, 12, 7))
    assert list(document["releases"]) == ["v0.10.1", "v0.20.0"]
    path = tmp_path / "support.json"
    path.write_text(json.dumps(document))
    assert support.load_support.__wrapped__(path) == {e.release: e for e in entries}


def test_the_shipped_data_covers_every_release_of_the_matrix() -> None:
    shipped = support.load_support()
    assert {r.version for r in MATRIX.releases} <= set(shipped)
    for entry in shipped.values():
        assert (entry.client_go is None) != (entry.unavailable is None), entry


def test_the_shipped_data_is_what_the_go_module_proxy_serves_today() -> None:
    """Re-read every release's go.mod (small files; the module zips are not fetched) and
    compare with the checked-in data: stale data fails here, with the command that fixes it."""
    if shutil.which("go") is None:
        unavailable("go not found on PATH: the support data is read through the Go module proxy")
    shipped = support.load_support()
    fresh = {version: support.read_release(version) for version in shipped}
    assert fresh == shipped, "stale e2e/data/kubernetes-support.json: run `kserve-compat matrix --all-releases " \
        "--k8s all --refresh-support`"


def test_the_report_marks_a_release_row_outside_support() -> None:
    outside = support.verdict(cell("v0.14.0", "1.34"))
    assert outside.support is Support.OUTSIDE  # the shipped data: client-go v0.30.4
    result = CellResult(
        cell_id="kserve-v0.14.0--quay-v0.22.1--k8s-1.34",
        provider="kind",
        kserve_version="v0.14.0",
        proxy_alias="quay-v0.22.1",
        proxy_image="quay.io/brancz/kube-rbac-proxy:v0.22.1",
        kubernetes_version="1.34",
        verdict=Verdict.PASS,
        checks=[CheckResult("metrics", CheckStatus.PASS, "200")],
        support=outside.support.value,
        support_reason=outside.reason,
        kubernetes_server="v1.34.4",
    )
    inside = dataclasses.replace(
        result,
        cell_id="kserve-v0.20.0--quay-v0.22.1--k8s-1.34",
        kserve_version="v0.20.0",
        support="inside support",
        support_reason="x",
    )
    markdown = markdown_report([result, inside], MATRIX)
    assert "### kind · Kubernetes 1.34 (v1.34.4)" in markdown
    assert "| v0.14.0 ⚑ |" in markdown
    assert "| v0.20.0 |" in markdown
    assert f"- {outside.reason}" in markdown
    page = html_report([result, inside], MATRIX)
    assert 'class="outside-support"' in page and "<small>outside support</small>" in page
    assert page.count('class="outside-support"') == 1
    # The verdict stands: a pass outside support is still a pass.
    assert "✅" in markdown.split("| v0.14.0 ⚑ |")[1].splitlines()[0]


def test_matrix_lists_the_window_of_each_group_and_all_selects_every_minor() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "e2e.cli", "matrix", "--kserve", "v0.20.0", "--proxy", "quay-v0.22.1", "--k8s", "all"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    groups = [line for line in done.stdout.splitlines() if line.startswith("kserve-")]
    assert [g.split()[0] for g in groups] == [f"kserve-v0.20.0--k8s-{k.version}" for k in MATRIX.kubernetes]
    assert "inside support: built against 1.34, supported up to 1.35" in groups[3]  # 1.35
    assert "outside support: built against 1.34, supported up to 1.35" in groups[4]  # 1.36


def test_refresh_support_rewrites_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "support.json"
    path.write_text(SUPPORT_FILE.read_text())
    answers = {"v0.14.0": ReleaseSupport("v0.14.0", client_go="v0.31.0")}
    monkeypatch.setattr(support, "read_release", lambda version: answers[version])
    document = support.refresh(["v0.14.0"], path)
    assert document["releases"]["v0.14.0"] == {"client_go": "v0.31.0"}
    assert json.loads(path.read_text())["releases"]["v0.20.0"] == {"client_go": "v0.34.5"}  # kept
