"""Migration: an operator swaps the proxy image of a running KServe, under load.

Runbook:
  install   the release with the image it ships (a retired gcr.io image is replaced by
            its frozen registry.k8s.io copy, as an operator would have to)
  deploy    the sklearn-iris InferenceServices
  migrate   patch the Deployment to the cell's image while a prober keeps calling
            metrics (with the reader's token) and both models
  check     no inference request lost; the metrics outage window; then the same checks
            as a fresh install on the new image
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from e2e.matrix import MatrixCell
from e2e.runbook import Harness, cell_run, migration_start_image


def applies_to(cell: MatrixCell, provider: str) -> str | None:
    if cell.proxy.image == migration_start_image(cell):
        return "the cell runs the image the release starts from: nothing to migrate"
    if cell.proxy.retired:
        return "migrating to a retired image: see test_retired_image.py"
    return None


@pytest.mark.scenario("migration")
def test_migration(harness: Harness, cell: MatrixCell, record_cell: Callable[..., None]) -> None:
    with cell_run(harness, cell, "migration") as run:
        run.install_release()
        run.deploy_sample_models()
        run.migrate_proxy_image(from_image=migration_start_image(cell))
        run.check_image_in_use()
        run.check_metrics_access()
        run.check_inference()
        run.check_token_leak()
    record_cell(run.result)
