"""check-inference: each sample, once KServe reports it Ready, answers v1 and v2 predictions
through its predictor; one KServe never makes Ready fails with KServe's condition messages."""

from __future__ import annotations

import contextlib

from e2e import checks, kserve
from e2e.cell import CellRun
from e2e.errors import WorkloadUnavailable
from e2e.install import SAMPLE_MODELS
from e2e.matrix import MatrixCell
from e2e.scenario import PlanContext, Step


def act(run: CellRun) -> None:
    cluster = run.group_cluster()
    for name, protocol in SAMPLE_MODELS:
        if cluster.serving_unavailable:
            checks.record_inference_not_checked(run.result, protocol, cluster.serving_unavailable)
            continue
        try:
            with inference_endpoint(run, name) as address:
                checks.check_inference(run.result, f"http://{address}", name, protocol)
        except kserve.InferenceServiceNotReady as exc:
            checks.record_inference_not_ready(run.result, protocol, str(exc), exc.evidence)
        except WorkloadUnavailable as exc:  # e.g. no model server of this release here
            checks.record_inference_not_checked(run.result, protocol, str(exc))


def inference_endpoint(run: CellRun, name: str) -> contextlib.AbstractContextManager[str]:
    """The address of sample ``name``'s predictor, once KServe reports it Ready."""
    cluster = run.group_cluster()
    return kserve.inference_endpoint(
        cluster.provider,
        kserve.SAMPLES_NAMESPACE,
        name,
        timeout_s=run.harness.options.rollout_timeout_s,
        failure_evidence=kserve.controller_denied(cluster.provider, run.cell.release.profile),
    )


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    return [
        "wait for KServe's Ready condition of each sample (fail fast, with its messages, when RBAC denies it)",
        "v1 + v2 predictions of sklearn-iris ([1, 1]) through its predictor Service",
    ]


check_inference = Step("check-inference", act, describe)
