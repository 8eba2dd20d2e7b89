"""check-metrics-services: every other Service that publishes a controller's metrics, as the
release's manifest lists them (``e2e.checks.metrics_services``)."""

from __future__ import annotations

from e2e.cell import CellRun
from e2e.checks.metrics_services import check_guarded_service, check_loopback_service, record_unreachable
from e2e.errors import HarnessError
from e2e.manifests.metrics_services import metrics_services
from e2e.matrix import MatrixCell
from e2e.scenario import PlanContext, Step
from e2e.targets import ServiceTarget


def act(run: CellRun) -> None:
    cluster = run.group_cluster()
    assert cluster.access is not None and cluster.manifest is not None
    provider = cluster.provider
    for listener in metrics_services(cluster.manifest.documents):
        if listener.service == run.cell.release.profile.metrics_service:
            continue  # check-metrics has it, in depth
        if listener.loopback_only:
            check_loopback_service(run.result, listener, provider.api_client(), runs_pods=provider.runs_pods)
            continue
        try:
            with provider.endpoint(ServiceTarget(listener.namespace, listener.service, listener.port)) as address:
                check_guarded_service(
                    run.result,
                    listener,
                    f"https://{address}/metrics",
                    metrics_reader_token=cluster.access.metrics_reader_token,
                )
        except HarnessError as exc:
            record_unreachable(run.result, listener, exc)


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    return [
        "each other Service of the manifest on a metrics listener: behind the proxy, no token 401 and "
        "metrics-reader 200; on a loopback-only listener, what a scrape meets at the pod's address (kind)"
    ]


check_metrics_services = Step("check-metrics-services", act, describe)
