"""The runbook of a run: one cluster per group, and the steps of each cell.

``Harness`` owns a run: the matrix selection, the provider, the cluster of the current
group (created on first use, reused by the group's cells, torn down when the next group
starts), and the results. ``CellRun`` is one cell's runbook, shaped like chainsaw's
try / catch / finally:

- try: the steps the scenario calls (install, swap, deploy, check, migrate);
- catch: a failed step ends the cell with a verdict and its evidence, and diagnostics
  are collected while the cluster still exists;
- finally: the result is saved as JSON (and JUnit properties) whatever happened.

Every step talks to the API server through shared code (``kserve``, ``checks``, ...);
only ``ClusterProvider`` methods differ between the kind and local tiers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e import checks, diagnostics, kserve, report
from e2e.apply import Applier
from e2e.cluster.provider import ClusterProvider, ProviderFactory, ServiceTarget
from e2e.errors import HarnessError, NotInOfflineDirectory, WorkloadFailed, WorkloadUnavailable
from e2e.images import RegistryMirrors
from e2e.manifests import (
    ReleaseFile,
    ReleaseFiles,
    ReleaseManifest,
    load_release_manifest,
    load_yaml_documents,
    patched_manifest,
    proxy_patch,
)
from e2e.matrix import (
    ClusterGroup,
    KServeRelease,
    Matrix,
    MatrixCell,
    Selection,
    group_cells,
    load_matrix,
    version_key,
)
from e2e.results import CellResult, CheckStatus, Verdict, timed_check
from e2e.rollout import ImageUnavailable, RolloutFailed, wait_for_rollout
from e2e.tokens import mint_token

log = logging.getLogger(__name__)

METRICS_ACCESS_NAMESPACE = "kserve-compat"
METRICS_READER, NO_ACCESS = "metrics-reader", "no-access"
PREPARE_AHEAD = 2  # cluster groups prepared in the background ahead of the current one
SAMPLE_MODELS: tuple[tuple[str, checks.Protocol], ...] = (("sklearn-iris", "v1"), ("sklearn-iris-v2", "v2"))


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


class CellSkipped(HarnessError):
    """The cell cannot run here for a stated reason (recorded as ``skipped``)."""


def make_factory(options: HarnessOptions, matrix: Matrix | None = None) -> ProviderFactory:
    if options.provider == "local":
        from e2e.cluster.local import LocalProviderFactory

        return LocalProviderFactory(keep=options.keep_cluster, proxy_binaries=options.selection.proxy_binaries())
    if options.provider == "kind":
        from e2e.cluster.kind import KindProviderFactory

        return KindProviderFactory(
            matrix or load_matrix(options.matrix_file),
            keep=options.keep_cluster,
            keep_on_failure=options.keep_on_failure,
            reuse=options.reuse_cluster,
        )
    raise HarnessError(f"--provider {options.provider}: expected kind or local")


@dataclass
class MetricsAccess:
    """The two scrapers of every cell: one allowed to read /metrics, one not."""

    metrics_reader_token: str
    no_access_token: str

    def tokens(self) -> dict[str, str]:
        return {METRICS_READER: self.metrics_reader_token, NO_ACCESS: self.no_access_token}


@dataclass
class GroupCluster:
    """The cluster of one group, with what has been installed on it so far."""

    group: ClusterGroup
    provider: ClusterProvider
    manifest: ReleaseManifest | None = None
    access: MetricsAccess | None = None
    install_error: HarnessError | None = None
    samples_deployed: bool = False
    deviations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. the proxy's port remaps at install
    proxy_image: str = ""  # the image the controller Deployment currently asks for


class Harness:
    """One run of selected cells on one provider."""

    def __init__(self, options: HarnessOptions, factory: ProviderFactory | None = None) -> None:
        self.options = options
        self.matrix: Matrix = load_matrix(options.matrix_file)
        self.cells = self.matrix.select(options.selection)
        self.groups = group_cells(self.cells)
        self.files = ReleaseFiles.from_environment(options.manifest_dir)
        self.mirrors = RegistryMirrors.from_options(options.registry_mirrors)
        self.factory = factory or make_factory(options, self.matrix)
        self.results: list[CellResult] = []
        self._current: GroupCluster | None = None
        # Each group's cluster lives in its own ExitStack, closed when the group is done.
        self._stacks: dict[str, contextlib.ExitStack] = {}
        self._lock = threading.Lock()
        # The next group's cluster is created and installed in the background while the
        # current group's cells run: a group costs a control plane and an install, a cell
        # only a swap and a few requests. Two workers, two groups ahead: much of a
        # preparation is waiting on the API server, so two overlap well on two cores.
        self._preparer = ThreadPoolExecutor(max_workers=PREPARE_AHEAD, thread_name_prefix="prepare-group")
        self._prepared: dict[str, Future[GroupCluster]] = {}
        self.group_order = [group.id for group in self.groups]
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
        self.close_group()
        future = self._prepared.pop(group.id, None)
        if future is None:
            future = self._preparer.submit(self._prepare, group)
        self._current = future.result()  # a cluster that could not be created fails this cell
        self._prepare_next(group)
        return self._current

    def _prepare(self, group: ClusterGroup) -> GroupCluster:
        """Create a group's cluster and install its release (an install error is kept for
        its cells to report, not raised here)."""
        log.info("creating the cluster for %s", group.id)
        stack = contextlib.ExitStack()
        with self._lock:
            self._stacks[group.id] = stack
        provider = stack.enter_context(self.factory.cluster(group.id, group.kubernetes.version))
        cluster = GroupCluster(group=group, provider=provider)
        with contextlib.suppress(HarnessError):  # recorded in cluster.install_error
            self.install(cluster, group.cells[0])
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
        for group_id in self.group_order[position : position + PREPARE_AHEAD]:
            upcoming = next((g for g in self.groups if g.id == group_id), None)
            if upcoming is not None and group_id not in self._prepared:
                self._prepared[group_id] = self._preparer.submit(self._prepare, upcoming)

    def close_group(self) -> None:
        if self._current is not None:
            group_id = self._current.group.id
            log.info("tearing down the cluster for %s", group_id)
            with self._lock:
                stack = self._stacks.pop(group_id, None)
            self._current = None
            if stack is not None:
                self._teardown.submit(_tear_down, group_id, stack)

    def close(self) -> None:
        """Tear down the current cluster and any prepared ahead of time (also on Ctrl-C);
        returns once every cluster of the run is gone."""
        self.close_group()
        for future in self._prepared.values():
            future.cancel()
        self._preparer.shutdown(wait=True)
        self._teardown.shutdown(wait=True)
        with self._lock:
            stacks = list(self._stacks.values())
            self._stacks.clear()
        for stack in stacks:
            stack.close()
        self._prepared.clear()

    def recover(self, run: CellRun) -> None:
        """After a failed cell, make sure the next cell finds a working cluster."""
        if self._current is None:
            return
        try:
            repaired = self._current.provider.recover()
        except HarnessError as exc:
            run.result.notes.append(f"cluster replaced after this cell: {exc}")
            self.close_group()
            return
        if repaired:
            run.result.notes.append(f"cluster repaired after this cell: {repaired}")

    # -- installing ---------------------------------------------------------------------------

    def release_manifest(self, release: KServeRelease) -> ReleaseManifest:
        try:
            return load_release_manifest(release, self.files)
        except NotInOfflineDirectory as exc:
            raise CellSkipped(str(exc)) from None

    def install(self, cluster: GroupCluster, cell: MatrixCell) -> None:
        """Install the group's KServe release once; later cells of the group reuse it."""
        if cluster.install_error is not None:
            raise cluster.install_error
        if cluster.manifest is not None:
            return
        try:
            self._install(cluster, cell)
        except HarnessError as exc:
            cluster.install_error = exc
            raise

    def _install(self, cluster: GroupCluster, cell: MatrixCell) -> None:
        release = cell.release
        provider = cluster.provider
        api = provider.api_client()
        manifest = self.release_manifest(release)
        kserve.install_cert_manager(api, self._cert_manager_documents(cluster, release))
        # Install with a runnable proxy image already in place: a release whose shipped
        # image is retired could otherwise never become Available.
        rewrite = self.mirrors.rewrite if self.mirrors else None
        install_cell = self._install_cell(cluster, cell, rewrite)
        patch = proxy_patch(install_cell, manifest, rewrite)
        first = patched_manifest(install_cell, manifest, rewrite)
        if install_cell.proxy.image != cell.proxy.image:
            cluster.notes.append(f"installed with {install_cell.proxy.image}; the cell's image is swapped in after")
        runtimes = self._runtime_documents(release)
        profile = release.profile

        def controller_rollout() -> Any:
            cluster.notes += provider.sync_workloads()
            return wait_for_rollout(
                api,
                profile.namespace,
                profile.deployment,
                timeout_s=self.options.rollout_timeout_s,
                failure_evidence=self._failure_probe(provider, profile.namespace, profile.deployment),
            )

        installation = kserve.install_kserve(
            api,
            release,
            first.documents,
            runtimes,
            controller_runs=provider.runs_pods,
            wait_for_controller=controller_rollout,
        )
        cluster.deviations += installation.deviations
        Applier(api).apply(kserve.load_documents(kserve.MANIFESTS_DIR / "metrics-access.yaml"))
        cluster.access = MetricsAccess(
            metrics_reader_token=mint_token(api, METRICS_ACCESS_NAMESPACE, METRICS_READER),
            no_access_token=mint_token(api, METRICS_ACCESS_NAMESPACE, NO_ACCESS),
        )
        cluster.manifest = manifest
        cluster.proxy_image = _proxy_image_of(patch)

    def _install_cell(
        self, cluster: GroupCluster, cell: MatrixCell, rewrite: Callable[[str], str] | None
    ) -> MatrixCell:
        """The cell whose proxy image the release is installed with: this cell's, or the
        first of its group that is not retired and that the provider can run. Variants are
        left out: a variant that breaks the proxy must fail its own cell, not the install
        that every cell of the group shares."""
        plain = [MatrixCell(c.release, c.proxy, c.kubernetes) for c in [cell, *cluster.group.cells]]
        candidates = list({c.id: c for c in plain}.values())
        reasons = []
        for candidate in candidates:
            if candidate.proxy.retired:
                continue
            image = rewrite(candidate.proxy.image) if rewrite else candidate.proxy.image
            try:
                cluster.provider.load_images([image])
            except WorkloadUnavailable as exc:
                reasons.append(str(exc))
                continue
            return candidate
        raise CellSkipped(f"no proxy image of group {cluster.group.id} can run here: {'; '.join(reasons)[:300]}")

    def _cert_manager_documents(self, cluster: GroupCluster, release: KServeRelease) -> list[dict[str, Any]]:
        """cert-manager for the release: the whole install on kind, CRDs only locally.

        Locally only the CRDs matter (KServe's Issuer and Certificate must be accepted);
        when the offline directory lacks the release's version, the newest one it has is
        used and the substitution recorded.
        """
        local = not cluster.provider.runs_pods
        name = "cert-manager.crds.yaml" if local else "cert-manager.yaml"
        version = release.cert_manager
        try:
            text = self.files.text(ReleaseFile("cert-manager", version, name))
        except NotInOfflineDirectory:
            substitute = self._newest_offline("cert-manager") if local else None
            if substitute is None:
                raise
            text = self.files.text(ReleaseFile("cert-manager", substitute, name))
            cluster.deviations.append(f"cert-manager CRDs {substitute} used instead of {version} (offline directory)")
        return load_yaml_documents(text)

    def _newest_offline(self, project: str) -> str | None:
        if self.files.offline_dir is None:
            return None
        versions = [p.name for p in (self.files.offline_dir / project).glob("v*") if p.is_dir()]
        return max(versions, key=version_key) if versions else None

    def _runtime_documents(self, release: KServeRelease) -> list[dict[str, Any]]:
        if release.runtimes_file is None:
            return []
        manifest = load_release_manifest(release, self.files, release.runtimes_file)
        return list(manifest.documents)

    @staticmethod
    def _failure_probe(provider: ClusterProvider, namespace: str, deployment: str) -> Callable[[], list[str] | None]:
        """Evidence of broken pods of a Deployment (pull errors, crash loops), or None."""
        api = provider.api_client()
        selector = kserve.controller_pod_selector_of(api, namespace, deployment)

        def read_log(container: str, previous: bool) -> str:
            return provider.container_logs(namespace, selector, container, previous)

        return lambda: diagnostics.pod_failure_evidence(api, namespace, selector, read_log)


