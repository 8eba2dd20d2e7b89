"""The other Services that publish a controller's metrics (``metrics-via-<service>``).

``check-metrics`` tests the profile's metrics Service in depth. A release publishes more:
KServe's controller has a second Service on the proxy's port 8443
(``kserve-controller-manager-service``), and v0.16's manifest adds
``llmisvc-controller-manager-service:8443`` in front of a manager whose metrics listen on
``127.0.0.1:8443`` (``e2e.manifests.metrics_services`` reads them). Each gets one check:

- a listener every pod address reaches (the proxy): no token 401, the metrics-reader's
  token 200, through the provider's way to the Service;
- a listener bound to loopback: what a scrape of the Service meets at the pod's address,
  asked of the API server's Service proxy, which dials the Service's endpoints as Prometheus
  does (a port-forward would not do: it connects inside the pod, where loopback answers).
  The manifest says nothing answers there; the check passes when the cluster agrees, and the
  cell's notes carry the finding either way. It needs pods with addresses: the local tier
  has none, and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import requests
import tenacity
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from e2e.checks.session import get, response_evidence
from e2e.manifests.metrics_services import MetricsService
from e2e.results import CellResult, CheckResult, CheckStatus, timed_check
from e2e.text import one_line

log = logging.getLogger(__name__)

#: How long a Service may have no ready pod behind it before the check gives up: the
#: controller's pods start with the install, so this is only their last seconds of startup.
ENDPOINTS_WAIT_S = 120.0
# What the API server says when it reached the pod's address and nothing listened there.
REFUSED = "connection refused"
NO_ENDPOINTS = "no endpoints available"


def check_name(listener: MetricsService) -> str:
    return f"metrics-via-{listener.service}" + (f"-{listener.port}" if listener.one_of_several_ports else "")


def record_unreachable(cell: CellResult, listener: MetricsService, error: Exception) -> CheckResult:
    """The provider could not reach the Service at all (e.g. its port-forward failed): an
    error of this check alone, so the cell's other checks still run."""
    with timed_check(cell, check_name(listener)) as check:
        check.status = CheckStatus.ERROR
        check.detail = f"{listener.describe()}: not reached: {one_line(error)}"
    return check


def check_guarded_service(
    cell: CellResult, listener: MetricsService, metrics_url: str, *, metrics_reader_token: str
) -> CheckResult:
    """No token 401 and the metrics-reader's token 200 at ``metrics_url`` (the Service's metrics
    path as the provider reaches it)."""
    with timed_check(cell, check_name(listener)) as check:
        try:
            anonymous = get(metrics_url, None, connect_wait_s=5.0)
            reader = get(metrics_url, metrics_reader_token, connect_wait_s=5.0)
        except requests.RequestException as exc:
            check.status = CheckStatus.ERROR
            check.detail = f"{listener.describe()}: {metrics_url} unreachable: {type(exc).__name__}"
            check.evidence = [one_line(exc)]
            return check
        check.evidence = [*response_evidence(anonymous), *response_evidence(reader)]
        ok = anonymous.status_code == 401 and reader.status_code == 200
        check.status = CheckStatus.PASS if ok else CheckStatus.FAIL
        check.detail = (
            f"{listener.service}:{listener.port}: no token {anonymous.status_code} (expected 401), "
            f"metrics-reader {reader.status_code} (expected 200)"
        )
    return check


@dataclass(frozen=True)
class PodAddressAnswer:
    """What the API server's Service proxy met at the Service's endpoints."""

    status: int
    body: str

    @property
    def refused(self) -> bool:
        return self.status == 503 and REFUSED in self.body

    @property
    def no_endpoint(self) -> bool:
        """The API server found no address to dial (it answers for itself, nothing was tried)."""
        return self.status == 503 and NO_ENDPOINTS in self.body

    @property
    def from_the_api_server(self) -> bool:
        """A 503 is the API server's own word (no endpoint, refused, timeout, TLS): only any
        other status is the listener's answer."""
        return self.status == 503


