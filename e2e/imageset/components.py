"""The component images a KServe install on kind needs, built from upstream source.

Each image holds the binary ``e2e.binaries`` builds from the component's upstream Go
module, laid out as that component's own Dockerfile lays it out, and is tagged with the
exact reference the release manifests (and the matrix) use, so they apply unchanged:

- kube-rbac-proxy (its Dockerfile: ``COPY ... /usr/local/bin/kube-rbac-proxy``,
  ``USER 65532:65532``, ``ENTRYPOINT ["/usr/local/bin/kube-rbac-proxy"]`` on distroless
  ``static:nonroot``) as ``quay.io/brancz/kube-rbac-proxy:vX``; v0.13.1 also as
  ``registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1`` (the frozen copy of the retired
  tag). Never as ``gcr.io/kubebuilder/...``: that registry path was deleted, and a retired
  image must stay unpullable so its verdict comes from the kubelet's real pull error.
- the KServe controller of a release (its Dockerfile: ``/manager``, ``/third_party/``,
  ``ENTRYPOINT ["/manager"]`` on distroless ``static:nonroot``), tagged with the image of
  the ``manager`` container of the release manifest's controller Deployment. ``/third_party``
  (license texts) is copied where the module carries it (up to about v0.14); later releases
  generate it with go-licenses while building the image, which is not reproduced here.
- KServe's local model controller (v0.14 on: ``localmodel.Dockerfile``, the same layout as
  the controller's: ``/manager``, ``/third_party/``, ``ENTRYPOINT ["/manager"]``), built from
  the release's ``cmd/localmodel`` in the same go build as ``cmd/manager``, for a release
  whose manifest runs the Deployment ``kserve-localmodel-controller-manager``; tagged with
  the image of that Deployment's container.
- KServe's LLMInferenceService controller (v0.16 on: ``llmisvc-controller.Dockerfile``, the
  same layout again), built from the release's ``cmd/llmisvc`` in that go build, for a
  release whose manifest runs the Deployment ``llmisvc-controller-manager``; tagged with
  that Deployment's image.
- cert-manager's controller, webhook and cainjector (``hack/containers/Containerfile.*``:
  ``/app/cmd/<name>/<name>``, ``/licenses/``, ``USER 1000``), tagged with the
  repositories of the chart's ``values.yaml`` and the chart's appVersion; and the install
  manifest rendered offline from the chart in the module, as its ``make/manifests.mk`` does.

Why cert-manager v1.11.5: it is the newest release whose controller, webhook and cainjector
are packages of the main module ``github.com/cert-manager/cert-manager``; from v1.12 they are
separate Go modules (``.../cmd/controller`` ...) that the Go module proxy refuses here, so no
newer cert-manager can be built from source on our machines. A release whose quick-install
names another cert-manager version runs with this one (a deviation the report records).

The distroless base images cannot be pulled here; what the components use of them is
written instead: ``/etc/passwd`` and ``/etc/group`` with root, nobody and nonroot (65532),
and the host's CA bundle at ``/etc/ssl/certs/ca-certificates.crt``.

A version whose module the Go proxy refuses is ``unavailable`` with the proxy's answer; an
image is ``built`` when every reference carries its recipe's label (``docker_image``), else
``missing``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from e2e import binaries
from e2e.atomic_write import write_atomic
from e2e.cache import cache_root
from e2e.command import run
from e2e.errors import EnvironmentMissing, HarnessError, ManifestError, UsageError
from e2e.images import is_retired
from e2e.imageset import serving
from e2e.imageset.docker_image import ImageContent, ImageRecipe, build_image, file_sha256, is_current
from e2e.manifests import (
    ReleaseFiles,
    ReleaseManifest,
    load_release_manifest,
    pod_spec,
    serving_images,
    sha256_hex,
)
from e2e.matrix import KServeRelease, Matrix, load_matrix

log = logging.getLogger(__name__)

# Bumped when the layout of the images (not their inputs) changes.
LAYOUT_REVISION = 1

PROXY = binaries.PROXY
PROXY_REPOSITORY = binaries.PROXY_IMAGE_REPOSITORY  # quay.io/brancz/kube-rbac-proxy
PROXY_FROZEN_REPOSITORY = "registry.k8s.io/kubebuilder/kube-rbac-proxy"
# The one version registry.k8s.io keeps a frozen copy of for KServe (v0.10-v0.13 ship it).
PROXY_FROZEN_VERSION = "v0.13.1"
PROXY_BINARY_IN_IMAGE = binaries.PROXY_PATH_IN_IMAGE  # /usr/local/bin/kube-rbac-proxy

KSERVE_CONTROLLER = "kserve-controller"
CONTROLLER_BINARY_IN_IMAGE = "/manager"
KSERVE_LOCALMODEL_CONTROLLER = "kserve-localmodel-controller"
LOCALMODEL_DEPLOYMENT = "kserve-localmodel-controller-manager"
KSERVE_LLMISVC_CONTROLLER = "llmisvc-controller"
LLMISVC_DEPLOYMENT = "llmisvc-controller-manager"


@dataclass(frozen=True)
class ReleaseCommand:
    """One more of KServe's commands a release runs as a Deployment of its own, in an image
    laid out as the controller's (``/manager``, ``/third_party/``)."""

    component: str  # the image's name in the image set
    binary: str  # its ``e2e.binaries`` component
    deployment: str  # the Deployment of the release manifest that runs it


