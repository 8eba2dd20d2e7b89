"""The Scenario definition and the pytest plugin built on it.

- The plugin's outcomes come from the results scenarios record: an inner pytest run (a
  real subprocess, ``-p e2e.plugin``) of small scenarios whose steps need no cluster.
- The plan lists exactly the steps a run executes: ``--plan`` and a real local-tier run
  of the same selection (fresh install, migration and a retired image in one group).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import REPO
from helpers.release_files import session_release_files

from e2e import binaries
from e2e.availability import unavailable
from e2e.plan import planned_steps
from e2e.scenario import load_scenarios

# A harness whose provider creates no cluster: the steps below never ask for one.
INNER_COMMON = """
import pytest

from e2e.cluster.provider import ProviderFactory
from e2e.errors import HarnessError
from e2e.install import CellSkipped
from e2e.matrix import MatrixCell
from e2e.results import CheckResult, CheckStatus, Verdict
from e2e.rollout import ImageUnavailable, RolloutFailed
from e2e.run import Harness, HarnessOptions, RunPlan
from e2e.scenario import Scenario, Step


class NoClusters(ProviderFactory):
    name = "none"

    def cluster(self, group_id, kubernetes_version):
        raise HarnessError("no cluster in this test")

    def plan(self, group_id, kubernetes_version):
        return ["no cluster"]


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    return Harness(RunPlan.resolve(HarnessOptions(reports_dir=tmp_path_factory.mktemp("reports"))), NoClusters())


def checked(run):
    run.result.add(CheckResult("demo-check", CheckStatus.PASS, "fine"))


def say(cell, context):
    return ["a step of the test"]
"""

INNER_MODULES = {
    "test_passes.py": """
SCENARIO = Scenario(name="passes", story="", steps=(Step("check", checked, say),))

def test_passes(harness, cell):
    SCENARIO.run(harness, cell)
""",
    "test_forgets.py": """
SCENARIO = Scenario(name="forgets", story="", steps=(Step("check", checked, say),))

def test_forgets(harness, cell):
    pass  # never runs its scenario: must not be green
""",
    "test_swallows.py": """
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJlc2lnbmF0dXJl"

def broken_rollout(run):
    raise RolloutFailed(f"deployment kserve/kserve-controller-manager: CrashLoopBackOff (token {TOKEN})")

SCENARIO = Scenario(
    name="swallows", story="", steps=(Step("check", checked, say), Step("swap", broken_rollout, say))
)

def test_swallows(harness, cell):
    try:
        SCENARIO.run(harness, cell)
    except Exception:
        pass  # swallowing cannot make it green either: the verdict decides
""",
    "test_skips.py": """
def cannot(run):
    raise CellSkipped("no kube-rbac-proxy v9.9.9 binary here")

SCENARIO = Scenario(name="skips", story="", steps=(Step("swap", cannot, say),))

def test_skips(harness, cell):
    SCENARIO.run(harness, cell)
""",
    "test_unpullable.py": """
def pull_fails(run):
    raise ImageUnavailable("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1: ErrImagePull")

SCENARIO = Scenario(
    name="unpullable", story="", steps=(Step("swap", pull_fails, say),), expected=Verdict.IMAGE_UNAVAILABLE
)

def test_unpullable(harness, cell):
    SCENARIO.run(harness, cell)
""",
    "test_nowhere.py": """
SCENARIO = Scenario(
    name="nowhere", story="", steps=(Step("check", checked, say),), applies=lambda cell, provider: "never applies"
)

def test_nowhere(harness, cell):
    SCENARIO.run(harness, cell)
