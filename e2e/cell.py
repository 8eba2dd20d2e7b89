"""One cell's run: its state while its scenario's steps act on it, and a failure turned into
a verdict with its evidence and diagnostics.

The actions live with their steps (``e2e/steps/``), which talk to the API server through
shared code (``kserve``, ``checks``, ...); only ``ClusterProvider`` methods differ between
the kind and local tiers. The order of the steps is a ``Scenario``'s (``e2e/scenario.py``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from e2e import diagnostics, kserve, report, support
from e2e.errors import HarnessError, WorkloadFailed, WorkloadUnavailable
from e2e.install import SAMPLE_MODELS, CellSkipped, GroupCluster
from e2e.matrix import MatrixCell
from e2e.results import CellResult, Verdict
from e2e.rollout import ImageUnavailable, RolloutFailed, node_out_of_disk, registry_unreached

if TYPE_CHECKING:
    from e2e.run import Harness

log = logging.getLogger(__name__)


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

    # -- catch / finally ---------------------------------------------------------------------

    def group_cluster(self) -> GroupCluster:
        """The cluster of the cell's group (created, or adopted, on first use)."""
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
        if isinstance(exc, ImageUnavailable) and node_out_of_disk("\n".join([str(exc), *evidence])):
            # Seen when a host's disk filled during a grid: served images ended "unavailable".
            self.result.verdict = Verdict.ERROR
            self.result.reason = (
                "the node ran out of disk while pulling, so the image is not known to be gone: "
                f"{str(exc).splitlines()[0]}"
            )
            self._add_evidence(evidence)
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
