"""The planned proxy image patch: sent as a server-side dry run (admission and validation run, nothing
persists), and its proxy args checked against the target version's flag contract."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e.apply import api_message
from e2e.audit import EXIT_UNKNOWN_FLAG
from e2e.manifests import ReleaseManifest, proxy_patch
from e2e.matrix import (
    ControllerProfile,
    KServeRelease,
    Matrix,
    MatrixCell,
)
from e2e.preflight.model import (
    EXIT_REJECTED,
    FIELD_MANAGER,
    REQUEST_TIMEOUT,
    Check,
    Status,
)
from e2e.proxy_flags import Contracts, NoContract, check_args
from e2e.text import one_line


def planned_patch(
    deployment: dict[str, Any], profile: ControllerProfile, target: str, matrix: Matrix, release: KServeRelease
) -> dict[str, Any]:
    """``e2e.manifests.proxy_patch`` for ``target``, read from the live Deployment (no release file)."""
    manifest = ReleaseManifest(
        source=f"live Deployment {profile.namespace}/{profile.deployment}", profile=profile, documents=(deployment,)
    )
    cell = MatrixCell(release=release, proxy=matrix.proxy_for_image(target), kubernetes=matrix.kubernetes[0])
    return proxy_patch(cell, manifest)


def check_swap_dry_run(
    api: k8s_client.ApiClient, profile: ControllerProfile, patch: dict[str, Any], target: str
) -> Check:
    """Send the patch with ``dryRun=All``: validation and admission run, nothing is stored."""
    apps = k8s_client.AppsV1Api(api)
    try:
        answer = apps.patch_namespaced_deployment(
            profile.deployment,
            profile.namespace,
            patch,
            dry_run="All",
            field_manager=FIELD_MANAGER,
            _request_timeout=REQUEST_TIMEOUT,
        )
    except ApiException as exc:
        return Check(
            "swap-dry-run",
            Status.FAIL,
            f"the API rejected the planned patch (dry run): {exc.status} {api_message(exc)}",
            EXIT_REJECTED,
            evidence=[json.dumps(patch, sort_keys=True)],
        )
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return Check("swap-dry-run", Status.WARN, f"dry run not answered: {one_line(exc)}", EXIT_REJECTED)
    images = {c.name: c.image for c in answer.spec.template.spec.containers}
    got = images.get(profile.proxy_container)
    if got != target:
        return Check(
            "swap-dry-run",
            Status.FAIL,
            f"the API accepted the patch but the {profile.proxy_container} container would run {got}, not {target}",
            EXIT_REJECTED,
        )
    return Check(
        "swap-dry-run",
        Status.OK,
        f"the API accepted the planned patch (dry run, nothing stored): container {profile.proxy_container} "
        f"-> {target}",
        evidence=[json.dumps(patch, sort_keys=True)],
    )


PROXY_FLAGS = "proxy-flags"


def check_proxy_flags(
    patch: Mapping[str, Any], container: str, version: str | None, contracts: Contracts | None = None
) -> Check:
    """The args of ``container`` in the planned patch against kube-rbac-proxy ``version`` (the
    target's; None when its tag names none): an unknown flag fails (the proxy would exit at
    start), a deprecated one warns, no contract warns that nothing was checked."""
    containers = (((patch.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    planned = next((c for c in containers if c.get("name") == container), None)
    if planned is None:
        return Check(PROXY_FLAGS, Status.SKIPPED, f"the planned patch has no container {container}")
    args = [str(arg) for arg in planned.get("args") or []]
    if version is None:
        return Check(PROXY_FLAGS, Status.WARN, "flags not checked: the target names no kube-rbac-proxy version")
    try:
        problems = check_args(args, version, contracts)
    except NoContract as missing:
        return Check(PROXY_FLAGS, Status.WARN, f"flags not checked ({missing})", evidence=[f"args: {' '.join(args)}"])
    unknown = [p.message for p in problems if p.severity == "unknown"]
    deprecated = [p.message for p in problems if p.severity == "deprecated"]
    given = f"args: {' '.join(args)}"
    if unknown:
        return Check(PROXY_FLAGS, Status.FAIL, "; ".join(unknown), EXIT_UNKNOWN_FLAG, [*deprecated, given])
    if deprecated:
        return Check(PROXY_FLAGS, Status.WARN, "; ".join(deprecated), evidence=[given])
    return Check(
        PROXY_FLAGS, Status.OK, f"kube-rbac-proxy {version} accepts every flag of the planned {container} args"
    )
