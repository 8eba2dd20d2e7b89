"""Diagnostics: formatting and redaction on synthetic objects, and collection from a real
API server (etcd + kube-apiserver processes from ``e2e.local.controlplane``).

The control plane here runs no kubelet and no controllers, so the test writes a Pod and its
status itself, exactly as a kubelet would report a crash-looping kube-rbac-proxy. Container
logs come from a stand-in provider (a ``ClusterProvider`` whose logs are canned text); the
kind and local providers' own ``container_logs`` are tested with them.
"""

from __future__ import annotations

import datetime
import secrets as stdlib_secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers.providers import StandInProvider
from kubernetes import client as k8s_client

from e2e.checks import check_image_in_use
from e2e.diagnostics import (
    collect,
    describe_pod,
    format_events,
    pod_failure_evidence,
    pod_problems,
    summary_lines,
)
from e2e.local.controlplane import ControlPlane
from e2e.results import CellResult, CheckStatus
from e2e.secrets import register

NAMESPACE = "kserve"
DEPLOYMENT = "kserve-controller-manager"
SELECTOR = "control-plane=kserve-controller-manager"
PROXY_IMAGE = "quay.io/brancz/kube-rbac-proxy:v0.18.0"
MANAGER_IMAGE = "kserve/kserve-controller:v0.14.1"


@pytest.fixture(scope="module")
def leaked_token() -> str:
    """A token that shows up in logs, events and statuses below: it must never be written."""
    return register("k8s-compat-leak-" + stdlib_secrets.token_hex(24))


def proxy_log_text(token: str) -> str:
    return "\n".join(
        [
            "I0312 10:14:58.912876       1 main.go:318] Listening securely on 0.0.0.0:8443",
            f'I0312 10:15:02.123456       1 request.go:1212] Request Body: {{"spec":{{"token":"{token}"}}}}',
            "E0312 10:15:02.200000       1 proxy.go:73] Unable to authenticate the request due to an error",
            "F0312 10:15:03.000000       1 main.go:400] failed to run groups: listen tcp 0.0.0.0:8443: bind",
        ]
    )


# --------------------------------------------------------------------------- pure formatting


def crash_looping_pod(token: str) -> k8s_client.V1Pod:
    now = datetime.datetime(2026, 3, 12, 10, 15, tzinfo=datetime.UTC)
    return k8s_client.V1Pod(
        metadata=k8s_client.V1ObjectMeta(name="kserve-controller-manager-7d9f8-abcde", namespace=NAMESPACE),
        spec=k8s_client.V1PodSpec(
            node_name="kind-control-plane",
            containers=[
                k8s_client.V1Container(name="manager", image=MANAGER_IMAGE),
                k8s_client.V1Container(name="kube-rbac-proxy", image=PROXY_IMAGE),
            ],
        ),
        status=k8s_client.V1PodStatus(
            phase="Running",
            start_time=now,
            conditions=[k8s_client.V1PodCondition(type="Ready", status="False", reason="ContainersNotReady")],
            container_statuses=[
                k8s_client.V1ContainerStatus(
                    name="kube-rbac-proxy",
                    image=PROXY_IMAGE,
                    image_id="",
                    ready=False,
                    restart_count=4,
                    state=k8s_client.V1ContainerState(
                        waiting=k8s_client.V1ContainerStateWaiting(
                            reason="CrashLoopBackOff",
                            message=f"back-off 1m20s restarting failed container (token {token})",
                        )
                    ),
                    last_state=k8s_client.V1ContainerState(
                        terminated=k8s_client.V1ContainerStateTerminated(exit_code=255, reason="Error", finished_at=now)
                    ),
                ),
                k8s_client.V1ContainerStatus(
                    name="manager",
                    image=MANAGER_IMAGE,
                    image_id="",
                    ready=True,
                    restart_count=0,
                    state=k8s_client.V1ContainerState(running=k8s_client.V1ContainerStateRunning(started_at=now)),
                ),
            ],
        ),
    )


