"""The KServe manager played by the real binary of its release (``e2e/local/manager.py``).

Three layers: the pure pieces (arg remaps, env, the pod's port map, the metrics-content
rule); one real control plane with kwok on which KServe v0.20.0 is installed exactly as the
local tier installs it, with its ``manager`` and ``kube-rbac-proxy`` containers played by
``LocalCluster.sync_workloads`` (the API server then calls the real webhooks, the real
controller reconciles the samples); and whole cells run as a user runs them (pytest on
``scenarios/``) for the verdicts: a closed upstream fails, a manager that exits is an error,
a release whose manager the Go proxy refuses runs on a stand-in that says so.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import signal
import socket
import ssl
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import tenacity
import yaml
from cryptography import x509
from helpers.cells import new_cell
from helpers.real_cluster import real_control_plane
from helpers.release_files import SessionReleaseFiles
from helpers.scenario_runs import run_local_scenarios
from kubernetes import client as k8s_client
from prometheus_client.parser import text_string_to_metric_families

from e2e import binaries, checks, kserve
from e2e.apply import Applier
from e2e.availability import in_ci, unavailable
from e2e.checks.metrics import RECONCILE_METRIC
from e2e.checks.session import self_signed_session
from e2e.cluster.local import LocalCluster
from e2e.errors import HarnessError, WorkloadUnavailable
from e2e.install import SAMPLE_MODELS
from e2e.local import certmanager, manager, players, sklearnserver
from e2e.local.manager import ManagerExited, container_env, remap_manager_args
from e2e.local.played import PlayedContainer, pod_upstream, port_free
from e2e.local.players import SERVING_CERT_DEVIATION
from e2e.local.processes import free_loopback_port
from e2e.manifests import load_release_manifest
from e2e.matrix import DEFAULT_MATRIX_FILE, load_matrix
from e2e.results import CheckStatus, Verdict
from e2e.targets import ServiceTarget
from e2e.tokens import mint_token

RELEASE = "v0.20.0"
SHIPPED_MANAGER_ARGS = ["--metrics-addr=127.0.0.1:8080", "--leader-elect"]


# -- the pieces ------------------------------------------------------------------------------


def test_kserves_manager_args_get_loopback_ports_and_lose_leader_election() -> None:
    args, notes, ports = remap_manager_args(SHIPPED_MANAGER_ARGS, metrics_port=1001, webhook_port=1002, probe_port=1003)
    assert args == [
        "--metrics-addr=127.0.0.1:1001",
        "--webhook-port=1002",
        "--health-probe-addr=127.0.0.1:1003",
    ]
    assert ports == {8080: 1001, 9443: 1002, 8081: 1003}
    assert notes[0] == "--metrics-addr: 127.0.0.1:8080 -> 127.0.0.1:1001"
    assert notes[1].startswith("--leader-elect: removed")
    assert "--webhook-port: (absent, default 9443) -> 1002" in notes


def test_a_release_without_a_probe_flag_gets_none_and_separate_values_are_rewritten() -> None:
    args, _, ports = remap_manager_args(
        ["--metrics-addr", ":9090", "--leader-elect=true", "--webhook-port", "9444", "--zap-log-level=debug"],
        metrics_port=1,
        webhook_port=2,
        probe_port=None,
    )
    assert args == ["--metrics-addr=127.0.0.1:1", "--webhook-port=2", "--zap-log-level=debug"]
    assert ports == {9090: 1, 9444: 2}


def test_container_env_plays_values_and_the_downward_api_and_notes_the_rest() -> None:
    container = k8s_client.V1Container(
        name="manager",
        env=[
            k8s_client.V1EnvVar(
                name="POD_NAMESPACE",
                value_from=k8s_client.V1EnvVarSource(
                    field_ref=k8s_client.V1ObjectFieldSelector(field_path="metadata.namespace")
                ),
            ),
            k8s_client.V1EnvVar(name="SECRET_NAME", value="kserve-webhook-server-cert"),
            k8s_client.V1EnvVar(
                name="FROM_SECRET",
                value_from=k8s_client.V1EnvVarSource(secret_key_ref=k8s_client.V1SecretKeySelector(name="s", key="k")),
            ),
        ],
    )
    env, notes = container_env(container, namespace="kserve", pod_name="p", service_account="sa")
    assert env == {"POD_NAMESPACE": "kserve", "SECRET_NAME": "kserve-webhook-server-cert"}
    assert notes == ["env FROM_SECRET: not set (its valueFrom is not played here)"]


def _played(addresses: dict[int, str]) -> PlayedContainer:
    runner: Any = None  # not started: only the pod's port map matters here
    return PlayedContainer("kserve", "controller", "manager", "img", (), {}, {}, runner, "manager", addresses)


def test_the_upstream_is_remapped_only_where_it_names_a_port_of_the_pod() -> None:
    pod = [_played({8080: "127.0.0.1:40001"})]
    assert pod_upstream(pod, ("kserve", "controller"), "http://127.0.0.1:8080/") == "http://127.0.0.1:40001/"
    assert pod_upstream(pod, ("kserve", "controller"), "http://localhost:8080/metrics") == (
        "http://127.0.0.1:40001/metrics"
    )
    # A port nothing in the pod listens on, another pod, another host: exactly as given.
    assert pod_upstream(pod, ("kserve", "controller"), "http://127.0.0.1:8081/") is None
    assert pod_upstream(pod, ("kserve", "other"), "http://127.0.0.1:8080/") is None
    assert pod_upstream(pod, ("kserve", "controller"), "http://metrics.example:8080/") is None
    assert port_free("--upstream: http://127.0.0.1:8080/ -> http://127.0.0.1:40001/") == (
        "--upstream: http://127.0.0.1:8080/ -> http://<the process playing that port>/"
    )


def test_manager_images_are_recognised_by_repository() -> None:
    assert manager.is_manager_image("kserve/kserve-controller:v0.14.0")
    assert manager.is_manager_image("registry.example/mirror/kserve-controller:v0.20.0")
    assert not manager.is_manager_image("kserve/kserve-localmodel-controller:v0.14.0")
    assert not manager.is_manager_image("quay.io/brancz/kube-rbac-proxy:v0.18.0")


def test_a_refused_release_is_unavailable_with_the_proxys_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = "github.com/kserve/kserve@v0.18.0: the Go module proxy does not serve it (reading ...: 403 Forbidden)"
    monkeypatch.setattr(binaries, "locate", lambda component, version=None: None)
    monkeypatch.setattr(binaries, "buildable", lambda component, version=None: (False, answer))
    with pytest.raises(WorkloadUnavailable, match=r"kserve-manager v0\.18\.0 unavailable: .*403 Forbidden"):
        manager.manager_binary_for("kserve/kserve-controller:v0.18.0")


def test_the_llmisvc_controllers_args_get_loopback_ports_and_lose_leader_election() -> None:
    """v0.16.0's llmisvc-controller-manager: HTTPS metrics on 127.0.0.1:8443, default probe
    and webhook ports (``:8081`` would bind every interface)."""
    args, notes, ports = remap_manager_args(
        ["--metrics-addr=127.0.0.1:8443", "--leader-elect"],
        metrics_port=1001,
        webhook_port=1002,
        probe_port=1003,
        metrics_default=manager.LLMISVC_METRICS_DEFAULT,
    )
    assert args == ["--metrics-addr=127.0.0.1:1001", "--webhook-port=1002", "--health-probe-addr=127.0.0.1:1003"]
    assert ports == {8443: 1001, 9443: 1002, 8081: 1003}
    assert notes[0] == "--metrics-addr: 127.0.0.1:8443 -> 127.0.0.1:1001"
    assert notes[1].startswith("--leader-elect: removed")
    _, notes, ports = remap_manager_args(
        [], metrics_port=1, webhook_port=2, probe_port=3, metrics_default=manager.LLMISVC_METRICS_DEFAULT
    )
    assert "--metrics-addr: (absent, default :8443) -> 127.0.0.1:1" in notes
    assert ports[8443] == 1


def test_controller_images_map_to_their_binaries() -> None:
    assert manager.controller_component("kserve/kserve-controller:v0.16.0") == binaries.KSERVE_MANAGER
    assert manager.controller_component("kserve/llmisvc-controller:v0.16.0") == binaries.KSERVE_LLMISVC
    assert manager.is_llmisvc_image("registry.example/mirror/llmisvc-controller:v0.16.0")
    assert not manager.is_llmisvc_image("kserve/kserve-controller:v0.16.0")
    assert manager.controller_component("kserve/kserve-localmodel-controller:v0.16.0") is None


def test_a_release_before_llmisvc_is_unavailable_with_the_reason() -> None:
    with pytest.raises(WorkloadUnavailable, match=r"KServe has cmd/llmisvc from v0\.16\.0 on"):
        manager.controller_binary_for("kserve/llmisvc-controller:v0.15.2", binaries.KSERVE_LLMISVC)


def test_a_releases_manager_and_llmisvc_are_built_in_one_go_build(monkeypatch: pytest.MonkeyPatch) -> None:
    together: list[tuple[list[str], str]] = []
    monkeypatch.setattr(binaries, "locate", lambda component, version=None: None)
    monkeypatch.setattr(binaries, "buildable", lambda component, version=None: (True, ""))
    monkeypatch.setattr(binaries, "ensure_together", lambda names, version: together.append((list(names), version)))
    manager.build_controllers_together(
        [
            "kserve/kserve-controller:v0.16.0",
            "quay.io/brancz/kube-rbac-proxy:v0.18.0",
            "kserve/llmisvc-controller:v0.16.0",
            "kserve/kserve-controller:v0.20.0",  # alone: built when played
        ]
    )
    assert together == [([binaries.KSERVE_LLMISVC, binaries.KSERVE_MANAGER], "v0.16.0")]


RECONCILES = (
    "# TYPE controller_runtime_reconcile_total counter\n"
    'controller_runtime_reconcile_total{{controller="inferenceservice",result="success"}} {count}\n'
)


def test_metrics_content_waits_for_the_first_reconciles() -> None:
    answers = iter([RECONCILES.format(count=0), RECONCILES.format(count=0), RECONCILES.format(count=6)])
    result = checks.check_metrics_content(
        new_cell(RELEASE, "quay-v0.22.1"), RECONCILES.format(count=0), refetch=lambda: next(answers), wait_s=10
    )
    assert result.status is CheckStatus.PASS, result.detail
    assert "total 6" in result.detail


def test_metrics_content_fails_when_nothing_was_reconciled() -> None:
    body = RECONCILES.format(count=0)
    result = checks.check_metrics_content(new_cell(RELEASE, "quay-v0.22.1"), body, refetch=lambda: body, wait_s=0.5)
    assert result.status is CheckStatus.FAIL
    assert "is 0 (read again for up to 0s): the controller reconciled no InferenceService" in result.detail


def test_a_stand_ins_output_is_labelled_in_the_result() -> None:
    from e2e.local.metrics_upstream import MetricsUpstream

    body = MetricsUpstream(stand_in_reason="kserve-manager v0.18.0 unavailable: 403").body().decode()
    result = checks.check_metrics_content(new_cell(RELEASE, "quay-v0.22.1"), body)
    assert result.status is CheckStatus.PASS
    assert result.detail.startswith("STAND-IN RESULT, not KServe's manager (kserve-manager v0.18.0 unavailable: 403)")
    assert result.evidence[0].startswith("served by kserve-compat's stand-in")


# -- KServe v0.20.0 on a real control plane, its controller pod played ------------------------


@dataclass
class Installed:
    cluster: LocalCluster
    api: k8s_client.ApiClient
    installation: kserve.Installation
    sync_notes: list[str]
    samples: list[str]


def _need(component: str, version: str) -> Path:
    """The binary, built first in CI (as the provider builds a manager on first use); a
    missing one skips the test elsewhere, and fails it in CI if it cannot be built."""
    try:
        return binaries.ensure(component, version, build=in_ci())
    except HarnessError as exc:
        unavailable(f"{component} {version}: {exc}")


@pytest.fixture(scope="module")
def installed(release_files: SessionReleaseFiles) -> Iterator[Installed]:
    with _install(release_files, "manager-test") as found:
        yield found


def _without_creating_deployments(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The release's documents with the right to create Deployments taken from its
    ClusterRoles (reading them stays: the manager's caches and webhooks need that)."""
    documents = json.loads(json.dumps(documents))
    for doc in documents:
        if doc.get("kind") == "ClusterRole":
            for rule in doc.get("rules") or []:
                if "deployments" in rule.get("resources", []):
                    rule["verbs"] = [v for v in rule.get("verbs", []) if v not in ("create", "*")]
    return documents


