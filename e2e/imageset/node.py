"""The kind node image, built offline from upstream source: what kind boots a cluster from.

``kind build node-image`` cannot work without a container registry (it ``ctr content fetch``es
etcd, CoreDNS, pause, kindnetd and local-path images), so the image is assembled here the way
kind assembles it, from what the package registries serve:

1. **base** (``kserve-compat/node-base:bookworm-<digest>``): a Debian bookworm rootfs from
   ``debootstrap`` (Debian's mirror, as apt on this machine is configured) with the packages
   kind's ``images/base/Dockerfile`` installs, plus Debian's runc and CNI plugins (kind builds
   those from source; Debian's are the offline equivalent), cleaned up as kind's Dockerfile
   does. Kept as a local image so a rebuild does not debootstrap again.
2. **control-plane images**, named exactly as ``kubeadm config images list`` prints them
   (``registry.k8s.io/kube-apiserver:v1.34.4``, ``registry.k8s.io/etcd:3.6.5-0``, ...): one
   binary each from ``binaries.ensure``; pause compiled from the Kubernetes module's
   ``build/pause/linux/pause.c`` as its Makefile does (``gcc -Os -static``); kube-proxy on the
   base rootfs, because it runs ``iptables``.
3. **node** (``kserve-compat/kind-node:v1.34.4``): a container of the base image gets kind's
   base files (from the ``sigs.k8s.io/kind`` module), containerd, crictl, kubelet, kubeadm and
   kubectl, our containerd/CNI/registry configuration; its containerd imports the
   control-plane images (kind's own ``ctr images import`` flags), and ``docker commit`` makes
   the image. ``/kind/kserve-compat-build.json`` records every version inside.

Each image carries its recipe digest (``docker_image.RECIPE_LABEL``); a current image is
reused, so a second ``build_node_image`` takes under a second (``docker inspect``s, ``kubeadm
config images list``, and ``go mod download`` answered from the module cache).

What the cluster config must say: ``KIND_CLUSTER_CONFIG_NETWORKING`` (see there).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import RetryError, Retrying, before_sleep_log, retry_if_result, stop_after_delay, wait_fixed

from e2e import binaries, command, docker_cli
from e2e.cache import cache_root
from e2e.command import failure_line
from e2e.errors import EnvironmentMissing, HarnessError, UsageError
from e2e.imageset.docker_image import (
    RECIPE_LABEL,
    ImageBuildFailed,
    ImageContent,
    ImageRecipe,
    add_parent_directories,
    build_image,
    docker,
    file_sha256,
    is_current,
    recorded_recipe,
)
from e2e.local import kubeadm
from e2e.local.kubeadm import binary_version_for_image

log = logging.getLogger(__name__)

NODE_IMAGE_REPOSITORY = "kserve-compat/kind-node"
BASE_IMAGE_REPOSITORY = "kserve-compat/node-base"
# Bumped when the way the image is assembled changes in a way its inputs do not show.
RECIPE_REVISION = 1


def node_kubernetes_versions() -> dict[str, str]:
    """The Kubernetes minors we build node images for, and the patch whose binaries we build:
    the matrix's ``kubernetes`` entries (minor -> ``build``)."""
    from e2e.matrix import packaged_matrix

    return {kube.version: kube.build for kube in packaged_matrix().kubernetes}


DEBIAN_SUITE = "bookworm"
DEBIAN_DEFAULT_MIRROR = "http://deb.debian.org/debian"
ENV_DEBIAN_MIRROR = "KSERVE_COMPAT_DEBIAN_MIRROR"
# kind's images/base/Dockerfile installs (less its storage-test packages nfs-common,
# open-iscsi, e2fsprogs, fuse-overlayfs for rootless, and curl), plus what it builds from
# source and Debian packages: runc and the CNI plugins. jq runs in kind's createContainer
# hook (/kind/bin/mount-product-files.sh); dbus gives systemd's tools the system bus.
DEBIAN_PACKAGES: tuple[str, ...] = (
    "systemd",
    "dbus",
    "conntrack",
    "iptables",
    "nftables",
    "ebtables",
    "iproute2",
    "ethtool",
    "socat",
    "util-linux",
    "mount",
    "kmod",
    "libseccomp2",
    "pigz",
    "bash",
    "ca-certificates",
    "jq",
    "procps",
    "runc",
    "containernetworking-plugins",
)
# Debian installs the CNI plugins here; containerd looks in /opt/cni/bin (linked to it).
DEBIAN_CNI_DIR = "/usr/lib/cni"

# What the harness puts under `networking:` in its kind cluster config for this image. The
# image has no kindnet (its image cannot be built offline); the CNI is the ptp conflist baked
# into /etc/cni/net.d, whose range is the node's share of kind's default pod subnet, so the
# config must keep kind's default podSubnet (10.244.0.0/16) and have one node. (The image
# also carries a /kind/manifests/default-cni.yaml that installs nothing harmful, so a config
# that forgets this still creates a working cluster.)
KIND_CLUSTER_CONFIG_NETWORKING: dict[str, Any] = {"disableDefaultCNI": True}
POD_SUBNET = "10.244.0.0/16"
NODE_POD_RANGE = "10.244.0.0/24"
CNI_CONFLIST_PATH = "/etc/cni/net.d/10-kserve-compat-ptp.conflist"