def test_describe_pod_shows_states_exit_codes_and_conditions(leaked_token: str) -> None:
    text = "\n".join(describe_pod(crash_looping_pod(leaked_token)))
    assert "Pod kserve/kserve-controller-manager-7d9f8-abcde" in text
    assert "Ready=False ContainersNotReady" in text
    assert "State: Waiting (CrashLoopBackOff: back-off 1m20s" in text
    assert "Last state: Terminated (exit 255, Error)" in text
    assert "Restarts: 4" in text
    assert "State: Running since 2026-03-12T10:15:00Z" in text


def test_pod_problems_redacts_and_reads_the_previous_log(leaked_token: str) -> None:
    asked: list[tuple[str, bool]] = []

    def read_log(container: str, previous: bool) -> str:
        asked.append((container, previous))
        return proxy_log_text(leaked_token)

    lines = pod_problems([crash_looping_pod(leaked_token)], read_log)
    assert asked == [("kube-rbac-proxy", True)]
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("pod kserve-controller-manager-7d9f8-abcde container kube-rbac-proxy: CrashLoopBackOff")
    assert "(restarts 4); last exit 255 (Error)" in line
    assert "failed to run groups" in line
    assert leaked_token not in line and "<redacted>" in line


def test_events_are_sorted_oldest_first() -> None:
    def event(name: str, minute: int, reason: str) -> k8s_client.CoreV1Event:
        return k8s_client.CoreV1Event(
            metadata=k8s_client.V1ObjectMeta(name=name, namespace=NAMESPACE),
            involved_object=k8s_client.V1ObjectReference(kind="Pod", name="p"),
            reason=reason,
            type="Warning",
            message="m",
            count=3,
            last_timestamp=datetime.datetime(2026, 3, 12, 10, minute, tzinfo=datetime.UTC),
        )

    lines = format_events([event("b", 5, "BackOff"), event("a", 1, "Pulling")])
    assert [line.split("  ")[3] for line in lines] == ["Pulling", "BackOff"]
    assert lines[0].endswith("Pod/p: m (x3)")


def test_summary_lines_of_a_directory_without_summary(tmp_path: Path) -> None:
    assert summary_lines(tmp_path) == [f"diagnostics: {tmp_path}"]


# --------------------------------------------------------------------------- real API server


