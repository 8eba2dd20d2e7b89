"""The local tier end to end: the scenarios run as a user runs them (pytest on scenarios/),
against a real control plane, the real KServe release manifests and real proxy binaries.

Each test starts `pytest scenarios --provider local ...` in a subprocess and reads the
results it wrote (report.json, report.md, junit.xml), so what is asserted is what a user
sees. Slow: each run creates a control plane and installs a release.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import REPO
from helpers.release_files import session_release_files
from helpers.scenario_runs import run_local_scenarios

from e2e import binaries
from e2e.availability import unavailable

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
# The one JWT-shaped string the harness sends on purpose: a token no API server issued.
GARBAGE_TOKEN_PREFIX = "eyJhbGciOiJub25lIn0."

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_tier_ready() -> None:
    session_release_files().offline_directory()
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        version = binaries.KUBERNETES_VERSION if component.startswith("kube-") else None
        if binaries.locate(component, version) is None:
            unavailable(f"{component} binary missing: run `nox -s binaries`")
    for version in ("v0.18.0", "v0.18.2", "v0.22.1"):
        if binaries.locate("kube-rbac-proxy", version) is None:
            unavailable(f"kube-rbac-proxy {version} binary missing: run `nox -s binaries`")


def run_scenarios(tmp_path: Path, *args: str, timeout: float = 900) -> tuple[int, str, list[dict[str, Any]]]:
    run = run_local_scenarios(tmp_path, *args, timeout=timeout)
    return run.code, run.output, run.results


def by_id(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["cell_id"]: r for r in results}


def checks_of(result: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in result["checks"]}


def test_fresh_install_grid_with_token_leak_findings(tmp_path: Path) -> None:
    """KServe v0.14.0 with three proxies and the quiet variant: all compatible; only the
    proxies that log request bodies at --v=10 leak the scrapers' tokens."""
    code, output, results = run_scenarios(
        tmp_path,
        "scenarios/test_fresh_install.py",
        "--kserve", "v0.14.0",
        "--proxy", "quay-v0.18.0,quay-v0.18.2,quay-v0.22.1",
        "--variant", "quiet",
    )
    assert code == 0, output[-3000:]
    cells = by_id(results)
    expected = {
        f"kserve-v0.14.0--{alias}--k8s-1.34{variant}"
        for alias in ("quay-v0.18.0", "quay-v0.18.2", "quay-v0.22.1")
        for variant in ("", "--quiet")
    }
    assert set(cells) == expected
    for cell_id, result in cells.items():
        assert result["verdict"] == "pass", (cell_id, result["reason"])
        statuses = checks_of(result)
        for name in ("image-in-use", "metrics-no-token", "metrics-garbage-token", "metrics-forbidden",
                     "metrics-authorized", "metrics-content", "metrics-scrape", "inference-v1", "inference-v2",
                     "token-leak"):
            assert statuses.get(name) == "pass", (cell_id, name, statuses)
        # Every cell says how its predictors were played, the first one too (they start
        # during its inference check, after its install recorded the cluster's deviations).
        played = [d for d in result["deviations"] if "storage initializer not run" in d]
        assert len(played) == 2, (cell_id, result["deviations"])
    leaking = {cell_id for cell_id, r in cells.items() if any(f["kind"] == "token-leak" for f in r["findings"])}
    # v0.18.0 at --v=10 logs the TokenReview bodies; v0.18.2 masks them; --v=0 logs none.
    assert leaking == {"kserve-v0.14.0--quay-v0.18.0--k8s-1.34"}
    (finding,) = cells["kserve-v0.14.0--quay-v0.18.0--k8s-1.34"]["findings"]
    assert "prometheus" in finding["detail"]  # the real Prometheus's token is searched for too


def test_reports_never_contain_a_token(tmp_path: Path) -> None:
    code, output, _ = run_scenarios(
        tmp_path, "scenarios/test_fresh_install.py", "--kserve", "v0.14.0", "--proxy", "quay-v0.18.0",
        "--junitxml", str(tmp_path / "pytest-junit.xml"),
    )
    assert code == 0, output[-3000:]
    written = [p for p in (tmp_path / "reports").rglob("*") if p.is_file()] + [tmp_path / "pytest-junit.xml"]
    assert any(p.name == "report.md" for p in written)
    for path in written:
        text = path.read_text(errors="replace")
        leaked = [m for m in JWT.findall(text) if not m.startswith(GARBAGE_TOKEN_PREFIX)]
        assert not leaked, f"a JWT-shaped token in {path.name}"
    leaked = [m for m in JWT.findall(output) if not m.startswith(GARBAGE_TOKEN_PREFIX)]
    assert not leaked, "a JWT-shaped token in pytest's output"


