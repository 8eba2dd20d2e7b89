"""The kind node image: its pure parts, and one real build that kind boots into a Ready cluster.

The integration test builds (or reuses) the node image, creates a kind cluster from it with
the networking this module prescribes, and checks what the kind tier relies on: the node
Ready, CoreDNS Ready, a `kind load`ed local image running and answering through
`kubectl port-forward`, and a pull of an image that was not loaded failing at once with
the registry black hole's error. Without a Docker engine it skips (fails with CI=true).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from e2e import binaries
from e2e.availability import in_ci, unavailable
from e2e.errors import HarnessError, UsageError
from e2e.imageset import node
from e2e.imageset.docker_image import is_current

# ---------------------------------------------------------------------------- versions


@pytest.mark.parametrize("minor", ["1.34", "v1.34", "1.34.4", " 1.34 ", "1.34.8"])
def test_a_built_minor_maps_to_the_patch_whose_binaries_we_build(minor: str) -> None:
    assert node.node_kubernetes_version(minor) == binaries.KUBERNETES_VERSION == "v1.34.4"


def test_every_matrix_minor_has_a_node_image_of_its_build() -> None:
    assert node.node_kubernetes_versions() == {
        "1.32": "v1.32.9", "1.33": "v1.33.13", "1.34": "v1.34.4",
        "1.35": "v1.35.4", "1.36": "v1.36.3", "1.37": "v1.37.2",
    }  # fmt: skip
    assert node.node_kubernetes_version("1.36") == "v1.36.3"


@pytest.mark.parametrize("minor", ["1.31", "1.38", "banana", ""])
def test_a_minor_we_do_not_build_is_a_one_line_usage_error_naming_it(minor: str) -> None:
    with pytest.raises(UsageError) as caught:
        node.node_kubernetes_version(minor)
    message = str(caught.value)
    assert repr(minor) in message and "1.34" in message and "\n" not in message


def test_building_or_asking_for_another_version_names_it_before_touching_docker() -> None:
    with pytest.raises(UsageError, match=re.escape("'v1.33.0'")):
        node.build_node_image("v1.33.0")
    status, detail = node.node_image_status("v1.33.0")
    assert status == "unavailable" and "'v1.33.0'" in detail


def test_the_reference_names_the_version_the_image_runs() -> None:
    assert node.node_reference("v1.34.4") == "kserve-compat/kind-node:v1.34.4"
    assert node.NodeImage(node.node_reference("v1.34.4"), "v1.34.4").reference.endswith(":v1.34.4")


# ---------------------------------------------------------------------------- Debian mirror

DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_the_mirror_comes_from_apt_s_own_sources_in_either_format() -> None:
    assert node.debian_mirror([DEB822]) == "http://mirror.example/debian"
    one_line = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://other.example/debian bookworm main\n"
    assert node.debian_mirror(["deb https://elsewhere/apt cloud-sdk main\n", one_line]) == (
        "http://other.example/debian"
    )
    assert node.debian_mirror(["Types: deb\nURIs: http://x/\nSuites: trixie\n"]) == node.DEBIAN_DEFAULT_MIRROR
    assert node.debian_mirror([]) == node.DEBIAN_DEFAULT_MIRROR


def test_the_mirror_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(node.ENV_DEBIAN_MIRROR, "http://local.mirror/debian/")
    assert node.configured_debian_mirror() == "http://local.mirror/debian"


# ---------------------------------------------------------------------------- configuration

KIND_CONTAINERD_CONFIG = """version = 2

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  tolerate_missing_hugepages_controller = true
  restrict_oom_score_adj = false