class CrashLoopLogs(StandInProvider):
    """Canned logs of a crash-looping controller; everything Kubernetes is the real control plane's."""

    def __init__(self, plane: ControlPlane, token: str) -> None:
        super().__init__(plane.kubeconfig, name="diagnostics-test")
        self.plane = plane
        self.token = token

    def logs_for(self, container: str, previous: bool) -> str:
        if container == "kube-rbac-proxy":
            return proxy_log_text(self.token)
        if previous:  # what `kubectl logs --previous` says for a container that never restarted
            raise RuntimeError(f'previous terminated container "{container}" in pod not found')
        return "I0312 10:14:50.000000       1 main.go:120] Starting the Cmd.\n"

    def export_logs(self, directory: Path) -> None:
        self.plane.export_logs(directory / "control-plane")
        (directory / "kubelet.log").write_text(f"Mar 12 kubelet[1]: bearer {self.token} rejected\n")


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane, leaked_token: str) -> Iterator[k8s_client.ApiClient]:
    """The controller Deployment and one crash-looping pod of it, as a kubelet would report."""
    with control_plane.api_client() as client:
        core = k8s_client.CoreV1Api(client)
        core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=NAMESPACE)))
        # No controller-manager runs here to create the namespace's default ServiceAccount.
        core.create_namespaced_service_account(
            NAMESPACE, k8s_client.V1ServiceAccount(metadata=k8s_client.V1ObjectMeta(name="default"))
        )
        labels = {"control-plane": "kserve-controller-manager", "controller-tools.k8s.io": "1.0"}
        containers = [
            k8s_client.V1Container(name="manager", image=MANAGER_IMAGE),
            k8s_client.V1Container(name="kube-rbac-proxy", image=PROXY_IMAGE),
        ]
        k8s_client.AppsV1Api(client).create_namespaced_deployment(
            NAMESPACE,
            k8s_client.V1Deployment(
                metadata=k8s_client.V1ObjectMeta(name=DEPLOYMENT, labels=labels),
                spec=k8s_client.V1DeploymentSpec(
                    selector=k8s_client.V1LabelSelector(match_labels={"control-plane": "kserve-controller-manager"}),
                    template=k8s_client.V1PodTemplateSpec(
                        metadata=k8s_client.V1ObjectMeta(labels=labels),
                        spec=k8s_client.V1PodSpec(containers=containers),
                    ),
                ),
            ),
        )
        pod = crash_looping_pod(leaked_token)
        stored = core.create_namespaced_pod(
            NAMESPACE,
            k8s_client.V1Pod(
                metadata=k8s_client.V1ObjectMeta(name=pod.metadata.name, labels=labels),
                spec=k8s_client.V1PodSpec(node_name="kind-control-plane", containers=containers),
            ),
        )
        status = client.sanitize_for_serialization(pod.status)
        core.patch_namespaced_pod_status(stored.metadata.name, NAMESPACE, {"status": status})
        now = datetime.datetime.now(datetime.UTC)
        core.create_namespaced_event(
            NAMESPACE,
            k8s_client.CoreV1Event(
                metadata=k8s_client.V1ObjectMeta(name=f"{pod.metadata.name}.backoff"),
                involved_object=k8s_client.V1ObjectReference(kind="Pod", name=pod.metadata.name, namespace=NAMESPACE),
                reason="BackOff",
                type="Warning",
                message=f"Back-off restarting failed container kube-rbac-proxy (saw {leaked_token})",
                first_timestamp=now,
                last_timestamp=now,
                count=4,
                source=k8s_client.V1EventSource(component="kubelet"),
            ),
        )
        yield client


def all_written_text(directory: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in directory.rglob("*") if p.is_file())


@pytest.mark.needs_binaries
def test_collect_writes_every_part_redacted(
    api: k8s_client.ApiClient, control_plane: ControlPlane, leaked_token: str, tmp_path: Path
) -> None:
    provider = CrashLoopLogs(control_plane, leaked_token)
    directory = collect(api, provider, [NAMESPACE, "default"], tmp_path / "diag", deployment=DEPLOYMENT)

    events = (directory / "events.txt").read_text()
    assert "Warning  BackOff  Pod/kserve-controller-manager-7d9f8-abcde" in events and "(x4)" in events
    pods = (directory / "pods.txt").read_text()
    assert "Waiting (CrashLoopBackOff" in pods and "Last state: Terminated (exit 255, Error)" in pods
    deployment = yaml.safe_load((directory / "deployment.yaml").read_text())
    assert deployment["metadata"]["name"] == DEPLOYMENT and "managedFields" not in deployment["metadata"]
    # The InferenceService CRD is not installed here: an empty file, not a failure.
    assert (directory / "inferenceservices.yaml").read_text() == "# none found\n"

    logs = directory / "logs" / NAMESPACE / DEPLOYMENT
    assert "failed to run groups" in (logs / "kube-rbac-proxy.log").read_text()
    assert (logs / "kube-rbac-proxy.previous.log").exists()
    assert "Starting the Cmd" in (logs / "manager.log").read_text()
    assert not (logs / "manager.previous.log").exists()  # none: the manager never restarted
    assert provider.log_requests[0][:2] == (NAMESPACE, SELECTOR)  # the Deployment's own selector
    assert any((directory / "provider" / "control-plane").glob("*.log"))

    written = all_written_text(directory)
    assert leaked_token not in written
    assert "<redacted>" in (directory / "provider" / "kubelet.log").read_text()
    assert not (directory / "collection-errors.txt").exists()

    summary = summary_lines(directory, n=20)
    assert summary[0] == f"diagnostics: {directory}"
    assert any("CrashLoopBackOff" in line and "restarts 4" in line for line in summary)
    assert any("BackOff" in line and "Warning" in line for line in summary)
    assert any(line.startswith(f"{DEPLOYMENT}/kube-rbac-proxy: F0312") for line in summary)
    assert all(leaked_token not in line for line in summary)


