"""``kserve-compat run --parallel-groups N`` and the ``--shard I/N`` each share runs with."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cells import new_cell
from helpers.release_files import session_release_files

from e2e import parallel_groups
from e2e.errors import UsageError
from e2e.matrix import Selection
from e2e.parallel_groups import refuse_conflicts, run_shares, split_parallel_option
from e2e.results import Verdict
from e2e.run import GroupShard, HarnessOptions, RunPlan, prepare_ahead_count


def plan(shard: GroupShard | None) -> RunPlan:
    selection = Selection.from_options(kserve="v0.12.1,v0.14.0,v0.20.0", proxy="quay-v0.22.1", k8s="1.34")
    return RunPlan.resolve(HarnessOptions(selection=selection, shard=shard))


def groups_of(run: RunPlan) -> list[str]:
    return sorted({cell.release.version for cell in run.cells})


def test_shares_split_the_groups_whole_and_between_them_hold_every_cell() -> None:
    whole = plan(None)
    shares = [plan(GroupShard(index, 2)) for index in (1, 2)]
    assert [groups_of(share) for share in shares] == [["v0.12.1", "v0.20.0"], ["v0.14.0"]]
    assert sorted(cell.id for share in shares for cell in share.cells) == sorted(cell.id for cell in whole.cells)


def test_a_share_beyond_the_groups_has_no_cell() -> None:
    assert plan(GroupShard(4, 4)).cells == ()


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2", "\u00b2/3"])
def test_a_bad_shard_is_one_line(text: str) -> None:
    with pytest.raises(UsageError, match=rf"^--shard {text}: expected I/N with 1 <= I <= N"):
        GroupShard.parse(text)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--provider", "kind"], (1, ["--provider", "kind"])),
        (["--parallel-groups", "2", "--provider", "kind"], (2, ["--provider", "kind"])),
        (["--provider", "kind", "--parallel-groups=3"], (3, ["--provider", "kind"])),
    ],
)
def test_the_parallel_option_is_taken_out_of_the_run_s_arguments(
    arguments: list[str], expected: tuple[int, list[str]]
) -> None:
    assert split_parallel_option(arguments) == expected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--parallel-groups"], "expected a number of shares"),
        (["--parallel-groups", "0"], "--parallel-groups 0: expected a whole number of at least 1"),
        (["--parallel-groups=two"], "--parallel-groups two: expected a whole number of at least 1"),
        (["--parallel-groups", "\u00b2"], "expected a whole number of at least 1"),
    ],
)
def test_a_bad_parallel_option_is_one_line(arguments: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        split_parallel_option(arguments)


@pytest.mark.parametrize("arguments", [["--shard", "1/2"], ["--shard=1/2"], ["--plan"]])
def test_options_the_shares_own_are_refused(arguments: list[str]) -> None:
    with pytest.raises(UsageError):
        refuse_conflicts(arguments)


# -- the shares, played by small child processes ------------------------------------------

# A share: writes the cell it is given (if any) where a run saves cells, notes whether it saw
# GitHub's step summary, then ends as told (a number, or "kill" for SIGKILL).
SHARE = """
import json, os, pathlib, signal, sys
reports, cell, end = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(reports / "saw-summary").write_text(str("GITHUB_STEP_SUMMARY" in os.environ))
if cell:
    (reports / "cells").mkdir()
    (reports / "cells" / "cell.json").write_text(cell)
if end == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if end == "terminate-parent":  # as a cancelled CI job does to `kserve-compat run`
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))  # as a run stops on it: exit 2
    os.kill(os.getppid(), signal.SIGTERM)
    signal.pause()