"""


def test_containerd_config_restricts_oom_score_adj_uses_kubeadm_s_pause_and_certs_d() -> None:
    text = node.containerd_config(KIND_CONTAINERD_CONFIG, "registry.k8s.io/pause:3.10.1")
    cri = tomllib.loads(text)["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10.1"
    assert cri["registry"]["config_path"] == "/etc/containerd/certs.d"
    assert cri["containerd"]["snapshotter"] == "overlayfs"  # the rest is kind's, untouched


def test_a_changed_kind_containerd_config_is_an_error_not_a_silent_miss() -> None:
    changed = KIND_CONTAINERD_CONFIG.replace("restrict_oom_score_adj = false\n", "")
    with pytest.raises(HarnessError, match="restrict_oom_score_adj"):
        node.containerd_config(changed, "registry.k8s.io/pause:3.10.1")


def test_every_registry_points_at_a_closed_loopback_port_by_ip() -> None:
    hosts = tomllib.loads(node.registry_hosts_toml())
    assert set(hosts) == {"server"}  # no [host] mirror that could fall back to the registry
    address = hosts["server"].removeprefix("http://").rsplit(":", 1)[0]
    assert ipaddress.ip_address(address).is_loopback  # a literal: no DNS lookup
    assert node.REGISTRY_HOSTS_PATH == "/etc/containerd/certs.d/_default/hosts.toml"


def test_the_cni_conflist_serves_the_node_s_share_of_kind_s_default_pod_subnet() -> None:
    conflist = json.loads(node.cni_conflist())
    assert [plugin["type"] for plugin in conflist["plugins"]] == ["ptp", "portmap"]
    subnet = ipaddress.IPv4Network(conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])
    assert subnet.subnet_of(ipaddress.IPv4Network(node.POD_SUBNET))
    assert node.POD_SUBNET == "10.244.0.0/16"  # kind's default podSubnet
    assert node.KIND_CLUSTER_CONFIG_NETWORKING == {"disableDefaultCNI": True}


def test_the_default_manifests_kind_applies_are_plain_yaml() -> None:
    cni = yaml.safe_load(node.DEFAULT_CNI_MANIFEST)
    storage = yaml.safe_load(node.DEFAULT_STORAGE_MANIFEST)
    assert cni["kind"] == "ConfigMap" and cni["metadata"]["namespace"] == "kube-system"
    assert storage["kind"] == "StorageClass"
    assert storage["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"


def test_cri_base_spec_adds_kind_s_hook_and_drops_rlimits_without_touching_its_input() -> None:
    spec = {"process": {"rlimits": [{"type": "RLIMIT_NOFILE"}], "cwd": "/"}, "hooks": {}}
    made = node.cri_base_spec(spec)
    assert made["hooks"]["createContainer"] == [{"path": "/kind/bin/mount-product-files.sh"}]
    assert "rlimits" not in made["process"] and made["process"]["cwd"] == "/"
    assert spec["process"]["rlimits"] and spec["hooks"] == {}


KUBEADM_LIST = """registry.k8s.io/kube-apiserver:v1.34.4
registry.k8s.io/kube-controller-manager:v1.34.4
registry.k8s.io/kube-scheduler:v1.34.4
registry.k8s.io/kube-proxy:v1.34.4
registry.k8s.io/coredns/coredns:v1.12.1
registry.k8s.io/pause:3.10.1
registry.k8s.io/etcd:3.6.5-0
"""


def test_kubeadm_s_image_list_names_the_images_and_the_binaries_behind_them() -> None:
    images = node.kubeadm_images(KUBEADM_LIST.splitlines())
    assert images["coredns"] == "registry.k8s.io/coredns/coredns:v1.12.1"
    assert node.binary_version_for_image("etcd", node.image_tag(images["etcd"])) == "v3.6.5"
    assert node.binary_version_for_image("coredns", node.image_tag(images["coredns"])) == "v1.12.1"
    with pytest.raises(HarnessError, match="kubeadm config images list"):
        node.kubeadm_images(KUBEADM_LIST.splitlines()[:-1])


def fake_kind_module(root: Path) -> Path:
    files = root / "images/base/files"
    for inner, text in {
        "usr/local/bin/entrypoint": "#!/bin/bash\n",
        "kind/bin/mount-product-files.sh": "#!/bin/bash\n",
        "etc/containerd/config.toml": KIND_CONTAINERD_CONFIG,
        "etc/systemd/system/kubelet.service": "[Unit]\n",
        "LICENSES/README.txt": "licenses\n",
    }.items():
        (files / inner).parent.mkdir(parents=True, exist_ok=True)
        (files / inner).write_text(text)
    return root


def test_kind_s_base_files_land_with_kind_s_modes_and_ours_beside_them(tmp_path: Path) -> None:
    files = node.kind_base_files(fake_kind_module(tmp_path), "registry.k8s.io/pause:3.10.1")
    assert files["/usr/local/bin/entrypoint"][1] == 0o755
    assert files["/kind/bin/mount-product-files.sh"][1] == 0o755
    assert files["/etc/systemd/system/kubelet.service"][1] == 0o644
    assert not any(path.startswith("/LICENSES/") for path in files)
    assert b"restrict_oom_score_adj = true" in files["/etc/containerd/config.toml"][0]
    for ours in (node.REGISTRY_HOSTS_PATH, node.CNI_CONFLIST_PATH, "/kind/manifests/default-cni.yaml"):
        assert files[ours][1] == 0o644


def test_the_rootfs_is_trimmed_as_kind_s_dockerfile_does(tmp_path: Path) -> None:
    rootfs = tmp_path
    for directory in (
        "usr/lib/systemd/system/multi-user.target.wants",
        "etc/systemd/system/timers.target.wants",
        "usr/share/doc/bash",
        "usr/lib/cni",
        "usr/sbin",
        "var/lib/apt/lists",
    ):
        (rootfs / directory).mkdir(parents=True)
    (rootfs / "usr/lib/systemd/system/multi-user.target.wants/getty.target").write_text("")
    (rootfs / "etc/systemd/system/timers.target.wants/apt-daily.timer").write_text("")
    (rootfs / "usr/lib/cni/ptp").write_text("")
    (rootfs / "var/lib/apt/lists/Packages").write_text("")
    (rootfs / "etc/systemd/journald.conf").write_text("[Journal]\n")
    node._trim_rootfs(rootfs)
    assert not list((rootfs / "usr/lib/systemd/system/multi-user.target.wants").iterdir())
    assert not list((rootfs / "etc/systemd/system/timers.target.wants").iterdir())
    assert not (rootfs / "usr/share/doc/bash").exists() and not list((rootfs / "var/lib/apt/lists").iterdir())
    assert (rootfs / "etc/systemd/journald.conf").read_text().endswith("ReadKMsg=no\n")
    assert str((rootfs / "usr/sbin/init").readlink()) == "/usr/lib/systemd/systemd"
    assert str((rootfs / "opt/cni/bin/ptp").readlink()) == "/usr/lib/cni/ptp"
    assert str((rootfs / "etc/systemd/system/systemd-binfmt.service").readlink()) == "/dev/null"


def stub(path: Path, script: str) -> None:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("legacy_rules", "nft_rules", "mode"),
    [(3, 5, "nft"), (5, 3, "legacy"), (2, 2, "legacy"), (0, 0, "legacy")],  # ties: legacy, as kind's entrypoint
)
def test_kube_proxy_s_iptables_takes_the_backend_holding_more_rules_then_runs_the_real_one(
    tmp_path: Path, legacy_rules: int, nft_rules: int, mode: str
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = tmp_path / "iptables-wrapper"
    stub(wrapper, node.IPTABLES_WRAPPER.split("\n", 1)[1])
    for family in ("iptables", "ip6tables"):
        (bin_dir / family).symlink_to(wrapper)
    stub(bin_dir / "iptables-legacy-save", f"for i in $(seq {legacy_rules}); do echo '-A KUBE-X'; done\n")
    stub(bin_dir / "iptables-nft-save", f"for i in $(seq {nft_rules}); do echo '-A KUBE-X'; done\necho '*nat'\n")
    stub(bin_dir / "ip6tables-legacy-save", "")
    stub(bin_dir / "ip6tables-nft-save", "")
    # update-alternatives --set NAME /usr/sbin/NAME-MODE: NAME becomes the "real" command of MODE.
    stub(
        bin_dir / "update-alternatives",
        f'echo "$2 $3" >> {tmp_path}/alternatives\nrm -f "{bin_dir}/$2"\n'
        f'printf \'#!/bin/sh\\necho "%s of %s: $*"\\n\' "$2" "${{3##*-}}" > "{bin_dir}/$2"\nchmod +x "{bin_dir}/$2"\n',
    )
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    result = subprocess.run(
        [str(bin_dir / "iptables"), "-w", "-L"], capture_output=True, text=True, env=env, check=False, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"iptables of {mode}: -w -L"
    assert (tmp_path / "alternatives").read_text().split("\n")[:2] == [
        f"iptables /usr/sbin/iptables-{mode}",
        f"ip6tables /usr/sbin/ip6tables-{mode}",
    ]


# ---------------------------------------------------------------------------- recipes


def inputs() -> node.Inputs:
    return node.Inputs(
        kubernetes_version="v1.34.4",
        kind_version="v0.32.0",
        kind_files={"/etc/containerd/config.toml": "a" * 64},
        binaries={"kubelet": ("v1.34.4", "b" * 64), "containerd": ("v2.2.1", "c" * 64)},
        images={"registry.k8s.io/pause:3.10.1": "d" * 64},
        base_image=node.base_recipe().name,
    )


@pytest.mark.parametrize(
    "change",
    [
        {"kind_files": {"/etc/containerd/config.toml": "e" * 64}},
        {"binaries": {"kubelet": ("v1.34.4", "f" * 64), "containerd": ("v2.2.1", "c" * 64)}},
        {"binaries": {"kubelet": ("v1.34.4", "b" * 64), "containerd": ("v2.2.2", "c" * 64)}},
        {"images": {"registry.k8s.io/pause:3.10.1": "0" * 64}},
        {"base_image": "kserve-compat/node-base:bookworm-000000000000"},
        {"kind_version": "v0.33.0"},
    ],
)
def test_the_node_recipe_changes_when_an_input_changes(change: dict[str, object]) -> None:
    before = inputs().node_recipe()
    assert inputs().node_recipe().digest() == before.digest()  # stable for the same inputs
    assert replace(inputs(), **change).node_recipe().digest() != before.digest()  # type: ignore[arg-type]
    assert before.name == "kserve-compat/kind-node:v1.34.4"


def test_the_base_image_tag_carries_its_package_list() -> None:
    base = node.base_recipe()
    assert re.fullmatch(r"kserve-compat/node-base:bookworm-[0-9a-f]{12}", base.name)
    assert node.base_recipe(packages=(*node.DEBIAN_PACKAGES, "curl")).name != base.name
    assert node.base_recipe(packages=tuple(reversed(node.DEBIAN_PACKAGES))).name == base.name


# ---------------------------------------------------------------------------- the real thing

HELLO_GO = """package main

