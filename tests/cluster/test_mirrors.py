"""Registry mirrors of the kind nodes (e2e/cluster/mirrors.py), run for real.

Each test starts Debian's docker-registry as the harness does, on loopback, with the relay the
nodes would reach on the kind network's gateway (here also loopback, so no Docker is needed
except for the push test). The pull-through test stands a second local registry in for the
internet, so nothing leaves this machine.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers.registry_server import require_registry_binary, run_registry

from e2e.availability import unavailable
from e2e.cluster.mirrors import (
    CLOSED_PORT,
    SINGLE_MANIFEST_TYPES,
    MirrorMode,
    NodeMirrors,
    hosts_toml,
    upstream_name,
)
from e2e.errors import HarnessError

QUAY_PROXY = "brancz/kube-rbac-proxy"


@pytest.fixture(autouse=True)
def registry_installed() -> None:
    require_registry_binary()


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[NodeMirrors]:
    mirrors = NodeMirrors(
        tmp_path / "certs.d",
        tmp_path / "work",
        MirrorMode.offline(),
        lambda: "127.0.0.1",
        storage_root=tmp_path / "storage",
    )
    mirrors.prepare()
    try:
        yield mirrors
    finally:
        mirrors.stop()


def import_one_file_image(image: str, content: bytes) -> None:
    """An image made here (``docker import`` of a one-file tar), so nothing is pulled; skips
    (fails in CI) without a Docker engine."""
    from e2e.cluster.kind import docker_preflight
    from e2e.errors import HarnessError

    try:
        docker_preflight()
    except HarnessError as exc:
        unavailable(str(exc))
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    subprocess.run(["docker", "import", "-", image], input=archive.getvalue(), check=True, capture_output=True)


def manifest(url: str, name: str) -> requests.Response:
    path, tag = name.rsplit(":", 1)
    return requests.get(f"{url}/v2/{path}/manifests/{tag}", headers={"Accept": SINGLE_MANIFEST_TYPES}, timeout=10)


def test_upstream_names_are_what_containerd_asks_the_hosts_mirror_for() -> None:
    assert upstream_name("kserve/kserve-controller:v0.14.0") == ("docker.io", "kserve/kserve-controller:v0.14.0")
    assert upstream_name("busybox") == ("docker.io", "library/busybox:latest")
    assert upstream_name("quay.io/brancz/kube-rbac-proxy:v0.18.0") == ("quay.io", f"{QUAY_PROXY}:v0.18.0")
    assert upstream_name("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1") == (
        "gcr.io",
        "kubebuilder/kube-rbac-proxy:v0.13.1",
    )
    digest = "sha256:" + "a" * 64
    assert upstream_name(f"registry.k8s.io/pause@{digest}") == ("registry.k8s.io", f"pause@{digest}")


def test_offline_mirrors_cache_nothing_online_ones_cache_their_registry() -> None:
    assert MirrorMode.offline().remote("quay.io") is None
    online = MirrorMode.online({"quay.io": "http://127.0.0.1:5999"})
    assert online.remote("quay.io") == "http://127.0.0.1:5999"
    assert online.remote("docker.io") == "https://registry-1.docker.io"
    assert online.remote("ghcr.io") == "https://ghcr.io"
    assert online.remote("kserve-compat.local") is None  # the harness's own images exist only here


def test_every_host_goes_to_a_closed_port_until_its_mirror_runs(offline: NodeMirrors) -> None:
    assert (offline.certs_dir / "_default" / "hosts.toml").read_text() == hosts_toml(CLOSED_PORT)
    assert [p.name for p in offline.certs_dir.iterdir()] == ["_default"]


def test_online_a_host_without_a_mirror_is_pulled_from_directly(tmp_path: Path) -> None:
    online = NodeMirrors(tmp_path / "certs.d", tmp_path / "work", MirrorMode.online(), lambda: "127.0.0.1")
    online.prepare()
    assert list(online.certs_dir.iterdir()) == []  # no _default: containerd's own behaviour


def test_a_mirror_serves_what_was_pushed_and_404_for_the_rest_through_the_nodes_address(
    offline: NodeMirrors,
) -> None:
    from helpers.registry_server import push_image

    quay = offline.mirror("quay.io")
    assert (offline.certs_dir / "quay.io" / "hosts.toml").read_text() == hosts_toml(quay.node_url)
    assert quay.node_url != quay.local_url  # the nodes reach the relay, not the registry itself
    push_image(quay.local_url, QUAY_PROXY, "v0.22.1")
    assert (quay.config_digest(f"{QUAY_PROXY}:v0.22.1") or "").startswith("sha256:")
    assert quay.config_digest(f"{QUAY_PROXY}:v0.13.1") is None
    assert manifest(quay.node_url, f"{QUAY_PROXY}:v0.22.1").status_code == 200
    # An image nobody pushed: the 404 that the kubelet reports as "NotFound ... not found".
    gone = offline.mirror("gcr.io")
    answer = manifest(gone.node_url, "kubebuilder/kube-rbac-proxy:v0.13.1")
    assert answer.status_code == 404
    assert answer.json()["errors"][0]["code"] in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")
    assert offline.mirror("quay.io") is quay  # one mirror per host
    assert offline.describe() == [
        f"gcr.io -> {gone.node_url} (pushed here)",
        f"quay.io -> {quay.node_url} (pushed here)",
    ]


def test_stopped_mirrors_leave_no_process_and_no_listener(offline: NodeMirrors) -> None:
    quay = offline.mirror("quay.io")
    host, port = quay.node_url.removeprefix("http://").split(":")
    offline.stop()
    assert not quay.alive
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
        pass


def test_a_pull_through_mirror_keeps_what_it_fetched_for_the_next_run(tmp_path: Path) -> None:
    from helpers.registry_server import push_image

    binary = require_registry_binary()
    storage = tmp_path / "storage"
    name = f"{QUAY_PROXY}:v0.22.1"

    def run(index: int, upstream: str) -> tuple[int, int]:
        """(manifest status, layer status) through run ``index``'s mirror of quay.io."""
        mirrors = NodeMirrors(
            tmp_path / f"certs{index}",
            tmp_path / f"work{index}",
            MirrorMode.online({"quay.io": upstream}),
            lambda: "127.0.0.1",
            storage_root=storage,
        )
        mirrors.prepare()
        try:
            quay = mirrors.mirror("quay.io")
            assert quay.remote == upstream
            answer = manifest(quay.node_url, name)
            if answer.status_code != 200:
                return answer.status_code, 0
            layer = answer.json()["layers"][0]["digest"]
            return 200, requests.get(f"{quay.node_url}/v2/{QUAY_PROXY}/blobs/{layer}", timeout=10).status_code
        finally:
            mirrors.stop()

    with run_registry(binary, tmp_path / "internet") as internet:
        digest = push_image(internet.url, QUAY_PROXY, "v0.22.1")
        assert run(1, internet.url) == (200, 200)
        # The image leaves the "internet"; the next run's mirror serves what the first fetched.
        gone = requests.delete(f"{internet.url}/v2/{QUAY_PROXY}/manifests/{digest}", timeout=10)
        assert gone.status_code == 202
        assert manifest(internet.url, name).status_code == 404
        assert run(2, internet.url) == (200, 200)
    # A fresh storage has nothing to fall back on: the registry's own answer.
    storage = tmp_path / "fresh"
    with run_registry(binary, tmp_path / "internet2") as empty:
        assert run(3, empty.url)[0] == 404


