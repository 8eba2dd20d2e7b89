"""What a Kubernetes version's own kubeadm names: its control-plane images, and so the etcd,
CoreDNS and pause versions that go with that minor.

Asked of the kubeadm binary built from the same ``k8s.io/kubernetes`` version
(``kubeadm config images list --kubernetes-version V``), not parsed from its source: kubeadm's
constants are computed (v1.35 derives its etcd map from the version skew), so only the binary
gives the answer kubeadm itself would give.
"""

from __future__ import annotations

import functools
import re

from e2e import binaries
from e2e.command import run
from e2e.errors import HarnessError


def binary_version_for_image(name: str, tag: str) -> str:
    """The binaries version behind a kubeadm image tag: etcd 3.6.5-0 -> v3.6.5, v1.12.1 -> v1.12.1."""
    version = tag if tag.startswith("v") else "v" + tag
    return re.sub(r"-\d+$", "", version) if name == "etcd" else version


def image_list(lines: list[str]) -> dict[str, str]:
    """``kubeadm config images list`` output -> {short name: reference}."""
    images: dict[str, str] = {}
    for line in lines:
        reference = line.strip()
        if reference:
            images[reference.rsplit("/", 1)[-1].split(":", 1)[0]] = reference
    return images


@functools.cache
def named_images(kubernetes_version: str, *, build: bool = True) -> dict[str, str]:
    """{short name: reference} of the images kubeadm ``kubernetes_version`` deploys.

    ``build=False`` builds no kubeadm (EnvironmentMissing names the missing one)."""
    if build and binaries.locate("kubeadm", kubernetes_version) is None:
        # With the control plane's commands: one go build compiles what they share.
        binaries.ensure_together(["kubeadm", *binaries.KUBERNETES_COMPONENTS], kubernetes_version)
    kubeadm = binaries.ensure("kubeadm", kubernetes_version, build=build)
    argv = [str(kubeadm), "config", "images", "list", "--kubernetes-version", kubernetes_version]
    done = run(argv, f"kubeadm {kubernetes_version} config images list", timeout=120)
    return image_list(done.stdout.splitlines())


def etcd_version(kubernetes_version: str, *, build: bool = True) -> str:
    """The etcd release kubeadm ``kubernetes_version`` runs, as a binaries version (v3.6.6)."""
    images = named_images(kubernetes_version, build=build)
    if "etcd" not in images:
        raise HarnessError(f"kubeadm {kubernetes_version} config images list names no etcd image: {images}")
    return binary_version_for_image("etcd", images["etcd"].rsplit(":", 1)[1])