import (
\t"fmt"
\t"net/http"
)

func main() {
\thttp.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
\t\tfmt.Fprintln(w, "hello from the node image test")
\t})
\t_ = http.ListenAndServe(":8080", nil)
}
"""


def run(args: list[str], timeout: float = 300, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    assert result.returncode == 0, f"{' '.join(args[:4])} exited {result.returncode}: {result.stderr[-2000:]}"
    return result.stdout


@pytest.fixture
def tools() -> dict[str, Path]:
    """kind and kubectl, and the node image's prerequisites; skip (fail in CI) without them."""
    engine = binaries.docker_engine_unreachable_reason()
    if engine:
        unavailable(f"kind node image: {engine}")
    if shutil.which("go") is None:
        unavailable("kind node image test: go not found on PATH (the binaries and the test image are built with it)")
    if shutil.which("debootstrap") is None and not is_current(node.base_recipe()):
        unavailable("kind node image: debootstrap not found (apt-get install debootstrap)")
    try:
        return {
            "kind": binaries.ensure("kind", build=in_ci()),
            "kubectl": binaries.ensure("kubectl", binaries.KUBERNETES_VERSION, build=in_ci()),
            **{c: binaries.ensure(c, binaries.KUBERNETES_VERSION, build=in_ci()) for c in ("kubelet", "kubeadm")},
        }
    except HarnessError as error:
        unavailable(str(error))


