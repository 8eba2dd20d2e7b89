"""The harness's pytest plugin: options, cells from Scenarios, and outcomes from results.

Loaded explicitly by the root ``conftest.py`` (``pytest_plugins``). A scenario module
(``scenarios/test_*.py``) defines ``SCENARIO`` (an ``e2e.scenario.Scenario``) and a test
taking ``harness`` and ``cell``. From that one definition the plugin:

- parametrizes the test by the selected cells the scenario applies to, and prints, for
  the cells it does not apply to, why they were deselected;
- orders the items so that every scenario of one cluster group runs before the next
  group's cluster is created (then by the scenario's rank, then by the cell's order);
- prints the plan (``--plan``) from the same steps the run executes;
- sets each item's pytest outcome from the result the scenario recorded: the expected
  verdict passes, ``skipped`` skips with its reason, anything else fails with the
  evidence and the diagnostics summary inline, and no result at all fails too.

pytest-kind's plugin registers ``--cluster-name``, ``--keep-cluster``, ``--kubeconfig``,
``--kind-image``, ``--kind-bin`` and ``--kind-kubectl-bin``: we reuse ``--keep-cluster``
and register none of them again (pytest would refuse to start).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import report
from e2e.errors import HarnessError
from e2e.local.processes import interrupt_on_termination
from e2e.matrix import MatrixCell, Selection
from e2e.results import CellResult, Verdict
from e2e.run import (
    PREPARE_AHEAD,
    GroupShard,
    Harness,
    HarnessOptions,
    RunPlan,
    kind_worker_count,
    make_factory,
    prepare_ahead_count,
)
from e2e.scenario import Scenario, ordered_runs
from e2e.secrets import redact
from e2e.unverified_tls import ignore_insecure_request_warnings

log = logging.getLogger("kserve-compat")

_PLAN = pytest.StashKey[RunPlan]()  # the run, resolved once in pytest_configure
_HARNESS = pytest.StashKey[Harness]()
_DESELECTED = pytest.StashKey[dict[tuple[str, str], list[str]]]()  # (scenario, reason) -> cell ids
_PLANNED = pytest.StashKey[bool]()  # --plan printed the plan: nothing is to run


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kserve-compat", "kserve-compat harness")
    group.addoption("--provider", choices=("kind", "local"), default="local", help="cluster provider (default local)")
    group.addoption("--matrix", metavar="FILE", default=None, help="matrix file (default e2e/data/matrix.yaml)")
    group.addoption("--kserve", action="append", metavar="V[,V]", help="KServe release tags, e.g. v0.14.0 (repeatable)")
    group.addoption("--proxy", action="append", metavar="ALIAS[,ALIAS]", help="proxy image aliases (repeatable)")
    group.addoption("--k8s", action="append", metavar="V[,V]", help="Kubernetes versions, e.g. 1.33 (repeatable)")
    group.addoption(
        "--cell",
        action="append",
        default=[],
        metavar="ID[,ID]",
        help="exact cell ids (repeatable; not with --kserve, --proxy or --k8s)",
    )
    group.addoption("--variant", action="append", metavar="NAME[,NAME]", help="extra variant cells (repeatable)")
    group.addoption("--all-releases", action="store_true", help="every release of the matrix, not only latest patches")
    group.addoption(
        "--proxy-image", action="append", default=[], metavar="REF", help="an ad-hoc proxy image, e.g. a patched build"
    )
    group.addoption(
        "--proxy-binary", metavar="PATH", default=None, help="local tier: the binary that plays the --proxy-image"
    )
    group.addoption(
        "--manifest-dir",
        metavar="DIR",
        default=None,
        help="offline release manifests laid out as DIR/kserve/<version>/<file> (env KSERVE_COMPAT_MANIFEST_DIR)",
    )
    group.addoption(
        "--manifests-from-module",
        action="store_true",
        help="read KServe release files the offline directory (or cache) lacks from the release's Go module "
        "github.com/kserve/kserve through the Go module proxy (env KSERVE_COMPAT_MANIFESTS_FROM_MODULE=1)",
    )
    group.addoption(
        "--registry-mirror",
        action="append",
        default=[],
        metavar="SRC=DST|HOST=URL",
        help="SRC=DST rewrites image references (gcr.io/kubebuilder=registry.example:5000/kubebuilder); "
        "HOST=URL makes the kind nodes pull HOST's images from your registry at URL, names unchanged "
        "(quay.io=http://10.0.0.5:5000; seed it with `kserve-compat images push --to`)",
    )
    group.addoption("--reports-dir", metavar="DIR", default="reports", help="where results and reports go")
    group.addoption("--plan", action="store_true", help="print the ordered plan and touch nothing")
    group.addoption("--keep-on-failure", action="store_true", help="keep a group's cluster when a cell failed")
    group.addoption("--reuse-cluster", action="store_true", help="kind: use an existing cluster of the same name")
    group.addoption(
        "--kind-workers",
        default="0",
        metavar="N",
        help="kind: N worker nodes besides the control plane (workloads land on the workers; on node images "
        "built here kube-router connects the nodes' pods)",
    )
    group.addoption(
        "--prepare-ahead",
        default=None,
        metavar="N",
        help="cluster groups created and installed in the background ahead of the current one (default 2; "
        "--parallel-groups N gives each share 2 // N, at least 1)",
    )
    group.addoption(
        "--local-images",
        action="store_true",
        help="kind: run on the image set built by `kserve-compat images` and pull nothing "
        "(env KSERVE_COMPAT_LOCAL_IMAGES=1)",
    )
    group.addoption(
        "--cluster-per-cell", action="store_true", help="a fresh cluster for every cell (nox -s bench's naive mode)"
    )
    group.addoption(
        "--shard",
        metavar="I/N",
        default=None,
        help="run only share I of N of the cluster groups (kserve-compat run --parallel-groups N starts N shards)",
    )
    # pytest owns --strict; ours is named for what it makes strict.
    group.addoption("--strict-security", action="store_true", help="security findings (e.g. token leaks) fail the run")


def _selection(config: pytest.Config) -> Selection:
    return Selection.from_options(
        kserve=config.getoption("kserve"),
        proxy=config.getoption("proxy"),
        k8s=config.getoption("k8s"),
        cells=config.getoption("cell"),
        variants=config.getoption("variant"),
        all_releases=config.getoption("all_releases"),
        proxy_images=config.getoption("proxy_image"),
        proxy_binary=config.getoption("proxy_binary"),
    )


def pytest_configure(config: pytest.Config) -> None:
    try:
        plan = RunPlan.resolve(_harness_options(config))
    except HarnessError as exc:
        # A usage error of the harness: one line and exit 2, like every kserve-compat command.
        pytest.exit(f"kserve-compat: {exc}", returncode=2)
    config.stash[_PLAN] = plan
    config.stash[_DESELECTED] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    # Here, not in pytest_configure: pytest runs that hook, collection and each test inside
    # catch_warnings() and drops what they add to the filters (see e2e.unverified_tls).
    ignore_insecure_request_warnings()


def _local_images(config: pytest.Config) -> bool:
    from e2e.imageset.offline import local_images_requested

    return config.getoption("provider") == "kind" and local_images_requested(bool(config.getoption("local_images")))


def scenario_of(item: pytest.Item | Any) -> Scenario | None:
    """The Scenario an item (or a module) belongs to: its module's ``SCENARIO``."""
    module = getattr(item, "module", item)
    scenario = getattr(module, "SCENARIO", None)
    return scenario if isinstance(scenario, Scenario) else None