""",
}


@pytest.fixture(scope="module")
def inner_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, ET.Element]]:
    """One inner pytest run of all the small scenarios; its output and JUnit test cases."""
    root = tmp_path_factory.mktemp("inner")
    for name, body in INNER_MODULES.items():
        (root / name).write_text(INNER_COMMON + textwrap.dedent(body))
    junit = root / "junit.xml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "e2e.plugin",
            "-p",
            "no:cacheprovider",
            "-rA",
            "--provider",
            "local",
            "--kserve",
            "v0.14.0",
            "--proxy",
            "quay-v0.18.0",
            f"--junitxml={junit}",
            *INNER_MODULES,
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output  # some cells fail on purpose
    cases = {case.get("name", "").split("[")[0]: case for case in ET.parse(junit).getroot().iter("testcase")}
    return output, cases


def test_the_expected_verdict_passes_and_carries_its_properties(inner_run: tuple[str, dict[str, ET.Element]]) -> None:
    _, cases = inner_run
    passed = cases["test_passes"]
    assert passed.find("failure") is None and passed.find("skipped") is None
    properties = {p.get("name"): p.get("value") for p in passed.iter("property")}
    assert properties.get("verdict") == "pass", properties
    assert cases["test_unpullable"].find("failure") is None  # image-unavailable was expected


def test_a_test_that_never_runs_its_scenario_fails(inner_run: tuple[str, dict[str, ET.Element]]) -> None:
    _, cases = inner_run
    failure = cases["test_forgets"].find("failure")
    assert failure is not None
    assert "scenario forgets recorded no result" in (failure.get("message", "") + (failure.text or ""))


def test_a_swallowed_failure_still_fails_with_its_evidence(inner_run: tuple[str, dict[str, ET.Element]]) -> None:
    output, cases = inner_run
    failure = cases["test_swallows"].find("failure")
    assert failure is not None
    text = failure.get("message", "") + (failure.text or "")
    assert "fail (expected pass): deployment kserve/kserve-controller-manager: CrashLoopBackOff" in text
    assert "steps run: check -> swap" in text
    assert "eyJhbGciOiJSUzI1NiJ9" not in text and "eyJhbGciOiJSUzI1NiJ9" not in output


def test_a_skipped_cell_skips_with_its_reason(inner_run: tuple[str, dict[str, ET.Element]]) -> None:
    _, cases = inner_run
    skipped = cases["test_skips"].find("skipped")
    assert skipped is not None
    assert "no kube-rbac-proxy v9.9.9 binary here" in (skipped.get("message", "") + (skipped.text or ""))


def test_a_scenario_for_no_cell_is_deselected_with_its_reason(inner_run: tuple[str, dict[str, ET.Element]]) -> None:
    output, cases = inner_run
    assert "test_nowhere" not in cases
    assert "kserve-compat: nowhere not run for kserve-v0.14.0--quay-v0.18.0--k8s-1.34: never applies" in output
    assert "1 deselected" in output


def test_every_scenario_module_defines_one_scenario_with_distinct_names_and_ranks() -> None:
    scenarios = load_scenarios()
    assert [s.name for s in scenarios] == ["fresh-install", "retired-image", "migration", "rollback"]
    assert len({s.rank for s in scenarios}) == len(scenarios)
    for scenario in scenarios:
        assert scenario.steps[0].name == "install", scenario.name
        assert scenario.story.strip(), scenario.name


# -- the plan and the run list the same steps (real local tier) --------------------------------------


def _local_tier_ready() -> None:
    session_release_files().offline_directory()  # skips (fails in CI) without one
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        version = binaries.KUBERNETES_VERSION if component.startswith("kube-") else None
        if binaries.locate(component, version) is None:
            unavailable(f"{component} binary missing: run `nox -s binaries`")
    for version in ("v0.18.0", "v0.22.1"):
        if binaries.locate("kube-rbac-proxy", version) is None:
            unavailable(f"kube-rbac-proxy {version} binary missing: run `nox -s binaries`")


def _scenarios(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "scenarios",
            "-p",
            "no:cacheprovider",
            "-q",
            "--provider",
            "local",
            "--reports-dir",
            str(tmp_path / "reports"),
            *args,
        ],
        cwd=REPO,
        env={
            **os.environ,
            "KSERVE_COMPAT_MANIFEST_DIR": str(session_release_files().offline_directory()),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.mark.slow
def test_the_plan_lists_exactly_the_steps_a_run_executes(tmp_path: Path) -> None:
    """One group, four kinds of cell: fresh installs, a migration, a rollback, a retired image. The
    retired image's binary is even supplied (the v0.18.0 build under the v0.13.1 variable):
    the cell must still end image-unavailable, by the matrix's registry status."""
    _local_tier_ready()
    selection = ("--kserve", "v0.14.0", "--proxy", "quay-v0.18.0,quay-v0.22.1,gcr-v0.13.1")
    planned = _scenarios(tmp_path, *selection, "--plan")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    plan = planned_steps(planned.stdout)
    assert set(plan) == {
        ("fresh-install", "kserve-v0.14.0--quay-v0.18.0--k8s-1.34"),
        ("fresh-install", "kserve-v0.14.0--quay-v0.22.1--k8s-1.34"),
        ("retired-image", "kserve-v0.14.0--gcr-v0.13.1--k8s-1.34"),
        ("migration", "kserve-v0.14.0--quay-v0.22.1--k8s-1.34"),
        ("rollback", "kserve-v0.14.0--quay-v0.22.1--k8s-1.34"),
    }

    stand_in = binaries.locate("kube-rbac-proxy", "v0.18.0")
    done = _scenarios(tmp_path, *selection, env={"KSERVE_COMPAT_KUBE_RBAC_PROXY_V0_13_1": str(stand_in)})
    output = done.stdout + done.stderr
    results: list[dict[str, Any]] = json.loads((tmp_path / "reports" / "report.json").read_text())
    # Each scenario with a grid of its own writes its own result, beside the cell's.
    assert {r["cell_id"] for r in results if r["proxy_alias"] == "quay-v0.22.1"} == {
        f"kserve-v0.14.0--quay-v0.22.1--k8s-1.34{suffix}" for suffix in ("", "--migration", "--rollback")
    }
    ran = {(r["scenario"], r["cell_id"].removesuffix("--" + r["scenario"])): r["steps"] for r in results}
    assert ran == plan, output[-3000:]
    verdicts = {(r["scenario"], r["proxy_alias"]): r["verdict"] for r in results}
    assert verdicts == {
        ("fresh-install", "quay-v0.18.0"): "pass",
        ("fresh-install", "quay-v0.22.1"): "pass",
        ("retired-image", "gcr-v0.13.1"): "image-unavailable",
        ("migration", "quay-v0.22.1"): "pass",
        ("rollback", "quay-v0.22.1"): "pass",
    }, output[-3000:]
    # The way back ends on the image the release ships, probed throughout.
    rollback = next(r for r in results if r["scenario"] == "rollback")
    checks = {c["name"]: c for c in rollback["checks"]}
    assert "rolled out quay.io/brancz/kube-rbac-proxy:v0.18.0" in checks["proxy-rollout"]["detail"], checks
    assert rollback["traffic"], "the rollback's requests over time are recorded for the report's chart"
    retired = next(r for r in results if r["scenario"] == "retired-image")
    assert "by the matrix's registry status" in retired["reason"]
    assert any("no registry was asked" in d for d in retired["deviations"]), retired["deviations"]
    assert done.returncode == 0, output[-3000:]  # the expected verdict of every scenario
    assert "5 passed" in output