RELEASE_COMMANDS = (
    ReleaseCommand(KSERVE_LOCALMODEL_CONTROLLER, binaries.KSERVE_LOCALMODEL, LOCALMODEL_DEPLOYMENT),
    ReleaseCommand(KSERVE_LLMISVC_CONTROLLER, binaries.KSERVE_LLMISVC, LLMISVC_DEPLOYMENT),
)

CERT_MANAGER_VERSION = binaries.DEFAULT_VERSIONS["cert-manager-controller"]  # v1.11.5
# cert-manager's chart values.yaml (image.repository, webhook.image.repository,
# cainjector.image.repository); the tag is the chart's appVersion, which its release sets
# to the release version. Component -> (repository, command name).
CERT_MANAGER_IMAGES: dict[str, tuple[str, str]] = {
    "cert-manager-controller": ("quay.io/jetstack/cert-manager-controller", "controller"),
    "cert-manager-webhook": ("quay.io/jetstack/cert-manager-webhook", "webhook"),
    "cert-manager-cainjector": ("quay.io/jetstack/cert-manager-cainjector", "cainjector"),
}
CERT_MANAGER_USER = "1000"  # hack/containers/Containerfile.*: USER 1000
CERT_MANAGER_NAMESPACE = "cert-manager"
CERT_MANAGER_MANIFEST = "cert-manager.yaml"
# What make/manifests.mk passes to `helm template` for the static cert-manager.yaml.
CERT_MANAGER_HELM_VALUES = ("installCRDs=true", "creator=static", "startupapicheck.enabled=false")
HELM_TIMEOUT_SECONDS = 120

NODE = "node"
NONROOT_USER = "65532:65532"  # distroless :nonroot
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

BUILT, MISSING, UNAVAILABLE, FAILED = "built", "missing", "unavailable", "failed"


@dataclass(frozen=True)
class PlannedImage:
    """One image the selection needs, and where it stands.

    ``status``: built (every reference carries the current recipe), missing (buildable,
    not built yet), unavailable (cannot be built here; ``detail`` says why, e.g. the Go
    module proxy's answer) or, after ``ensure_images``, failed (a build that should have
    worked did not).
    """

    reference: str
    component: str  # node, kube-rbac-proxy, kserve-controller, cert-manager-controller, ...
    version: str
    status: str
    detail: str = ""
    also_tagged: tuple[str, ...] = ()  # further references of the same image

    @property
    def references(self) -> tuple[str, ...]:
        return (self.reference, *self.also_tagged)


# ---------------------------------------------------------------------------- references


def proxy_references(version: str) -> tuple[str, ...]:
    """Every reference the kube-rbac-proxy image of ``version`` gets (never a retired one)."""
    references = [f"{PROXY_REPOSITORY}:{version}"]
    if version == PROXY_FROZEN_VERSION:
        references.append(f"{PROXY_FROZEN_REPOSITORY}:{version}")
    return tuple(references)


def cert_manager_reference(component: str, version: str = CERT_MANAGER_VERSION) -> str:
    return f"{CERT_MANAGER_IMAGES[component][0]}:{version}"


