"""``kserve-compat migrate`` against a real API server with KServe v0.14.0 installed.

The control plane has no kubelet and no Deployment controller (see ``live_kserve``), so no
rollout ever completes here: what these tests prove is the guard around the change (the
refusals, the tool-owned Deployment, the dry run, nothing written on a no-go) and the
rollback and Ctrl-C paths, whose outcome is read back from the API server. A migration
that rolls out and serves metrics runs on kind (``tests/cluster/kind/test_operator_site.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.live_kserve import DEPLOYMENT, NAMESPACE, Releases
from helpers.paths import REPO
from kubernetes import client as k8s_client

from e2e import cli

pytestmark = pytest.mark.needs_binaries

TARGET = "quay-v0.22.1"
SHIPPED = "quay.io/brancz/kube-rbac-proxy:v0.18.0"  # what v0.14.0 ships
# A closed port: the metrics are "unreachable before the change", as in an outage.
CLOSED_METRICS = "https://127.0.0.1:1/metrics"


def deployment(api: k8s_client.ApiClient) -> dict[str, Any]:
    found: dict[str, Any] = api.sanitize_for_serialization(
        k8s_client.AppsV1Api(api).read_namespaced_deployment(DEPLOYMENT, NAMESPACE)
    )
    return found


def proxy_image(api: k8s_client.ApiClient) -> str:
    containers = deployment(api)["spec"]["template"]["spec"]["containers"]
    return str(next(c["image"] for c in containers if c["name"] == "kube-rbac-proxy"))


def migrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["migrate", *args])
    captured = capsys.readouterr()
    print(captured.out)
    return code, captured.out, captured.err


def leftovers(api: k8s_client.ApiClient) -> list[str]:
    """What a migration creates for its probe (ServiceAccounts, RBAC), if any is left."""
    label = "app.kubernetes.io/managed-by=kserve-compat-preflight"
    rbac = k8s_client.RbacAuthorizationV1Api(api)
    return [
        *(f"sa/{a.metadata.name}" for a in k8s_client.CoreV1Api(api).list_namespaced_service_account(
            NAMESPACE, label_selector=label).items),
        *(f"clusterrole/{r.metadata.name}" for r in rbac.list_cluster_role(label_selector=label).items),
        *(f"binding/{b.metadata.name}" for b in rbac.list_cluster_role_binding(label_selector=label).items),
    ]  # fmt: skip


@pytest.fixture
def v0_14(releases: Releases, api: k8s_client.ApiClient) -> Releases:
    releases.install("v0.14.0")
    assert proxy_image(api) == SHIPPED
    return releases


def test_dry_run_prints_every_step_and_writes_nothing(
    v0_14: Releases, api: k8s_client.ApiClient, kubeconfig: str, mirrors: list[str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    before = deployment(api)["metadata"]["resourceVersion"]
    code, out, err = migrate(
        capsys, "--to", TARGET, "--kubeconfig", kubeconfig, *mirrors, "--dry-run", "--report-dir", str(tmp_path / "r")
    )
    assert code == 0, out + err
    assert "# kserve-compat migrate: dry-run" in out
    for step in ("preflight", "record", "access", "probe", "patch", "rollout", "verify", "rollback"):
        assert f"STEP {step}: " in err, err
    assert "kube-rbac-proxy -> quay.io/brancz/kube-rbac-proxy:v0.22.1" in err
    assert deployment(api)["metadata"]["resourceVersion"] == before
    assert not (tmp_path / "r").exists() and leftovers(api) == []


def test_a_target_that_cannot_be_pulled_is_refused_before_anything_is_written(
    v0_14: Releases, api: k8s_client.ApiClient, kubeconfig: str, mirrors: list[str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    before = deployment(api)["metadata"]["resourceVersion"]
    missing = "quay.io/brancz/kube-rbac-proxy:v0.99.0"  # the mirror has no such tag: 404
    code, out, _ = migrate(capsys, "--to", missing, "--kubeconfig", kubeconfig, *mirrors, "--report-dir", str(tmp_path))
    assert code == 4, out  # the preflight's "unavailable"
    report = json.loads((tmp_path / "migration.json").read_text())
    assert report["outcome"] == "refused"
    assert any(line.startswith(f"target {missing}: ") for line in report["blockers"]), report["blockers"]
    assert report["steps"][-1]["name"] == "preflight"
    assert deployment(api)["metadata"]["resourceVersion"] == before and leftovers(api) == []
    assert not (tmp_path / "before.json").exists()


def test_a_deployment_owned_by_helm_gets_the_change_printed_not_applied(
    v0_14: Releases, api: k8s_client.ApiClient, kubeconfig: str, mirrors: list[str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    apps = k8s_client.AppsV1Api(api)
    marks = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "Helm"},
                          "annotations": {"meta.helm.sh/release-name": "kserve"}}}  # fmt: skip
    apps.patch_namespaced_deployment(DEPLOYMENT, NAMESPACE, marks)
    try:
        image_before = proxy_image(api)
        code, out, err = migrate(
            capsys, "--to", TARGET, "--kubeconfig", kubeconfig, *mirrors, "--report-dir", str(tmp_path)
        )
        assert code == 8, out
        assert "is managed by Helm (label app.kubernetes.io/managed-by=Helm)" in out
        assert '"image": "quay.io/brancz/kube-rbac-proxy:v0.22.1"' in err  # the change, for Helm to make
        assert proxy_image(api) == image_before and leftovers(api) == []
    finally:
        unmark = {"metadata": {"labels": {"app.kubernetes.io/managed-by": None},
                               "annotations": {"meta.helm.sh/release-name": None}}}  # fmt: skip
        apps.patch_namespaced_deployment(DEPLOYMENT, NAMESPACE, unmark)


def test_a_flag_the_target_version_dropped_is_refused_with_exit_7_before_anything_is_written(
    v0_14: Releases, api: k8s_client.ApiClient, kubeconfig: str, mirrors: list[str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """kube-rbac-proxy v0.18.0 accepts --kube-api-qps, v0.15.0 does not (e2e/data/proxy-flags.json):
    moving such a Deployment back to v0.15.0 would crash its proxy at start."""
    apps = k8s_client.AppsV1Api(api)
    original = deployment(api)["spec"]["template"]
    containers = original["spec"]["containers"]
    proxy = next(c for c in containers if c["name"] == "kube-rbac-proxy")
    flagged = {"spec": {"template": {"spec": {"containers": [
        {"name": "kube-rbac-proxy", "args": [*proxy["args"], "--kube-api-qps=20"]}]}}}}  # fmt: skip
    apps.patch_namespaced_deployment(DEPLOYMENT, NAMESPACE, flagged)
    try:
        before = deployment(api)["metadata"]["resourceVersion"]
        code, out, _ = migrate(capsys, "--to", "quay-v0.15.0", "--kubeconfig", kubeconfig, *mirrors,
                               "--report-dir", str(tmp_path), "--rollout-timeout", "3")  # fmt: skip
        assert code == 7, out
        report = json.loads((tmp_path / "migration.json").read_text())
        assert report["outcome"] == "refused"
        assert any(b.startswith("proxy-flags: ") and "--kube-api-qps" in b for b in report["blockers"]), report
        assert deployment(api)["metadata"]["resourceVersion"] == before and leftovers(api) == []
    finally:
        apps.patch_namespaced_deployment(
            DEPLOYMENT, NAMESPACE, [{"op": "replace", "path": "/spec/template", "value": original}]
        )


def test_the_image_already_running_is_nothing_to_do(
    v0_14: Releases, kubeconfig: str, mirrors: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = migrate(capsys, "--to", "quay-v0.18.0", "--kubeconfig", kubeconfig, *mirrors,
                           "--report-dir", str(tmp_path))  # fmt: skip
    assert code == 0, out
    assert json.loads((tmp_path / "migration.json").read_text())["outcome"] == "unchanged"


def test_a_rollout_that_never_completes_is_rolled_back_to_the_recorded_template(
    v0_14: Releases, api: k8s_client.ApiClient, kubeconfig: str, mirrors: list[str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    template_before = deployment(api)["spec"]["template"]
    code, out, err = migrate(
        capsys, "--to", TARGET, "--kubeconfig", kubeconfig, *mirrors, "--report-dir", str(tmp_path),
        "--metrics-url", CLOSED_METRICS, "--rollout-timeout", "3",
    )  # fmt: skip
    assert code == 9, out + err
    report = json.loads((tmp_path / "migration.json").read_text())
    assert report["outcome"] == "rolled-back"
    assert report["reason"].startswith(f"deployment {NAMESPACE}/{DEPLOYMENT} did not roll out in 3s")
    assert report["ends_on"] == f"the recorded Deployment (proxy {SHIPPED})"
    steps = {step["name"]: step for step in report["steps"]}
    assert steps["patch"]["status"] == "ok" and steps["rollout"]["status"] == "failed"
    assert steps["rollback"]["status"] == "warn"  # restored; no kubelet here to roll it out
    # Exactly the recorded pod template is back, and what the probe created is gone.
    assert deployment(api)["spec"]["template"] == template_before
    assert json.loads((tmp_path / "before.json").read_text())["spec"]["template"] == template_before
    assert leftovers(api) == []
    # The metrics were unreachable from the start: said so, and counted as an outage.
    assert "metrics could not be reached before the change" not in report["probe"]["note"]  # --metrics-url given
    assert report["probe"]["metrics"]["successes"] == 0 and report["probe"]["metrics"]["failures"] > 0
    markdown = (tmp_path / "migration.md").read_text()
    assert "# kserve-compat migrate: rolled-back" in markdown and "| rollback | warn |" in markdown


def test_ctrl_c_during_the_rollout_ends_on_the_recorded_deployment_and_says_so(
    v0_14: Releases, api: k8s_client.ApiClient, kubeconfig: str, mirrors: list[str], tmp_path: Path
) -> None:
    template_before = deployment(api)["spec"]["template"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "e2e.cli", "migrate", "--to", TARGET, "--kubeconfig", kubeconfig, *mirrors,
         "--report-dir", str(tmp_path), "--metrics-url", CLOSED_METRICS, "--rollout-timeout", "600"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            seen.append(line)
            if line.startswith("STEP rollout:") or not line:
                break
        assert seen[-1].startswith("STEP rollout:"), "".join(seen)
        assert proxy_image(api) == "quay.io/brancz/kube-rbac-proxy:v0.22.1"  # the patch is in
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    said = f"stdout: {out[-2000:]}\nstderr: {''.join(seen)[-2000:]}{err[-3000:]}"  # in every failure message
    assert process.returncode == 130, said
    assert "Traceback" not in err, said
    report = json.loads((tmp_path / "migration.json").read_text())
    assert report["outcome"] == "interrupted", said
    assert report["ends_on"] == f"the recorded Deployment (proxy {SHIPPED})", said
    assert deployment(api)["spec"]["template"] == template_before, said
    assert leftovers(api) == [], said


def test_usage_errors_are_one_line(kubeconfig: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--to", "nope"], "--to nope: not a proxy alias of the matrix"),
        (["--to", TARGET, "--inference", "just-a-name"], "--inference just-a-name: expected NAMESPACE/NAME"),
        (["--to", TARGET, "--settle", "-1"], "--settle/--rollout-timeout: expected seconds"),
        (["--to", TARGET, "--kubeconfig", str(tmp_path / "none")], "--kubeconfig"),
    ]
    for args, says in cases:
        code, _, err = migrate(capsys, *args, "--report-dir", str(tmp_path / "r"))
        assert code == 2, (args, err)
        lines = [line for line in err.splitlines() if not line.startswith("STEP ")]
        assert len(lines) == 1 and says in lines[0], (args, err)
