"""swap: patch the controller Deployment to the cell's proxy image and wait for the rollout.

The other steps that change the image (``swap_to_start``, ``migrate``, ``rollback``) call
``swap_to`` with theirs, and print their patch with ``swap_lines``.
"""

from __future__ import annotations

import time
from typing import Any

from e2e import kserve
from e2e.cell import CellRun
from e2e.install import failure_probe, proxy_image_of
from e2e.manifests import proxy_patch
from e2e.matrix import Matrix, MatrixCell
from e2e.results import CheckStatus, timed_check
from e2e.rollout import ImageUnavailable, wait_for_rollout
from e2e.scenario import PlanContext, Step

ROLLOUT_WAIT = "wait: rollout (observedGeneration, updated and available replicas); fail fast on pull errors"
# Without a kubelet nothing pulls: a retired image's verdict then comes from the matrix.
RETIRED_BY_MATRIX = (
    "image-unavailable by the matrix's registry status ({note}); this tier pulls no images, no registry was asked"
)


def act(run: CellRun) -> None:
    swap_to(run, None)


def _cell_and_patch(run: CellRun, image: str | None) -> tuple[MatrixCell, dict[str, Any]]:
    """The cell as swapped to ``image`` (None: its own), and the patch that does it."""
    cluster = run.group_cluster()
    assert cluster.manifest is not None
    cell = run.cell if image is None else _with_image(run.harness.matrix, run.cell, image)
    rewrite = run.harness.mirrors.rewrite if run.harness.mirrors else None
    return cell, proxy_patch(cell, cluster.manifest, rewrite)


def load_cell_image(run: CellRun) -> None:
    """Make the cell's own proxy image pullable now; one the provider cannot run here skips
    the cell (WorkloadUnavailable) before anything is changed. A retired image is left to
    its real pull."""
    if run.cell.proxy.retired:
        return
    _, patch = _cell_and_patch(run, None)
    run.group_cluster().provider.load_images([proxy_image_of(patch)])


def swap_to(run: CellRun, image: str | None) -> None:
    """Patch the controller Deployment to the cell's proxy image (or ``image``) and wait for
    the rollout; a pull error ends the cell ``image-unavailable``."""
    cluster = run.group_cluster()
    profile = run.cell.release.profile
    cell, patch = _cell_and_patch(run, image)
    target = proxy_image_of(patch)
    provider = cluster.provider
    with timed_check(run.result, "proxy-rollout") as check:
        if cell.proxy.retired and not provider.runs_pods:
            message = RETIRED_BY_MATRIX.format(note=cell.proxy.note or "retired")
            run.result.deviations.append(f"{target}: {message}")
            raise ImageUnavailable(f"{target}: {message}")
        provider.load_images([target])
        api = provider.api_client()
        kserve.patch_controller(api, profile, patch)
        run.result.notes += provider.sync_workloads()
        state = wait_for_rollout(
            api,
            profile.namespace,
            profile.deployment,
            timeout_s=run.harness.options.rollout_timeout_s,
            failure_evidence=failure_probe(provider, profile.namespace, profile.deployment),
        )
        cluster.proxy_image = target
        run.swapped_at = time.time()
        check.status, check.detail = CheckStatus.PASS, f"rolled out {target} ({state})"


def _with_image(matrix: Matrix, cell: MatrixCell, image: str) -> MatrixCell:
    return MatrixCell(cell.release, matrix.proxy_for_image(image), cell.kubernetes, cell.variant)


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    return ["the proxy container's image (and variant args) by a strategic-merge patch:", *swap_lines(cell, context)]


def swap_lines(cell: MatrixCell, context: PlanContext, image: str | None = None) -> list[str]:
    """The patch that puts the cell's image (or ``image``) in, as the plan prints it."""
    proxy = cell.proxy if image is None else None
    if proxy is not None and proxy.retired and context.provider == "local":
        return [
            f"container {cell.release.profile.proxy_container} image -> {proxy.image}",
            "retired per the matrix: image-unavailable without a pull (this tier pulls no images)",
        ]
    patch = context.patch_of(cell, image)
    profile = cell.release.profile
    if patch is None:
        target = context.mirrored(image or cell.proxy.image)
        lines = [
            f"container {profile.proxy_container} image -> {target}"
            " (manifest not on disk: the exact patch is computed at run time)"
        ]
    else:
        lines = [f"patch deployment {profile.namespace}/{profile.deployment}:", f"  {patch}"]
    return [*lines, ROLLOUT_WAIT]


swap_proxy_image = Step("swap", act, describe)
