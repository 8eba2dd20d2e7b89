"""swap-to-start-image: put in the image a change starts from, the one the release ships
(a retired gcr.io image replaced by its frozen copy: see ``migration_start_image``)."""

from __future__ import annotations

from e2e.cell import CellRun
from e2e.matrix import MatrixCell, migration_start_image
from e2e.scenario import PlanContext, Step
from e2e.steps.swap import load_cell_image, swap_lines, swap_to


def act(run: CellRun) -> None:
    # The change's own image first: one that cannot run here (e.g. a proxy version the Go
    # module proxy refuses) skips the cell before a rollout to the start image is spent.
    load_cell_image(run)
    swap_to(run, start_image(run))


def start_image(run: CellRun) -> str:
    """The image a change of this cell starts from (and a rollback returns to), read from the
    release's manifest as installed."""
    cluster = run.group_cluster()
    assert cluster.manifest is not None
    return migration_start_image(run.cell, shipped=cluster.manifest.proxy_image)


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    start = migration_start_image(cell)
    return [f"start from the image the release ships (or its frozen copy): {start}", *swap_lines(cell, context, start)]


swap_to_start_image = Step("swap-to-start-image", act, describe)
