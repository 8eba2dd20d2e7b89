"""Migration: an operator swaps the proxy image of a running KServe, under load.

The controller first runs the image the release ships (a retired gcr.io image is replaced
by its frozen registry.k8s.io copy, as an operator would have to); then the cell's image
is patched in while a prober keeps calling metrics and both models. No inference request
may be lost; the metrics outage window is measured; then the fresh-install checks run.
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
from e2e.steps.migrate import migrate_under_load
from e2e.steps.swap_to_start import swap_to_start_image
from e2e.steps.token_leak import check_token_leak


def _migrates(cell: MatrixCell, provider: str) -> str | None:
    return no_image_change(cell, "migrate")


SCENARIO = Scenario(
    name="migration",
    story=__doc__ or "",
    grid="migration",
    applies=_migrates,
    rank=2,
    steps=(
        install_release,
        deploy_sample_models,
        swap_to_start_image,
        migrate_under_load,
        check_image_in_use,
        check_metrics_access,
        check_metrics_scrape,
        check_inference,
        check_token_leak,
    ),
)


def test_migration(harness: Harness, cell: MatrixCell) -> None:
    SCENARIO.run(harness, cell)
