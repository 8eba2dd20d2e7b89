"""What a KServe install on kind takes from the image set built here (``--local-images``).

The installer asks its provider three things (``ClusterProvider``'s install hooks): which
cert-manager to install, how to make the release's images pullable, and how the samples'
model server is had. A kind cluster on the image set answers them here, so the installer
does not know the image set exists:

- cert-manager: the one built here from source (images loaded, the manifest rendered from
  its chart), a deviation when the release's quick-install names another version;
- the controller's images (the proxy's comes with the cell's swap) and the release's other
  workloads' images go into the nodes' mirrors; one not built here is a note (the install
  waits for the controller only);
- the sklearnserver and storage-initializer images built here, and the in-cluster model
  store serving the iris model trained with the release's scikit-learn.

Before any of that, the run asks whether the controller's own images are built here at all
(``why_release_cannot_run``): a release whose controller cannot be built (the Go module proxy
refuses its version) is skipped without a cluster.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from e2e import model_store
from e2e.apply import Applier
from e2e.cluster.mirrors import upstream_name
from e2e.cluster.provider import CertManagerInstall, ClusterProvider, SamplesServing
from e2e.images import is_retired
from e2e.imageset import serving
from e2e.imageset.offline import BUILD_HINT, LocalImageSet
from e2e.local import sklearnserver
from e2e.manifests import container_images, load_yaml_documents, pod_spec
from e2e.matrix import KServeRelease


def cert_manager(image_set: LocalImageSet, provider: ClusterProvider, release: KServeRelease) -> CertManagerInstall:
    version, text = image_set.cert_manager_manifest()
    documents = load_yaml_documents(text, remember=True)
    provider.load_images(container_images(documents))
    deviations = []
    if version != release.cert_manager:
        deviations.append(
            f"cert-manager {version} built here from source (the newest buildable) in place of "
            f"{release.cert_manager}, the version KServe {release.version}'s quick-install names"
        )
    return CertManagerInstall(documents, deviations)


def controller_images(release: KServeRelease, documents: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(the controller Deployment's own images, its proxy's): the proxy's is loaded (or left
    to the kubelet) with the cell's swap, the others must be built here."""
    profile = release.profile
    own: list[str] = []
    proxy: list[str] = []
    for doc in documents:
        metadata = doc.get("metadata") or {}
        if doc.get("kind") != "Deployment" or metadata.get("name") != profile.deployment:
            continue
        if metadata.get("namespace", profile.namespace) != profile.namespace:
            continue
        for container in pod_spec(doc).get("containers") or []:
            if container.get("image"):
                (proxy if container.get("name") == profile.proxy_container else own).append(container["image"])
    return own, proxy


def why_release_cannot_run(
    image_set: LocalImageSet,
    release: KServeRelease,
    documents: Sequence[dict[str, Any]],
    user_registry_hosts: Collection[str] = (),
) -> str:
    """Why the release's controller cannot start on the local image set ("" when it can):
    the test ``KindCluster.load_images`` makes, before a cluster exists. An image of a host
    the user's own registry serves (``--registry-mirror``) is pulled from there, and a
    retired one is left to the kubelet's real pull: neither is asked of the image set."""
    own, _ = controller_images(release, documents)
    needed = [image for image in own if upstream_name(image)[0] not in user_registry_hosts and not is_retired(image)]
    missing = image_set.missing(needed)
    if not missing:
        return ""
    return f"{', '.join(missing)}: not in the local image set; {BUILD_HINT}"


def make_pullable(
    image_set: LocalImageSet, provider: ClusterProvider, release: KServeRelease, documents: Sequence[dict[str, Any]]
) -> list[str]:
    """The controller's images built here, put into the nodes' mirrors (the kubelet pulls
    them with the release's own pull policy), and the release's other workloads' where
    built; returns a note naming those that are not."""
    needed, proxy = controller_images(release, documents)
    provider.load_images(needed)
    # The release's other workloads (local model controller, ...): loaded when built here;
    # the install waits only for the controller, so a missing one is a note, not a failure.
    others = [image for image in container_images(documents) if image not in needed and image not in proxy]
    missing = image_set.missing(others)
    provider.load_images([image for image in others if image not in missing])
    if not missing:
        return []
    return [
        f"not in the local image set, so their pods cannot start: {', '.join(missing)} "
        "(the install waits for the controller only)"
    ]


def serve_samples(
    image_set: LocalImageSet, provider: ClusterProvider, release: KServeRelease, images: list[str]
) -> SamplesServing:
    """The release's serving images built here, and the model store the samples fetch from;
    without them, why inference is not checked."""
    missing = image_set.missing(images)
    pair = serving.serving_images_of(release.version, images)
    if missing or pair is None:
        return SamplesServing(
            unavailable=f"the serving images {', '.join(missing or images) or '(none named)'} are not in the local "
            "image set: no model server can run, inference is not checked"
        )
    model_path = serving.iris_model_path(pair.sklearnserver)
    if model_path is None:
        return SamplesServing(
            unavailable=f"{pair.sklearnserver} was not built by this image set (no iris model label): "
            "inference is not checked"
        )
    provider.load_images(list(images))
    Applier(provider.api_client()).apply(model_store.model_store_documents(pair.sklearnserver, model_path))
    return SamplesServing(
        model_store_uri=model_store.model_store_uri(model_path),
        deviations=[
            f"{', '.join(images)} built here from python/ of {sklearnserver.KSERVE_MODULE}@{release.version} "
            "(this machine's CPython 3.11 on Debian bookworm, dependencies pinned by the release's lock), "
            "not the published images"
        ],
    )
