"""The harness's pytest options and fixtures (used by scenarios/; tests/ has its own).

The scenarios are parametrized by matrix cell (readable ids such as
``kserve-v0.14.0--quay-v0.18.0--k8s-1.33``) and ordered so that every scenario of one
cluster group runs before the next group's cluster is created.

pytest-kind's plugin registers ``--cluster-name``, ``--keep-cluster``, ``--kubeconfig``,
``--kind-image``, ``--kind-bin`` and ``--kind-kubectl-bin``: we reuse ``--keep-cluster``
and register none of them again (pytest would refuse to start).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import e2e.cluster.kind  # noqa: F401 - pins pytest-kind's kind/kubectl versions at import
from e2e import report
from e2e.errors import HarnessError
from e2e.local.processes import install_signal_handlers
from e2e.matrix import Matrix, MatrixCell, Selection, group_cells, load_matrix
from e2e.pytest_report import record
from e2e.results import CellResult, Verdict
from e2e.runbook import Harness, HarnessOptions, make_factory
from e2e.secrets import install_log_redaction, redact

log = logging.getLogger("kserve-compat")

SCENARIO_ORDER = ("fresh-install", "retired-image", "migration")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kserve-compat", "kserve-compat harness")
    group.addoption("--provider", choices=("kind", "local"), default="local", help="cluster provider (default local)")
    group.addoption("--matrix", metavar="FILE", default=None, help="matrix file (default scenarios/matrix.yaml)")
    group.addoption("--kserve", metavar="V[,V]", default=None, help="KServe release tags, e.g. v0.14.0,v0.15.0")
    group.addoption("--proxy", metavar="ALIAS[,ALIAS]", default=None, help="proxy image aliases, e.g. quay-v0.18.0")
    group.addoption("--k8s", metavar="V[,V]", default=None, help="Kubernetes versions, e.g. 1.33")
    group.addoption("--cell", action="append", default=[], metavar="ID[,ID]", help="exact cell ids")
    group.addoption("--variant", metavar="NAME[,NAME]", default=None, help="extra variant cells")
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
        "--registry-mirror", action="append", default=[], metavar="SRC=DST", help="rewrite image registries"
    )
    group.addoption("--reports-dir", metavar="DIR", default="reports", help="where results and reports go")
    group.addoption("--plan", action="store_true", help="print the ordered plan and touch nothing")
    group.addoption("--keep-on-failure", action="store_true", help="keep a group's cluster when a cell failed")
    group.addoption("--reuse-cluster", action="store_true", help="kind: use an existing cluster of the same name")
    group.addoption(
        "--cluster-per-cell", action="store_true", help="a fresh cluster for every cell (nox -s bench's naive mode)"
    )
    # pytest owns --strict; ours is named for what it makes strict.
    group.addoption(
        "--strict-security", action="store_true", help="security findings (e.g. token leaks) fail the run"
    )


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


def _is_scenario_run(config: pytest.Config) -> bool:
    return any("scenarios" in str(arg) for arg in config.args)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario(name): a runbook scenario of the harness")
    install_log_redaction()
    if not _is_scenario_run(config):
        return
    try:
        matrix = load_matrix(config.getoption("matrix"))
        cells = matrix.select(_selection(config))
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.getoption("provider") == "local" and not config.getoption("k8s"):
        cells = _local_kubernetes_cells(cells)
    offline = config.getoption("manifest_dir") or os.environ.get("KSERVE_COMPAT_MANIFEST_DIR")
    if offline and config.getoption("all_releases") and not config.getoption("kserve"):
        # "Every release available": those the offline directory mirrors. Asked for by
        # name (--kserve), a missing one still runs and is skipped with the reason.
        cells = [cell for cell in cells if (Path(offline) / "kserve" / cell.release.version / "kserve.yaml").is_file()]
    config.stash[_CELLS] = cells
    config.stash[_MATRIX] = matrix


def _local_kubernetes_cells(cells: list[MatrixCell]) -> list[MatrixCell]:
    """The local tier runs the control plane it built: keep the cells of that version."""
    from e2e.local.binaries import KUBERNETES_VERSION

    built = ".".join(KUBERNETES_VERSION.removeprefix("v").split(".")[:2])
    matching = [cell for cell in cells if cell.kubernetes.version == built]
    if cells and not matching:
        raise pytest.UsageError(f"local tier: the control plane is Kubernetes {built}; the matrix has no such version")
    return matching


_CELLS = pytest.StashKey[list[MatrixCell]]()
_MATRIX = pytest.StashKey[Matrix]()
_HARNESS = pytest.StashKey[Harness]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize scenario tests by the cells their module says they apply to."""
    if "cell" not in metafunc.fixturenames:
        return
    cells = metafunc.config.stash.get(_CELLS, [])
    provider = metafunc.config.getoption("provider")
    applies = getattr(metafunc.module, "applies_to", None)
    chosen = [c for c in cells if applies is None or applies(c, provider) is None]
    if not chosen:
        return  # deselected in pytest_collection_modifyitems
    metafunc.parametrize("cell", chosen, ids=[c.id for c in chosen], scope="function")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """One cluster group at a time: order by group, then scenario, then the cell order."""
    if not _is_scenario_run(config):
        return
    # A scenario that applies to none of the selected cells (e.g. retired images on the
    # local tier) is deselected, not reported as an empty skip.
    unused = [item for item in items if "cell" in getattr(item, "fixturenames", ()) and not hasattr(item, "callspec")]
    if unused:
        config.hook.pytest_deselected(items=unused)
        items[:] = [item for item in items if item not in unused]
    cells = config.stash.get(_CELLS, [])
    group_rank = {g.id: i for i, g in enumerate(group_cells(cells))}
    cell_rank = {c.id: i for i, c in enumerate(cells)}

    def key(item: pytest.Item) -> tuple[int, int, int]:
        cell = getattr(item, "callspec", None) and item.callspec.params.get("cell")  # type: ignore[attr-defined]
        if not isinstance(cell, MatrixCell):
            return (len(group_rank), 0, 0)
        group_id = f"kserve-{cell.release.version}--k8s-{cell.kubernetes.version}"
        marker = item.get_closest_marker("scenario")
        scenario = marker.args[0] if marker and marker.args else ""
        order = SCENARIO_ORDER.index(scenario) if scenario in SCENARIO_ORDER else len(SCENARIO_ORDER)
        return (group_rank.get(group_id, len(group_rank)), order, cell_rank.get(cell.id, 0))

    items.sort(key=key)


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if not _is_scenario_run(config):
        return
    if config.getoption("plan"):
        from e2e.plan import render_plan

        print("\n" + render_plan(_harness_options(config), [i.nodeid for i in session.items]))
        pytest.exit("plan printed; nothing was touched", returncode=0)
    factory = make_factory(_harness_options(config))
    try:
        factory.preflight()
    except HarnessError as exc:
        # Never pass silently when the tier cannot run here: one line, non-zero exit.
        pytest.exit(f"kserve-compat: {exc}", returncode=3)


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
    )


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The run: matrix, provider, the current group's cluster, and the results."""
    run = Harness(_harness_options(request.config))
    # Prepare clusters ahead in the order the collected tests will need them.
    order: list[str] = []
    for item in request.session.items:
        cell = getattr(item, "callspec", None) and item.callspec.params.get("cell")  # type: ignore[attr-defined]
        if isinstance(cell, MatrixCell) and run.group_of(cell).id not in order:
            order.append(run.group_of(cell).id)
    run.group_order = order
    request.config.stash[_HARNESS] = run
    try:
        install_signal_handlers()  # from the main thread, before clusters start in the background
        run.prepare_first()
        with _inference_stand_in(run):
            yield run
    finally:
        run.close()  # also when the model server fails to start, or on Ctrl-C