@pytest.fixture
def hello_image(tmp_path: Path) -> Iterator[str]:
    """A tiny HTTP server image built here (go build + docker import), removed afterwards."""
    source = tmp_path / "hello"
    source.mkdir()
    (source / "main.go").write_text(HELLO_GO)
    (source / "go.mod").write_text("module hello\n\ngo 1.22\n")
    go_env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    subprocess.run(["go", "build", "-ldflags=-s", "-o", "hello", "."], cwd=source, env=go_env, check=True, timeout=300)
    reference = f"kserve-compat/node-test-hello:{uuid.uuid4().hex[:8]}"
    tar = subprocess.run(
        ["tar", "-C", str(source), "--owner=0", "--group=0", "-c", "hello"], capture_output=True, check=True
    ).stdout
    subprocess.run(
        ["docker", "import", "--change", 'ENTRYPOINT ["/hello"]', "-", reference],
        input=tar,
        capture_output=True,
        check=True,
    )
    try:
        yield reference
    finally:
        subprocess.run(["docker", "rmi", "-f", reference], capture_output=True, check=False)


@pytest.mark.slow
@pytest.mark.needs_docker
def test_kind_boots_the_node_image_into_a_ready_cluster(
    tools: dict[str, Path], hello_image: str, tmp_path: Path
) -> None:
    image = node.build_node_image(node.node_kubernetes_version("1.34"))
    assert image == node.NodeImage("kserve-compat/kind-node:v1.34.4", "v1.34.4")
    assert node.node_image_status("v1.34.4")[0] == "built"

    name = f"kc-node-test-{uuid.uuid4().hex[:8]}"
    kubeconfig = tmp_path / "kubeconfig"
    config = {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": node.KIND_CLUSTER_CONFIG_NETWORKING,
        "nodes": [{"role": "control-plane", "image": image.reference}],
    }
    (tmp_path / "kind.yaml").write_text(yaml.safe_dump(config))
    kind, kubectl = str(tools["kind"]), [str(tools["kubectl"]), "--kubeconfig", str(kubeconfig)]
    try:
        started = time.monotonic()
        run([kind, "create", "cluster", "--name", name, "--config", str(tmp_path / "kind.yaml"),
             "--kubeconfig", str(kubeconfig), "--wait", "180s"], timeout=400)  # fmt: skip
        print(f"cluster {name} Ready in {time.monotonic() - started:.1f}s")
        nodes = json.loads(run([*kubectl, "get", "nodes", "-o", "json"]))["items"]
        assert [n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes] == ["v1.34.4"]
        # kubeadm made the CoreDNS Deployment before kind returned; its pods may not exist yet.
        run([*kubectl, "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s"], timeout=150)

        run([kind, "load", "docker-image", "--name", name, hello_image])
        run([*kubectl, "run", "hello", "--image", hello_image, "--image-pull-policy=Never", "--port=8080"])
        run([*kubectl, "wait", "--for=condition=Ready", "pod/hello", "--timeout=90s"], timeout=120)
        forward = subprocess.Popen(
            [*kubectl, "port-forward", "--address", "127.0.0.1", "pod/hello", ":8080"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert forward.stdout is not None
            line = forward.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8080"
            port = re.search(r"127\.0\.0\.1:(\d+)", line)
            assert port, f"kubectl port-forward said {line!r}"
            for attempt in Retrying(
                stop=stop_after_delay(20), wait=wait_fixed(0.5), retry=retry_if_exception_type(OSError), reraise=True
            ):
                with attempt, urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/", timeout=5) as answer:
                    assert answer.read().decode().strip() == "hello from the node image test"
        finally:
            forward.terminate()
            forward.wait(timeout=10)

        # kube-proxy (its iptables wrapper picked the node's backend) routes a Service's ClusterIP.
        run([*kubectl, "expose", "pod", "hello", "--port=80", "--target-port=8080"])
        cluster_ip = run([*kubectl, "get", "service", "hello", "-o", "jsonpath={.spec.clusterIP}"]).strip()
        request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | socat -t2 - TCP:{cluster_ip}:80"
        for attempt in Retrying(stop=stop_after_delay(30), wait=wait_fixed(1), reraise=True):
            with attempt:
                answer = run(["docker", "exec", f"{name}-control-plane", "sh", "-c", request])
                assert "hello from the node image test" in answer, answer

        # Nothing a pod sends leaves the node: a Service address kube-proxy has not rewritten
        # (here one nobody created) and the host's gateway are refused at once.
        probe = (
            "for target in 10.96.200.200:8443 172.18.0.1:53; do "
            "if socat -T2 /dev/null TCP:$target,connect-timeout=5 2>/dev/null; then echo $target open; "
            "else echo $target refused; fi; done"
        )
        run([*kubectl, "run", "egress", "--image", f"registry.k8s.io/kube-proxy:{image.kubernetes_version}",
             "--image-pull-policy=Never", "--restart=Never", "--command", "--", "sh", "-c", probe])  # fmt: skip
        for attempt in Retrying(stop=stop_after_delay(60), wait=wait_fixed(1), reraise=True):
            with attempt:
                phase = run([*kubectl, "get", "pod", "egress", "-o", "jsonpath={.status.phase}"]).strip()
                assert phase == "Succeeded", phase
        answers = run([*kubectl, "logs", "egress"]).split("\n")
        assert [line for line in answers if line] == ["10.96.200.200:8443 refused", "172.18.0.1:53 refused"]

        # An image nobody loaded: the pull fails at once at the closed loopback port.
        retired = "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"
        asked = time.monotonic()
        run([*kubectl, "run", "retired", "--image", retired])
        failure = ""
        for attempt in Retrying(stop=stop_after_delay(30), wait=wait_fixed(0.5), reraise=True):
            with attempt:
                events = json.loads(
                    run([*kubectl, "get", "events", "--field-selector", "involvedObject.name=retired", "-o", "json"])
                )["items"]
                pulls = [e["message"] for e in events if e["message"].startswith("Failed to pull image")]
                assert pulls, "no pull failure yet"
                failure = pulls[0]
        print(f"pull of {retired} failed after {time.monotonic() - asked:.1f}s: {failure}")
        assert "127.0.0.1:1" in failure and "connection refused" in failure, failure

        # imagePullPolicy: Always pulls even a loaded image, and fails here: offline, the
        # harness must give loaded images another policy (KServe's controller says Always).
        run([*kubectl, "run", "always", "--image", hello_image, "--image-pull-policy=Always"])
        for attempt in Retrying(stop=stop_after_delay(30), wait=wait_fixed(0.5), reraise=True):
            with attempt:
                pod = json.loads(run([*kubectl, "get", "pod", "always", "-o", "json"]))
                waiting = (pod["status"].get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {})
                assert waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff"), pod["status"]
    finally:
        subprocess.run([kind, "delete", "cluster", "--name", name], capture_output=True, check=False, timeout=180)
    leftovers = run(["docker", "ps", "-a", "--filter", f"name={name}", "--format", "{{.Names}}"])
    assert not leftovers.strip(), f"kind left containers behind: {leftovers}"