@contextlib.contextmanager
def _install(
    release_files: SessionReleaseFiles,
    name: str,
    edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] = list,
    version: str = RELEASE,
) -> Iterator[Installed]:
    """KServe ``version`` installed as the local tier installs it (``edit`` may change its
    documents), the samples applied; the InferenceServices deleted while the manager still runs."""
    _need(binaries.KSERVE_MANAGER, version)
    _need(binaries.PROXY, "v0.18.0")
    _need(certmanager.CONTROLLER, certmanager.VERSION)
    _need(certmanager.CAINJECTOR, certmanager.VERSION)
    release = load_matrix().release(version)
    manifest = load_release_manifest(release, release_files)
    assert release.runtimes_file is not None
    runtimes = list(load_release_manifest(release, release_files, release.runtimes_file).documents)
    cert_manager = [d for d in yaml.safe_load_all(release_files.cert_manager_crds("v1.16.1")) if d]
    with real_control_plane(with_controllers=True) as plane, plane.api_client() as api:
        cluster = LocalCluster(plane, name)
        notes: list[str] = []
        try:
            kserve.install_cert_manager(api, cert_manager)
            installation = kserve.install_kserve(
                api,
                release,
                edit(list(manifest.documents)),
                runtimes,
                controller_runs=False,
                wait_for_controller=lambda: notes.extend(cluster.sync_workloads()),
            )
            samples = kserve.deploy_inference_services(api, release, kserve.sample_inference_services())
            yield Installed(cluster, api, installation, notes, samples)
            # InferenceServices carry the controller's finalizer: delete them while it runs.
            custom = k8s_client.CustomObjectsApi(api)
            for name in samples:
                custom.delete_namespaced_custom_object(
                    kserve.ISVC_GROUP, kserve.ISVC_VERSION, kserve.SAMPLES_NAMESPACE, kserve.ISVC_PLURAL, name
                )
        finally:
            cluster.delete()


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_the_manager_runs_with_the_deployments_args_remapped(installed: Installed) -> None:
    prefix = "kserve/kserve-controller-manager/manager: "
    assert prefix + "--metrics-addr: 127.0.0.1:8080 -> a loopback port" in installed.sync_notes
    assert any(n.startswith(prefix + "--leader-elect: removed") for n in installed.sync_notes)
    assert (
        "kserve/kserve-controller-manager/kube-rbac-proxy: --upstream: http://127.0.0.1:8080/ -> "
        "http://<the process playing that port>/" in installed.sync_notes
    )
    assert (
        installed.cluster.last_sync.started[0]
        == f"kserve/kserve-controller-manager/manager as kserve-manager {RELEASE}"
    )


