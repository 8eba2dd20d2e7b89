"""One cell's run: the actions its scenario's steps call, and a failure turned into a verdict.

Every action talks to the API server through shared code (``kserve``, ``checks``, ...);
only ``ClusterProvider`` methods differ between the kind and local tiers. The order of
the actions is not decided here: a ``Scenario`` (``e2e/scenario.py``) lists them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from e2e import checks, diagnostics, kserve, model_store, report, scrape, support
from e2e.availability import in_ci
from e2e.checks.reconciling import wait_until_reconciling
from e2e.errors import EnvironmentMissing, HarnessError, WorkloadFailed, WorkloadUnavailable
from e2e.install import SAMPLE_MODELS, CellSkipped, GroupCluster, failure_probe, proxy_image_of
from e2e.manifests import proxy_patch
from e2e.matrix import Matrix, MatrixCell, migration_start_image
from e2e.results import CellResult, CheckStatus, Verdict, timed_check
from e2e.rollout import ImageUnavailable, RolloutFailed, registry_unreached, wait_for_rollout
from e2e.targets import ServiceTarget

if TYPE_CHECKING:
    from e2e.run import Harness

log = logging.getLogger(__name__)

# Without a kubelet nothing pulls: a retired image's verdict then comes from the matrix.
RETIRED_BY_MATRIX = (
    "image-unavailable by the matrix's registry status ({note}); this tier pulls no images, no registry was asked"
)


class CellRun:
    """The state of one cell while its scenario's steps run."""

    def __init__(self, harness: Harness, cell: MatrixCell, scenario: str, result_id: str, grid: str = "") -> None:
        """``scenario`` names the runbook, ``result_id`` its result for this cell; ``grid`` (if
        the scenario declares one) is the report's grid its results stand in."""
        self.harness = harness
        self.cell = cell
        self.result = CellResult(
            cell_id=result_id,
            provider=harness.options.provider,
            kserve_version=cell.release.version,
            proxy_alias=cell.proxy.alias,
            proxy_image=cell.proxy.image,
            kubernetes_version=cell.kubernetes.version,
            variant=cell.variant.name if cell.variant else "",
            scenario=scenario,
        )
        window = support.verdict(cell)
        self.result.support, self.result.support_reason = window.support.value, window.reason
        if grid:
            # The report groups cells by variant: the scenario's grid is one.
            self.result.variant = "+".join(filter(None, [self.result.variant, grid]))
        self.cluster: GroupCluster | None = None
        self.diagnostics_dir: Path | None = None
        # When the cell's image last rolled out: the metrics-scrape check wants a newer scrape.
        self.swapped_at = self.result.started_at

    # -- setup --------------------------------------------------------------------------------

    def install_release(self) -> None:
        """Create (or reuse) the group's cluster and install the KServe release on it."""
        self.cluster = self.harness.cluster_for(self.cell)
        with timed_check(self.result, "install") as check:
            self.harness.installer.install(self.cluster, self.cell)
            check.status, check.detail = CheckStatus.PASS, f"KServe {self.cell.release.version} installed"
        self.result.deviations = list(dict.fromkeys(self.cluster.provider.info.deviations + self.cluster.deviations))
        self.result.kubernetes_server = self.cluster.provider.server_version()
        self.result.notes += self.cluster.notes

    def swap_proxy_image(self, image: str | None = None) -> None:
        """Patch the controller Deployment to the cell's proxy image (or ``image``) and wait
        for the rollout; a pull error ends the cell ``image-unavailable``."""
        cluster = self._cluster()
        assert cluster.manifest is not None
        profile = self.cell.release.profile
        cell = self.cell if image is None else _with_image(self.harness.matrix, self.cell, image)
        rewrite = self.harness.mirrors.rewrite if self.harness.mirrors else None
        patch = proxy_patch(cell, cluster.manifest, rewrite)
        target = proxy_image_of(patch)
        provider = cluster.provider
        with timed_check(self.result, "proxy-rollout") as check:
            if cell.proxy.retired and not provider.runs_pods:
                message = RETIRED_BY_MATRIX.format(note=cell.proxy.note or "retired")
                self.result.deviations.append(f"{target}: {message}")
                raise ImageUnavailable(f"{target}: {message}")
            provider.load_images([target])
            api = provider.api_client()
            kserve.patch_controller(api, profile, patch)
            self.result.notes += provider.sync_workloads()
            state = wait_for_rollout(
                api,
                profile.namespace,
                profile.deployment,
                timeout_s=self.harness.options.rollout_timeout_s,
                failure_evidence=failure_probe(provider, profile.namespace, profile.deployment),
            )
            cluster.proxy_image = target
            self.swapped_at = time.time()
            check.status, check.detail = CheckStatus.PASS, f"rolled out {target} ({state})"

    def swap_to_start_image(self) -> None:
        """Put the image a migration starts from in place: the one the release's manifest
        ships (see ``migration_start_image``)."""
        cluster = self._cluster()
        assert cluster.manifest is not None
        self.swap_proxy_image(migration_start_image(self.cell, shipped=cluster.manifest.proxy_image))

    def deploy_sample_models(self) -> None:
        """Apply the sklearn-iris InferenceServices (v1 and v2 protocol) once per cluster."""
        cluster = self._cluster()
        if cluster.samples_deployed:
            self.result.notes.append("sample InferenceServices already deployed by an earlier cell of the group")
            return
        with timed_check(self.result, "deploy-samples") as check:
            api = cluster.provider.api_client()
            samples = kserve.sample_inference_services()
            if cluster.model_store_uri:
                samples, replaced = model_store.rewrite_storage_uris(samples, cluster.model_store_uri)
                cluster.deviations.append(
                    f"samples' storageUri {', '.join(replaced)} rewritten to {cluster.model_store_uri}: "
                    "an in-cluster model store (python -m http.server in the sklearnserver image built here) "
                    "serves the iris model trained here with the release's scikit-learn; no internet to fetch "
                    "the original, KServe's storage initializer downloads this one"
                )
            names = kserve.deploy_inference_services(api, self.cell.release, samples)
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
            # The checks run once the manager reconciles (a replaced pod waits for the lease).
            wait = wait_until_reconciling(f"https://{address}/metrics", cluster.access.metrics_reader_token)
            if wait.seconds >= 1.0:
                self.result.notes.append(
                    f"the manager's reconcile metrics appeared {wait.seconds:.1f}s after the metrics checks began"
                    if wait.reconciling
                    else f"no reconcile metrics after {wait.seconds:.1f}s (last saw: {wait.last_seen})"
                )
            checks.check_metrics_auth(
                self.result,
                f"https://{address}/metrics",
                metrics_reader_token=cluster.access.metrics_reader_token,
                no_access_token=cluster.access.no_access_token,
            )

    def check_metrics_scrape(self) -> None:
        """Ask the group's Prometheus for a scrape newer than the swap, through the proxy."""
        cluster = self._cluster()
        error = cluster.prometheus_error
        if error is not None:
            # A missing binary must not let CI go green by skipping; a provider that runs no
            # Prometheus yet (kind) is a stated gap, skipped with its reason.
            missing = isinstance(error, EnvironmentMissing)
            scrape.record_unavailable(self.result, str(error), as_error=missing and in_ci())
            return
        try:
            endpoint = cluster.provider.prometheus_endpoint()
        except HarnessError as exc:  # Prometheus itself broke: the harness's error, not the cell's
            scrape.record_unavailable(self.result, str(exc), as_error=True, evidence=getattr(exc, "evidence", []))
            return
        with endpoint as address:
            scrape.check_metrics_scrape(
                self.result, scrape.PrometheusAPI(f"http://{address}"), cluster.scrape_jobs, self.swapped_at
            )

    def check_inference(self) -> None:
        """Each sample, once KServe reports it Ready, answers through its predictor; one
        KServe never makes Ready fails with KServe's condition messages as evidence."""
        cluster = self._cluster()
        for name, protocol in SAMPLE_MODELS:
            if cluster.serving_unavailable:
                checks.record_inference_not_checked(self.result, protocol, cluster.serving_unavailable)
                continue
            try:
                with self._inference_endpoint(name) as address:
                    checks.check_inference(self.result, f"http://{address}", name, protocol)
            except kserve.InferenceServiceNotReady as exc:
                checks.record_inference_not_ready(self.result, protocol, str(exc), exc.evidence)
            except WorkloadUnavailable as exc:  # e.g. no model server of this release here
                checks.record_inference_not_checked(self.result, protocol, str(exc))

    def _inference_endpoint(self, name: str) -> contextlib.AbstractContextManager[str]:
        return kserve.inference_endpoint(
            self._cluster().provider,
            kserve.SAMPLES_NAMESPACE,
            name,
            timeout_s=self.harness.options.rollout_timeout_s,
            failure_evidence=kserve.controller_denied(self._cluster().provider, self.cell.release.profile),
        )

    def check_token_leak(self) -> None:
        """Search the proxy's logs (current and previous) for the tokens the checks and the
        group's Prometheus sent."""
        cluster = self._cluster()
        assert cluster.access is not None
        profile = self.cell.release.profile
        provider = cluster.provider
        selector = kserve.controller_pod_selector_of(provider.api_client(), profile.namespace, profile.deployment)
        logs = provider.container_logs(profile.namespace, selector, profile.proxy_container)
        previous = provider.container_logs(profile.namespace, selector, profile.proxy_container, previous=True)
        checks.check_token_leak(self.result, "\n".join([previous, logs]), cluster.access.tokens())

    # -- migrate ----------------------------------------------------------------------------

    def migrate_under_load(self) -> None:
        """Swap to the cell's image while a prober keeps calling metrics and both models."""
        cluster = self._cluster()
        assert cluster.access is not None
        profile = self.cell.release.profile
        target = ServiceTarget(profile.namespace, profile.metrics_service, profile.metrics_port)
        provider = cluster.provider
        with contextlib.ExitStack() as stack:
            metrics = stack.enter_context(provider.endpoint(target))
            models = []
            if cluster.serving_unavailable:
                self.result.notes.append(f"migration probed metrics only: {cluster.serving_unavailable}")
            for name, protocol in [] if cluster.serving_unavailable else SAMPLE_MODELS:
                address = stack.enter_context(self._inference_endpoint(name))
                models.append(checks.InferenceTarget(f"http://{address}", name, protocol))
            prober = checks.MetricsProber(f"https://{metrics}/metrics", cluster.access.metrics_reader_token, models)
            prober.start()
            try:
                time.sleep(0.5)  # a baseline before the swap
                prober.mark("swap")
                self.swap_proxy_image()
                prober.mark("rolled out")
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
        broken_registry = self.cluster.provider.registry_problem() if self.cluster is not None else []
        if isinstance(exc, ImageUnavailable) and broken_registry:
            # Not the image's fault: a registry mirror of the run died under the pull.
            self.result.verdict = Verdict.ERROR
            self.result.reason = f"{broken_registry[0]}; the pull failed with: {str(exc).splitlines()[0]}"
            self.result.notes += broken_registry[:12]
            return
        if isinstance(exc, ImageUnavailable) and registry_unreached("\n".join([str(exc), *evidence])):
            # The registry never answered: whether the image exists is unknown, not "no".
            self.result.verdict = Verdict.ERROR
            self.result.reason = f"the registry could not be reached, so the image is not known to be gone: {exc}"
            self._add_evidence(evidence)
            return
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
        self._add_evidence(evidence)

    def _add_evidence(self, evidence: list[str]) -> None:
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
        directory = self.harness.options.reports_dir / "diagnostics" / self.result.cell_id
        try:
            self.diagnostics_dir = diagnostics.collect(
                self.cluster.provider.api_client(),
                self.cluster.provider,
                [profile.namespace, kserve.SAMPLES_NAMESPACE],
                directory,
                deployment=profile.deployment,
                isvc_names=[name for name, _ in SAMPLE_MODELS],
            )
            self.result.diagnostics = diagnostics.summary_lines(self.diagnostics_dir)
        except Exception as exc:  # diagnostics must never hide the failure they explain
            log.warning("diagnostics for %s incomplete: %s", self.cell.id, exc)

    def finish(self) -> CellResult:
        if self.cluster is not None:  # what the cluster learned during the cell, e.g. how a predictor was played
            learned = self.cluster.provider.info.deviations + self.cluster.deviations
            self.result.deviations = list(dict.fromkeys(self.result.deviations + learned))
        self.result.conclude()
        self.result.duration_s = round(time.time() - self.result.started_at, 3)
        report.save_result(self.result, self.harness.options.reports_dir / "cells")
        self.harness.results.append(self.result)
        if self.harness.options.cluster_per_cell:
            self.harness.close_group()
        return self.result


def _with_image(matrix: Matrix, cell: MatrixCell, image: str) -> MatrixCell:
    return MatrixCell(cell.release, matrix.proxy_for_image(image), cell.kubernetes, cell.variant)