# ---------------------------------------------------------------------------- image layouts


def _base_files(*, ca_bundle: Path | None = HOST_CA_BUNDLE) -> dict[str, Path | bytes]:
    """What the components use of distroless static: users, groups and the CA bundle."""
    files: dict[str, Path | bytes] = {
        "etc/passwd": (
            b"root:x:0:0:root:/root:/sbin/nologin\n"
            b"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
            b"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
        ),
        "etc/group": b"root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n",
    }
    if ca_bundle is not None and ca_bundle.is_file():
        files["etc/ssl/certs/ca-certificates.crt"] = ca_bundle
    return files


def _base_inputs(files: dict[str, Path | bytes]) -> dict[str, Any]:
    ca = files.get("etc/ssl/certs/ca-certificates.crt")
    return {"layout": LAYOUT_REVISION, "ca_bundle_sha256": file_sha256(ca) if isinstance(ca, Path) else None}


def proxy_image(version: str, binary: Path) -> tuple[ImageRecipe, ImageContent]:
    """The kube-rbac-proxy image of ``version`` holding ``binary``, as its Dockerfile lays it out."""
    files = _base_files()
    files[PROXY_BINARY_IN_IMAGE.lstrip("/")] = binary
    recipe = ImageRecipe(
        references=proxy_references(version),
        inputs={"component": PROXY, "version": version, "binary_sha256": file_sha256(binary), **_base_inputs(files)},
    )
    content = ImageContent(
        files=files,
        entrypoint=(PROXY_BINARY_IN_IMAGE,),
        user=NONROOT_USER,
        mode={PROXY_BINARY_IN_IMAGE.lstrip("/"): 0o755},
    )
    return recipe, content


def controller_image(
    version: str, reference: str, binary: Path, third_party: Path | None
) -> tuple[ImageRecipe, ImageContent]:
    """The KServe controller image of ``version``: ``/manager`` and the release's ``third_party/``."""
    return _manager_image(KSERVE_CONTROLLER, version, reference, binary, third_party)


def command_image(
    command: ReleaseCommand, version: str, reference: str, binary: Path, third_party: Path | None
) -> tuple[ImageRecipe, ImageContent]:
    """The image of one more of a release's commands (local model, LLMInferenceService
    controller): their Dockerfiles lay it out as the controller's."""
    return _manager_image(command.component, version, reference, binary, third_party)


def _manager_image(
    component: str, version: str, reference: str, binary: Path, third_party: Path | None
) -> tuple[ImageRecipe, ImageContent]:
    files = _base_files()
    if third_party is not None and third_party.is_dir():
        for path in sorted(third_party.rglob("*")):
            if path.is_file():
                files["third_party/" + path.relative_to(third_party).as_posix()] = path
    files[CONTROLLER_BINARY_IN_IMAGE.lstrip("/")] = binary
    recipe = ImageRecipe(
        references=(reference,),
        inputs={
            "component": component,
            "version": version,
            "binary_sha256": file_sha256(binary),
            "third_party_files": sum(1 for name in files if name.startswith("third_party/")),
            **_base_inputs(files),
        },
    )
    content = ImageContent(
        files=files,
        entrypoint=(CONTROLLER_BINARY_IN_IMAGE,),
        user="65532",  # distroless static:nonroot's config
        mode={CONTROLLER_BINARY_IN_IMAGE.lstrip("/"): 0o755},
    )
    return recipe, content


def cert_manager_image(
    component: str, version: str, binary: Path, module_dir: Path | None
) -> tuple[ImageRecipe, ImageContent]:
    """One of cert-manager's images, as ``hack/containers/Containerfile.<name>`` lays it out."""
    _, name = CERT_MANAGER_IMAGES[component]
    inner = f"app/cmd/{name}/{name}"
    files = _base_files()
    files[inner] = binary
    if module_dir is not None:
        for source, target in (("LICENSE", "licenses/LICENSE"), ("LICENSES", "licenses/LICENSES")):
            if (module_dir / source).is_file():
                files[target] = module_dir / source
    recipe = ImageRecipe(
        references=(cert_manager_reference(component, version),),
        inputs={
            "component": component,
            "version": version,
            "binary_sha256": file_sha256(binary),
            "licenses": sorted(name for name in files if name.startswith("licenses/")),
            **_base_inputs(files),
        },
    )
    content = ImageContent(files=files, entrypoint=("/" + inner,), user=CERT_MANAGER_USER, mode={inner: 0o755})
    return recipe, content


