"""The metrics-scrape check against a real Prometheus scraping a real kube-rbac-proxy.

Debian's Prometheus binary scrapes a real proxy (KServe's sidecar args) in front of the
metrics stand-in, authenticated by ServiceAccount tokens of a real API server: a reader
bound to a ClusterRole with ``get`` on ``/metrics`` and an account with no RBAC. The check
passes only when the reader's job is up with the controller's metrics and the other job is
refused with 403; a proxy that refuses the reader, and one whose upstream is down, fail it
with the targets' health and lastError as evidence.
"""

from __future__ import annotations

import contextlib
import logging
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from helpers.cells import new_cell
from helpers.paths import REPO
from kubernetes import client as k8s_client

from e2e import binaries, scrape
from e2e.availability import unavailable
from e2e.cluster.local import LocalCluster
from e2e.cluster.provider import ServiceTarget, no_endpoint_change
from e2e.errors import EnvironmentMissing, HarnessError, WorkloadFailed
from e2e.local import prometheus as local_prometheus
from e2e.local.controlplane import ControlPlane
from e2e.local.metrics_upstream import MetricsUpstream
from e2e.local.processes import free_loopback_port, running_processes
from e2e.local.prometheus import PrometheusProcess
from e2e.local.proxy_runner import ProxyProcess
from e2e.local.service_relay import ServiceRelay
from e2e.results import CheckStatus
from e2e.scrape import NO_ACCESS_JOB, READER_JOB, PrometheusAPI, ScrapeJob, check_metrics_scrape
from e2e.tokens import ensure_service_account, kubeconfig_for_service_account, mint_token

NAMESPACE = "scrape-test"
PROXY_VERSION = "v0.22.1"
# KServe's sidecar args (kserve.yaml v0.14.0 and later); the two addresses get remapped.
KSERVE_PROXY_ARGS = [
    "--secure-listen-address=0.0.0.0:8443",
    "--upstream=http://127.0.0.1:8080/",
    "--logtostderr=true",
    "--v=10",
]
TARGET = ServiceTarget("kserve", "kserve-controller-manager-metrics-service", 8443)


def prometheus_binary() -> Path:
    """The prometheus binary, or skip (locally) / fail (CI=true) the test."""
    binary = local_prometheus.locate()
    if binary is None:
        unavailable(f"no prometheus binary: {local_prometheus.INSTALL_HINT}")
    return binary


# -- without a cluster -------------------------------------------------------------------


def test_missing_prometheus_fails_the_test_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(local_prometheus.BINARY_ENV, "/nonexistent/prometheus")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="prometheus"):
        prometheus_binary()
    with pytest.raises(EnvironmentMissing, match="KSERVE_COMPAT_PROMETHEUS=/nonexistent/prometheus"):
        local_prometheus.require()


@pytest.mark.parametrize(
    ("error", "ci", "status"),
    [
        (EnvironmentMissing("no prometheus binary on PATH"), "true", CheckStatus.ERROR),
        (EnvironmentMissing("no prometheus binary on PATH"), "", CheckStatus.SKIPPED),
        (HarnessError("kind tier: no Prometheus is started yet"), "true", CheckStatus.SKIPPED),
    ],
)
def test_a_cell_without_prometheus_records_why_and_fails_only_for_a_missing_binary_in_ci(
    monkeypatch: pytest.MonkeyPatch, error: HarnessError, ci: str, status: CheckStatus
) -> None:
    from e2e.steps import metrics_scrape

    monkeypatch.setenv("CI", ci)
    run: Any = SimpleNamespace(result=new_cell(proxy="quay-v0.22.1"), cluster=None)
    run.group_cluster = lambda: SimpleNamespace(prometheus_error=error)
    metrics_scrape.act(run)
    (check,) = run.result.checks
    assert (check.name, check.status) == ("metrics-scrape", status)
    assert str(error) in check.detail


def test_a_prometheus_that_died_is_an_error_with_its_last_words(monkeypatch: pytest.MonkeyPatch) -> None:
    from e2e.steps import metrics_scrape

    def dead() -> None:
        raise WorkloadFailed("prometheus exited: code 1", ["exit code 1", 'err="opening storage failed"'])

    run: Any = SimpleNamespace(result=new_cell(proxy="quay-v0.22.1"), cluster=None)
    provider = SimpleNamespace(prometheus_endpoint=dead)
    run.group_cluster = lambda: SimpleNamespace(prometheus_error=None, provider=provider)
    metrics_scrape.act(run)
    (check,) = run.result.checks
    assert (check.name, check.status) == ("metrics-scrape", CheckStatus.ERROR)
    assert "prometheus exited" in check.detail
    assert check.evidence == ["exit code 1", 'err="opening storage failed"']


