"""Installing real KServe releases (``e2e.kserve``) into a real kube-apiserver.

Per release (v0.12.1 and v0.14.0, through ``tests/helpers/release_files.py``) one control plane of
etcd + kube-apiserver processes is started and the release installed exactly as the local
tier does it: cert-manager's CRDs, then ``install_kserve(controller_runs=False)`` with the
release's ServingRuntimes, then the sample InferenceServices. Unlike the local tier, no
manager is played here (``tests/local/test_manager.py`` plays it), so the admission
webhooks, which nothing would serve, are removed first (``remove_admission_webhooks``). The control plane is
module-scoped per release (parametrized), so the two releases never share a cluster, just
as the harness gives each (release x Kubernetes) group a cluster of its own.

No KServe controller runs: InferenceServices are stored but never become Ready, so nothing
here waits for Ready. cert-manager's CRDs are v1.16.1 for both releases (the only version
mirrored; the local tier makes the same substitution and records it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from helpers.real_cluster import real_control_plane
from helpers.release_files import session_release_files
from kubernetes import client as k8s_client

from e2e import kserve
from e2e.apply import ApplyError, ApplyReport
from e2e.manifests import ReleaseFiles, ReleaseManifest, kserve_file, load_release_manifest, proxy_patch
from e2e.matrix import KServeRelease, MatrixCell, load_matrix

pytestmark = [pytest.mark.needs_binaries, pytest.mark.slow]

CERT_MANAGER_VERSION = "v1.16.1"
RELEASES = ["v0.12.1", "v0.14.0"]

SHIPPED_ARGS = [
    "--secure-listen-address=0.0.0.0:8443",
    "--upstream=http://127.0.0.1:8080/",
    "--logtostderr=true",
    "--v=10",
]
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}
# The proxy's own securityContext as each release ships it.
SHIPPED_SECURITY_CONTEXT: dict[str, dict[str, Any] | None] = {"v0.12.1": None, "v0.14.0": RESTRICTED}
WEBHOOK_NAMES = {
    "inferenceservice.serving.kserve.io",
    "clusterservingruntime.serving.kserve.io",
    "inferencegraph.serving.kserve.io",
    "servingruntime.serving.kserve.io",
    "trainedmodel.serving.kserve.io",
}


@dataclass
class Installed:
    api: k8s_client.ApiClient
    release: KServeRelease
    manifest: ReleaseManifest
    runtimes: list[dict[str, Any]]
    cert_manager: ApplyReport
    installation: kserve.Installation
    deployed: list[str]


@pytest.fixture(scope="module")
def files(release_files: ReleaseFiles) -> ReleaseFiles:
    for version in RELEASES:
        release_files.read(kserve_file(version))  # all or none: skip before a control plane starts
    return release_files


@pytest.fixture(scope="module", params=RELEASES)
def installed(request: pytest.FixtureRequest, files: ReleaseFiles) -> Iterator[Installed]:
    release = load_matrix().release(request.param)
    manifest = load_release_manifest(release, files)
    assert release.runtimes_file == "kserve-cluster-resources.yaml"
    runtimes = list(load_release_manifest(release, files, release.runtimes_file).documents)
    cert_manager = [d for d in yaml.safe_load_all(files.cert_manager_crds(CERT_MANAGER_VERSION)) if d]
    removed: list[str] = []
    with real_control_plane() as plane, plane.api_client() as api:
        cert_manager_report = kserve.install_cert_manager(api, cert_manager)
        installation = kserve.install_kserve(
            api,
            release,
            manifest.documents,
            runtimes,
            controller_runs=False,
            wait_for_controller=lambda: _without_webhooks(api, manifest, removed),
        )
        installation.deviations += removed
        deployed = kserve.deploy_inference_services(api, release, kserve.sample_inference_services())
        yield Installed(api, release, manifest, runtimes, cert_manager_report, installation, deployed)


def _without_webhooks(api: k8s_client.ApiClient, manifest: ReleaseManifest, removed: list[str]) -> None:
    """Where the local tier plays the manager: here nothing will serve the webhooks."""
    deviation = kserve.remove_admission_webhooks(api, manifest.documents)
    removed += [deviation] if deviation else []


def _data(document: dict[str, Any]) -> dict[str, str]:
    return dict(document.get("data") or {})


def _proxy(installed: Installed) -> tuple[str, list[str], dict[str, Any] | None]:
    container = kserve.proxy_container_spec(installed.api, installed.release.profile)
    context = container.security_context
    return (
        container.image,
        list(container.args or []),
        installed.api.sanitize_for_serialization(context) if context is not None else None,
    )


def _cell(installed: Installed, proxy_alias: str, variant: str | None = None) -> MatrixCell:
    matrix = load_matrix()
    return MatrixCell(
        installed.release,
        matrix.proxy(proxy_alias),
        matrix.k8s("1.34"),
        matrix.variant(variant) if variant else None,
    )


# -- the install ----------------------------------------------------------------------


def test_cert_manager_crds_only(installed: Installed) -> None:
    applied = installed.cert_manager.applied
    assert applied and all(ref.startswith("CustomResourceDefinition/") for ref in applied)
    assert "CustomResourceDefinition/issuers.cert-manager.io" in applied
    assert "CustomResourceDefinition/certificates.cert-manager.io" in applied


def test_crds_deployment_services_and_config_are_in_the_cluster(installed: Installed) -> None:
    api, manifest, profile = installed.api, installed.manifest, installed.release.profile
    extensions = k8s_client.ApiextensionsV1Api(api)
    for crd in manifest.crds():
        stored = extensions.read_custom_resource_definition(crd["metadata"]["name"])
        conditions = {c.type: c.status for c in stored.status.conditions}
        assert conditions.get("Established") == "True", crd["metadata"]["name"]

    deployment = k8s_client.AppsV1Api(api).read_namespaced_deployment(profile.deployment, profile.namespace)
    images = {c.name: c.image for c in deployment.spec.template.spec.containers}
    assert images == {c["name"]: c["image"] for c in manifest.deployment()["spec"]["template"]["spec"]["containers"]}

    core = k8s_client.CoreV1Api(api)
    services = {s.metadata.name for s in core.list_namespaced_service(profile.namespace).items}
    assert services >= {
        "kserve-controller-manager-metrics-service",
        "kserve-controller-manager-service",
        "kserve-webhook-server-service",
    }
    metrics = core.read_namespaced_service(profile.metrics_service, profile.namespace)
    assert [(p.name, p.port) for p in metrics.spec.ports] == [("https", profile.metrics_port)]
    assert core.read_namespaced_config_map(profile.config_map, profile.namespace).data
    assert core.read_namespaced_service_account(profile.service_account, profile.namespace)

    applied = installed.installation.applied
    assert applied.skipped == []
    assert "Issuer/kserve/selfsigned-issuer" in applied.applied  # cert-manager's CRDs went in first


def test_admission_webhooks_are_removed_and_the_deviation_recorded(installed: Installed) -> None:
    shipped = installed.manifest.webhook_configurations()
    assert {d["metadata"]["name"] for d in shipped} == WEBHOOK_NAMES
    admission = k8s_client.AdmissionregistrationV1Api(installed.api)
    left = {w.metadata.name for w in admission.list_validating_webhook_configuration().items}
    left |= {w.metadata.name for w in admission.list_mutating_webhook_configuration().items}
    assert left & WEBHOOK_NAMES == set()
    expected = [f"admission webhooks removed after install ({len(shipped)}): no KServe controller serves them"]
    if installed.release.version == "v0.12.1":  # ships caBundle "Cg==", which Kubernetes 1.34 rejects
        expected.insert(
            0,
            "CRD inferenceservices.serving.kserve.io: conversion webhook caBundle 'Cg==' holds no certificate "
            "and is rejected by the API server; removed before apply (cert-manager injects the CA)",
        )
    assert installed.installation.deviations == expected


def test_inferenceservice_config_is_in_raw_deployment_mode(installed: Installed) -> None:
    profile = installed.release.profile
    stored = k8s_client.CoreV1Api(installed.api).read_namespaced_config_map(profile.config_map, profile.namespace)
    shipped = _data(installed.manifest.find("ConfigMap", profile.config_map, profile.namespace) or {})
    assert json.loads(shipped["deploy"])["defaultDeploymentMode"] == "Serverless"

    data = dict(stored.data)
    assert json.loads(data.pop("deploy")) == {
        **json.loads(shipped.pop("deploy")),
        "defaultDeploymentMode": "RawDeployment",
    }
    shipped_ingress = json.loads(shipped.pop("ingress"))
    assert shipped_ingress["disableIngressCreation"] is False  # v0.12+ ship the switch, off
    assert json.loads(data.pop("ingress")) == {**shipped_ingress, "disableIngressCreation": True}
    assert data == shipped  # every other key exactly as shipped


def test_cluster_serving_runtimes_are_created(installed: Installed) -> None:
    custom = k8s_client.CustomObjectsApi(installed.api)
    listed = custom.list_cluster_custom_object("serving.kserve.io", "v1alpha1", "clusterservingruntimes")
    stored = {item["metadata"]["name"] for item in listed["items"]}
    shipped = {d["metadata"]["name"] for d in installed.runtimes if d["kind"] == "ClusterServingRuntime"}
    assert "kserve-sklearnserver" in shipped
    assert stored == shipped
    sklearn = custom.get_cluster_custom_object(
        "serving.kserve.io", "v1alpha1", "clusterservingruntimes", "kserve-sklearnserver"
    )
    assert {"name": "sklearn", "version": "1", "autoSelect": True, "priority": 1} in sklearn["spec"][
        "supportedModelFormats"
    ]
    storage = custom.get_cluster_custom_object("serving.kserve.io", "v1alpha1", "clusterstoragecontainers", "default")
    assert storage["metadata"]["name"] == "default"


def test_sample_inference_services_are_created_in_raw_mode(installed: Installed) -> None:
    custom = k8s_client.CustomObjectsApi(installed.api)
    listed = custom.list_namespaced_custom_object(
        kserve.ISVC_GROUP, kserve.ISVC_VERSION, kserve.SAMPLES_NAMESPACE, kserve.ISVC_PLURAL
    )
    by_name = {item["metadata"]["name"]: item for item in listed["items"]}
    assert sorted(by_name) == ["sklearn-iris", "sklearn-iris-v2"]
    for name, isvc in by_name.items():
        metadata = isvc["metadata"]
        assert metadata["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment", name
        assert metadata["labels"]["networking.kserve.io/visibility"] == "cluster-local", name
        model = isvc["spec"]["predictor"]["model"]
        assert model["modelFormat"]["name"] == "sklearn"
        assert model["storageUri"] == "gs://kfserving-examples/models/sklearn/1.0/model"
        # No controller runs: nobody ever reports Ready.
        conditions = {c.get("type"): c.get("status") for c in (isvc.get("status") or {}).get("conditions", [])}
        assert conditions.get("Ready") != "True"
    assert by_name["sklearn-iris-v2"]["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    # The sample manifest's own documents are not changed by the deployment-mode annotation.
    for doc in kserve.sample_inference_services():
        assert "annotations" not in doc["metadata"]


def test_deploy_inference_services_returns_the_inference_services_names(installed: Installed) -> None:
    assert installed.deployed == ["sklearn-iris", "sklearn-iris-v2"]


def test_a_ready_status_written_as_the_controller_would_is_seen_by_the_waiter(installed: Installed) -> None:
    # The status a KServe controller writes once the predictor is up; here the test writes it.
    name = "sklearn-iris"
    url = f"http://{name}-predictor.{kserve.SAMPLES_NAMESPACE}.svc.cluster.local"
    status = {
        "status": {
            "conditions": [
                {"type": "IngressReady", "status": "True", "lastTransitionTime": "2026-11-27T00:00:00Z"},
                {"type": "PredictorReady", "status": "True", "lastTransitionTime": "2026-11-27T00:00:00Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-27T00:00:00Z"},
            ],
            "address": {"url": url},
            "components": {"predictor": {"address": {"url": url}}},
        }
    }
    k8s_client.CustomObjectsApi(installed.api).patch_namespaced_custom_object_status(
        kserve.ISVC_GROUP,
        kserve.ISVC_VERSION,
        kserve.SAMPLES_NAMESPACE,
        kserve.ISVC_PLURAL,
        name,
        status,
        _content_type="application/merge-patch+json",
    )
    isvc = kserve.wait_inference_service_ready(installed.api, kserve.SAMPLES_NAMESPACE, name, timeout_s=60)
    target = kserve.predictor_service(isvc)
    assert (target.namespace, target.name, target.port) == (kserve.SAMPLES_NAMESPACE, f"{name}-predictor", 80)


# -- the proxy patch ------------------------------------------------------------------


def test_the_proxy_patch_changes_the_image_in_the_stored_deployment(installed: Installed) -> None:
    profile = installed.release.profile
    cell = _cell(installed, "quay-v0.22.1")
    before = k8s_client.AppsV1Api(installed.api).read_namespaced_deployment(profile.deployment, profile.namespace)
    generation = kserve.patch_controller(installed.api, profile, proxy_patch(cell, installed.manifest))
    assert generation == before.metadata.generation + 1
    image, args, context = _proxy(installed)
    assert image == "quay.io/brancz/kube-rbac-proxy:v0.22.1"
    assert args == SHIPPED_ARGS
    assert context == SHIPPED_SECURITY_CONTEXT[installed.release.version]
    after = k8s_client.AppsV1Api(installed.api).read_namespaced_deployment(profile.deployment, profile.namespace)
    manager = next(c for c in after.spec.template.spec.containers if c.name == profile.manager_container)
    shipped_manager = installed.manifest.manager_container()
    assert (manager.image, manager.args) == (shipped_manager["image"], shipped_manager["args"])


def test_variant_patches_set_args_and_security_context_exactly_and_are_absolute(installed: Installed) -> None:
    api, manifest, profile = installed.api, installed.manifest, installed.release.profile
    shipped_context = SHIPPED_SECURITY_CONTEXT[installed.release.version]

    # A variant that changes the args.
    kserve.patch_controller(api, profile, proxy_patch(_cell(installed, "quay-v0.18.0", "quiet"), manifest))
    assert _proxy(installed) == (
        "quay.io/brancz/kube-rbac-proxy:v0.18.0",
        [*SHIPPED_ARGS[:-1], "--v=0"],
        shipped_context,
    )

    # Someone else leaves a field in the proxy's securityContext ...
    k8s_client.AppsV1Api(api).patch_namespaced_deployment(
        profile.deployment,
        profile.namespace,
        {
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": profile.proxy_container, "securityContext": {"runAsUser": 1000}}]}
                }
            }
        },
    )
    assert (_proxy(installed)[2] or {}).get("runAsUser") == 1000

    # ... a variant that sets the securityContext replaces it whole, and restores the args.
    sc_cell = _cell(installed, "k8s-v0.13.1", "shipped-security-context")
    kserve.patch_controller(api, profile, proxy_patch(sc_cell, manifest))
    assert _proxy(installed) == ("registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1", SHIPPED_ARGS, RESTRICTED)

    # A variant that drops an arg.
    kserve.patch_controller(api, profile, proxy_patch(_cell(installed, "quay-v0.16.0", "drop-logtostderr"), manifest))
    assert _proxy(installed) == (
        "quay.io/brancz/kube-rbac-proxy:v0.16.0",
        ["--secure-listen-address=0.0.0.0:8443", "--upstream=http://127.0.0.1:8080/", "--v=10"],
        shipped_context,
    )

    # The cell without a variant after all of them: exactly the release as shipped, but the image.
    kserve.patch_controller(api, profile, proxy_patch(_cell(installed, "quay-v0.18.0"), manifest))
    assert _proxy(installed) == ("quay.io/brancz/kube-rbac-proxy:v0.18.0", SHIPPED_ARGS, shipped_context)


def test_a_patch_the_api_server_rejects_is_a_one_line_apply_error(installed: Installed) -> None:
    profile = installed.release.profile
    patch = {
        "spec": {
            "template": {"spec": {"containers": [{"name": profile.proxy_container, "imagePullPolicy": "Sometimes"}]}}
        }
    }
    with pytest.raises(ApplyError) as raised:
        kserve.patch_controller(installed.api, profile, patch)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"deployment {profile.namespace}/{profile.deployment}: patch rejected: 422")


def test_cert_manager_waits_carry_each_deployments_own_failure_evidence(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cert-manager pod that crashes (e.g. 'too many open files' on a crowded host) fails the
    install fast with its evidence, not after 300 s with none."""
    waits: list[tuple[str, str, list[str] | None]] = []

    def wait(api: Any, namespace: str, name: str, **kwargs: Any) -> None:
        evidence = kwargs["failure_evidence"]
        waits.append((namespace, name, evidence() if evidence else None))

    class Applied:
        def __init__(self, api: Any) -> None:
            pass

        def apply(self, documents: Any) -> ApplyReport:
            return ApplyReport()

    monkeypatch.setattr(kserve, "Applier", Applied)
    monkeypatch.setattr(kserve, "wait_for_rollout", wait)
    documents = [
        {"kind": "CustomResourceDefinition", "metadata": {"name": "issuers.cert-manager.io"}},
        {"kind": "Deployment", "metadata": {"name": "cert-manager-cainjector", "namespace": "cert-manager"}},
        {"kind": "Deployment", "metadata": {"name": "cert-manager-webhook", "namespace": "cert-manager"}},
    ]

    def evidence_of(namespace: str, name: str) -> Any:
        return lambda: [f"pod {namespace}/{name}-x: CrashLoopBackOff"]

    kserve.install_cert_manager(None, documents, evidence_of=evidence_of)  # type: ignore[arg-type]
    assert waits == [
        ("cert-manager", "cert-manager-cainjector", ["pod cert-manager/cert-manager-cainjector-x: CrashLoopBackOff"]),
        ("cert-manager", "cert-manager-webhook", ["pod cert-manager/cert-manager-webhook-x: CrashLoopBackOff"]),
    ]


def test_a_release_file_without_its_namespace_gets_it_first() -> None:
    """The Go module's install/v0.19.0/kserve.yaml declares no Namespace (its install script
    creates it); the release asset does. Without it the install failed with 404."""
    account = {"kind": "ServiceAccount", "metadata": {"name": "kserve-controller-manager", "namespace": "kserve"}}
    documents, note = kserve.with_release_namespace([account], "kserve")
    assert documents == [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kserve"}}, account]
    assert note == "the release file declares no Namespace kserve: created first, as KServe's install scripts do"
    declared = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kserve"}}, account]
    assert kserve.with_release_namespace(declared, "kserve") == (declared, "")


def test_the_release_asset_declares_its_namespace() -> None:
    manifest = load_release_manifest(load_matrix().release("v0.20.0"), session_release_files())
    documents, note = kserve.with_release_namespace(manifest.documents, "kserve")
    assert note == "" and len(documents) == len(manifest.documents)
