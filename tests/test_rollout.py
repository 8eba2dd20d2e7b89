"""Waiting for rollouts (``e2e.rollout``) against a real control plane that rolls Deployments out.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run as local
processes (``ControlPlane(with_controllers=True)``): the Deployment and ReplicaSet
controllers really create pods, the scheduler binds them to the one fake node, and kwok
reports them Running and Ready as a kubelet would. The Deployment rolled out is the real
KServe v0.14.0 controller Deployment.

kwok and pod statuses: kwok (v0.7, stage-based) owns the status of every pod on the node
it manages and marks it Running and Ready within a second, whatever the test writes (an
annotation ``kwok.x-k8s.io/status=custom`` on the pod did not stop that when tried). So the
image-pull test binds its pod, through ``spec.nodeName``, to a second Node that kwok does not
manage (no ``kwok.x-k8s.io/node`` annotation): no scheduler, no kwok and no kubelet touch
that pod, and the test writes the container status itself, as a kubelet that failed to pull
would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from helpers.real_cluster import real_control_plane
from kubernetes import client as k8s_client

from e2e import kserve
from e2e.apply import Applier
from e2e.diagnostics import pod_failure_evidence
from e2e.local.controlplane import ControlPlane
from e2e.local.processes import wait_ready
from e2e.manifests import ReleaseFiles, ReleaseManifest, load_release_manifest, proxy_patch
from e2e.matrix import MatrixCell, load_matrix
from e2e.rollout import ImageUnavailable, RolloutFailed, RolloutState, wait_for_rollout

pytestmark = [pytest.mark.needs_binaries, pytest.mark.slow]

RELEASE = "v0.14.0"
PROBES_NAMESPACE = "rollout-probes"
GENEROUS_TIMEOUT_S = 600  # never reached: each failing case must end on its first poll
NO_KUBELET_NODE = "kserve-compat-no-kubelet"  # a Node nothing manages


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    with real_control_plane(with_controllers=True) as plane:
        yield plane


@pytest.fixture(scope="module")
def manifest(release_files: ReleaseFiles) -> ReleaseManifest:
    return load_release_manifest(load_matrix().release(RELEASE), release_files)


def _probe_of(api: k8s_client.ApiClient, namespace: str, deployment: str) -> Callable[[], list[str] | None]:
    selector = kserve.controller_pod_selector_of(api, namespace, deployment)
    return lambda: pod_failure_evidence(api, namespace, selector)


def _live_pods(api: k8s_client.ApiClient, namespace: str, selector: str) -> list[k8s_client.V1Pod]:
    pods = k8s_client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    return [pod for pod in pods if pod.metadata.deletion_timestamp is None]


@pytest.fixture(scope="module")
def controller_rolled_out(api: k8s_client.ApiClient, manifest: ReleaseManifest) -> RolloutState:
    """The release's namespace, controller ServiceAccount and Deployment, rolled out."""
    profile = manifest.profile
    pieces = [
        manifest.find("Namespace", profile.namespace),
        manifest.find("ServiceAccount", profile.service_account, profile.namespace),
        manifest.deployment(),
    ]
    Applier(api).apply([p for p in pieces if p is not None])
    return wait_for_rollout(
        api,
        profile.namespace,
        profile.deployment,
        timeout_s=180,
        failure_evidence=_probe_of(api, profile.namespace, profile.deployment),
    )


@pytest.fixture(scope="module")
def probes_namespace(api: k8s_client.ApiClient, control_plane: ControlPlane) -> str:
    """A namespace whose ``default`` ServiceAccount exists (pods can be created in it)."""
    core = k8s_client.CoreV1Api(api)
    core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=PROBES_NAMESPACE)))
    wait_ready(
        f"ServiceAccount {PROBES_NAMESPACE}/default",
        lambda: (
            any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(PROBES_NAMESPACE).items),
            "the controller manager has not created it yet",
        ),
        watched=list(control_plane.processes.values()),
        timeout=60,
    )
    return PROBES_NAMESPACE


def _deployment(
    namespace: str, name: str, *, node_selector: dict[str, str] | None = None, node_name: str | None = None
) -> k8s_client.V1Deployment:
    labels = {"app": name}
    return k8s_client.V1Deployment(
        metadata=k8s_client.V1ObjectMeta(name=name, namespace=namespace),
        spec=k8s_client.V1DeploymentSpec(
            replicas=1,
            selector=k8s_client.V1LabelSelector(match_labels=labels),
            template=k8s_client.V1PodTemplateSpec(
                metadata=k8s_client.V1ObjectMeta(labels=labels),
                spec=k8s_client.V1PodSpec(
                    node_selector=node_selector,
                    node_name=node_name,
                    containers=[
                        k8s_client.V1Container(
                            name="kube-rbac-proxy", image="gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"
                        )
                    ],
                ),
            ),
        ),
    )


@pytest.fixture(scope="module")
def stuck_deployment(api: k8s_client.ApiClient, probes_namespace: str) -> str:
    """A Deployment whose pod can never be scheduled: its rollout never completes."""
    deployment = _deployment(probes_namespace, "stuck", node_selector={"kserve-compat.test/nowhere": "true"})
    k8s_client.AppsV1Api(api).create_namespaced_deployment(probes_namespace, deployment)
    return "stuck"


