"""The planned proxy image patch, sent as a server-side dry run: admission and validation run, nothing persists."""

from __future__ import annotations

import json
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e.apply import api_message
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