def test_release_shipping_the_retired_image_runs_with_a_served_one(tmp_path: Path) -> None:
    """v0.13.0-rc0 ships gcr.io/kubebuilder/...:v0.13.1; swapped to quay v0.22.1 it works,
    and a migration from the shipped line (its registry.k8s.io copy) is skipped with the
    reason that no v0.13.1 binary can be built here."""
    code, output, results = run_scenarios(
        tmp_path, "scenarios/test_fresh_install.py", "scenarios/test_migration.py",
        "--kserve", "v0.13.0-rc0", "--all-releases", "--proxy", "quay-v0.22.1",
    )
    cells = by_id(results)
    assert cells["kserve-v0.13.0-rc0--quay-v0.22.1--k8s-1.34"]["verdict"] == "pass", output[-3000:]
    migration = cells["kserve-v0.13.0-rc0--quay-v0.22.1--k8s-1.34--migration"]
    assert migration["verdict"] == "skipped"
    assert "v0.13.1" in migration["reason"]
    assert code == 0, output[-3000:]  # a skip with a stated reason is not a failure


def test_migration_loses_no_inference_request(tmp_path: Path) -> None:
    code, output, results = run_scenarios(
        tmp_path, "scenarios/test_migration.py", "--kserve", "v0.20.0", "--proxy", "quay-v0.22.1",
    )
    assert code == 0, output[-3000:]
    (result,) = results
    assert result["cell_id"] == "kserve-v0.20.0--quay-v0.22.1--k8s-1.34--migration"
    statuses = checks_of(result)
    assert statuses["migration-inference-lost-requests"] == "pass"
    assert statuses["migration-metrics-outage"] == "pass"
    assert result["verdict"] == "pass"


def test_release_missing_from_offline_directory_is_skipped_not_a_crash(tmp_path: Path) -> None:
    code, output, results = run_scenarios(
        tmp_path, "scenarios/test_fresh_install.py", "--kserve", "v0.11.2", "--proxy", "quay-v0.18.0"
    )
    (result,) = results
    assert result["verdict"] == "skipped"
    assert "v0.11.2" in result["reason"] and "offline" in result["reason"]
    assert "Traceback" not in output
    assert code == 0


def test_unknown_release_is_a_one_line_usage_error(tmp_path: Path) -> None:
    code, output, _ = run_scenarios(tmp_path, "scenarios", "--kserve", "v9.9.9")
    assert code == 2  # a usage error: one line, exit 2
    assert "--kserve v9.9.9: no defaults for the v9.9 line" in output
    assert "Traceback" not in output


TEMP_DIR = re.compile(r"/tmp/kserve-compat-[A-Za-z0-9_-]+")


