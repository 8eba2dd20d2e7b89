"""Retired image: a cell whose proxy image cannot be pulled must say so, fast.

Runbook:
  install   the release, with the retired image already in the controller Deployment
  expect    the rollout fails with ImagePullBackOff / ErrImagePull: verdict
            ``image-unavailable`` with the kubelet's pull error as evidence, well within
            the rollout timeout (the waiter fails on the first pull error it sees)
Only on kind: the local tier pulls no images.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from e2e.matrix import MatrixCell
from e2e.results import Verdict
from e2e.runbook import Harness, cell_run


def applies_to(cell: MatrixCell, provider: str) -> str | None:
    if not cell.proxy.retired:
        return "the image is not retired"
    if provider != "kind":
        return "the local tier pulls no images"
    return None


@pytest.mark.scenario("retired-image")
def test_retired_image_is_reported_unavailable(
    harness: Harness, cell: MatrixCell, record_cell: Callable[..., None]
) -> None:
    with cell_run(harness, cell, "retired-image") as run:
        run.install_release()
        run.swap_proxy_image()
    record_cell(run.result, Verdict.IMAGE_UNAVAILABLE)
