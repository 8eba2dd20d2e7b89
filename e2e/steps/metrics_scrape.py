"""metrics-scrape: the group's real Prometheus scrapes the metrics through the proxy, with
the reader's token (up) and the no-access one (403), in a scrape newer than the swap."""

from __future__ import annotations

from e2e import scrape
from e2e.availability import in_ci
from e2e.cell import CellRun
from e2e.errors import EnvironmentMissing, HarnessError
from e2e.matrix import MatrixCell
from e2e.scenario import PlanContext, Step


def act(run: CellRun) -> None:
    cluster = run.group_cluster()
    error = cluster.prometheus_error
    if error is not None:
        # A missing binary must not let CI go green by skipping; a provider that runs no
        # Prometheus yet (kind) is a stated gap, skipped with its reason.
        missing = isinstance(error, EnvironmentMissing)
        scrape.record_unavailable(run.result, str(error), as_error=missing and in_ci())
        return
    try:
        endpoint = cluster.provider.prometheus_endpoint()
    except HarnessError as exc:  # Prometheus itself broke: the harness's error, not the cell's
        scrape.record_unavailable(run.result, str(exc), as_error=True, evidence=getattr(exc, "evidence", []))
        return
    with endpoint as address:
        scrape.check_metrics_scrape(
            run.result, scrape.PrometheusAPI(f"http://{address}"), cluster.scrape_jobs, run.swapped_at
        )


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    return [
        f"the group's Prometheus scrapes https://<metrics Service>/metrics every {scrape.SCRAPE_INTERVAL}"
        " (bearer_token_file, insecure_skip_verify); poll its API until a scrape newer than the swap:",
        f"job {scrape.READER_JOB} (ServiceAccount prometheus): up == 1, {scrape.RECONCILE_METRIC} queryable",
        f"job {scrape.NO_ACCESS_JOB} (ServiceAccount no-access): up == 0, 403 in lastError",
    ]


check_metrics_scrape = Step("metrics-scrape", act, describe)