# Every registry is replaced by this closed loopback port inside the node, so a pull of an
# image that was not loaded fails at once with "connection refused" and no packet leaves the
# node (no DNS lookup either: the address is a literal). containerd reads
# /etc/containerd/certs.d/_default/hosts.toml for any registry without a directory of its own.
REGISTRY_BLACKHOLE = "http://127.0.0.1:1"
REGISTRY_HOSTS_PATH = "/etc/containerd/certs.d/_default/hosts.toml"
EGRESS_GUARD_PATH = "/usr/local/bin/kserve-compat-egress-guard"
EGRESS_GUARD_UNIT = "/etc/systemd/system/kserve-compat-egress-guard.service"
# Pods reach the pod network (a Service address is a pod's once kube-proxy has rewritten
# it) and, on the node itself, the API server only. Seen here: a connection made in the
# moment between a Service's creation and kube-proxy's rules went to the ClusterIP
# unrewritten, was routed off the node, and some server outside answered it (HTTP 404) for as
# long as the connection lived. Rejected now, like anything else a pod sends off the node,
# and DNS to the host's resolver (kind points the node's resolv.conf at Docker's DNS, which
# CoreDNS forwards to): CoreDNS answers cluster names, nothing else.
EGRESS_GUARD = f"""#!/bin/sh
# kserve-compat: nothing a pod sends leaves this node (see e2e/imageset/node.py).
set -eu
guard() {{  # guard CHAIN PARENT RULE...: (re)fill CHAIN and jump to it from PARENT for pod traffic
  chain=$1 parent=$2
  shift 2
  iptables -w -N "$chain" 2>/dev/null || iptables -w -F "$chain"
  while [ $# -gt 0 ]; do
    eval "iptables -w -A $chain $1"
    shift
  done
  iptables -w -A "$chain" -p tcp -j REJECT --reject-with tcp-reset
  iptables -w -A "$chain" -j REJECT
  iptables -w -C "$parent" -s {POD_SUBNET} -j "$chain" 2>/dev/null ||
    iptables -w -I "$parent" 1 -s {POD_SUBNET} -j "$chain"
}}
guard KSERVE-COMPAT-FORWARD FORWARD "-d {POD_SUBNET} -j RETURN"
guard KSERVE-COMPAT-INPUT INPUT "-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN" "-p tcp --dport 6443 -j RETURN"
"""
EGRESS_GUARD_SERVICE = f"""[Unit]
Description=kserve-compat: pods reach only the cluster
Before=containerd.service kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={EGRESS_GUARD_PATH}

[Install]
WantedBy=multi-user.target
"""

BUILD_INFO_PATH = "/kind/kserve-compat-build.json"
DEBOOTSTRAP_TIMEOUT_SECONDS = 30 * 60
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Where the control-plane images come from: kubeadm's image name -> binaries component.
_BINARY_IMAGES = {
    "kube-apiserver": "kube-apiserver",
    "kube-controller-manager": "kube-controller-manager",
    "kube-scheduler": "kube-scheduler",
    "etcd": "etcd",
    "coredns": "coredns",
}


@dataclass(frozen=True)
class NodeImage:
    reference: str  # e.g. "kserve-compat/kind-node:v1.34.4": the tag names the version it runs
    kubernetes_version: str  # "v1.34.4"


# ---------------------------------------------------------------------------- pure parts


def node_kubernetes_version(kubernetes_minor: str) -> str:
    """The Kubernetes version our node image of ``kubernetes_minor`` runs ("1.34" -> "v1.34.4").

    A full version of that minor ("1.34.8", as a matrix may name upstream's image) gives the
    same answer: the patch we build, which is what the image's tag and the report then name.
    """
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", kubernetes_minor.strip())
    minor = f"{match.group(1)}.{match.group(2)}" if match else None
    versions = node_kubernetes_versions()
    if minor not in versions:
        raise UsageError(
            f"Kubernetes {kubernetes_minor!r}: no kind node image is built for it here; "
            f"expected one of {', '.join(versions)}"
        )
    return versions[minor]


def _check_version(kubernetes_version: str) -> str:
    versions = node_kubernetes_versions().values()
    if kubernetes_version not in versions:
        raise UsageError(
            f"Kubernetes {kubernetes_version!r}: no kind node image is built for it here; "
            f"expected one of {', '.join(versions)}"
        )
    return kubernetes_version


def node_reference(kubernetes_version: str) -> str:
    return f"{NODE_IMAGE_REPOSITORY}:{kubernetes_version}"


def debian_mirror(sources: Sequence[str], suite: str = DEBIAN_SUITE) -> str:
    """The Debian mirror apt uses for ``suite``, from sources.list / deb822 ``.sources`` texts."""
    for text in sources:
        for stanza in re.split(r"\n\s*\n", text):  # deb822: stanzas apart by blank lines
            fields: dict[str, str] = dict(re.findall(r"(?m)^(URIs|Suites|Types):\s*(.+)$", stanza))
            uris = fields.get("URIs", "").split()
            if uris and "deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split():
                return uris[0].rstrip("/")
        for line in text.splitlines():  # one-line style: deb [opts] URI suite components
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1].rstrip("/")
    return DEBIAN_DEFAULT_MIRROR


def configured_debian_mirror() -> str:
    override = os.environ.get(ENV_DEBIAN_MIRROR)
    if override:
        return override.rstrip("/")
    paths = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    paths += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    texts = []
    for path in paths:
        with contextlib.suppress(OSError):
            texts.append(path.read_text())
    return debian_mirror(texts)