@pytest.mark.parametrize(
    ("interrupt", "reason"),
    [
        (KeyboardInterrupt(), "interrupted (Ctrl-C) at step swap"),
        (KeyboardInterrupt("SIGTERM"), "interrupted (SIGTERM) at step swap"),  # interrupt_on_termination's
    ],
)
def test_ctrl_c_in_a_step_is_recorded_as_an_interruption_and_goes_on(
    tmp_path: Path, interrupt: KeyboardInterrupt, reason: str
) -> None:
    """The run stops (the interrupt is re-raised) but the cell's saved result says what happened."""
    from e2e.cluster.provider import ProviderFactory
    from e2e.errors import HarnessError
    from e2e.matrix import load_matrix
    from e2e.run import Harness, HarnessOptions, RunPlan
    from e2e.scenario import Scenario, Step

    class NoClusters(ProviderFactory):
        name = "none"

        def cluster(self, group_id: str, kubernetes_version: str) -> Any:
            raise HarnessError("no cluster in this test")

        def plan(self, group_id: str, kubernetes_version: str) -> list[str]:
            return []

    def interrupted(run: Any) -> None:
        raise interrupt

    scenario = Scenario(
        name="interrupted", story="", steps=(Step("swap", interrupted, lambda cell, context: ["a step"]),)
    )
    harness = Harness(RunPlan.resolve(HarnessOptions(reports_dir=tmp_path)), NoClusters())
    cell = load_matrix().cell("kserve-v0.14.0--quay-v0.18.0--k8s-1.34")
    with pytest.raises(KeyboardInterrupt):
        scenario.run(harness, cell)
    (saved,) = [json.loads(p.read_text()) for p in tmp_path.rglob("*.json") if p.name != "report.json"]
    assert (saved["verdict"], saved["reason"]) == ("error", reason)
    assert saved["diagnostics"] == []  # none collected while the run is being torn down
