"""``kserve-compat``: the command line, run as a real subprocess where exit codes and stderr
matter, and in-process where the command table is swapped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2e import cli
from e2e.matrix import load_matrix

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "e2e.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_matrix_github_prints_valid_json() -> None:
    done = run_cli("matrix", "--github", "--kserve", "v0.13.1,v0.14.1", "--proxy", "quay-v0.18.0,k8s-v0.13.1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1  # one line: what a GITHUB_OUTPUT entry takes
    data = json.loads(lines[0])
    matrix = load_matrix()
    assert [entry["kserve"] for entry in data["include"]] == [
        version for version in ("v0.13.1", "v0.14.1") for _ in matrix.kubernetes
    ]
    for entry in data["include"]:
        ids = entry["cells"].split(",")
        assert len(ids) == 2
        assert {matrix.cell(i).group_key for i in ids} == {(entry["kserve"], entry["k8s"])}
        assert entry["group"] == f"kserve-{entry['kserve']}--k8s-{entry['k8s']}"


def test_matrix_human_output_lists_groups_and_cells() -> None:
    done = run_cli("matrix", "--cell", "kserve-v0.14.0--quay-v0.18.0--k8s-1.33,kserve-v0.14.0--gcr-v0.13.1--k8s-1.33")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "kserve-v0.14.0--k8s-1.33  (cert-manager v1.15.1)",
        "  kserve-v0.14.0--gcr-v0.13.1--k8s-1.33  gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1  [retired]",
        "  kserve-v0.14.0--quay-v0.18.0--k8s-1.33  quay.io/brancz/kube-rbac-proxy:v0.18.0  [served]",
        "2 cells in 1 cluster groups",
    ]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("matrix", "--kserve", "v9.9.9"), "v9.9.9"),
        (("matrix", "--github", "--proxy", "nope"), "nope"),
        (("matrix", "--cell", "kserve-v0.14.0--bogus--k8s-1.33"), "kserve-v0.14.0--bogus--k8s-1.33"),
        (("matrix", "--matrix", "/nonexistent/matrix.yaml"), "/nonexistent/matrix.yaml"),
    ],
)
def test_a_usage_error_is_one_stderr_line_and_exit_2(args: tuple[str, ...], named: str) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kserve-compat matrix: ") and named in lines[0]


@pytest.mark.parametrize("args", [("frobnicate",), ("matrix", "--frobnicate"), ()])
def test_bad_command_lines_exit_2_without_a_traceback(args: tuple[str, ...]) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kserve-compat")
    if args:
        assert args[-1] in lines[0]


@pytest.mark.parametrize(
    "args",
    [("--debug", "matrix", "--kserve", "v9.9.9"), ("matrix", "--kserve", "v9.9.9", "--debug")],
)
def test_debug_shows_the_traceback(args: tuple[str, ...]) -> None:
    done = run_cli(*args)
    assert done.returncode != 0
    assert "Traceback" in done.stderr
    assert "UsageError" in done.stderr and "v9.9.9" in done.stderr


def test_only_the_chosen_command_module_is_loaded() -> None:
    loaded: list[str] = []

    def loader(module_name: str) -> cli.CommandModule:
        loaded.append(module_name)
        return cli._load(module_name)

    parser = cli.build_parser("matrix", loader=loader)
    assert loaded == ["e2e.matrix_cli"]
    args = parser.parse_args(["matrix", "--github", "--k8s", "1.33"])
    assert args.github and args.k8s == "1.33" and args._module == "e2e.matrix_cli"
    # no command: nothing loaded at all
    loaded.clear()
    cli.build_parser(None, loader=loader)
    assert loaded == []


def test_a_broken_sibling_command_does_not_break_matrix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = dict(cli.COMMANDS)
    commands["report"] = ("e2e.no_such_module_for_report", "broken on purpose")
    commands["audit"] = ("e2e.another_missing_module", "broken on purpose")
    monkeypatch.setattr(cli, "COMMANDS", commands)

    assert cli.main(["matrix", "--github", "--kserve", "v0.14.0", "--proxy", "quay-v0.18.0"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [entry["kserve"] for entry in data["include"]] == ["v0.14.0"] * len(load_matrix().kubernetes)

    # the control: the broken command itself does fail
    with pytest.raises(ModuleNotFoundError):
        cli.main(["report", "reports/"])