def containerd_config(kind_config: str, sandbox_image: str) -> str:
    """kind's /etc/containerd/config.toml with what this image needs changed.

    - ``restrict_oom_score_adj = true``: on our VMs (and any host whose container lacks
      CAP_SYS_RESOURCE) the kubelet's negative oom_score_adj makes every sandbox fail with
      ``can't get final child's PID from pipe: EOF``;
    - the sandbox image is the pause image kubeadm names (kind's build rewrites it likewise);
    - registry hosts come from /etc/containerd/certs.d (the registry black hole).
    """
    replacements = {
        r"(?m)^(\s*restrict_oom_score_adj\s*=\s*)false\s*$": r"\g<1>true",
        r'(?m)^(\s*sandbox_image\s*=\s*)"[^"]*"\s*$': rf'\g<1>"{sandbox_image}"',
    }
    text = kind_config
    for pattern, replacement in replacements.items():
        text, count = re.subn(pattern, replacement, text)
        if count != 1:
            raise ImageBuildFailed(
                f"kind's containerd config.toml: expected one line matching {pattern!r}; kind's file changed"
            )
    if "config_path" in text:
        raise ImageBuildFailed("kind's containerd config.toml: it sets config_path already; kind's file changed")
    return (
        text.rstrip("\n")
        + "\n\n# kserve-compat: registry hosts from certs.d (every registry -> a closed loopback port)\n"
        + '[plugins."io.containerd.grpc.v1.cri".registry]\n'
        + '  config_path = "/etc/containerd/certs.d"\n'
    )


def registry_hosts_toml() -> str:
    """containerd hosts.toml for every registry: the closed loopback port, nothing else.

    ``server`` replaces the registry's own address (a ``[host]`` mirror alone would fall back
    to the registry itself after the mirror failed).
    """
    return (
        "# kserve-compat: a registry without a mirror of the run (certs.d/<host>, mounted by the\n"
        "# harness) fails at once with connection refused, without DNS or traffic.\n"
        f'server = "{REGISTRY_BLACKHOLE}"\n'
    )