def test_docker_push_from_the_local_engine_keeps_the_image_id(offline: NodeMirrors, tmp_path: Path) -> None:
    image = "kserve-compat.local/mirror-test:v1"
    import_one_file_image(image, tmp_path.name.encode())  # unique per run: the push is never a no-op
    try:
        image_id = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", image], check=True, capture_output=True, text=True
        ).stdout.strip()
        own = offline.mirror("kserve-compat.local")
        own.push(image, "mirror-test:v1")
        assert own.config_digest("mirror-test:v1") == image_id
        listed = subprocess.run(
            ["docker", "image", "ls", "--format", "{{.Repository}}"], check=True, capture_output=True, text=True
        ).stdout
        assert "127.0.0.1:" not in listed  # the push's temporary tag is gone
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a mirror's storage that fills up (root only; CI runs as root)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs for a full mirror disk: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], capture_output=True, check=False)


def test_a_mirror_whose_storage_is_full_says_so_in_one_line(tmp_path: Path, small_filesystem: Path) -> None:
    image = "kserve-compat.local/mirror-full:v1"
    import_one_file_image(image, os.urandom(3 * 2**20))  # random: gzip cannot make it fit
    mirrors = NodeMirrors(tmp_path / "certs.d", tmp_path / "work", MirrorMode.offline(), lambda: "127.0.0.1",
                          storage_root=small_filesystem)  # fmt: skip
    mirrors.prepare()
    try:
        own = mirrors.mirror("kserve-compat.local")
        assert own.storage_full() is None
        with pytest.raises(HarnessError) as caught:
            own.push(image, "mirror-full:v1")
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"pushing {image}: mirror of kserve-compat.local: its storage {own.storage} is full "
                                  "(no space left on device; ")  # fmt: skip
        assert "delete that folder (a cache: the next run fills it again)" in message
        # A cell whose pull fails meanwhile names the full mirror, not the image (see cell.fail_with).
        broken = mirrors.broken()
        assert broken[0].startswith(f"mirror of kserve-compat.local ({own.node_url}): running, its storage ")
        assert "no space left on device" in broken[0]
    finally:
        mirrors.stop()
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)