# ---------------------------------------------------------------------------- cert-manager manifest


def cert_manager_manifest_path(version: str = CERT_MANAGER_VERSION) -> Path:
    return cache_root() / "images" / "cert-manager" / version / CERT_MANAGER_MANIFEST


def _manifest_recipe(version: str, helm: Path) -> str:
    key = {
        "layout": LAYOUT_REVISION,
        "version": version,
        "helm_sha256": file_sha256(helm),
        "values": list(CERT_MANAGER_HELM_VALUES),
        "namespace": CERT_MANAGER_NAMESPACE,
        "kube_version": binaries.KUBERNETES_VERSION,
    }
    return sha256_hex(json.dumps(key, sort_keys=True).encode())


def _recipe_file(path: Path) -> Path:
    return path.with_name(path.name + ".recipe")


def cert_manager_manifest_status(version: str = CERT_MANAGER_VERSION) -> tuple[str, str]:
    """(built|missing|unavailable, detail) of the rendered cert-manager install manifest."""
    path = cert_manager_manifest_path(version)
    helm = binaries.locate("helm")
    if helm is not None and path.is_file():
        with contextlib.suppress(OSError):
            if _recipe_file(path).read_text().strip() == _manifest_recipe(version, helm):
                return BUILT, str(path)
    ok, reason = binaries.buildable("cert-manager-controller", version)
    if not ok and not reason.startswith("go:"):
        return UNAVAILABLE, reason
    return MISSING, reason or "not rendered yet"


def cert_manager_manifest(version: str = CERT_MANAGER_VERSION) -> Path:
    """cert-manager's install manifest of ``version`` rendered offline from its chart (cached).

    What ``make/manifests.mk`` does for the release's ``cert-manager.yaml``: the chart
    with ``Chart.yaml`` written from ``Chart.template.yaml``, the CRDs of ``deploy/crds``
    put in ``templates/crds.yaml`` behind ``installCRDs``, ``helm template`` with
    installCRDs=true, creator=static, startupapicheck disabled, namespace cert-manager,
    then the Namespace, the CRDs, and everything else, in that order.
    """
    path = cert_manager_manifest_path(version)
    helm = binaries.ensure("helm")
    recipe = _manifest_recipe(version, helm)
    with contextlib.suppress(OSError):
        if path.is_file() and _recipe_file(path).read_text().strip() == recipe:
            return path
    module = binaries.module_dir(binaries.CERT_MANAGER_MODULE, version)
    with tempfile.TemporaryDirectory(prefix="kserve-compat-cert-manager-chart-") as tmp:
        chart = Path(tmp) / "cert-manager"
        _write_chart(module, version, chart)
        rendered = _helm_template(helm, chart, Path(tmp))
    namespace = (module / "deploy" / "manifests" / "namespace.yaml").read_text()
    text = _assemble_manifest(namespace, rendered)
    write_atomic(path, text, mode=0o644)
    _recipe_file(path).write_text(recipe + "\n")
    log.info("rendered cert-manager %s install manifest: %s", version, path)
    return path


def _write_chart(module: Path, version: str, chart: Path) -> None:
    source = module / "deploy" / "charts" / "cert-manager"
    if not source.is_dir():
        raise ManifestError(f"cert-manager {version}: no chart at deploy/charts/cert-manager in {module}")
    # Copied file by file: the module cache is read-only, the copy must take new files.
    for path in sorted(source.rglob("*")):
        target = chart / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name != "Chart.template.yaml":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    metadata = yaml.safe_load((source / "Chart.template.yaml").read_text())
    metadata["version"] = version
    metadata["appVersion"] = version
    annotations = metadata.setdefault("annotations", {})
    annotations["artifacthub.io/prerelease"] = "false"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
    crds = sorted((module / "deploy" / "crds").glob("*.yaml"))
    if not crds:
        raise ManifestError(f"cert-manager {version}: no CRDs in deploy/crds of {module}")
    # hack/concat-yaml.sh between `{{- if .Values.installCRDs }}` and `{{- end }}`.
    body = "---\n".join(
        path.read_text() if path.read_text().endswith("\n") else path.read_text() + "\n" for path in crds
    )
    (chart / "templates" / "crds.yaml").write_text("{{- if .Values.installCRDs }}\n" + body + "{{- end }}\n")


