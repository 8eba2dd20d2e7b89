"""The real binaries of the local tier: find them, or build them from source with the installed Go.

The local tier runs etcd, the Kubernetes control plane, kwok and every kube-rbac-proxy
version under test as plain processes. Each is compiled from its upstream Go module
(fetched through the Go module proxy; the one exception, a kube-rbac-proxy version the
proxy refuses, is copied out of its published image, see below) into a cache outside the
repository, ``$KSERVE_COMPAT_CACHE/bin/<component>/<version>/<binary>``,
with a ``build-info.json`` beside it that records how it was built. A binary whose recorded
recipe matches is reused; anything else is rebuilt.

Lookup order (like envtest's ``TEST_ASSET_*``): a per-binary environment variable
(``KSERVE_COMPAT_ETCD``, ``KSERVE_COMPAT_KUBE_RBAC_PROXY_V0_18_0``, ...), then the
directory ``KSERVE_COMPAT_BIN_DIR`` (``etcd``, ``kube-apiserver``, ...,
``kube-rbac-proxy-v0.18.0``), then the cache.

Three build recipes, because upstream modules differ:
- etcd and Kubernetes: their go.mod files hold local ``replace`` lines, so ``go install``
  refuses them; a throwaway wrapper module requires them instead (for Kubernetes, with one
  ``replace`` per staging module, generated from the upstream go.mod).
- kube-rbac-proxy: the module's own source is copied out of the module cache and built in
  place, so its own go.mod (``replace`` lines included) and go.sum decide every dependency.
- kwok: a wrapper module too (one code path for "build a command of a released module").

A kube-rbac-proxy version the Go module proxy refuses (v0.12.0, v0.13.0, v0.13.1 answer 403
here) can be taken out of its published image instead (``docker create`` + ``docker cp`` +
``docker rm``), when the user asks for it (``kserve-compat binaries --from-image`` or
``KSERVE_COMPAT_PROXY_FROM_IMAGE=1``) and a Docker engine and the registry are reachable;
its ``build-info.json`` records the image, its digest and the path in it. Never on its own:
a pull reaches a registry on the internet, which a test run must not do behind the user's
back. Otherwise the version is ``unavailable`` with the answers and how to ask.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from e2e import docker_cli
from e2e.atomic_write import write_atomic
from e2e.cache import cache_root
from e2e.command import last_lines, run
from e2e.errors import EnvironmentMissing, HarnessError, UsageError
from e2e.text import one_line

log = logging.getLogger(__name__)


def _default_kubernetes_build() -> str:
    """The patch built of the matrix's newest default Kubernetes minor (the version the local
    tier and the kind tools run unless a cell names another minor)."""
    from e2e.matrix import packaged_matrix

    return packaged_matrix().kubernetes_selected(())[-1].build


KUBERNETES_VERSION = _default_kubernetes_build()
KUBERNETES_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
PROXY = "kube-rbac-proxy"
KSERVE_MANAGER = "kserve-manager"
# KServe's local model cache controller (cmd/localmodel, image kserve/kserve-localmodel-controller),
# which release manifests run from v0.14 on; same module and version as the manager, so
# `ensure_together` and `ensure_all` compile both in one go build.
KSERVE_LOCALMODEL = "kserve-localmodel"
KSERVE_LOCALMODEL_SINCE = (0, 14)
# KServe's LLMInferenceService controller (cmd/llmisvc, image kserve/llmisvc-controller), which
# the v0.16 manifest runs as the Deployment llmisvc-controller-manager; same module and
# version as the manager, so `ensure_together` compiles both in one go build.
KSERVE_LLMISVC = "kserve-llmisvc"
KSERVE_LLMISVC_SINCE = (0, 16)
# cert-manager's commands the local tier plays (its webhook is not needed there).
LOCAL_CERT_MANAGER_COMPONENTS = ("cert-manager-controller", "cert-manager-cainjector")
# What the local tier runs: `kserve-compat binaries` builds these by default.
COMPONENTS: tuple[str, ...] = ("etcd", *KUBERNETES_COMPONENTS, "kwok", PROXY, *LOCAL_CERT_MANAGER_COMPONENTS)
# What the kind tier's images are made of (`kserve-compat images` builds them on demand):
# the node's Kubernetes commands, kind itself, the node's container runtime and crictl,
# CoreDNS, cert-manager, helm (renders cert-manager's chart) and the KServe controller.
NODE_KUBERNETES_COMPONENTS = ("kubelet", "kubeadm", "kube-proxy")
CONTAINERD_COMPONENTS = ("containerd", "ctr", "containerd-shim-runc-v2")
CERT_MANAGER_COMPONENTS = ("cert-manager-controller", "cert-manager-webhook", "cert-manager-cainjector")
IMAGE_COMPONENTS: tuple[str, ...] = (
    *NODE_KUBERNETES_COMPONENTS,
    "kind",
    "crictl",
    *CONTAINERD_COMPONENTS,
    "coredns",
    *CERT_MANAGER_COMPONENTS,
    "helm",
    KSERVE_MANAGER,
    KSERVE_LOCALMODEL,
)
# The pod network of a kind cluster with workers on node images built here: kind's own
# (kindnetd) lives in a module the Go proxy does not serve; kube-router is a multi-node CNI
# it does serve (see e2e/imageset/pod_network.py).
KUBE_ROUTER = "kube-router"
# Built on first use (also by `kserve-compat binaries --component`): the llmisvc controller,
# by the local tier for a release whose manifest runs it; kube-router, for a kind cluster
# with workers.
ON_DEMAND_COMPONENTS: tuple[str, ...] = (KSERVE_LLMISVC, KUBE_ROUTER)
ALL_COMPONENTS: tuple[str, ...] = tuple(dict.fromkeys((*COMPONENTS, *IMAGE_COMPONENTS, *ON_DEMAND_COMPONENTS)))
# Components kept once per version side by side (the others have one version in use).
VERSIONED_COMPONENTS = (PROXY, KSERVE_MANAGER, KSERVE_LOCALMODEL, KSERVE_LLMISVC)
# The proxy versions the matrix exercises; v0.13.1 (what KServe v0.10-v0.13 ship) is listed
# even though the module proxy refuses it: it is taken out of its published image where a
# Docker engine and the registry answer, and otherwise asking for it gives a clear answer.
PROXY_VERSIONS: tuple[str, ...] = ("v0.13.1", "v0.15.0", "v0.16.0", "v0.18.0", "v0.18.2", "v0.22.1")
DEFAULT_VERSIONS: dict[str, str] = {
    "etcd": "v3.6.5",
    **dict.fromkeys(KUBERNETES_COMPONENTS, KUBERNETES_VERSION),
    "kwok": "v0.7.0",
    PROXY: "v0.18.0",  # what KServe >= v0.14 ships
    **dict.fromkeys(NODE_KUBERNETES_COMPONENTS, KUBERNETES_VERSION),
    "kind": "v0.32.0",
    "crictl": "v1.34.0",
    **dict.fromkeys(CONTAINERD_COMPONENTS, "v2.2.1"),
    "coredns": "v1.12.1",  # what kubeadm v1.34 deploys
    # The newest cert-manager whose commands are in its main module (later versions keep
    # them in modules the Go proxy refuses here).
    **dict.fromkeys(CERT_MANAGER_COMPONENTS, "v1.11.5"),
    "helm": "v3.19.0",
    KSERVE_MANAGER: "v0.20.0",
    KSERVE_LOCALMODEL: "v0.20.0",
    KSERVE_LLMISVC: "v0.20.0",
    KUBE_ROUTER: "v2.1.0",
}

ETCD_MODULE = "go.etcd.io/etcd/server/v3"
KUBERNETES_MODULE = "k8s.io/kubernetes"
KWOK_MODULE = "sigs.k8s.io/kwok"
PROXY_MODULE = "github.com/brancz/kube-rbac-proxy"
KIND_MODULE = "sigs.k8s.io/kind"
CRI_TOOLS_MODULE = "sigs.k8s.io/cri-tools"
CONTAINERD_MODULE = "github.com/containerd/containerd/v2"
COREDNS_MODULE = "github.com/coredns/coredns"
CERT_MANAGER_MODULE = "github.com/cert-manager/cert-manager"
HELM_MODULE = "helm.sh/helm/v3"
KSERVE_MODULE = "github.com/kserve/kserve"
KUBE_ROUTER_MODULE = "github.com/cloudnativelabs/kube-router/v2"

# Where kube-rbac-proxy's published images keep the binary (its Dockerfile:
# COPY _output/$BINARY /usr/local/bin/kube-rbac-proxy), and the repository that keeps
# every released tag (gcr.io/kubebuilder is gone; registry.k8s.io's copy is frozen).
PROXY_IMAGE_REPOSITORY = "quay.io/brancz/kube-rbac-proxy"
PROXY_PATH_IN_IMAGE = "/usr/local/bin/kube-rbac-proxy"
DOCKER_TIMEOUT_SECONDS = 10 * 60  # `docker create` pulls the image first

BUILD_INFO = "build-info.json"
# Bumped when the recipe changes in a way that makes old builds untrustworthy.
RECIPE_REVISION = 1
BUILD_TIMEOUT_SECONDS = 60 * 60
HEARTBEAT_SECONDS = 30.0
_VERSION = re.compile(r"^v\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")
# `go build -v` prints bare import paths; anything else on stderr is worth showing.
_PACKAGE_LINE = re.compile(r"^[\w.~/-]+$")


class BuildUnavailable(HarnessError):
    """The Go module proxy does not serve the module version a binary is built from."""


class ExtractFailed(HarnessError):
    """A binary could not be taken out of its published image (no engine, no registry...)."""


class BuildFailed(HarnessError):
    """``go`` ran but could not build the binary; the message holds its last error lines."""


# ---------------------------------------------------------------------------- naming


def _check_component(component: str) -> None:
    if component not in ALL_COMPONENTS:
        raise UsageError(f"component {component!r}: expected one of {', '.join(ALL_COMPONENTS)}")


def _resolve_version(component: str, version: str | None) -> str:
    _check_component(component)
    resolved = version or DEFAULT_VERSIONS[component]
    if not _VERSION.match(resolved):
        raise UsageError(f"{component} version {resolved!r}: expected vMAJOR.MINOR.PATCH")
    return resolved


def binary_path(component: str, version: str) -> Path:
    """Where the cache keeps ``component`` at ``version`` (it may not exist yet)."""
    _check_component(component)
    return cache_root() / "bin" / component / version / component


def env_var(component: str, version: str) -> str:
    """The per-binary override variable, e.g. ``KSERVE_COMPAT_KUBE_RBAC_PROXY_V0_18_0``."""
    name = f"{component}-{version}" if component in VERSIONED_COMPONENTS else component
    return "KSERVE_COMPAT_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def bin_dir_name(component: str, version: str) -> str:
    """The file name inside ``KSERVE_COMPAT_BIN_DIR``: proxies and managers carry their version."""
    return f"{component}-{version}" if component in VERSIONED_COMPONENTS else component


def proxy_version_for_tag(tag: str) -> str:
    """The kube-rbac-proxy module version behind an image tag or full image reference.

    ``v0.18.0``, ``quay.io/brancz/kube-rbac-proxy:v0.18.0`` and ``...:v0.18.0@sha256:...``
    all give ``v0.18.0``; arch-suffixed tags (``v0.13.1-amd64``) give the plain version.
    """
    text = tag.split("@", 1)[0]
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text = last.rsplit(":", 1)[1]
    match = re.match(r"^v?(\d+\.\d+\.\d+)(?:-(?:amd64|arm64|arm|ppc64le|s390x))?$", text)
    if not match:
        raise UsageError(f"kube-rbac-proxy tag {tag!r}: expected vMAJOR.MINOR.PATCH")
    return "v" + match.group(1)


def proxy_version_or_tag(tag: str) -> str | None:
    """The kube-rbac-proxy version of a tag (``proxy_version_for_tag``); a version-shaped
    tag of a patched build (``v0.18.0-fix1``) is its own version, found only through
    ``KSERVE_COMPAT_KUBE_RBAC_PROXY_V0_18_0_FIX1``, the bin dir or the cache; None for any
    other tag (``latest``)."""
    try:
        return proxy_version_for_tag(tag)
    except UsageError:
        text = tag.split("@", 1)[0].rsplit("/", 1)[-1]
        text = text.rsplit(":", 1)[1] if ":" in text else text
        return text if _VERSION.match(text) else None


def is_release_version(version: str) -> bool:
    """A plain ``vX.Y.Z``: a version the module proxy or the published image may hold."""
    return re.fullmatch(r"v\d+\.\d+\.\d+", version) is not None


def _staging_version(kubernetes_version: str) -> str:
    """Kubernetes v1.34.4 publishes its staging modules (k8s.io/api, ...) as v0.34.4."""
    match = re.match(r"^v1\.(\d+\.\d+.*)$", kubernetes_version)
    if not match:
        raise UsageError(f"Kubernetes version {kubernetes_version!r}: expected v1.MINOR.PATCH")
    return "v0." + match.group(1)


# ---------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """How one binary is built: what the cache's build-info must match to be reused."""

    component: str
    version: str
    module: str
    package: str  # import path of the main package
    style: str  # "wrapper" (require the module) or "source" (build inside the module's copy)
    ldflags: tuple[str, ...] = ()

    def key(self) -> dict[str, Any]:
        return {
            "revision": RECIPE_REVISION,
            "component": self.component,
            "version": self.version,
            "module": self.module,
            "package": self.package,
            "style": self.style,
            "ldflags": list(self.ldflags),
        }