def cni_conflist() -> str:
    """The node's CNI config: ptp + host-local on the node's share of the pod subnet."""
    config = {
        "cniVersion": "0.4.0",
        "name": "kserve-compat-ptp",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": NODE_POD_RANGE}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
                "mtu": 1500,
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(config, indent=2) + "\n"


# kind applies /kind/manifests/default-cni.yaml unless the config disables its default CNI;
# ours only records which CNI the node has (the conflist above), so either config works.
DEFAULT_CNI_MANIFEST = f"""# kserve-compat node image: the CNI is the ptp conflist baked into {CNI_CONFLIST_PATH}
# (kindnet's image cannot be built offline). Nothing to run; this records it in the cluster.
apiVersion: v1
kind: ConfigMap
metadata:
  name: kserve-compat-cni
  namespace: kube-system
data:
  cni: ptp (host-local {NODE_POD_RANGE}), baked into the node image
"""

# kind applies /kind/manifests/default-storage.yaml (else warns and applies this same class):
# a default StorageClass without local-path-provisioner, whose image is not built here.
DEFAULT_STORAGE_MANIFEST = """# kserve-compat node image: a default StorageClass only (no provisioner image offline)
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  namespace: kube-system
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/host-path
"""


def cri_base_spec(oci_spec: Mapping[str, Any]) -> dict[str, Any]:
    """kind's /etc/containerd/cri-base.json from ``ctr oci spec``: its product-files hook
    added, rlimits dropped (what kind's Dockerfile does with jq)."""
    spec: dict[str, Any] = json.loads(json.dumps(oci_spec))
    hooks = spec.setdefault("hooks", {}).setdefault("createContainer", [])
    hooks.append({"path": "/kind/bin/mount-product-files.sh"})
    spec.get("process", {}).pop("rlimits", None)
    return spec


def kubeadm_images(lines: Sequence[str]) -> dict[str, str]:
    """``kubeadm config images list`` output -> {short name: reference}, all of them expected."""
    images = kubeadm.image_list(list(lines))
    expected = {*_BINARY_IMAGES, "kube-proxy", "pause"}
    if set(images) != expected:
        raise ImageBuildFailed(
            f"kubeadm config images list: expected {', '.join(sorted(expected))}, got {', '.join(sorted(images))}"
        )
    return images


def image_tag(reference: str) -> str:
    return reference.rsplit(":", 1)[1]


@dataclass(frozen=True)
class Inputs:
    """Everything the node image is made of, as the recipe digests see it."""

    kubernetes_version: str
    kind_version: str
    kind_files: Mapping[str, str]  # path in the image -> sha256 (kind's base files, ours)
    binaries: Mapping[str, tuple[str, str]]  # component -> (version, sha256)
    images: Mapping[str, str]  # reference -> recipe digest of its image
    base_image: str  # reference (its tag carries the base recipe digest)

    def node_recipe(self) -> ImageRecipe:
        return ImageRecipe(
            (node_reference(self.kubernetes_version),),
            {
                "revision": RECIPE_REVISION,
                "kubernetes": self.kubernetes_version,
                "kind": self.kind_version,
                "files": dict(self.kind_files),
                "binaries": {k: list(v) for k, v in self.binaries.items()},
                "images": dict(self.images),
                "base": self.base_image,
            },
        )


def base_recipe(
    suite: str = DEBIAN_SUITE, packages: Sequence[str] = DEBIAN_PACKAGES, repository: str = BASE_IMAGE_REPOSITORY
) -> ImageRecipe:
    """A debootstrapped rootfs image: its tag carries the digest of the suite and the package list.

    The mirror is left out (any mirror of the suite gives the same packages).
    """
    inputs = {"revision": RECIPE_REVISION, "suite": suite, "packages": sorted(packages), "variant": "minbase"}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return ImageRecipe((f"{repository}:{suite}-{digest[:12]}",), inputs)


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    started = time.monotonic()
    log.info("node image: %s ...", name)
    yield
    timings[name] = round(time.monotonic() - started, 1)
    log.info("node image: %s done in %.1fs", name, timings[name])


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One node image build at a time on this machine (two would race on the same tags)."""
    directory = cache_root() / "images"
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "node.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _binary_sha256(component: str, version: str, path: Path) -> str:
    info = binaries.read_build_info(component, version)
    if info and info.get("size") == path.stat().st_size and isinstance(info.get("sha256"), str):
        return str(info["sha256"])
    return file_sha256(path)


def tar_files(files: Mapping[str, tuple[Path | bytes, int]], symlinks: Mapping[str, str] | None = None) -> bytes:
    """A tar of files (path -> (source, mode)) and symlinks, owned by root, parents made."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        made: set[str] = set()
        for inner, (source, mode) in sorted(files.items()):
            name = inner.strip("/")
            add_parent_directories(archive, name, made)
            data = source if isinstance(source, bytes) else source.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
        for inner, target in sorted((symlinks or {}).items()):
            name = inner.strip("/")
            add_parent_directories(archive, name, made)
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            archive.addfile(info)
    return buffer.getvalue()


def docker_stream(args: Sequence[str], what: str, stdin_args: Sequence[str]) -> None:
    """``stdin_args | docker ARGS`` (e.g. ``docker save`` into ``docker exec -i``)."""
    with tempfile.TemporaryFile() as errors_file:
        producer = subprocess.Popen(list(stdin_args), stdout=subprocess.PIPE, stderr=errors_file)
        assert producer.stdout is not None
        consumer = docker_cli.docker(
            args, what, error=ImageBuildFailed, stdin=producer.stdout, timeout=30 * 60, check=False
        )
        producer.stdout.close()
        produced = producer.wait(timeout=60)
        errors_file.seek(0)
        producer_errors = errors_file.read().decode(errors="replace")
    if produced != 0:
        raise ImageBuildFailed(
            failure_line(subprocess.CompletedProcess(stdin_args, produced, "", producer_errors), what)
        )
    if consumer.returncode != 0:
        raise ImageBuildFailed(failure_line(consumer, what))


def drop_replaced(reference: str, previous: str | None) -> None:
    """Remove the image ``reference`` named before a rebuild (else each rebuild leaves a
    dangling 1 GB image); one still used by a container stays, with docker's word for it."""
    if previous is None or previous == docker_cli.image_id(reference):
        return
    kept = docker_cli.remove_image(previous)
    if kept is not None:
        log.info("kept the replaced %s image %s: %s", reference, previous[:19], kept)


def _require_engine() -> None:
    reason = binaries.docker_engine_unreachable_reason()
    if reason:
        raise EnvironmentMissing(f"kind node image: {reason}")


# ---------------------------------------------------------------------------- stage 1: base


APT_LEFTOVERS = (
    "var/lib/apt/lists/*",
    "var/cache/apt/*",
    "var/cache/debconf/*",
    "var/log/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/locale/*",
    "tmp/*",
    "var/tmp/*",
    "dev/*",
)


def remove_from_rootfs(rootfs: Path, patterns: Sequence[str] = APT_LEFTOVERS) -> None:
    """Delete what ``patterns`` (globs relative to the rootfs) match: apt's leftovers by default."""
    for pattern in patterns:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _trim_rootfs(rootfs: Path) -> None:
    """What kind's base Dockerfile does after installing packages, and apt's leftovers."""
    systemd = rootfs / "usr/lib/systemd/system"
    with contextlib.suppress(FileNotFoundError):
        (systemd / "sysinit.target.wants/systemd-tmpfiles-setup.service").unlink()
    units = (
        "usr/lib/systemd/system/multi-user.target.wants/*",
        "etc/systemd/system/*.wants/*",
        "usr/lib/systemd/system/local-fs.target.wants/*",
        "usr/lib/systemd/system/sockets.target.wants/*udev*",
        "usr/lib/systemd/system/sockets.target.wants/*initctl*",
        "usr/lib/systemd/system/basic.target.wants/*",
    )
    remove_from_rootfs(rootfs, (*units, *APT_LEFTOVERS))
    with (rootfs / "etc/systemd/journald.conf").open("a") as journald:
        journald.write("ReadKMsg=no\n")
    init = rootfs / "usr/sbin/init"
    if not init.exists() and not init.is_symlink():
        init.symlink_to("/usr/lib/systemd/systemd")
    # systemd-binfmt registers into binfmt_misc, which is kernel-global (kind masks it).
    (rootfs / "etc/systemd/system/systemd-binfmt.service").symlink_to("/dev/null")
    (rootfs / "etc/kubernetes/manifests").mkdir(parents=True, exist_ok=True)
    cni_bin = rootfs / "opt/cni/bin"
    cni_bin.mkdir(parents=True, exist_ok=True)
    for plugin in (rootfs / DEBIAN_CNI_DIR.lstrip("/")).iterdir():
        (cni_bin / plugin.name).symlink_to(f"{DEBIAN_CNI_DIR}/{plugin.name}")


def _unmount_below(rootfs: Path) -> None:
    """Unmount what debootstrap mounted in the rootfs (/proc, /sys) if it was stopped before
    its own cleanup, so deleting the temp dir never walks into the host's /proc or /sys."""
    prefix = str(rootfs.resolve()) + "/"
    with contextlib.suppress(OSError, HarnessError):
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
            command.run(["umount", "-l", mount], f"unmount {mount}", timeout=60, check=False)


def ensure_base_image(timings: dict[str, float] | None = None) -> str:
    """The node's Debian rootfs image (debootstrapped once, then reused while its recipe holds)."""
    # `docker import` cannot set STOPSIGNAL: a metadata-only build on top sets it (and the
    # label). systemd exits on SIGRTMIN+3, re-executes on SIGTERM; `container=docker` tells
    # systemd it runs in a container (kind's base Dockerfile sets both).
    config = 'ENV container=docker\nSTOPSIGNAL SIGRTMIN+3\nENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]\n'
    return debootstrap_image(base_recipe(), DEBIAN_PACKAGES, _trim_rootfs, config, "the kind node image", timings)


def debootstrap_image(
    recipe: ImageRecipe,
    packages: Sequence[str],
    trim: Callable[[Path], None],
    config: str,
    used_by: str,
    timings: dict[str, float] | None = None,
) -> str:
    """A Debian rootfs image (``debootstrap --variant=minbase`` with ``packages``, then
    ``trim``med, ``config`` the Dockerfile lines on top), made once and reused while its
    recipe holds. ``used_by`` names what needs it, for the errors."""
    if is_current(recipe):
        log.info("base image %s is current", recipe.name)
        return recipe.name
    timings = {} if timings is None else timings
    if shutil.which("debootstrap") is None:
        raise EnvironmentMissing(
            f"debootstrap: not found on PATH; {used_by}'s rootfs is made with it (apt-get install debootstrap)"
        )
    if os.geteuid() != 0:
        raise EnvironmentMissing(f"debootstrap: needs root to make {used_by}'s rootfs (run as root)")
    mirror = configured_debian_mirror()
    work = cache_root() / "images"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=work) as tmp:
        rootfs = Path(tmp) / "rootfs"
        with _stage(f"debootstrap {DEBIAN_SUITE} from {mirror} for {recipe.name}", timings):
            try:
                command.run(
                    [
                        "debootstrap",
                        "--variant=minbase",
                        "--include=" + ",".join(packages),
                        DEBIAN_SUITE,
                        str(rootfs),
                        mirror,
                    ],
                    f"debootstrap {DEBIAN_SUITE}",
                    error=ImageBuildFailed,
                    timeout=DEBOOTSTRAP_TIMEOUT_SECONDS,
                    log_file=work / "debootstrap.log",
                    tail=3,
                )
            finally:
                _unmount_below(rootfs)
        with _stage(f"base image {recipe.name}", timings):
            trim(rootfs)
            imported = f"{recipe.name}-rootfs"
            docker_stream(
                ["import", "--change", f"ENV PATH={PATH_ENV}", "-", imported],
                f"image {imported}",
                ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
            )
    dockerfile = f'FROM {imported}\n{config}LABEL {RECIPE_LABEL}="{recipe.digest()}"\n'
    docker(["build", "--quiet", "-t", recipe.name, "-"], f"image {recipe.name}", input_bytes=dockerfile.encode())
    docker(["rmi", imported], f"image {imported}")
    return recipe.name


