"""``kserve-compat migrate`` on a real kind cluster, as an operator runs it on theirs.

The harness installs KServe v0.14.0 with the proxy it ships (quay-v0.18.0) and its two
sample models, and keeps the cluster (``--keep-cluster``). The run's registry mirrors stop
with it, so the test then plays the operator's own registry for quay.io: Debian's
docker-registry on the kind network's gateway, holding the proxy image built here, and the
nodes' ``certs.d/quay.io/hosts.toml`` pointing at it (what a site with a private mirror
has). Against that cluster, from the outside, with only its kubeconfig:

1. ``migrate --to quay-v0.22.1`` moves it, with the metrics and both models probed
   throughout: migrated, no model request lost, the metrics outage measured;
2. ``--to`` a tag the registry does not hold is refused by the preflight (exit 4, nothing
   written), and with ``--force`` it is applied, fails fast on the kubelet's pull error and
   is rolled back by itself: the cluster ends on the recorded Deployment, no model request
   lost;
3. a Deployment whose proxy carries ``--kube-api-qps`` (v0.18.0 knows it, v0.15.0 does not)
   moved to quay-v0.15.0 is refused with exit 7 naming the flag; with ``--force`` the new
   proxy crashes at start, the rollout fails fast with its last log lines, and the recorded
   Deployment comes back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kind_runs import kind_network_gateway, run_to_the_end
from release_files import session_release_files

from e2e.availability import unavailable
from e2e.cluster.kind import cluster_name, docker_preflight
from e2e.cluster.mirrors import RegistryMirror, hosts_toml, registry_binary
from e2e.errors import HarnessError
from e2e.imageset.offline import LocalImageSet, image_present
from e2e.local import binaries

pytestmark = [pytest.mark.slow, pytest.mark.needs_docker]

REPO = Path(__file__).resolve().parents[1]
KSERVE, K8S, SHIPPED_ALIAS = "v0.14.0", "1.34", "quay-v0.18.0"
SHIPPED = "quay.io/brancz/kube-rbac-proxy:v0.18.0"
TARGET = "quay.io/brancz/kube-rbac-proxy:v0.22.1"
MISSING = "quay.io/brancz/kube-rbac-proxy:v0.99.0"
OLDER = "quay.io/brancz/kube-rbac-proxy:v0.15.0"  # knows no --kube-api-qps
MODELS = ("kserve-compat-samples/sklearn-iris", "kserve-compat-samples/sklearn-iris-v2")


@dataclass(frozen=True)
class KeptCluster:
    kubeconfig: Path
    registry: RegistryMirror  # the operator's registry for quay.io
    env: dict[str, str]
    kubectl: str


def _harness_env() -> dict[str, str]:
    env = {**os.environ, "KSERVE_COMPAT_MANIFEST_DIR": str(session_release_files().offline_directory())}
    env.pop("CI", None)  # the harness's own behaviour, not the test suite's CI rule
    return env


@pytest.fixture(scope="module")
def kept_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeptCluster]:
    try:
        docker_preflight()
        registry_binary()
        LocalImageSet().node_image(K8S)
        kubectl = str(binaries.ensure("kubectl", binaries.KUBERNETES_VERSION))
        kind = str(binaries.ensure("kind"))
    except HarnessError as exc:
        unavailable(str(exc))
    for image in (SHIPPED, TARGET, OLDER):
        if not image_present(image):
            unavailable(f"{image} is not built (nox -s images -- build --kserve {KSERVE} --proxy quay-v0.22.1 "
                        "--proxy quay-v0.15.0)")  # fmt: skip
    workdir = tmp_path_factory.mktemp("kept")
    env = _harness_env()
    name = cluster_name(f"kserve-{KSERVE}--k8s-{K8S}")
    code, output = run_to_the_end(
        [sys.executable, "-m", "pytest", str(REPO / "scenarios"), "-p", "no:cacheprovider", "-q",
         "--provider", "kind", "--local-images", "--kserve", KSERVE, "--proxy", SHIPPED_ALIAS, "--k8s", K8S,
         "-k", "fresh", "--keep-cluster", "--reports-dir", str(workdir / "reports"),
         "-o", "log_cli=true", "--log-cli-level=INFO"],
        workdir, env, timeout=900,
    )  # fmt: skip
    state = workdir / ".pytest-kind" / name
    try:
        assert code == 0, output[-4000:]
        registry = RegistryMirror("operators-quay", workdir / "registry", workdir, kind_network_gateway(), None).start()
        try:
            for image in (SHIPPED, TARGET, OLDER):
                registry.push(image, image.removeprefix("quay.io/"))
            # The nodes pull quay.io from the operator's registry from now on (containerd reads
            # certs.d at every pull; the run's own mirror of quay.io stopped with the run).
            (state / "certs.d" / "quay.io" / "hosts.toml").write_text(hosts_toml(registry.node_url, "the test"))
            yield KeptCluster(state / "kubeconfig", registry, env, kubectl)
        finally:
            registry.stop()
    finally:
        subprocess.run([kind, "delete", "cluster", "--name", name], capture_output=True, check=False, timeout=300)
        found = subprocess.run(["docker", "ps", "-a", "--filter", f"label=io.x-k8s.kind.cluster={name}", "-q"],
                               capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
        if found:
            subprocess.run(["docker", "rm", "-f", *found.split()], capture_output=True, check=False)


def migrate(cluster: KeptCluster, report_dir: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "e2e.cli", "migrate", "--kubeconfig", str(cluster.kubeconfig),
         "--kubectl", cluster.kubectl, "--report-dir", str(report_dir),
         "--registry-mirror", f"quay.io=http://127.0.0.1:{cluster.registry.port}",
         *[arg for model in MODELS for arg in ("--inference", model)], *args],
        cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    report_file = report_dir / "migration.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    print(done.stdout)  # the Markdown report, shown with -rP (the docs' transcript comes from here)
    return done.returncode, report, output


def proxy_image(cluster: KeptCluster) -> str:
    done = subprocess.run(
        [cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), "-n", "kserve", "get", "deployment",
         "kserve-controller-manager", "-o",
         "jsonpath={.spec.template.spec.containers[?(@.name=='kube-rbac-proxy')].image}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def test_migrate_moves_the_proxy_with_metrics_and_models_probed_throughout(
    kept_cluster: KeptCluster, tmp_path: Path
) -> None:
    assert proxy_image(kept_cluster) == SHIPPED
    code, report, output = migrate(kept_cluster, tmp_path, "--to", "quay-v0.22.1")
    assert code == 0, output[-5000:]
    assert report["outcome"] == "migrated" and report["ends_on"] == f"the new Deployment (proxy {TARGET})"
    assert proxy_image(kept_cluster) == TARGET
    probe = report["probe"]
    assert probe["metrics"]["answering_at_end"] and probe["metrics"]["successes"] > 0
    assert [m["failures"] for m in probe["inference"]] == [0, 0], probe["inference"]
    assert all(m["attempts"] > 10 for m in probe["inference"]), probe["inference"]
    steps = [(s["name"], s["status"]) for s in report["steps"]]
    assert steps == [(n, "ok") for n in ("preflight", "access", "probe", "patch", "rollout", "verify")], steps
    assert "Traceback" not in output


def test_a_target_that_cannot_be_pulled_is_refused_then_forced_and_rolled_back(
    kept_cluster: KeptCluster, tmp_path: Path
) -> None:
    before = proxy_image(kept_cluster)  # the previous test's target, or the shipped one if run alone
    code, report, output = migrate(kept_cluster, tmp_path / "refused", "--to", MISSING)
    assert code == 4, output[-3000:]
    assert report["outcome"] == "refused" and proxy_image(kept_cluster) == before
    code, report, output = migrate(kept_cluster, tmp_path / "forced", "--to", MISSING, "--force")
    assert code == 9, output[-5000:]
    assert report["outcome"] == "rolled-back"
    assert report["ends_on"] == f"the recorded Deployment (proxy {before})"
    assert proxy_image(kept_cluster) == before
    rollout = next(s for s in report["steps"] if s["name"] == "rollout")
    assert rollout["status"] == "failed"
    # Failed fast on the kubelet's own answer, as in production when an image is gone.
    assert "image cannot be pulled" in rollout["detail"], rollout
    assert any("NotFound" in line or "not found" in line for line in rollout["evidence"]), rollout["evidence"]
    rollback = next(s for s in report["steps"] if s["name"] == "rollback")
    assert rollback["status"] == "ok", rollback
    assert [m["failures"] for m in report["probe"]["inference"]] == [0, 0], report["probe"]


def test_a_flag_the_target_refuses_is_refused_then_forced_crashes_and_is_rolled_back(
    kept_cluster: KeptCluster, tmp_path: Path
) -> None:
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    # The operator's Deployment: the shipped proxy with a flag its version (v0.18.0) accepts.
    with k8s_config.new_client_from_config(config_file=str(kept_cluster.kubeconfig)) as api:
        apps = k8s_client.AppsV1Api(api)
        live = apps.read_namespaced_deployment("kserve-controller-manager", "kserve")
        args = next(c.args for c in live.spec.template.spec.containers if c.name == "kube-rbac-proxy")
        flagged = [*[a for a in args if not a.startswith("--kube-api-qps")], "--kube-api-qps=20"]
        apps.patch_namespaced_deployment("kserve-controller-manager", "kserve", {"spec": {"template": {"spec": {
            "containers": [{"name": "kube-rbac-proxy", "image": SHIPPED, "args": flagged}]}}}})  # fmt: skip
    subprocess.run(
        [kept_cluster.kubectl, "--kubeconfig", str(kept_cluster.kubeconfig), "-n", "kserve", "rollout", "status",
         "deployment/kserve-controller-manager", "--timeout=300s"],
        check=True, capture_output=True, timeout=330,
    )  # fmt: skip
    code, report, output = migrate(kept_cluster, tmp_path / "refused", "--to", "quay-v0.15.0")
    assert code == 7, output[-3000:]
    assert any("--kube-api-qps" in line for line in report["blockers"]), report["blockers"]
    assert proxy_image(kept_cluster) == SHIPPED
    code, report, output = migrate(kept_cluster, tmp_path / "forced", "--to", "quay-v0.15.0", "--force")
    assert code == 9, output[-5000:]
    assert report["ends_on"] == f"the recorded Deployment (proxy {SHIPPED})"
    assert proxy_image(kept_cluster) == SHIPPED
    rollout = next(s for s in report["steps"] if s["name"] == "rollout")
    assert "pods are failing" in rollout["detail"], rollout
    # The proxy's own words, from its last log lines: the flag it does not know.
    assert any("kube-api-qps" in line for line in rollout["evidence"]), rollout["evidence"]
    assert [m["failures"] for m in report["probe"]["inference"]] == [0, 0], report["probe"]