def test_a_mirror_that_died_is_named_with_its_last_lines(offline: NodeMirrors) -> None:
    quay = offline.mirror("quay.io")
    assert offline.broken() == []
    quay.process.stop()
    broken = offline.broken()
    assert broken[0].startswith(f"mirror of quay.io ({quay.node_url}): exited with")
    assert any("listening on 127.0.0.1" in line for line in broken[1:]), broken


def test_a_pull_that_failed_because_a_mirror_died_is_an_error_not_image_unavailable() -> None:
    from types import SimpleNamespace

    from e2e.cell import CellRun
    from e2e.matrix import load_matrix
    from e2e.results import Verdict
    from e2e.rollout import ImageUnavailable
    from e2e.scenario import load_scenarios

    cell = load_matrix().cell("kserve-v0.14.0--quay-v0.22.1--k8s-1.34")
    scenario = next(s for s in load_scenarios() if s.name == "fresh-install")
    harness = SimpleNamespace(options=SimpleNamespace(provider="kind"))
    pull = ImageUnavailable("quay.io/brancz/kube-rbac-proxy:v0.22.1: ErrImagePull: connection refused")

    not_found = ImageUnavailable(
        "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1: ErrImagePull",
        [
            'rpc error: code = NotFound desc = failed to pull and unpack image "gcr.io/kubebuilder/kube-rbac-proxy:'
            'v0.13.1": failed to resolve reference: not found'
        ],
    )
    died = ["mirror of quay.io (http://gw:1): exited with -9", "last line"]
    # Seen in a grid when the host's disk filled: containerd's words, the image itself exists.
    disk_full = ImageUnavailable(
        "deployment kserve/kserve-controller-manager: image cannot be pulled",
        [
            'ErrImagePull: failed to pull and unpack image "quay.io/brancz/kube-rbac-proxy:v0.16.0": failed to '
            "copy: write /var/lib/containerd/io.containerd.content.v1.content/ingest/b6/data: no space left on device"
        ],
    )
    cases = [
        (pull, [], Verdict.ERROR),  # connection refused: the registry never answered
        (disk_full, [], Verdict.ERROR),  # the node's disk, not the image
        (not_found, [], Verdict.IMAGE_UNAVAILABLE),  # the registry's own 404
        (not_found, died, Verdict.ERROR),  # a mirror of the run died: not the image's fault
    ]
    for error, problem, verdict in cases:
        run = CellRun(harness, cell, scenario.name, scenario.result_id(cell))  # type: ignore[arg-type]
        provider = SimpleNamespace(registry_problem=lambda p=problem: p)
        run.cluster = SimpleNamespace(provider=provider)  # type: ignore[assignment]
        run.fail_with(error)
        assert run.result.verdict is verdict, (error, problem)
        if problem:
            assert run.result.reason.startswith("mirror of quay.io (http://gw:1): exited with -9; the pull failed")
            assert "last line" in run.result.notes
        elif error is disk_full:
            assert run.result.reason.startswith("the node ran out of disk while pulling, so the image is not known")
            assert any("no space left on device" in note for note in run.result.notes)
        elif verdict is Verdict.ERROR:
            assert run.result.reason.startswith("the registry could not be reached, so the image is not known")