def test_the_local_config_is_the_sample_servicemonitor_as_a_scrape_config(tmp_path: Path) -> None:
    """What the local Prometheus is given: two HTTPS jobs with a token file each and the
    certificate not verified, every second; promtool (Debian's) accepts it."""
    jobs = [
        ScrapeJob(READER_JOB, TARGET, "prometheus", "reader-token-value"),
        ScrapeJob(NO_ACCESS_JOB, TARGET, "no-access", "no-access-token-value", allowed=False),
    ]
    process = PrometheusProcess(Path("/bin/false"), jobs, {j.name: "127.0.0.1:18443" for j in jobs}, tmp_path)
    tokens = tmp_path / "tokens"
    tokens.mkdir(mode=0o700)
    for job in jobs:
        local_prometheus._write_secret(tokens / f"{job.name}.token", job.token)
    process.config_path.write_text(yaml.safe_dump(scrape.prometheus_config(process._configs)))
    config = yaml.safe_load(process.config_path.read_text())
    assert config["global"] == {"scrape_interval": "250ms", "scrape_timeout": "250ms"}
    assert [c["job_name"] for c in config["scrape_configs"]] == [READER_JOB, NO_ACCESS_JOB]
    for entry, job in zip(config["scrape_configs"], jobs, strict=True):
        assert entry["scheme"] == "https" and entry["metrics_path"] == "/metrics"
        assert entry["tls_config"] == {"insecure_skip_verify": True}
        assert entry["static_configs"] == [{"targets": ["127.0.0.1:18443"]}]
        assert Path(entry["bearer_token_file"]).read_text() == job.token
        assert stat.S_IMODE(Path(entry["bearer_token_file"]).stat().st_mode) == 0o600
    assert "token-value" not in process.config_path.read_text()
    assert not any("token-value" in arg for arg in process.process.argv)
    promtool = prometheus_binary().parent / "promtool"
    if promtool.exists():
        checked = subprocess.run([promtool, "check", "config", process.config_path], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def _yaml_after(text: str, marker: str) -> Any:
    start = text.index("```yaml\n", text.index(marker)) + len("```yaml\n")
    return yaml.safe_load(text[start : text.index("```", start)])


def test_readme_and_kind_manifest_show_the_config_the_local_tier_runs() -> None:
    """The docs' copyable scrape config and the kind manifest's ConfigMap are the local
    configuration with the Service's DNS name and in-pod token files."""
    expected = scrape.in_cluster_config(TARGET)
    readme = (REPO / "docs" / "prometheus.md").read_text()
    assert _yaml_after(readme, "<!-- scrape-config -->") == expected
    documents = list(yaml.safe_load_all((REPO / "e2e" / "data" / "manifests" / "prometheus.yaml").read_text()))
    (config_map,) = [d for d in documents if d["kind"] == "ConfigMap"]
    # The harness's Prometheus reads the tokens it minted from a Secret (the leak check knows them).
    assert yaml.safe_load(config_map["data"]["prometheus.yml"]) == scrape.in_cluster_config(
        TARGET,
        f"{scrape.IN_CLUSTER_TOKENS_DIR}/{scrape.READER_JOB}",
        f"{scrape.IN_CLUSTER_TOKENS_DIR}/{scrape.NO_ACCESS_JOB}",
    )
    jobs = [
        ScrapeJob(READER_JOB, TARGET, "prometheus", "reader-token"),
        ScrapeJob(scrape.NO_ACCESS_JOB, TARGET, "no-access", "no-access-token", allowed=False),
    ]
    concrete = scrape.in_cluster_documents(documents, jobs, "kserve-compat.local/prometheus:2.42.0")
    (secret,) = [d for d in concrete if d["kind"] == "Secret"]
    assert secret["metadata"]["name"] == scrape.IN_CLUSTER_TOKENS_SECRET
    assert secret["stringData"] == {READER_JOB: "reader-token", scrape.NO_ACCESS_JOB: "no-access-token"}
    (concrete_map,) = [d for d in concrete if d["kind"] == "ConfigMap"]
    assert concrete_map["data"] == config_map["data"]  # the manifest already says what runs
    (deployment,) = [d for d in concrete if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "kserve-compat.local/prometheus:2.42.0"
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "scrape-tokens", "mountPath": scrape.IN_CLUSTER_TOKENS_DIR, "readOnly": True} in mounts
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert ("Deployment", "prometheus") in kinds
    access = list(yaml.safe_load_all((REPO / "e2e" / "data" / "manifests" / "metrics-access.yaml").read_text()))
    (binding,) = [d for d in access if d["kind"] == "ClusterRoleBinding"]
    assert {"kind": "ServiceAccount", "name": "prometheus", "namespace": "kserve-compat"} in binding["subjects"]


def test_an_unreachable_prometheus_is_an_error_not_a_failure(unused_port: int) -> None:
    cell = new_cell(proxy="quay-v0.22.1")
    jobs = [ScrapeJob(READER_JOB, TARGET, "prometheus", "t")]
    check = check_metrics_scrape(
        cell, PrometheusAPI(f"http://127.0.0.1:{unused_port}"), jobs, time.time(), timeout_s=1.0
    )
    assert check.status is CheckStatus.ERROR
    assert "did not answer" in check.detail
    assert cell.checks == [check]


@pytest.fixture
def unused_port() -> int:
    return free_loopback_port()


# -- a real Prometheus, real proxies, a real API server ----------------------------------


@pytest.fixture(scope="module")
def control_plane(control_plane: ControlPlane) -> ControlPlane:
    """The module's API server with the proxy's role and the metrics-reader role."""
    with control_plane.api_client() as api:
        rbac = k8s_client.RbacAuthorizationV1Api(api)
        roles = {
            "scrape-test-proxy": [
                k8s_client.V1PolicyRule(
                    api_groups=["authentication.k8s.io"], resources=["tokenreviews"], verbs=["create"]
                ),
                k8s_client.V1PolicyRule(
                    api_groups=["authorization.k8s.io"], resources=["subjectaccessreviews"], verbs=["create"]
                ),
            ],
            "scrape-test-metrics-reader": [k8s_client.V1PolicyRule(non_resource_urls=["/metrics"], verbs=["get"])],
        }
        for name, rules in roles.items():
            rbac.create_cluster_role(k8s_client.V1ClusterRole(metadata=k8s_client.V1ObjectMeta(name=name), rules=rules))
    return control_plane


def _account(api: k8s_client.ApiClient, name: str, role: str | None) -> str:
    """A ServiceAccount of its own (no auth cache can blur it), bound to ``role``; its token."""
    ensure_service_account(api, NAMESPACE, name)
    if role:
        k8s_client.RbacAuthorizationV1Api(api).create_cluster_role_binding(
            k8s_client.V1ClusterRoleBinding(
                metadata=k8s_client.V1ObjectMeta(name=f"{role}--{name}"),
                role_ref=k8s_client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
                subjects=[k8s_client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=NAMESPACE)],
            )
        )
    return mint_token(api, NAMESPACE, name)


