"""Reading (``ReleaseManifest``): a release's documents, its controller pieces found by the
names of its ``ControllerProfile``, what it ships (``shipped_proxy``) and the images the
samples run on (``serving_images``)."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import yaml

from e2e.errors import (
    ManifestError,
)
from e2e.manifests.files import MODULE_ORIGIN_PREFIX, ReleaseFiles
from e2e.manifests.release_file import kserve_file
from e2e.manifests.yaml_text import yaml_documents
from e2e.matrix import ControllerProfile, KServeRelease

# -- reading --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageUse:
    """One container of one pod template and the image it runs."""

    kind: str
    namespace: str
    name: str
    container: str
    image: str
    init: bool = False


@dataclass(frozen=True)
class ReleaseManifest:
    """A parsed multi-document release file, read through a ``ControllerProfile``.

    ``documents`` are plain dicts as PyYAML returns them; treat them as read-only (a
    patched manifest shares every document but the Deployment with its original).
    """

    source: str  # what the file is, for messages: "kserve v0.14.0 kserve.yaml"
    profile: ControllerProfile
    documents: tuple[dict[str, Any], ...]
    origin: str = ""  # where it was read from (ReleaseFiles.origin), when known

    @classmethod
    def parse(cls, text: str, *, source: str, profile: ControllerProfile, remember: bool = False) -> ReleaseManifest:
        documents: list[dict[str, Any]] = []
        try:
            for index, document in enumerate(yaml_documents(text, remember=remember)):
                if document is None:  # "---" separators with nothing between them
                    continue
                if not isinstance(document, dict):
                    raise ManifestError(
                        f"{source}: document {index + 1} is a {type(document).__name__}; "
                        "expected a Kubernetes object (a mapping)"
                    )
                documents.append(document)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise ManifestError(f"{source}{where}: not valid YAML ({problem})") from None
        return cls(source=source, profile=profile, documents=tuple(documents))

    # -- lookups --------------------------------------------------------------------

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object of that kind and name (and namespace, for namespaced objects)."""
        for document in self.of_kind(kind):
            metadata = document.get("metadata") or {}
            if metadata.get("name") == name and (namespace is None or metadata.get("namespace") == namespace):
                return document
        return None

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d.get("kind") in kinds]

    def _require(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        found = self.find(kind, name, namespace)
        if found is None:
            wanted = f"{namespace}/{name}" if namespace else name
            present = ", ".join(qualified_name(d) for d in self.of_kind(kind)) or "none"
            raise ManifestError(
                f"{self.source}: no {kind} {wanted} (profile {self.profile.name}); found {kind}s: {present}"
            )
        return found

    # -- the controller ------------------------------------------------------------

    def deployment(self) -> dict[str, Any]:
        """The controller Deployment the profile names."""
        return self._require("Deployment", self.profile.deployment, self.profile.namespace)

    def _container(self, name: str, role: str) -> dict[str, Any]:
        deployment = self.deployment()
        containers = pod_spec(deployment).get("containers") or []
        for container in containers:
            if container.get("name") == name:
                return dict(container)
        present = ", ".join(str(c.get("name")) for c in containers) or "none"
        raise ManifestError(
            f"{self.source}: Deployment {qualified_name(deployment)} has no {role} container "
            f"{name!r} (profile {self.profile.name}); found containers: {present}"
        )

    def proxy_container(self) -> dict[str, Any]:
        return self._container(self.profile.proxy_container, "proxy")

    def manager_container(self) -> dict[str, Any]:
        return self._container(self.profile.manager_container, "manager")

    @property
    def proxy_image(self) -> str:
        image = self.proxy_container().get("image")
        if not image:
            raise ManifestError(f"{self.source}: the proxy container has no image")
        return str(image)

    @property
    def proxy_args(self) -> list[str]:
        return [str(arg) for arg in self.proxy_container().get("args") or []]

    @property
    def proxy_security_context(self) -> dict[str, Any] | None:
        """The proxy container's own securityContext (None when the release sets none)."""
        context = self.proxy_container().get("securityContext")
        return copy.deepcopy(context) if context else None

    @property
    def manager_args(self) -> list[str]:
        return [str(arg) for arg in self.manager_container().get("args") or []]

    def metrics_service(self) -> dict[str, Any]:
        return self._require("Service", self.profile.metrics_service, self.profile.namespace)

    def metrics_service_port(self) -> dict[str, Any]:
        """The metrics Service's port entry whose ``port`` is the profile's metrics port."""
        service = self.metrics_service()
        ports = (service.get("spec") or {}).get("ports") or []
        for port in ports:
            if port.get("port") == self.profile.metrics_port:
                return dict(port)
        present = ", ".join(str(p.get("port")) for p in ports) or "none"
        raise ManifestError(
            f"{self.source}: Service {qualified_name(service)} has no port "
            f"{self.profile.metrics_port} (profile {self.profile.name}); found ports: {present}"
        )

    def proxy_cluster_role(self) -> dict[str, Any]:
        return self._require("ClusterRole", self.profile.proxy_cluster_role)

    def proxy_cluster_role_rules(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.proxy_cluster_role().get("rules") or [])

    def proxy_cluster_role_binding(self) -> dict[str, Any]:
        return self._require("ClusterRoleBinding", self.profile.proxy_cluster_role_binding)

    # -- everything else ------------------------------------------------------------

    def crds(self) -> list[dict[str, Any]]:
        return self.of_kind("CustomResourceDefinition")

    def webhook_configurations(self) -> list[dict[str, Any]]:
        return self.of_kind("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")

    def image_uses(self) -> list[ImageUse]:
        """Every container and initContainer of every pod template, with its image."""
        uses = []
        for document in self.documents:
            spec = _pod_spec_or_none(document)
            if spec is None:
                continue
            metadata = document.get("metadata") or {}
            for field_name, init in (("initContainers", True), ("containers", False)):
                for container in spec.get(field_name) or []:
                    if container.get("image"):
                        uses.append(
                            ImageUse(
                                kind=str(document.get("kind")),
                                namespace=str(metadata.get("namespace", "")),
                                name=str(metadata.get("name", "")),
                                container=str(container.get("name", "")),
                                image=str(container["image"]),
                                init=init,
                            )
                        )
        return uses

    def images(self) -> list[str]:
        """The distinct images of ``image_uses``, sorted."""
        return sorted({use.image for use in self.image_uses()})


def load_release_manifest(
    release: KServeRelease, files: ReleaseFiles, name: str = "kserve.yaml", *, remember: bool = False
) -> ReleaseManifest:
    """Fetch and parse one file of a KServe release, read through the release's profile
    (``remember``: keep the parse in the cache, see ``yaml_documents``)."""
    ref = kserve_file(release.version, name)
    manifest = ReleaseManifest.parse(files.text(ref), source=ref.label, profile=release.profile, remember=remember)
    return replace(manifest, origin=files.origin(ref) or "")


@dataclass(frozen=True)
class ShippedProxy:
    """The proxy sidecar a release ships, as its controller Deployment states it.

    The matrix's ``proxy_image`` is only the expectation for the release's line; this is
    what the release's own manifest says, and it wins.
    """

    release: str  # the KServe version
    image: str
    args: tuple[str, ...]
    matrix_default: str  # the matrix entry's proxy_image (of the line, for a derived release)
    derived_from: str = ""  # the matrix entry a release not listed in the file took defaults from
    manifest_source: str = ""  # "kserve v0.13.1 kserve.yaml"
    manifest_origin: str = ""  # where that file was read from (ReleaseFiles.origin)

    @property
    def disagrees(self) -> bool:
        return self.image != self.matrix_default

    def notes(self) -> list[str]:
        """Lines for a cell's notes (and the report): what ships, and where defaults came from."""
        lines = [f"KServe {self.release} ships {self.image} with args {' '.join(self.args) or '(none)'}"]
        if self.manifest_origin.startswith(MODULE_ORIGIN_PREFIX):
            # The opt-in source, worth a line in the report: from v0.17 the repository's
            # kserve.yaml is not the release asset (see ModuleFiles).
            lines.append(f"{self.manifest_source} read from the {self.manifest_origin} (--manifests-from-module)")
        if self.derived_from:
            lines.append(
                f"KServe {self.release} is not listed in the matrix file: profile, files and cert-manager "
                f"are the defaults of its line's entry {self.derived_from}"
            )
        if self.disagrees:
            entry = self.derived_from or self.release
            lines.append(
                f"the matrix entry {entry} expects {self.matrix_default}; the release manifest's "
                f"Deployment ships {self.image}, which is what this run used"
            )
        return lines


def shipped_proxy(release: KServeRelease, manifest: ReleaseManifest) -> ShippedProxy:
    """The proxy image and args ``release`` really ships, read from its manifest."""
    return ShippedProxy(
        release=release.version,
        image=manifest.proxy_image,
        args=tuple(manifest.proxy_args),
        matrix_default=release.proxy_image,
        derived_from=release.derived_from,
        manifest_source=manifest.source,
        manifest_origin=manifest.origin,
    )


_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def container_images(documents: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every container image the pods and pod templates of ``documents`` name (init
    containers first, as they start), in order, once."""
    found: dict[str, None] = {}
    for document in documents:
        spec = _pod_spec_or_none(document) or {}
        for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            if container.get("image"):
                found[str(container["image"])] = None
    return list(found)


def pod_spec(document: Mapping[str, Any]) -> dict[str, Any]:
    """The pod spec of a Pod, or of the pod template of a workload (Deployment, StatefulSet,
    DaemonSet, ReplicaSet, Job, CronJob, or a patch of one: no kind, a pod template); empty
    for anything else. The one walk to it."""
    return _pod_spec_or_none(document) or {}


def pod_template_labels(document: Mapping[str, Any]) -> dict[str, str]:
    """The labels of a workload's pods (a Pod's own), as its selector and Services see them."""
    spec = document.get("spec") or {}
    if document.get("kind") == "Pod":
        metadata = document.get("metadata") or {}
    else:
        if document.get("kind") == "CronJob":
            spec = (spec.get("jobTemplate") or {}).get("spec") or {}
        metadata = (spec.get("template") or {}).get("metadata") or {}
    return {str(key): str(value) for key, value in (metadata.get("labels") or {}).items()}


def _pod_spec_or_none(document: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = document.get("kind")
    spec = document.get("spec") or {}
    if kind == "Pod":
        return dict(spec)
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    elif kind not in _POD_TEMPLATE_KINDS and not (kind is None and "template" in spec):
        return None  # (an object without a kind but with a pod template: a workload's patch)
    pod_spec = (spec.get("template") or {}).get("spec")
    return pod_spec if isinstance(pod_spec, dict) else None


def qualified_name(document: Mapping[str, Any]) -> str:
    metadata = document.get("metadata") or {}
    name = str(metadata.get("name", "?"))
    return f"{metadata['namespace']}/{name}" if metadata.get("namespace") else name


# The release's ConfigMap that names, among much else, the storage initializer image.
INFERENCESERVICE_CONFIG = "inferenceservice-config"


def serving_images(runtimes: Sequence[dict[str, Any]], documents: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The images the iris samples run on: the sklearn runtime's server and the storage
    initializer (a ``ClusterStorageContainer`` from v0.12 on; the ``storageInitializer`` of
    the release's ``inferenceservice-config`` ConfigMap in ``documents`` for every release)."""
    found: dict[str, None] = {}
    for doc in documents:
        if doc.get("kind") == "ConfigMap" and (doc.get("metadata") or {}).get("name") == INFERENCESERVICE_CONFIG:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                image = json.loads((doc.get("data") or {}).get("storageInitializer") or "{}").get("image")
                if image:
                    found[str(image)] = None
    for doc in runtimes:
        spec = doc.get("spec") or {}
        name = str((doc.get("metadata") or {}).get("name", ""))
        if doc.get("kind") == "ClusterServingRuntime" and "sklearn" in name:
            found.update(dict.fromkeys(str(c["image"]) for c in spec.get("containers") or [] if c.get("image")))
        elif doc.get("kind") == "ClusterStorageContainer" and (spec.get("container") or {}).get("image"):
            found[str(spec["container"]["image"])] = None
    return list(found)
