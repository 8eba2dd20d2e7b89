"""A real API server with real KServe releases installed, for the commands that read or change
a live cluster (``preflight``, ``migrate``): their shared helpers (the fixtures are in conftest).

KServe is installed from the real release manifests (``tests/helpers/release_files.py``) with
server-side apply: CRDs, RBAC, the controller Deployment, Services. The admission webhooks
are deleted after the apply since no controller serves them (and so is the InferenceService
CRD's conversion webhook, see ``without_conversion_webhook``), and no pod ever runs (no
kubelet): the Deployments' pod templates carry the images. A real distribution registry
on 127.0.0.1 holds the images, and ``--registry-mirror`` points every reference at it.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s_client

from e2e.apply import Applier, object_ref
from e2e.manifests import ReleaseFiles, ReleaseManifest, load_release_manifest
from e2e.matrix import load_matrix

NAMESPACE = "kserve"
DEPLOYMENT = "kserve-controller-manager"

# What the registry holds: every image of both releases, and the proxy tags to swap to.
PUSHED = {
    "kserve/kserve-controller": ("v0.12.1", "v0.14.0"),
    "kserve/kserve-localmodel-controller": ("v0.14.0",),
    "brancz/kube-rbac-proxy": ("v0.15.0", "v0.18.0", "v0.18.2", "v0.22.1"),
    "kubebuilder/kube-rbac-proxy": ("v0.13.1",),
}


def without_conversion_webhook(document: dict[str, Any]) -> dict[str, Any]:
    """A CRD without its conversion webhook: v0.10-v0.12 ship the InferenceService CRD with
    ``caBundle: Cg==`` (a newline, for cert-manager's cainjector to fill in), which Kubernetes
    1.34 rejects ("unable to load root certificates"); no controller serves it here anyway."""
    if document.get("kind") != "CustomResourceDefinition" or "conversion" not in document.get("spec", {}):
        return document
    spec = {k: v for k, v in document["spec"].items() if k != "conversion"}
    return {**document, "spec": spec}


class Releases:
    """Installs one KServe release at a time into the shared control plane."""

    def __init__(self, api: k8s_client.ApiClient, files: ReleaseFiles) -> None:
        self.applier = Applier(api)
        self.files = files
        self.matrix = load_matrix()
        self.installed: ReleaseManifest | None = None
        self.applied: list[dict[str, Any]] = []

    def manifest(self, version: str) -> ReleaseManifest:
        return load_release_manifest(self.matrix.release(version), self.files)

    def install(self, version: str) -> ReleaseManifest:
        if self.installed is not None and self.installed.source.startswith(f"kserve {version} "):
            return self.installed
        if self.installed is not None:
            # The namespace stays (without the namespace controller it would never finish
            # deleting) and so do the CRDs (same kinds in every release; re-applied below).
            kept = ("Namespace", "CustomResourceDefinition")
            self.applier.delete([d for d in self.applied if d["kind"] not in kept])
        manifest = self.manifest(version)
        documents = [without_conversion_webhook(d) for d in manifest.documents]
        report = self.applier.apply(documents, skip_unknown_kinds=True)  # cert-manager kinds are skipped
        self.applied = [d for d in documents if object_ref(d) not in report.skipped]
        self.applier.delete(manifest.webhook_configurations())  # nothing serves them here
        self.installed = manifest
        return manifest

    def restore_proxy_binding(self) -> None:
        assert self.installed is not None
        self.applier.apply([self.installed.proxy_cluster_role_binding()])
