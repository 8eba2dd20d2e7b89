"""``nox -s bench`` (``e2e.bench``): figures only from runs whose cells all passed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import REPO

from e2e import bench


def figures(verdicts: dict[str, int], pytest_exit: int = 0) -> dict[str, Any]:
    ran = sum(n for v, n in verdicts.items() if v not in bench.NOT_TIMED)
    return {
        "seconds": 42.0,
        "cells": sum(verdicts.values()),
        "cells_run": ran,
        "seconds_per_cell": round(42.0 / ran, 2) if ran else None,
        "verdicts": verdicts,
        "pytest_exit": pytest_exit,
    }


def test_a_run_whose_cells_all_passed_gives_figures() -> None:
    assert bench.why_no_figures(figures({"pass": 40, "skipped": 64})) is None
    assert bench.why_no_figures(figures({"pass": 40, "image-unavailable": 8})) is None


@pytest.mark.parametrize(
    ("run", "reason"),
    [
        (figures({"error": 104}, pytest_exit=1), "104 of 104 cells that ran did not pass (104 error)"),
        (figures({"pass": 39, "fail": 1}, pytest_exit=1), "1 of 40 cells that ran did not pass (1 fail)"),
        (figures({"pass": 40}, pytest_exit=1), "pytest exited 1"),
        (figures({"skipped": 104}), "ran no cell (104 cells, verdicts {'skipped': 104})"),
        (figures({}, pytest_exit=4), "pytest exited 4"),
    ],
)
def test_a_run_that_timed_something_else_gives_none(run: dict[str, Any], reason: str) -> None:
    assert bench.why_no_figures(run) == reason


def test_no_figures_and_exit_1_when_the_shared_run_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every cell `error` (downloads failing): one line, no figure, no naive run, no stale bench.json."""
    runs: list[list[str]] = []

    def all_errors(extra: list[str], reports_dir: Path) -> dict[str, Any]:
        runs.append(extra)
        return figures({"error": 104}, pytest_exit=1)

    monkeypatch.setattr(bench, "run_matrix", all_errors)
    stale = tmp_path / "bench.json"
    stale.write_text(json.dumps({"shared": {"seconds": 1.0}}))
    assert bench.main(["--out", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "bench: no figures: the shared run: 104 of 104 cells that ran did not pass (104 error); "
        f"its reports are in {tmp_path / 'shared'}\n"
    )
    assert runs == [["--all-releases"]]
    assert not stale.exists()


def test_figures_when_both_runs_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "run_matrix", lambda extra, reports_dir: figures({"pass": 40, "skipped": 64}))
    assert bench.main(["--out", str(tmp_path)]) == 0
    out, _ = capsys.readouterr()
    assert "shared:    42.0 s for 40 cells (1.05 s/cell)" in out
    assert " ratio: naive / shared = 1.0x" in out
    assert json.loads((tmp_path / "bench.json").read_text())["ratio"] == {"naive_over_shared": 1.0}


def test_the_real_command_on_a_selection_that_cannot_run(tmp_path: Path) -> None:
    """``python -m e2e.bench`` end to end, on a selection pytest refuses: exit 1, no figures."""
    done = subprocess.run(
        [sys.executable, "-m", "e2e.bench", "--skip-naive", "--out", str(tmp_path), "--kserve", "not-a-version"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("bench: no figures: the shared run: pytest exited "), done.stderr
    assert "s/cell" not in done.stdout
    assert not (tmp_path / "bench.json").exists()