@dataclass
class Scraped:
    prometheus: PrometheusProcess
    relay: ServiceRelay
    upstream: MetricsUpstream
    jobs: list[ScrapeJob]
    started: float

    @property
    def api(self) -> PrometheusAPI:
        return PrometheusAPI(self.prometheus.url)


@contextlib.contextmanager
def scraped(control_plane: ControlPlane, tmp_path: Path, name: str, *, reader_has_rbac: bool) -> Iterator[Scraped]:
    """A real proxy (KServe's args) before a metrics upstream, and a real Prometheus with
    the check's two jobs on it: a reader (bound to the metrics role, or not) and no-access."""
    binary = binaries.locate("kube-rbac-proxy", PROXY_VERSION)
    if binary is None:
        unavailable(f"kube-rbac-proxy {PROXY_VERSION} binary missing: run `nox -s binaries`")
    prometheus_bin = prometheus_binary()
    with control_plane.api_client() as api, MetricsUpstream() as upstream:
        proxy_account = f"proxy-{name}"
        _account(api, proxy_account, "scrape-test-proxy")
        kubeconfig = kubeconfig_for_service_account(
            api,
            server=control_plane.server,
            ca=control_plane.ca_file,
            namespace=NAMESPACE,
            service_account=proxy_account,
            path=tmp_path / "proxy.kubeconfig",
        )
        jobs = [
            ScrapeJob(
                READER_JOB,
                TARGET,
                f"reader-{name}",
                _account(api, f"reader-{name}", "scrape-test-metrics-reader" if reader_has_rbac else None),
            ),
            ScrapeJob(
                NO_ACCESS_JOB, TARGET, f"no-access-{name}", _account(api, f"no-access-{name}", None), allowed=False
            ),
        ]
        proxy = ProxyProcess.from_container_args(
            binary, KSERVE_PROXY_ARGS, upstream_url=upstream.url, kubeconfig=kubeconfig, workdir=tmp_path
        )
        started = time.time()
        # As on the local tier: Prometheus reaches the "Service" through a relay.
        with (
            proxy,
            ServiceRelay(lambda: proxy.address, "metrics") as relay,
            PrometheusProcess(
                prometheus_bin, jobs, {j.name: relay.address for j in jobs}, tmp_path / "prometheus"
            ) as prometheus,
        ):
            prometheus.wait_ready()
            _wait_for_targets(PrometheusAPI(prometheus.url), len(jobs))
            yield Scraped(prometheus, relay, upstream, jobs, started)


