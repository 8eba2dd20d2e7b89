"""A Scenario: one cell's whole story, as data.

A scenario has a name, a rule saying to which cells it applies (and why not, when it does
not), ordered named steps, and the verdict it expects. Everything else is derived from
that one definition: the pytest plugin parametrizes, orders and deselects with it,
``--plan`` prints its steps, and ``Scenario.run`` executes the same steps, shaped like
chainsaw's try / catch / finally:

- try: the steps in order; the first that raises ends the cell with a verdict;
- catch: on a failed verdict, diagnostics are collected while the cluster still exists;
- finally: the result (with the names of the steps that ran) is saved whatever happened.

A test proves the plan and the run list the same steps (``tests/test_scenarios.py``).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from e2e.matrix import MatrixCell
from e2e.results import CellResult, Verdict

if TYPE_CHECKING:
    from e2e.cell import CellRun
    from e2e.run import Harness

log = logging.getLogger(__name__)


def _scenarios_dir() -> Path:
    """The runbooks: inside the installed package (e2e/scenarios, from a wheel), else the
    checkout's scenarios/."""
    packaged = Path(__file__).resolve().parent / "scenarios"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "scenarios"


SCENARIOS_DIR = _scenarios_dir()

#: What the catch and finally blocks do, as the plan prints them.
CATCH = "catch: on fail / error / image-unavailable, collect diagnostics (events, pods, logs, YAML) into {dir}"
FINALLY = "finally: save the result as JSON; repair or replace the cluster if a step failed"


@dataclass(frozen=True)
class PlanContext:
    """What a step may show in ``--plan``: the provider and the exact patch, when known."""

    provider: str
    patch_of: Callable[[MatrixCell, str | None], str | None]  # (cell, image) -> patch JSON, if computable
    mirrored: Callable[[str], str] = str  # an image reference as --registry-mirror rewrites it
    local_images: bool = False  # kind on the image set built here (--local-images)


@dataclass(frozen=True)
class Step:
    """One named step of a runbook: what it does (for the plan) and the action (for the run)."""

    name: str
    action: Callable[[CellRun], None]
    describe: Callable[[MatrixCell, PlanContext], list[str]]


Applicability = Callable[[MatrixCell, str], str | None]


def applies_always(cell: MatrixCell, provider: str) -> str | None:
    return None


@dataclass(frozen=True)
class Scenario:
    """A runbook: name, when it applies, its steps, the verdict it expects.

    ``applies(cell, provider)`` returns None when the scenario runs for that cell, or the
    reason it does not (printed when the cell is deselected). ``rank`` orders scenarios
    within a cluster group (fresh installs first, migrations last).
    """

    name: str
    story: str
    steps: tuple[Step, ...]
    applies: Applicability = applies_always
    expected: Verdict = Verdict.PASS
    rank: int = 0
    expected_because: str = ""
    # A grid of its own in the report (and result ids of its own), e.g. "migration"; empty:
    # its results stand in the cell's grid, and its verdict is the cell's.
    grid: str = ""
    step_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "step_names", tuple(step.name for step in self.steps))

    def result_id(self, cell: MatrixCell) -> str:
        """The id of this scenario's result for ``cell``: the cell's, or in the scenario's own
        grid its own, so that two scenarios on one cell never write the same result file."""
        return f"{cell.id}--{self.grid}" if self.grid else cell.id

    def plan(self, cell: MatrixCell, context: PlanContext, diagnostics_dir: str) -> list[str]:
        """The lines ``--plan`` prints for this scenario on ``cell``: the steps ``run`` executes."""
        lines = []
        for number, step in enumerate(self.steps, 1):
            description = step.describe(cell, context)
            lines.append(f"step {number} {step.name}: {description[0]}")
            lines += [f"  {line}" for line in description[1:]]
        expectation = f"expect: verdict {self.expected.value}"
        lines.append(expectation + (f" ({self.expected_because})" if self.expected_because else ""))
        lines.append(CATCH.format(dir=diagnostics_dir))
        lines.append(FINALLY)
        return lines

    def run(self, harness: Harness, cell: MatrixCell) -> CellResult:
        """try: the steps in order; catch: verdict + diagnostics; finally: save the result."""
        from e2e.cell import CellRun

        run = CellRun(harness, cell, self.name, self.result_id(cell), self.grid)
        failed_step = interrupted = False
        try:
            for number, step in enumerate(self.steps, 1):
                run.result.steps.append(step.name)
                log.info("%s: step %d/%d %s", run.result.cell_id, number, len(self.steps), step.name)
                step.action(run)
        except Exception as exc:
            failed_step = True
            run.fail_with(exc)
            log.info("%s: step %s ended the cell: %s", run.result.cell_id, run.result.steps[-1], run.result.reason)
        except KeyboardInterrupt as exc:
            # Recorded as what it is before the interrupt goes on (the run stops and cleans up);
            # a SIGTERM/SIGHUP arrives as KeyboardInterrupt naming it (interrupt_on_termination).
            at = run.result.steps[-1] if run.result.steps else "before its first step"
            run.result.verdict, run.result.reason = Verdict.ERROR, f"interrupted ({str(exc) or 'Ctrl-C'}) at step {at}"
            interrupted = True
            raise
        finally:
            run.result.conclude()
            # Interrupted: no diagnostics, no repair; the run is being torn down.
            if not interrupted and run.result.verdict in (Verdict.FAIL, Verdict.ERROR, Verdict.IMAGE_UNAVAILABLE):
                run.collect_diagnostics()  # while the cluster still exists
                if run.cluster is not None:
                    run.cluster.provider.mark_failed()  # honours --keep-on-failure
            if failed_step:
                harness.recover(run.result)
            run.finish()
        log.info("%s: verdict %s %s", run.result.cell_id, run.result.verdict.value, run.result.reason)
        return run.result


def load_scenarios(directory: Path | None = None) -> list[Scenario]:
    """The ``SCENARIO`` of every ``test_*.py`` in ``scenarios/`` (for tools and tests;
    pytest itself finds them by collecting the modules)."""
    found = []
    for path in sorted((directory or SCENARIOS_DIR).glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"kserve_compat_scenarios.{path.stem}", path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        scenario = getattr(module, "SCENARIO", None)
        if isinstance(scenario, Scenario):
            found.append(scenario)
    return sorted(found, key=lambda s: s.rank)


def ordered_runs(
    scenarios: Sequence[Scenario], cells: Sequence[MatrixCell], provider: str
) -> tuple[list[tuple[Scenario, MatrixCell]], dict[tuple[str, str], list[str]]]:
    """Which scenario runs on which cell, in run order, and why the others do not.

    Run order: one cluster group after the other (the order of the selection), within a
    group by scenario rank, then by the cell's order. Returns the runs and
    ``{(scenario, reason): [cell ids]}`` for the cells a scenario does not apply to.
    """
    position = {key: i for i, key in enumerate(dict.fromkeys(cell.group_key for cell in cells))}
    runs: list[tuple[Scenario, MatrixCell]] = []
    left_out: dict[tuple[str, str], list[str]] = {}
    for scenario in scenarios:
        for cell in cells:
            reason = scenario.applies(cell, provider)
            if reason is None:
                runs.append((scenario, cell))
            else:
                left_out.setdefault((scenario.name, reason), []).append(cell.id)
    cell_rank = {cell.id: i for i, cell in enumerate(cells)}
    runs.sort(key=lambda run: (position[run[1].group_key], run[0].rank, cell_rank[run[1].id]))
    return runs, left_out
