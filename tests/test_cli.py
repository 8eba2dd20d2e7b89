"""``kserve-compat``: the command line, run as a real subprocess where exit codes and stderr
matter, and in-process where the command table is swapped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO

from e2e import cli
from e2e.matrix import load_matrix

MATRIX_LINES = "the matrix has v0.10..v0.20"


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
    assert [(entry["kserve"], entry["k8s"]) for entry in data["include"]] == [
        ("v0.13.1", "1.34"), ("v0.14.1", "1.34")  # the default minor
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
        "kserve-v0.14.0--k8s-1.33  (cert-manager v1.15.1; outside support: built against 1.30, supported 1.28-1.31)",
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


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("matrix", "--kserve", "v0.14"), "--kserve v0.14: expected a KServe release tag vMAJOR.MINOR.PATCH[-rcN]"),
        (("matrix", "--kserve", "0.14.0x"), "--kserve 0.14.0x: expected a KServe release tag vMAJOR.MINOR.PATCH[-rcN]"),
        (("matrix", "--kserve", "v0.14.1,latest"), "--kserve latest: expected a KServe release tag"),
        (("matrix", "--kserve", "v0.99.0"), f"--kserve v0.99.0: no defaults for the v0.99 line; {MATRIX_LINES}"),
        (("matrix", "--kserve", "v0.9.0"), f"--kserve v0.9.0: no defaults for the v0.9 line; {MATRIX_LINES}"),
        (("matrix", "--proxy-image", "quay.io/Me/kube-rbac-proxy:v1"), "--proxy-image quay.io/Me/kube-rbac-proxy:v1: "),
    ],
)
def test_a_malformed_release_or_image_is_one_line_and_exit_2(args: tuple[str, ...], line: str) -> None:
    done = run_cli(*args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    [message] = done.stderr.splitlines()
    assert message.startswith(f"kserve-compat matrix: {line}"), message


def test_matrix_takes_unlisted_releases_and_an_adhoc_image() -> None:
    reference = "quay.io/me/kube-rbac-proxy:v0.18.0-fix1"
    done = run_cli("matrix", "--kserve", "v0.11.1,v0.15.0", "--proxy-image", reference, "--k8s", "1.34")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "kserve-v0.11.1--k8s-1.34  (cert-manager v1.3.0; defaults of v0.11.2; support unknown: go.mod unread, "
        "documented minimum 1.22)",
        f"  kserve-v0.11.1--adhoc-quay-me-v0.18.0-fix1--k8s-1.34  {reference}  [served]",
        "kserve-v0.15.0--k8s-1.34  (cert-manager v1.16.1; defaults of v0.15.2; support unknown: go.mod unread)",
        f"  kserve-v0.15.0--adhoc-quay-me-v0.18.0-fix1--k8s-1.34  {reference}  [served]",
        "2 cells in 2 cluster groups",
    ]


def run_pytest_scenarios(*args: str) -> subprocess.CompletedProcess[str]:
    """pytest on scenarios/ as ``nox -s local`` runs it; only option handling is reached."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "scenarios", "-p", "no:cacheprovider", "--plan", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("--kserve", "v0.14"), "--kserve v0.14: expected a KServe release tag vMAJOR.MINOR.PATCH[-rcN]"),
        (("--kserve", "v0.99.0"), "--kserve v0.99.0: no defaults for the v0.99 line"),
        (("--proxy-image", "Quay.io//x"), "--proxy-image Quay.io//x: "),
        (
            ("--proxy-image", "quay.io/me/kube-rbac-proxy:v1", "--proxy-binary", "/nonexistent/kube-rbac-proxy"),
            "--proxy-binary /nonexistent/kube-rbac-proxy: expected an executable file",
        ),
    ],
)
def test_scenario_options_are_checked_before_anything_runs(args: tuple[str, ...], line: str) -> None:
    done = run_pytest_scenarios(*args)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]  # a usage error, as everywhere
    assert "Traceback" not in done.stderr
    [message] = [text for text in done.stderr.splitlines() if text.strip()]
    assert message.startswith(f"Exit: kserve-compat: {line}"), message


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
    assert args.github and args.k8s == ["1.33"] and args._module == "e2e.matrix_cli"
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
    assert [entry["kserve"] for entry in data["include"]] == ["v0.14.0"]  # the default minor alone

    # the control: the broken command itself does fail
    with pytest.raises(ModuleNotFoundError):
        cli.main(["report", "reports/"])


def test_an_unknown_target_proxy_is_named_by_its_own_option(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["preflight", "--target-proxy", "nope", "--kubeconfig", "/dev/null"])
    assert code == 2
    assert capsys.readouterr().err.startswith("kserve-compat preflight: --target-proxy nope: unknown proxy image alias")


# -- one voice: every listing command speaks JSON on request; one name per concept ------------------


def test_matrix_output_json_holds_every_group_and_cell_of_the_text() -> None:
    selection = ("--kserve", "v0.14.0", "--proxy", "quay-v0.18.0,gcr-v0.13.1", "--k8s", "1.34,1.35")
    text = run_cli("matrix", *selection)
    done = run_cli("matrix", *selection, "--output", "json")
    assert done.returncode == 0, done.stderr
    groups = json.loads(done.stdout)
    assert [g["group"] for g in groups] == ["kserve-v0.14.0--k8s-1.34", "kserve-v0.14.0--k8s-1.35"]
    assert [g["kubernetes"] for g in groups] == ["1.34", "1.35"]
    cells = [cell["id"] for g in groups for cell in g["cells"]]
    assert len(cells) == 4 and all(f"  {cell}  " in text.stdout for cell in cells)
    assert {g["support"] for g in groups} == {"outside support"} and groups[0]["window"] in text.stdout


def test_images_list_output_json_is_one_document() -> None:
    done = run_cli("images", "list", "--kserve", "v0.14.0", "--proxy", "quay-v0.22.1,gcr-v0.13.1", "--output", "json")
    assert done.returncode == 0, done.stderr
    rows = {row["image"]: row for row in json.loads(done.stdout)}
    assert rows["gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"]["status"] == "unavailable"
    assert rows["quay.io/brancz/kube-rbac-proxy:v0.22.1"]["component"] == "kube-rbac-proxy"


def test_binaries_list_takes_k8s_as_every_command_does(tmp_path: Path) -> None:
    env_cache = {"KSERVE_COMPAT_CACHE": str(tmp_path)}  # an empty cache: everything is missing, nothing is built
    done = subprocess.run(
        [sys.executable, "-m", "e2e.cli", "binaries", "list", "--k8s", "1.35", "--component", "kubectl",
         "--component", "kube-apiserver", "--output", "json"],
        cwd=REPO, env={**os.environ, **env_cache}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    build = load_matrix().k8s("1.35").build
    assert [(r["component"], r["version"], r["status"]) for r in rows] == [
        ("kubectl", build, "missing"), ("kube-apiserver", build, "missing")
    ]  # fmt: skip
    # The old spelling still works, and says the same.
    old = subprocess.run(
        [sys.executable, "-m", "e2e.cli", "binaries", "--list", "--kubernetes-version", build, "--component",
         "kubectl"],
        cwd=REPO, env={**os.environ, **env_cache}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert old.returncode == 0 and old.stdout.split()[:3] == ["kubectl", build, "missing"], old.stdout + old.stderr
    wrong = run_cli("binaries", "list", "--k8s", "9.9")
    assert wrong.returncode == 2 and wrong.stderr.startswith("kserve-compat binaries: --k8s 9.9: not a minor")