# ---------------------------------------------------------------------------- stage 2: images


def _kubeadm_image_list(kubeadm: Path, kubernetes_version: str) -> dict[str, str]:
    out = command.run(
        [str(kubeadm), "config", "images", "list", "--kubernetes-version", kubernetes_version],
        "kubeadm config images list",
        error=ImageBuildFailed,
        timeout=120,
        tail=3,
    ).stdout
    return kubeadm_images(out.splitlines())


@dataclass(frozen=True)
class ControlPlaneImage:
    """One image kubeadm names, planned (its recipe) before it is built."""

    recipe: ImageRecipe
    component: str  # binaries component, or "pause"
    version: str
    source: Path  # the binary (pause: its C source)
    sha256: str
    entrypoint: str

    @property
    def reference(self) -> str:
        return self.recipe.name


def plan_control_plane_images(
    kubernetes_version: str, base: str, work: Path, *, build: bool
) -> list[ControlPlaneImage]:
    """The images ``kubeadm config images list`` names, with their recipes.

    ``build=False`` builds no binary (EnvironmentMissing names a missing one).
    """
    kubeadm = binaries.ensure("kubeadm", kubernetes_version, build=build)
    wanted = _kubeadm_image_list(kubeadm, kubernetes_version)
    planned: list[ControlPlaneImage] = []
    for name, component in [*_BINARY_IMAGES.items(), ("kube-proxy", "kube-proxy")]:
        reference = wanted[name]
        version = (
            kubernetes_version
            if component.startswith("kube-")
            else binary_version_for_image(name, image_tag(reference))
        )
        path = binaries.ensure(component, version, build=build)
        sha256 = _binary_sha256(component, version, path)
        entrypoint = "/coredns" if name == "coredns" else f"/usr/local/bin/{component}"
        inputs: dict[str, Any] = {"revision": RECIPE_REVISION, "component": component, "sha256": sha256}
        if component == "kube-proxy":
            inputs |= {"base": base, "iptables_wrapper": hashlib.sha256(IPTABLES_WRAPPER.encode()).hexdigest()}
        else:
            inputs["entrypoint"] = entrypoint
        planned.append(
            ControlPlaneImage(ImageRecipe((reference,), inputs), component, version, path, sha256, entrypoint)
        )
    module = binaries.download_module(binaries.KUBERNETES_MODULE, kubernetes_version, work)
    source = module.dir / "build/pause/linux/pause.c"
    source_sha256 = file_sha256(source)
    pause_inputs = {"revision": RECIPE_REVISION, "source_sha256": source_sha256, "compiler": "gcc -Os -static"}
    planned.append(
        ControlPlaneImage(
            ImageRecipe((wanted["pause"],), pause_inputs),
            "pause",
            image_tag(wanted["pause"]),
            source,
            source_sha256,
            "/pause",
        )
    )
    return planned