def _tear_down(group_id: str, stack: contextlib.ExitStack) -> None:
    """Close a group's cluster stack; a failure is logged (the group's cells are done)."""
    try:
        stack.close()
    except Exception:
        log.exception("tearing down the cluster for %s failed", group_id)


def _proxy_image_of(patch: dict[str, Any]) -> str:
    return str(patch["spec"]["template"]["spec"]["containers"][0]["image"])


class CellRun:
    """One cell's runbook. Use as ``with harness.run(cell, scenario) as run: run.step()...``."""

    def __init__(self, harness: Harness, cell: MatrixCell, scenario: str) -> None:
        self.harness = harness
        self.cell = cell
        self.scenario = scenario
        self.result = CellResult(
            cell_id=cell.id,
            provider=harness.options.provider,
            kserve_version=cell.release.version,
            proxy_alias=cell.proxy.alias,
            proxy_image=cell.proxy.image,
            kubernetes_version=cell.kubernetes.version,
            variant=cell.variant.name if cell.variant else "",
        )
        self.result.notes.append(f"scenario: {scenario}")
        if scenario == "migration":
            # Its own grid: the report groups cells by variant.
            self.result.cell_id = f"{cell.id}--migration"
            self.result.variant = "+".join(filter(None, [self.result.variant, "migration"]))
        self.cluster: GroupCluster | None = None
        self.diagnostics_dir: Path | None = None

    # -- setup --------------------------------------------------------------------------------

    def install_release(self) -> None:
        """Create (or reuse) the group's cluster and install the KServe release on it."""
        self.cluster = self.harness.cluster_for(self.cell)
        with timed_check(self.result, "install") as check:
            self.harness.install(self.cluster, self.cell)
            check.status, check.detail = CheckStatus.PASS, f"KServe {self.cell.release.version} installed"
        self.result.deviations = list(dict.fromkeys(self.cluster.provider.info.deviations + self.cluster.deviations))
        self.result.notes += self.cluster.notes

    def swap_proxy_image(self, image: str | None = None) -> None:
        """Patch the controller Deployment to the cell's proxy image and wait for the rollout."""
        cluster = self._cluster()
        assert cluster.manifest is not None
        profile = self.cell.release.profile
        cell = self.cell if image is None else _with_image(self.harness.matrix, self.cell, image)
        patch = proxy_patch(cell, cluster.manifest, self.harness.mirrors.rewrite if self.harness.mirrors else None)
        target = _proxy_image_of(patch)
        with timed_check(self.result, "proxy-rollout") as check:
            provider = cluster.provider
            provider.load_images([target])
            api = provider.api_client()
            kserve.patch_controller(api, profile, patch)
            self.result.notes += provider.sync_workloads()
            state = wait_for_rollout(
                api,
                profile.namespace,
                profile.deployment,
                timeout_s=self.harness.options.rollout_timeout_s,
                failure_evidence=Harness._failure_probe(provider, profile.namespace, profile.deployment),
            )
            cluster.proxy_image = target
            check.status, check.detail = CheckStatus.PASS, f"rolled out {target} ({state})"

    def deploy_sample_models(self) -> None:
        """Apply the sklearn-iris InferenceServices (v1 and v2 protocol) once per cluster."""
        cluster = self._cluster()
        if cluster.samples_deployed:
            return
        with timed_check(self.result, "deploy-samples") as check:
            api = cluster.provider.api_client()
            names = kserve.deploy_inference_services(api, self.cell.release, kserve.sample_inference_services())
            cluster.samples_deployed = True
            check.status, check.detail = CheckStatus.PASS, f"applied {', '.join(names)}"

    # -- assess ------------------------------------------------------------------------------

    def check_image_in_use(self) -> None:
        cluster = self._cluster()
        profile = self.cell.release.profile
        provider = cluster.provider
        api = provider.api_client()
        selector = kserve.controller_pod_selector_of(api, profile.namespace, profile.deployment)
        checks.check_image_in_use(
            self.result,
            api,
            profile.namespace,
            profile.deployment,
            profile.proxy_container,
            cluster.proxy_image,
            observed_images=provider.observed_images(profile.namespace, selector, profile.proxy_container),
        )

    def check_metrics_access(self) -> None:
        cluster = self._cluster()
        assert cluster.access is not None
        profile = self.cell.release.profile
        target = ServiceTarget(profile.namespace, profile.metrics_service, profile.metrics_port)
        with cluster.provider.endpoint(target) as address:
            checks.check_metrics_auth(
                self.result,
                f"https://{address}/metrics",
                metrics_reader_token=cluster.access.metrics_reader_token,
                no_access_token=cluster.access.no_access_token,
            )

    def check_inference(self) -> None:
        cluster = self._cluster()
        for name, protocol in SAMPLE_MODELS:
            with cluster.provider.inference_endpoint(kserve.SAMPLES_NAMESPACE, name) as address:
                checks.check_inference(self.result, f"http://{address}", name, protocol)

    def check_token_leak(self) -> None:
        """Search the proxy's logs (current and previous) for the tokens the checks sent."""
        cluster = self._cluster()
        assert cluster.access is not None
        profile = self.cell.release.profile
        provider = cluster.provider
        selector = kserve.controller_pod_selector_of(provider.api_client(), profile.namespace, profile.deployment)
        logs = provider.container_logs(profile.namespace, selector, profile.proxy_container)
        previous = provider.container_logs(profile.namespace, selector, profile.proxy_container, previous=True)
        checks.check_token_leak(self.result, "\n".join([previous, logs]), cluster.access.tokens())

    # -- migrate ----------------------------------------------------------------------------

    def migrate_proxy_image(self, from_image: str) -> None:
        """Swap from ``from_image`` to the cell's image while a prober keeps asking."""
        self.swap_proxy_image(from_image)
        cluster = self._cluster()
        assert cluster.access is not None
        profile = self.cell.release.profile
        target = ServiceTarget(profile.namespace, profile.metrics_service, profile.metrics_port)
        provider = cluster.provider
        with contextlib.ExitStack() as stack:
            metrics = stack.enter_context(provider.endpoint(target))
            models = []
            for name, protocol in SAMPLE_MODELS:
                address = stack.enter_context(provider.inference_endpoint(kserve.SAMPLES_NAMESPACE, name))
                models.append(checks.InferenceTarget(f"http://{address}", name, protocol))
            prober = checks.MetricsProber(f"https://{metrics}/metrics", cluster.access.metrics_reader_token, models)
            prober.start()
            try:
                time.sleep(0.5)  # a baseline before the swap
                self.swap_proxy_image()
                time.sleep(1.0)  # and after it: the outage window must have closed
            finally:
                summary = prober.stop()
            checks.check_probe(self.result, summary)

    # -- catch / finally ---------------------------------------------------------------------

    def _cluster(self) -> GroupCluster:
        if self.cluster is None:
            self.cluster = self.harness.cluster_for(self.cell)
        return self.cluster

    def fail_with(self, exc: BaseException) -> None:
        """Turn a failed step into the cell's verdict, with its evidence."""
        evidence: list[str] = list(getattr(exc, "evidence", []) or [])
        if isinstance(exc, ImageUnavailable):
            self.result.verdict = Verdict.IMAGE_UNAVAILABLE
        elif isinstance(exc, (CellSkipped, WorkloadUnavailable)):
            self.result.verdict = Verdict.SKIPPED
        elif isinstance(exc, (RolloutFailed, WorkloadFailed)):
            self.result.verdict = Verdict.FAIL
        else:
            self.result.verdict = Verdict.ERROR
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.result.reason = message if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {message}"
        if evidence:
            failing = self.result.failing_check
            if failing is not None:
                failing.evidence = (failing.evidence + evidence)[:30]
            else:
                self.result.notes += evidence[:10]

    def collect_diagnostics(self) -> None:
        if self.cluster is None:
            return
        profile = self.cell.release.profile
        directory = self.harness.options.reports_dir / "diagnostics" / self.cell.id
        try:
            self.diagnostics_dir = diagnostics.collect(
                self.cluster.provider.api_client(),
                self.cluster.provider,
                [profile.namespace, kserve.SAMPLES_NAMESPACE],
                directory,
                deployment=profile.deployment,
                isvc_names=[name for name, _ in SAMPLE_MODELS],
            )
        except Exception as exc:  # diagnostics must never hide the failure they explain
            log.warning("diagnostics for %s incomplete: %s", self.cell.id, exc)

    def finish(self) -> CellResult:
        self.result.conclude()
        self.result.duration_s = round(time.time() - self.result.started_at, 3)
        report.save_result(self.result, self.harness.options.reports_dir / "cells")
        self.harness.results.append(self.result)
        if self.harness.options.cluster_per_cell:
            self.harness.close_group()
        return self.result