def recipe(component: str, version: str | None = None) -> Recipe:
    """The build recipe of ``component`` at ``version`` (default: ``DEFAULT_VERSIONS``)."""
    version = _resolve_version(component, version)
    if component == "etcd":
        # etcd's version is a constant in its api module; nothing to stamp.
        return Recipe(component, version, ETCD_MODULE, ETCD_MODULE, "wrapper")
    if component in (*KUBERNETES_COMPONENTS, *NODE_KUBERNETES_COMPONENTS):
        _staging_version(version)  # validates the version shape early
        return Recipe(
            component,
            version,
            KUBERNETES_MODULE,
            f"{KUBERNETES_MODULE}/cmd/{component}",
            "wrapper",
            _kubernetes_ldflags(version),
        )
    if component == "kwok":
        # What kwok's hack/releases.sh stamps.
        return Recipe(
            component,
            version,
            KWOK_MODULE,
            f"{KWOK_MODULE}/cmd/kwok",
            "wrapper",
            (f"-X sigs.k8s.io/kwok/pkg/consts.Version={version}",),
        )
    if component in (*IMAGE_COMPONENTS, *ON_DEMAND_COMPONENTS):
        return _image_component_recipe(component, version)
    # kube-rbac-proxy: main package at the module root up to v0.13.x.
    major, minor = (int(part) for part in version[1:].split(".")[:2])
    package = PROXY_MODULE if (major, minor) < (0, 14) else f"{PROXY_MODULE}/cmd/kube-rbac-proxy"
    ldflags: tuple[str, ...] = ()
    if (major, minor) >= (0, 14):
        # What the proxy's Makefile stamps (component-base arrived with v0.14).
        ldflags = (
            f"-X k8s.io/component-base/version.gitVersion={version}",
            f"-X k8s.io/component-base/version/verflag.programName={PROXY}",
        )
    return Recipe(component, version, PROXY_MODULE, package, "source", ldflags)


