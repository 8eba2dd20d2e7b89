"""``--registry-mirror HOST=URL`` on a real kind cluster: the nodes pull every registry's images
from the user's own single registry, under their upstream names, as an air-gapped site runs it.

The "user's registry" is Debian's docker-registry, seeded the way the docs tell users to
(``kserve-compat images push --to``: each image under its upstream path), reachable from the
nodes on the kind network's gateway. The harness run (KServe v0.20.0, Kubernetes 1.34, the
local image set) points docker.io, quay.io and gcr.io at it and starts no mirror of its own
for them (only for its own ``kserve-compat.local`` Prometheus): the kubelet's pulls are
answered by the user's registry, whose log shows containerd asking for each image. The
retired gcr.io proxy was never pushed, so that cell ends as in production: the kubelet's
``NotFound``, here from the user's registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kind_runs import kind_network_gateway, run_to_the_end
from release_files import session_release_files

from e2e.availability import unavailable
from e2e.cluster.kind import docker_preflight
from e2e.cluster.mirrors import RegistryMirror, registry_binary
from e2e.errors import HarnessError
from e2e.imageset.offline import LocalImageSet, image_present

pytestmark = [pytest.mark.slow, pytest.mark.needs_docker]

REPO = Path(__file__).resolve().parents[1]
KSERVE, K8S, PROXY, RETIRED = "v0.20.0", "1.34", "quay-v0.22.1", "gcr-v0.13.1"
PROXY_IMAGE = "quay.io/brancz/kube-rbac-proxy:v0.22.1"
# Every registry the release's images name (the node image carries its own pause/CoreDNS/etcd).
USER_HOSTS = ("docker.io", "quay.io", "gcr.io")


@pytest.fixture
def users_registry(tmp_path: Path) -> Iterator[RegistryMirror]:
    try:
        docker_preflight()
        registry_binary()
        LocalImageSet().node_image(K8S)
    except HarnessError as exc:
        unavailable(str(exc))
    if not image_present(PROXY_IMAGE):
        unavailable(f"{PROXY_IMAGE} is not built (nox -s images -- build --kserve {KSERVE} --proxy {PROXY})")
    registry = RegistryMirror("users-registry", tmp_path / "storage", tmp_path, kind_network_gateway(), None).start()
    yield registry
    registry.stop()


def test_the_nodes_pull_every_host_from_the_users_single_registry_under_upstream_names(
    tmp_path: Path, users_registry: RegistryMirror
) -> None:
    env = {**os.environ, "KSERVE_COMPAT_MANIFEST_DIR": str(session_release_files().offline_directory())}
    env.pop("CI", None)  # the harness's own behaviour, not the test suite's CI rule
    selection = ["--kserve", KSERVE, "--proxy", f"{PROXY},{RETIRED}", "--k8s", K8S]
    # Seeded as the docs tell users: the whole image set, each under its upstream path.
    pushed = subprocess.run(
        [sys.executable, "-m", "e2e.cli", "images", "push", "--to", f"127.0.0.1:{users_registry.port}", *selection],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    # The retired proxy is never built, so it is not pushed: the user's registry lacks it too.
    assert pushed.returncode == 0, pushed.stdout[-3000:] + pushed.stderr[-3000:]
    assert f"{PROXY_IMAGE} -> 127.0.0.1:{users_registry.port}/brancz/kube-rbac-proxy:v0.22.1" in pushed.stdout
    assert "not pushed: gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1 (unavailable" in pushed.stdout
    workdir = tmp_path / "run"
    workdir.mkdir()
    every_host = [arg for host in USER_HOSTS for arg in ("--registry-mirror", f"{host}={users_registry.node_url}")]
    code, full = run_to_the_end(
        [sys.executable, "-m", "pytest", str(REPO / "scenarios"), "-p", "no:cacheprovider", "-q",
         "--provider", "kind", "--local-images", *selection, "-k", "fresh or retired", *every_host,
         "--reports-dir", str(workdir / "reports"), "-o", "log_cli=true", "--log-cli-level=INFO"],
        workdir, env, timeout=900,
    )  # fmt: skip
    output = full[-4000:]
    results = {r["cell_id"]: r for r in json.loads((workdir / "reports" / "report.json").read_text())}
    passed, retired = (results[f"kserve-{KSERVE}--{alias}--k8s-{K8S}"] for alias in (PROXY, RETIRED))
    assert passed["verdict"] == "pass", output
    # The retired image: the user's registry answers 404, the kubelet says NotFound, as in production.
    assert retired["verdict"] == "image-unavailable", output
    assert "NotFound" in json.dumps(retired), json.dumps(retired)[-2000:]
    assert code == 0, output
    # containerd asked the user's registry for each host's images by their upstream paths.
    log = users_registry.process.log_path.read_text()
    for path in (
        "brancz/kube-rbac-proxy/manifests/v0.22.1",  # quay.io
        "jetstack/cert-manager-controller/manifests/v1.11.5",  # quay.io
        f"kserve/kserve-controller/manifests/{KSERVE}",  # docker.io
        "kubebuilder/kube-rbac-proxy/manifests/v0.13.1",  # gcr.io: asked, not found
    ):
        asked = [line for line in log.splitlines() if f"/v2/{path}" in line and "containerd" in line]
        assert asked, f"{path} never asked of the user's registry: {log[-3000:]}"
    assert f"{PROXY_IMAGE}: pulled by the nodes from {users_registry.node_url} (--registry-mirror)" in full
    # The run started a mirror only for its own images' host, none for the user's hosts.
    started = [line for line in full.splitlines() if "mirror of " in line and " for the nodes (" in line]
    assert started and all("mirror of kserve-compat.local at" in line for line in started), started
