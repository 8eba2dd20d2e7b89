"""What the migration watches: port-forwards to the metrics Service and the models (they follow
the pods across the rollout), the prober that keeps asking them, and what must hold after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e.apply import api_message
from e2e.checks.migration import InferenceTarget, MetricsProber, ProbeSummary
from e2e.errors import HarnessError, UsageError
from e2e.migrate.report import MigrationReport
from e2e.preflight.cluster import Connection
from e2e.preflight.metrics import kubectl_env, metrics_endpoint, resolve_kubectl
from e2e.preflight.model import REQUEST_TIMEOUT
from e2e.preflight.runner import LiveController
from e2e.targets import ServiceTarget
from e2e.text import one_line


def open_metrics(
    stack: contextlib.ExitStack,
    conn: Connection,
    live: LiveController,
    metrics_url: str | None,
    kubectl: str | None,
    report: MigrationReport,
    after: bool = False,
) -> str | None:
    """The proxied metrics URL through a port-forward that follows the Service's pods; None
    when nothing serves it before the change (the outage a retired image causes)."""
    try:
        return str(stack.enter_context(metrics_endpoint(conn, live.profile, metrics_url, kubectl)))
    except HarnessError as exc:
        if after:
            raise
        report.probe_note = (
            f"metrics could not be reached before the change ({one_line(exc)}): the outage is counted from the "
            "patch until they answer after the rollout"
        )
        return None


def model_service(conn: Connection, namespace: str, name: str) -> ServiceTarget:
    """The predictor Service of ``--inference NAMESPACE/NAME``, read before anything is written."""
    from e2e.kserve import InferenceServiceNotReady, predictor_service

    custom = k8s_client.CustomObjectsApi(conn.api)
    try:
        isvc = custom.get_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", namespace, "inferenceservices", name, _request_timeout=REQUEST_TIMEOUT
        )
        return predictor_service(isvc)
    except ApiException as exc:
        raise UsageError(f"--inference {namespace}/{name}: {exc.status} {api_message(exc)}") from None
    except InferenceServiceNotReady as exc:
        raise UsageError(f"--inference {namespace}/{name}: {exc}; expected a Ready InferenceService") from None


def open_model(
    stack: contextlib.ExitStack, conn: Connection, name: str, service: ServiceTarget, kubectl: str | None
) -> InferenceTarget:
    """A port-forward to the model's predictor Service (following its pods), as the prober's target."""
    from e2e.cluster.kind import port_forward, port_forward_argv

    argv = [*port_forward_argv(Path(resolve_kubectl(kubectl, "migrate")), service), *conn.kubectl_context()]
    address = stack.enter_context(port_forward(argv, kubectl_env(conn)))
    return InferenceTarget(f"http://{address}", name, readiness_only=True)


# Where the prober asks for metrics while nothing serves them (a closed port: refused at once).
# Where the prober asks for metrics while nothing serves them (a closed port: refused at once).
NOT_REACHABLE_YET = "https://127.0.0.1:1/metrics"


@contextlib.contextmanager
def probing(
    metrics_url: str | None, reader: str, targets: list[InferenceTarget], report: MigrationReport
) -> Iterator[MetricsProber]:
    """The prober from now until the verify step stops it (or the block ends, as on a failed
    rollout: what it saw until then goes in the report too). Without a metrics URL yet every
    metrics request fails until ``retarget_metrics``: the outage."""
    prober = MetricsProber(metrics_url or NOT_REACHABLE_YET, reader, targets, max_duration_s=3600.0)
    prober.start()
    try:
        yield prober
    finally:
        summary = prober.stop()
        if report.probe is None:
            report.probe = summary


def verify(summary: ProbeSummary, metrics_url: str, reader: str, no_access: str, report: MigrationReport) -> list[str]:
    """What must hold after the rollout: metrics answer the reader and refuse the others
    (the four auth paths of ``e2e.checks``), and no model request was lost."""
    from e2e.checks import check_metrics_auth
    from e2e.results import CellResult, CheckStatus

    problems = []
    if not summary.metrics.last_ok:
        problems.append(f"metrics still failing after the rollout: {summary.metrics.last_error}")
    lost = [t for t in summary.inference if t.failures]
    problems += [f"{t.name}: {t.failures} of {t.attempts} requests failed ({t.last_error})" for t in lost]
    cell = CellResult(
        cell_id="migrate",
        provider="live",
        kserve_version=report.kserve_version,
        proxy_alias="target",
        proxy_image=report.to_image,
        kubernetes_version="",
    )
    for check in check_metrics_auth(cell, metrics_url, metrics_reader_token=reader, no_access_token=no_access):
        if check.status is not CheckStatus.PASS:
            problems.append(f"{check.name}: {check.detail}")
    return problems