def through_pod_address(api: k8s_client.ApiClient, listener: MetricsService) -> PodAddressAnswer:
    """GET /metrics of the Service through the API server's Service proxy (it dials a ready
    endpoint's pod address, HTTPS unverified, without the caller's credentials)."""
    core = k8s_client.CoreV1Api(api)
    try:
        response = core.connect_get_namespaced_service_proxy_with_path(
            f"https:{listener.service}:{listener.port}", listener.namespace, "metrics", _preload_content=False
        )
    except ApiException as exc:
        body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
        return PodAddressAnswer(int(exc.status or 0), body)
    return PodAddressAnswer(int(response.status), response.data.decode(errors="replace"))


def wait_for_ready_endpoint(api: k8s_client.ApiClient, listener: MetricsService, wait_s: float) -> str | None:
    """None once one of the Service's EndpointSlices has a ready address; else what they last said."""
    discovery = k8s_client.DiscoveryV1Api(api)
    last = "no EndpointSlice yet"

    def ready() -> bool:
        nonlocal last
        try:
            slices = discovery.list_namespaced_endpoint_slice(
                listener.namespace, label_selector=f"kubernetes.io/service-name={listener.service}"
            ).items
        except ApiException as exc:
            last = f"EndpointSlices of {listener.service}: {exc.status} {exc.reason}"
            return False
        endpoints = [endpoint for piece in slices for endpoint in piece.endpoints or []]
        ready = [a for e in endpoints if e.conditions is None or e.conditions.ready is not False for a in e.addresses]
        waiting = [
            a for e in endpoints if e.conditions is not None and e.conditions.ready is False for a in e.addresses
        ]
        last = f"ready {ready or 'none'}, not ready {waiting or 'none'}"
        return bool(ready)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(wait_s),
        wait=tenacity.wait_exponential(multiplier=0.5, max=5),
        retry=tenacity.retry_if_result(lambda done: not done),
        before_sleep=lambda state: log.info("waiting for a ready pod behind %s (last: %s)", listener.service, last),
        retry_error_callback=lambda state: False,
    )
    return None if retrying(ready) else last


def check_loopback_service(
    cell: CellResult,
    listener: MetricsService,
    api: k8s_client.ApiClient,
    *,
    runs_pods: bool,
    endpoints_wait_s: float = ENDPOINTS_WAIT_S,
) -> CheckResult:
    """What a scrape of a Service whose listener is bound to loopback meets at the pod's address."""
    with timed_check(cell, check_name(listener)) as check:
        if not runs_pods:
            check.status = CheckStatus.SKIPPED
            check.detail = (
                f"{listener.describe()}: no pod addresses on this tier; whether the Service reaches a "
                "loopback listener is seen on kind"
            )
            return check
        waited = wait_for_ready_endpoint(api, listener, endpoints_wait_s)
        if waited is not None:
            check.status = CheckStatus.ERROR
            check.detail = f"{listener.service}: no ready pod behind it after {endpoints_wait_s:.0f}s ({waited})"
            return check
        answer = through_pod_address(api, listener)
        check.evidence = [
            f"GET (API server Service proxy) https:{listener.service}:{listener.port}/metrics -> {answer.status}",
            "body: " + one_line(answer.body, 300),
        ]
        if answer.no_endpoint:
            check.status = CheckStatus.ERROR
            check.detail = f"{listener.service}:{listener.port}: the API server found no pod address to dial"
        elif answer.from_the_api_server and not answer.refused:
            check.status = CheckStatus.ERROR
            check.detail = (
                f"{listener.service}:{listener.port}: the API server could not tell (HTTP 503: "
                f"{one_line(answer.body, 160)})"
            )
        elif answer.refused:
            check.status = CheckStatus.PASS
            check.detail = (
                f"{listener.service}:{listener.port}: nothing answers at the pod's address, as the manifest says "
                f"({listener.container} listens on {listener.listen} only)"
            )
            cell.notes.append(
                f"finding: {listener.describe()}: a scrape through this Service fails (connection refused at "
                "the pod's address: the listener is bound to loopback inside the pod)"
            )
        else:
            check.status = CheckStatus.FAIL
            check.detail = (
                f"{listener.service}:{listener.port}: the listener answered HTTP {answer.status} through the "
                f"Service, expected connection refused ({listener.container} listens on {listener.listen})"
            )
            cell.notes.append(f"finding: {listener.describe()}: answered HTTP {answer.status} through the Service")
    return check