def _compile_pause(source: Path, kubernetes_version: str, work: Path) -> Path:
    """pause compiled as the Kubernetes module's build/pause/Makefile does."""
    if shutil.which("gcc") is None:
        raise EnvironmentMissing("gcc: not found on PATH; the pause image is compiled with it (apt-get install gcc)")
    output = work / "pause"
    command.run(
        ["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=kserve-compat-{kubernetes_version}", "-o",
         str(output), str(source)],
        "pause.c",
        error=ImageBuildFailed,
        timeout=300,
        tail=3,
    )  # fmt: skip
    command.run(["strip", str(output)], "strip pause", error=ImageBuildFailed, timeout=60, tail=3)
    return output


# kube-proxy runs iptables in the node's network namespace, and must use the backend (legacy or
# nft) the node uses, which kind's entrypoint picks at boot by counting the rules each holds.
# Upstream's kube-proxy image does that with iptables-wrappers; this does the same on first
# use: decide as kind's select_iptables does, point the alternatives at that backend, re-run.
IPTABLES_WRAPPER = """#!/bin/sh
# kserve-compat: pick the node's iptables backend as kind's entrypoint does, then re-run.
set -eu
legacy=$( (iptables-legacy-save || true; ip6tables-legacy-save || true) 2>/dev/null | grep -c '^-' || true)
nft=$( (timeout 5 sh -c "iptables-nft-save; ip6tables-nft-save" || true) 2>/dev/null | grep -c '^-' || true)
if [ "${legacy:-0}" -ge "${nft:-0}" ]; then mode=legacy; else mode=nft; fi
update-alternatives --set iptables "/usr/sbin/iptables-${mode}" >/dev/null
update-alternatives --set ip6tables "/usr/sbin/ip6tables-${mode}" >/dev/null
exec "$0" "$@"
"""
# Registers the wrapper as the iptables and ip6tables alternative (commands and -save/-restore):
# only symlinks change, so the layer is a few bytes (no chmod of copied binaries).
INSTALL_IPTABLES_WRAPPER = " && ".join(
    f"update-alternatives --install /usr/sbin/{t} {t} /usr/sbin/iptables-wrapper 100"
    f" --slave /usr/sbin/{t}-restore {t}-restore /usr/sbin/iptables-wrapper"
    f" --slave /usr/sbin/{t}-save {t}-save /usr/sbin/iptables-wrapper"
    f" && update-alternatives --set {t} /usr/sbin/iptables-wrapper"
    for t in ("iptables", "ip6tables")
)


def _build_kube_proxy_image(image: ControlPlaneImage, base: str) -> None:
    """kube-proxy on the base rootfs: it runs the node's iptables / ip6tables and conntrack."""
    dockerfile = (
        f"FROM {base}\n"
        "COPY iptables-wrapper /usr/sbin/iptables-wrapper\n"
        f"RUN {INSTALL_IPTABLES_WRAPPER} >/dev/null\n"
        "COPY kube-proxy /usr/local/bin/kube-proxy\n"
        'ENTRYPOINT ["/usr/local/bin/kube-proxy"]\n'
        f'LABEL {RECIPE_LABEL}="{image.recipe.digest()}"\n'
    )
    context = tar_files(
        {
            "Dockerfile": (dockerfile.encode(), 0o644),
            "iptables-wrapper": (IPTABLES_WRAPPER.encode(), 0o755),
            "kube-proxy": (image.source, 0o755),
        }
    )
    log.info("building image %s", image.reference)
    previous = docker_cli.image_id(image.reference)
    docker(["build", "--quiet", "-t", image.reference, "-"], f"image {image.reference}", input_bytes=context)
    drop_replaced(image.reference, previous)


def build_control_plane_images(
    planned: Sequence[ControlPlaneImage], kubernetes_version: str, base: str, work: Path
) -> None:
    """Build every planned image that is not current."""
    for image in planned:
        if is_current(image.recipe):
            log.info("image %s is current (recipe %s)", image.reference, image.recipe.digest()[:12])
        elif image.component == "kube-proxy":
            _build_kube_proxy_image(image, base)
        elif image.component == "pause":
            pause = _compile_pause(image.source, kubernetes_version, work)
            build_image(image.recipe, ImageContent(files={"/pause": pause}, entrypoint=["/pause"]))
        else:
            content = ImageContent(
                files={image.entrypoint: image.source}, entrypoint=[image.entrypoint], env={"PATH": PATH_ENV}
            )
            build_image(image.recipe, content)


# ---------------------------------------------------------------------------- stage 3: node


