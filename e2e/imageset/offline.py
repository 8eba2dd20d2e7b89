"""The locally built image set, as the kind tier uses it when nothing may be pulled.

``--local-images`` (or ``KSERVE_COMPAT_LOCAL_IMAGES=1``) makes the kind tier run on the
images ``kserve-compat images build`` made from source (a run builds no image itself:
a missing one is named with the command that builds it): the node image of the Kubernetes
version really built, kind and kubectl from their Go modules, every image a cell needs
pushed into the run's registry mirrors and pulled from there by the kubelet, nothing from
the internet. What differs from a cluster made from the published images is said in every
report (``deviations``): the node's Kubernetes patch, the cert-manager version, the serving
images, checks that cannot run.

An image of a retired registry is never built (``gcr.io/kubebuilder`` must stay
unpullable): the kubelet tries to pull it and fails for real, which is that cell's evidence.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e2e.docker_cli import image_exists
from e2e.errors import EnvironmentMissing, WorkloadUnavailable
from e2e.images import is_retired

if TYPE_CHECKING:
    from e2e.imageset.node import NodeImage

log = logging.getLogger(__name__)

ENV_LOCAL_IMAGES = "KSERVE_COMPAT_LOCAL_IMAGES"
BUILD_HINT = "`kserve-compat images list` says why; `nox -s images -- [selection]` builds what can be"


def local_images_requested(flag: bool = False) -> bool:
    """The switch: the pytest option, or the environment variable set to 1."""
    return flag or os.environ.get(ENV_LOCAL_IMAGES, "") == "1"


@dataclass(frozen=True)
class ToolBinaries:
    kind: Path
    kubectl: Path


class LocalImageSet:
    """The images and tools of the kind tier, built here; nothing comes from a registry."""

    def __init__(self, docker: str = "docker") -> None:
        self.docker = docker

    # -- the cluster ------------------------------------------------------------------------

    def node_image(self, kubernetes_minor: str) -> NodeImage:
        """The node image built here for a matrix Kubernetes minor; EnvironmentMissing (one
        line naming the command that builds it) when it is not built or stale."""
        from e2e.imageset import node

        version = node.node_kubernetes_version(kubernetes_minor)
        status, detail = node.node_image_status(version)
        if status != "built":
            raise EnvironmentMissing(
                f"node image {node.node_reference(version)} {status} ({detail}); "
                f"build it with `nox -s images -- --k8s {kubernetes_minor}`"
            )
        return node.NodeImage(node.node_reference(version), version)

    @staticmethod
    def cluster_networking() -> dict[str, Any]:
        """What the kind config needs under ``networking`` for a node image built here."""
        from e2e.imageset import node

        return dict(node.KIND_CLUSTER_CONFIG_NETWORKING)

    @staticmethod
    def tools(kubernetes_version: str | None = None) -> ToolBinaries:
        """kind and kubectl built from their Go modules (pytest-kind would download them);
        kubectl of the cluster's own version (the node image has it built already), so no
        minor is ever outside kubectl's one-minor skew."""
        from e2e import binaries

        return ToolBinaries(
            kind=binaries.ensure("kind"),
            kubectl=binaries.ensure("kubectl", kubernetes_version or binaries.KUBERNETES_VERSION),
        )

    @staticmethod
    def cert_manager_manifest() -> tuple[str, str]:
        """(version, text) of the cert-manager built here (manifest rendered when missing;
        its images must have been built by `kserve-compat images build`)."""
        from e2e.imageset import components

        version = components.CERT_MANAGER_VERSION
        return version, components.cert_manager_manifest(version).read_text()

    def missing(self, images: Iterable[str]) -> list[str]:
        return [image for image in images if not image_exists(image, client=self.docker)]

    def check_loadable(self, image: str) -> bool:
        """True when ``image`` is in the set (load it); False for a retired image (leave it
        to the kubelet, whose pull fails for real); WorkloadUnavailable otherwise."""
        if image_exists(image, client=self.docker):
            return True
        if is_retired(image):
            log.info("%s: retired registry, never built here: the kubelet's pull will fail for real", image)
            return False
        raise WorkloadUnavailable(f"{image}: not in the local image set; {BUILD_HINT}")