def _cell_of(item: pytest.Item) -> MatrixCell | None:
    callspec = getattr(item, "callspec", None)
    cell = callspec.params.get("cell") if callspec is not None else None
    return cell if isinstance(cell, MatrixCell) else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize a scenario's test by the selected cells the scenario applies to."""
    scenario = scenario_of(metafunc.module)
    if scenario is None or "cell" not in metafunc.fixturenames:
        return
    config = metafunc.config
    cells = config.stash[_PLAN].cells
    runs, left_out = ordered_runs([scenario], cells, config.getoption("provider"))
    config.stash[_DESELECTED].update(left_out)
    chosen = [cell for _, cell in runs]
    if chosen:
        metafunc.parametrize("cell", chosen, ids=[c.id for c in chosen], scope="function")
    # else: the item has no cell and is deselected in pytest_collection_modifyitems


def _scenario_items(items: list[pytest.Item]) -> list[pytest.Item]:
    return [item for item in items if scenario_of(item) is not None and _cell_of(item) is not None]


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect scenarios without cells; put the rest in run order (``ordered_runs``)."""
    unused = [item for item in items if scenario_of(item) is not None and _cell_of(item) is None]
    if unused:
        config.hook.pytest_deselected(items=unused)
        items[:] = [item for item in items if item not in unused]
    scenarios = list({s.name: s for item in items if (s := scenario_of(item)) is not None}.values())
    cells = config.stash[_PLAN].cells
    runs, _ = ordered_runs(scenarios, cells, config.getoption("provider"))
    position = {(scenario.name, cell.id): i for i, (scenario, cell) in enumerate(runs)}

    def key(item: pytest.Item) -> int:
        cell, scenario = _cell_of(item), scenario_of(item)
        if cell is None or scenario is None:
            return len(position)
        return position.get((scenario.name, cell.id), len(position))

    items.sort(key=key)


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    """Why each scenario left cells out (a scenario that applies to no cell says so too)."""
    lines = []
    for (scenario, reason), cell_ids in sorted(config.stash.get(_DESELECTED, {}).items()):
        shown = ", ".join(cell_ids[:4]) + (f", ... ({len(cell_ids)} cells)" if len(cell_ids) > 4 else "")
        lines.append(f"kserve-compat: {scenario} not run for {shown}: {reason}")
    return lines


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    items = _scenario_items(session.items)
    if not items:
        return
    if config.getoption("plan"):
        from e2e.plan import render_plan

        runs = [(scenario, cell) for item in items if (scenario := scenario_of(item)) and (cell := _cell_of(item))]
        print("\n" + render_plan(config.stash[_PLAN], runs))
        # Nothing runs: every scenario test is deselected, so the run ends "N deselected",
        # exit 0, without pytest.exit's "!!! Exit" banner.
        config.stash[_PLANNED] = True
        config.hook.pytest_deselected(items=list(session.items))
        session.items.clear()


def _harness_options(config: pytest.Config) -> HarnessOptions:
    return HarnessOptions(
        provider=config.getoption("provider"),
        matrix_file=config.getoption("matrix"),
        selection=_selection(config),
        manifest_dir=config.getoption("manifest_dir") or os.environ.get("KSERVE_COMPAT_MANIFEST_DIR"),
        reports_dir=Path(config.getoption("reports_dir")),
        registry_mirrors=tuple(config.getoption("registry_mirror")),
        keep_cluster=bool(config.getoption("keep_cluster", default=False)),
        keep_on_failure=bool(config.getoption("keep_on_failure")),
        strict=bool(config.getoption("strict_security")),
        cluster_per_cell=bool(config.getoption("cluster_per_cell")),
        reuse_cluster=bool(config.getoption("reuse_cluster")),
        local_images=_local_images(config),
        manifests_from_module=bool(config.getoption("manifests_from_module")) or None,
        shard=GroupShard.parse(shard) if (shard := config.getoption("shard")) else None,
        kind_workers=kind_worker_count(str(config.getoption("kind_workers") or 0)),
        prepare_ahead=prepare_ahead_count(str(config.getoption("prepare_ahead", default=None) or PREPARE_AHEAD)),
    )


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The run: matrix, provider, the current group's cluster, and the results."""
    plan = request.config.stash[_PLAN]
    factory = make_factory(plan.options, plan.matrix)
    try:
        factory.preflight()
    except HarnessError as exc:
        # Never pass silently when the tier cannot run here: one line, non-zero exit.
        pytest.exit(f"kserve-compat: {exc}", returncode=3)
    run = Harness(plan, factory)
    # Prepare clusters ahead in the order the collected tests will need them.
    order: list[str] = []
    for item in _scenario_items(request.session.items):
        cell = _cell_of(item)
        if cell is not None and run.group_of(cell).id not in order:
            order.append(run.group_of(cell).id)
    run.group_order = order
    request.config.stash[_HARNESS] = run
    try:
        interrupt_on_termination()  # from the main thread, before clusters start in the background
        run.prepare_first()
        yield run
    finally:
        run.close()  # also on Ctrl-C


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A scenario item's outcome is its cell's verdict against the scenario's expectation."""
    outcome = yield
    scenario, cell = scenario_of(item), _cell_of(item)
    if call.when != "call" or scenario is None or cell is None:
        return
    test_report: pytest.TestReport = outcome.get_result()
    harness = getattr(item, "funcargs", {}).get("harness")
    harness = harness or item.config.stash.get(_HARNESS, None)
    result = harness.result_of(scenario.result_id(cell), scenario.name) if harness is not None else None
    if result is None:
        if test_report.passed:
            test_report.outcome = "failed"
            test_report.longrepr = f"{cell.id}: scenario {scenario.name} recorded no result (was SCENARIO.run called?)"
        return
    # JUnit XML reads the properties from the item when its teardown is reported.
    item.user_properties += report.junit_properties(result)
    if test_report.failed:
        return  # the test itself raised: keep its traceback
    if result.verdict is scenario.expected:
        return
    if result.verdict is Verdict.SKIPPED:
        test_report.outcome = "skipped"
        line = item.location[1]
        test_report.longrepr = (str(item.path), (line or 0) + 1, f"Skipped: {redact(result.reason)}")
        return
    test_report.outcome = "failed"
    test_report.longrepr = failure_message(result, scenario.expected)


