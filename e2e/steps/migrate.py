"""migrate: swap to the cell's image while a prober keeps calling metrics and both models.

No inference request may be lost; the metrics outage is measured and drawn in the report.
``rollback`` changes the image back the same way (``change_under_load``).
"""

from __future__ import annotations

import contextlib
import logging
import time

import tenacity

from e2e import checks
from e2e.cell import CellRun
from e2e.install import SAMPLE_MODELS
from e2e.matrix import MatrixCell
from e2e.scenario import PlanContext, Step
from e2e.steps.check_inference import inference_endpoint
from e2e.steps.swap import swap_lines, swap_to
from e2e.targets import ServiceTarget

PROBE_CHECK = "check: no inference request lost; the metrics outage window"
# After the rollout, probing goes on until metrics answer this many times in a row.
SETTLED_STREAK, SETTLE_MIN_S, SETTLE_MAX_S = 5, 1.0, 30.0
log = logging.getLogger(__name__)


def act(run: CellRun) -> None:
    change_under_load(run, None)


def change_under_load(run: CellRun, image: str | None) -> None:
    """Swap to the cell's image (or ``image``) while a prober calls metrics (with the
    reader's token) and both models; record what it saw."""
    cluster = run.group_cluster()
    assert cluster.access is not None
    profile = run.cell.release.profile
    target = ServiceTarget(profile.namespace, profile.metrics_service, profile.metrics_port)
    with contextlib.ExitStack() as stack:
        metrics = stack.enter_context(cluster.provider.endpoint(target))
        models = []
        if cluster.serving_unavailable:
            run.result.notes.append(f"the image change probed metrics only: {cluster.serving_unavailable}")
        for name, protocol in [] if cluster.serving_unavailable else SAMPLE_MODELS:
            address = stack.enter_context(inference_endpoint(run, name))
            models.append(checks.InferenceTarget(f"http://{address}", name, protocol))
        prober = checks.MetricsProber(f"https://{metrics}/metrics", cluster.access.metrics_reader_token, models)
        prober.start()
        try:
            time.sleep(0.5)  # a baseline before the swap
            prober.mark("swap")
            swap_to(run, image)
            prober.mark("rolled out")
            wait_for_metrics_to_settle(prober)
        finally:
            summary = prober.stop()
        checks.check_probe(run.result, summary)


def wait_for_metrics_to_settle(prober: checks.MetricsProber) -> None:
    """Probe on after the rollout until metrics answer SETTLED_STREAK times in a row (at
    least SETTLE_MIN_S, at most SETTLE_MAX_S): the old pod's end can still break the
    forwarded connection after the rollout is complete (seen under load: the last request
    of a fixed 1 s tail failed, so the outage was still open when the probe stopped). An
    outage that outlasts the bound is the check's failure, with its last error."""
    time.sleep(SETTLE_MIN_S)

    def log_wait(state: tenacity.RetryCallState) -> None:
        if state.attempt_number % 8 != 1:  # about every 2 s
            return
        streak, error = state.outcome.result() if state.outcome else (0, "")
        log.info(
            "waiting for metrics to answer %d times in a row after the rollout: %d so far; last error: %s",
            SETTLED_STREAK,
            streak,
            error or "none",
        )

    with contextlib.suppress(tenacity.RetryError):
        tenacity.Retrying(
            retry=tenacity.retry_if_result(lambda now: now[0] < SETTLED_STREAK),
            stop=tenacity.stop_after_delay(SETTLE_MAX_S - SETTLE_MIN_S),
            wait=tenacity.wait_fixed(0.25),
            before_sleep=log_wait,
        )(prober.metrics_now)


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    return [
        "swap to the cell's image while a prober calls metrics (reader's token) and both models:",
        *swap_lines(cell, context),
        PROBE_CHECK,
    ]


migrate_under_load = Step("migrate", act, describe)
