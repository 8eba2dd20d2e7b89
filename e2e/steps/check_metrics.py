"""check-metrics: RBAC on the metrics endpoint, through the proxy, once the manager reconciles."""

from __future__ import annotations

from e2e import checks
from e2e.cell import CellRun
from e2e.checks.reconciling import wait_until_reconciling
from e2e.matrix import MatrixCell
from e2e.scenario import PlanContext, Step
from e2e.targets import ServiceTarget


def act(run: CellRun) -> None:
    cluster = run.group_cluster()
    assert cluster.access is not None
    profile = run.cell.release.profile
    target = ServiceTarget(profile.namespace, profile.metrics_service, profile.metrics_port)
    with cluster.provider.endpoint(target) as address:
        # The checks run once the manager reconciles (a replaced pod waits for the lease).
        wait = wait_until_reconciling(f"https://{address}/metrics", cluster.access.metrics_reader_token)
        if wait.seconds >= 1.0:
            run.result.notes.append(
                f"the manager's reconcile metrics appeared {wait.seconds:.1f}s after the metrics checks began"
                if wait.reconciling
                else f"no reconcile metrics after {wait.seconds:.1f}s (last saw: {wait.last_seen})"
            )
        checks.check_metrics_auth(
            run.result,
            f"https://{address}/metrics",
            metrics_reader_token=cluster.access.metrics_reader_token,
            no_access_token=cluster.access.no_access_token,
        )


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    return ["no token 401, garbage token 401, no-access 403, metrics-reader 200 + controller_runtime metrics"]


check_metrics_access = Step("check-metrics", act, describe)
