"""The tool as users install it: a wheel built from this checkout, in a fresh venv, run from an
empty folder (so nothing can be read from the checkout by accident)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from helpers.paths import REPO

from e2e import __version__
from e2e.report import save_result
from e2e.results import CellResult, Verdict

pytestmark = pytest.mark.slow

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: kserve-controller-manager, namespace: kserve}
spec:
  template:
    spec:
      containers:
        - {name: kube-rbac-proxy, image: gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1}
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` folder of a fresh venv holding the wheel built from the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(REPO)],
                   check=True, timeout=300)
    (wheel,) = (work / "dist").glob("kserve_compat-*.whl")
    venv.create(work / "venv", with_pip=True)
    bin_dir = work / "venv" / "bin"
    subprocess.run([str(bin_dir / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, timeout=600)
    return bin_dir


def tool(installed: Path, cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{installed}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(installed / "kserve-compat"), *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_wheel_holds_the_package_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    code = "import e2e, e2e.data; print(e2e.__file__); print(e2e.data.MATRIX_FILE.is_file())"
    shown = subprocess.run([str(installed / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout.split()
    assert str(installed.parent) in shown[0] and str(REPO) not in shown[0]
    assert shown[1] == "True"


def test_version(installed: Path, tmp_path: Path) -> None:
    result = tool(installed, tmp_path, "--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"kserve-compat {__version__}")


def test_matrix_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    result = tool(installed, tmp_path, "matrix", "--kserve", "v0.14.0", "--github")
    assert result.returncode == 0, result.stderr
    groups = [entry["group"] for entry in json.loads(result.stdout)["include"]]
    assert groups and all(group.startswith("kserve-v0.14.0--k8s-") for group in groups)


def test_a_closed_pipe_ends_quietly(installed: Path, tmp_path: Path) -> None:
    # The reader is gone before the tool has started (`true` reads nothing), so its first
    # write meets a closed pipe; `| head -1` could race a short output into the pipe's buffer.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(f"set -o pipefail; '{installed}/kserve-compat' matrix | true", shell=True,
                            executable="/bin/bash", cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 141
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr


def test_audit_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    result = tool(installed, tmp_path, "audit", "-", stdin=DEPLOYMENT)
    assert result.returncode == 3, result.stderr
    assert "registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1" in result.stdout  # the replacement


def test_report_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    result = CellResult(
        cell_id="kserve-v0.14.0--quay-v0.22.1--k8s-1.34", provider="kind", kserve_version="v0.14.0",
        proxy_alias="quay-v0.22.1", proxy_image="quay.io/brancz/kube-rbac-proxy:v0.22.1",
        kubernetes_version="1.34", verdict=Verdict.PASS, started_at=1_700_000_000.0, duration_s=1.0,
    )
    save_result(result, tmp_path / "results" / "group")
    shown = tool(installed, tmp_path, "report", "results", "--out", "out")
    assert shown.returncode == 0, shown.stderr
    assert "v0.14.0" in shown.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"report.json", "report.md", "report.html", "junit.xml"}


def test_preflight_and_images_find_the_matrix(installed: Path, tmp_path: Path) -> None:
    # preflight without a cluster fails on the cluster, not on a missing matrix file.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    result = tool(installed, tmp_path, "preflight", "--kubeconfig", str(kubeconfig), "--target-proxy", "quay-v0.22.1")
    assert result.returncode == 2
    assert "matrix" not in result.stderr.lower(), result.stderr
    result = tool(installed, tmp_path, "images", "list", "--kserve", "v0.14.0", "--k8s", "1.34")
    assert "matrix file" not in result.stderr, result.stderr


def test_run_plan_from_an_empty_folder_uses_the_scenarios_in_the_wheel(installed: Path, tmp_path: Path) -> None:
    """`kserve-compat run` is the main job for an installed tool: here its --plan, which
    touches nothing (no cluster, no download), from the scenarios the wheel carries."""
    result = tool(installed, tmp_path, "run", "--provider", "kind", "--kserve", "v0.14.0",
                  "--proxy", "quay-v0.22.1,gcr-v0.13.1", "--k8s", "1.34", "--plan")  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "kserve-compat plan: provider kind, 4 scenario runs of 2 cells in 1 cluster groups" in output, output
    for scenario in ("fresh-install", "retired-image", "migration", "rollback"):
        assert f"run {scenario} on kserve-v0.14.0--" in output, scenario
    assert str(REPO) not in output  # the wheel's scenarios, not the checkout's
    assert not (tmp_path / "reports").exists()  # a plan writes nothing
    # Its options are the harness's, listed with pytest's.
    helped = tool(installed, tmp_path, "run", "--help")
    assert helped.returncode == 0 and "--provider" in helped.stdout and "--plan" in helped.stdout


def test_every_package_of_e2e_is_in_the_wheel() -> None:
    """pyproject lists the packages (the scenarios ship as e2e.scenarios): a new one must be listed."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "e2e").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert "e2e.scenarios" in listed