sys.exit(int(end))
"""


def played_shares(monkeypatch: pytest.MonkeyPatch, plays: dict[int, tuple[Verdict | None, str]]) -> None:
    """Share I writes a cell of verdict ``plays[I][0]`` (none if None) and ends ``plays[I][1]``."""

    def command(arguments: list[str], index: int, count: int, reports_dir: Path) -> list[str]:
        verdict, end = plays[index]
        cell = ""
        if verdict is not None:
            result = new_cell(kserve=f"v0.1{index}.0", verdict=verdict)
            cell = json.dumps(result.to_dict())
        return [sys.executable, "-c", SHARE, str(reports_dir), cell, end]

    monkeypatch.setattr(parallel_groups, "share_command", command)


def test_shares_are_merged_into_one_report_and_a_share_without_groups_is_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    played_shares(monkeypatch, {1: (Verdict.PASS, "0"), 2: (None, "5")})
    code = run_shares(2, ["--reports-dir", str(tmp_path / "reports")])
    assert code == 0
    merged = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert [cell["kserve_version"] for cell in merged] == ["v0.11.0"]
    # The shares never write the step summary; the merge writes it once.
    assert (tmp_path / "reports" / "shard-1" / "saw-summary").read_text() == "False"
    assert (tmp_path / "summary.md").read_text().count("# KServe and kube-rbac-proxy compatibility") == 1
    assert "parallel-groups: share 2/2 ended 5" in capsys.readouterr().out


def test_an_earlier_run_s_cells_are_not_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "reports" / "shard-1" / "cells"
    stale.mkdir(parents=True)
    (stale / "old.json").write_text(json.dumps(new_cell(kserve="v0.9.0", verdict=Verdict.FAIL).to_dict()))
    played_shares(monkeypatch, {1: (Verdict.PASS, "0")})
    assert run_shares(1, ["--reports-dir", str(tmp_path / "reports")]) == 0
    merged = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert [cell["kserve_version"] for cell in merged] == ["v0.11.0"]


def test_a_failing_cell_fails_the_merged_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    played_shares(monkeypatch, {1: (Verdict.PASS, "0"), 2: (Verdict.FAIL, "1")})
    assert run_shares(2, ["--reports-dir", str(tmp_path / "reports")]) == 1


@pytest.mark.parametrize(("end", "expected"), [("3", 3), ("kill", 128 + 9)])
def test_a_share_that_ended_without_a_failing_cell_still_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str, expected: int
) -> None:
    played_shares(monkeypatch, {1: (Verdict.PASS, "0"), 2: (None, end)})
    assert run_shares(2, ["--reports-dir", str(tmp_path / "reports")]) == expected


def test_pytest_s_strict_is_not_strict_security() -> None:
    assert parallel_groups._run_options(["--strict"]).strict_security is False
    assert parallel_groups._run_options(["--strict-security"]).strict_security is True


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    offline = session_release_files().offline_directory()
    return subprocess.run(
        [sys.executable, "-m", "e2e.cli", "run", *args],
        cwd=tmp_path, env={**os.environ, "KSERVE_COMPAT_MANIFEST_DIR": str(offline)},
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip


def test_a_bad_shard_on_the_command_line_exits_2(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "--shard", "5/2", "--plan")
    assert done.returncode == 2
    assert "kserve-compat: --shard 5/2: expected I/N with 1 <= I <= N" in done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.needs_binaries
def test_two_groups_run_at_once_on_the_local_tier_and_report_as_one(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    done = run_cli(
        tmp_path, "--parallel-groups", "2", "--", "--provider", "local", "--kserve", "v0.14.0,v0.20.0",
        "--proxy", "quay-v0.22.1", "--k8s", "1.34", "-k", "test_fresh_install", "--reports-dir", str(reports),
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "parallel-groups: share 1/2 started" in output and "parallel-groups: share 2/2 ended 0" in output
    for index, version in ((1, "v0.14.0"), (2, "v0.20.0")):
        (cell,) = json.loads((reports / f"shard-{index}" / "report.json").read_text())
        assert cell["kserve_version"] == version
        assert "passed" in (reports / f"shard-{index}" / "run.log").read_text()
    merged = json.loads((reports / "report.json").read_text())
    assert sorted((cell["kserve_version"], cell["verdict"]) for cell in merged) == [
        ("v0.14.0", "pass"),
        ("v0.20.0", "pass"),
    ]
    assert "| v0.14.0 |" in output and "| v0.20.0 |" in output  # the merged grid, printed


@pytest.mark.parametrize(
    "arguments",
    [
        ["--", "--parallel-groups", "2", "--", "--provider", "kind"],
        ["--parallel-groups=2", "--provider", "kind"],
        ["--", "--provider", "kind", "--parallel-groups", "2"],
    ],
)
def test_run_hands_the_shares_the_run_s_own_arguments(arguments: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from e2e import run_cli

    seen: list[tuple[int, list[str]]] = []
    monkeypatch.setattr(parallel_groups, "run_shares", lambda count, rest: seen.append((count, list(rest))) or 0)
    assert run_cli.run(argparse.Namespace(pytest_args=arguments)) == 0
    assert seen == [(2, ["--provider", "kind"])]


def test_each_share_prepares_fewer_groups_ahead_unless_told(tmp_path: Path) -> None:
    """Two shares preparing two groups ahead each put six clusters on a 2-core machine."""
    two = parallel_groups.share_command(["--provider", "kind"], 1, 2, tmp_path)
    assert two[two.index("--prepare-ahead") + 1] == "1"
    four = parallel_groups.share_command(["--provider", "kind"], 3, 4, tmp_path)
    assert four[four.index("--prepare-ahead") + 1] == "1"  # never none
    told = parallel_groups.share_command(["--prepare-ahead", "2"], 1, 2, tmp_path)
    assert told.count("--prepare-ahead") == 1 and told[told.index("--prepare-ahead") + 1] == "2"


@pytest.mark.parametrize("text", ["0", "5", "two", "-1"])
def test_a_prepare_ahead_out_of_range_is_one_line(text: str) -> None:
    with pytest.raises(UsageError, match=rf"^--prepare-ahead {re.escape(text)}: expected a number of cluster groups"):
        prepare_ahead_count(text)


def test_a_sigterm_passed_on_to_the_shares_ends_the_run_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each share stops and saves what it ran; the merged report is written; exit 2, as an
    interrupted single run (not 1 for the cells the interruption failed)."""
    played_shares(monkeypatch, {1: (Verdict.ERROR, "terminate-parent")})
    code = run_shares(1, ["--reports-dir", str(tmp_path / "reports")])
    assert code == 2
    assert (tmp_path / "reports" / "report.json").is_file()
    out = capsys.readouterr().out
    assert "SIGTERM: passed on to every share" in out and "share 1/1 ended 2" in out
