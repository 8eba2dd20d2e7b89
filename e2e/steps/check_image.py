"""check-image: the controller Deployment and its pods run the proxy image last swapped in."""

from __future__ import annotations

from e2e import checks, kserve
from e2e.cell import CellRun
from e2e.matrix import MatrixCell
from e2e.scenario import PlanContext, Step


def act(run: CellRun) -> None:
    cluster = run.group_cluster()
    profile = run.cell.release.profile
    provider = cluster.provider
    api = provider.api_client()
    selector = kserve.controller_pod_selector_of(api, profile.namespace, profile.deployment)
    checks.check_image_in_use(
        run.result,
        api,
        profile.namespace,
        profile.deployment,
        profile.proxy_container,
        cluster.proxy_image,
        observed_images=provider.observed_images(profile.namespace, selector, profile.proxy_container),
    )


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    return ["the Deployment and its pods run the expected proxy image"]


check_image_in_use = Step("check-image", act, describe)