def failure_message(result: CellResult, expected: Verdict) -> str:
    """The verdict, the failing check's evidence and the diagnostics summary, redacted."""
    failing = result.failing_check
    lines = [f"{result.cell_id}: {result.verdict.value} (expected {expected.value}): {result.reason}"]
    if failing is not None:
        lines.append(f"  [{failing.name}: {failing.detail}]")
        lines += [f"    {line}" for line in failing.evidence[-12:]]
    if result.steps:
        lines.append(f"  steps run: {' -> '.join(result.steps)}")
    if result.diagnostics:
        lines.append("  diagnostics (summary.txt):")
        lines += [f"    {line}" for line in result.diagnostics]
    return redact("\n".join(lines))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the grid (JSON, Markdown, HTML, JUnit) and the GitHub step summary."""
    if session.config.stash.get(_PLANNED, False) and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK  # --plan: the plan was the whole job
        return
    run = session.config.stash.get(_HARNESS, None)
    if run is None or not run.results:
        return
    paths = report.write_reports(run.results, run.options.reports_dir, run.matrix)
    markdown = paths.get("markdown") or paths.get("md")
    if markdown is not None:
        report.step_summary(Path(markdown).read_text())
    # The same rule as `kserve-compat report`: e.g. a retired image's 🚫 is expected,
    # and with --strict-security a token leak fails the run.
    if session.exitstatus == 0 and report.exit_code(run.results, run.options.strict, run.matrix) != 0:
        session.exitstatus = 1
    log.info("reports written to %s", run.options.reports_dir)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    run = terminalreporter.config.stash.get(_HARNESS, None)
    if run is not None and run.results:
        terminalreporter.write_sep("=", "kserve-compat grid")
        terminalreporter.write_line(report.markdown_grid(run.results, run.matrix))
