"""An operator's air-gapped site, on a real kind cluster: one private registry serves every
registry host; the harness runs against it; then ``kserve-compat migrate`` works on the
cluster the run leaves, as an operator runs it on theirs (only a kubeconfig).

The site's registry is Debian's docker-registry on the kind network's gateway, seeded the way
the docs tell users to (``kserve-compat images push --to``: each image under its upstream
path). The harness (KServe v0.13.1, the last release of the line that ships the retired
``gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1``; Kubernetes 1.34; the local image set) points
docker.io, quay.io and gcr.io at it with ``--registry-mirror`` and starts no mirror of its own
for them; the retired gcr.io proxy was never pushed, so its cell ends as in production, with
the kubelet's ``NotFound``. The run keeps the cluster (``--keep-cluster``); the registry stays.

The cluster has two nodes (``--kind-workers 1``; on node images built here kube-router
connects the nodes' pods). The retired cell leaves the controller Deployment asking for the
retired image. Then the site is made what clusters were on 2026-03-06: the retired image is
put into the worker's containerd under its gcr.io name (as a node that pulled it before the
deletion holds it), the control plane has never pulled it, and the Deployment's pod runs on
the worker from that copy: fine until a pod lands on a node without it. The copy is the real
v0.13.1 when the local Docker engine holds
``registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1`` (pulled by the user where a registry
can be reached); here, where the Go module proxy refuses kube-rbac-proxy v0.13.1 and no
registry can be reached, it is a **stand-in**: the bytes of v0.15.0 built here, under the
retired name (the test prints which). What is tested, the migration off that name, is the
same either way. On that cluster:

0. ``watch-images`` runs in the cluster as its manifest says (``--print-manifest``; its image
   built here and pulled from the site's registry) and flags the retired image the node still
   runs as gone, the images the site serves as available;
1. the outage as it happened: the worker is drained of the controller's pod, its replacement
   lands on the control plane and cannot be pulled (the kubelet's NotFound); the metrics and
   the models are probed while it is broken; then ``migrate --to quay-v0.22.1`` fixes it, with
   the metrics and both sample models probed throughout: migrated, no model request lost, the
   outage's length reported;
2. ``--to`` a tag the registry does not hold is refused (exit 4, nothing written); with
   ``--force`` it fails fast on the kubelet's pull error and is rolled back by itself;
3. Ctrl-C while a migration rolls out (to quay-v0.15.0) ends on the recorded Deployment,
   whole, and the report says so;
4. a Deployment whose proxy carries ``--kube-api-qps`` and ``--kube-api-burst`` (v0.22.1 knows
   them, v0.15.0 does not)
   moved to quay-v0.15.0 is refused with exit 7 naming the flag; with ``--force`` the proxy
   crashes at start, the rollout fails fast with its last log lines, and the recorded
   Deployment comes back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.kind_runs import kind_network_gateway, run_to_the_end
from helpers.paths import REPO
from helpers.release_files import session_release_files

from e2e import binaries
from e2e.availability import unavailable
from e2e.cluster.kind import cluster_name, docker_preflight
from e2e.cluster.mirrors import RegistryMirror, registry_binary
from e2e.docker_cli import image_exists
from e2e.errors import HarnessError
from e2e.imageset.offline import LocalImageSet

pytestmark = [pytest.mark.slow, pytest.mark.needs_docker]

KSERVE, K8S, PROXY, RETIRED = "v0.13.1", "1.34", "quay-v0.22.1", "gcr-v0.13.1"
PROXY_IMAGE = "quay.io/brancz/kube-rbac-proxy:v0.22.1"
RETIRED_IMAGE = "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"
MISSING = "quay.io/brancz/kube-rbac-proxy:v0.99.0"
OLDER = "quay.io/brancz/kube-rbac-proxy:v0.15.0"  # knows no --kube-api-qps
# The retired tag's frozen copy, the real bytes, when the user has it in the local engine.
FROZEN_COPY = "registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1"
# Every registry the release's images name (the node image carries its own pause/CoreDNS/etcd).
USER_HOSTS = ("docker.io", "quay.io", "gcr.io")
MODELS = ("kserve-compat-samples/sklearn-iris", "kserve-compat-samples/sklearn-iris-v2")
CONTROLLER = ("kserve", "kserve-controller-manager")


@dataclass(frozen=True)
class Site:
    registry: RegistryMirror
    pushed: str  # images push's output
    results: dict[str, dict[str, Any]]  # the harness run's results by cell id
    output: str  # the harness run's output
    code: int
    kubeconfig: Path
    kubectl: str
    env: dict[str, str]
    cached_from: str  # the bytes the worker holds under the retired name (the frozen copy or a stand-in)
    control_plane: str  # the node containers: the control plane never pulled the retired image,
    worker: str  # the worker holds it


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    try:
        docker_preflight()
        registry_binary()
        LocalImageSet().node_image(K8S)
        kubectl = str(binaries.ensure("kubectl", binaries.KUBERNETES_VERSION))
        kind = str(binaries.ensure("kind"))
    except HarnessError as exc:
        unavailable(str(exc))
    for image in (PROXY_IMAGE, OLDER):
        if not image_exists(image):
            unavailable(f"{image} is not built (nox -s images -- build --kserve {KSERVE} --proxy {PROXY} "
                        "--proxy quay-v0.15.0)")  # fmt: skip
    workdir = tmp_path_factory.mktemp("site")
    env = {**os.environ, "KSERVE_COMPAT_MANIFEST_DIR": str(session_release_files().offline_directory())}
    env["KSERVE_COMPAT_MANIFESTS_FROM_MODULE"] = "1"  # v0.13.1 has no kserve.yaml in the offline directory
    env.pop("CI", None)  # the harness's own behaviour, not the test suite's CI rule
    registry = RegistryMirror("users-registry", workdir / "storage", workdir, kind_network_gateway(), None).start()
    name = cluster_name(f"kserve-{KSERVE}--k8s-{K8S}")
    try:
        selection = ["--kserve", KSERVE, "--proxy", f"{PROXY},{RETIRED}", "--k8s", K8S]
        # The release's controller and serving images (built once, then current).
        built = subprocess.run(
            [sys.executable, "-m", "e2e.cli", "images", "build", *selection],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False,
        )  # fmt: skip
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        # Seeded as the docs tell users: the whole image set, each under its upstream path.
        pushed = subprocess.run(
            [sys.executable, "-m", "e2e.cli", "images", "push", "--to", f"127.0.0.1:{registry.port}", *selection],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stdout[-3000:] + pushed.stderr[-3000:]
        registry.push(OLDER, OLDER.removeprefix("quay.io/"))  # for the migration back to an older proxy
        every_host = [arg for host in USER_HOSTS for arg in ("--registry-mirror", f"{host}={registry.node_url}")]
        run = workdir / "run"
        run.mkdir()
        code, output = run_to_the_end(
            [sys.executable, "-m", "pytest", str(REPO / "scenarios"), "-p", "no:cacheprovider", "-q",
             "--provider", "kind", "--local-images", "--kind-workers", "1", *selection, "-k", "fresh or retired",
             *every_host,
             "--keep-cluster", "--reports-dir", str(run / "reports"), "-o", "log_cli=true",
             "--log-cli-level=INFO"],
            run, env, timeout=900,
        )  # fmt: skip
        report = run / "reports" / "report.json"
        results = {r["cell_id"]: r for r in json.loads(report.read_text())} if report.exists() else {}
        kubeconfig = run / ".pytest-kind" / name / "kubeconfig"
        control_plane, worker = f"{name}-control-plane", f"{name}-worker"
        cached_from = cache_the_retired_image_on_the_node(worker, kubeconfig, kubectl) if code == 0 else ""
        yield Site(registry, pushed.stdout, results, output, code, kubeconfig, kubectl, env, cached_from,
                   control_plane, worker)  # fmt: skip
    finally:
        subprocess.run([kind, "delete", "cluster", "--name", name], capture_output=True, check=False, timeout=300)
        registry.stop()


def cache_the_retired_image_on_the_node(node: str, kubeconfig: Path, kubectl: str) -> str:
    """Make the node hold the retired image under its gcr.io name, as a node that pulled it
    before the deletion does, and let the controller's stuck pods start from that copy (the
    control plane is tainted, so they land on the worker again).
    Returns what the copy is: the frozen copy's real bytes if the engine has them, else the
    stand-in (said so in the test's output)."""
    source = FROZEN_COPY if image_exists(FROZEN_COPY) else OLDER
    what = "the real v0.13.1 (the frozen copy in the local engine)" if source == FROZEN_COPY else (
        f"a STAND-IN: {OLDER} built here (the Go module proxy refuses kube-rbac-proxy v0.13.1)")  # fmt: skip
    print(f"caching {RETIRED_IMAGE} on {node}: {what}")
    ctr = ["docker", "exec", "-i", node, "ctr", "--namespace=k8s.io", "images"]
    save = subprocess.Popen(["docker", "save", source], stdout=subprocess.PIPE)
    try:
        subprocess.run([*ctr, "import", "--all-platforms", "--digests", "-"], stdin=save.stdout, check=True,
                       capture_output=True, timeout=300)  # fmt: skip
    finally:
        assert save.stdout is not None
        save.stdout.close()
        save.wait(timeout=60)
    subprocess.run([*ctr, "tag", "--force", source, RETIRED_IMAGE], check=True, capture_output=True, timeout=60)
    subprocess.run([*ctr, "rm", source], check=True, capture_output=True, timeout=60)
    # The pods waiting in ImagePullBackOff would retry after their back-off (up to 5 min):
    # deleted, their replacements find the image on the node at once.
    kube = [kubectl, "--kubeconfig", str(kubeconfig), "-n", CONTROLLER[0]]
    subprocess.run([*kube, "delete", "pod", "--field-selector=status.phase=Pending", "--wait=false"], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    subprocess.run([*kube, "rollout", "status", f"deployment/{CONTROLLER[1]}", "--timeout=300s"], check=True,
                   capture_output=True, timeout=330)  # fmt: skip
    return what


# -- the harness against the site's registry -----------------------------------------------------


def test_the_nodes_pull_every_host_from_the_users_single_registry_under_upstream_names(site: Site) -> None:
    output = site.output[-4000:]
    assert f"{PROXY_IMAGE} -> 127.0.0.1:{site.registry.port}/brancz/kube-rbac-proxy:v0.22.1" in site.pushed
    # The retired proxy is never built, so it is not pushed: the user's registry lacks it too.
    assert f"not pushed: {RETIRED_IMAGE} (unavailable" in site.pushed
    passed, retired = (site.results[f"kserve-{KSERVE}--{alias}--k8s-{K8S}"] for alias in (PROXY, RETIRED))
    assert passed["verdict"] == "pass", output
    # The retired image: the user's registry answers 404, the kubelet says NotFound, as in production.
    assert retired["verdict"] == "image-unavailable", output
    assert "NotFound" in json.dumps(retired), json.dumps(retired)[-2000:]
    assert site.code == 0, output
    # containerd asked the user's registry for each host's images by their upstream paths.
    log = site.registry.process.log_path.read_text()
    for path in (
        "brancz/kube-rbac-proxy/manifests/v0.22.1",  # quay.io
        "jetstack/cert-manager-controller/manifests/v1.11.5",  # quay.io
        f"kserve/kserve-controller/manifests/{KSERVE}",  # docker.io
        "kubebuilder/kube-rbac-proxy/manifests/v0.13.1",  # gcr.io: asked, not found
    ):
        asked = [line for line in log.splitlines() if f"/v2/{path}" in line and "containerd" in line]
        assert asked, f"{path} never asked of the user's registry: {log[-3000:]}"
    assert f"{PROXY_IMAGE}: pulled by the nodes from {site.registry.node_url} (--registry-mirror)" in site.output
    # The run started a mirror only for its own images' host, none for the user's hosts.
    started = [line for line in site.output.splitlines() if "mirror of " in line and " for the nodes (" in line]
    assert started and all("mirror of kserve-compat.local at" in line for line in started), started


# -- watch-images in the cluster ------------------------------------------------------------------

WATCHER = ("kserve-compat", "kserve-compat-watch-images")


def watcher_metrics(site: Site) -> dict[tuple[str, str], float]:
    """(metric, image) -> value of the in-cluster watcher's /metrics, read through the API
    server's Service proxy (as an operator without a Prometheus would)."""
    from prometheus_client.parser import text_string_to_metric_families

    path = f"/api/v1/namespaces/{WATCHER[0]}/services/{WATCHER[1]}:metrics/proxy/metrics"
    done = subprocess.run([site.kubectl, "--kubeconfig", str(site.kubeconfig), "get", "--raw", path],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    if done.returncode != 0:
        return {}
    return {
        (sample.name, sample.labels.get("image", "")): sample.value
        for family in text_string_to_metric_families(done.stdout)
        for sample in family.samples
    }


def test_watch_images_in_the_cluster_flags_the_retired_image_the_node_still_runs(site: Site) -> None:
    from kubernetes import config as k8s_config
    from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

    from e2e.apply import Applier
    from e2e.imageset.watch_images import build_watch_images_image

    assert site.code == 0, site.output[-3000:]
    try:
        image = build_watch_images_image()
    except HarnessError as exc:
        unavailable(f"the watch-images image cannot be built here: {exc}")
    site.registry.push(image, image)  # docker.io/kserve-compat/watch-images, as an operator pushes it
    # The site's pods may reach their registry (the node image lets pods reach nothing off
    # the node): the watcher asks it, as it would ask quay.io and gcr.io.
    gateway, port = site.registry.node_url.removeprefix("http://").split(":")
    allow = ["iptables", "-w", "-I", "KSERVE-COMPAT-FORWARD", "1", "-d", gateway, "-p", "tcp", "--dport", port,
             "-j", "RETURN"]  # fmt: skip
    for node in (site.control_plane, site.worker):  # wherever the watcher's pod lands
        subprocess.run(["docker", "exec", node, *allow], check=True, capture_output=True, timeout=60)
    mirrors = [arg for host in USER_HOSTS for arg in ("--registry-mirror", f"{host}={site.registry.node_url}")]
    printed = subprocess.run(
        [sys.executable, "-m", "e2e.cli", "watch-images", "--print-manifest", "--image", image, "--interval", "5",
         "--timeout", "5", *mirrors, "--insecure-registry", f"{gateway}:{port}"],
        cwd=REPO, env=site.env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    documents = [doc for doc in yaml.safe_load_all(printed.stdout) if doc]
    with k8s_config.new_client_from_config(config_file=str(site.kubeconfig)) as api:
        # No Prometheus Operator here: its ServiceMonitor and PrometheusRule have no CRDs.
        Applier(api).apply(documents, skip_unknown_kinds=True)
    rollout = subprocess.run(
        [site.kubectl, "--kubeconfig", str(site.kubeconfig), "-n", WATCHER[0], "rollout", "status",
         f"deployment/{WATCHER[1]}", "--timeout=300s"], capture_output=True, text=True, timeout=330, check=False,
    )  # fmt: skip
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr

    # A round every 5 s; the first answers once the pod is up. Bounded, saying what it saw.
    metrics = Retrying(
        stop=stop_after_delay(120),
        wait=wait_exponential(max=10),
        retry=retry_if_result(lambda seen: ("kserve_compat_image_available", RETIRED_IMAGE) not in seen),
        before_sleep=lambda state: print(
            "waiting for the watcher's first round; its /metrics had",
            len(state.outcome.result()) if state.outcome else 0,
            "samples, none for the retired image yet",
        ),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else {},
    )(watcher_metrics, site)
    print({key: value for key, value in metrics.items() if key[0].startswith("kserve_compat_image")})
    # The image the node still runs: its registry answers 404, the watcher says gone (the alert's 0).
    assert metrics.get(("kserve_compat_image_available", RETIRED_IMAGE)) == 0, metrics
    assert metrics.get(("kserve_compat_image_check_ok", RETIRED_IMAGE)) == 1, metrics
    # The site's registry serves the controller's image: available.
    controller = f"kserve/kserve-controller:{KSERVE}"
    assert metrics.get(("kserve_compat_image_available", controller)) == 1, metrics
    assert metrics.get(("kserve_compat_images_watched", "")) and metrics[("kserve_compat_images_watched", "")] >= 2


# -- kserve-compat migrate on the cluster the run left ---------------------------------------------


def migrate(site: Site, report_dir: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    mirrors = [
        arg for host in USER_HOSTS for arg in ("--registry-mirror", f"{host}=http://127.0.0.1:{site.registry.port}")
    ]
    done = subprocess.run(
        [sys.executable, "-m", "e2e.cli", "migrate", "--kubeconfig", str(site.kubeconfig), "--kubectl", site.kubectl,
         "--report-dir", str(report_dir), *mirrors, *[arg for model in MODELS for arg in ("--inference", model)],
         *args],
        cwd=REPO, env=site.env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    report_file = report_dir / "migration.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    print(done.stdout)  # the Markdown report, shown with -rP (the docs' transcript comes from here)
    return done.returncode, report, done.stdout + done.stderr


def proxy_image(site: Site) -> str:
    done = subprocess.run(
        [site.kubectl, "--kubeconfig", str(site.kubeconfig), "-n", CONTROLLER[0], "get", "deployment",
         CONTROLLER[1], "-o", "jsonpath={.spec.template.spec.containers[?(@.name=='kube-rbac-proxy')].image}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.strip()


CONTROLLER_PODS = "control-plane=kserve-controller-manager"
METRICS_SERVICE = "kserve-controller-manager-metrics-service"
BROKEN_PROBE_S = 20.0  # how long the models and metrics are asked while the controller cannot start


def kubectl(site: Site, *args: str, timeout: float = 60) -> str:
    done = subprocess.run([site.kubectl, "--kubeconfig", str(site.kubeconfig), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


def controller_pods(site: Site) -> list[dict[str, Any]]:
    """The controller's pods not being deleted, each with its node and its proxy's state."""
    pods = json.loads(kubectl(site, "-n", CONTROLLER[0], "get", "pods", "-l", CONTROLLER_PODS, "-o", "json"))
    found = []
    for pod in pods["items"]:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        statuses = {s["name"]: s for s in pod["status"].get("containerStatuses") or []}
        proxy = statuses.get("kube-rbac-proxy") or {}
        waiting = (proxy.get("state") or {}).get("waiting") or {}
        found.append({"name": pod["metadata"]["name"], "node": pod["spec"].get("nodeName", ""),
                      "ready": bool(proxy.get("ready")), "image": proxy.get("image", ""),
                      "reason": waiting.get("reason", ""), "message": waiting.get("message", "")})  # fmt: skip
    return found


def running_proxy_images(site: Site) -> list[str]:
    """The kube-rbac-proxy image of each ready pod of the controller Deployment (a pod being
    deleted, still serving through its grace period, is not counted)."""
    return [pod["image"] for pod in controller_pods(site) if pod["ready"]]


def the_replacement_cannot_pull(site: Site) -> dict[str, Any]:
    """Wait (bounded, saying what it saw) until the controller's new pod is scheduled and its
    kubelet has answered the pull of the proxy image; the pod as then seen."""
    from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

    def pulled_or_refused(pods: list[dict[str, Any]]) -> bool:
        # ContainerCreating comes first: the pull has not been answered yet.
        answered = ("ErrImagePull", "ImagePullBackOff")
        return any(pod["node"] == site.control_plane and (pod["reason"] in answered or pod["ready"]) for pod in pods)

    pods = Retrying(
        stop=stop_after_delay(180),
        wait=wait_exponential(max=10),
        retry=retry_if_result(lambda pods: not pulled_or_refused(pods)),
        before_sleep=lambda state: print(
            "waiting for the controller's new pod on the control plane; seen:",
            state.outcome.result() if state.outcome else None,
        ),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else [],
    )(controller_pods, site)
    return next((pod for pod in pods if pod["node"] == site.control_plane), {"pods": pods})


def probe_while_broken(site: Site) -> tuple[Any, str, int]:
    """The models and the metrics Service asked for ``BROKEN_PROBE_S`` while the controller
    cannot start: the prober's summary, why metrics cannot be reached (the port-forward's
    own answer) and how many ready endpoints the metrics Service has."""
    import contextlib

    from e2e.checks.migration import MetricsProber
    from e2e.cluster.kind import kubectl_environment, port_forward, port_forward_argv
    from e2e.migrate.probe import NOT_REACHABLE_YET, model_service, open_model
    from e2e.preflight.cluster import connect
    from e2e.targets import ServiceTarget

    conn = connect(str(site.kubeconfig), None)
    slices = json.loads(kubectl(site, "-n", CONTROLLER[0], "get", "endpointslices", "-l",
                                f"kubernetes.io/service-name={METRICS_SERVICE}", "-o", "json"))  # fmt: skip
    ready = sum(1 for item in slices["items"] for endpoint in item.get("endpoints") or []
                if (endpoint.get("conditions") or {}).get("ready"))  # fmt: skip
    with contextlib.ExitStack() as stack:
        metrics = ServiceTarget(CONTROLLER[0], METRICS_SERVICE, 8443)
        try:
            address = stack.enter_context(port_forward(
                [*port_forward_argv(Path(site.kubectl), metrics), *conn.kubectl_context()],
                kubectl_environment(site.kubeconfig)))  # fmt: skip
            metrics_url, why = f"https://{address}/metrics", ""
        except HarnessError as exc:
            metrics_url, why = NOT_REACHABLE_YET, str(exc)
        targets = []
        for model in MODELS:
            namespace, name = model.split("/")
            targets.append(open_model(stack, conn, name, model_service(conn, namespace, name), site.kubectl))
        prober = MetricsProber(metrics_url, "", targets, max_duration_s=BROKEN_PROBE_S + 30).start()
        time.sleep(BROKEN_PROBE_S)
        return prober.stop(), why, ready


def test_the_outage_on_the_node_without_the_image_and_its_fix_with_no_model_request_lost(
    site: Site, tmp_path: Path
) -> None:
    """As on 2026-03-06: the controller runs the retired image from the worker's copy; its pod
    moves to the control plane, which never pulled it; then the migration restores it."""
    assert site.code == 0, site.output[-3000:]
    print(f"the worker's {RETIRED_IMAGE}: {site.cached_from}")
    before = controller_pods(site)
    assert [(pod["node"], pod["image"], pod["ready"]) for pod in before] == [(site.worker, RETIRED_IMAGE, True)]
    # The control plane takes pods from now on (in production: any other node of the pool).
    kubectl(site, "taint", "nodes", site.control_plane, "node-role.kubernetes.io/control-plane:NoSchedule-")
    broken_at = time.monotonic()
    kubectl(site, "drain", site.worker, "--pod-selector", CONTROLLER_PODS, "--ignore-daemonsets",
            "--delete-emptydir-data", "--timeout=120s", timeout=150)  # fmt: skip
    try:
        replacement = the_replacement_cannot_pull(site)
        print("the controller's new pod:", replacement)
        # The outage users saw: the kubelet's own answer, on the node without the image.
        assert replacement.get("node") == site.control_plane, replacement
        assert replacement["reason"] in ("ErrImagePull", "ImagePullBackOff"), replacement
        assert "not found" in replacement["message"].lower() or replacement["reason"] == "ImagePullBackOff"
        events = kubectl(site, "-n", CONTROLLER[0], "get", "events", "--field-selector",
                         f"involvedObject.name={replacement['name']},reason=Failed", "-o", "json")  # fmt: skip
        pulls = [event["message"] for event in json.loads(events)["items"]]
        print("the kubelet:", pulls)
        assert any(RETIRED_IMAGE in message and "not found" in message.lower() for message in pulls), pulls

        broken, why, ready_endpoints = probe_while_broken(site)
        print(f"while broken ({BROKEN_PROBE_S:.0f} s): metrics Service ready endpoints {ready_endpoints}; "
              f"metrics {broken.metrics.failures} of {broken.metrics.attempts} lost ({why or 'answered'}); "
              + ", ".join(f"{m.name} {m.failures} of {m.attempts} lost" for m in broken.inference))  # fmt: skip
        # Nothing serves the metrics: every scrape is lost. The models keep answering: their
        # pods run on the worker, untouched (a drain of the whole node would also need the
        # webhook the controller serves to recreate them: not done here).
        assert ready_endpoints == 0 and broken.metrics.successes == 0 and broken.metrics.attempts > 0
        assert [m.failures for m in broken.inference] == [0, 0], broken.inference

        code, report, output = migrate(site, tmp_path, "--to", PROXY)
        restored_after = time.monotonic() - broken_at
    finally:
        kubectl(site, "uncordon", site.worker)
    assert code == 0, output[-5000:]
    assert report["outcome"] == "migrated" and report["ends_on"] == f"the new Deployment (proxy {PROXY_IMAGE})"
    assert report["from_image"] == RETIRED_IMAGE and proxy_image(site) == PROXY_IMAGE
    probe = report["probe"]
    assert probe["metrics"]["answering_at_end"] and probe["metrics"]["successes"] > 0
    assert [m["failures"] for m in probe["inference"]] == [0, 0], probe["inference"]
    assert all(m["attempts"] > 10 for m in probe["inference"]), probe["inference"]
    steps = [(s["name"], s["status"]) for s in report["steps"]]
    assert steps == [(n, "ok") for n in ("preflight", "access", "probe", "patch", "rollout", "verify")], steps
    assert "Traceback" not in output
    # Restored on the node that never had the retired image.
    after = controller_pods(site)
    assert [(pod["node"], pod["image"], pod["ready"]) for pod in after] == [(site.control_plane, PROXY_IMAGE, True)]
    print(f"outage: {restored_after:.0f} s from the drain to the migrated controller answering "
          f"(metrics outage during the migration {probe['metrics'].get('outage_s')} s); "
          f"model requests lost while migrating: {[m['failures'] for m in probe['inference']]}")  # fmt: skip


def test_a_target_that_cannot_be_pulled_is_refused_then_forced_and_rolled_back(site: Site, tmp_path: Path) -> None:
    before = proxy_image(site)
    code, report, output = migrate(site, tmp_path / "refused", "--to", MISSING)
    assert code == 4, output[-3000:]
    assert report["outcome"] == "refused" and proxy_image(site) == before
    code, report, output = migrate(site, tmp_path / "forced", "--to", MISSING, "--force")
    assert code == 9, output[-5000:]
    assert report["outcome"] == "rolled-back"
    assert report["ends_on"] == f"the recorded Deployment (proxy {before})" and proxy_image(site) == before
    rollout = next(s for s in report["steps"] if s["name"] == "rollout")
    assert rollout["status"] == "failed"
    # Failed fast on the kubelet's own answer, as in production when an image is gone.
    assert "image cannot be pulled" in rollout["detail"], rollout
    assert any("NotFound" in line or "not found" in line for line in rollout["evidence"]), rollout["evidence"]
    rollback = next(s for s in report["steps"] if s["name"] == "rollback")
    assert rollback["status"] == "ok", rollback
    assert [m["failures"] for m in report["probe"]["inference"]] == [0, 0], report["probe"]


def test_ctrl_c_during_the_rollout_ends_on_one_whole_deployment_and_the_report_says_which(
    site: Site, tmp_path: Path
) -> None:
    """A terminal's Ctrl-C (SIGINT to the whole process group, kubectl port-forwards included)
    while the new pods roll out: the recorded Deployment comes back, nothing is left behind."""
    before = proxy_image(site)
    mirrors = [
        arg for host in USER_HOSTS for arg in ("--registry-mirror", f"{host}=http://127.0.0.1:{site.registry.port}")
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "e2e.cli", "migrate", "--kubeconfig", str(site.kubeconfig), "--kubectl", site.kubectl,
         "--report-dir", str(tmp_path), *mirrors, *[arg for model in MODELS for arg in ("--inference", model)],
         "--to", "quay-v0.15.0"],
        cwd=REPO, env=site.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    seen: list[str] = []
    out = err = ""
    try:
        assert process.stderr is not None
        while not seen or (seen[-1] and not seen[-1].startswith("STEP rollout:")):
            seen.append(process.stderr.readline())
        assert seen[-1].startswith("STEP rollout:"), "".join(seen)
        assert proxy_image(site) == OLDER  # the patch is in; its pods are starting
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=60)
    said = f"stdout: {out[-2000:]}\nstderr: {''.join(seen)[-2000:]}{err[-3000:]}"
    assert process.returncode == 130, said
    assert "Traceback" not in err, said
    report = json.loads((tmp_path / "migration.json").read_text())
    assert report["outcome"] == "interrupted", said
    # One whole Deployment, named: the recorded one, as the cluster says too.
    assert report["ends_on"] == f"the recorded Deployment (proxy {before})", said
    assert proxy_image(site) == before
    rollout = subprocess.run(
        [site.kubectl, "--kubeconfig", str(site.kubeconfig), "-n", CONTROLLER[0], "rollout", "status",
         f"deployment/{CONTROLLER[1]}", "--timeout=300s"], capture_output=True, text=True, timeout=330, check=False,
    )  # fmt: skip
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr
    assert running_proxy_images(site) == [before], said
    # The probe's temporary ServiceAccounts and RBAC are gone.
    left = subprocess.run(
        [site.kubectl, "--kubeconfig", str(site.kubeconfig), "get", "serviceaccounts,clusterroles,clusterrolebindings",
         "-A", "-o", "name"], capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "kserve-compat-preflight" not in left, left


def test_a_flag_the_target_refuses_is_refused_then_forced_crashes_and_is_rolled_back(
    site: Site, tmp_path: Path
) -> None:
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    # The operator's Deployment: a served proxy with a flag its version (v0.22.1) accepts.
    with k8s_config.new_client_from_config(config_file=str(site.kubeconfig)) as api:
        apps = k8s_client.AppsV1Api(api)
        live = apps.read_namespaced_deployment(CONTROLLER[1], CONTROLLER[0])
        args = next(c.args for c in live.spec.template.spec.containers if c.name == "kube-rbac-proxy")
        # Both: v0.22.1 exits at start with a QPS but no burst ("burst is required to be greater
        # than 0 when RateLimiter is not set and QPS is set to greater than 0"; seen here).
        flagged = [*[a for a in args if not a.startswith("--kube-api-")], "--kube-api-qps=20", "--kube-api-burst=40"]
        apps.patch_namespaced_deployment(CONTROLLER[1], CONTROLLER[0], {"spec": {"template": {"spec": {
            "containers": [{"name": "kube-rbac-proxy", "image": PROXY_IMAGE, "args": flagged}]}}}})  # fmt: skip
    subprocess.run(
        [site.kubectl, "--kubeconfig", str(site.kubeconfig), "-n", CONTROLLER[0], "rollout", "status",
         f"deployment/{CONTROLLER[1]}", "--timeout=300s"],
        check=True, capture_output=True, timeout=330,
    )  # fmt: skip
    code, report, output = migrate(site, tmp_path / "refused", "--to", "quay-v0.15.0")
    assert code == 7, output[-3000:]
    assert any("--kube-api-qps" in line for line in report["blockers"]), report["blockers"]
    assert proxy_image(site) == PROXY_IMAGE
    code, report, output = migrate(site, tmp_path / "forced", "--to", "quay-v0.15.0", "--force")
    assert code == 9, output[-5000:]
    assert report["ends_on"] == f"the recorded Deployment (proxy {PROXY_IMAGE})" and proxy_image(site) == PROXY_IMAGE
    rollout = next(s for s in report["steps"] if s["name"] == "rollout")
    assert "pods are failing" in rollout["detail"], rollout
    # The proxy's own words, from its last log lines: the flag it does not know.
    assert any("kube-api-qps" in line for line in rollout["evidence"]), rollout["evidence"]
    assert [m["failures"] for m in report["probe"]["inference"]] == [0, 0], report["probe"]
