"""Installing a KServe release into any cluster, swapping its proxy image, deploying samples.

Provider-agnostic: everything here talks to the API server only, so the local tier runs
exactly this code against a real kube-apiserver, and the kind tier against a real cluster.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from e2e import data
from e2e.apply import Applier, ApplyError, ApplyReport
from e2e.cluster.provider import ClusterProvider
from e2e.errors import HarnessError
from e2e.labels import label_selector
from e2e.manifests import load_yaml_documents
from e2e.matrix import ControllerProfile, KServeRelease, version_key
from e2e.rollout import wait_for_rollout
from e2e.secrets import redact
from e2e.targets import ServiceTarget
from e2e.text import one_line

log = logging.getLogger(__name__)

MANIFESTS_DIR = data.MANIFESTS_DIR
SAMPLES_NAMESPACE = "kserve-compat-samples"
ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


class InferenceServiceNotReady(HarnessError):
    def __init__(self, message: str, evidence: list[str] | None = None) -> None:
        super().__init__(message)
        self.evidence = evidence or []


@dataclass
class Installation:
    """What an install did, including how the cluster now differs from a real one."""

    release: KServeRelease
    applied: ApplyReport = field(default_factory=ApplyReport)
    deviations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the install did that the file did not say


def with_release_namespace(documents: Sequence[dict[str, Any]], namespace: str) -> tuple[list[dict[str, Any]], str]:
    """The documents with a Namespace ``namespace`` first when they hold none, and a note.

    The release asset kserve.yaml declares its namespace; the file of the same name in the
    release's Go module (install/<version>/kserve.yaml, read with --manifests-from-module)
    does not from v0.19, whose install scripts create it first (create_or_skip_namespace),
    as this does. Seen: v0.19.0 failed "404 namespaces kserve not found" without it.
    """
    declared = any(
        doc.get("kind") == "Namespace" and (doc.get("metadata") or {}).get("name") == namespace for doc in documents
    )
    if declared:
        return list(documents), ""
    namespace_doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    note = f"the release file declares no Namespace {namespace}: created first, as KServe's install scripts do"
    return [namespace_doc, *documents], note


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of one of our own files under ``manifests/``."""
    return load_yaml_documents(path.read_text())


# -- install ------------------------------------------------------------------------------


def deployment_mode(release: KServeRelease) -> str:
    """The raw (no Knative, no Istio) deployment mode's name in this release's config."""
    # v0.20 renamed RawDeployment to Standard (RawDeployment stays a deprecated alias).
    return "Standard" if version_key(release.version) >= version_key("v0.20.0") else "RawDeployment"


def raw_deployment_config(release: KServeRelease, data: dict[str, str]) -> dict[str, str]:
    """``inferenceservice-config`` data changed so InferenceServices need no Knative/Istio.

    From v0.12 the controller can skip creating the Ingress (``disableIngressCreation``)
    and still report IngressReady; before that, the Ingress object is created, which needs
    no ingress controller to exist.
    """
    changed = dict(data)
    deploy = json.loads(changed.get("deploy") or "{}")
    deploy["defaultDeploymentMode"] = deployment_mode(release)
    changed["deploy"] = json.dumps(deploy, indent=2)
    if version_key(release.version) >= version_key("v0.12.0") and "ingress" in changed:
        ingress = json.loads(changed["ingress"])
        ingress["disableIngressCreation"] = True
        changed["ingress"] = json.dumps(ingress, indent=2)
    return changed


def configure_raw_deployment(api: k8s_client.ApiClient, release: KServeRelease) -> None:
    profile = release.profile
    core = k8s_client.CoreV1Api(api)
    config_map = core.read_namespaced_config_map(profile.config_map, profile.namespace)
    data = raw_deployment_config(release, config_map.data or {})
    core.patch_namespaced_config_map(profile.config_map, profile.namespace, {"data": data})
    log.info("set %s/%s to %s mode", profile.namespace, profile.config_map, deployment_mode(release))


