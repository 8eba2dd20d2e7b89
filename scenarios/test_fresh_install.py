"""Fresh install: a new cluster gets the KServe release, then the cell's proxy image.

Runbook (per cell; the cluster and the install are shared by the cells of a group):
  install   the release (cert-manager, CRDs, RBAC, controller, runtimes), raw mode
  swap      the proxy container's image (and variant args) by a strategic-merge patch
  deploy    the sklearn-iris InferenceServices, v1 and v2 protocol
  check     the image in use, RBAC-protected metrics, inference, no token in the logs
On failure the runbook collects diagnostics before the cluster goes away.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from e2e.matrix import MatrixCell
from e2e.runbook import Harness, cell_run


def applies_to(cell: MatrixCell, provider: str) -> str | None:
    """Retired images cannot be pulled: the retired-image scenario covers them."""
    if cell.proxy.retired and provider == "kind":
        return "retired image: see test_retired_image.py"
    return None


@pytest.mark.scenario("fresh-install")
def test_fresh_install(harness: Harness, cell: MatrixCell, record_cell: Callable[..., None]) -> None:
    with cell_run(harness, cell, "fresh-install") as run:
        run.install_release()
        run.swap_proxy_image()
        run.deploy_sample_models()
        run.check_image_in_use()
        run.check_metrics_access()
        run.check_inference()
        run.check_token_leak()
    record_cell(run.result)
