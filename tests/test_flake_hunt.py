"""The flake hunt (tests/flake_hunt.py), run for real on a small suite of its own."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HUNT = Path(__file__).with_name("flake_hunt.py")

# A test that fails on its second run only (a counter file beside it), one that always passes,
# one that is skipped.
SUITE = '''
from pathlib import Path
import pytest

COUNTER = Path(__file__).with_name("runs")

def test_steady():
    assert True

def test_second_run_fails():
    runs = int(COUNTER.read_text()) + 1 if COUNTER.exists() else 1
    COUNTER.write_text(str(runs))
    assert runs != 2, f"run {runs}: the flake shows"

@pytest.mark.skip(reason="not here")
def test_skipped():
    pass
'''


@pytest.fixture
def stress_ng() -> None:
    """The load the hunt runs beside: skipped without it locally, failed in CI."""
    if shutil.which("stress-ng") is None:
        from e2e.availability import unavailable

        unavailable("stress-ng is not installed (Debian: apt-get install stress-ng)")


def hunt(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HUNT), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False)


def test_a_test_that_fails_once_is_tallied_with_its_first_failure(tmp_path: Path) -> None:
    (tmp_path / "test_small.py").write_text(SUITE)
    result = hunt(tmp_path, "--rounds", "3", "--out", "hunt", "test_small.py")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1/3  test_small::test_second_run_fails" in result.stdout
    assert "run 2: the flake shows" in result.stdout
    assert "test_steady" not in result.stdout.split("failed at least once")[1].split("---")[0]
    summary = json.loads((tmp_path / "hunt" / "summary.json").read_text())
    assert summary["ok"] is False
    assert summary["tests"] == 2  # the skipped one is not counted as run
    assert summary["failed"] == [{"test": "test_small::test_second_run_fails", "failures": 1, "runs": 3}]
    assert [r["exit_code"] for r in summary["rounds"]] == [0, 1, 0]


def test_a_steady_suite_passes(tmp_path: Path) -> None:
    (tmp_path / "test_small.py").write_text("def test_steady():\n    assert True\n")
    result = hunt(tmp_path, "--rounds", "2", "test_small.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 tests ran; 0 failed at least once" in result.stdout


def test_a_round_that_collects_nothing_fails_the_hunt(tmp_path: Path) -> None:
    (tmp_path / "test_small.py").write_text("def test_steady():\n    assert True\n")
    result = hunt(tmp_path, "--rounds", "1", "test_small.py", "-k", "no_such_test")
    assert result.returncode == 1
    assert "ended with exit 5" in result.stdout


def test_bad_rounds_is_a_usage_error(tmp_path: Path) -> None:
    result = hunt(tmp_path, "--rounds", "0")
    assert result.returncode == 2
    assert "--rounds 0: expected a whole number of at least 1" in result.stderr


@pytest.mark.usefixtures("stress_ng")
def test_the_load_runs_beside_the_hunt_and_stops_with_it(tmp_path: Path) -> None:
    # The round runs while the load does: its process group is alive.
    (tmp_path / "test_small.py").write_text(
        "import os\n"
        "def test_loaded():\n"
        "    os.killpg(int(os.environ['FLAKES_LOAD_PGID']), 0)\n")
    result = hunt(tmp_path, "--rounds", "1", "--load", "--cpu 1", "test_small.py")
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"load: process group (\d+): \S*stress-ng --cpu 1 --quiet", result.stdout)
    assert match, result.stdout
    # ...and none of it is left once the hunt has ended.
    with pytest.raises(ProcessLookupError):
        os.killpg(int(match.group(1)), 0)


@pytest.mark.usefixtures("stress_ng")
def test_a_terminated_hunt_stops_its_load(tmp_path: Path) -> None:
    (tmp_path / "test_small.py").write_text(
        "import os, pathlib, time\n"
        "def test_slow():\n"
        "    pathlib.Path('round.pid').write_text(str(os.getpid()))\n"
        "    time.sleep(60)\n")
    hunt = subprocess.Popen([sys.executable, str(HUNT), "--rounds", "1", "--load", "--cpu 1", "test_small.py"],
                            cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert hunt.stdout is not None
    line = hunt.stdout.readline()  # "flakes: load: process group N: ..."
    match = re.search(r"load: process group (\d+)", line)
    assert match, line
    round_pid = tmp_path / "round.pid"
    for _ in range(300):  # the round's test has started (bounded: 30 s)
        if round_pid.exists() and round_pid.read_text():
            break
        time.sleep(0.1)
    hunt.terminate()  # SIGTERM, as a cancelled CI job sends
    assert hunt.wait(timeout=60) == 130
    with pytest.raises(ProcessLookupError):
        os.killpg(int(match.group(1)), 0)  # the load is gone
    with pytest.raises(ProcessLookupError):
        os.kill(int(round_pid.read_text()), 0)  # and so is the round