def _wait_for_targets(api: PrometheusAPI, count: int) -> None:
    """Prometheus applies a new configuration's targets up to 5 s after it starts (its scrape
    manager syncs every 5 s): the tests' own timeouts then measure the check alone."""
    deadline = time.monotonic() + 20
    while len(api.targets()) < count:
        assert time.monotonic() < deadline, "Prometheus never listed its targets"
        time.sleep(0.2)


def test_prometheus_gets_the_metrics_with_rbac_and_a_403_without(
    control_plane: ControlPlane, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with scraped(control_plane, tmp_path, "healthy", reader_has_rbac=True) as run:
        cell = new_cell(proxy="quay-v0.22.1")
        check = check_metrics_scrape(cell, run.api, run.jobs, run.started)
        assert check.status is CheckStatus.PASS, (check.detail, check.evidence)
        assert f"job {READER_JOB} up == 1" in check.detail
        assert f"job {NO_ACCESS_JOB} up == 0 (HTTP 403)" in check.detail
        evidence = "\n".join(check.evidence)
        assert f"job {READER_JOB} https://{run.relay.address}/metrics: health=up" in evidence
        assert "health=down" in evidence and "403" in evidence
        assert run.upstream.requests_served > 0  # the reader's scrapes went through to the upstream
        prometheus_log = run.prometheus.logs()
        # What the check waited for is in the log, the tokens are nowhere.
        assert "metrics-scrape: waiting up to" in caplog.text
        for job in run.jobs:
            for text in (caplog.text, prometheus_log, run.prometheus.config_path.read_text(), str(cell.to_dict())):
                assert job.token not in text
    assert not run.prometheus.alive
    assert run.prometheus.process not in running_processes()


def test_a_proxy_that_refuses_the_reader_fails_the_check_with_the_403(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    with scraped(control_plane, tmp_path, "refused", reader_has_rbac=False) as run:
        check = check_metrics_scrape(new_cell(proxy="quay-v0.22.1"), run.api, run.jobs, run.started, timeout_s=4.0)
    assert check.status is CheckStatus.FAIL
    assert f"job {READER_JOB}: expected up == 1, got up == 0" in check.detail
    reader_line = next(line for line in check.evidence if line.startswith(f"job {READER_JOB} "))
    assert "health=down" in reader_line and "403" in reader_line


def test_a_proxy_whose_upstream_is_down_fails_the_check_with_the_proxy_answer(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    with scraped(control_plane, tmp_path, "no-upstream", reader_has_rbac=True) as run:
        run.upstream.stop()
        check = check_metrics_scrape(new_cell(proxy="quay-v0.22.1"), run.api, run.jobs, time.time(), timeout_s=4.0)
    assert check.status is CheckStatus.FAIL
    assert f"job {READER_JOB}: expected up == 1" in check.detail
    reader_line = next(line for line in check.evidence if line.startswith(f"job {READER_JOB} "))
    assert "health=down" in reader_line and "502" in reader_line


def test_only_scrapes_after_the_swap_count(control_plane: ControlPlane, tmp_path: Path) -> None:
    """A swap in the future: no scrape is newer, so the check fails saying it saw none."""
    with scraped(control_plane, tmp_path, "future", reader_has_rbac=True) as run:
        check = check_metrics_scrape(new_cell(proxy="quay-v0.22.1"), run.api, run.jobs, time.time() + 60, timeout_s=1.5)
    assert check.status is CheckStatus.FAIL
    assert "no scrape since the swap yet" in check.detail


def test_the_local_cluster_stops_its_prometheus_and_removes_its_data(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LocalCluster.delete`` (which the provider's context manager calls, also on Ctrl-C)
    stops the Prometheus process and removes its data directory with the cluster's."""
    prometheus_binary()
    cluster = LocalCluster(control_plane, "scrape-test")
    # No played proxy behind the Service here: Prometheus scrapes a closed port.
    monkeypatch.setattr(cluster, "endpoint", lambda target: no_endpoint_change(f"127.0.0.1:{free_loopback_port()}"))
    try:
        cluster.start_prometheus([ScrapeJob(READER_JOB, TARGET, "prometheus", "a-token")])
        with cluster.prometheus_endpoint() as address:
            PrometheusAPI(f"http://{address}").targets()  # its API answers
        process = cluster._prometheus
        assert process is not None and process.data_dir.is_dir()
    finally:
        cluster.delete()
    assert not process.alive and process.process not in running_processes()
    assert not process.workdir.exists()
    assert not any(str(process.workdir) in cmdline for cmdline in _command_lines())


def _command_lines() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return found
