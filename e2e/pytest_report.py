"""The pytest side of reporting, kept small: ``record`` attaches a cell's JUnit properties.

``record_property`` is pytest's fixture of that name (``Callable[[str, object], None]``);
taking it as a plain callable keeps this module free of pytest imports.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from e2e.report import junit_properties, save_result
from e2e.results import CellResult


def record(
    result: CellResult,
    record_property: Callable[[str, object], None],
    save_to: Path | str | None = None,
) -> Path | None:
    """Attach the cell's JUnit properties to the current test; with ``save_to``, also write
    ``<cell_id>.json`` there for ``kserve-compat report``. Returns the file written."""
    for name, value in junit_properties(result):
        record_property(name, value)
    return save_result(result, save_to) if save_to is not None else None
