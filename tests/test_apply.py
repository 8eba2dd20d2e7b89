"""Server-side apply in dependency order (``e2e.apply``) against a real kube-apiserver.

The control plane is real etcd + kube-apiserver processes (``e2e.local.controlplane``); the
manifests are real KServe and cert-manager releases, obtained through the harness's own
resolver (``tests/helpers/release_files.py``: offline directory, cache, download). No
controllers run, so nothing but this test writes to the objects it applies.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes import dynamic

from e2e.apply import FIELD_MANAGER, Applier, ApplyError, object_ref, ordered, wait_established
from e2e.manifests import ReleaseFiles, load_release_manifest
from e2e.matrix import load_matrix

pytestmark = pytest.mark.needs_binaries

KSERVE_VERSION = "v0.16.0"  # the biggest kserve.yaml mirrored (3.5 MB)
CERT_MANAGER_VERSION = "v1.16.1"
# The limit of all annotations of one object together (256 KiB): what client-side apply's
# last-applied-configuration annotation would have to fit in.
ANNOTATION_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def files(release_files: ReleaseFiles) -> ReleaseFiles:
    return release_files


@pytest.fixture(scope="module")
def kserve_documents(files: ReleaseFiles) -> list[dict[str, Any]]:
    manifest = load_release_manifest(load_matrix().release(KSERVE_VERSION), files)
    return list(manifest.documents)


@pytest.fixture(scope="module")
def cert_manager_documents(files: ReleaseFiles) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(files.cert_manager_crds(CERT_MANAGER_VERSION)) if d]


@pytest.fixture(scope="module")
def installed(
    api: k8s_client.ApiClient, cert_manager_documents: list[dict[str, Any]], kserve_documents: list[dict[str, Any]]
) -> list[str]:
    """cert-manager's CRDs, then the whole v0.16.0 kserve.yaml; returns what was applied."""
    Applier(api).apply(cert_manager_documents)
    report = Applier(api).apply(kserve_documents)
    assert report.skipped == []
    return report.applied


def _live(api: k8s_client.ApiClient, doc: dict[str, Any]) -> Any:
    client = dynamic.DynamicClient(api)
    resource = client.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
    namespace = doc["metadata"].get("namespace") if resource.namespaced else None
    return client.get(resource, name=doc["metadata"]["name"], namespace=namespace)


# -- ordering -------------------------------------------------------------------------


def test_ordered_puts_crds_then_namespaces_first_and_keeps_manifest_order_after(
    kserve_documents: list[dict[str, Any]],
) -> None:
    docs = ordered(kserve_documents)
    kinds = [d["kind"] for d in docs]
    crd_count = kinds.count("CustomResourceDefinition")
    assert crd_count == 13
    assert kinds[:crd_count] == ["CustomResourceDefinition"] * crd_count
    assert kinds[crd_count] == "Namespace"
    # Everything is kept (nothing dropped, nothing duplicated) ...
    assert sorted(map(object_ref, docs)) == sorted(map(object_ref, kserve_documents))
    # ... and kinds outside the dependency list keep their manifest order (a stable sort).
    rest = [object_ref(d) for d in docs if d["kind"] in ("Deployment", "DaemonSet", "LLMInferenceServiceConfig")]
    original = [
        object_ref(d) for d in kserve_documents if d["kind"] in ("Deployment", "DaemonSet", "LLMInferenceServiceConfig")
    ]
    assert rest == original


def test_ordering_lets_one_apply_create_a_crd_and_its_objects_in_any_manifest_order(
    api: k8s_client.ApiClient,
) -> None:
    # Listed backwards on purpose: the custom object, its namespace, then its CRD.
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.ordering.example.com"},
        "spec": {
            "group": "ordering.example.com",
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget", "listKind": "GadgetList"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                        }
                    },
                }
            ],
        },
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ordering-test"}}
    gadget = {
        "apiVersion": "ordering.example.com/v1",
        "kind": "Gadget",
        "metadata": {"name": "g1", "namespace": "ordering-test"},
        "spec": {"size": 3},
    }
    report = Applier(api).apply([gadget, namespace, crd])
    assert report.applied == [
        "CustomResourceDefinition/gadgets.ordering.example.com",
        "Namespace/ordering-test",
        "Gadget/ordering-test/g1",
    ]
    stored = k8s_client.CustomObjectsApi(api).get_namespaced_custom_object(
        "ordering.example.com", "v1", "ordering-test", "gadgets", "g1"
    )
    assert stored["spec"] == {"size": 3}


# -- the real release -----------------------------------------------------------------


