"""A run: the selected cells, one cluster per group, and the results.

``Harness`` schedules clusters: a group's cluster is created (and its release installed,
see ``e2e/install.py``) on first use, reused by the group's cells, and torn down when the
next group starts. The next groups are prepared in the background while the current
group's cells run. A cell's own steps live in its ``Scenario`` (``e2e/scenario.py``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from e2e.cluster.provider import ClusterProvider, ProviderFactory
from e2e.errors import HarnessError, UsageError
from e2e.images import RegistryMirrors
from e2e.install import CellSkipped, GroupCluster, Installer
from e2e.manifests import ReleaseFiles, kserve_file
from e2e.matrix import ClusterGroup, Matrix, MatrixCell, Selection, group_cells, load_matrix
from e2e.results import CellResult

log = logging.getLogger(__name__)

PREPARE_AHEAD = 2  # cluster groups prepared in the background ahead of the current one (default)
MAX_PREPARE_AHEAD = 4


@dataclass
class HarnessOptions:
    provider: str = "local"
    matrix_file: str | None = None
    selection: Selection = field(default_factory=Selection)
    manifest_dir: str | None = None
    reports_dir: Path = Path("reports")
    registry_mirrors: tuple[str, ...] = ()
    keep_cluster: bool = False
    keep_on_failure: bool = False
    strict: bool = False
    rollout_timeout_s: float = 300.0
    # The naive mode `nox -s bench` compares against: a fresh cluster for every cell.
    cluster_per_cell: bool = False
    reuse_cluster: bool = False  # kind: use an existing cluster of the same name
    local_images: bool = False  # kind: the image set built by `kserve-compat images`; nothing pulled
    # Release manifests also from the release's Go module; None: the environment says
    # (KSERVE_COMPAT_MANIFESTS_FROM_MODULE), for a Harness made outside pytest.
    manifests_from_module: bool | None = None
    shard: GroupShard | None = None  # this process runs only its share of the cluster groups
    kind_workers: int = 0  # kind: worker nodes besides the control plane
    # Cluster groups prepared in the background ahead of the current one. `--parallel-groups
    # N` gives each of its shares 2 // N (at least 1): N shares on one machine already keep
    # N groups busy, and 2 shares preparing 2 ahead each put 6 clusters on 2 cores (load 35
    # seen; one API server stopped answering).
    prepare_ahead: int = PREPARE_AHEAD


MAX_KIND_WORKERS = 4  # each node is a container with its own kubelet and containerd


def kind_worker_count(text: str) -> int:
    """``--kind-workers``'s value: a number of worker nodes from 0 to MAX_KIND_WORKERS."""
    if not text.isdigit() or int(text) > MAX_KIND_WORKERS:
        raise UsageError(f"--kind-workers {text}: expected a number of worker nodes from 0 to {MAX_KIND_WORKERS}")
    return int(text)


def prepare_ahead_count(text: str) -> int:
    """``--prepare-ahead N``: how many cluster groups are prepared ahead (1 to MAX_PREPARE_AHEAD)."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_PREPARE_AHEAD:
        raise UsageError(f"--prepare-ahead {text}: expected a number of cluster groups from 1 to {MAX_PREPARE_AHEAD}")
    return int(text)


@dataclass(frozen=True)
class GroupShard:
    """Share ``index`` (1-based) of ``count``: the cluster groups whose place in the run's
    order is ``index - 1`` modulo ``count``. A group is never split, so two shards never
    share a cluster (kind names a cluster by its group)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> GroupShard:
        index, slash, count = text.partition("/")
        numbers = all(part.isascii() and part.isdecimal() for part in (index, count))
        if slash and numbers and 1 <= int(index) <= int(count):
            return cls(int(index), int(count))
        raise UsageError(f"--shard {text}: expected I/N with 1 <= I <= N, e.g. 1/2")

    def groups(self, groups: Sequence[ClusterGroup]) -> list[ClusterGroup]:
        return [group for place, group in enumerate(groups) if place % self.count == self.index - 1]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class RunPlan:
    """A run resolved once, from its options: the matrix, the cells selected, and where the
    release files come from. The plugin builds it; the harness, its provider factory and
    ``--plan`` all read this one (never the options or the environment again)."""

    options: HarnessOptions
    matrix: Matrix
    cells: tuple[MatrixCell, ...]
    files: ReleaseFiles

    @classmethod
    def resolve(cls, options: HarnessOptions) -> RunPlan:
        """Raises ``UsageError`` (one line) for a selection or a setting the matrix refuses."""
        matrix = load_matrix(options.matrix_file)
        cells = matrix.select(options.selection)
        files = ReleaseFiles.from_environment(options.manifest_dir, from_module=options.manifests_from_module)
        if files.offline_dir is not None and options.selection.all_releases and not options.selection.kserve:
            # "Every release available": those the offline directory mirrors, and with the Go
            # module source on, those the Go module proxy serves (asked once per release, .info
            # only). Asked for by name (--kserve), a missing one still runs and is skipped with
            # the reason.
            versions = {cell.release.version for cell in cells}
            available = {version: files.available(kserve_file(version)) for version in versions}
            cells = [cell for cell in cells if available[cell.release.version]]
        if options.shard is not None:
            cells = [cell for group in options.shard.groups(group_cells(cells)) for cell in group.cells]
        return cls(options, matrix, tuple(cells), files)