def install_cert_manager(
    api: k8s_client.ApiClient,
    documents: Sequence[dict[str, Any]],
    evidence_of: Callable[[str, str], Callable[[], list[str] | None]] | None = None,
) -> ApplyReport:
    """Apply cert-manager (CRDs only on the local tier; the whole release on kind).

    When the documents include cert-manager's own Deployments, wait for their rollout so
    its webhook answers before KServe's Issuer and Certificate are applied; ``evidence_of``
    (namespace, name) gives each wait its broken pods' evidence, so a crash fails fast with it.
    """
    report = Applier(api).apply(documents)
    for doc in documents:
        if doc.get("kind") == "Deployment":
            meta = doc["metadata"]
            namespace = meta.get("namespace", "cert-manager")
            evidence = evidence_of(namespace, meta["name"]) if evidence_of else None
            wait_for_rollout(api, namespace, meta["name"], timeout_s=300, failure_evidence=evidence)
    return report


def without_empty_ca_bundles(documents: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Drop CRD conversion-webhook ``caBundle`` values that hold no certificate.

    KServe v0.10-v0.12 ship the InferenceService CRD with ``caBundle: Cg==`` (a base64 bare
    newline) for cert-manager's CA injector to overwrite. The Kubernetes 1.34 API server
    rejects that value (422 "unable to load root certificates"), so the release does not
    apply as shipped. Without the field the CRD is accepted and the injector (annotation
    ``cert-manager.io/inject-ca-from``) still fills it in. Returns notes for the report.
    """
    fixed: list[dict[str, Any]] = []
    notes: list[str] = []
    for doc in documents:
        client = (((doc.get("spec") or {}).get("conversion") or {}).get("webhook") or {}).get("clientConfig") or {}
        bundle = client.get("caBundle")
        if doc.get("kind") == "CustomResourceDefinition" and bundle is not None:
            try:
                empty = not base64.b64decode(bundle).strip()
            except (ValueError, TypeError):
                empty = False
            if empty:
                doc = json.loads(json.dumps(doc))
                del doc["spec"]["conversion"]["webhook"]["clientConfig"]["caBundle"]
                notes.append(
                    f"CRD {doc['metadata']['name']}: conversion webhook caBundle {bundle!r} holds no certificate "
                    "and is rejected by the API server; removed before apply (cert-manager injects the CA)"
                )
        fixed.append(doc)
    return fixed, notes


def admission_webhooks(documents: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in documents if d.get("kind") in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")]


def remove_admission_webhooks(api: k8s_client.ApiClient, documents: Sequence[dict[str, Any]]) -> str | None:
    """Delete the release's admission webhooks, for a cluster where no KServe controller
    will ever serve them (with ``failurePolicy: Fail`` every InferenceService and
    ServingRuntime create would be rejected). Returns the deviation to record, or None.

    Neither tier does this: kind runs the controller, and the local provider plays it and
    points the webhooks at it (``e2e/local/webhooks.py``). Tests that install a release
    into a bare API server do.
    """
    webhooks = admission_webhooks(documents)
    if not webhooks:
        return None
    Applier(api).delete(webhooks)
    return f"admission webhooks removed after install ({len(webhooks)}): no KServe controller serves them"


def install_kserve(
    api: k8s_client.ApiClient,
    release: KServeRelease,
    kserve_documents: Sequence[dict[str, Any]],
    runtime_documents: Sequence[dict[str, Any]] = (),
    *,
    controller_runs: bool = True,
    wait_for_controller: Callable[[], object] | None = None,
) -> Installation:
    """Apply a release: CRDs (Established), RBAC, config, controller; then the runtimes.

    ``controller_runs=False`` (the local tier: no kubelet runs pods) skips objects of kinds
    the cluster does not serve. The admission webhooks stay as shipped in both tiers: the
    local provider points them at the manager it plays when ``wait_for_controller`` syncs
    its workloads (before the runtimes, which the webhooks validate). Each change is
    recorded as a deviation from a real cluster.
    """
    installation = Installation(release)
    applier = Applier(api)
    documents, fixes = without_empty_ca_bundles(kserve_documents)
    documents, created = with_release_namespace(documents, release.profile.namespace)
    if created:
        installation.notes.append(created)
    installation.deviations += fixes
    installation.applied.extend(applier.apply(documents, skip_unknown_kinds=not controller_runs))
    if installation.applied.skipped:
        kinds = sorted({ref.split("/")[0] for ref in installation.applied.skipped})
        installation.deviations.append(f"not applied (the cluster does not serve these kinds): {', '.join(kinds)}")
    configure_raw_deployment(api, release)
    if wait_for_controller is not None:
        wait_for_controller()
    if runtime_documents:
        # Newer releases put objects of kinds whose CRDs ship in another release file here
        # (e.g. LLMInferenceServiceConfig): a real install skips them just the same.
        runtimes = applier.apply(runtime_documents, skip_unknown_kinds=True)
        installation.applied.extend(runtimes)
        if runtimes.skipped:
            kinds = sorted({ref.split("/")[0] for ref in runtimes.skipped})
            installation.deviations.append(
                f"{len(runtimes.skipped)} runtime objects not applied: the cluster does not serve {', '.join(kinds)}"
            )
    log.info("KServe %s installed (%d objects)", release.version, len(installation.applied.applied))
    return installation


# -- the proxy image swap -----------------------------------------------------------------


def patch_controller(api: k8s_client.ApiClient, profile: ControllerProfile, patch: dict[str, Any]) -> int:
    """Apply a strategic-merge patch to the controller Deployment; returns its new generation."""
    apps = k8s_client.AppsV1Api(api)
    try:
        deployment = apps.patch_namespaced_deployment(profile.deployment, profile.namespace, patch)
    except ApiException as exc:
        raise ApplyError(
            f"deployment {profile.namespace}/{profile.deployment}: patch rejected: {exc.status} {exc.reason}"
        ) from None
    return int(deployment.metadata.generation or 0)


def controller_pod_selector_of(api: k8s_client.ApiClient, namespace: str, deployment_name: str) -> str:
    """The label selector of a Deployment's pods, as the list APIs take it."""
    deployment = k8s_client.AppsV1Api(api).read_namespaced_deployment(deployment_name, namespace)
    return label_selector(deployment.spec.selector)


def proxy_container_spec(api: k8s_client.ApiClient, profile: ControllerProfile) -> Any:
    """The proxy container as the API server stores it (after any patch)."""
    deployment = k8s_client.AppsV1Api(api).read_namespaced_deployment(profile.deployment, profile.namespace)
    for container in deployment.spec.template.spec.containers:
        if container.name == profile.proxy_container:
            return container
    raise HarnessError(
        f"deployment {profile.namespace}/{profile.deployment}: no container named {profile.proxy_container}"
    )


# -- sample InferenceServices -------------------------------------------------------------


def sample_inference_services() -> list[dict[str, Any]]:
    """The sklearn-iris InferenceServices (v1 and v2 protocol) from ``manifests/``."""
    return load_documents(MANIFESTS_DIR / "inference-services.yaml")


def deploy_inference_services(
    api: k8s_client.ApiClient, release: KServeRelease, documents: Sequence[dict[str, Any]]
) -> list[str]:
    """Apply the samples in raw mode; returns their names."""
    mode = deployment_mode(release)
    docs = []
    for doc in documents:
        doc = json.loads(json.dumps(doc))  # a copy we may annotate
        if doc.get("kind") == "InferenceService":
            doc.setdefault("metadata", {}).setdefault("annotations", {})["serving.kserve.io/deploymentMode"] = mode
        docs.append(doc)
    Applier(api).apply(docs)
    return [d["metadata"]["name"] for d in docs if d.get("kind") == "InferenceService"]


def predictor_service(isvc: dict[str, Any]) -> ServiceTarget:
    """The Service in front of an InferenceService's predictor, from its reported address.

    The name changed across releases (``<name>-predictor-default`` in v0.10,
    ``<name>-predictor`` later), so read it from the status instead of guessing.
    """
    meta, status = isvc.get("metadata", {}), isvc.get("status", {})
    predictor = status.get("components", {}).get("predictor", {})
    url = (predictor.get("address") or {}).get("url") or (status.get("address") or {}).get("url") or ""
    host = urllib.parse.urlsplit(url).hostname or ""
    if not host:
        where = f"{meta.get('namespace')}/{meta.get('name')}"
        raise InferenceServiceNotReady(f"InferenceService {where}: no address in its status")
    port = urllib.parse.urlsplit(url).port or 80
    return ServiceTarget(namespace=meta.get("namespace", SAMPLES_NAMESPACE), name=host.split(".")[0], port=port)


def wait_inference_service_ready(
    api: k8s_client.ApiClient,
    namespace: str,
    name: str,
    *,
    timeout_s: float = 600,
    failure_evidence: Callable[[], list[str] | None] | None = None,
) -> dict[str, Any]:
    """Watch the InferenceService until its ``Ready`` condition is True.

    Fails fast when KServe's own condition says RBAC denied it (that does not heal by
    waiting), or when ``failure_evidence`` finds some; KServe's condition messages are the
    evidence of a timeout."""
    custom = k8s_client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout_s
    last_seen = "no status yet"
    messages: list[str] = []  # KServe's own words on the conditions that are not True
    while time.monotonic() < deadline:
        stream = watch.Watch()
        for event in stream.stream(
            custom.list_namespaced_custom_object,
            ISVC_GROUP,
            ISVC_VERSION,
            namespace,
            ISVC_PLURAL,
            field_selector=f"metadata.name={name}",
            timeout_seconds=10,
        ):
            obj = event["object"]
            conditions = {c.get("type"): c for c in obj.get("status", {}).get("conditions", [])}
            ready = conditions.get("Ready", {})
            last_seen = ", ".join(f"{t}={c.get('status')}" for t, c in sorted(conditions.items())) or last_seen
            messages = [
                f"{t}={c.get('status')} ({c.get('reason', 'no reason')}): {c.get('message', 'no message')}"
                for t, c in sorted(conditions.items())
                if c.get("status") != "True"
            ]
            if ready.get("status") == "True":
                stream.stop()
                log.info("InferenceService %s/%s is Ready", namespace, name)
                return dict(obj)
            denied = [message for message in messages if "forbidden" in message]
            if denied:
                stream.stop()
                raise InferenceServiceNotReady(f"InferenceService {namespace}/{name}: {denied[-1]}", messages)
        evidence = failure_evidence() if failure_evidence else None
        if evidence:
            raise InferenceServiceNotReady(f"InferenceService {namespace}/{name}: {evidence[0]}", evidence)
        log.info("waiting for InferenceService %s/%s to be Ready (last seen: %s)", namespace, name, last_seen)
    raise InferenceServiceNotReady(
        f"InferenceService {namespace}/{name} not Ready after {timeout_s:.0f}s (last seen: {last_seen})",
        messages or [f"InferenceService {namespace}/{name}: {last_seen}"],
    )


def controller_denied(provider: ClusterProvider, profile: ControllerProfile) -> Callable[[], list[str] | None]:
    """Evidence that RBAC denies the KServe controller (its own log lines saying
    ``forbidden``), or None: a fail-fast probe for waits that cannot end while it lasts."""

    def probe() -> list[str] | None:
        selector = controller_pod_selector_of(provider.api_client(), profile.namespace, profile.deployment)
        logs = provider.container_logs(profile.namespace, selector, profile.manager_container)
        denied = [one_line(redact(line))[:400] for line in logs.splitlines() if "forbidden" in line]
        if not denied:
            return None
        return [f"the KServe controller is denied by RBAC ({len(denied)} log lines say forbidden)", *denied[-3:]]

    return probe


def inference_endpoint(
    provider: ClusterProvider,
    namespace: str,
    name: str,
    *,
    timeout_s: float = 600,
    failure_evidence: Callable[[], list[str] | None] | None = None,
) -> contextlib.AbstractContextManager[str]:
    """``host:port`` that answers the InferenceService's inference protocol: once KServe
    says it is Ready, its predictor Service (on kind the kubelet's pods behind it; locally
    the processes that play them). ``InferenceServiceNotReady`` carries KServe's condition
    messages when it never gets there."""
    isvc = wait_inference_service_ready(
        provider.api_client(), namespace, name, timeout_s=timeout_s, failure_evidence=failure_evidence
    )
    provider.sync_workloads()  # locally: play the predictor pods KServe created (kind: nothing to do)
    return provider.endpoint(predictor_service(isvc))