@contextlib.contextmanager
def cell_run(harness: Harness, cell: MatrixCell, scenario: str) -> Iterator[CellRun]:
    """try: the scenario's steps; catch: verdict + diagnostics; finally: save the result."""
    run = CellRun(harness, cell, scenario)
    failed_step = False
    try:
        yield run
    except Exception as exc:
        failed_step = True
        run.fail_with(exc)
        log.info("%s: %s", cell.id, run.result.reason)
    finally:
        run.result.conclude()
        if run.result.verdict in (Verdict.FAIL, Verdict.ERROR, Verdict.IMAGE_UNAVAILABLE):
            run.collect_diagnostics()  # while the cluster still exists
            if run.cluster is not None:
                run.cluster.provider.mark_failed()  # honours --keep-on-failure
        if failed_step:
            harness.recover(run)
        run.finish()


def migration_start_image(cell: MatrixCell) -> str:
    """The image a migration starts from: the one the release ships, unless retired.

    A retired gcr.io/kubebuilder image cannot be pulled any more; an operator starts from
    its frozen copy on registry.k8s.io, and so does the scenario.
    """
    image = cell.release.proxy_image
    if image.startswith("gcr.io/kubebuilder/"):
        return "registry.k8s.io/kubebuilder/" + image.removeprefix("gcr.io/kubebuilder/")
    return image


def _with_image(matrix: Matrix, cell: MatrixCell, image: str) -> MatrixCell:
    return MatrixCell(cell.release, matrix.proxy_for_image(image), cell.kubernetes, cell.variant)
