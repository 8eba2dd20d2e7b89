"""``kserve-compat preflight`` against a real API server with real KServe releases installed.

One control plane (etcd + kube-apiserver processes) serves the whole module. KServe v0.14.0
and v0.12.1 are installed from the real release manifests (``tests/helpers/release_files.py``) with
server-side apply: CRDs, RBAC, the controller Deployment, Services. The admission webhooks
are deleted after the apply since no controller serves them (and so is the InferenceService
CRD's conversion webhook, see ``live_kserve.without_conversion_webhook``), and no pod ever runs (no
kubelet): the Deployments' pod templates carry the images. A real distribution registry
on 127.0.0.1 holds the images, and ``--registry-mirror`` points every reference at it.

Tests that switch releases call ``install`` (which removes the other release first); they
are ordered so that each release is installed once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.live_kserve import DEPLOYMENT, NAMESPACE, Releases
from helpers.paths import REPO
from helpers.registry_server import free_port
from kubernetes import client as k8s_client
from kubernetes import dynamic
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception_type, retry_if_result, stop_after_delay, wait_fixed

from e2e import cli
from e2e.apply import Applier
from e2e.availability import unavailable
from e2e.local.controlplane import ControlPlane
from e2e.preflight import EXIT_REJECTED, MANAGED_BY

pytestmark = pytest.mark.needs_binaries

PROXY_BINDING = "kserve-proxy-rolebinding"

def preflight(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run ``kserve-compat preflight ARGS`` in this process; (exit code, stdout)."""
    capsys.readouterr()
    code = cli.main(["preflight", *args])
    out = capsys.readouterr().out
    print(out)  # shown with -rP: the README's example output comes from here
    return code, out


def preflight_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out = preflight(capsys, *args, "--format", "json")
    return code, json.loads(out)


def check(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in document["checks"] if c["name"] == name)
    return found


# -- a snapshot of what preflight must not change -----------------------------------------------------


def snapshot(api: k8s_client.ApiClient) -> dict[str, tuple[str, str]]:
    """Every object of every listable kind in the KServe namespace, plus every ClusterRole and
    ClusterRoleBinding: ``kind/name`` -> (resourceVersion, everything but metadata and status)."""
    client = dynamic.DynamicClient(api)
    state: dict[str, tuple[str, str]] = {}
    for resource in client.resources.search():
        name = getattr(resource, "name", None)  # search() also yields group-level resource lists
        if not name or "/" in name or "list" not in (resource.verbs or []):
            continue
        cluster_rbac = resource.group == "rbac.authorization.k8s.io" and not resource.namespaced
        if not (resource.namespaced or cluster_rbac):
            continue
        if resource.namespaced and resource.kind == "Event":
            continue  # the API server writes no events here; kubelet-less clusters have none
        try:
            listed = client.get(resource, namespace=NAMESPACE) if resource.namespaced else client.get(resource)
        except ApiException as exc:
            if exc.status in (404, 405):
                continue
            raise
        for item in listed.to_dict().get("items", []):
            meta = item.get("metadata", {})
            body = {k: v for k, v in item.items() if k not in ("metadata", "status")}
            key = f"{resource.group}/{resource.kind}/{meta.get('namespace', '')}/{meta['name']}"
            state[key] = (meta.get("resourceVersion", ""), json.dumps(body, sort_keys=True))
    return state


# -- go and no-go on v0.14.0 ----------------------------------------------------------------------------