def _inference_stand_in(run: Harness) -> contextlib.AbstractContextManager[None]:
    """Locally, one KServe model server for the whole run (see README: honest labels)."""
    if run.options.provider != "local":
        return contextlib.nullcontext()
    from e2e.local.model_server import iris_model_server

    @contextlib.contextmanager
    def serving() -> Iterator[None]:
        with iris_model_server() as server:
            run.factory.model_server = server  # type: ignore[attr-defined]
            yield

    return serving()


@pytest.fixture
def record_cell(record_property: Callable[[str, object], None]) -> Callable[..., None]:
    """Call with a finished ``CellResult``: JUnit properties, then the verdict as the outcome."""

    def finish(result: CellResult, *expected: Verdict) -> None:
        record(result, record_property)
        wanted = expected or (Verdict.PASS,)
        if result.verdict in wanted:
            return
        if result.verdict is Verdict.SKIPPED:
            pytest.skip(result.reason)
        failing = result.failing_check
        detail = f" [{failing.name}: {failing.detail}]" if failing else ""
        evidence = "\n".join(f"    {line}" for line in (failing.evidence if failing else [])[-12:])
        pytest.fail(
            redact(f"{result.cell_id}: {result.verdict.value}: {result.reason}{detail}\n{evidence}".rstrip()),
            pytrace=False,
        )

    return finish


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the grid (JSON, Markdown, HTML, JUnit) and the GitHub step summary."""
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