def kind_base_files(kind_dir: Path, pause_reference: str) -> dict[str, tuple[bytes, int]]:
    """kind's images/base/files as they land in the node (modes as kind's Dockerfile sets
    them), with our containerd config and the files we add."""
    root = kind_dir / "images/base/files"
    files: dict[str, tuple[bytes, int]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        inner = "/" + path.relative_to(root).as_posix()
        if inner.startswith("/LICENSES/"):
            continue
        executable = inner.startswith(("/usr/local/bin/", "/kind/bin/"))
        files[inner] = (path.read_bytes(), 0o755 if executable else 0o644)
    config = files["/etc/containerd/config.toml"][0].decode()
    files["/etc/containerd/config.toml"] = (containerd_config(config, pause_reference).encode(), 0o644)
    files[REGISTRY_HOSTS_PATH] = (registry_hosts_toml().encode(), 0o644)
    files[EGRESS_GUARD_PATH] = (EGRESS_GUARD.encode(), 0o755)
    files[EGRESS_GUARD_UNIT] = (EGRESS_GUARD_SERVICE.encode(), 0o644)
    files[CNI_CONFLIST_PATH] = (cni_conflist().encode(), 0o644)
    files["/kind/manifests/default-cni.yaml"] = (DEFAULT_CNI_MANIFEST.encode(), 0o644)
    files["/kind/manifests/default-storage.yaml"] = (DEFAULT_STORAGE_MANIFEST.encode(), 0o644)
    return files


# What kind's Dockerfile enables with systemctl (symlinks, so no systemctl run is needed).
_ENABLED_UNITS = {
    "/etc/systemd/system/multi-user.target.wants/kubelet.service": "/etc/systemd/system/kubelet.service",
    "/etc/systemd/system/multi-user.target.wants/containerd.service": "/etc/systemd/system/containerd.service",
    "/etc/systemd/system/multi-user.target.wants/undo-mount-hacks.service": (
        "/etc/systemd/system/undo-mount-hacks.service"
    ),
    "/etc/systemd/system/multi-user.target.wants/kserve-compat-egress-guard.service": EGRESS_GUARD_UNIT,
}


def _node_binaries(kubernetes_version: str, *, build: bool = True) -> dict[str, tuple[str, Path, str]]:
    """component -> (path in the node, binary, version): where kind's node images keep them."""
    placed: dict[str, tuple[str, Path, str]] = {}
    for component in ("kubelet", "kubeadm", "kubectl"):
        path = binaries.ensure(component, kubernetes_version, build=build)
        placed[component] = (f"/usr/bin/{component}", path, kubernetes_version)
    for component in (*binaries.CONTAINERD_COMPONENTS, "crictl"):
        version = binaries.DEFAULT_VERSIONS[component]
        placed[component] = (f"/usr/local/bin/{component}", binaries.ensure(component, version, build=build), version)
    return placed


def _wait_for_containerd(container: str) -> None:
    def answers() -> bool:
        result = docker_cli.docker(
            ["exec", container, "ctr", "version"],
            "containerd's answer",
            error=ImageBuildFailed,
            timeout=30,
            check=False,
        )
        return result.returncode == 0

    retrying = Retrying(
        stop=stop_after_delay(60),
        wait=wait_fixed(0.5),
        retry=retry_if_result(lambda ok: not ok),
        before_sleep=before_sleep_log(log, logging.DEBUG),
    )
    log.info("node image: waiting for containerd in %s to answer (up to 60s)", container)
    try:
        retrying(answers)
    except RetryError:
        raise ImageBuildFailed(f"node image: containerd in build container {container} did not answer in 60s") from None


def _assemble_node(inputs: Inputs, kind_dir: Path, timings: dict[str, float]) -> None:
    recipe = inputs.node_recipe()
    reference = recipe.name
    pause_reference = next(ref for ref in inputs.images if "/pause:" in ref)
    files: dict[str, tuple[Path | bytes, int]] = dict(kind_base_files(kind_dir, pause_reference))
    placed = _node_binaries(inputs.kubernetes_version)
    for inner, path, _ in placed.values():
        files[inner] = (path, 0o755)
    files["/kind/version"] = (inputs.kubernetes_version.encode(), 0o644)
    container = f"kserve-compat-node-build-{uuid.uuid4().hex[:12]}"
    docker(
        ["run", "-d", "--name", container, "--entrypoint", "sleep", "--security-opt", "seccomp=unconfined",
         inputs.base_image, "infinity"],
        f"build container of {reference}",
    )  # fmt: skip
    try:
        with _stage("node files (kind's base files, containerd, crictl, kubelet, kubeadm, kubectl)", timings):
            docker(
                ["cp", "-", f"{container}:/"], f"files of {reference}", input_bytes=tar_files(files, _ENABLED_UNITS)
            )
            spec = json.loads(docker(["exec", container, "ctr", "oci", "spec"], "ctr oci spec"))
            docker(
                ["exec", "-i", container, "cp", "/dev/stdin", "/etc/containerd/cri-base.json"],
                "cri-base.json",
                input_bytes=(json.dumps(cri_base_spec(spec), indent=2) + "\n").encode(),
            )
        with _stage(f"import {len(inputs.images)} control-plane images into the node's containerd", timings):
            docker(
                ["exec", "-d", container, "sh", "-c", "containerd >/var/log/containerd-build.log 2>&1"], "containerd"
            )
            _wait_for_containerd(container)
            # kind's own import flags (pkg/build/nodeimage/imageimporter.go): pinned, not unpacked.
            docker_stream(
                ["exec", "-i", container, "ctr", "--namespace=k8s.io", "images", "import",
                 "--label=io.cri-containerd.pinned=pinned", "--all-platforms", "--no-unpack", "--digests", "-"],
                f"import images into {reference}",
                ["docker", "save", *sorted(inputs.images)],
            )  # fmt: skip
            listed = docker(["exec", container, "ctr", "--namespace=k8s.io", "images", "list", "-q"], "ctr images list")
            missing = sorted(set(inputs.images) - set(listed.split()))
            if missing:
                raise ImageBuildFailed(f"node image: containerd did not list {', '.join(missing)} after the import")
            packages = docker(
                ["exec", container, "dpkg-query", "-W", "-f", "${Package}=${Version}\\n"], "dpkg-query"
            ).split()
            docker(["exec", container, "pkill", "-x", "containerd"], "stop containerd")
            # Bounded (30 s): a containerd that does not stop fails the build instead of hanging it.
            docker(["exec", container, "sh", "-c", "for i in $(seq 150); do pgrep -x containerd >/dev/null || break; "
                    "sleep 0.2; done; ! pgrep -x containerd >/dev/null && "
                    "rm -rf /run/containerd /var/log/containerd-build.log /tmp/*"], "containerd stopped")  # fmt: skip
        record = {
            "kubernetes": inputs.kubernetes_version,
            "kind": inputs.kind_version,
            "binaries": {component: version for component, (_, _, version) in sorted(placed.items())},
            "images": sorted(inputs.images),
            "image_binaries": {k: v[0] for k, v in sorted(inputs.binaries.items())},
            "base_image": inputs.base_image,
            "debian_packages": dict(p.split("=", 1) for p in packages),
            "recipe": recipe.digest(),
            "cni": f"ptp + host-local {NODE_POD_RANGE}, portmap, loopback (Debian containernetworking-plugins)",
            "registries": f"every registry -> {REGISTRY_BLACKHOLE} ({REGISTRY_HOSTS_PATH})",
        }
        docker(
            ["exec", "-i", container, "cp", "/dev/stdin", BUILD_INFO_PATH],
            "build record",
            input_bytes=(json.dumps(record, indent=2, sort_keys=True) + "\n").encode(),
        )
        with _stage(f"commit {reference}", timings):
            previous = docker_cli.image_id(reference)
            docker(
                ["commit",
                 "--change", 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]',
                 "--change", f'LABEL {RECIPE_LABEL}="{recipe.digest()}"',
                 "--change", f"LABEL io.kserve-compat.kubernetes-version={inputs.kubernetes_version}",
                 container, reference],
                f"image {reference}",
            )  # fmt: skip
            drop_replaced(reference, previous)
    finally:
        docker_cli.remove_container(container)