def test_go_v0_14_target_available_through_mirror(
    releases: Releases, kubeconfig: str, mirrors: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    releases.install("v0.14.0")
    code, document = preflight_json(capsys, "--kubeconfig", kubeconfig, "--target-proxy", "quay-v0.18.2", *mirrors)
    assert (code, document["verdict"], document["exit_code"]) == (0, "go", 0)
    images = {image["image"]: image for image in document["images"]}
    # Templates are read even though no pod runs: both Deployments of the release.
    assert set(images) == {
        "kserve/kserve-controller:v0.14.0",
        "kserve/kserve-localmodel-controller:v0.14.0",
        "quay.io/brancz/kube-rbac-proxy:v0.18.0",
        "quay.io/brancz/kube-rbac-proxy:v0.18.2",
    }
    assert images["quay.io/brancz/kube-rbac-proxy:v0.18.2"]["role"] == "target"
    assert images["quay.io/brancz/kube-rbac-proxy:v0.18.0"]["role"] == "in use"
    assert all(image["availability"]["status"] == "available" for image in images.values())
    assert images["quay.io/brancz/kube-rbac-proxy:v0.18.2"]["availability"]["probed"].endswith(
        "/brancz/kube-rbac-proxy:v0.18.2"
    )
    assert {c["name"]: c["status"] for c in document["checks"]} == {
        "retired-registry": "ok",
        "image-availability": "ok",
        "proxy-rbac": "ok",
        "swap-dry-run": "ok",
        # KServe v0.14.0's --logtostderr=true is a deprecated flag of v0.18.2: a warning, still GO.
        "proxy-flags": "warn",
    }
    flags = next(c for c in document["checks"] if c["name"] == "proxy-flags")
    assert "--logtostderr" in flags["detail"] and "v0.18.2" in flags["detail"], flags
    assert document["proxy"]["service_account"] == "kserve/kserve-controller-manager"
    assert document["wrote"] == []
    code, out = preflight(capsys, "--kubeconfig", kubeconfig, "--target-proxy", "quay-v0.18.2", *mirrors)
    assert code == 0, out
    assert "verdict: GO" in out
    assert "v0.14.0 (the tag of the manager image kserve/kserve-controller:v0.14.0)" in out
    assert "planned: Deployment kserve/kserve-controller-manager container kube-rbac-proxy" in out


def test_default_mode_changes_nothing_in_the_cluster(
    api: k8s_client.ApiClient, releases: Releases, kubeconfig: str, mirrors: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    releases.install("v0.14.0")
    before = snapshot(api)
    assert any("/Deployment/kserve/kserve-controller-manager" in key for key in before)
    assert any(key.endswith(f"/ClusterRoleBinding//{PROXY_BINDING}") for key in before)
    # Every step runs: listing, SubjectAccessReviews, the dry-run patch, registry probes.
    code, out = preflight(capsys, "--kubeconfig", kubeconfig, "--target-proxy", "quay-v0.18.2", *mirrors)
    assert code == 0, out
    assert snapshot(api) == before


def test_target_missing_from_the_registry_is_no_go_4(
    releases: Releases, kubeconfig: str, mirrors: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    releases.install("v0.14.0")
    target = "quay.io/brancz/kube-rbac-proxy:v0.99.0"
    code, out = preflight(capsys, "--kubeconfig", kubeconfig, "--target-image", target, *mirrors)
    assert code == 4, out
    assert "verdict: NO-GO (exit 4)" in out
    assert f"image-availability (fail): {target} (target) cannot be pulled" in out
    assert "missing (404: no such repository, tag or digest)" in out


def test_a_registry_that_does_not_answer_is_could_not_check_6_not_gone(
    releases: Releases, kubeconfig: str, mirrors: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    releases.install("v0.14.0")
    # quay.io's mirror is a closed loopback port (connection refused, as offline); the rest answer.
    silent = [m if not m.startswith("quay.io/") else "quay.io/brancz=127.0.0.1:1/brancz" for m in mirrors]
    code, document = preflight_json(capsys, "--kubeconfig", kubeconfig, "--target-proxy", "quay-v0.18.2",
                                    "--timeout", "2", *silent)
    assert (code, document["exit_code"]) == (6, 6)
    unchecked = check(document, "image-availability-unchecked")
    assert unchecked["status"] == "fail"
    assert "quay.io/brancz/kube-rbac-proxy:v0.18.2 (target)" in unchecked["detail"]
    assert "could not be checked" in unchecked["detail"]
    assert not any(c["name"] == "image-availability" and c["status"] == "fail" for c in document["checks"])


def test_missing_proxy_rbac_is_no_go_5(
    api: k8s_client.ApiClient, releases: Releases, kubeconfig: str, mirrors: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    releases.install("v0.14.0")
    rbac = k8s_client.RbacAuthorizationV1Api(api)
    rbac.delete_cluster_role_binding(PROXY_BINDING)
    try:
        code, document = preflight_json(
            capsys, "--kubeconfig", kubeconfig, "--target-proxy", "quay-v0.18.2", *mirrors
        )
    finally:
        releases.restore_proxy_binding()
    assert code == EXIT_REJECTED
    assert document["verdict"] == "no-go"
    found = check(document, "proxy-rbac")
    assert found["status"] == "fail" and found["exit_code"] == EXIT_REJECTED
    assert "may not create tokenreviews.authentication.k8s.io" in found["detail"]
    assert "create subjectaccessreviews.authorization.k8s.io" in found["detail"]
    # Everything else still passes: the reason is RBAC alone.
    assert [c["name"] for c in document["checks"] if c["status"] == "fail"] == ["proxy-rbac"]


DIGEST_POLICY = "kube-rbac-proxy-pinned-by-digest"


def _digest_policy() -> list[dict[str, Any]]:
    """A cluster policy many operators have: the proxy image must be pinned by digest."""
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": DIGEST_POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["UPDATE"],
                            "resources": ["deployments"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "object.spec.template.spec.containers.all(c, "
                        "c.name != 'kube-rbac-proxy' || c.image.contains('@sha256:'))",
                        "message": "kube-rbac-proxy images must be pinned by digest",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": DIGEST_POLICY},
            "spec": {"policyName": DIGEST_POLICY, "validationActions": ["Deny"]},
        },
    ]


def _dry_run_denied(api: k8s_client.ApiClient, image: str) -> bool:
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "kube-rbac-proxy", "image": image}]}}}}
    try:
        k8s_client.AppsV1Api(api).patch_namespaced_deployment(DEPLOYMENT, NAMESPACE, patch, dry_run="All")
    except ApiException as exc:
        return exc.status in (403, 422)
    return False


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    """Admission policies take effect (and go away) asynchronously: wait, bounded."""
    retrying = Retrying(
        retry=retry_if_result(lambda ok: not ok),
        stop=stop_after_delay(60),
        wait=wait_fixed(0.5),
        retry_error_callback=lambda state: False,
    )
    if not retrying(condition):
        pytest.fail(f"not within 60s: {what}")


