"""The GitHub workflow's data flow, run here: plan, two cell groups, artifact merge, summary.

What GitHub does between the jobs is done as its actions document it: each ``cells`` job
uploads its ``reports/`` folder (the artifact's root is that folder, so it holds
``<group>/...``), and the summary job downloads every ``reports-*`` artifact into
``reports/`` with ``merge-multiple: true`` (their trees laid over one another). The summary
job's ``run:`` lines are read from ``.github/workflows/e2e.yaml`` and run with bash as written.

Two things differ from GitHub, on purpose: the groups run on the local tier (the kind tier's
cells run the same plugin and write the same files; ``.ci/run`` runs a kind group), and
``nox`` is a shim that runs what the noxfile's session runs (``nox -s report -- ARGS`` is
``kserve-compat report ARGS``), since a nox venv per test would install from PyPI.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.paths import REPO
from helpers.release_files import session_release_files

from e2e import binaries
from e2e.availability import unavailable

WORKFLOW = REPO / ".github" / "workflows" / "e2e.yaml"

pytestmark = pytest.mark.slow

# What the noxfile's sessions run, for the sessions the summary job calls.
NOX_SHIM = f"""#!/usr/bin/env bash
set -euo pipefail
if [ "$1" = "-s" ] && [ "$2" = "report" ] && [ "$3" = "--" ]; then
  shift 3
  exec {sys.executable} -m e2e.cli report "$@"
fi
echo "nox shim: no stand-in for: nox $*" >&2
exit 97
"""


def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def plan(*selection: str) -> list[dict[str, str]]:
    """The plan job: ``nox -s matrix -- --github ...`` is ``kserve-compat matrix --github ...``."""
    output = subprocess.run([sys.executable, "-m", "e2e.cli", "matrix", "--github", *selection], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    include: list[dict[str, str]] = json.loads(output)["include"]
    return include


def run_group(runner: Path, group: str, cells: str) -> subprocess.CompletedProcess[str]:
    """A ``cells`` job: ``nox -s e2e -- --cell "$CELLS" --reports-dir "reports/$GROUP"``, on the local tier."""
    runner.mkdir(parents=True)
    env = {**os.environ, "KSERVE_COMPAT_MANIFEST_DIR": str(session_release_files().offline_directory())}
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "scenarios"), "-p", "no:cacheprovider", "-q",
         "--rootdir", str(REPO), "--provider", "local", "--cell", cells, "--reports-dir", f"reports/{group}"],
        cwd=runner, env=env, capture_output=True, text=True, timeout=900, check=False,
    )


def merge_artifacts(artifacts: list[Path], into: Path) -> None:
    """``download-artifact`` with ``merge-multiple: true``: every artifact's tree laid into one folder."""
    into.mkdir(parents=True, exist_ok=True)
    for artifact in artifacts:
        shutil.copytree(artifact, into, dirs_exist_ok=True)


def summary_run_lines() -> str:
    steps = workflow()["jobs"]["summary"]["steps"]
    runs = [step["run"] for step in steps if "run" in step and "pip install" not in step["run"]]
    assert runs, "the summary job has no run step besides installing nox"
    return "\n".join(runs)


def test_the_summary_job_reads_what_the_cells_jobs_uploaded(tmp_path: Path) -> None:
    session_release_files().offline_directory()
    for component in ("etcd", "kube-apiserver", "kwok"):
        version = binaries.KUBERNETES_VERSION if component.startswith("kube-") else None
        if binaries.locate(component, version) is None:
            unavailable(f"{component} binary missing: run `nox -s binaries`")

    include = plan("--kserve", "v0.14.0,v0.20.0", "--proxy", "quay-v0.22.1", "--k8s", "1.34")
    assert len(include) == 2

    artifacts = []
    for job in include:
        runner = tmp_path / "runners" / job["group"]
        completed = run_group(runner, job["group"], job["cells"])
        assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
        # upload-artifact with `path: reports/`: the folder's contents are the artifact.
        artifacts.append(runner / "reports")
        assert (runner / "reports" / job["group"] / "report.json").is_file()

    summary_runner = tmp_path / "summary-runner"
    merge_artifacts(artifacts, summary_runner / "reports")
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "nox").write_text(NOX_SHIM)
    (shims / "nox").chmod(stat.S_IRWXU)
    step_summary = tmp_path / "step-summary.md"
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}",
           "GITHUB_STEP_SUMMARY": str(step_summary), "PYTHONPATH": str(REPO)}
    completed = subprocess.run(["bash", "-euo", "pipefail", "-c", summary_run_lines()], cwd=summary_runner,
                               env=env, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]

    expected = {cell for job in include for cell in job["cells"].split(",")}
    rendered = json.loads((summary_runner / "summary" / "report.json").read_text())
    assert {r["cell_id"] for r in rendered} >= expected
    markdown = step_summary.read_text()
    for job in include:
        assert job["kserve"] in markdown, job
    assert {r["cell_id"] for r in rendered if r["verdict"] == "pass"} >= expected
