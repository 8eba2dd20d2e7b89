"""Running the scenarios as a user does (``pytest scenarios --provider local ...`` in a child
process) and reading back what they left: the exit code, the output and ``report.json``.

One helper for every test that runs the local tier end to end; kind runs are in
``kind_runs.py`` (they need a Ctrl-C on a timeout, so that their clusters are deleted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.paths import REPO
from helpers.release_files import session_release_files


@dataclass(frozen=True)
class ScenarioRun:
    code: int
    output: str  # stdout and stderr
    results: list[dict[str, Any]]  # report.json (empty when the run wrote none)


def run_local_scenarios(
    tmp_path: Path,
    *args: str,
    manifest_dir: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> ScenarioRun:
    """``pytest ARGS --provider local`` from the checkout, reports into ``tmp_path/reports``;
    ARGS name the scenarios (``scenarios`` or a file of it) and the selection."""
    reports = tmp_path / "reports"
    offline = manifest_dir or session_release_files().offline_directory()
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--provider", "local",
         "--reports-dir", str(reports), *args],
        cwd=REPO, env={**os.environ, "KSERVE_COMPAT_MANIFEST_DIR": str(offline), **(env or {})},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    report = reports / "report.json"
    results = json.loads(report.read_text()) if report.exists() else []
    return ScenarioRun(completed.returncode, completed.stdout + completed.stderr, results)