def test_swap_rejected_by_admission_is_no_go_5(
    api: k8s_client.ApiClient, releases: Releases, kubeconfig: str, mirrors: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    releases.install("v0.14.0")
    applier = Applier(api)
    applier.apply(_digest_policy())
    try:
        _wait_until(lambda: _dry_run_denied(api, "quay.io/brancz/kube-rbac-proxy:v0.18.2"), "the policy denies")
        code, document = preflight_json(
            capsys, "--kubeconfig", kubeconfig, "--target-proxy", "quay-v0.18.2", *mirrors
        )
    finally:
        applier.delete(_digest_policy())
        _wait_until(lambda: not _dry_run_denied(api, "quay.io/brancz/kube-rbac-proxy:v0.18.2"), "the policy is gone")
    assert code == EXIT_REJECTED
    found = check(document, "swap-dry-run")
    assert found["status"] == "fail"
    assert "the API rejected the planned patch (dry run)" in found["detail"]
    assert "kube-rbac-proxy images must be pinned by digest" in found["detail"]
    # The API's answer is the reason, not an image problem.
    assert check(document, "image-availability")["status"] == "ok"


# -- --check-metrics: the only mode that writes ---------------------------------------------------------


def _preflight_objects(api: k8s_client.ApiClient) -> list[str]:
    """Everything labelled as created by preflight, namespaced or cluster-scoped."""
    selector = f"{MANAGED_BY[0]}={MANAGED_BY[1]}"
    core, rbac = k8s_client.CoreV1Api(api), k8s_client.RbacAuthorizationV1Api(api)
    found = [f"ServiceAccount {sa.metadata.name}" for sa in
             core.list_service_account_for_all_namespaces(label_selector=selector).items]
    found += [f"ClusterRole {r.metadata.name}" for r in rbac.list_cluster_role(label_selector=selector).items]
    found += [f"ClusterRoleBinding {b.metadata.name}"
              for b in rbac.list_cluster_role_binding(label_selector=selector).items]
    return found


def test_check_metrics_through_a_real_proxy_passes_and_leaves_nothing(
    api: k8s_client.ApiClient, control_plane: ControlPlane, releases: Releases, kubeconfig: str,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    from e2e import binaries
    from e2e.local.metrics_upstream import MetricsUpstream
    from e2e.local.proxy_runner import ProxyProcess
    from e2e.tokens import kubeconfig_for_service_account

    manifest = releases.install("v0.14.0")
    proxy_binary = binaries.locate("kube-rbac-proxy", "v0.18.0")
    if proxy_binary is None:
        unavailable("kube-rbac-proxy v0.18.0 not built (run `kserve-compat binaries`)")
    # The sidecar as the pod would run it: the release's args, as the controller's ServiceAccount.
    proxy_kubeconfig = kubeconfig_for_service_account(
        api, server=control_plane.server, ca=control_plane.ca_file, namespace=NAMESPACE,
        service_account=DEPLOYMENT, path=tmp_path / "proxy.kubeconfig",
    )
    before = snapshot(api)
    with MetricsUpstream() as upstream, ProxyProcess.from_container_args(
        proxy_binary, manifest.proxy_args, upstream_url=upstream.url, kubeconfig=proxy_kubeconfig, workdir=tmp_path
    ) as proxy:
        code, document = preflight_json(
            capsys, "--kubeconfig", kubeconfig, "--no-probe", "--check-metrics", "--metrics-url",
            f"{proxy.url}/metrics",
        )
    assert code == 0, json.dumps(document, indent=2)
    assert check(document, "metrics-auth")["status"] == "ok"
    assert {c["name"]: c["status"] for c in document["metrics_checks"]} == {
        "metrics-no-token": "pass",
        "metrics-garbage-token": "pass",
        "metrics-forbidden": "pass",
        "metrics-authorized": "pass",
        "metrics-content": "pass",
    }
    assert len(document["wrote"]) == 4 and document["cleanup_problems"] == []
    assert _preflight_objects(api) == []
    assert snapshot(api) == before


def test_check_metrics_failing_still_removes_what_it_created(
    api: k8s_client.ApiClient, releases: Releases, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    releases.install("v0.14.0")
    before = snapshot(api)
    closed = f"https://127.0.0.1:{free_port()}/metrics"
    code, out = preflight(capsys, "--kubeconfig", kubeconfig, "--no-probe", "--check-metrics", "--metrics-url", closed)
    assert code == EXIT_REJECTED
    assert "metrics-auth (fail): metrics-no-token:" in out and "unreachable" in out
    assert "wrote temporary objects (--check-metrics), removed" in out
    assert _preflight_objects(api) == []
    assert snapshot(api) == before


def test_check_metrics_sigterm_cleans_up(
    api: k8s_client.ApiClient, releases: Releases, kubeconfig: str
) -> None:
    """SIGTERM while the check waits on a hung endpoint: the process removes what it created."""
    from helpers.registry_server import silent_server

    releases.install("v0.14.0")
    before = snapshot(api)
    with silent_server() as hung:
        process = subprocess.Popen(
            [sys.executable, "-m", "e2e.cli", "preflight", "--kubeconfig", kubeconfig, "--no-probe",
             "--check-metrics", "--metrics-url", f"https://{hung}/metrics"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            # Wait (bounded) until its temporary objects exist, i.e. it is in the writing phase.
            for attempt in Retrying(
                retry=retry_if_exception_type(AssertionError), stop=stop_after_delay(60), wait=wait_fixed(0.2),
                reraise=True,
            ):
                with attempt:
                    assert len(_preflight_objects(api)) == 4, _preflight_objects(api)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "kserve-compat preflight: interrupted" in stderr
    assert _preflight_objects(api) == []
    assert snapshot(api) == before


# -- v0.12.1: the retired registry --------------------------------------------------------------------


def test_v0_12_1_retired_registry_is_no_go_3(
    releases: Releases, kubeconfig: str, mirrors: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    releases.install("v0.12.1")
    code, document = preflight_json(capsys, "--kubeconfig", kubeconfig, "--no-probe")
    assert code == 3
    assert document["kserve"] == {
        "version": "v0.12.1",
        "found_by": "the tag of the manager image kserve/kserve-controller:v0.12.1",
        "matrix_release": "v0.12.1",
    }
    assert check(document, "swap-dry-run")["status"] == "skipped"
    assert check(document, "image-availability")["status"] == "skipped"
    # The gcr.io image is probed through the mirror (it is there), so 3 is the reason, not 4.
    code, out = preflight(capsys, "--kubeconfig", kubeconfig, "--target-proxy", "quay-v0.18.0", *mirrors)
    assert code == 3, out
    assert "verdict: NO-GO (exit 3)" in out
    assert "v0.12.1 (the tag of the manager image kserve/kserve-controller:v0.12.1)" in out
    assert "retired-registry (fail): gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1 (in use) on a retired registry" in out
    assert "use registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1 (frozen) or " \
           "quay.io/brancz/kube-rbac-proxy:v0.13.1 (maintained)" in out


def test_all_namespaces_finds_a_retired_image_outside_kserve(
    api: k8s_client.ApiClient, releases: Releases, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    releases.install("v0.14.0")
    pause = "k8s.gcr.io/pause:3.2"  # frozen in 2023 with k8s.gcr.io: still in many clusters
    labels = {"app": "pause"}
    k8s_client.AppsV1Api(api).create_namespaced_deployment(
        "default",
        k8s_client.V1Deployment(
            metadata=k8s_client.V1ObjectMeta(name="pause"),
            spec=k8s_client.V1DeploymentSpec(
                selector=k8s_client.V1LabelSelector(match_labels=labels),
                template=k8s_client.V1PodTemplateSpec(
                    metadata=k8s_client.V1ObjectMeta(labels=labels),
                    spec=k8s_client.V1PodSpec(containers=[k8s_client.V1Container(name="pause", image=pause)]),
                ),
            ),
        ),
    )
    try:
        code, only_kserve = preflight_json(capsys, "--kubeconfig", kubeconfig, "--no-probe")
        assert code == 0
        assert pause not in {image["image"] for image in only_kserve["images"]}
        code, everywhere = preflight_json(capsys, "--kubeconfig", kubeconfig, "--no-probe", "--all-namespaces")
    finally:
        k8s_client.AppsV1Api(api).delete_namespaced_deployment("pause", "default")
    assert code == 3
    images = {image["image"]: image for image in everywhere["images"]}
    assert images[pause]["retired"]["replacements"] == [{"image": "registry.k8s.io/pause:3.2", "status": "maintained"}]
    assert images[pause]["uses"][0]["namespace"] == "default"
    assert "k8s.gcr.io/pause:3.2 (in use) on a retired registry" in check(everywhere, "retired-registry")["detail"]


# -- bad input: one line, exit 2, no traceback -----------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "e2e.cli", "preflight", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "KUBECONFIG": "/nonexistent"},
    )


def _assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kserve-compat preflight: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_unreachable_cluster_is_a_usage_error(control_plane: ControlPlane, tmp_path: Path) -> None:
    config = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    port = free_port()  # bound and released: nothing listens there
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path = tmp_path / "closed.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    result = _cli("--kubeconfig", str(path), "--no-probe")
    _assert_usage_error(result, f"cluster https://127.0.0.1:{port} (context local): unreachable", "Connection refused")
    key = config["users"][0]["user"]["client-key-data"]
    assert key not in result.stderr + result.stdout


def test_unknown_context_is_a_usage_error(kubeconfig: str) -> None:
    _assert_usage_error(_cli("--kubeconfig", kubeconfig, "--context", "prod"), "--context prod: not in kubeconfig",
                        "it has: local")


def test_namespace_without_kserve_is_a_usage_error(kubeconfig: str) -> None:
    _assert_usage_error(
        _cli("--kubeconfig", kubeconfig, "--namespace", "default"),
        "--namespace default: no Deployment kserve-controller-manager",
    )
    _assert_usage_error(
        _cli("--kubeconfig", kubeconfig, "--namespace", "kserve-nowhere"),
        "--namespace kserve-nowhere: no such namespace",
    )


def test_missing_kubeconfig_is_a_usage_error(tmp_path: Path) -> None:
    _assert_usage_error(_cli("--kubeconfig", str(tmp_path / "none")), "not found; expected a kubeconfig file")
    _assert_usage_error(_cli(), "default kubeconfig", "not usable")


def test_check_metrics_without_kubectl_is_a_usage_error_before_any_write(
    api: k8s_client.ApiClient, releases: Releases, kubeconfig: str, tmp_path: Path
) -> None:
    releases.install("v0.14.0")
    result = _cli("--kubeconfig", kubeconfig, "--no-probe", "--check-metrics", "--kubectl", str(tmp_path / "none"))
    _assert_usage_error(result, "--check-metrics: --kubectl", "not an executable")
    assert "writes to the cluster" not in result.stderr
    assert _preflight_objects(api) == []