def _processes_using(paths: set[str]) -> list[str]:
    """Command lines of live processes that mention one of ``paths`` (the run's temp dirs)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(path in cmdline for path in paths):
            found.append(cmdline[:200])
    return found


@pytest.mark.parametrize("phase", ["control plane start", "install", "prometheus", "checks", "metrics-scrape"])
def test_ctrl_c_leaves_no_process_and_no_temp_dir(tmp_path: Path, phase: str) -> None:
    """Interrupt a run at a phase (recognised from its log) and look for leftovers: every
    temp dir the run announced is gone (Prometheus's data directory is in one), and no
    process mentions one of them (Prometheus's command line names its config there)."""
    markers = {
        "control plane start": "started etcd",
        "install": "applied",
        "prometheus": "started prometheus",
        "checks": "rolled out",
        "metrics-scrape": "metrics-scrape: waiting",
    }
    env = {**os.environ, "KSERVE_COMPAT_MANIFEST_DIR": str(session_release_files().offline_directory())}
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", "--log-cli-level=INFO",
         "--provider", "local", "--reports-dir", str(tmp_path / "reports"),
         "scenarios/test_fresh_install.py", "--kserve", "v0.14.0", "--proxy", "quay-v0.22.1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    seen: list[str] = []
    interrupted = False
    try:
        for line in process.stdout:
            seen.append(line)
            if not interrupted and markers[phase] in line:
                process.send_signal(signal.SIGINT)
                interrupted = True
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert interrupted, f"the run ended before phase {phase!r}: {''.join(seen[-20:])}"
    temp_dirs = {match for line in seen for match in TEMP_DIR.findall(line)}
    assert temp_dirs, "the run announced no temp dir: the markers no longer match its log"
    if phase in ("prometheus", "metrics-scrape"):
        assert any("started prometheus" in line and TEMP_DIR.search(line) for line in seen)
    assert _processes_using(temp_dirs) == [], "processes left after Ctrl-C"
    left = sorted(path for path in temp_dirs if Path(path).exists())
    assert not left, f"temp dirs left after Ctrl-C: {left}"


def test_api_server_killed_mid_cell_is_an_error_and_the_run_goes_on(tmp_path: Path) -> None:
    """The API server dies in the middle of a cell: that cell is `error` with the cause,
    the API server is restarted, and the next cell of the group passes."""
    from e2e.cell import CellRun
    from e2e.matrix import Selection
    from e2e.results import Verdict
    from e2e.run import Harness, HarnessOptions, RunPlan
    from e2e.scenario import Scenario, Step
    from e2e.steps.check_image import check_image_in_use
    from e2e.steps.check_metrics import check_metrics_access
    from e2e.steps.deploy import deploy_sample_models
    from e2e.steps.install import install_release
    from e2e.steps.swap import swap_proxy_image

    def kill_api_server(run: CellRun) -> None:
        assert run.cluster is not None
        apiserver = run.cluster.provider.control_plane.processes["kube-apiserver"]  # type: ignore[attr-defined]
        assert apiserver.pid is not None
        os.kill(apiserver.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while apiserver.alive and time.monotonic() < deadline:
            time.sleep(0.1)

    killed = Scenario(
        name="fresh-install",
        story="the API server dies before the image is checked",
        steps=(
            install_release,
            swap_proxy_image,
            Step("kill-api-server", kill_api_server, lambda cell, context: ["SIGKILL kube-apiserver"]),
            check_image_in_use,  # reads the Deployment: the API server is gone
        ),
    )
    healthy = Scenario(
        name="fresh-install",
        story="the next cell of the group",
        steps=(
            install_release,
            swap_proxy_image,
            # metrics-content wants reconciles: the manager must have InferenceServices to reconcile.
            deploy_sample_models,
            check_image_in_use,
            check_metrics_access,
        ),
    )
    options = HarnessOptions(
        provider="local",
        selection=Selection(kserve=("v0.14.0",), proxy=("quay-v0.18.2", "quay-v0.22.1"), k8s=("1.34",)),
        manifest_dir=str(session_release_files().offline_directory()),
        reports_dir=tmp_path / "reports",
    )
    harness = Harness(RunPlan.resolve(options))
    try:
        first, second = harness.cells
        result = killed.run(harness, first)
        assert result.verdict is Verdict.ERROR, result.reason
        assert result.reason  # the cause, in one line
        assert result.steps == ["install", "swap", "kill-api-server", "check-image"]
        assert any("kube-apiserver had exited" in note for note in result.notes), result.notes

        result = healthy.run(harness, second)
        assert result.verdict is Verdict.PASS, result.reason
    finally:
        harness.close()


def test_a_proxy_that_exits_fails_the_cell_with_its_exit_code_and_output(tmp_path: Path) -> None:
    """A variant that gives the proxy a flag it does not know: the process exits at start,
    and the cell fails with the exit code and the proxy's own words as evidence."""
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(
        (REPO / "e2e" / "data" / "matrix.yaml").read_text()
        + "  - name: unknown-flag\n    description: a flag no kube-rbac-proxy knows\n"
        + '    args_add: ["--no-such-flag=1"]\n'
    )
    code, output, results = run_scenarios(
        tmp_path, "scenarios/test_fresh_install.py", "--matrix", str(matrix),
        "--cell", "kserve-v0.14.0--quay-v0.22.1--k8s-1.34--unknown-flag",
    )
    assert code == 1, output[-3000:]
    (result,) = results
    assert result["verdict"] == "fail"
    rollout = next(c for c in result["checks"] if c["name"] == "proxy-rollout")
    evidence = "\n".join(rollout["evidence"])
    assert "exit" in result["reason"].lower() or "exit" in evidence.lower()
    assert "no-such-flag" in evidence
    assert (tmp_path / "reports" / "diagnostics" / "kserve-v0.14.0--quay-v0.22.1--k8s-1.34--unknown-flag").is_dir()