def _helm_template(helm: Path, chart: Path, scratch: Path) -> str:
    env = dict(os.environ)
    for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[name] = str(scratch / name.lower())  # helm writes nothing into the user's home
    # --kube-version: helm's release Makefile stamps the Kubernetes version of its client-go
    # (chartutil.k8sVersionMajor/Minor); the binaries recipe does not, so helm would assume
    # v1.20.0, below the chart's kubeVersion ">= 1.21.0-0". The kind tier runs this version.
    args = [str(helm), "template", "--api-versions=", f"--kube-version={binaries.KUBERNETES_VERSION}"]
    args += [f"--namespace={CERT_MANAGER_NAMESPACE}"]
    args += [f"--set={value}" for value in CERT_MANAGER_HELM_VALUES]
    args += ["cert-manager", str(chart)]
    return run(args, f"cert-manager's chart {chart}", env=env, timeout=HELM_TIMEOUT_SECONDS).stdout


def _assemble_manifest(namespace: str, rendered: str) -> str:
    """The Namespace, then the CRDs, then the rest (helm's order kept within each)."""
    crds: list[str] = []
    rest: list[str] = []
    for chunk in rendered.split("\n---\n"):
        document = chunk.removeprefix("---\n").strip("\n")
        parsed = yaml.safe_load(document) if document else None
        if not isinstance(parsed, dict):
            continue
        (crds if parsed.get("kind") == "CustomResourceDefinition" else rest).append(document)
    return "\n---\n".join([namespace.strip("\n"), *crds, *rest]) + "\n"


# ---------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Job:
    """A planned image and how to build it (None when there is nothing to build)."""

    planned: PlannedImage
    build: Callable[[], PlannedImage] | None


def _binary_status(component: str, version: str) -> tuple[str, str, Path | None]:
    """(built|missing|unavailable, detail, path) of the binary an image is made of."""
    result = binaries.status(component, version)
    if result.status == BUILT:
        return BUILT, "", result.path
    if result.status == UNAVAILABLE:
        return UNAVAILABLE, result.detail, None
    return MISSING, result.detail or f"{component} {version}: binary not built yet", None


def _image_status(recipe: ImageRecipe, engine: str | None) -> tuple[str, str]:
    if engine:
        return MISSING, engine
    if is_current(recipe):
        return BUILT, ""
    return MISSING, "not built (or built from another recipe)"


def _proxy_job(version: str, engine: str | None) -> _Job:
    references = proxy_references(version)
    base = PlannedImage(references[0], PROXY, version, MISSING, also_tagged=references[1:])
    status, detail, path = _binary_status(PROXY, version)
    if status == UNAVAILABLE:
        return _Job(replace(base, status=UNAVAILABLE, detail=detail), None)
    if path is not None:
        status, detail = _image_status(proxy_image(version, path)[0], engine)
    planned = replace(base, status=status, detail=detail)

    def build() -> PlannedImage:
        binary = binaries.ensure(PROXY, version)
        build_image(*proxy_image(version, binary))
        return replace(planned, status=BUILT, detail="")

    return _Job(planned, None if status == BUILT else build)


def _retired_proxy(image: str, version: str) -> _Job:
    detail = (
        "retired registry path (gcr.io/kubebuilder: pulls fail since about 2026-03-06): never built here, "
        "so the kubelet's real pull error decides its verdict"
    )
    return _Job(PlannedImage(image, PROXY, version, UNAVAILABLE, detail), None)


def _controller_job(
    version: str, reference: str | None, reason: str, engine: str | None, *, built_with: tuple[str, ...] = ()
) -> _Job:
    if reference is None:
        return _Job(
            PlannedImage(f"(KServe {version} controller)", KSERVE_CONTROLLER, version, UNAVAILABLE, reason), None
        )
    return _manager_job(
        KSERVE_CONTROLLER, binaries.KSERVE_MANAGER, version, reference, engine, controller_image, built_with
    )