def _serving_secret(api: k8s_client.ApiClient) -> dict[str, bytes]:
    secret = k8s_client.CoreV1Api(api).read_namespaced_secret("kserve-webhook-server-cert", "kserve")
    return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_cert_manager_issues_the_releases_certificate_with_the_loopback_ip(installed: Installed) -> None:
    """The real cert-manager controller issued KServe's Certificate (given 127.0.0.1 before
    its first issue) into the Secret it names; the manager serves exactly that pair."""
    certificate = k8s_client.CustomObjectsApi(installed.api).get_namespaced_custom_object(
        "cert-manager.io", "v1", "kserve", "certificates", "serving-cert"
    )
    assert certificate["spec"]["ipAddresses"] == ["127.0.0.1"]
    assert certificate["spec"]["dnsNames"] == ["kserve-webhook-server-service.kserve.svc"]  # as shipped
    ready = {c["type"]: c for c in certificate["status"]["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["observedGeneration"] == certificate["metadata"]["generation"]
    assert certificate["status"]["revision"] == 1  # issued once: the IP was there before the first issue
    secret = _serving_secret(installed.api)
    served = x509.load_pem_x509_certificate(secret["tls.crt"])
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["kserve-webhook-server-service.kserve.svc"]
    assert secret["ca.crt"] == secret["tls.crt"]  # the selfSigned Issuer: the certificate is its own CA
    (played,) = [p for p in installed.cluster._played.values() if p.role == "manager"]
    serving = played.runner.process.env["TMPDIR"]  # type: ignore[attr-defined]
    directory = Path(serving) / "k8s-webhook-server" / "serving-certs"
    assert (directory / "tls.crt").read_bytes() == secret["tls.crt"]
    assert (directory / "tls.key").read_bytes() == secret["tls.key"]
    assert stat.S_IMODE((directory / "tls.key").stat().st_mode) == 0o600
    # What the manager presents on its webhook port is that certificate, and it verifies
    # against the injected CA for 127.0.0.1, as the API server verifies it.
    context = ssl.create_default_context(cadata=secret["ca.crt"].decode())
    with (
        socket.create_connection(("127.0.0.1", played.runner.webhook_port), timeout=5) as raw,  # type: ignore[attr-defined]
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        presented = tls.getpeercert(binary_form=True)
    assert presented is not None and x509.load_der_x509_certificate(presented) == served


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_the_webhooks_stay_point_at_the_played_manager_and_carry_the_injected_ca(installed: Installed) -> None:
    admission = k8s_client.AdmissionregistrationV1Api(installed.api)
    configurations = [
        *admission.list_validating_webhook_configuration().items,
        *admission.list_mutating_webhook_configuration().items,
    ]
    webhooks = [w for c in configurations for w in c.webhooks or []]
    assert len(webhooks) == 7  # as shipped: none removed
    injected = base64.b64encode(_serving_secret(installed.api)["ca.crt"]).decode()
    local_ca = base64.b64encode(installed.cluster.control_plane.ca_file.read_bytes()).decode()
    assert injected != local_ca
    for webhook in webhooks:
        assert webhook.client_config.service is None
        assert webhook.client_config.url.startswith("https://127.0.0.1:"), webhook.client_config.url
        assert webhook.client_config.ca_bundle == injected
    cainjector = installed.cluster._player.cert_manager.cainjector.output()  # type: ignore[union-attr]
    assert "updated object" in cainjector  # its log line per injection
    deviations = installed.cluster.info.deviations
    assert SERVING_CERT_DEVIATION not in deviations
    assert (
        "webhook serving certificate issued by cert-manager v1.11.5 (controller and cainjector played as processes) "
        "into Secret kserve/kserve-webhook-server-cert; Certificate kserve/serving-cert given ipAddresses "
        "[127.0.0.1] so the API server can verify https://127.0.0.1:<port>" in deviations
    )
    assert certmanager.AUTH_DEVIATION in deviations
    # The install applied v1.16.1's CRDs (the release names it); v1.11.5 plays cert-manager.
    assert (
        "cert-manager v1.11.5's controller and cainjector (the newest version built here) stand in for "
        "cert-manager v1.16.1, whose CRDs the install applied" in deviations
    )
    assert (
        "admission webhooks of Service kserve/kserve-webhook-server-service (7): clientConfig points at the "
        "played manager (url https://127.0.0.1:<port><path>, caBundle injected by cert-manager's cainjector; "
        "no Service routing without a kubelet)" in deviations
    )
    assert not any("removed" in d for d in deviations + installed.installation.deviations)


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_the_cainjector_injects_into_a_webhook_that_has_a_url(installed: Installed) -> None:
    """Order does not matter: with clientConfig already a URL, a caBundle overwritten by
    someone else is put back by the real cainjector."""
    admission = k8s_client.AdmissionregistrationV1Api(installed.api)
    name = "inferenceservice.serving.kserve.io"
    configuration = admission.read_validating_webhook_configuration(name)
    assert configuration.webhooks[0].client_config.url.startswith("https://127.0.0.1:")
    local_ca = base64.b64encode(installed.cluster.control_plane.ca_file.read_bytes()).decode()
    configuration.webhooks[0].client_config.ca_bundle = local_ca
    admission.replace_validating_webhook_configuration(name, configuration)
    injected = base64.b64encode(_serving_secret(installed.api)["ca.crt"]).decode()
    seen = local_ca
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(60), wait=tenacity.wait_fixed(0.5), reraise=True):
        with attempt:
            seen = admission.read_validating_webhook_configuration(name).webhooks[0].client_config.ca_bundle
            assert seen == injected, "caBundle not re-injected yet"
    assert (
        admission.read_validating_webhook_configuration(name)
        .webhooks[0]
        .client_config.url.startswith("https://127.0.0.1:")
    )


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_the_api_server_calls_the_real_webhooks(installed: Installed) -> None:
    # KServe's validator rejects what the API server alone would accept.
    (sample, *_) = [d for d in kserve.sample_inference_services() if d["kind"] == "InferenceService"]
    bad = json.loads(json.dumps(sample))
    bad["metadata"]["name"] = "1-iris"
    with pytest.raises(k8s_client.ApiException) as rejected:
        k8s_client.CustomObjectsApi(installed.api).create_namespaced_custom_object(
            kserve.ISVC_GROUP, kserve.ISVC_VERSION, kserve.SAMPLES_NAMESPACE, kserve.ISVC_PLURAL, bad
        )
    assert "admission webhook" in str(rejected.value.body) and "denied the request" in str(rejected.value.body)


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_the_samples_are_reconciled_and_ready_from_kserve(installed: Installed) -> None:
    for name in installed.samples:
        isvc = kserve.wait_inference_service_ready(installed.api, kserve.SAMPLES_NAMESPACE, name, timeout_s=120)
        conditions = {c["type"]: c["status"] for c in isvc["status"]["conditions"]}
        assert conditions["PredictorReady"] == "True"
    pods = k8s_client.CoreV1Api(installed.api).list_namespaced_pod(kserve.SAMPLES_NAMESPACE).items
    assert pods and all(p.status.phase == "Running" for p in pods)  # kwok, on its fake node
    # KServe's pod mutator (/mutate-pods) injected the storage initializer.
    assert all("storage-initializer" in [c.name for c in p.spec.init_containers or []] for p in pods)


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_metrics_through_the_proxy_come_from_the_real_manager(installed: Installed) -> None:
    api = installed.api
    Applier(api).apply(kserve.load_documents(kserve.MANIFESTS_DIR / "metrics-access.yaml"))
    profile = load_matrix().release(RELEASE).profile
    cell = new_cell(RELEASE, "quay-v0.22.1")
    with installed.cluster.endpoint(
        ServiceTarget(profile.namespace, profile.metrics_service, profile.metrics_port)
    ) as address:
        results = checks.check_metrics_auth(
            cell,
            f"https://{address}/metrics",
            metrics_reader_token=mint_token(api, "kserve-compat", "metrics-reader"),
            no_access_token=mint_token(api, "kserve-compat", "no-access"),
        )
    assert all(r.status is CheckStatus.PASS for r in results), [(r.name, r.detail) for r in results]
    content = results[-1]
    assert "STAND-IN" not in content.detail
    assert int(content.detail.rsplit("total ", 1)[1].rstrip(")")) > 0
    # Families only the real manager has: its webhook server and its serving certificate.
    assert "certwatcher_read_certificate" in content.evidence[1]
    assert "controller_runtime_webhook_requests" in content.evidence[1]


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_the_reconcile_counter_increases_when_kserve_reconciles_again(installed: Installed) -> None:
    """Read through the proxy as the checks read it: the real manager's counter moves when
    an InferenceService changes (a stand-in's would not)."""
    api = installed.api
    Applier(api).apply(kserve.load_documents(kserve.MANIFESTS_DIR / "metrics-access.yaml"))
    token = mint_token(api, "kserve-compat", "metrics-reader")
    profile = load_matrix().release(RELEASE).profile
    target = ServiceTarget(profile.namespace, profile.metrics_service, profile.metrics_port)

    def reconciles(address: str) -> float:
        # The checks' session for the proxy's self-signed certificate (no urllib3 warning).
        answer = self_signed_session().get(
            f"https://{address}/metrics", headers={"Authorization": f"Bearer {token}"}, verify=False, timeout=5
        )
        answer.raise_for_status()
        return sum(
            sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples
            if sample.name == RECONCILE_METRIC and sample.labels.get("controller") == "inferenceservice"
        )

    with installed.cluster.endpoint(target) as address:
        kserve.wait_inference_service_ready(api, kserve.SAMPLES_NAMESPACE, installed.samples[0], timeout_s=120)
        before = reconciles(address)
        k8s_client.CustomObjectsApi(api).patch_namespaced_custom_object(
            kserve.ISVC_GROUP,
            kserve.ISVC_VERSION,
            kserve.SAMPLES_NAMESPACE,
            kserve.ISVC_PLURAL,
            installed.samples[0],
            {"metadata": {"annotations": {"kserve-compat/touched": "1"}}},
        )
        after = before
        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(60), wait=tenacity.wait_fixed(0.5), reraise=True
        ):
            with attempt:
                after = reconciles(address)
                assert after > before, f"reconcile_total stayed at {after}"
    assert before > 0 and after > before


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_the_predictor_pods_are_played_by_the_releases_sklearnserver(installed: Installed) -> None:
    """Inference goes where KServe routes it: once the InferenceService is Ready, to its
    predictor Service, behind which the release's own sklearnserver plays the pod."""
    _need_sklearnserver()
    for name, protocol in SAMPLE_MODELS:
        with kserve.inference_endpoint(installed.cluster, kserve.SAMPLES_NAMESPACE, name, timeout_s=120) as address:
            result = checks.check_inference(new_cell(RELEASE, "quay-v0.22.1"), f"http://{address}", name, protocol)
        assert result.status is CheckStatus.PASS, result.detail
    played = [p for p in installed.cluster._played.values() if p.role == "model-server"]
    assert sorted(p.deployment for p in played) == ["sklearn-iris-predictor", "sklearn-iris-v2-predictor"]
    for server in played:
        assert server.image == f"kserve/sklearnserver:{RELEASE}"
        assert server.args == (
            f"--model_name={server.deployment.removesuffix('-predictor')}",
            "--model_dir=/mnt/models",
            "--http_port=8080",
        )
    deviations = installed.cluster.info.deviations
    placed = [d for d in deviations if "storage initializer not run" in d]
    assert len(placed) == 2 and all(
        f"played by sklearnserver {RELEASE} (python/ of github.com/kserve/kserve@{RELEASE})" in d
        and "in place of gs://kfserving-examples/models/sklearn/1.0/model (not fetched)" in d
        for d in placed
    ), placed
    assert not any("local KServe model server" in d for d in deviations)


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_a_manager_denied_by_rbac_leaves_the_model_not_ready_and_fails_inference_with_kserves_words(
    release_files: SessionReleaseFiles,
) -> None:
    """KServe's own RBAC decides what its manager may do: without the right to create
    Deployments the real controller cannot make the predictor, says so in the
    InferenceService's conditions, and the inference check fails at once with those words."""
    profile = load_matrix().release(RELEASE).profile
    with _install(release_files, "rbac-test", _without_creating_deployments) as denied:
        cell = new_cell(RELEASE, "quay-v0.22.1")
        with (
            pytest.raises(kserve.InferenceServiceNotReady) as not_ready,
            kserve.inference_endpoint(
                denied.cluster,
                kserve.SAMPLES_NAMESPACE,
                "sklearn-iris",
                timeout_s=120,
                failure_evidence=kserve.controller_denied(denied.cluster, profile),
            ),
        ):
            pass
        checks.record_inference_not_ready(cell, "v1", str(not_ready.value), not_ready.value.evidence)
    forbidden = (
        'fails to reconcile predictor: deployments.apps is forbidden: User "system:serviceaccount:kserve:'
        'kserve-controller-manager" cannot create resource "deployments"'
    )
    assert f"(ReconcileFailed): {forbidden}" in str(not_ready.value)
    assert any(line.startswith(f"Ready=False (ReconcileFailed): {forbidden}") for line in not_ready.value.evidence)
    assert cell.conclude() is Verdict.FAIL
    assert cell.reason.startswith("inference-v1: InferenceService kserve-compat-samples/sklearn-iris: ")
    assert not_ready.value.evidence == cell.checks[-1].evidence


def _need_sklearnserver() -> None:
    try:
        sklearnserver.ensure_env(RELEASE)
    except sklearnserver.SklearnServerUnavailable as exc:
        if in_ci():
            raise
        unavailable(str(exc))


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_a_manager_that_exits_is_an_error_with_its_exit_code_and_last_lines(installed: Installed) -> None:
    cluster = installed.cluster
    (played,) = [p for p in cluster._played.values() if p.role == "manager"]
    os.kill(played.runner.process.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    played.runner.process._popen.wait(timeout=10)  # type: ignore[attr-defined]
    profile = load_matrix().release(RELEASE).profile
    with (
        pytest.raises(ManagerExited, match=r"manager .* exited with code -9") as exited,
        cluster.endpoint(ServiceTarget(profile.namespace, profile.metrics_service, profile.metrics_port)),
    ):
        pass
    assert exited.value.evidence[0] == "exit code -9"
    assert any("Starting" in line or "controller" in line for line in exited.value.evidence[1:])
    cluster.sync_workloads()  # like a kubelet, the next sync starts it again
    assert f"kserve/kserve-controller-manager/manager as kserve-manager {RELEASE}" in cluster.last_sync.started


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_a_cert_manager_that_exits_is_reported_with_its_exit_code_and_last_lines(installed: Installed) -> None:
    cluster = installed.cluster
    cert_manager = cluster._player.cert_manager
    assert cert_manager is not None and cert_manager.alive
    pid = cert_manager.controller.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    cert_manager.controller._popen.wait(timeout=10)  # type: ignore[union-attr]
    with pytest.raises(certmanager.CertManagerExited, match=r"cert-manager-controller v1.11.5 exited with code -9"):
        cluster.check_alive()
    with pytest.raises(certmanager.CertManagerExited) as exited:
        cluster.sync_workloads()  # nothing restarts it: every later sync says so
    assert exited.value.evidence[0] == "exit code -9"
    assert any("cert-manager" in line for line in exited.value.evidence[1:])


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_a_cert_manager_that_exits_at_start_fails_fast_with_its_exit_code_and_last_lines(
    installed: Installed, tmp_path: Path
) -> None:
    broken = certmanager.CertManager(
        _need(certmanager.CONTROLLER, certmanager.VERSION),
        _need(certmanager.CAINJECTOR, certmanager.VERSION),
        kubeconfig=installed.cluster.control_plane.kubeconfig,
        workdir=tmp_path / "cert-manager",
        extra_controller_args=("--no-such-flag",),
    )
    with pytest.raises(
        certmanager.CertManagerExited, match=r"cert-manager-controller v1.11.5 exited with code 1"
    ) as exited:
        broken.start()
    assert exited.value.evidence[0] == "exit code 1"
    assert any("unknown flag: --no-such-flag" in line for line in exited.value.evidence[1:]), exited.value.evidence
    assert not broken.controller.alive and not broken.cainjector.alive  # the other one was stopped too


def _with_proxy_v0_18_0(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The release's documents with its kube-rbac-proxy image (v0.13.1, which no binary
    plays here) swapped for v0.18.0, as the installer swaps in a runnable one."""
    documents = json.loads(json.dumps(documents))
    for doc in documents:
        if doc.get("kind") == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if "kube-rbac-proxy" in container.get("image", ""):
                    container["image"] = "quay.io/brancz/kube-rbac-proxy:v0.18.0"
    return documents


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_an_older_release_gets_its_certificate_from_cert_manager_and_its_crd_conversion_injected(
    release_files: SessionReleaseFiles,
) -> None:
    """v0.12.1 names its Certificate and Secret as later releases do, and its
    InferenceService CRD has a conversion webhook annotated for injection: the real
    cainjector fills that caBundle too (the release ships a bare one the harness drops)."""
    with _install(release_files, "v0-12-test", _with_proxy_v0_18_0, version="v0.12.1") as old:
        secret = _serving_secret(old.api)
        injected = base64.b64encode(secret["ca.crt"]).decode()
        extensions = k8s_client.ApiextensionsV1Api(old.api)
        seen: Any = None
        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(60), wait=tenacity.wait_fixed(0.5), reraise=True
        ):
            with attempt:
                crd = extensions.read_custom_resource_definition("inferenceservices.serving.kserve.io")
                seen = crd.spec.conversion.webhook.client_config.ca_bundle
                assert seen == injected, "CRD conversion caBundle not injected yet"
        admission = k8s_client.AdmissionregistrationV1Api(old.api)
        webhooks = [
            w
            for c in [
                *admission.list_validating_webhook_configuration().items,
                *admission.list_mutating_webhook_configuration().items,
            ]
            for w in c.webhooks or []
        ]
        assert len(webhooks) == 7
        assert all(w.client_config.ca_bundle == injected for w in webhooks)
        assert all(w.client_config.url.startswith("https://127.0.0.1:") for w in webhooks)
        assert (
            "webhook serving certificate issued by cert-manager v1.11.5 (controller and cainjector played as "
            "processes) into Secret kserve/kserve-webhook-server-cert; Certificate kserve/serving-cert given "
            "ipAddresses [127.0.0.1] so the API server can verify https://127.0.0.1:<port>"
            in old.cluster.info.deviations
        )
        # The API server verified the played manager's certificate and called its webhooks.
        (sample, *_) = [d for d in kserve.sample_inference_services() if d["kind"] == "InferenceService"]
        bad = json.loads(json.dumps(sample))
        bad["metadata"]["name"] = "1-iris"
        with pytest.raises(k8s_client.ApiException) as rejected:
            k8s_client.CustomObjectsApi(old.api).create_namespaced_custom_object(
                kserve.ISVC_GROUP, kserve.ISVC_VERSION, kserve.SAMPLES_NAMESPACE, kserve.ISVC_PLURAL, bad
            )
        assert "denied the request" in str(rejected.value.body)
        kserve.wait_inference_service_ready(old.api, kserve.SAMPLES_NAMESPACE, old.samples[0], timeout_s=120)


# -- whole cells ---------------------------------------------------------------------------


def run_scenarios(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, dict[str, Any]]:
    """The fresh-install scenario of one cell; its one result."""
    run = run_local_scenarios(tmp_path, "scenarios/test_fresh_install.py", *args, env=env)
    assert len(run.results) == 1, run.output[-3000:]
    return run.code, run.output, run.results[0]


def checks_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_a_proxy_whose_upstream_is_a_closed_port_fails_its_metrics_checks(tmp_path: Path) -> None:
    """Before the manager was played, every upstream was rewritten to the stand-in, so this
    cell passed; now the proxy keeps its closed upstream and answers 502."""
    _need(binaries.KSERVE_MANAGER, RELEASE)
    _need(binaries.PROXY, "v0.22.1")
    closed = free_loopback_port()
    raw = yaml.safe_load(DEFAULT_MATRIX_FILE.read_text())
    raw["variants"].append(
        {
            "name": "closed-upstream",
            "description": "--upstream at a port nothing listens on",
            "args_drop": ["--upstream=http://127.0.0.1:8080/"],
            "args_add": [f"--upstream=http://127.0.0.1:{closed}/"],
        }
    )
    matrix_file = tmp_path / "matrix.yaml"
    matrix_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    # The cell id names release, proxy and variant (--cell with --kserve or --proxy is refused).
    code, output, result = run_scenarios(
        tmp_path, "--matrix", str(matrix_file), "--cell", f"kserve-{RELEASE}--quay-v0.22.1--k8s-1.34--closed-upstream"
    )
    assert result["verdict"] == "fail", output[-3000:]
    found = checks_of(result)
    assert found["metrics-authorized"]["status"] == "fail"
    assert found["metrics-authorized"]["detail"] == "metrics-reader token: expected 200, got 502"
    assert found["metrics-content"]["status"] == "skipped"
    # Kept exactly as the Deployment says: no remap note for it.
    assert not any(f"--upstream: http://127.0.0.1:{closed}/ ->" in note for note in result["notes"])
    assert code != 0


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_a_manager_that_exits_at_start_makes_the_cell_an_error(tmp_path: Path) -> None:
    _need(binaries.PROXY, "v0.18.0")
    _need(certmanager.CONTROLLER, certmanager.VERSION)
    _need(certmanager.CAINJECTOR, certmanager.VERSION)
    fake = tmp_path / "kserve-manager"
    fake.write_text(
        "#!/bin/sh\necho 'setup: unable to get configmap inferenceservice-config'\necho 'giving up'\nexit 3\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    code, output, result = run_scenarios(
        tmp_path,
        "--kserve",
        RELEASE,
        "--proxy",
        "quay-v0.18.0",
        env={binaries.env_var(binaries.KSERVE_MANAGER, RELEASE): str(fake)},
    )
    assert result["verdict"] == "error", output[-3000:]
    assert "manager (kserve-manager v0.20.0) exited with code 3 at start" in result["reason"]
    install = checks_of(result)["install"]
    assert "exit code 3" in install["evidence"] and "giving up" in install["evidence"]
    assert code != 0


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_a_release_whose_manager_is_refused_runs_on_a_labelled_stand_in(tmp_path: Path) -> None:
    """KServe v0.18.0's module is refused by the Go proxy (403): its cell falls back to the
    stand-in, and every report says which results are a stand-in's."""
    _need(binaries.PROXY, "v0.22.1")
    reason = binaries.buildable(binaries.KSERVE_MANAGER, "v0.18.0")
    if reason[0]:
        pytest.skip("kserve-manager v0.18.0 exists here: no fallback to show")
    code, output, result = run_scenarios(tmp_path, "--kserve", "v0.18.0", "--proxy", "quay-v0.22.1")
    content = checks_of(result)["metrics-content"]
    assert content["status"] == "pass", output[-3000:]
    assert content["detail"].startswith("STAND-IN RESULT, not KServe's manager (kserve-manager v0.18.0 unavailable")
    deviations = " ".join(result["deviations"])
    assert "metrics-content and metrics-scrape are stand-in results" in deviations
    assert "admission webhooks of Service kserve/kserve-webhook-server-service removed" in deviations
    markdown = (tmp_path / "reports" / "report.md").read_text()
    assert "stand-in results" in markdown and "STAND-IN RESULT" in (tmp_path / "reports" / "junit.xml").read_text()
    assert code == 0, output[-3000:]


# -- KServe v0.16.0: its llmisvc controller played by the release's cmd/llmisvc -------------

LLM_RELEASE = "v0.16.0"
LLM_SERVICE = "kserve/llmisvc-webhook-server-service"
LLM_CONFIGURATIONS = ("llminferenceservice.serving.kserve.io", "llminferenceserviceconfig.serving.kserve.io")


@pytest.fixture(scope="module")
def installed_llmisvc(release_files: SessionReleaseFiles) -> Iterator[Installed]:
    _need(binaries.KSERVE_LLMISVC, LLM_RELEASE)
    with _install(release_files, "llmisvc-test", version=LLM_RELEASE) as found:
        yield found


def _played_llmisvc(installed: Installed) -> PlayedContainer:
    (played,) = [p for p in installed.cluster._played.values() if p.role == "llmisvc"]
    return played


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_v016s_llmisvc_controller_is_played_by_its_release_binary(installed_llmisvc: Installed) -> None:
    prefix = "kserve/llmisvc-controller-manager/manager: "
    notes = installed_llmisvc.sync_notes
    assert prefix + "--metrics-addr: 127.0.0.1:8443 -> a loopback port" in notes
    assert prefix + "--webhook-port: (absent, default 9443) -> a loopback port" in notes
    assert prefix + "--health-probe-addr: (absent, default :8081) -> a loopback port" in notes
    assert any(n.startswith(prefix + "--leader-elect: removed") for n in notes)
    assert (
        f"kserve/llmisvc-controller-manager/manager as kserve-llmisvc {LLM_RELEASE}"
        in installed_llmisvc.cluster.last_sync.started
    )
    played = _played_llmisvc(installed_llmisvc)
    runner: Any = played.runner
    assert runner.alive
    assert runner.binary == binaries.locate(binaries.KSERVE_LLMISVC, LLM_RELEASE)
    assert runner.process.env["POD_NAMESPACE"] == "kserve"  # from its fieldRef
    assert not any(a.startswith("--leader-elect") for a in runner.args)
    assert requests.get(f"http://127.0.0.1:{runner.ready_port}/readyz", timeout=5).status_code == 200
    # Its own ServiceAccount's token: KServe's RBAC for llmisvc-controller-manager decides.
    kubeconfig = yaml.safe_load(Path(runner.process.env["KUBECONFIG"]).read_text())
    token = kubeconfig["users"][0]["user"]["token"]
    review = k8s_client.AuthenticationV1Api(installed_llmisvc.api).create_token_review(
        k8s_client.V1TokenReview(spec=k8s_client.V1TokenReviewSpec(token=token))
    )
    assert review.status.user.username == "system:serviceaccount:kserve:llmisvc-controller-manager"


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_v016s_llmisvc_webhooks_are_routed_to_it_with_its_issued_ca(installed_llmisvc: Installed) -> None:
    api = installed_llmisvc.api
    admission = k8s_client.AdmissionregistrationV1Api(api)
    secret = k8s_client.CoreV1Api(api).read_namespaced_secret("llmisvc-webhook-server-cert", "kserve")
    injected = (secret.data or {})["ca.crt"]
    runner: Any = _played_llmisvc(installed_llmisvc).runner
    for name in LLM_CONFIGURATIONS:
        (webhook,) = admission.read_validating_webhook_configuration(name).webhooks
        assert webhook.client_config.service is None
        assert webhook.client_config.url.startswith(f"https://127.0.0.1:{runner.webhook_port}/validate-"), name
        assert webhook.client_config.ca_bundle == injected, name
    served = Path(runner.process.env["TMPDIR"]) / "k8s-webhook-server" / "serving-certs" / "tls.crt"
    assert served.read_bytes() == base64.b64decode((secret.data or {})["tls.crt"])
    certificate = k8s_client.CustomObjectsApi(api).get_namespaced_custom_object(
        "cert-manager.io", "v1", "kserve", "certificates", "llmisvc-serving-cert"
    )
    assert certificate["spec"]["ipAddresses"] == ["127.0.0.1"]
    deviations = installed_llmisvc.cluster.info.deviations
    assert (
        f"admission webhooks of Service {LLM_SERVICE} (2): clientConfig points at the played manager (url "
        "https://127.0.0.1:<port><path>, caBundle injected by cert-manager's cainjector; no Service routing "
        "without a kubelet)" in deviations
    )
    assert (
        "webhook serving certificate issued by cert-manager v1.11.5 (controller and cainjector played as processes) "
        "into Secret kserve/llmisvc-webhook-server-cert; Certificate kserve/llmisvc-serving-cert given ipAddresses "
        "[127.0.0.1] so the API server can verify https://127.0.0.1:<port>" in deviations
    )
    assert not any("removed" in d for d in deviations + installed_llmisvc.installation.deviations)


def _create(api: k8s_client.ApiClient, plural: str, body: dict[str, Any]) -> Any:
    return k8s_client.CustomObjectsApi(api).create_namespaced_custom_object(
        "serving.kserve.io", "v1alpha1", "kserve", plural, body
    )


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_v016s_real_llmisvc_webhooks_deny_what_kserve_rejects(installed_llmisvc: Installed) -> None:
    api = installed_llmisvc.api
    config = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LLMInferenceServiceConfig",
        "metadata": {"name": "compat-recursive", "namespace": "kserve"},
        "spec": {"baseRefs": [{"name": "kserve-config-llm-template"}]},
    }
    with pytest.raises(k8s_client.ApiException) as rejected:
        _create(api, "llminferenceserviceconfigs", config)
    body = json.loads(rejected.value.body)["message"]
    assert 'admission webhook "llminferenceserviceconfig.kserve-webhook-server.validator" denied the request' in body
    assert "spec.baseRefs is not a permitted field in LLMInferenceServiceConfig" in body
    service = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LLMInferenceService",
        "metadata": {"name": "compat-data-without-local", "namespace": "kserve"},
        "spec": {"model": {"uri": "hf://example/model"}, "parallelism": {"data": 2}},
    }
    with pytest.raises(k8s_client.ApiException) as rejected:
        _create(api, "llminferenceservices", service)
    body = json.loads(rejected.value.body)["message"]
    assert 'admission webhook "llminferenceservice.kserve-webhook-server.validator" denied the request' in body
    assert "dataLocal must be set when data is set" in body
    # What the validator accepts is admitted: the webhook answers, it does not fail closed.
    del config["spec"]["baseRefs"]
    config["metadata"]["name"] = "compat-empty"
    _create(api, "llminferenceserviceconfigs", config)
    k8s_client.CustomObjectsApi(api).delete_namespaced_custom_object(
        "serving.kserve.io", "v1alpha1", "kserve", "llminferenceserviceconfigs", "compat-empty"
    )


@pytest.mark.needs_binaries
@pytest.mark.slow
def test_without_an_llmisvc_binary_its_webhooks_are_removed_with_the_reason(
    release_files: SessionReleaseFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = "kserve-llmisvc v0.16.0 unavailable: (as if the Go module proxy refused it)"

    def refused(image: str, component: str) -> tuple[str, Path]:
        raise WorkloadUnavailable(reason)

    monkeypatch.setattr(players, "controller_binary_for", refused)
    with _install(release_files, "llmisvc-refused", version=LLM_RELEASE) as found:
        assert f"kserve/llmisvc-controller-manager/manager: not played: {reason}" in found.sync_notes
        assert not [p for p in found.cluster._played.values() if p.role == "llmisvc"]
        admission = k8s_client.AdmissionregistrationV1Api(found.api)
        names = {c.metadata.name for c in admission.list_validating_webhook_configuration().items}
        assert not names & set(LLM_CONFIGURATIONS)
        assert (
            f"admission webhooks of Service {LLM_SERVICE} removed (2): its controller is not played: {reason} "
            "(llminferenceservice.kserve-webhook-server.validator, "
            "llminferenceserviceconfig.kserve-webhook-server.validator)" in found.cluster.info.deviations
        )