def _image_component_recipe(component: str, version: str) -> Recipe:
    """Recipes of what the kind tier's images hold; each stamps what its release build does."""
    if component == "kind":
        return Recipe(component, version, KIND_MODULE, KIND_MODULE, "wrapper")
    if component == "crictl":
        stamp = (f"-X {CRI_TOOLS_MODULE}/pkg/version.Version={version.removeprefix('v')}",)
        return Recipe(component, version, CRI_TOOLS_MODULE, f"{CRI_TOOLS_MODULE}/cmd/crictl", "source", stamp)
    if component in CONTAINERD_COMPONENTS:
        stamp = (f"-X {CONTAINERD_MODULE}/version.Version={version}",)
        return Recipe(component, version, CONTAINERD_MODULE, f"{CONTAINERD_MODULE}/cmd/{component}", "source", stamp)
    if component == "coredns":
        return Recipe(component, version, COREDNS_MODULE, COREDNS_MODULE, "source")
    if component in CERT_MANAGER_COMPONENTS:
        stamp = (f"-X {CERT_MANAGER_MODULE}/pkg/util.AppVersion={version}",)
        command = component.removeprefix("cert-manager-")
        return Recipe(component, version, CERT_MANAGER_MODULE, f"{CERT_MANAGER_MODULE}/cmd/{command}", "source", stamp)
    if component == "helm":
        stamp = (f"-X {HELM_MODULE}/internal/version.version={version}",)
        return Recipe(component, version, HELM_MODULE, f"{HELM_MODULE}/cmd/helm", "source", stamp)
    if component == KUBE_ROUTER:
        stamp = (f"-X {KUBE_ROUTER_MODULE}/pkg/version.Version={version}",)  # what its Makefile stamps
        return Recipe(component, version, KUBE_ROUTER_MODULE, f"{KUBE_ROUTER_MODULE}/cmd/kube-router", "source", stamp)
    if component == KSERVE_LOCALMODEL:
        # localmodel.Dockerfile: `go build -o localmodel-manager ./cmd/localmodel`, no stamps.
        if _minor_version(version) < KSERVE_LOCALMODEL_SINCE:
            raise UsageError(f"{component} {version}: KServe has cmd/localmodel from v0.14.0 on")
        return Recipe(component, version, KSERVE_MODULE, f"{KSERVE_MODULE}/cmd/localmodel", "source")
    if component == KSERVE_LLMISVC:
        # llmisvc-controller.Dockerfile: `go build -a -o manager ./cmd/llmisvc`, no stamps.
        if _minor_version(version) < KSERVE_LLMISVC_SINCE:
            raise UsageError(f"{component} {version}: KServe has cmd/llmisvc from v0.16.0 on")
        return Recipe(component, version, KSERVE_MODULE, f"{KSERVE_MODULE}/cmd/llmisvc", "source")
    # The KServe controller: the release's cmd/manager, built in its own module copy.
    return Recipe(component, version, KSERVE_MODULE, f"{KSERVE_MODULE}/cmd/manager", "source")


