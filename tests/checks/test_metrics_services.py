"""``metrics-via-<service>`` for a loopback-only listener, against a real API server's Service proxy.

The API server (etcd + kube-apiserver processes) dials a Service's endpoints as a scrape
does. Here the endpoints are written by hand (with a Pod object of that address, which the
proxy requires) and point at this host's own non-loopback address (the API server refuses to
proxy to loopback): a port nothing listens on gives the
"connection refused" a loopback-only listener gives on kind; a plain-HTTP listener there is
"something answered".
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme
from helpers.cells import new_cell
from kubernetes import client as k8s_client

from e2e.availability import unavailable
from e2e.checks.metrics_services import check_loopback_service
from e2e.manifests.metrics_services import MetricsService
from e2e.results import CheckStatus

NAMESPACE = "kserve"


def host_address() -> str:
    """An IPv4 address of this host other than loopback (the API server proxies to none of those)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
            address = str(probe.getsockname()[0])
        except OSError as exc:
            unavailable(f"this host has no non-loopback IPv4 address: {exc}")
    if address.startswith("127."):
        unavailable("this host has no non-loopback IPv4 address")
    return address


def closed_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def listener(service: str) -> MetricsService:
    return MetricsService(
        NAMESPACE, service, 8443, "llmisvc-controller-manager", "manager", "--metrics-addr", "127.0.0.1:8443"
    )


@pytest.fixture(scope="module")
def namespace(api: k8s_client.ApiClient) -> str:
    core = k8s_client.CoreV1Api(api)
    core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=NAMESPACE)))
    # No controller-manager runs here to create the namespace's default ServiceAccount.
    core.create_namespaced_service_account(
        NAMESPACE, k8s_client.V1ServiceAccount(metadata=k8s_client.V1ObjectMeta(name="default"))
    )
    return NAMESPACE


def service_to(api: k8s_client.ApiClient, name: str, address: str | None, port: int) -> None:
    """A Service without a selector and, if ``address``, a Pod object whose status says it has
    that address (no kubelet runs here) and Endpoints to ``address:port`` naming that Pod: the
    API server's Service proxy dials an address only when a Pod of that IP backs it."""
    core = k8s_client.CoreV1Api(api)
    core.create_namespaced_service(
        NAMESPACE,
        k8s_client.V1Service(
            metadata=k8s_client.V1ObjectMeta(name=name),
            spec=k8s_client.V1ServiceSpec(ports=[k8s_client.V1ServicePort(name="https", port=8443, target_port=port)]),
        ),
    )
    if address is None:
        return
    pod = f"{name}-pod"
    core.create_namespaced_pod(
        NAMESPACE,
        k8s_client.V1Pod(
            metadata=k8s_client.V1ObjectMeta(name=pod),
            spec=k8s_client.V1PodSpec(node_name="no-node", containers=[k8s_client.V1Container(name="c", image="x")]),
        ),
    )
    core.patch_namespaced_pod_status(
        pod, NAMESPACE, {"status": {"podIP": address, "podIPs": [{"ip": address}], "phase": "Running"}}
    )
    # What the endpoint controllers would write: the check waits on the EndpointSlice, the
    # API server's Service proxy dials the Endpoints' address.
    k8s_client.DiscoveryV1Api(api).create_namespaced_endpoint_slice(
        NAMESPACE,
        k8s_client.V1EndpointSlice(
            metadata=k8s_client.V1ObjectMeta(name=name, labels={"kubernetes.io/service-name": name}),
            address_type="IPv4",
            endpoints=[
                k8s_client.V1Endpoint(addresses=[address], conditions=k8s_client.V1EndpointConditions(ready=True))
            ],
            ports=[k8s_client.DiscoveryV1EndpointPort(name="https", port=port, protocol="TCP")],
        ),
    )
    core.create_namespaced_endpoints(
        NAMESPACE,
        k8s_client.V1Endpoints(
            metadata=k8s_client.V1ObjectMeta(name=name),
            subsets=[
                k8s_client.V1EndpointSubset(
                    addresses=[
                        k8s_client.V1EndpointAddress(
                            ip=address,
                            target_ref=k8s_client.V1ObjectReference(kind="Pod", name=pod, namespace=NAMESPACE),
                        )
                    ],
                    ports=[k8s_client.CoreV1EndpointPort(name="https", port=port)],
                )
            ],
        ),
    )


@contextlib.contextmanager
def listener_at_host(tls: ssl.SSLContext | None) -> Iterator[tuple[str, int]]:
    """An HTTP(S) server on this host's address answering 200 to every GET."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    address = host_address()
    server = ThreadingHTTPServer((address, 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield address, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def server_tls() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert(host_address()).configure_cert(context)
    return context


def test_a_tier_without_pod_addresses_says_so_and_asks_nothing() -> None:
    cell = new_cell()
    check = check_loopback_service(cell, listener("anything"), k8s_client.ApiClient(), runs_pods=False)
    assert (check.name, check.status) == ("metrics-via-anything", CheckStatus.SKIPPED)
    assert "seen on kind" in check.detail
    assert not cell.notes


@pytest.mark.needs_binaries
def test_connection_refused_at_the_pod_address_is_the_manifest_s_reading_and_a_finding(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    address = host_address()
    service_to(api, "refused", address, closed_port(address))
    cell = new_cell()
    check = check_loopback_service(cell, listener("refused"), api, runs_pods=True)
    assert check.status is CheckStatus.PASS, (check.detail, check.evidence)
    assert "nothing answers at the pod's address" in check.detail
    assert "connection refused" in check.evidence[1]
    (finding,) = cell.notes
    assert finding.startswith("finding: Service kserve/refused:8443 -> Deployment llmisvc-controller-manager")
    assert "a scrape through this Service fails" in finding


@pytest.mark.needs_binaries
def test_the_listener_s_own_answer_at_the_pod_address_fails_the_check(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    with listener_at_host(server_tls()) as (address, port):
        service_to(api, "answers", address, port)
        cell = new_cell()
        check = check_loopback_service(cell, listener("answers"), api, runs_pods=True)
    assert check.status is CheckStatus.FAIL, (check.detail, check.evidence)
    assert "the listener answered HTTP 200 through the Service, expected connection refused" in check.detail
    assert cell.notes == [
        "finding: Service kserve/answers:8443 -> Deployment llmisvc-controller-manager, container manager "
        "(--metrics-addr=127.0.0.1:8443): answered HTTP 200 through the Service"
    ]


@pytest.mark.needs_binaries
def test_an_api_server_error_other_than_refused_says_it_could_not_tell(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    with listener_at_host(None) as (address, port):  # plain HTTP where the proxy speaks TLS
        service_to(api, "plain", address, port)
        cell = new_cell()
        check = check_loopback_service(cell, listener("plain"), api, runs_pods=True)
    assert check.status is CheckStatus.ERROR, (check.detail, check.evidence)
    assert "the API server could not tell (HTTP 503" in check.detail
    assert not cell.notes


@pytest.mark.needs_binaries
def test_no_ready_pod_behind_the_service_is_an_error_naming_what_was_seen(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    service_to(api, "empty", None, 8443)
    cell = new_cell()
    check = check_loopback_service(cell, listener("empty"), api, runs_pods=True, endpoints_wait_s=1.0)
    assert check.status is CheckStatus.ERROR
    assert "no ready pod behind it after 1s" in check.detail