# -- rolling out ----------------------------------------------------------------------


def test_the_controller_deployment_rolls_out(
    api: k8s_client.ApiClient, manifest: ReleaseManifest, controller_rolled_out: RolloutState
) -> None:
    state = controller_rolled_out
    assert state.complete
    assert (state.replicas, state.updated, state.available, state.total) == (1, 1, 1, 1)
    assert state.observed_generation >= state.generation >= 1
    profile = manifest.profile
    selector = kserve.controller_pod_selector_of(api, profile.namespace, profile.deployment)
    pods = _live_pods(api, profile.namespace, selector)
    assert [pod.status.phase for pod in pods] == ["Running"]
    assert pods[0].spec.node_name == "kwok-node-0"


def test_a_proxy_image_patch_rolls_out_a_new_generation(
    api: k8s_client.ApiClient, manifest: ReleaseManifest, controller_rolled_out: RolloutState
) -> None:
    matrix = load_matrix()
    cell = MatrixCell(matrix.release(RELEASE), matrix.proxy("quay-v0.22.1"), matrix.k8s("1.34"))
    profile = manifest.profile
    generation = kserve.patch_controller(api, profile, proxy_patch(cell, manifest))
    assert generation == controller_rolled_out.generation + 1

    state = wait_for_rollout(
        api,
        profile.namespace,
        profile.deployment,
        timeout_s=180,
        failure_evidence=_probe_of(api, profile.namespace, profile.deployment),
    )
    assert state.complete and state.observed_generation >= generation
    assert kserve.proxy_container_spec(api, profile).image == cell.proxy.image

    selector = kserve.controller_pod_selector_of(api, profile.namespace, profile.deployment)
    pods = _live_pods(api, profile.namespace, selector)
    assert len(pods) == 1
    images = {c.name: c.image for c in pods[0].spec.containers}
    assert images[profile.proxy_container] == cell.proxy.image
    assert pods[0].status.phase == "Running"
    # The old ReplicaSet is scaled to zero: exactly one ReplicaSet still has replicas.
    replica_sets = k8s_client.AppsV1Api(api).list_namespaced_replica_set(profile.namespace, label_selector=selector)
    assert sorted(rs.spec.replicas for rs in replica_sets.items) == [0, 1]


# -- failing fast ---------------------------------------------------------------------


class CountingProbe:
    """A ``failure_evidence`` probe that returns fixed lines and counts its calls."""

    def __init__(self, lines: list[str] | None) -> None:
        self.lines = lines
        self.calls = 0

    def __call__(self) -> list[str] | None:
        self.calls += 1
        return self.lines


def test_an_image_pull_line_raises_image_unavailable_on_the_first_poll(
    api: k8s_client.ApiClient, stuck_deployment: str
) -> None:
    lines = [
        "pod stuck-5d9c-x2k4 container kube-rbac-proxy: ImagePullBackOff: Back-off pulling image "
        '"gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1" (restarts 0)'
    ]
    probe = CountingProbe(lines)
    with pytest.raises(ImageUnavailable) as raised:
        wait_for_rollout(api, PROBES_NAMESPACE, stuck_deployment, timeout_s=GENEROUS_TIMEOUT_S, failure_evidence=probe)
    assert probe.calls == 1  # no watch window was waited: the first poll decided
    assert raised.value.evidence == lines
    assert str(raised.value) == f"deployment {PROBES_NAMESPACE}/stuck: image cannot be pulled: {lines[0]}"


def test_a_crash_loop_line_raises_rollout_failed_not_image_unavailable(
    api: k8s_client.ApiClient, stuck_deployment: str
) -> None:
    lines = [
        "pod stuck-5d9c-x2k4 container kube-rbac-proxy: CrashLoopBackOff: back-off 40s restarting failed container "
        "(restarts 3); last exit 2 (Error)",
        "pod stuck-5d9c-x2k4 container manager: CrashLoopBackOff (restarts 3)",
    ]
    probe = CountingProbe(lines)
    with pytest.raises(RolloutFailed) as raised:
        wait_for_rollout(api, PROBES_NAMESPACE, stuck_deployment, timeout_s=GENEROUS_TIMEOUT_S, failure_evidence=probe)
    assert type(raised.value) is RolloutFailed
    assert probe.calls == 1
    assert raised.value.evidence == lines
    assert str(raised.value) == f"deployment {PROBES_NAMESPACE}/stuck: pods are failing: {lines[0]}"


def test_an_image_pull_reason_in_a_later_line_still_means_image_unavailable(
    api: k8s_client.ApiClient, stuck_deployment: str
) -> None:
    lines = [
        "pod stuck-5d9c-x2k4 container manager: CrashLoopBackOff (restarts 3)",
        "pod stuck-5d9c-x2k4 container kube-rbac-proxy: ErrImagePull: 401 Unauthorized (restarts 0)",
    ]
    with pytest.raises(ImageUnavailable) as raised:
        wait_for_rollout(
            api, PROBES_NAMESPACE, stuck_deployment, timeout_s=GENEROUS_TIMEOUT_S, failure_evidence=CountingProbe(lines)
        )
    assert raised.value.evidence == lines