def _minor_version(version: str) -> tuple[int, int]:
    """``v0.14.0-rc1`` -> (0, 14)."""
    major, minor = version[1:].split(".")[:2]
    return int(major), int(minor)


def image_recipe(version: str) -> Recipe:
    """How a kube-rbac-proxy binary is taken out of its published image (no build)."""
    version = _resolve_version(PROXY, version)
    return Recipe(PROXY, version, PROXY_MODULE, PROXY_PATH_IN_IMAGE, "image")


def proxy_image_for(version: str) -> str:
    """The published image a kube-rbac-proxy ``version`` is extracted from."""
    return f"{PROXY_IMAGE_REPOSITORY}:{version}"


def _kubernetes_ldflags(version: str) -> tuple[str, ...]:
    """Version stamps so that ``/version`` and ``kubectl version`` tell the truth."""
    major, minor = version[1:].split(".")[:2]
    flags: list[str] = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return tuple(flags)


# ---------------------------------------------------------------------------- locating


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def read_build_info(component: str, version: str) -> dict[str, Any] | None:
    """The recorded build info of the cached binary, or None if absent or unreadable."""
    info_path = binary_path(component, version).parent / BUILD_INFO
    try:
        data = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _cached(component: str, version: str) -> Path | None:
    path = binary_path(component, version)
    info = read_build_info(component, version)
    if not _executable(path) or info is None:
        return None
    accepted = [recipe(component, version).key()]
    if component == PROXY:
        accepted.append(image_recipe(version).key())
    if info.get("recipe") not in accepted:
        return None
    if info.get("size") != path.stat().st_size:  # a truncated or replaced file
        return None
    return path


def locate(component: str, version: str | None = None) -> Path | None:
    """An existing binary: per-binary env var, then ``KSERVE_COMPAT_BIN_DIR``, then the cache.

    An override that points at nothing usable is a user error, not a silent fallback.
    """
    version = _resolve_version(component, version)
    variable = env_var(component, version)
    override = os.environ.get(variable)
    if override:
        path = Path(override).expanduser()
        if not _executable(path):
            raise UsageError(f"{variable}={override}: expected an executable file")
        return path
    bin_dir = os.environ.get("KSERVE_COMPAT_BIN_DIR")
    if bin_dir:
        candidate = Path(bin_dir).expanduser() / bin_dir_name(component, version)
        if _executable(candidate):
            return candidate
    return _cached(component, version)


# ---------------------------------------------------------------------------- running go


def _go_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"  # never let go fetch another toolchain
    env["CGO_ENABLED"] = "0"  # static binaries, as upstream releases are built
    env["GOFLAGS"] = " ".join(filter(None, [env.get("GOFLAGS", ""), "-mod=mod"]))
    env.pop("GOWORK", None)
    if extra:
        env.update(extra)
    return env


def go_environment() -> dict[str, str]:
    """The environment every go command of the harness runs in (local toolchain, no cgo)."""
    return _go_env()


def go_binary() -> str:
    go = shutil.which("go")
    if not go:
        raise EnvironmentMissing("go: not found on PATH; the local tier builds its binaries with Go")
    return go


@lru_cache(maxsize=1)
def go_version() -> str:
    result = run([go_binary(), "env", "GOVERSION"], "go's version", env=_go_env(), timeout=60, check=False)
    return result.stdout.strip() or "unknown"


def _go_error(text: str, prefix: str = "") -> str:
    """go's error text on one line, without ``go: `` and a leading ``prefix`` (go repeats
    ``module@version:``)."""
    line = one_line(text).removeprefix("go: ")
    return line[len(prefix) :].lstrip(": ") if prefix and line.startswith(prefix) else line


