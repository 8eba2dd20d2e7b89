"""kind's and kubectl's versions (pinned for pytest-kind, see the package's docstring), where
the tools are cached, and whether Docker can run kind's privileged node containers."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from e2e.cache import cache_root
from e2e.cluster.kind.commands import DockerCommands, node_platform
from e2e.command import last_lines, run
from e2e.errors import EnvironmentMissing, HarnessError

log = logging.getLogger(__name__)

# kind v0.32.0 supports node images for Kubernetes 1.33-1.36 (node images published for it
# need its containerd handling). kubectl 1.34 talks to 1.33-1.35
# servers (kubectl's +-1 minor skew policy); 1.34.8 is the patch of kind v0.32.0's image.
KIND_VERSION = "v0.32.0"
KUBECTL_VERSION = "v1.34.8"
PINNED_TOOL_VERSIONS: Mapping[str, str] = {"KIND_VERSION": KIND_VERSION, "KUBECTL_VERSION": KUBECTL_VERSION}

DOCKER_MISSING_HINT = "the kind tier needs one — run `nox -s local` for the dockerless tier"

# runc's error when it is asked for a capability the host's bounding set lacks: a privileged
# container (every kind node is one) asks for all of them. Some VMs lack CAP_SYS_RESOURCE.
PRIVILEGED_CAPS_ERROR = "unable to apply caps: operation not permitted"
PRIVILEGED_CAPS_HINT = (
    f"this Docker engine cannot run privileged containers, which kind's nodes are ({PRIVILEGED_CAPS_ERROR}: "
    "the host lacks a capability runc grants them); as root, run `.ci/docker-engine` from the kserve-compat "
    "repository: it registers a runtime that drops CAP_SYS_RESOURCE"
)


def pin_tool_versions(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Pin pytest-kind's kind and kubectl versions; returns the versions in force.

    A version the user exported wins (that is pytest-kind's own interface). Call before
    ``pytest_kind`` is imported, or any time after: an already imported module has its
    globals rewritten, which works because pytest-kind reads them at call time.
    """
    env = os.environ if environ is None else environ
    in_force = {}
    for name, pinned in PINNED_TOOL_VERSIONS.items():
        in_force[name] = env.setdefault(name, pinned)
    imported = sys.modules.get("pytest_kind.cluster")
    if imported is not None and environ is None:
        for name, version in in_force.items():
            setattr(imported, name, version)
    return in_force


pin_tool_versions()


# -- tools ------------------------------------------------------------------------------


def tool_cache_dir() -> Path:
    return cache_root() / "bin"


@dataclass(frozen=True)
class ToolPaths:
    kind: Path
    kubectl: Path
    downloaded: bool  # pytest-kind fetches them on first use (amd64 builds only)


def resolve_tools(
    kind_bin: Path | None = None,
    kubectl_bin: Path | None = None,
    machine: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> ToolPaths:
    """Where kind and kubectl come from.

    Explicit paths (pytest-kind's ``--kind-bin``/``--kind-kubectl-bin``) win. On amd64
    pytest-kind downloads the pinned versions into a shared cache (it would otherwise fetch
    them again for every cluster name). pytest-kind downloads amd64 builds only: elsewhere
    the binaries come from PATH, or from ``KIND_DOWNLOAD_URL``/``KUBECTL_DOWNLOAD_URL``.
    """
    arch = node_platform(machine).removeprefix("linux/")
    versions = pin_tool_versions()
    cache = tool_cache_dir()
    paths: dict[str, Path] = {}
    downloaded = False
    for tool, explicit, version_var, url_var in (
        ("kind", kind_bin, "KIND_VERSION", "KIND_DOWNLOAD_URL"),
        ("kubectl", kubectl_bin, "KUBECTL_VERSION", "KUBECTL_DOWNLOAD_URL"),
    ):
        version = versions[version_var]
        if explicit is not None:
            paths[tool] = explicit
        elif arch == "amd64" or os.environ.get(url_var):
            paths[tool] = cache / tool / version / tool
            downloaded = True
        elif found := which(tool):
            paths[tool] = Path(found)
        else:
            raise EnvironmentMissing(
                f"{tool}: not on PATH and pytest-kind downloads amd64 builds only (this host is {arch}); "
                f"install {tool} {version} or set {url_var}"
            )
    return ToolPaths(kind=paths["kind"], kubectl=paths["kubectl"], downloaded=downloaded)


def docker_preflight(docker: str = "docker") -> None:
    """Raise ``EnvironmentMissing`` (one line) unless a Docker engine answers."""
    result = run(
        DockerCommands(docker).info(),
        "the Docker engine",
        error=EnvironmentMissing,
        timeout=30,
        check=False,
        hint=DOCKER_MISSING_HINT,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise EnvironmentMissing(
            f"docker: no Docker engine reachable ({last_lines(result.stderr)}); {DOCKER_MISSING_HINT}"
        )


# kind's known issue "Pod errors due to too many open files": each node's systemd, kubelet
# and containerd hold inotify instances, and Linux's default of 128 per user runs out at
# about four nodes at once (seen here 2026-12-07: with `--parallel-groups 2` and the groups
# prepared ahead, the fifth node died at start, and a local-tier manager beside them exited
# with "too many open files"). The values are those kind's documentation advises.
INOTIFY_ADVISED = {"max_user_instances": 512, "max_user_watches": 524288}
INOTIFY_HINT = (
    "raise them with `sysctl -w fs.inotify.max_user_instances=512 fs.inotify.max_user_watches=524288` "
    "(kind's known issue: too many open files)"
)


def inotify_shortfall(limits_dir: Path = Path("/proc/sys/fs/inotify")) -> str:
    """The inotify limits below what kind advises, e.g. "fs.inotify.max_user_instances is 128",
    or "" when none is (or they cannot be read: not Linux)."""
    low = []
    for name, advised in INOTIFY_ADVISED.items():
        try:
            value = int((limits_dir / name).read_text().strip())
        except (OSError, ValueError):
            continue
        if value < advised:
            low.append(f"fs.inotify.{name} is {value}")
    return ", ".join(low)


def privileged_containers_refused(docker: str, image: str) -> bool:
    """Whether the engine refuses a privileged container of ``image`` for a missing capability.

    Asked after ``kind create cluster`` failed (pytest-kind lets its output go to the terminal
    uncaptured), with the node image kind has just tried: a privileged container again.
    """
    try:
        result = run(DockerCommands(docker).run_privileged(image), "a privileged container", timeout=60, check=False)
    except HarnessError:
        return False
    return result.returncode != 0 and PRIVILEGED_CAPS_ERROR in result.stdout + result.stderr