@pytest.mark.needs_binaries
def test_collect_survives_a_provider_that_fails(
    api: k8s_client.ApiClient, control_plane: ControlPlane, leaked_token: str, tmp_path: Path
) -> None:
    class BrokenProvider(CrashLoopLogs):
        def container_logs(self, namespace: str, pod_selector: str, container: str, previous: bool = False) -> str:
            raise RuntimeError(f"port-forward died (token {self.token})")

        def export_logs(self, directory: Path) -> None:
            raise RuntimeError("kind export logs: exit status 1")

    directory = collect(api, BrokenProvider(control_plane, leaked_token), NAMESPACE, tmp_path / "diag")
    errors = (directory / "collection-errors.txt").read_text()
    assert "provider logs: RuntimeError: kind export logs: exit status 1" in errors
    assert "log of kserve/kserve-controller-manager/manager: RuntimeError: port-forward died" in errors
    assert leaked_token not in all_written_text(directory)
    assert (directory / "pods.txt").read_text().startswith("Pod kserve/")


@pytest.mark.needs_binaries
def test_pod_failure_evidence_from_the_api_server(
    api: k8s_client.ApiClient, control_plane: ControlPlane, leaked_token: str
) -> None:
    provider = CrashLoopLogs(control_plane, leaked_token)
    evidence = pod_failure_evidence(
        api,
        NAMESPACE,
        SELECTOR,
        lambda container, previous: provider.container_logs(NAMESPACE, SELECTOR, container, previous),
    )
    assert evidence is not None and len(evidence) == 1
    assert "kube-rbac-proxy: CrashLoopBackOff" in evidence[0] and "last exit 255" in evidence[0]
    assert leaked_token not in evidence[0]
    assert pod_failure_evidence(api, NAMESPACE, "control-plane=something-else") is None


@pytest.mark.needs_binaries
def test_image_in_use_against_the_api_server(api: k8s_client.ApiClient) -> None:
    cell = CellResult("c", "local", "v0.14.1", "quay-v0.18.0", PROXY_IMAGE, "v1.34.4")
    ok = check_image_in_use(cell, api, NAMESPACE, DEPLOYMENT, "kube-rbac-proxy", PROXY_IMAGE)
    assert ok.passed, (ok.detail, ok.evidence)
    assert ok.detail == f"template and 1 Running pods (control-plane=kserve-controller-manager) run {PROXY_IMAGE}"

    wrong = check_image_in_use(
        cell, api, NAMESPACE, DEPLOYMENT, "kube-rbac-proxy", "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"
    )
    assert wrong.status is CheckStatus.FAIL
    assert wrong.detail.startswith(f"pod template says {PROXY_IMAGE}")

    # Local tier: no kubelet, the provider says what it runs.
    local = check_image_in_use(
        cell, api, NAMESPACE, DEPLOYMENT, "kube-rbac-proxy", PROXY_IMAGE, observed_images=[PROXY_IMAGE]
    )
    assert local.passed and "1 running processes" in local.detail
    stale = check_image_in_use(
        cell,
        api,
        NAMESPACE,
        DEPLOYMENT,
        "kube-rbac-proxy",
        PROXY_IMAGE,
        observed_images=["gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"],
    )
    assert stale.status is CheckStatus.FAIL and "1 of 1 running processes do not run" in stale.detail
    missing = check_image_in_use(cell, api, NAMESPACE, DEPLOYMENT, "kube-rbac-proxy", PROXY_IMAGE, observed_images=[])
    assert missing.status is CheckStatus.FAIL and missing.detail.startswith("no running processes")
    no_container = check_image_in_use(cell, api, NAMESPACE, DEPLOYMENT, "proxy", PROXY_IMAGE)
    assert no_container.status is CheckStatus.FAIL and "containers: kube-rbac-proxy, manager" in no_container.evidence