def _command_job(
    command: ReleaseCommand, version: str, reference: str, engine: str | None, built_with: tuple[str, ...]
) -> _Job:
    layout = functools.partial(command_image, command)
    return _manager_job(command.component, command.binary, version, reference, engine, layout, built_with)


ManagerImage = Callable[[str, str, Path, "Path | None"], tuple[ImageRecipe, ImageContent]]


def _manager_job(
    component: str,
    binary_component: str,
    version: str,
    reference: str,
    engine: str | None,
    layout: ManagerImage,
    built_with: tuple[str, ...],
) -> _Job:
    """An image of one of KServe's manager commands (``/manager`` + ``/third_party``)."""
    base = PlannedImage(reference, component, version, MISSING)
    status, detail, path = _binary_status(binary_component, version)
    if status == UNAVAILABLE:
        return _Job(replace(base, status=UNAVAILABLE, detail=detail), None)
    if path is not None:
        module = binaries.cached_module_dir(binaries.KSERVE_MODULE, version)
        third_party = module / "third_party" if module else None
        status, detail = _image_status(layout(version, reference, path, third_party)[0], engine)
    planned = replace(base, status=status, detail=detail)

    def build() -> PlannedImage:
        if built_with:
            binary = binaries.ensure_together(built_with, version)[binary_component]
        else:
            binary = binaries.ensure(binary_component, version)
        third_party = binaries.module_dir(binaries.KSERVE_MODULE, version) / "third_party"
        build_image(*layout(version, reference, binary, third_party))
        return replace(planned, status=BUILT, detail="")

    return _Job(planned, None if status == BUILT else build)


def _cert_manager_jobs(version: str, engine: str | None) -> list[_Job]:
    jobs: list[_Job] = []
    module = binaries.cached_module_dir(binaries.CERT_MANAGER_MODULE, version)
    for component in CERT_MANAGER_IMAGES:
        base = PlannedImage(cert_manager_reference(component, version), component, version, MISSING)
        status, detail, path = _binary_status(component, version)
        if status == UNAVAILABLE:
            jobs.append(_Job(replace(base, status=UNAVAILABLE, detail=detail), None))
            continue
        if path is not None:
            status, detail = _image_status(cert_manager_image(component, version, path, module)[0], engine)
        planned = replace(base, status=status, detail=detail)

        def build(component: str = component, planned: PlannedImage = planned) -> PlannedImage:
            binary = binaries.ensure(component, version)
            module_dir = binaries.module_dir(binaries.CERT_MANAGER_MODULE, version)
            build_image(*cert_manager_image(component, version, binary, module_dir))
            return replace(planned, status=BUILT, detail="")

        jobs.append(_Job(planned, None if status == BUILT else build))
    return jobs


def _cert_manager_manifest_job(version: str) -> _Job:
    status, detail = cert_manager_manifest_status(version)
    planned = PlannedImage(
        str(cert_manager_manifest_path(version)),
        "cert-manager-manifest",
        version,
        status,
        "" if status == BUILT else detail,
    )

    def build() -> PlannedImage:
        return replace(planned, reference=str(cert_manager_manifest(version)), status=BUILT, detail="")

    return _Job(planned, None if status in (BUILT, UNAVAILABLE) else build)


def _node_job(minor: str) -> _Job:
    node = importlib.import_module("e2e.imageset.node")  # the node image's builder, when needed
    try:
        version = node.node_kubernetes_version(minor)
    except HarnessError as exc:
        return _Job(PlannedImage(f"(kind node, Kubernetes {minor})", NODE, minor, UNAVAILABLE, str(exc)), None)
    status, detail = node.node_image_status(version)
    # The node image is named after the Kubernetes version it really runs.
    planned = PlannedImage(node.node_reference(version), NODE, version, status, detail)

    def build() -> PlannedImage:
        built = node.build_node_image(version)
        return replace(planned, reference=built.reference, version=built.kubernetes_version, status=BUILT, detail="")

    return _Job(planned, None if status in (BUILT, UNAVAILABLE) else build)


@dataclass(frozen=True)
class ImageSelection:
    """What to build: KServe releases, proxy aliases (matrix), Kubernetes minors."""

    kserve_versions: tuple[str, ...]
    proxy_aliases: tuple[str, ...]
    k8s_minors: tuple[str, ...]


