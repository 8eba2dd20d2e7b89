"""A minor other than the default, for real on the local tier: the Kubernetes-upgrade
question ("we move the cluster to 1.35: does our v0.12 with its sidecar survive it?").

``pytest scenarios --provider local --k8s 1.35`` in a subprocess, as a user runs it: the
group starts kube-apiserver v1.35.4 and the etcd kubeadm v1.35.4 names (3.6.6), installs the
release's own manager, and the report marks the cell ``outside support`` (v0.12.1 is built
against Kubernetes 1.28). This is the one extra minor ``.ci/run`` builds (about 15 minutes
cold, cached after).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO
from helpers.release_files import session_release_files

from e2e import binaries
from e2e.availability import in_ci, unavailable
from e2e.errors import HarnessError
from e2e.local import kubeadm
from e2e.matrix import load_matrix

MINOR = "1.35"
RELEASE = "v0.12.1"

# A cold build of a control plane takes about 15 minutes on 2 cores: above the suite's default.
pytestmark = [pytest.mark.slow, pytest.mark.needs_binaries, pytest.mark.timeout(3000)]


@pytest.fixture(scope="module")
def control_plane_of_the_minor() -> str:
    """The minor's control plane and etcd, built in CI (found, or skipped, elsewhere)."""
    build = load_matrix().k8s(MINOR).build
    commands = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubeadm")
    try:
        if in_ci():
            binaries.ensure_together(commands, build)  # one go build for the four
        for component in commands:
            binaries.ensure(component, build, build=False)
        binaries.ensure("etcd", kubeadm.etcd_version(build, build=in_ci()), build=in_ci())
    except HarnessError as exc:
        unavailable(f"Kubernetes {build} control plane: {exc} (nox -s binaries -- --k8s {build})")
    return build


def test_a_release_runs_on_another_minors_control_plane_marked_outside_support(
    tmp_path: Path, control_plane_of_the_minor: str
) -> None:
    files = session_release_files()
    files.kserve_path(RELEASE)  # skips (fails in CI) when no source has it
    reports = tmp_path / "reports"
    env = {**os.environ, "KSERVE_COMPAT_MANIFEST_DIR": str(files.offline_directory())}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--provider", "local",
         "--reports-dir", str(reports), "scenarios/test_fresh_install.py",
         "--kserve", RELEASE, "--proxy", "quay-v0.22.1", "--k8s", MINOR],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    output = (completed.stdout + completed.stderr)[-4000:]
    [result] = json.loads((reports / "report.json").read_text())
    assert result["cell_id"] == f"kserve-{RELEASE}--quay-v0.22.1--k8s-{MINOR}", output
    assert result["kubernetes_server"] == control_plane_of_the_minor == "v1.35.4", output
    assert result["support"] == "outside support"
    assert result["support_reason"].startswith(f"KServe {RELEASE} is built against Kubernetes 1.28 (client-go v0.28.4)")
    # Outside its window, and still serving: the verdict stands on its own checks.
    assert result["verdict"] == "pass", output
    assert completed.returncode == 0, output
    markdown = (reports / "report.md").read_text()
    assert f"### local · Kubernetes {MINOR} (v1.35.4)" in markdown
    assert f"| {RELEASE} ⚑ |" in markdown
