"""Fresh install: a new cluster gets the KServe release, then the cell's proxy image.

The cluster and the install are shared by the cells of a group; each cell swaps its image
in, deploys the samples (once per cluster) and checks metrics (directly, and through the
group's real Prometheus), inference and the logs.
"""

from __future__ import annotations

from e2e import steps
from e2e.matrix import MatrixCell
from e2e.run import Harness
from e2e.scenario import Scenario


def _not_retired(cell: MatrixCell, provider: str) -> str | None:
    return "a retired image cannot be pulled: the retired-image scenario covers it" if cell.proxy.retired else None


SCENARIO = Scenario(
    name="fresh-install",
    story=__doc__ or "",
    applies=_not_retired,
    rank=0,
    steps=(
        steps.install_release,
        steps.swap_proxy_image,
        steps.deploy_sample_models,
        steps.check_image_in_use,
        steps.check_metrics_access,
        steps.check_metrics_scrape,
        steps.check_inference,
        steps.check_token_leak,
    ),
)


def test_fresh_install(harness: Harness, cell: MatrixCell) -> None:
    SCENARIO.run(harness, cell)