def default_selection(matrix: Matrix | None = None) -> ImageSelection:
    """The matrix's default selection: latest patches, every proxy image, the default Kubernetes minors."""
    matrix = matrix or load_matrix()
    return ImageSelection(
        kserve_versions=tuple(r.version for r in matrix.releases if r.latest_patch),
        proxy_aliases=tuple(p.alias for p in matrix.proxies),
        k8s_minors=tuple(k.version for k in matrix.kubernetes_selected(())),
    )


def _selection(
    kserve_versions: Iterable[str] | None,
    proxy_aliases: Iterable[str] | None,
    k8s_minors: Iterable[str] | None,
    matrix: Matrix,
) -> ImageSelection:
    """The selection with defaults filled in, each value checked against the matrix (UsageError)."""
    default = default_selection(matrix)
    kserve = tuple(dict.fromkeys(kserve_versions or ())) or default.kserve_versions
    proxies = tuple(dict.fromkeys(proxy_aliases or ())) or default.proxy_aliases
    # `--k8s all` is every minor; a minor may be spelled v1.35 or 1.35.4 (UsageError for an unknown one).
    minors = tuple(k.version for k in matrix.kubernetes_selected(tuple(k8s_minors or ())))
    for version in kserve:
        matrix.release(version)
    for alias in proxies:
        matrix.proxy(alias)
    return ImageSelection(kserve, proxies, minors)


def _plan(
    kserve_versions: Iterable[str] | None,
    proxy_aliases: Iterable[str] | None,
    k8s_minors: Iterable[str] | None,
    *,
    matrix: Matrix | None = None,
    files: ReleaseFiles | None = None,
) -> list[_Job]:
    matrix = matrix or load_matrix()
    selection = _selection(kserve_versions, proxy_aliases, k8s_minors, matrix)
    files = files or ReleaseFiles.from_environment()
    engine = binaries.docker_engine_unreachable_reason()

    # The controller image each release's manifest names. Its shipped proxy image is not
    # needed: the harness installs a release with its first cell's proxy image in place.
    controllers: dict[str, tuple[str | None, str]] = {}
    # version -> (command, its image), for the commands whose Deployment the release runs
    commands: dict[str, list[tuple[ReleaseCommand, str]]] = {}
    serving_jobs: list[_Job] = []
    for version in selection.kserve_versions:
        try:
            release = matrix.release(version)
            manifest = load_release_manifest(release, files)
            image = manifest.manager_container().get("image")
            if not image:
                raise ManifestError(f"{manifest.source}: the manager container has no image")
            controllers[version] = (str(image), "")
            commands[version] = [
                (command, reference)
                for command in RELEASE_COMMANDS
                if (reference := deployment_image(manifest, command.deployment)) is not None
            ]
        except HarnessError as exc:
            controllers[version] = (None, f"its release manifest cannot be read: {exc}")
            continue
        try:
            serving_jobs += _serving_jobs(release, manifest, files, engine)
        except HarnessError as exc:
            detail = f"its runtimes cannot be read: {exc}"
            serving_jobs.append(_Job(PlannedImage(f"(KServe {version} serving images)", serving.SKLEARNSERVER,
                                                  version, UNAVAILABLE, detail), None))  # fmt: skip
    proxy_images = dict.fromkeys(matrix.proxy(alias).image for alias in selection.proxy_aliases)

    jobs = [_node_job(minor) for minor in selection.k8s_minors]
    versions: dict[str, None] = {}
    for image in proxy_images:
        version = binaries.proxy_version_or_tag(image) or image
        if is_retired(image):
            jobs.append(_retired_proxy(image, version))
        elif image not in proxy_references(version):
            jobs.append(
                _Job(PlannedImage(image, PROXY, version, UNAVAILABLE, "not a reference this image set builds"), None)
            )
        else:
            versions[version] = None
    jobs += [_proxy_job(version, engine) for version in sorted(versions, key=_version_order)]
    jobs += _cert_manager_jobs(CERT_MANAGER_VERSION, engine)
    jobs.append(_cert_manager_manifest_job(CERT_MANAGER_VERSION))
    for version, (reference, reason) in controllers.items():
        its_commands = commands.get(version, [])
        # One go build for every command of the release whose image is planned.
        built_with = (binaries.KSERVE_MANAGER, *(command.binary for command, _ in its_commands)) if its_commands else ()
        jobs.append(_controller_job(version, reference, reason, engine, built_with=built_with))
        jobs += [_command_job(command, version, image, engine, built_with) for command, image in its_commands]
    return jobs + serving_jobs


