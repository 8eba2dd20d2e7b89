"""Retired image: a cell whose proxy image cannot be pulled must say so, fast.

The release is installed with an image that runs, then the retired one is swapped in.
On kind the kubelet's pull fails (ImagePullBackOff / ErrImagePull) and the waiter stops on
the first pull error, with it as evidence. The local tier pulls nothing: there the verdict
comes from the matrix's registry status, labelled as such in the report.
"""

from __future__ import annotations

from e2e.matrix import MatrixCell
from e2e.results import Verdict
from e2e.run import Harness
from e2e.scenario import Scenario
from e2e.steps.install import install_release
from e2e.steps.swap import swap_proxy_image


def _retired(cell: MatrixCell, provider: str) -> str | None:
    return None if cell.proxy.retired else "the image is not retired"


SCENARIO = Scenario(
    name="retired-image",
    story=__doc__ or "",
    applies=_retired,
    rank=1,
    steps=(install_release, swap_proxy_image),
    expected=Verdict.IMAGE_UNAVAILABLE,
    expected_because="the image cannot be pulled; the pull error (kind) or registry status (local) is the evidence",
)


def test_retired_image(harness: Harness, cell: MatrixCell) -> None:
    SCENARIO.run(harness, cell)