def _node_inputs(
    kubernetes_version: str, base: str, work: Path, *, build: bool
) -> tuple[Inputs, Path, list[ControlPlaneImage]]:
    """The node image's inputs (``build=False``: from what exists, building no binary)."""
    kind_version = binaries.DEFAULT_VERSIONS["kind"]
    kind_dir = binaries.download_module(binaries.KIND_MODULE, kind_version, work).dir
    planned = plan_control_plane_images(kubernetes_version, base, work, build=build)
    pause_reference = next(image.reference for image in planned if image.component == "pause")
    files = {
        inner: hashlib.sha256(data).hexdigest()
        for inner, (data, _) in kind_base_files(kind_dir, pause_reference).items()
    }
    used = {image.component: (image.version, image.sha256) for image in planned}
    for component, (_, path, version) in _node_binaries(kubernetes_version, build=build).items():
        used[component] = (version, _binary_sha256(component, version, path))
    images = {image.reference: image.recipe.digest() for image in planned}
    return Inputs(kubernetes_version, kind_version, files, used, images, base), kind_dir, planned


def build_node_image(kubernetes_version: str) -> NodeImage:
    """The node image of ``kubernetes_version``: reused when current, else built (logs each stage)."""
    _check_version(kubernetes_version)
    _require_engine()
    timings: dict[str, float] = {}
    started = time.monotonic()
    reference = node_reference(kubernetes_version)
    with _build_lock():
        base = ensure_base_image(timings)
        work = cache_root() / "images"
        with tempfile.TemporaryDirectory(prefix="node-build-", dir=work) as tmp:
            with _stage("binaries and inputs", timings):
                inputs, kind_dir, planned = _node_inputs(kubernetes_version, base, Path(tmp), build=True)
            recipe = inputs.node_recipe()
            if is_current(recipe):
                log.info("node image %s is current (recipe %s)", reference, recipe.digest()[:12])
            else:
                with _stage("control-plane images", timings):
                    build_control_plane_images(planned, kubernetes_version, base, Path(tmp))
                _assemble_node(inputs, kind_dir, timings)
    log.info(
        "node image %s ready in %.1fs (%s)",
        reference,
        time.monotonic() - started,
        ", ".join(f"{name}: {seconds}s" for name, seconds in timings.items()),
    )
    return NodeImage(reference, kubernetes_version)


def node_image_status(kubernetes_version: str) -> tuple[str, str]:
    """("built" | "missing" | "unavailable", one-line detail), without building anything."""
    try:
        _check_version(kubernetes_version)
    except UsageError as exc:
        return "unavailable", str(exc)
    reference = node_reference(kubernetes_version)
    engine = binaries.docker_engine_unreachable_reason()
    if engine:
        return "missing", f"{reference}: {engine}"
    recorded = recorded_recipe(reference)
    base = base_recipe().name
    try:
        with tempfile.TemporaryDirectory(prefix="kserve-compat-node-status-") as tmp:
            inputs, _, _ = _node_inputs(kubernetes_version, base, Path(tmp), build=False)
    except binaries.BuildUnavailable as exc:
        return "unavailable", f"{reference}: {exc}"
    except EnvironmentMissing as exc:
        return "missing", f"{reference}: {exc}"
    digest = inputs.node_recipe().digest()
    if recorded == digest:
        return "built", f"{reference} (recipe {digest[:12]})"
    if recorded is None:
        return "missing", f"{reference}: not built"
    return "missing", f"{reference}: built from another recipe ({recorded[:12]}, now {digest[:12]}); rebuild"
