"""``kserve-compat watch-images`` for real: a real API server holding a KServe controller
Deployment and a predictor pod, a real registry, a real Prometheus loading the shipped rules.

Three images are in use: two served by the registry, one on a registry that cannot be
reached (a closed port). The watcher runs as users run it (a process, ``--interval 1``);
mid-run one image is deleted from the registry, as gcr.io/kubebuilder's were. Its metric
flips to 0, the unreachable one stays "could not check" (never "gone"), and Prometheus,
scraping the watcher with the shipped rules file, puts exactly the deleted image's
``KServeImageCannotBePulled`` alert in its pending state (its ``for:`` is 15 minutes).

In the cluster: the manifest ``--print-manifest`` prints applies (the Prometheus Operator's
two kinds on stand-in CRDs), and a token of its ServiceAccount, mounted as the kubelet would
mount it, lets ``connect`` find the pod's ServiceAccount and a round read what it reads as an
admin, and nothing more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import yaml
from helpers.paths import REPO
from helpers.registry_server import (
    RunningRegistry,
    push_image,
    require_registry_binary,
    run_registry,
)
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from e2e.availability import unavailable
from e2e.data import MANIFESTS_DIR
from e2e.errors import EnvironmentMissing
from e2e.local import prometheus as local_prometheus
from e2e.local.processes import free_loopback_port

pytestmark = pytest.mark.needs_binaries

RULES = MANIFESTS_DIR / "watch-images-rules.yaml"
T = TypeVar("T")


def eventually(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            found = check()
        except (requests.RequestException, ValueError) as exc:
            found, last = None, exc
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last})")


@pytest.fixture(scope="module")
def images_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningRegistry, dict[str, str]]]:
    with run_registry(require_registry_binary(), tmp_path_factory.mktemp("registry")) as running:
        digests = {
            "kserve/kserve-controller:v0.14.0": push_image(running.url, "kserve/kserve-controller", "v0.14.0"),
            "brancz/kube-rbac-proxy:v0.22.1": push_image(running.url, "brancz/kube-rbac-proxy", "v0.22.1"),
        }
        yield running, digests


@pytest.fixture(scope="module")
def cluster(api: k8s_client.ApiClient, images_registry: tuple[RunningRegistry, dict[str, str]]) -> dict[str, str]:
    """The KServe namespace's controller Deployment and a predictor pod elsewhere."""
    registry, _ = images_registry
    images = {
        "manager": f"{registry.host}/kserve/kserve-controller:v0.14.0",
        "proxy": f"{registry.host}/brancz/kube-rbac-proxy:v0.22.1",
        "predictor": "127.0.0.1:1/kserve/sklearnserver:v0.14.0",  # a registry nobody answers for
    }
    core, apps = k8s_client.CoreV1Api(api), k8s_client.AppsV1Api(api)
    for namespace in ("kserve", "models"):
        core.create_namespace({"metadata": {"name": namespace}})
        # No controller-manager here to make it: pods need their ServiceAccount to exist.
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}})
    labels = {"control-plane": "kserve-controller-manager"}
    apps.create_namespaced_deployment("kserve", {
        "metadata": {"name": "kserve-controller-manager"},
        "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
            "containers": [{"name": "manager", "image": images["manager"]},
                           {"name": "kube-rbac-proxy", "image": images["proxy"]}]}}},
    })  # fmt: skip
    core.create_namespaced_pod("models", {
        "metadata": {"name": "iris-predictor-0", "labels": {"serving.kserve.io/inferenceservice": "iris"}},
        "spec": {"containers": [{"name": "kserve-container", "image": images["predictor"]}]},
    })  # fmt: skip
    return images


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(url, timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scraped_when(url: str, image: str, available: float) -> Callable[[], Any]:
    """A check for ``eventually``: the scrape once ``image``'s availability is ``available``."""

    def check() -> Any:
        samples = scrape(url)
        return samples if value(samples, "kserve_compat_image_available", image) == available else None

    return check


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, image: str) -> float | None:
    return next((v for (n, labels), v in samples.items() if n == name and ("image", image) in labels), None)


@pytest.fixture
def watcher(control_plane: Any, cluster: dict[str, str]) -> Iterator[str]:
    port = free_loopback_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "e2e.cli", "watch-images", "--kubeconfig", str(control_plane.kubeconfig),
         "--interval", "1", "--listen", f"127.0.0.1:{port}", "--timeout", "2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err[-2000:]
        assert "Traceback" not in err