def test_images_push_seeds_a_users_registry_under_upstream_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kserve-compat images push --to REGISTRY`: what is built goes in, under the path
    containerd asks a host's mirror for; what is not built is named and fails the command, an
    unavailable image (a retired one) is named without failing it, as in ``images build``."""
    from e2e import cli
    from e2e.imageset import components

    image = "quay.io/kserve-compat-test/push-me:v1"
    import_one_file_image(image, b"hello")
    planned = [
        components.PlannedImage(image, "kube-rbac-proxy", "v1", components.BUILT),
        components.PlannedImage("kserve-compat/kind-node:v1.34.4", "node", "v1.34.4", components.BUILT),
        # required_images lists cert-manager's rendered manifest too: a file, never pushed.
        components.PlannedImage(
            str(tmp_path / "cert-manager.yaml"), "cert-manager-manifest", "v1.11.5", components.BUILT
        ),
        components.PlannedImage(
            "quay.io/brancz/kube-rbac-proxy:v0.13.1",
            "kube-rbac-proxy",
            "v0.13.1",
            components.UNAVAILABLE,
            "the Go module proxy refuses v0.13.1",
        ),
    ]
    missing = components.PlannedImage(
        "kserve/kserve-controller:v0.14.0", "kserve-controller", "v0.14.0", components.MISSING, "binary not built yet"
    )
    binary = require_registry_binary()
    try:
        with run_registry(binary, tmp_path / "site") as site:
            monkeypatch.setattr(components, "required_images", lambda **_: planned)
            assert cli.main(["images", "push", "--to", site.host, "--kserve", "v0.14.0"]) == 0
            out = capsys.readouterr().out
            assert f"{image} -> {site.host}/kserve-compat-test/push-me:v1" in out
            assert "not pushed: quay.io/brancz/kube-rbac-proxy:v0.13.1 (unavailable: the Go module proxy" in out
            assert out.endswith("1 pushed to " + site.host + ", 0 not built, 1 unavailable\n"), out
            monkeypatch.setattr(components, "required_images", lambda **_: [*planned, missing])
            assert cli.main(["images", "push", "--to", site.host, "--kserve", "v0.14.0"]) == 1
            out = capsys.readouterr().out
            assert "not pushed: kserve/kserve-controller:v0.14.0 (missing: binary not built yet)" in out
            assert "kind-node" not in out.split("not pushed")[0]  # kind's node image is not for the kubelet
            assert "cert-manager.yaml" not in out
            assert manifest(site.url, "kserve-compat-test/push-me:v1").status_code == 200
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)


def test_images_push_without_a_registry_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from e2e import cli

    assert cli.main(["images", "push", "--kserve", "v0.14.0"]) == 2
    assert "images push: expected --to REGISTRY" in capsys.readouterr().err
