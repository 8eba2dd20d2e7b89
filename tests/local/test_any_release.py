"""Any release and an ad-hoc image, run end to end on the local tier as a user runs them.

``pytest scenarios --provider local ...`` in a subprocess; the assertions read the results
it wrote. Slow: each run starts a control plane and installs a release. Release manifests
come from the offline directory ``KSERVE_COMPAT_MANIFEST_DIR`` (skipped without one; failed
under ``CI=true``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.release_files import session_release_files
from helpers.scenario_runs import run_local_scenarios

from e2e import binaries
from e2e.availability import unavailable
from e2e.matrix import DEFAULT_MATRIX_FILE

PATCHED = "quay.io/me/kube-rbac-proxy:v0.18.0-fix1"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def manifest_dir() -> Path:
    files = session_release_files()
    files.kserve_path("v0.14.0")  # skips (fails in CI) when no source has it
    configured = files.offline_directory()
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        version = binaries.KUBERNETES_VERSION if component.startswith("kube-") else None
        if binaries.locate(component, version) is None:
            unavailable(f"{component} binary missing: run `nox -s binaries`")
    return configured


def proxy_binary(version: str) -> Path:
    found = binaries.locate("kube-rbac-proxy", version)
    if found is None:
        unavailable(f"kube-rbac-proxy {version} binary missing: run `nox -s binaries`")
    return found


def run_scenarios(tmp_path: Path, manifest_dir: Path, *args: str) -> tuple[int, str, list[dict[str, Any]]]:
    run = run_local_scenarios(tmp_path, "scenarios/test_fresh_install.py", *args, manifest_dir=manifest_dir)
    return run.code, run.output, run.results


def test_a_patched_build_runs_as_an_adhoc_image(tmp_path: Path, manifest_dir: Path) -> None:
    """--proxy-image names the patched build; --proxy-binary is what plays it locally (here
    the v0.18.0 build stands in for the patched one)."""
    code, output, results = run_scenarios(
        tmp_path, manifest_dir,
        "--kserve", "v0.14.0", "--k8s", "1.34",
        "--proxy-image", PATCHED, "--proxy-binary", str(proxy_binary("v0.18.0")),
    )
    [result] = results
    assert result["cell_id"] == "kserve-v0.14.0--adhoc-quay-me-v0.18.0-fix1--k8s-1.34", output[-3000:]
    assert (result["proxy_alias"], result["proxy_image"]) == ("adhoc-quay-me-v0.18.0-fix1", PATCHED)
    assert result["verdict"] == "pass", output[-3000:]
    assert code == 0, output[-3000:]


def test_an_unlisted_release_runs_with_its_lines_defaults(tmp_path: Path, manifest_dir: Path) -> None:
    """A matrix file without the v0.14.0 entry: --kserve v0.14.0 derives from v0.14.1 and
    installs v0.14.0's own manifest."""
    raw = yaml.safe_load(DEFAULT_MATRIX_FILE.read_text())
    raw["releases"] = [entry for entry in raw["releases"] if entry["version"] != "v0.14.0"]
    matrix_file = tmp_path / "matrix.yaml"
    matrix_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    proxy_binary("v0.22.1")
    code, output, results = run_scenarios(
        tmp_path, manifest_dir,
        "--matrix", str(matrix_file), "--kserve", "v0.14.0", "--k8s", "1.34", "--proxy", "quay-v0.22.1",
    )
    [result] = results
    assert result["cell_id"] == "kserve-v0.14.0--quay-v0.22.1--k8s-1.34", output[-3000:]
    assert result["verdict"] == "pass", output[-3000:]
    assert code == 0, output[-3000:]