def make_factory(options: HarnessOptions, matrix: Matrix | None = None) -> ProviderFactory:
    if options.provider == "local":
        from e2e.cluster.local import LocalProviderFactory

        return LocalProviderFactory(
            matrix or load_matrix(options.matrix_file),
            keep=options.keep_cluster,
            proxy_binaries=options.selection.proxy_binaries(),
        )
    if options.provider == "kind":
        from e2e.cluster.kind import KindOptions, KindProviderFactory

        return KindProviderFactory(
            matrix or load_matrix(options.matrix_file),
            KindOptions(
                keep_cluster=options.keep_cluster,
                keep_on_failure=options.keep_on_failure,
                reuse_cluster=options.reuse_cluster,
                local_images=options.local_images,
                user_registries=RegistryMirrors.from_options(options.registry_mirrors).endpoints,
                workers=options.kind_workers,
            ),
        )
    raise HarnessError(f"--provider {options.provider}: expected kind or local")


class Harness:
    """One run of selected cells on one provider."""

    def __init__(self, plan: RunPlan, factory: ProviderFactory | None = None) -> None:
        options = plan.options
        self.options = options
        self.matrix: Matrix = plan.matrix
        self.cells = list(plan.cells)
        self.groups = group_cells(self.cells)
        self.files = plan.files
        self.mirrors = RegistryMirrors.from_options(options.registry_mirrors)
        self.installer = Installer(self.matrix, self.files, self.mirrors, options.rollout_timeout_s)
        self.factory = factory or make_factory(options, self.matrix)
        self.results: list[CellResult] = []
        self._current: GroupCluster | None = None
        # Each group's cluster lives in its own ExitStack, closed when the group is done.
        self._stacks: dict[str, contextlib.ExitStack] = {}
        self._lock = threading.Lock()
        # The next group's cluster is created and installed in the background while the
        # current group's cells run: a group costs a control plane and an install, a cell
        # only a swap and a few requests. One worker per group prepared ahead (two by
        # default: much of a preparation is waiting on the API server, so two overlap well
        # on two cores; a share of --parallel-groups gets fewer, see HarnessOptions).
        self._preparer = ThreadPoolExecutor(max_workers=options.prepare_ahead, thread_name_prefix="prepare-group")
        self._prepared: dict[str, Future[GroupCluster]] = {}
        # Set by close(): a preparation still running stops before its install; the clusters
        # of those still installing are deleted under them (their install then fails fast).
        self._closing = threading.Event()
        self._preparing: dict[str, ClusterProvider] = {}
        self.group_order = [group.id for group in self.groups]
        # Why a group's release cannot run here ("" when it can), asked once per group
        # before its cluster is made: such a group's cells skip without a cluster.
        self._cannot_run: dict[str, str] = {}
        # A finished group's cluster is torn down in the background too: an API server's
        # graceful stop alone takes about a second that the next group's cells need not wait.
        self._teardown = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teardown-group")

    # -- clusters ---------------------------------------------------------------------------

    def group_of(self, cell: MatrixCell) -> ClusterGroup:
        return next(g for g in self.groups if (g.release.version, g.kubernetes.version) == cell.group_key)

    def cluster_for(self, cell: MatrixCell) -> GroupCluster:
        """The cluster of the cell's group; switching groups tears the previous one down."""
        group = self.group_of(cell)
        if self._current is not None and self._current.group.id == group.id:
            return self._current
        reason = self.why_group_cannot_run(group)
        if reason:
            self.close_group()  # the previous group is done: nothing of this one runs
            self._prepare_next(group)
            raise CellSkipped(reason)
        self.close_group()
        future = self._prepared.pop(group.id, None)
        if future is None:
            future = self._preparer.submit(self._prepare, group)
        self._current = future.result()  # a cluster that could not be created fails this cell
        self._prepare_next(group)
        return self._current

    def why_group_cannot_run(self, group: ClusterGroup) -> str:
        """Why no cluster of this group could install its release here ("" when one can):
        its manifest cannot be read, or its provider lacks what the controller needs."""
        if group.id not in self._cannot_run:
            try:
                manifest = self.installer.release_manifest(group.release)
                reason = self.factory.why_release_cannot_run(group.release, manifest.documents)
            except CellSkipped as exc:
                reason = str(exc)
            except Exception as exc:  # e.g. a download that failed: the install meets it again and says so
                log.warning("%s: whether it can run is not known before its cluster: %s", group.id, exc)
                reason = ""
            if reason:
                log.info("%s: no cluster is made: %s", group.id, reason)
            self._cannot_run[group.id] = reason
        return self._cannot_run[group.id]

    def _prepare(self, group: ClusterGroup) -> GroupCluster:
        """Create a group's cluster and install its release (an install error is kept for
        its cells to report, not raised here)."""
        log.info("creating the cluster for %s", group.id)
        stack = contextlib.ExitStack()
        with self._lock:
            self._stacks[group.id] = stack
        provider = stack.enter_context(self.factory.cluster(group.id, group.kubernetes.version))
        cluster = GroupCluster(group=group, provider=provider)
        with self._lock:
            if self._closing.is_set():
                raise HarnessError(f"the run is ending: {group.id} is not installed")
            self._preparing[group.id] = provider
        try:
            with contextlib.suppress(HarnessError):  # recorded in cluster.install_error
                self.installer.install(cluster, group.cells[0])
        finally:
            with self._lock:
                self._preparing.pop(group.id, None)
        return cluster

    def prepare_first(self) -> None:
        """Start creating the first groups' clusters now (the run's own start-up, e.g. the
        local model server, then overlaps with them)."""
        self._prepare_from(0)

    def _prepare_next(self, group: ClusterGroup) -> None:
        if group.id in self.group_order:
            self._prepare_from(self.group_order.index(group.id) + 1)

    def _prepare_from(self, position: int) -> None:
        if self.options.cluster_per_cell:
            return
        ahead = 0
        for group_id in self.group_order[position:]:
            if ahead == self.options.prepare_ahead:
                return
            group = next((g for g in self.groups if g.id == group_id), None)
            if group is None or self.why_group_cannot_run(group):
                continue
            ahead += 1
            if group.id not in self._prepared:
                self._prepared[group.id] = self._preparer.submit(self._prepare, group)

    def close_group(self, wait: bool = False) -> None:
        """Tear the current group's cluster down: in the background, unless ``wait`` (the
        group's next cluster then takes the same name)."""
        if self._current is not None:
            group_id = self._current.group.id
            log.info("tearing down the cluster for %s", group_id)
            with self._lock:
                stack = self._stacks.pop(group_id, None)
            self._current = None
            if stack is not None and wait:
                _tear_down(group_id, stack)
            elif stack is not None:
                self._teardown.submit(_tear_down, group_id, stack)

    def close(self) -> None:
        """Tear down the current cluster and any prepared ahead of time (also on Ctrl-C);
        returns once every cluster of the run is gone."""
        with self._lock:
            self._closing.set()
            installing = list(self._preparing.items())
        self.close_group()
        for future in self._prepared.values():
            future.cancel()
        for group_id, provider in installing:
            log.info("deleting the cluster for %s under its install: the run is ending", group_id)
            try:
                provider.delete()
            except Exception:  # the stack's own teardown below tries again
                log.exception("deleting the cluster for %s failed", group_id)
        self._preparer.shutdown(wait=True)
        self._teardown.shutdown(wait=True)
        with self._lock:
            stacks = list(self._stacks.values())
            self._stacks.clear()
        for stack in stacks:
            stack.close()
        self._prepared.clear()

    def recover(self, result: CellResult) -> None:
        """After a failed cell, make sure the next cell finds a working cluster."""
        if self._current is None:
            return
        try:
            repaired = self._current.provider.recover()
        except HarnessError as exc:
            result.notes.append(f"cluster replaced after this cell: {exc}")
            self.close_group(wait=True)
            return
        if repaired:
            result.notes.append(f"cluster repaired after this cell: {repaired}")

    def result_of(self, result_id: str, scenario: str) -> CellResult | None:
        """The result a scenario recorded for a cell, if it recorded one."""
        return next((r for r in self.results if r.cell_id == result_id and r.scenario == scenario), None)


def _tear_down(group_id: str, stack: contextlib.ExitStack) -> None:
    """Close a group's cluster stack; a failure is logged (the group's cells are done)."""
    try:
        stack.close()
    except Exception:
        log.exception("tearing down the cluster for %s failed", group_id)
