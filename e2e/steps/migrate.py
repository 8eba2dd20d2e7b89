"""migrate: swap to the cell's image while a prober keeps calling metrics and both models.

No inference request may be lost; the metrics outage is measured and drawn in the report.
``rollback`` changes the image back the same way (``change_under_load``).
"""

from __future__ import annotations

import contextlib
import time

from e2e import checks
from e2e.cell import CellRun
from e2e.install import SAMPLE_MODELS
from e2e.matrix import MatrixCell
from e2e.scenario import PlanContext, Step
from e2e.steps.check_inference import inference_endpoint
from e2e.steps.swap import swap_lines, swap_to
from e2e.targets import ServiceTarget

PROBE_CHECK = "check: no inference request lost; the metrics outage window"


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
            time.sleep(1.0)  # and after it: the outage window must have closed
        finally:
            summary = prober.stop()
        checks.check_probe(run.result, summary)


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    return [
        "swap to the cell's image while a prober calls metrics (reader's token) and both models:",
        *swap_lines(cell, context),
        PROBE_CHECK,
    ]


migrate_under_load = Step("migrate", act, describe)