def test_the_v0_16_kserve_yaml_applies_after_cert_manager_crds(
    api: k8s_client.ApiClient, installed: list[str], kserve_documents: list[dict[str, Any]]
) -> None:
    assert sorted(installed) == sorted(object_ref(d) for d in kserve_documents)
    deployment = k8s_client.AppsV1Api(api).read_namespaced_deployment("kserve-controller-manager", "kserve")
    containers = {c.name: c.image for c in deployment.spec.template.spec.containers}
    assert containers["kube-rbac-proxy"] == "quay.io/brancz/kube-rbac-proxy:v0.18.0"
    # cert-manager kinds were served because its CRDs went in first.
    issuer = k8s_client.CustomObjectsApi(api).get_namespaced_custom_object(
        "cert-manager.io", "v1", "kserve", "issuers", "selfsigned-issuer"
    )
    assert issuer["spec"] == {"selfSigned": {}}


def test_every_crd_is_established(
    api: k8s_client.ApiClient,
    installed: list[str],
    kserve_documents: list[dict[str, Any]],
    cert_manager_documents: list[dict[str, Any]],
) -> None:
    wanted = {
        d["metadata"]["name"]
        for d in [*kserve_documents, *cert_manager_documents]
        if d["kind"] == "CustomResourceDefinition"
    }
    assert "inferenceservices.serving.kserve.io" in wanted and "certificates.cert-manager.io" in wanted
    extensions = k8s_client.ApiextensionsV1Api(api)
    not_established = {}
    for name in sorted(wanted):
        conditions = {c.type: c.status for c in extensions.read_custom_resource_definition(name).status.conditions}
        if conditions.get("Established") != "True":
            not_established[name] = conditions
    assert not_established == {}


def test_the_huge_crd_went_in_by_server_side_apply(
    api: k8s_client.ApiClient, installed: list[str], kserve_documents: list[dict[str, Any]]
) -> None:
    isvc_crd = next(
        d
        for d in kserve_documents
        if d["kind"] == "CustomResourceDefinition" and d["metadata"]["name"] == "inferenceservices.serving.kserve.io"
    )
    # Client-side apply would have to store this whole object in one annotation.
    assert len(json.dumps(isvc_crd, separators=(",", ":"))) > ANNOTATION_LIMIT
    stored = k8s_client.ApiextensionsV1Api(api).read_custom_resource_definition("inferenceservices.serving.kserve.io")
    annotations = stored.metadata.annotations or {}
    assert "kubectl.kubernetes.io/last-applied-configuration" not in annotations
    managers = {(m.manager, m.operation) for m in stored.metadata.managed_fields}
    assert (FIELD_MANAGER, "Apply") in managers


def test_a_second_apply_needs_the_release_s_own_webhooks_to_answer(
    api: k8s_client.ApiClient, installed: list[str], kserve_documents: list[dict[str, Any]]
) -> None:
    """v0.16 validates its LLMInferenceServiceConfigs by a webhook (failurePolicy Fail) that only
    the llmisvc controller serves. The first apply creates them before the webhook exists; any
    later apply (even a no-op one: validating admission runs before the no-op check) is refused
    while nobody serves the webhook. The error still names the object, on one line."""
    configs = [d for d in kserve_documents if d["kind"] == "LLMInferenceServiceConfig"]
    with pytest.raises(ApplyError) as raised:
        Applier(api).apply(configs[:1])
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{object_ref(configs[0])}: apply failed: 500 ")
    assert "llminferenceserviceconfig.kserve-webhook-server.validator" in message


def test_applying_the_release_twice_is_idempotent(
    api: k8s_client.ApiClient, installed: list[str], kserve_documents: list[dict[str, Any]]
) -> None:
    # As install_kserve does without a KServe controller: drop the admission webhooks (see above).
    webhooks = [d for d in kserve_documents if d["kind"].endswith("WebhookConfiguration")]
    assert len(webhooks) == 9
    Applier(api).delete(webhooks)
    rest = [d for d in kserve_documents if d not in webhooks]

    def versions() -> dict[str, str]:
        return {object_ref(d): _live(api, d).metadata.resourceVersion for d in rest}

    def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
        return sorted(ref for ref in before if before[ref] != after[ref])

    first = versions()
    report = Applier(api).apply(rest)
    assert sorted(report.applied) == sorted(first)
    second = versions()
    # The one exception is Kubernetes', not the harness's: the bare Secret (name and namespace
    # only) got no managedFields when the apply created it, so the next apply records a
    # "before-first-apply" manager once. Every object with content is untouched.
    assert changed(first, second) in ([], ["Secret/kserve/kserve-webhook-server-secret"])
    Applier(api).apply(rest)
    assert changed(second, versions()) == []