def _serving_jobs(
    release: KServeRelease, manifest: ReleaseManifest, files: ReleaseFiles, engine: str | None
) -> list[_Job]:
    """The release's sklearnserver and storage-initializer images (``serving.py``): one build."""

    runtimes = load_release_manifest(release, files, release.runtimes_file).documents if release.runtimes_file else []
    images = serving_images(runtimes, manifest.documents)
    pair = serving.serving_images_of(release.version, images)
    if pair is None:
        detail = f"KServe {release.version}'s manifests name no sklearnserver and storage-initializer pair ({images})"
        return [_Job(PlannedImage(f"(KServe {release.version} serving images)", serving.SKLEARNSERVER,
                                  release.version, UNAVAILABLE, detail), None)]  # fmt: skip
    status, detail = (MISSING, engine) if engine else serving.status(pair)
    planned = PlannedImage(
        pair.sklearnserver,
        serving.SKLEARNSERVER,
        release.version,
        status,
        detail,
        also_tagged=(pair.storage_initializer,),
    )

    def build() -> PlannedImage:
        serving.build(pair)
        return replace(planned, status=BUILT, detail="")

    return [_Job(planned, None if status == BUILT else build)]


def deployment_image(manifest: ReleaseManifest, name: str) -> str | None:
    """The image of the release's single-container Deployment ``name`` (None if it runs none)."""
    deployment = manifest.find("Deployment", name, manifest.profile.namespace)
    if deployment is None:
        return None
    images = [str(c["image"]) for c in pod_spec(deployment).get("containers") or [] if c.get("image")]
    if len(images) != 1:
        raise ManifestError(f"{manifest.source}: Deployment {name} has {len(images)} container images; expected one")
    return images[0]


def _version_order(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.lstrip("v").split("-")[0].split(".") if part.isdigit())


def required_images(
    kserve_versions: Sequence[str] | None = None,
    proxy_aliases: Sequence[str] | None = None,
    k8s_minors: Sequence[str] | None = None,
    *,
    matrix: Matrix | None = None,
    files: ReleaseFiles | None = None,
) -> list[PlannedImage]:
    """Every image the selection needs (None or empty: the matrix's default), with its status.

    Builds nothing; asks the Go module proxy about versions not built yet (cheap) and the
    Docker engine about existing images. A bad version or alias is a one-line UsageError.
    """
    return [job.planned for job in _plan(kserve_versions, proxy_aliases, k8s_minors, matrix=matrix, files=files)]


def ensure_images(
    kserve_versions: Sequence[str] | None = None,
    proxy_aliases: Sequence[str] | None = None,
    k8s_minors: Sequence[str] | None = None,
    *,
    matrix: Matrix | None = None,
    files: ReleaseFiles | None = None,
) -> list[PlannedImage]:
    """Build what the selection needs and is missing: node images first, then the components.

    Returns every image with its final status: built, unavailable (with the reason) or
    failed (with the error's line); continues past failures. Raises EnvironmentMissing
    when no Docker engine answers and something is to be built.
    """
    jobs = _plan(kserve_versions, proxy_aliases, k8s_minors, matrix=matrix, files=files)
    if any(job.build for job in jobs):
        engine = binaries.docker_engine_unreachable_reason()
        if engine:
            raise EnvironmentMissing(f"{engine}; start one (.ci/docker-engine) and run again")
    results: list[PlannedImage] = []
    for job in jobs:
        if job.build is None:
            results.append(job.planned)
            continue
        log.info("building image %s (%s %s)", job.planned.reference, job.planned.component, job.planned.version)
        try:
            results.append(job.build())
        except binaries.BuildUnavailable as exc:
            results.append(replace(job.planned, status=UNAVAILABLE, detail=str(exc)))
        except UsageError:
            raise
        except HarnessError as exc:
            results.append(replace(job.planned, status=FAILED, detail=str(exc)))
    return results
