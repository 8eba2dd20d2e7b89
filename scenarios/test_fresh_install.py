"""Fresh install: a new cluster gets the KServe release, then the cell's proxy image.

The cluster and the install are shared by the cells of a group; each cell swaps its image
in, deploys the samples (once per cluster) and checks metrics (directly, through every other
Service that publishes them, and through the group's real Prometheus), inference and the logs.
"""

from __future__ import annotations

from e2e.matrix import MatrixCell
from e2e.run import Harness
from e2e.scenario import Scenario
from e2e.steps.check_image import check_image_in_use
from e2e.steps.check_inference import check_inference
from e2e.steps.check_metrics import check_metrics_access
from e2e.steps.check_metrics_services import check_metrics_services
from e2e.steps.deploy import deploy_sample_models
from e2e.steps.install import install_release
from e2e.steps.metrics_scrape import check_metrics_scrape
from e2e.steps.swap import swap_proxy_image
from e2e.steps.token_leak import check_token_leak


def _not_retired(cell: MatrixCell, provider: str) -> str | None:
    return "a retired image cannot be pulled: the retired-image scenario covers it" if cell.proxy.retired else None


SCENARIO = Scenario(
    name="fresh-install",
    story=__doc__ or "",
    applies=_not_retired,
    rank=0,
    steps=(
        install_release,
        swap_proxy_image,
        deploy_sample_models,
        check_image_in_use,
        check_metrics_access,
        check_metrics_services,
        check_metrics_scrape,
        check_inference,
        check_token_leak,
    ),
)


def test_fresh_install(harness: Harness, cell: MatrixCell) -> None:
    SCENARIO.run(harness, cell)