def test_a_probe_that_finds_nothing_waits_until_the_timeout(api: k8s_client.ApiClient, stuck_deployment: str) -> None:
    probe = CountingProbe(None)
    with pytest.raises(RolloutFailed) as raised:
        wait_for_rollout(api, PROBES_NAMESPACE, stuck_deployment, timeout_s=2, window_s=1, failure_evidence=probe)
    assert type(raised.value) is RolloutFailed
    assert str(raised.value).startswith(f"deployment {PROBES_NAMESPACE}/stuck did not roll out in 2s (last seen: ")
    assert "available 0/1" in str(raised.value)
    assert raised.value.evidence == []
    assert probe.calls >= 1


def test_a_pull_error_reported_in_a_real_pod_status_raises_image_unavailable(
    api: k8s_client.ApiClient, control_plane: ControlPlane, probes_namespace: str
) -> None:
    name = "pull-error"
    apps, core = k8s_client.AppsV1Api(api), k8s_client.CoreV1Api(api)
    # The Node must exist: the pod garbage collector deletes pods bound to missing nodes.
    # It is tainted so that the scheduler never puts another test's pod there.
    core.create_node(
        k8s_client.V1Node(
            metadata=k8s_client.V1ObjectMeta(name=NO_KUBELET_NODE, labels={"kubernetes.io/hostname": NO_KUBELET_NODE}),
            spec=k8s_client.V1NodeSpec(
                taints=[k8s_client.V1Taint(key="kserve-compat.test/no-kubelet", value="true", effect="NoSchedule")]
            ),
        )
    )
    apps.create_namespaced_deployment(probes_namespace, _deployment(probes_namespace, name, node_name=NO_KUBELET_NODE))

    def bound_pod() -> tuple[bool, str]:
        pods = _live_pods(api, probes_namespace, f"app={name}")
        if not pods:
            return False, "no pod yet"
        return pods[0].spec.node_name == NO_KUBELET_NODE, f"pod {pods[0].metadata.name} on {pods[0].spec.node_name}"

    wait_ready(f"a pod of {name}", bound_pod, watched=list(control_plane.processes.values()), timeout=60)
    pod = _live_pods(api, probes_namespace, f"app={name}")[0]
    message = (
        'failed to pull and unpack image "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1": '
        "failed to resolve reference: unexpected status from HEAD request: 403 Forbidden"
    )
    status = {
        "containerStatuses": [
            {
                "name": "kube-rbac-proxy",
                "image": "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"waiting": {"reason": "ErrImagePull", "message": message}},
            }
        ]
    }
    core.patch_namespaced_pod_status(pod.metadata.name, probes_namespace, {"status": status})

    probe = _probe_of(api, probes_namespace, name)
    with pytest.raises(ImageUnavailable) as raised:
        wait_for_rollout(api, probes_namespace, name, timeout_s=GENEROUS_TIMEOUT_S, failure_evidence=probe)
    evidence = raised.value.evidence
    assert evidence == [
        f"pod {pod.metadata.name} container kube-rbac-proxy: ErrImagePull: {message} (restarts 0)",
    ]
    assert "image cannot be pulled" in str(raised.value)
    # Nobody overwrote the status this test wrote (kwok would have, on its own node).
    stored = core.read_namespaced_pod(pod.metadata.name, probes_namespace)
    assert stored.status.container_statuses[0].state.waiting.reason == "ErrImagePull"


def test_the_new_pods_of_a_rollout_are_told_from_a_stuck_earlier_ones(
    api: k8s_client.ApiClient, controller_rolled_out: RolloutState
) -> None:
    """``new_pods_selector``: after a second change, only the newest ReplicaSet's pods (a
    migration away from a stuck rollout must not fail on the stuck pods)."""
    from e2e.rollout import new_pods_selector

    core, apps = k8s_client.CoreV1Api(api), k8s_client.AppsV1Api(api)
    namespace, name = "rollout-selector", "two-revisions"
    core.create_namespace({"metadata": {"name": namespace}})  # its controllers make the default ServiceAccount
    labels = {"app": name}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels},
                 "spec": {"containers": [{"name": "c", "image": "example.invalid/first:v1"}]}}},
    })  # fmt: skip
    wait_for_rollout(api, namespace, name, timeout_s=120)
    first = new_pods_selector(api, namespace, name)
    assert first is not None and first.startswith("app=two-revisions,pod-template-hash=")
    apps.patch_namespaced_deployment(name, namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "c", "image": "example.invalid/second:v2"}]}}}})  # fmt: skip
    wait_for_rollout(api, namespace, name, timeout_s=120)
    second = new_pods_selector(api, namespace, name)
    assert second is not None and second != first
    pods = _live_pods(api, namespace, second)
    assert pods and all(p.spec.containers[0].image == "example.invalid/second:v2" for p in pods)
