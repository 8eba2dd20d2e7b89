"""rollback: change the image back to the one the release starts from (what it ships, or
the frozen copy of a retired one), under the same probing as a migration.

The way back an operator takes when the new image misbehaves: it must lose no inference
request either, and leave metrics answering through the image they came from.
"""

from __future__ import annotations

from e2e.cell import CellRun
from e2e.matrix import MatrixCell, migration_start_image
from e2e.scenario import PlanContext, Step
from e2e.steps.migrate import PROBE_CHECK, change_under_load
from e2e.steps.swap import swap_lines
from e2e.steps.swap_to_start import start_image


def act(run: CellRun) -> None:
    change_under_load(run, start_image(run))


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    start = migration_start_image(cell)
    return [
        f"back to the image the release starts from ({start}) while a prober calls metrics and both models:",
        *swap_lines(cell, context, start),
        PROBE_CHECK,
    ]


rollback_to_start_image = Step("rollback", act, describe)