# -- kinds the server does not serve --------------------------------------------------

WIDGET = {
    "apiVersion": "widgets.example.com/v1",
    "kind": "Widget",
    "metadata": {"name": "w1", "namespace": "default"},
    "spec": {},
}
CONFIG_MAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "beside-a-widget", "namespace": "default"},
    "data": {"k": "v"},
}


def test_an_unserved_kind_is_a_one_line_error_naming_the_object(api: k8s_client.ApiClient) -> None:
    with pytest.raises(ApplyError) as raised:
        Applier(api).apply([WIDGET])
    message = str(raised.value)
    assert "\n" not in message
    assert message == "Widget/default/w1: the cluster does not serve widgets.example.com/v1 Widget"


def test_an_unserved_kind_of_a_served_group_is_an_error_too(api: k8s_client.ApiClient) -> None:
    sprocket = {"apiVersion": "apps/v1", "kind": "Sprocket", "metadata": {"name": "s1", "namespace": "default"}}
    with pytest.raises(ApplyError, match=r"^Sprocket/default/s1: the cluster does not serve apps/v1 Sprocket$"):
        Applier(api).apply([sprocket])


def test_unserved_kinds_are_skipped_on_request(api: k8s_client.ApiClient) -> None:
    report = Applier(api).apply([WIDGET, CONFIG_MAP], skip_unknown_kinds=True)
    assert report.skipped == ["Widget/default/w1"]
    assert report.applied == ["ConfigMap/default/beside-a-widget"]
    stored = k8s_client.CoreV1Api(api).read_namespaced_config_map("beside-a-widget", "default")
    assert stored.data == {"k": "v"}


def test_an_object_the_server_rejects_is_a_one_line_error(api: k8s_client.ApiClient) -> None:
    invalid = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "Not_A_Valid_Name", "namespace": "default"},
        "data": {"k": "v"},
    }
    with pytest.raises(ApplyError) as raised:
        Applier(api).apply([invalid])
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("ConfigMap/default/Not_A_Valid_Name: apply failed: 422 ")


# -- waiting for CRDs ---------------------------------------------------------------------


def _crd(plural: str, kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.waiting.example.com"},
        "spec": {
            "group": "waiting.example.com",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


def test_waiting_for_crds_returns_once_they_are_established(api: k8s_client.ApiClient) -> None:
    gizmos = _crd("gizmos", "Gizmo")
    k8s_client.ApiextensionsV1Api(api).create_custom_resource_definition(gizmos)
    wait_established(api, [gizmos["metadata"]["name"]], timeout_s=30)
    stored = k8s_client.ApiextensionsV1Api(api).read_custom_resource_definition(gizmos["metadata"]["name"])
    assert {c.type: c.status for c in stored.status.conditions}["Established"] == "True"


def test_a_crd_that_never_becomes_established_names_itself_and_why(api: k8s_client.ApiClient) -> None:
    # A second CRD of the group with the same kind: the API server refuses its names, so it
    # is never Established. The wait ends at its bound with what it last saw.
    extensions = k8s_client.ApiextensionsV1Api(api)
    extensions.create_custom_resource_definition(_crd("doohickeys", "Doohickey"))
    wait_established(api, ["doohickeys.waiting.example.com"], timeout_s=30)
    extensions.create_custom_resource_definition(_crd("thingamajigs", "Doohickey"))
    with pytest.raises(ApplyError) as raised:
        wait_established(api, ["thingamajigs.waiting.example.com", "doohickeys.waiting.example.com"], timeout_s=3)
    message = str(raised.value)
    assert message.startswith("CRD thingamajigs.waiting.example.com not Established after 3s (last seen: ")
    assert "NamesAccepted=False" in message and '"DoohickeyList" is already in use' in message
    assert "\n" not in message


# -- delete ---------------------------------------------------------------------------


def test_delete_ignores_objects_that_are_already_gone(api: k8s_client.ApiClient) -> None:
    present = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "to-delete", "namespace": "default"},
        "data": {"k": "v"},
    }
    never_created = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "never-created", "namespace": "default"},
    }
    in_a_missing_namespace = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "no-such-namespace"},
    }
    cluster_scoped = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "never-created-role"},
    }
    applier = Applier(api)
    applier.apply([present])
    applier.delete([present, never_created, in_a_missing_namespace, cluster_scoped])
    names = [c.metadata.name for c in k8s_client.CoreV1Api(api).list_namespaced_config_map("default").items]
    assert "to-delete" not in names
    applier.delete([present])  # a second cleanup of the same objects is a no-op
