"""Real kube-rbac-proxy binaries, started with KServe's sidecar args, against a real API server.

Each proxy version answers as kube-rbac-proxy's delegated authentication and authorization
(brancz/kube-rbac-proxy README) implies: no token 401, bad token 401,
no RBAC 403, RBAC 200 with the upstream's body; its own ServiceAccount lacking
tokenreviews 401, lacking subjectaccessreviews 500.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
import yaml
from helpers.real_cluster import real_control_plane
from helpers.release_files import session_release_files
from kubernetes import client as k8s_client

from e2e.availability import in_ci, unavailable
from e2e.errors import HarnessError
from e2e.local.controlplane import ControlPlane
from e2e.local.metrics_upstream import SENTINEL_METRIC, MetricsUpstream
from e2e.local.processes import ProcessExitedEarly, running_processes
from e2e.local.proxy_runner import ProxyProcess, flag_value, remap_ports
from e2e.matrix import version_key
from e2e.tokens import ensure_service_account, kubeconfig_for_service_account, mint_token

KSERVE_VERSION = "v0.14.0"
NAMESPACE = "proxy-test"

# Every kube-rbac-proxy version the local tier can build. v0.13.1 (what KServe v0.10-v0.13
# ship) is left out on purpose: the Go module proxy answers 403 for it, so it cannot be
# built here at all; only the kind tier (with its image) can test it.
PROXY_VERSIONS = ["v0.15.0", "v0.16.0", "v0.18.0", "v0.18.2", "v0.22.1"]

# The proxy's own RBAC variants: what KServe ships, and each half of it missing.
TOKENREVIEWS = k8s_client.V1PolicyRule(
    api_groups=["authentication.k8s.io"], resources=["tokenreviews"], verbs=["create"]
)
SUBJECTACCESSREVIEWS = k8s_client.V1PolicyRule(
    api_groups=["authorization.k8s.io"], resources=["subjectaccessreviews"], verbs=["create"]
)
METRICS_READER = k8s_client.V1PolicyRule(non_resource_urls=["/metrics"], verbs=["get"])


# -- the shipped sidecar, read from the release's kserve.yaml --------------------------


def _release_documents(version: str) -> list[dict[str, Any]]:
    text = session_release_files().kserve(version)
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def shipped_proxy_args(version: str) -> list[str]:
    """The args of the kube-rbac-proxy container of kserve/kserve-controller-manager."""
    for doc in _release_documents(version):
        if doc.get("kind") == "Deployment" and doc["metadata"]["name"] == "kserve-controller-manager":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["name"] == "kube-rbac-proxy":
                    return [str(arg) for arg in container.get("args", [])]
    raise AssertionError(f"kserve.yaml {version}: no kube-rbac-proxy container in kserve-controller-manager")


def shipped_proxy_role_rules(version: str) -> list[k8s_client.V1PolicyRule]:
    """The rules of the ClusterRole KServe binds to the controller (kserve-proxy-role)."""
    for doc in _release_documents(version):
        if doc.get("kind") == "ClusterRole" and doc["metadata"]["name"] == "kserve-proxy-role":
            return [
                k8s_client.V1PolicyRule(
                    api_groups=rule.get("apiGroups"), resources=rule["resources"], verbs=rule["verbs"]
                )
                for rule in doc["rules"]
            ]
    raise AssertionError(f"kserve.yaml {version}: no ClusterRole kserve-proxy-role")


# -- remap_ports: pure --------------------------------------------------------------------


def test_remap_ports_rewrites_both_forms_in_place() -> None:
    args = ["--secure-listen-address=0.0.0.0:8443", "--upstream", "http://127.0.0.1:8080/", "--v=10"]
    new, notes = remap_ports(args, 18443, "http://127.0.0.1:19090/")
    assert new == ["--secure-listen-address=127.0.0.1:18443", "--upstream", "http://127.0.0.1:19090/", "--v=10"]
    assert notes == [
        "--secure-listen-address: 0.0.0.0:8443 -> 127.0.0.1:18443",
        "--upstream: http://127.0.0.1:8080/ -> http://127.0.0.1:19090/",
    ]


def test_remap_ports_appends_missing_flags_and_keeps_the_rest() -> None:
    new, notes = remap_ports(["--logtostderr=true", "-v", "10"], 1, "http://u/")
    assert new == ["--logtostderr=true", "-v", "10", "--secure-listen-address=127.0.0.1:1", "--upstream=http://u/"]
    assert all("(absent)" in note for note in notes)


def test_remap_ports_on_kserves_shipped_args() -> None:
    shipped = shipped_proxy_args(KSERVE_VERSION)
    new, _ = remap_ports(shipped, 20000, "http://127.0.0.1:20001/")
    assert flag_value(new, "secure-listen-address") == "127.0.0.1:20000"
    assert flag_value(new, "upstream") == "http://127.0.0.1:20001/"
    untouched = [a for a in shipped if not a.startswith(("--secure-listen-address", "--upstream"))]
    assert [a for a in new if a in untouched] == untouched


# -- the metrics upstream ------------------------------------------------------------------


def test_metrics_upstream_serves_controller_runtime_metrics_and_counts() -> None:
    with MetricsUpstream() as upstream:
        session = _session()
        response = session.get(f"http://{upstream.address}/metrics", timeout=5)
        missing = session.get(f"http://{upstream.address}/other", timeout=5)
        assert response.status_code == 200
        assert 'controller_runtime_reconcile_total{controller="inferenceservice",result="success"}' in response.text
        assert "workqueue_depth" in response.text
        assert missing.status_code == 404
        assert upstream.requests_served == 2
        assert [seen.path for seen in upstream.seen()] == ["/metrics", "/other"]


# -- real proxies --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    with real_control_plane() as plane, plane.api_client() as api:
        rbac = k8s_client.RbacAuthorizationV1Api(api)
        roles = {
            "kserve-proxy-role": shipped_proxy_role_rules(KSERVE_VERSION),
            "proxy-test-tokenreviews-only": [TOKENREVIEWS],
            "proxy-test-subjectaccessreviews-only": [SUBJECTACCESSREVIEWS],
            "proxy-test-metrics-reader": [METRICS_READER],
        }
        for name, rules in roles.items():
            rbac.create_cluster_role(k8s_client.V1ClusterRole(metadata=k8s_client.V1ObjectMeta(name=name), rules=rules))
        yield plane


def _bind(api: k8s_client.ApiClient, role: str, service_account: str) -> None:
    k8s_client.RbacAuthorizationV1Api(api).create_cluster_role_binding(
        k8s_client.V1ClusterRoleBinding(
            metadata=k8s_client.V1ObjectMeta(name=f"{role}--{service_account}"),
            role_ref=k8s_client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
            subjects=[k8s_client.RbacV1Subject(kind="ServiceAccount", name=service_account, namespace=NAMESPACE)],
        )
    )


def _proxy_binary(version: str) -> Path:
    from e2e import binaries

    try:
        return binaries.ensure("kube-rbac-proxy", version, build=in_ci())
    except HarnessError as error:
        unavailable(str(error))


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE / proxies must not apply on loopback
    session.verify = False  # the proxy serves a self-signed certificate (no --tls-cert-file)
    return session


def _get(proxy: ProxyProcess, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        return _session().get(f"{proxy.url}/metrics", headers=headers, timeout=30)


@dataclass
class RunningProxy:
    version: str
    proxy: ProxyProcess
    upstream: MetricsUpstream
    api: k8s_client.ApiClient

    def token(self, purpose: str, *, role: str | None = None) -> str:
        """A token of a ServiceAccount used for nothing else (no auth cache can blur it)."""
        name = f"{purpose}-{self.version.replace('.', '-')}"
        ensure_service_account(self.api, NAMESPACE, name)
        if role:
            _bind(self.api, role, name)
        return mint_token(self.api, NAMESPACE, name)


@contextlib.contextmanager
def _running_proxy(
    control_plane: ControlPlane,
    version: str,
    purpose: str,
    proxy_role: str,
    workdir: Path,
    extra_args: tuple[str, ...] = (),
) -> Iterator[RunningProxy]:
    """A proxy of ``version`` with KServe's args, authenticating as a ServiceAccount of its
    own (named after ``purpose``) bound to ``proxy_role``, before a fresh metrics upstream."""
    binary = _proxy_binary(version)
    with control_plane.api_client() as api, MetricsUpstream() as upstream:
        account = f"proxy-{purpose}-{version.replace('.', '-')}"
        ensure_service_account(api, NAMESPACE, account)
        _bind(api, proxy_role, account)
        kubeconfig = kubeconfig_for_service_account(
            api,
            server=control_plane.server,
            ca=control_plane.ca_file,
            namespace=NAMESPACE,
            service_account=account,
            path=workdir / f"{account}.kubeconfig",
        )
        proxy = ProxyProcess.from_container_args(
            binary,
            [*shipped_proxy_args(KSERVE_VERSION), *extra_args],
            upstream_url=upstream.url,
            kubeconfig=kubeconfig,
            workdir=workdir,
        )
        with proxy:
            yield RunningProxy(version, proxy, upstream, api)


@pytest.fixture(scope="module", params=PROXY_VERSIONS)
def shipped(
    request: pytest.FixtureRequest, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    """A proxy of each version, set up as KServe ships it (kserve-proxy-role)."""
    version: str = request.param
    with _running_proxy(
        control_plane, version, "shipped", "kserve-proxy-role", tmp_path_factory.mktemp(version)
    ) as running:
        yield running


def test_no_token_is_401(shipped: RunningProxy) -> None:
    assert _get(shipped.proxy, None).status_code == 401


def test_garbage_token_is_401(shipped: RunningProxy) -> None:
    assert _get(shipped.proxy, "garbage-token-that-is-no-jwt").status_code == 401


def test_service_account_without_rbac_is_403(shipped: RunningProxy) -> None:
    assert _get(shipped.proxy, shipped.token("nobody")).status_code == 403


def test_service_account_with_rbac_gets_the_upstream_metrics(shipped: RunningProxy) -> None:
    before = shipped.upstream.requests_served
    response = _get(shipped.proxy, shipped.token("scraper", role="proxy-test-metrics-reader"))
    assert response.status_code == 200
    assert SENTINEL_METRIC in response.text
    assert response.content == shipped.upstream.body()
    assert shipped.upstream.requests_served == before + 1


def test_refused_requests_never_reach_the_upstream(shipped: RunningProxy) -> None:
    before = shipped.upstream.requests_served
    codes = [
        _get(shipped.proxy, None).status_code,
        _get(shipped.proxy, "garbage-token-that-is-no-jwt").status_code,
        _get(shipped.proxy, shipped.token("refused")).status_code,
    ]
    assert codes == [401, 401, 403]
    assert shipped.upstream.requests_served == before


def test_the_callers_token_is_in_the_proxy_logs_before_v0_18_2_only(shipped: RunningProxy) -> None:
    # KServe runs the proxy with --v=10; v0.18.2 added a log filter masking TokenReview
    # bodies. Seen on the real binaries: v0.15.0, v0.16.0, v0.18.0 log the token.
    token = shipped.token("logged", role="proxy-test-metrics-reader")
    assert _get(shipped.proxy, token).status_code == 200
    leaked = token in shipped.proxy.logs()
    assert leaked == (version_key(shipped.version) < version_key("v0.18.2")), f"{shipped.version} logged it: {leaked}"
    assert token not in shipped.proxy.logs_redacted()


@pytest.mark.parametrize("version", PROXY_VERSIONS)
def test_proxy_whose_account_cannot_create_tokenreviews_answers_401(
    control_plane: ControlPlane, version: str, tmp_path: Path
) -> None:
    with _running_proxy(control_plane, version, "no-tr", "proxy-test-subjectaccessreviews-only", tmp_path) as running:
        token = running.token("scraper-no-tr", role="proxy-test-metrics-reader")
        assert _get(running.proxy, token).status_code == 401
        assert running.upstream.requests_served == 0


@pytest.mark.parametrize("version", PROXY_VERSIONS)
def test_proxy_whose_account_cannot_create_subjectaccessreviews_answers_500(
    control_plane: ControlPlane, version: str, tmp_path: Path
) -> None:
    with _running_proxy(control_plane, version, "no-sar", "proxy-test-tokenreviews-only", tmp_path) as running:
        token = running.token("scraper-no-sar", role="proxy-test-metrics-reader")
        assert _get(running.proxy, token).status_code == 500
        assert running.upstream.requests_served == 0


@pytest.mark.parametrize("version", PROXY_VERSIONS)
def test_an_unknown_flag_fails_the_start_with_exit_code_and_output(
    control_plane: ControlPlane, version: str, tmp_path: Path
) -> None:
    proxies_before = [p for p in running_processes() if p.name == "kube-rbac-proxy"]
    with (
        pytest.raises(ProcessExitedEarly) as raised,
        _running_proxy(control_plane, version, "bad-flag", "kserve-proxy-role", tmp_path, ("--no-such-flag",)),
    ):
        pass
    assert raised.value.returncode not in (None, 0)
    assert "no-such-flag" in str(raised.value)  # the one-line message names the culprit
    assert [p for p in running_processes() if p.name == "kube-rbac-proxy"] == proxies_before
