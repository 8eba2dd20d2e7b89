"""Rollback: the operator's way back, from the cell's image to the one the release ships.

The controller runs the cell's image (as after a migration), then is changed back to the
image the release starts from (a retired gcr.io image's frozen registry.k8s.io copy, as in
the migration) while a prober keeps calling metrics and both models. No inference request
may be lost on the way back either; the metrics outage is measured; then the checks run
on the image the cluster ends on.
"""

from __future__ import annotations

from e2e.matrix import MatrixCell, no_image_change
from e2e.run import Harness
from e2e.scenario import Scenario
from e2e.steps.check_image import check_image_in_use
from e2e.steps.check_inference import check_inference
from e2e.steps.check_metrics import check_metrics_access
from e2e.steps.deploy import deploy_sample_models
from e2e.steps.install import install_release
from e2e.steps.metrics_scrape import check_metrics_scrape
from e2e.steps.rollback import rollback_to_start_image
from e2e.steps.swap import swap_proxy_image


def _rolls_back(cell: MatrixCell, provider: str) -> str | None:
    return no_image_change(cell, "roll back")


SCENARIO = Scenario(
    name="rollback",
    story=__doc__ or "",
    grid="rollback",
    applies=_rolls_back,
    rank=3,
    steps=(
        install_release,
        deploy_sample_models,
        swap_proxy_image,
        rollback_to_start_image,
        check_image_in_use,
        check_metrics_access,
        check_metrics_scrape,
        check_inference,
    ),
)


def test_rollback(harness: Harness, cell: MatrixCell) -> None:
    SCENARIO.run(harness, cell)