def _go_json(args: Sequence[str], cwd: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Run a ``go ... -json`` command that prints one object (with "Error" on failure)."""
    # A download of a large module (Kubernetes') through a slow proxy takes minutes.
    result = run(
        [go_binary(), *args], f"go {' '.join(args)}", cwd=cwd, env=env, timeout=BUILD_TIMEOUT_SECONDS, check=False
    )
    try:
        data = json.loads(result.stdout)
    except ValueError:
        data = {"Error": result.stderr.strip() or f"exit status {result.returncode}"}
    if not isinstance(data, dict):
        return {"Error": f"unexpected output of go {' '.join(args)}"}
    if result.returncode != 0 and "Error" not in data:
        data["Error"] = result.stderr.strip() or f"exit status {result.returncode}"
    return data


# How `go mod tidy` reports a module the proxy will not serve (seen here for Kubernetes
# v1.32.13: "k8s.io/endpointslice@v0.32.13: reading https://proxy.golang.org/k8s.io/
# endpointslice/@v/v0.32.13.zip: 403 Forbidden", on one line).
_PROXY_REFUSAL = re.compile(r"(\S+@v\S+): reading https?://\S+: (403 Forbidden|404 Not Found|410 Gone)")


def proxy_refusal(lines: Sequence[str]) -> str | None:
    """``module@version: answer`` of the first module the Go module proxy refused, if any."""
    for line in lines:
        match = _PROXY_REFUSAL.search(line)
        if match:
            return f"{match.group(1).rstrip(':')}: {match.group(2)}"
    return None


def _sumdb_missing(error: str) -> bool:
    """The checksum database has no entry (here: an allow-listing mirror answering 404).

    A checksum *mismatch* ("SECURITY ERROR") is never this.
    """
    return "sumdb" in error and ("404 Not Found" in error or "410 Gone" in error)


@dataclass
class ModuleDownload:
    module: str
    version: str
    dir: Path
    go_mod: Path
    commit: str
    checksum_db: str  # "verified" or why it was not


def download_module(module: str, version: str, workdir: Path) -> ModuleDownload:
    """``go mod download`` one module version; BuildUnavailable if the proxy refuses it.

    When the checksum database has no entry for a version the proxy does serve, retry once
    without it for exactly this module and record that in the build info.
    """
    env = _go_env()
    data = _go_json(["mod", "download", "-json", f"{module}@{version}"], workdir, env)
    checksum_db = "verified"
    error = str(data.get("Error", ""))
    if error and _sumdb_missing(error):
        log.warning(
            "%s@%s: the checksum database has no entry here; using the module proxy's copy without it (%s)",
            module,
            version,
            _go_error(error),
        )
        env = _go_env({"GONOSUMDB": module})
        data = _go_json(["mod", "download", "-json", f"{module}@{version}"], workdir, env)
        checksum_db = "not verified: sum.golang.org lookup answered 404 through the proxy"
        error = str(data.get("Error", ""))
    if error:
        raise BuildUnavailable(
            f"{module}@{version}: the Go module proxy does not serve it ({_go_error(error, f'{module}@{version}')})"
        )
    commit = ""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        commit = str(json.loads(Path(data["Info"]).read_text())["Origin"]["Hash"])
    return ModuleDownload(module, version, Path(data["Dir"]), Path(data["GoMod"]), commit, checksum_db)


_availability_lock = threading.Lock()
_availability: dict[tuple[str, str], str] = {}


def module_dir(module: str, version: str) -> Path:
    """The module's directory in the Go module cache (downloaded if needed; cheap once there)."""
    with tempfile.TemporaryDirectory(prefix="kserve-compat-module-") as tmp:
        return download_module(module, version, Path(tmp)).dir


def cached_module_dir(module: str, version: str) -> Path | None:
    """The module's directory when it is in the Go module cache already (no download)."""
    try:
        go = go_binary()
    except EnvironmentMissing:
        return None
    result = run([go, "env", "GOMODCACHE"], "go's module cache", timeout=60, check=False)
    directory = Path(result.stdout.strip()) / f"{module}@{version}"
    return directory if result.stdout.strip() and directory.is_dir() else None


def module_unavailable_reason(module: str, version: str) -> str | None:
    """Why the Go module proxy will not serve ``module@version`` (None if it will).

    Asks for the version's .info only (cheap); answers are remembered for the process.
    """
    with _availability_lock:
        if (module, version) in _availability:
            return _availability[(module, version)] or None
    with tempfile.TemporaryDirectory(prefix="kserve-compat-probe-") as tmp:
        data = _go_json(["list", "-m", "-json", f"{module}@{version}"], Path(tmp), _go_env())
    reason = _go_error(str(data.get("Error", "")), f"{module}@{version}")
    with _availability_lock:
        _availability[(module, version)] = reason
    return reason or None


ENV_FROM_IMAGE = "KSERVE_COMPAT_PROXY_FROM_IMAGE"


def from_image_allowed() -> bool:
    """Whether the user asked for refused proxy versions to be taken out of their images."""
    return os.environ.get(ENV_FROM_IMAGE, "") == "1"


def _from_image_hint(version: str) -> str:
    return (
        f"{proxy_image_for(version)}: not taken out of the image unless asked "
        f"(`kserve-compat binaries --from-image` or {ENV_FROM_IMAGE}=1; needs a Docker engine and the registry)"
    )


def buildable(component: str, version: str | None = None) -> tuple[bool, str]:
    """(True, "") when ``component`` at ``version`` exists or can be built here, else
    (False, one-line reason). Never raises for an unavailable module or a missing go."""
    rec = recipe(component, version)
    if locate(component, rec.version):
        return True, ""
    if not shutil.which("go"):
        return False, "go: not found on PATH"
    reason = module_unavailable_reason(rec.module, rec.version)
    if reason:
        refused = f"{rec.module}@{rec.version}: the Go module proxy does not serve it ({reason})"
        if component != PROXY:
            return False, refused
        if not from_image_allowed():
            return False, f"{refused}; {_from_image_hint(rec.version)}"
        engine = docker_engine_unreachable_reason()
        if engine:
            return False, f"{refused}; {proxy_image_for(rec.version)}: {engine}"
    return True, ""


# ---------------------------------------------------------------------------- from the image


def docker_engine_unreachable_reason() -> str | None:
    """Why no Docker engine answers here (None when one does). Cheap: no image is pulled."""
    try:
        result = docker_cli.docker(
            ["version", "--format", "{{.Server.Version}}"], "docker version", timeout=30, check=False
        )
    except HarnessError as exc:
        return str(exc)
    if result.returncode != 0 or not result.stdout.strip():
        return f"no Docker engine answers (docker version: {last_lines(result.stderr)})"
    return None


def _go_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def extract_proxy(version: str) -> Path:
    """Take kube-rbac-proxy ``version`` out of its published image into the cache.

    ``docker create`` (which pulls the image) + ``docker cp`` of ``PROXY_PATH_IN_IMAGE`` +
    ``docker rm``; ``build-info.json`` records the image, its digest and the path. Raises
    ExtractFailed with one line (docker missing, no engine, the registry unreachable...).
    """
    rec = image_recipe(version)
    image = proxy_image_for(rec.version)
    engine = docker_engine_unreachable_reason()
    if engine:
        raise ExtractFailed(engine)
    log.info("taking kube-rbac-proxy %s out of %s (docker create + docker cp)", rec.version, image)
    started = time.monotonic()
    created = docker_cli.docker(
        ["create", "--platform", f"linux/{_go_arch()}", image],
        "a container of the image",
        error=ExtractFailed,
        timeout=DOCKER_TIMEOUT_SECONDS,
    )
    container = created.stdout.strip().splitlines()[-1] if created.stdout.strip() else ""
    if not container:
        raise ExtractFailed(f"docker create {image}: no container id printed")
    try:
        with tempfile.TemporaryDirectory(prefix="kserve-compat-extract-") as tmp:
            target = Path(tmp) / PROXY
            docker_cli.docker(
                ["cp", f"{container}:{PROXY_PATH_IN_IMAGE}", str(target)],
                f"copying {PROXY_PATH_IN_IMAGE} out of its container",
                error=ExtractFailed,
                timeout=DOCKER_TIMEOUT_SECONDS,
            )
            if not target.is_file() or target.stat().st_size == 0:
                raise ExtractFailed(f"docker cp {image}:{PROXY_PATH_IN_IMAGE}: no file came out")
            digests = docker_cli.inspect_image(image, "{{json .RepoDigests}}") or ""
            installed = _install(
                target,
                rec,
                {
                    "source": "image",
                    "image": image,
                    "image_repo_digests": _json_list(digests),
                    "path_in_image": PROXY_PATH_IN_IMAGE,
                    "platform": f"linux/{_go_arch()}",
                    "extract_seconds": round(time.monotonic() - started, 1),
                    "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                },
            )
    finally:
        docker_cli.remove_container(container)
    log.info("took kube-rbac-proxy %s out of %s: %s", rec.version, image, installed)
    return installed


def _json_list(text: str) -> list[str]:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return [str(item) for item in value] if isinstance(value, list) else []


# ---------------------------------------------------------------------------- building


@dataclass
class _Progress:
    packages: int = 0
    last: str = ""


def _run_go(args: Sequence[str], cwd: Path, env: Mapping[str, str], what: str, log_file: Path) -> tuple[int, list[str]]:
    """Run go with live progress logging; returns (exit code, last interesting stderr lines).

    ``go build -v`` names each package as it compiles: the heartbeat logs how many and the
    last one, so a long build shows what it is doing.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=20)
    seen = _Progress()
    with log_file.open("w") as log_handle:
        log_handle.write(f"$ (cd {cwd} && go {' '.join(args)})\n")
        log_handle.flush()
        process = subprocess.Popen(
            [go_binary(), *args],
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                log_handle.write(line)
                line = line.rstrip()
                if _PACKAGE_LINE.match(line):
                    seen.packages += 1
                    seen.last = line
                elif line:
                    tail.append(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        started = time.monotonic()
        while True:
            try:
                code = process.wait(timeout=HEARTBEAT_SECONDS)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - started
                if elapsed > BUILD_TIMEOUT_SECONDS:
                    process.kill()
                    process.wait()
                    reader.join()
                    return -1, [*tail, f"timed out after {BUILD_TIMEOUT_SECONDS}s"]
                log.info(
                    "still building %s: %.0fs, %d packages compiled, last %s",
                    what,
                    elapsed,
                    seen.packages,
                    seen.last or "(resolving modules)",
                )
        reader.join()
    return code, list(tail)


def _needs_checklinkname(lines: Sequence[str]) -> bool:
    """Old dependencies ``//go:linkname`` into the runtime, which newer linkers refuse."""
    return any("invalid reference to" in line or "linkname" in line for line in lines)


def _write_wrapper(workdir: Path, recipes: Sequence[Recipe], env: Mapping[str, str]) -> ModuleDownload:
    """Create a throwaway module in ``workdir`` that requires the upstream one."""
    first = recipes[0]
    download = download_module(first.module, first.version, workdir)
    upstream = _go_json(["mod", "edit", "-json", str(download.go_mod)], workdir, env)
    go_directive = str(upstream.get("Go") or "1.22")
    lines = [f"module example.com/{first.component.replace('-', '')}wrap", "", f"go {go_directive}", ""]
    lines.append(f"require {first.module} {first.version}")
    if first.module == KUBERNETES_MODULE:
        # Kubernetes' go.mod points its staging modules at ./staging/...; those are
        # published as k8s.io/<name> v0.MINOR.PATCH. Generated from the upstream file.
        staging = _staging_version(first.version)
        for entry in upstream.get("Replace") or []:
            old, new = entry.get("Old", {}).get("Path", ""), entry.get("New", {}).get("Path", "")
            if new.startswith("./staging/"):
                lines.append(f"replace {old} => {old} {staging}")
    (workdir / "go.mod").write_text("\n".join(lines) + "\n")
    imports = "\n".join(f'import _ "{r.package}"' for r in recipes)
    (workdir / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\n{imports}\n")
    return download


def _copy_source(workdir: Path, rec: Recipe) -> tuple[Path, ModuleDownload]:
    """Copy the module out of the read-only module cache so go may write go.mod/go.sum."""
    download = download_module(rec.module, rec.version, workdir)
    source = workdir / "src"
    shutil.copytree(download.dir, source)
    for path in [source, *source.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR)
    return source, download


@contextlib.contextmanager
def _build_lock(component: str, version: str) -> Iterator[None]:
    """One build of a binary at a time across processes (flock on a file in the cache)."""
    # Kept apart from bin/ so that a refused version leaves no empty version directory.
    lock_path = cache_root() / "locks" / f"{component}-{version}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _install(built: Path, rec: Recipe, info: dict[str, Any]) -> Path:
    """Move a fresh binary into the cache atomically and record how it was built."""
    target = binary_path(rec.component, rec.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target under a name of its own (two builds never share it), then renamed.
    descriptor, staged = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(descriptor)
    try:
        shutil.copy2(built, staged)
        os.chmod(staged, 0o755)
        os.replace(staged, target)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    record = {
        "recipe": rec.key(),
        "module": rec.module,
        "version": rec.version,
        "package": rec.package,
        **info,
        "size": target.stat().st_size,
        "sha256": _file_sha256(target),
    }
    info_path = target.parent / BUILD_INFO
    write_atomic(info_path, json.dumps(record, indent=2, sort_keys=True) + "\n", mode=0o644)
    return target


def _build(recipes: Sequence[Recipe]) -> dict[str, Path]:
    """Build recipes that share a module and version in one ``go build`` (shared compiling)."""
    first = recipes[0]
    names = ", ".join(r.component for r in recipes)
    what = f"{names} {first.version}"
    env = _go_env()
    go_binary()
    log_file = cache_root() / "logs" / f"{'+'.join(r.component for r in recipes)}-{first.version}.log"
    with tempfile.TemporaryDirectory(prefix="kserve-compat-build-") as tmp:
        workdir = Path(tmp)
        out_dir = workdir / "out"
        out_dir.mkdir()
        if first.style == "source":
            build_dir, download = _copy_source(workdir, first)
            packages = ["." + r.package[len(first.module) :] for r in recipes]
        else:
            build_dir = workdir
            download = _write_wrapper(workdir, recipes, env)
        commit, checksum_db = download.commit, download.checksum_db
        if checksum_db != "verified":
            env = _go_env({"GONOSUMDB": first.module})
        if first.style == "wrapper":
            log.info("resolving dependencies of %s@%s", first.module, first.version)
            code, tail = _run_go(["mod", "tidy"], workdir, env, what, log_file.with_suffix(".tidy.log"))
            refused = proxy_refusal(tail)
            if code != 0 and refused:
                raise BuildUnavailable(f"{what}: the Go module proxy refuses a module it needs: {refused}")
            if code != 0:
                raise BuildFailed(
                    f"{what}: go mod tidy failed (exit {code}): {' | '.join(tail[-3:])} "
                    f"(full log: {log_file.with_suffix('.tidy.log')})"
                )
            packages = [r.package for r in recipes]
        ldflags = [*first.ldflags]
        if commit and any("k8s.io/component-base/version" in flag for flag in ldflags):
            ldflags.append(f"-X k8s.io/component-base/version.gitCommit={commit}")
            if first.module == KUBERNETES_MODULE:
                ldflags.append(f"-X k8s.io/client-go/pkg/version.gitCommit={commit}")
        if first.module == KUBERNETES_MODULE:
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            ldflags += [
                f"-X k8s.io/component-base/version.buildDate={stamp}",
                f"-X k8s.io/client-go/pkg/version.buildDate={stamp}",
            ]
        output = f"{out_dir}/" if len(recipes) > 1 else str(out_dir / first.component)
        checklinkname_disabled = False
        started = time.monotonic()
        log.info("building %s with %s (go build %s); this can take minutes", what, go_version(), " ".join(packages))
        while True:
            flags = " ".join([*ldflags, *(["-checklinkname=0"] if checklinkname_disabled else [])])
            args = ["build", "-v", "-trimpath", "-o", output, f"-ldflags={flags}", *packages]
            code, tail = _run_go(args, build_dir, env, what, log_file)
            if code == 0:
                break
            if not checklinkname_disabled and _needs_checklinkname(tail):
                log.warning("%s: the linker refused a //go:linkname; retrying with -checklinkname=0", what)
                checklinkname_disabled = True
                continue
            raise BuildFailed(
                f"{what}: go build failed (exit {code}): {' | '.join(tail[-3:]) or 'no output'} (full log: {log_file})"
            )
        seconds = round(time.monotonic() - started, 1)
        installed: dict[str, Path] = {}
        for rec in recipes:
            # `go build -o DIR/` names each binary after its package's last path element.
            built = out_dir / (rec.component if len(recipes) == 1 else rec.package.rsplit("/", 1)[-1])
            installed[rec.component] = _install(
                built,
                rec,
                {
                    "go_version": go_version(),
                    "ldflags": flags,
                    "checklinkname_disabled": checklinkname_disabled,
                    "checksum_db": checksum_db,
                    "commit": commit,
                    "built_with": [r.component for r in recipes],
                    "build_seconds": seconds,
                    "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                },
            )
        log.info("built %s in %.0fs: %s", what, seconds, ", ".join(str(p) for p in installed.values()))
        return installed


def _build_missing(recipes: Sequence[Recipe]) -> dict[str, Path]:
    """Build those of ``recipes`` (same module and version) that are still missing, under
    each one's lock; a concurrent builder's result is reused."""
    with contextlib.ExitStack() as stack:
        for rec in sorted(recipes, key=lambda r: r.component):  # one order: no deadlock
            stack.enter_context(_build_lock(rec.component, rec.version))
        found = {r.component: _cached(r.component, r.version) for r in recipes}
        todo = [r for r in recipes if found[r.component] is None]
        try:
            built = _build(todo) if todo else {}
        except BuildUnavailable as refused:
            if [r.component for r in todo] != [PROXY]:
                raise
            # The module proxy refuses this version: its published image is the other source,
            # used only when the user asked for it (a pull reaches the internet).
            if not from_image_allowed():
                raise BuildUnavailable(f"{refused}; {_from_image_hint(todo[0].version)}") from None
            try:
                built = {PROXY: extract_proxy(todo[0].version)}
            except ExtractFailed as exc:
                image = proxy_image_for(todo[0].version)
                raise BuildUnavailable(f"{refused}; {image}: {exc}") from None
        return {c: p for c, p in found.items() if p is not None} | built


def ensure(component: str, version: str | None = None, *, build: bool = True) -> Path:
    """The binary of ``component`` at ``version``: located, or built into the cache.

    Raises EnvironmentMissing (no go, or ``build=False`` and nothing found), BuildUnavailable
    (the module proxy refuses the version and, for kube-rbac-proxy, its image cannot be
    extracted either) or BuildFailed (go's last error lines).
    """
    rec = recipe(component, version)
    found = locate(component, rec.version)
    if found:
        return found
    if not build:
        raise EnvironmentMissing(
            f"{component} {rec.version}: not built (expected {binary_path(component, rec.version)}, "
            f"{env_var(component, rec.version)} or KSERVE_COMPAT_BIN_DIR); run `kserve-compat binaries`"
        )
    return _build_missing([rec])[component]


def ensure_together(components: Sequence[str], version: str) -> dict[str, Path]:
    """The binaries of ``components`` at ``version``, the missing ones built in one go build.

    For commands of one module (KServe's manager and localmodel): the second costs a link,
    not a second compile of the shared packages. Raises like ``ensure``.
    """
    recipes = [recipe(component, version) for component in dict.fromkeys(components)]
    if len({(r.module, r.version, r.style) for r in recipes}) > 1:
        names = ", ".join(f"{r.component} ({r.module}@{r.version})" for r in recipes)
        raise UsageError(f"built together: {names}; expected commands of one module version")
    found = {r.component: locate(r.component, r.version) for r in recipes}
    missing = [r for r in recipes if found[r.component] is None]
    built = _build_missing(missing) if missing else {}
    return {c: p for c, p in found.items() if p is not None} | built


def ensure_proxy(version: str) -> Path:
    """The kube-rbac-proxy binary of ``version`` (a tag or image reference is accepted)."""
    return ensure(PROXY, proxy_version_for_tag(version))


# ---------------------------------------------------------------------------- many at once


@dataclass
class BinaryResult:
    component: str
    version: str
    status: str  # "present", "built", "unavailable", "failed"
    path: Path | None = None
    detail: str = ""


@dataclass
class BuildSummary:
    results: list[BinaryResult] = field(default_factory=list)

    def with_status(self, status: str) -> list[BinaryResult]:
        return [r for r in self.results if r.status == status]

    @property
    def ok(self) -> bool:
        """Everything buildable exists (unavailable versions cannot be fixed here)."""
        return not self.with_status("failed")


def requested_recipes(
    components: Sequence[str] | None,
    proxy_versions: Sequence[str] | None,
    kubernetes_version: str | None,
) -> list[Recipe]:
    wanted = list(components) if components else list(COMPONENTS)
    for component in wanted:
        _check_component(component)
    recipes: list[Recipe] = []
    for component in dict.fromkeys(wanted):
        if component == PROXY:
            versions = proxy_versions if proxy_versions else PROXY_VERSIONS
            recipes += [recipe(PROXY, proxy_version_for_tag(v)) for v in dict.fromkeys(versions)]
        elif component in (*KUBERNETES_COMPONENTS, *NODE_KUBERNETES_COMPONENTS):
            recipes.append(recipe(component, kubernetes_version))
        else:
            recipes.append(recipe(component))
    return recipes


def ensure_all(
    components: Sequence[str] | None = None,
    proxy_versions: Sequence[str] | None = None,
    jobs: int = 2,
    *,
    kubernetes_version: str | None = None,
) -> BuildSummary:
    """Build what is missing (Kubernetes commands in one go build), ``jobs`` builds at a time.

    Continues past unavailable and failing builds; the summary says what happened to each.
    """
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: expected a positive number")
    summary = BuildSummary()
    groups: dict[tuple[str, str], list[Recipe]] = {}
    for rec in requested_recipes(components, proxy_versions, kubernetes_version):
        found = locate(rec.component, rec.version)
        if found:
            summary.results.append(BinaryResult(rec.component, rec.version, "present", found))
        else:
            groups.setdefault((rec.module, rec.version), []).append(rec)
    if not groups:
        return summary
    go_binary()  # one clear error instead of one per binary

    def run(group: list[Recipe]) -> list[BinaryResult]:
        try:
            built = _build_missing(group)
        except BuildUnavailable as exc:
            return [BinaryResult(r.component, r.version, "unavailable", None, str(exc)) for r in group]
        except HarnessError as exc:
            return [BinaryResult(r.component, r.version, "failed", None, str(exc)) for r in group]
        return [BinaryResult(r.component, r.version, "built", built[r.component]) for r in group]

    # Biggest builds first, so a small one fills the second slot meanwhile.
    ordered = sorted(groups.values(), key=lambda g: g[0].module != KUBERNETES_MODULE)
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="go-build") as pool:
        for results in pool.map(run, ordered):
            summary.results += results
    return summary


def status(component: str, version: str | None = None) -> BinaryResult:
    """built / missing / unavailable, without building (asks the module proxy if missing)."""
    rec = recipe(component, version)
    found = locate(component, rec.version)
    if found:
        return BinaryResult(component, rec.version, "built", found)
    ok, reason = buildable(component, rec.version)
    if not ok and reason.startswith("go:"):
        return BinaryResult(component, rec.version, "missing", None, reason)
    if not ok:
        return BinaryResult(component, rec.version, "unavailable", None, reason)
    return BinaryResult(component, rec.version, "missing", binary_path(component, rec.version))