def test_a_deleted_image_flips_its_metric_and_its_alert_while_an_unreachable_registry_is_not_gone(
    watcher: str, cluster: dict[str, str], images_registry: tuple[RunningRegistry, dict[str, str]], tmp_path: Path
) -> None:
    registry, digests = images_registry
    first = eventually("a first round", scraped_when(watcher, cluster["proxy"], 1))
    assert value(first, "kserve_compat_image_available", cluster["manager"]) == 1
    assert value(first, "kserve_compat_images_watched", "") is None  # no image label on the count
    assert first[("kserve_compat_images_watched", ())] == 3
    # The unreachable registry: "could not check", and no availability claimed either way.
    assert value(first, "kserve_compat_image_check_ok", cluster["predictor"]) == 0
    assert value(first, "kserve_compat_image_available", cluster["predictor"]) is None

    # The registry deletes the proxy image, as gcr.io/kubebuilder did.
    deleted = requests.delete(
        f"{registry.url}/v2/brancz/kube-rbac-proxy/manifests/{digests['brancz/kube-rbac-proxy:v0.22.1']}", timeout=10
    )
    assert deleted.status_code == 202, deleted.text
    flipped = eventually("the deleted image's metric at 0", scraped_when(watcher, cluster["proxy"], 0))
    assert value(flipped, "kserve_compat_image_check_ok", cluster["proxy"]) == 1  # the registry did answer
    assert value(flipped, "kserve_compat_image_available", cluster["manager"]) == 1
    errors = [labels for (name, labels), v in flipped.items() if name == "kserve_compat_image_last_error" and v == 1]
    proxy_errors = [dict(labels)["error"] for labels in errors if ("image", cluster["proxy"]) in labels]
    assert len(proxy_errors) == 1 and proxy_errors[0].startswith("missing (404"), errors

    # A real Prometheus with the shipped rules: the deleted image's alert, and only its, is pending.
    try:
        binary = local_prometheus.require()
    except EnvironmentMissing as exc:
        unavailable(str(exc))
    port = free_loopback_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "watch-images",
                            "static_configs": [{"targets": [watcher.removeprefix("http://").split("/")[0]]}]}],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = subprocess.Popen(
        [str(binary), f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"),
    )  # fmt: skip
    try:

        def alerts() -> list[dict[str, Any]] | None:
            body = requests.get(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5).json()
            found: list[dict[str, Any]] = body["data"]["alerts"]
            names = {a["labels"]["alertname"] for a in found}
            return found if {"KServeImageCannotBePulled", "KServeImageRegistryUnreachable"} <= names else None

        found = eventually("both alerts pending in Prometheus", alerts, timeout=90)
        pulled = [a for a in found if a["labels"]["alertname"] == "KServeImageCannotBePulled"]
        assert [(a["labels"]["image"], a["state"]) for a in pulled] == [(cluster["proxy"], "pending")]
        unreachable = [a for a in found if a["labels"]["alertname"] == "KServeImageRegistryUnreachable"]
        assert [a["labels"]["image"] for a in unreachable] == [cluster["predictor"]]
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


def test_once_exits_4_when_an_image_is_gone_even_with_a_registry_unreachable(
    control_plane: Any, cluster: dict[str, str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "e2e.cli", "watch-images", "--kubeconfig", str(control_plane.kubeconfig), "--once",
         "--timeout", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False, env={**os.environ},
    )  # fmt: skip
    lines = dict(line.split("  ")[:2] for line in done.stdout.splitlines())
    assert lines[cluster["manager"]] == "available", done.stdout
    assert lines[cluster["predictor"]] == "could not check", done.stdout
    # The previous test deleted the proxy image; run alone, it is still there (exit 6).
    assert done.returncode == (4 if lines[cluster["proxy"]] == "gone" else 6), done.stdout + done.stderr


def test_a_bad_listen_address_is_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "e2e.cli", "watch-images", "--listen", "nowhere"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "--listen nowhere: expected HOST:PORT" in done.stderr


def test_the_pull_secrets_the_pods_name_give_the_probe_its_credentials(
    api: k8s_client.ApiClient, cluster: dict[str, str]
) -> None:
    import base64
    import json

    from e2e.secrets import redact
    from e2e.watch_images import images_in_use

    password = "pull-secret-password-of-models"
    config = {"auths": {
        "127.0.0.1:5999": {"auth": base64.b64encode(f"robot:{password}".encode()).decode()},
        "https://index.docker.io/v1/": {"username": "hub-user", "password": "hub-password-of-models"},
    }}  # fmt: skip
    core = k8s_client.CoreV1Api(api)
    core.create_namespaced_secret("models", {
        "metadata": {"name": "registry-login"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    })  # fmt: skip
    core.create_namespaced_pod("models", {
        "metadata": {"name": "private-predictor-0", "labels": {"serving.kserve.io/inferenceservice": "private"}},
        "spec": {"imagePullSecrets": [{"name": "registry-login"}, {"name": "not-there"}],
                 "containers": [{"name": "kserve-container", "image": "127.0.0.1:5999/private/model:v1"}]},
    })  # fmt: skip
    in_use = images_in_use(api, "kserve")
    assert "127.0.0.1:5999/private/model:v1" in in_use.images and cluster["predictor"] in in_use.images
    assert in_use.credentials == {
        "127.0.0.1:5999": ("robot", password), "docker.io": ("hub-user", "hub-password-of-models")
    }  # fmt: skip
    assert password not in redact(f"a log line that quotes {password}")
    core.delete_namespaced_pod("private-predictor-0", "models", grace_period_seconds=0)


def monitoring_crd(plural: str, kind: str) -> dict[str, Any]:
    """A stand-in for the Prometheus Operator's CRD of ``kind``: its name and group, any content."""
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": schema}]},
    }  # fmt: skip


def test_the_printed_manifest_applies_and_its_service_account_reads_what_a_round_needs_and_no_more(
    api: k8s_client.ApiClient, control_plane: Any, cluster: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import base64
    import json

    from e2e.apply import Applier
    from e2e.preflight import cluster as preflight_cluster
    from e2e.tokens import mint_token
    from e2e.watch_images import images_in_use

    printed = subprocess.run([sys.executable, "-m", "e2e.cli", "watch-images", "--print-manifest"], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    documents = [d for d in yaml.safe_load_all(printed) if d]
    crds = [monitoring_crd("servicemonitors", "ServiceMonitor"), monitoring_crd("prometheusrules", "PrometheusRule")]
    applier = Applier(api)
    report = applier.apply([*crds, *documents])
    assert len(report.applied) == len(crds) + len(documents) and not report.skipped

    # A predictor whose image is private: its pull secret is read by name, with `get`.
    core = k8s_client.CoreV1Api(api)
    login = {"auths": {"127.0.0.1:5998": {"username": "robot", "password": "watcher-pull-password"}}}
    core.create_namespaced_secret("models", {
        "metadata": {"name": "watcher-login"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(login).encode()).decode()},
    })  # fmt: skip
    core.create_namespaced_pod("models", {
        "metadata": {"name": "private-predictor-1", "labels": {"serving.kserve.io/inferenceservice": "private"}},
        "spec": {"imagePullSecrets": [{"name": "watcher-login"}],
                 "containers": [{"name": "kserve-container", "image": "127.0.0.1:5998/private/model:v2"}]},
    })  # fmt: skip
    account = {d["kind"]: d for d in documents}["ServiceAccount"]["metadata"]
    mounted = tmp_path / "serviceaccount"  # what the kubelet mounts into the watcher's pod
    mounted.mkdir()
    (mounted / "token").write_text(mint_token(api, account["namespace"], account["name"]))
    (mounted / "ca.crt").write_bytes(Path(control_plane.ca_file).read_bytes())
    monkeypatch.setattr(preflight_cluster, "SERVICE_ACCOUNT_DIR", mounted)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", control_plane.server.rsplit(":", 1)[1])
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    try:
        conn = preflight_cluster.connect(None, None)
        assert conn.in_cluster and conn.server == control_plane.server
        as_watcher = images_in_use(conn.api, "kserve")
        assert as_watcher == images_in_use(api, "kserve")
        assert "127.0.0.1:5998/private/model:v2" in as_watcher.images
        assert as_watcher.credentials["127.0.0.1:5998"] == ("robot", "watcher-pull-password")
        # Read-only, and no secret it was not told the name of.
        watcher_core = k8s_client.CoreV1Api(conn.api)
        for forbidden in (lambda: watcher_core.list_namespaced_secret("models"),
                          lambda: watcher_core.delete_namespaced_pod("private-predictor-1", "models"),
                          lambda: watcher_core.read_namespace("models")):  # fmt: skip
            with pytest.raises(ApiException) as refused:
                forbidden()
            assert refused.value.status == 403
        conn.api.close()
    finally:
        core.delete_namespaced_pod("private-predictor-1", "models", grace_period_seconds=0)
        core.delete_namespaced_secret("watcher-login", "models")
        applier.delete([*crds, *documents])
