"""The kind tier, tested on what it builds and parses, without a Docker engine.

Command lines are checked by running the real code against small stand-in executables
(`kind`, `docker`, `kubectl`) that record their arguments and print recorded outputs
(tests/data/kind/: hand-written samples in the tools' formats, except docker-info-no-daemon,
recorded on a machine without an engine; see its README). pytest-kind itself is not
faked: its `create`/`delete` run against the stand-in `kind`. The workflow is validated
with actionlint and check-jsonschema.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from helpers.paths import REPO, TEST_DATA

from e2e.availability import unavailable
from e2e.cluster import kind as kind_tier
from e2e.cluster.kind import (
    KIND_VERSION,
    KUBECTL_VERSION,
    DockerCommands,
    KindCluster,
    KindCommands,
    KindOptions,
    KindProviderFactory,
    ToolPaths,
    cluster_config,
    cluster_config_yaml,
    cluster_name,
    docker_preflight,
    kubectl_environment,
    node_platform,
    parse_forwarding_port,
    parse_kind_clusters,
    port_forward,
    port_forward_argv,
    resolve_tools,
)
from e2e.cluster.kind import cluster as kind_cluster
from e2e.cluster.kind import forwarding as kind_forwarding
from e2e.cluster.kind import tools as kind_tools
from e2e.errors import EnvironmentMissing, HarnessError, UsageError
from e2e.matrix import load_matrix
from e2e.targets import ServiceTarget

DATA = TEST_DATA / "kind"
WORKFLOW = REPO / ".github" / "workflows" / "e2e.yaml"
ACTIONLINT_VERSION = "v1.7.12"
NODE_IMAGE = "kindest/node:v1.34.8@sha256:02722c2dedddcfc00febf5d27fbeb9b7b2c14294c82109ff4a85d89ac9ba3256"
TARGET = ServiceTarget(namespace="kserve", name="kserve-controller-manager-metrics-service", port=8443)


def recorded(name: str) -> str:
    return (DATA / name).read_text()


# -- stand-in executables ----------------------------------------------------------------

# A tool that logs its argv (one JSON list a line) and answers by the first rule whose
# argv prefix matches: stdout, stderr, exit code, and a side effect kind/docker would have.
_STAND_IN = """\
#!{python}
import json, sys
from pathlib import Path
here = Path(__file__)
argv = sys.argv[1:]
with open(str(here) + ".log", "a") as log:
    log.write(json.dumps(argv) + "\\n")
rules = json.loads(Path(str(here) + ".rules.json").read_text())
for rule in rules:
    if argv[: len(rule["prefix"])] == rule["prefix"]:
        effect = rule.get("effect")
        if effect == "kubeconfig":
            flag = next(a for a in argv if a.startswith("--kubeconfig"))
            path = flag.split("=", 1)[1] if "=" in flag else argv[argv.index(flag) + 1]
            Path(path).write_text({kubeconfig!r})
        elif effect == "save":
            Path(argv[argv.index("-o") + 1]).write_bytes(b"tar")
        sys.stdout.write(rule.get("stdout", ""))
        sys.stderr.write(rule.get("stderr", ""))
        sys.exit(rule.get("rc", 0))
sys.stderr.write("stand-in: no rule for " + " ".join(argv) + "\\n")
sys.exit(97)
"""

# A kubeconfig pykube (used by pytest-kind's create) can parse; it is never dialled.
_KUBECONFIG = yaml.safe_dump(
    {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kind", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "kind", "user": {"token": "not-a-real-token-for-tests"}}],
        "contexts": [{"name": "kind", "context": {"cluster": "kind", "user": "kind"}}],
        "current-context": "kind",
    }
)


class StandIn:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text(_STAND_IN.format(python=sys.executable, kubeconfig=_KUBECONFIG))
        path.chmod(0o755)
        self.rules([])

    def rules(self, rules: list[dict[str, Any]]) -> None:
        Path(str(self.path) + ".rules.json").write_text(json.dumps(rules))

    def calls(self) -> list[list[str]]:
        log = Path(str(self.path) + ".log")
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # pytest-kind keeps state in ./.pytest-kind; keep it out of the work tree.
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def kind_bin(in_tmp: Path) -> StandIn:
    return StandIn(in_tmp / "kind")


@pytest.fixture
def docker_bin(in_tmp: Path) -> StandIn:
    return StandIn(in_tmp / "docker")


def make_cluster(kind_bin: StandIn, options: KindOptions | None = None, kubectl: Path | None = None) -> KindCluster:
    tools = ToolPaths(kind=kind_bin.path, kubectl=kubectl or kind_bin.path.parent / "kubectl", downloaded=False)
    return KindCluster(cluster_name("kserve-v0.14.1--k8s-1.34"), NODE_IMAGE, "1.34", options or KindOptions(), tools)


# -- names and config --------------------------------------------------------------------


def test_cluster_name_is_a_short_form_of_the_group_id() -> None:
    assert cluster_name("kserve-v0.14.0--k8s-1.33") == "kcompat-v0-14-0-k8s-1-33"
    assert cluster_name("kserve-v0.13.0-rc0--k8s-1.34") == "kcompat-v0-13-0-rc0-k8s-1-34"


def test_cluster_names_are_valid_unique_and_deterministic_for_every_group() -> None:
    matrix = load_matrix()
    ids = {f"kserve-{r.version}--k8s-{k.version}" for r in matrix.releases for k in matrix.kubernetes}
    names = {cluster_name(group_id) for group_id in ids}
    assert len(names) == len(ids)
    for name in names:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", name), name
        assert len(name) <= kind_tier.CLUSTER_NAME_MAX
    long_id = "kserve-v0.21.0-rc.1+build.very.long.metadata--k8s-1.34--extra"
    assert cluster_name(long_id) == cluster_name(long_id)
    assert len(cluster_name(long_id)) <= kind_tier.CLUSTER_NAME_MAX
    assert cluster_name(long_id) != cluster_name(long_id + "x")


@pytest.mark.parametrize("version", [k.version for k in load_matrix().kubernetes if k.node_image])
def test_cluster_config_runs_one_control_plane_on_the_matrix_node_image(version: str) -> None:
    node_image = load_matrix().k8s(version).node_image
    assert node_image is not None
    config = yaml.safe_load(cluster_config_yaml(node_image))
    assert config == {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "nodes": [{"role": "control-plane", "image": node_image}],
    }
    assert f":v{version}." in node_image


def test_node_platform_maps_machine_names_to_docker_platforms() -> None:
    assert node_platform("x86_64") == "linux/amd64"
    assert node_platform("aarch64") == "linux/arm64"
    assert node_platform("arm64") == "linux/arm64"


# -- command lines -----------------------------------------------------------------------


def test_kind_and_docker_command_lines() -> None:
    commands = KindCommands(Path("/bin/kind"), "kcompat-v0-14-1-k8s-1-34", Path("/s/kubeconfig"))
    assert commands.get_clusters() == ["/bin/kind", "get", "clusters"]
    assert commands.export_logs(Path("/r/logs")) == [
        "/bin/kind", "export", "logs", "/r/logs", "--name", "kcompat-v0-14-1-k8s-1-34",
    ]  # fmt: skip
    assert commands.export_kubeconfig() == [
        "/bin/kind", "export", "kubeconfig", "--name", "kcompat-v0-14-1-k8s-1-34", "--kubeconfig", "/s/kubeconfig",
    ]  # fmt: skip


def test_port_forward_command_line_and_environment() -> None:
    assert port_forward_argv(Path("/bin/kubectl"), TARGET) == [
        "/bin/kubectl", "port-forward", "svc/kserve-controller-manager-metrics-service", ":8443",
        "-n", "kserve", "--address", "127.0.0.1",
    ]  # fmt: skip
    env = kubectl_environment(Path("/s/kubeconfig"), {"PATH": "/usr/bin", "HOME": "/root"})
    # pytest-kind passes KUBECONFIG alone; kubectl needs PATH and HOME too.
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "KUBECONFIG": "/s/kubeconfig"}


# -- parsing recorded outputs ------------------------------------------------------------


def test_kind_get_clusters_parsing() -> None:
    assert parse_kind_clusters(recorded("kind-get-clusters.stdout")) == [
        "kcompat-v0-13-1-k8s-1-33",
        "kcompat-v0-14-1-k8s-1-34",
        "kind",
    ]
    assert parse_kind_clusters(recorded("kind-get-clusters-none.stdout")) == []


def test_forwarding_line_parsing() -> None:
    lines = recorded("kubectl-port-forward.stdout").format(port=40123).splitlines()
    assert [parse_forwarding_port(line) for line in lines] == [40123, None, None]


# -- port-forward against a real process --------------------------------------------------


def fake_kubectl(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "kubectl"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def test_endpoint_yields_the_forwarded_address_and_stops_kubectl(in_tmp: Path, kind_bin: StandIn) -> None:
    sample = DATA / "kubectl-port-forward.stdout"
    kubectl = fake_kubectl(
        in_tmp,
        f"""
        import json, os, sys, time
        from pathlib import Path
        Path("argv.json").write_text(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ)}}))
        Path("pid").write_text(str(os.getpid()))
        time.sleep(0.3)  # kubectl takes a moment to resolve the Service
        text = Path({str(sample)!r}).read_text().format(port=40123)
        lines = text.splitlines()
        print(lines[0], flush=True)
        print(lines[1], flush=True)
        # Far more than a pipe holds: the harness must keep draining after readiness.
        for _ in range(20000):
            print(lines[2])
        sys.stdout.flush()
        Path("drained").write_text("yes")
        time.sleep(60)
        """,
    )
    cluster = make_cluster(kind_bin, kubectl=kubectl)
    with cluster.endpoint(TARGET) as address:
        # The relay's own address, not kubectl's port: it has to outlive kubectl (see below).
        assert address.startswith("127.0.0.1:") and address != "127.0.0.1:40123"
        deadline = time.monotonic() + 10
        while not (in_tmp / "drained").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (in_tmp / "drained").exists()
        pid = int((in_tmp / "pid").read_text())
        os.kill(pid, 0)  # still running inside the block
    recorded_call = json.loads((in_tmp / "argv.json").read_text())
    assert recorded_call["argv"] == port_forward_argv(kubectl, TARGET)[1:]
    assert recorded_call["env"]["KUBECONFIG"] == str(cluster.kubeconfig)
    assert "PATH" in recorded_call["env"]
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)


def test_port_forward_gives_up_with_one_line_after_bounded_attempts(tmp_path: Path) -> None:
    sample = DATA / "kubectl-port-forward-pod-pending.stderr"
    kubectl = fake_kubectl(
        tmp_path,
        f"""
        import sys
        from pathlib import Path
        with open({str(tmp_path / "starts")!r}, "a") as starts:
            starts.write("x")
        sys.stderr.write(Path({str(sample)!r}).read_text())
        sys.exit(1)
        """,
    )
    argv = port_forward_argv(kubectl, TARGET)
    with pytest.raises(HarnessError) as caught, port_forward(argv, dict(os.environ), ready_timeout=5, attempts=2):
        pass
    message = str(caught.value)
    assert "\n" not in message
    assert "not ready after 2 attempts" in message
    assert "pod is not running" in message
    assert (tmp_path / "starts").read_text() == "xx"


# -- the stable address: a relay that restarts kubectl when the pod is replaced -------------
#
# kubectl binds a Service port-forward to one pod; a rollout replaces it. The stand-in
# kubectl (tests/data/kind/kubectl-port-forward-stand-in.py) really forwards, to the "pod"
# named in its `endpoints` file; the pods are small HTTP servers in this process.


class Pod:
    """A tiny HTTP backend answering every GET with its name (HTTP/1.0: one request a connection)."""

    def __init__(self, name: str) -> None:
        body = name.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()  # its port now refuses, as a deleted pod's would


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    started: list[Pod] = []
    yield started
    for pod in started:
        with contextlib.suppress(OSError):
            pod.stop()


class StandInKubectl:
    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.directory = directory
        self.path = directory / "kubectl"
        self.path.write_text(f"#!{sys.executable}\n" + (DATA / "kubectl-port-forward-stand-in.py").read_text())
        self.path.chmod(0o755)
        monkeypatch.setenv("STAND_IN_DATA", str(DATA))

    def route_to(self, pod: Pod | None) -> None:
        """Where the Service points a kubectl started from now on (None: its pod is Pending)."""
        (self.directory / "endpoints").write_text("" if pod is None else str(pod.port))

    def pids(self) -> list[int]:
        starts = self.directory / "starts"
        return [int(line) for line in starts.read_text().split()] if starts.exists() else []


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandInKubectl:
    return StandInKubectl(tmp_path, monkeypatch)


def get(address: str, timeout: float = 15.0) -> str:
    connection = http.client.HTTPConnection(address, timeout=timeout)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def kill_kubectl(pid: int) -> None:
    """SIGKILL, as a pod replacement ends kubectl, and wait until it has died completely.

    The kill is asynchronous, and per thread: the main thread turns zombie while the others
    (the stand-in's connection threads) are still exiting, and the listening socket is only
    closed when the last of them is gone. Until then a connection still reaches the dying
    kubectl (and fails without a restart, which the relay is right to do). The tests want
    the restart, so they wait for a zombie with no thread left; the relay reaps it.
    """
    os.kill(pid, signal.SIGKILL)
    proc = Path(f"/proc/{pid}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            threads = os.listdir(proc / "task")
        except FileNotFoundError:
            return  # already reaped
        if state == "Z" and threads == [str(pid)]:
            return
        time.sleep(0.02)
    raise AssertionError(f"kubectl {pid} still running 10s after SIGKILL")


def get_ignoring_errors(address: str) -> None:
    with contextlib.suppress(OSError, http.client.HTTPException):
        get(address)


def eventually(call: Callable[[], str], deadline_s: float = 20.0) -> tuple[str, int]:
    """The first successful answer of ``call`` and how many attempts failed before it."""
    failed = 0
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return call(), failed
        except (OSError, http.client.HTTPException):
            failed += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def assert_all_gone(pids: list[int], address: str) -> None:
    """No kubectl left (reaped, not zombies), nothing listens, no relay thread runs."""
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    host, port = address.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), timeout=2):
        pass
    assert not [t.name for t in threading.enumerate() if t.name.startswith("relay ")]


def test_the_address_survives_kubectl_being_killed_with_a_gap_while_the_new_pod_starts(
    stand_in: StandInKubectl, pods: list[Pod], in_tmp: Path, kind_bin: StandIn
) -> None:
    old, new = Pod("pod-old"), Pod("pod-new")
    pods += [old, new]
    stand_in.route_to(old)
    cluster = make_cluster(kind_bin, kubectl=stand_in.path)  # the real endpoint(): full env + KUBECONFIG
    with cluster.endpoint(TARGET) as address:
        assert get(address) == "pod-old"
        held = socket.create_connection(tuple_of(address), timeout=10)
        # The rollout: the old pod goes, the new one is not running yet, kubectl dies.
        stand_in.route_to(None)
        old.stop()
        kill_kubectl(stand_in.pids()[-1])
        # A connection through the dead kubectl just closes...
        with contextlib.suppress(ConnectionResetError):
            assert held.recv(1) == b""
        held.close()
        # ...and new requests fail while the new pod is Pending (kubectl restarted, exits 1).
        with pytest.raises((OSError, http.client.HTTPException)):
            get(address)
        assert len(stand_in.pids()) >= 2
        # The new pod runs: the same address answers again, through a restarted kubectl.
        stand_in.route_to(new)
        answer, _ = eventually(lambda: get(address))
        assert answer == "pod-new"
        assert get(address) == "pod-new"
    assert_all_gone(stand_in.pids(), address)


def test_a_kubectl_that_stays_up_after_its_pod_is_gone_is_restarted(
    stand_in: StandInKubectl, pods: list[Pod], caplog: pytest.LogCaptureFixture
) -> None:
    # Some kubectl versions keep running and fail every connection ("an error occurred forwarding").
    old, new = Pod("pod-old"), Pod("pod-new")
    pods += [old, new]
    stand_in.route_to(old)
    argv = port_forward_argv(stand_in.path, TARGET)
    with port_forward(argv, dict(os.environ), ready_timeout=5, attempts=2) as address:
        assert get(address) == "pod-old"
        stand_in.route_to(new)
        old.stop()
        with caplog.at_level("INFO", logger="e2e.cluster.kind"):
            answer, failed = eventually(lambda: get(address))
        assert answer == "pod-new"
        assert failed >= 1  # the outage window the prober counts
        assert len(stand_in.pids()) == 2
    # kubectl never exited: its error line is what made the relay restart it.
    restarts = [r.getMessage() for r in caplog.records if "restarting" in r.getMessage()]
    assert len(restarts) == 1
    assert "an error occurred forwarding" in restarts[0] and "kubectl exited" not in restarts[0]
    assert_all_gone(stand_in.pids(), address)


def test_exit_on_an_exception_stops_everything_even_during_a_restart(stand_in: StandInKubectl, pods: list[Pod]) -> None:
    pod = Pod("pod")
    pods.append(pod)
    stand_in.route_to(pod)
    argv = port_forward_argv(stand_in.path, TARGET)

    class CellFailed(Exception):
        pass

    with pytest.raises(CellFailed), port_forward(argv, dict(os.environ), ready_timeout=5, attempts=5) as address:
        assert get(address) == "pod"
        stand_in.route_to(None)
        kill_kubectl(stand_in.pids()[-1])
        # A request now makes the relay restart kubectl and back off (1, 2, 4, 8 s)...
        threading.Thread(target=get_ignoring_errors, args=(address,), daemon=True).start()
        deadline = time.monotonic() + 10
        while len(stand_in.pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(stand_in.pids()) >= 2
        exiting = time.monotonic()
        raise CellFailed
    # ...which must not hold up the exit.
    assert time.monotonic() - exiting < 5
    assert_all_gone(stand_in.pids(), address)


def test_a_kubectl_that_never_says_forwarding_from_is_a_one_line_error(tmp_path: Path) -> None:
    kubectl = fake_kubectl(
        tmp_path,
        f"""
        import os, time
        with open({str(tmp_path / "starts")!r}, "a") as starts:
            starts.write(str(os.getpid()) + "\\n")
        print("I1127 resolving the Service...", flush=True)
        time.sleep(60)
        """,
    )
    argv = port_forward_argv(kubectl, TARGET)
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(HarnessError) as caught, port_forward(argv, dict(os.environ), ready_timeout=1, attempts=2):
        pass
    assert str(caught.value) == (
        f"kubectl port-forward {' '.join(argv[2:])}: not ready after 2 attempts "
        "(no 'Forwarding from' line in 1s; last seen: I1127 resolving the Service...)"
    )
    pids = [int(line) for line in (tmp_path / "starts").read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not [t for t in threading.enumerate() if t.name.startswith("relay ") and t.name not in before]


def test_kubectl_lines_that_mean_the_pod_is_gone() -> None:
    lines = recorded("kubectl-port-forward-pod-gone.stderr").format(port=40123).splitlines()
    assert all(kind_forwarding.FORWARD_LOST.search(line) for line in lines)
    healthy = recorded("kubectl-port-forward.stdout").format(port=40123).splitlines()
    healthy += recorded("kubectl-port-forward-pod-pending.stderr").splitlines()
    assert not any(kind_forwarding.FORWARD_LOST.search(line) for line in healthy)


def tuple_of(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


# -- pytest-kind create / reuse / delete against a stand-in kind --------------------------


@pytest.fixture
def no_node_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # Node readiness is read from the API server; there is none behind the stand-in kind.
    monkeypatch.setattr(KindCluster, "_wait_nodes_ready", lambda self: None)


def test_create_passes_the_config_and_node_image_through_pytest_kind(kind_bin: StandIn, no_node_wait: None) -> None:
    kind_bin.rules(
        [
            {"prefix": ["get", "clusters"], "stderr": recorded("kind-get-clusters-none.stderr")},
            {"prefix": ["create", "cluster"], "effect": "kubeconfig"},
            {"prefix": ["delete", "cluster"]},
        ]
    )
    cluster = make_cluster(kind_bin)
    cluster.start()
    name = "kcompat-v0-14-1-k8s-1-34"
    create = [call for call in kind_bin.calls() if call[:2] == ["create", "cluster"]]
    assert create == [
        [
            "create", "cluster", f"--name={name}", f"--kubeconfig={cluster.kubeconfig}", f"--image={NODE_IMAGE}",
            "--config", str(cluster.config_file),
        ]
    ]  # fmt: skip
    config = yaml.safe_load(cluster.config_file.read_text())
    certs = cluster.mirrors.certs_dir
    assert config["nodes"] == [
        {"role": "control-plane", "image": NODE_IMAGE,
         "extraMounts": [{"hostPath": str(certs), "containerPath": "/etc/containerd/certs.d", "readOnly": True}]}
    ]  # fmt: skip
    # Online (no local image set) no mirror runs before the install names its images' hosts.
    assert certs.is_dir() and list(certs.iterdir()) == []
    assert cluster.kubeconfig.read_text()  # written by "kind"; its content is never logged
    cluster.delete()
    assert kind_bin.calls()[-1] == ["delete", "cluster", f"--name={name}", f"--kubeconfig={cluster.kubeconfig}"]


def test_an_existing_cluster_is_not_taken_over_without_reuse(kind_bin: StandIn, no_node_wait: None) -> None:
    kind_bin.rules([{"prefix": ["get", "clusters"], "stdout": recorded("kind-get-clusters.stdout")}])
    cluster = make_cluster(kind_bin)
    with pytest.raises(UsageError, match="--reuse-cluster") as caught:
        cluster.start()
    assert "\n" not in str(caught.value)
    assert not any(call[:1] == ["create"] for call in kind_bin.calls())


def _reuse_rules(kind_bin: StandIn, docker_bin: StandIn, mounts: dict[str, str]) -> None:
    """A cluster to reuse whose node containers mount certs.d as ``mounts`` says (node -> folder)."""
    kind_bin.rules(
        [
            {"prefix": ["get", "clusters"], "stdout": recorded("kind-get-clusters.stdout")},
            {"prefix": ["export", "kubeconfig"], "effect": "kubeconfig"},
        ]
    )
    docker_bin.rules(
        [
            {"prefix": ["ps"], "stdout": "".join(f"{node}\trunning\tUp 1 hour\n" for node in mounts)},
            {"prefix": ["inspect"], "stdout": "".join(f"/{node}\t{folder}\n" for node, folder in mounts.items())},
        ]
    )


def test_reuse_exports_the_kubeconfig_and_keeps_the_cluster(
    kind_bin: StandIn, docker_bin: StandIn, no_node_wait: None
) -> None:
    cluster = make_cluster(kind_bin, KindOptions(reuse_cluster=True, docker=str(docker_bin.path)))
    cluster.mirrors.certs_dir.mkdir(parents=True)
    _reuse_rules(kind_bin, docker_bin, {f"{cluster.name}-control-plane": str(cluster.mirrors.certs_dir)})
    cluster.start()
    assert cluster.reused
    assert ["export", "kubeconfig", "--name", cluster.name, "--kubeconfig", str(cluster.kubeconfig)] in kind_bin.calls()
    assert not any(call[:1] == ["create"] for call in kind_bin.calls())
    cluster.delete()
    assert not any(call[:1] == ["delete"] for call in kind_bin.calls())


def test_a_reused_cluster_made_from_another_folder_gets_the_mirrors_there(
    kind_bin: StandIn, docker_bin: StandIn, no_node_wait: None, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere" / ".pytest-kind" / "certs.d"
    elsewhere.mkdir(parents=True)
    cluster = make_cluster(kind_bin, KindOptions(reuse_cluster=True, docker=str(docker_bin.path)))
    _reuse_rules(kind_bin, docker_bin, {f"{cluster.name}-control-plane": str(elsewhere)})
    cluster.start()
    # The nodes read that folder: the run's hosts.toml files go there, not to ./.pytest-kind.
    assert cluster.mirrors.certs_dir == elsewhere
    assert cluster.mirrors.mode.name == "online" and list(elsewhere.iterdir()) == []
    inspect = next(call for call in docker_bin.calls() if call[:1] == ["inspect"])
    assert inspect[-1] == f"{cluster.name}-control-plane" and "/etc/containerd/certs.d" in inspect[2]


@pytest.mark.parametrize(
    ("mounts", "says"),
    [
        ({"-control-plane": ""}, "-control-plane has no /etc/containerd/certs.d mount (not made by this"),
        ({"-control-plane": "GONE"}, "which no longer exists on this host"),
        ({"-control-plane": "A", "-worker": "B"}, "its nodes mount /etc/containerd/certs.d from different folders"),
    ],
)
def test_a_reused_cluster_whose_nodes_would_pull_past_the_mirrors_is_refused(
    kind_bin: StandIn, docker_bin: StandIn, no_node_wait: None, tmp_path: Path, mounts: dict[str, str], says: str
) -> None:
    cluster = make_cluster(kind_bin, KindOptions(reuse_cluster=True, docker=str(docker_bin.path)))
    for folder in ("A", "B"):
        (tmp_path / folder).mkdir()
    _reuse_rules(
        kind_bin,
        docker_bin,
        {f"{cluster.name}{suffix}": str(tmp_path / folder) if folder else "" for suffix, folder in mounts.items()},
    )
    with pytest.raises(UsageError) as caught:
        cluster.start()
    message = str(caught.value)
    assert says in message and "\n" not in message
    assert message.endswith(f"delete it with `kind delete cluster --name {cluster.name}` and run again")


@pytest.mark.parametrize(
    ("options", "failed", "deleted"),
    [
        (KindOptions(), False, True),
        (KindOptions(), True, True),
        (KindOptions(keep_cluster=True), False, False),
        (KindOptions(keep_on_failure=True), False, True),
        (KindOptions(keep_on_failure=True), True, False),
    ],
)
def test_keep_options(
    kind_bin: StandIn, options: KindOptions, failed: bool, deleted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kind_cluster, "LATE_NODE_QUIET_S", 0.0)  # never created: nothing in flight here
    kind_bin.rules([{"prefix": ["delete", "cluster"]}])
    cluster = make_cluster(kind_bin, options)
    if failed:
        cluster.mark_failed()
    cluster.delete()
    assert any(call[:1] == ["delete"] for call in kind_bin.calls()) is deleted


@pytest.fixture
def late_node_listing(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[list[str]]], None]:
    """Stand-in listings of the cluster's node containers, one per look (then none), and a
    short quiet window."""
    monkeypatch.setattr(kind_cluster, "LATE_NODE_QUIET_S", 0.5)
    monkeypatch.setattr(kind_cluster, "LATE_NODE_RECHECK_S", 0.01)
    monkeypatch.setattr(KindCluster, "_describe_containers", staticmethod(lambda ids: " ".join(ids)))

    def listed(listings: list[list[str]]) -> None:
        looks = iter(listings)
        monkeypatch.setattr(KindCluster, "_node_container_ids", lambda self: next(looks, []))

    return listed


def test_a_node_container_appearing_after_an_unfinished_creation_is_deleted_too(
    kind_bin: StandIn, late_node_listing: Callable[[list[list[str]]], None]
) -> None:
    # Ctrl-C killed the `docker run` of `kind create`, but the engine finished creating the
    # node container after the first delete: the delete looks again and deletes it.
    kind_bin.rules([{"prefix": ["delete", "cluster"]}])
    late_node_listing([["late-node-id"]])
    cluster = make_cluster(kind_bin)  # never started to the end: its creation did not finish
    cluster.delete()
    assert [call[:2] for call in kind_bin.calls()] == [["delete", "cluster"]] * 2


def test_a_node_container_seen_again_after_the_second_delete_is_deleted_again(
    kind_bin: StandIn, late_node_listing: Callable[[list[list[str]]], None]
) -> None:
    # Seen in CI: one was still listed after the delete that followed the first.
    kind_bin.rules([{"prefix": ["delete", "cluster"]}])
    late_node_listing([["late-node-id"], [], ["late-node-id"]])
    cluster = make_cluster(kind_bin)
    cluster.delete()
    assert [call[:2] for call in kind_bin.calls()] == [["delete", "cluster"]] * 3


def test_a_node_container_that_never_goes_ends_the_watch_with_the_command_to_remove_it(
    kind_bin: StandIn,
    late_node_listing: Callable[[list[list[str]]], None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kind_bin.rules([{"prefix": ["delete", "cluster"]}])
    late_node_listing([["0123456789abcdef"]] * 10_000)
    monkeypatch.setattr(kind_cluster, "LATE_NODE_LIMIT_S", 0.2)
    cluster = make_cluster(kind_bin)
    with caplog.at_level(logging.ERROR, logger=kind_cluster.log.name):
        cluster.delete()
    assert "still there after" in caplog.text
    assert "docker rm -f 0123456789ab" in caplog.text
    assert 2 <= [call[:2] for call in kind_bin.calls()].count(["delete", "cluster"]) < 100


def test_a_created_cluster_is_deleted_once_without_looking_for_late_nodes(
    kind_bin: StandIn, no_node_wait: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind_bin.rules(
        [
            {"prefix": ["get", "clusters"], "stderr": recorded("kind-get-clusters-none.stderr")},
            {"prefix": ["create", "cluster"], "effect": "kubeconfig"},
            {"prefix": ["delete", "cluster"]},
        ]
    )
    looked: list[str] = []
    monkeypatch.setattr(KindCluster, "_node_container_ids", lambda self: looked.append(self.name) or ["x"])
    cluster = make_cluster(kind_bin)
    cluster.start()
    cluster.delete()
    assert looked == []
    assert [call[:2] for call in kind_bin.calls()].count(["delete", "cluster"]) == 1


def test_export_logs_runs_kind_export_logs(kind_bin: StandIn, in_tmp: Path) -> None:
    kind_bin.rules([{"prefix": ["export", "logs"]}])
    cluster = make_cluster(kind_bin)
    cluster.export_logs(in_tmp / "diag" / "kind")
    assert kind_bin.calls() == [["export", "logs", str(in_tmp / "diag" / "kind"), "--name", cluster.name]]


def _failing_create_rules() -> list[dict[str, Any]]:
    # kind's own error line for a node container docker refused (the details went to docker's stderr).
    failed = 'ERROR: failed to create cluster: command "docker run --privileged ..." failed with error: exit status 1\n'
    return [
        {"prefix": ["get", "clusters"], "stderr": recorded("kind-get-clusters-none.stderr")},
        {"prefix": ["create", "cluster"], "stderr": failed, "rc": 1},
    ]


def test_a_host_that_refuses_privileged_containers_is_one_line_naming_the_fix(
    kind_bin: StandIn, docker_bin: StandIn, no_node_wait: None
) -> None:
    kind_bin.rules(_failing_create_rules())
    docker_bin.rules([{"prefix": ["run"], "stderr": recorded("docker-run-privileged-no-caps.stderr"), "rc": 125}])
    cluster = make_cluster(kind_bin, KindOptions(docker=str(docker_bin.path)))
    with pytest.raises(EnvironmentMissing) as caught:
        cluster.start()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"kind create cluster {cluster.name}: this Docker engine cannot run privileged")
    assert "unable to apply caps: operation not permitted" in message
    assert "run `.ci/docker-engine`" in message
    # The diagnosis retries what kind did, a privileged container of the node image, without pulling it.
    run = ["run", "--rm", "--pull", "never", "--privileged", "--entrypoint", "true", NODE_IMAGE]
    assert docker_bin.calls() == [run]


@pytest.mark.parametrize(
    "docker_run",
    [
        {"prefix": ["run"]},  # privileged containers run: kind failed for another reason
        {"prefix": ["run"], "stderr": "docker: Error response from daemon: No such image: kindest/node\n", "rc": 125},
    ],
)
def test_other_create_failures_keep_their_own_message(
    kind_bin: StandIn,
    docker_bin: StandIn,
    no_node_wait: None,
    docker_run: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kind_cluster, "inotify_shortfall", lambda: "")  # this host's limits are not the point
    kind_bin.rules(_failing_create_rules())
    node = "kcompat-v0-14-1-k8s-1-34-control-plane"
    # docker events' lines as the engine prints them (a node removed by somebody mid-create).
    history = "".join(
        f"{line}\n"
        for line in (
            f"create {node} <no value>",
            f"exec_start: true {node} <no value>",
            f"start {node} <no value>",
            f"kill {node} <no value>",
            f"die {node} 137",
            f"destroy {node} <no value>",
        )
    )
    docker_bin.rules([docker_run, {"prefix": ["events"], "stdout": history}])
    cluster = make_cluster(kind_bin, KindOptions(docker=str(docker_bin.path)))
    with pytest.raises(HarnessError) as caught:
        cluster.start()
    assert not isinstance(caught.value, EnvironmentMissing)
    assert str(caught.value) == (
        f"kind create cluster {cluster.name} (image {NODE_IMAGE}) exited 1; see its output above; "
        f"its node containers meanwhile: create {node}, start {node}, kill {node}, die {node} 137, destroy {node}"
    )
    events = next(call for call in docker_bin.calls() if call[0] == "events")
    assert events[events.index("--filter") + 3] == f"label=io.x-k8s.kind.cluster={cluster.name}"


def test_a_create_failure_on_a_host_with_kinds_inotify_problem_names_the_sysctl(
    kind_bin: StandIn, docker_bin: StandIn, no_node_wait: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kind_cluster, "inotify_shortfall", lambda: "fs.inotify.max_user_instances is 128")
    kind_bin.rules(_failing_create_rules())
    docker_bin.rules([{"prefix": ["run"]}, {"prefix": ["events"], "stdout": ""}])
    cluster = make_cluster(kind_bin, KindOptions(docker=str(docker_bin.path)))
    with pytest.raises(HarnessError) as caught:
        cluster.start()
    message = str(caught.value)
    assert "\n" not in message
    assert message.endswith(
        "; fs.inotify.max_user_instances is 128: raise them with `sysctl -w fs.inotify.max_user_instances=512 "
        "fs.inotify.max_user_watches=524288` (kind's known issue: too many open files)"
    )


def test_inotify_limits_below_kinds_advice_are_named(tmp_path: Path) -> None:
    (tmp_path / "max_user_instances").write_text("128\n")
    (tmp_path / "max_user_watches").write_text("524288\n")
    assert kind_tools.inotify_shortfall(tmp_path) == "fs.inotify.max_user_instances is 128"
    (tmp_path / "max_user_instances").write_text("8192\n")
    assert kind_tools.inotify_shortfall(tmp_path) == ""
    assert kind_tools.inotify_shortfall(tmp_path / "not-linux") == ""  # unreadable: nothing to say


@pytest.mark.needs_docker
def test_node_events_are_the_engines_history_of_that_clusters_containers_only(tmp_path: Path) -> None:
    """Against the real engine: a node container that could not start and was removed, beside a
    container of another cluster that must not show."""
    docker_preflight()
    image = f"kserve-compat/events-test:{os.getpid()}"
    empty = tmp_path / "empty.tar"
    subprocess.run(["tar", "-cf", str(empty), "-T", "/dev/null"], check=True)
    subprocess.run(["docker", "import", str(empty), image], capture_output=True, check=True, timeout=60)
    name, other = f"kcompat-events-{os.getpid()}", f"kcompat-other-{os.getpid()}"
    since = time.time()
    try:
        for cluster in (name, other):
            subprocess.run(
                ["docker", "run", "-d", "--name", f"{cluster}-control-plane", "--label",
                 f"io.x-k8s.kind.cluster={cluster}", "--entrypoint", "/absent", image],
                capture_output=True, check=False, timeout=60,
            )  # fmt: skip
    finally:
        for cluster in (name, other):
            subprocess.run(["docker", "rm", "-f", f"{cluster}-control-plane"], capture_output=True, timeout=60)
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False, timeout=60)
    listed = subprocess.run(
        DockerCommands().node_events(name, since, time.time()), capture_output=True, text=True, timeout=30, check=True
    )
    assert listed.stdout.splitlines() == [
        f"create {name}-control-plane <no value>",
        f"destroy {name}-control-plane <no value>",
    ]


# -- images: into the nodes' mirrors, pulled by the kubelet -------------------------------


class FakeMirror:
    """A mirror that records pushes; ``held`` is the config digest it serves (None: nothing)."""

    def __init__(self, host: str, remote: str | None, held: str | None) -> None:
        self.host, self.remote, self.held = host, remote, held
        self.pushed: list[tuple[str, str]] = []

    def config_digest(self, name: str) -> str | None:
        return self.held

    def push(self, image: str, name: str, docker: str = "docker") -> None:
        self.pushed.append((image, name))


def _with_mirrors(
    cluster: KindCluster, monkeypatch: pytest.MonkeyPatch, remote: str | None, held: str | None
) -> dict[str, FakeMirror]:
    made: dict[str, FakeMirror] = {}

    def mirror(host: str) -> FakeMirror:
        return made.setdefault(host, FakeMirror(host, remote, held))

    monkeypatch.setattr(cluster.mirrors, "mirror", mirror)
    return made


LOCAL_ID = "sha256:" + "1" * 64


def test_a_pull_through_mirror_is_left_to_the_kubelet(
    kind_bin: StandIn, docker_bin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make_cluster(kind_bin, KindOptions(docker=str(docker_bin.path)))
    mirrors = _with_mirrors(cluster, monkeypatch, remote="https://quay.io", held=None)
    cluster.load_images(["quay.io/brancz/kube-rbac-proxy:v0.18.0"])
    assert mirrors["quay.io"].pushed == []
    assert docker_bin.calls() == [] and kind_bin.calls() == []  # no docker pull, no kind load


@pytest.mark.parametrize(("held", "pushed"), [(None, True), ("sha256:" + "2" * 64, True), (LOCAL_ID, False)])
def test_an_image_of_the_local_engine_goes_into_its_hosts_mirror_when_missing_or_changed(
    kind_bin: StandIn, docker_bin: StandIn, monkeypatch: pytest.MonkeyPatch, held: str | None, pushed: bool
) -> None:
    docker_bin.rules([{"prefix": ["image", "inspect"], "stdout": LOCAL_ID + "\n"}])
    cluster = make_cluster(kind_bin, KindOptions(docker=str(docker_bin.path)))
    mirrors = _with_mirrors(cluster, monkeypatch, remote=None, held=held)
    cluster.load_images(["kserve-compat.local/prometheus:v2.42.0"])
    expected = [("kserve-compat.local/prometheus:v2.42.0", "prometheus:v2.42.0")] if pushed else []
    assert mirrors["kserve-compat.local"].pushed == expected
    assert kind_bin.calls() == []


def test_a_host_of_the_users_registry_is_pulled_from_there_and_never_pushed_to(
    kind_bin: StandIn, docker_bin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--registry-mirror quay.io=URL: the nodes' certs.d points quay.io at URL; the run starts no
    mirror of its own for it and pushes nothing there (the user seeds it)."""
    options = KindOptions(docker=str(docker_bin.path), user_registries=(("quay.io", "http://10.0.0.5:5000"),))
    cluster = make_cluster(kind_bin, options)
    mirrors = _with_mirrors(cluster, monkeypatch, remote=None, held=None)
    cluster.mirrors.prepare()
    hosts = (cluster.mirrors.certs_dir / "quay.io" / "hosts.toml").read_text()
    assert 'server = "http://10.0.0.5:5000"' in hosts and "your registry (--registry-mirror)" in hosts
    cluster.load_images(["quay.io/brancz/kube-rbac-proxy:v0.22.1"])
    assert mirrors == {} and docker_bin.calls() == []
    assert "quay.io -> http://10.0.0.5:5000 (your registry, --registry-mirror)" in cluster.mirrors.describe()
    plan = "\n".join(KindProviderFactory(load_matrix(), options).plan("kserve-v0.14.1--k8s-1.34", "1.34"))
    assert "quay.io: the nodes pull from your registry http://10.0.0.5:5000 instead (--registry-mirror" in plan


def test_docker_hub_images_go_to_the_docker_io_mirror_under_their_full_path(
    kind_bin: StandIn, docker_bin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker_bin.rules([{"prefix": ["image", "inspect"], "stdout": LOCAL_ID + "\n"}])
    cluster = make_cluster(kind_bin, KindOptions(docker=str(docker_bin.path)))
    mirrors = _with_mirrors(cluster, monkeypatch, remote=None, held=None)
    cluster.load_images(["kserve/kserve-controller:v0.14.0", "busybox"])
    assert mirrors["docker.io"].pushed == [
        ("kserve/kserve-controller:v0.14.0", "kserve/kserve-controller:v0.14.0"),
        ("busybox", "library/busybox:latest"),
    ]


def test_the_kind_config_mounts_the_mirrors_where_containerd_reads_them(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    ours = cluster_config("kserve-compat/kind-node:v1.34.4", {"disableDefaultCNI": True}, certs)
    (node,) = ours["nodes"]
    assert node["extraMounts"] == [
        {"hostPath": str(certs), "containerPath": "/etc/containerd/certs.d", "readOnly": True}
    ]
    assert "containerdConfigPatches" not in ours  # our node image reads certs.d already
    published = cluster_config("kindest/node:v1.34.0", None, certs, patch_containerd=True)
    (patch,) = published["containerdConfigPatches"]
    assert 'config_path = "/etc/containerd/certs.d"' in patch


# -- logs through the API ----------------------------------------------------------------


def test_container_logs_asks_the_api_for_previous_logs(kind_bin: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.client.exceptions import ApiException

    asked: list[dict[str, Any]] = []

    class FakeCoreV1Api:
        def __init__(self, _client: object) -> None:
            pass

        def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
            asked.append({"list": (namespace, label_selector)})
            pods = [SimpleNamespace(metadata=SimpleNamespace(name=n)) for n in ("ctl-a", "ctl-b")]
            return SimpleNamespace(items=pods)

        def read_namespaced_pod_log(self, name: str, namespace: str, container: str, previous: bool) -> str:
            asked.append({"read": (name, namespace, container, previous)})
            if name == "ctl-b":
                raise ApiException(status=400, reason="Bad Request")
            return "I1127 proxy log line\n"

    monkeypatch.setattr("kubernetes.client.CoreV1Api", FakeCoreV1Api)
    monkeypatch.setattr(KindCluster, "api_client", lambda self: object())
    cluster = make_cluster(kind_bin)
    text = cluster.container_logs("kserve", "control-plane=kserve-controller-manager", "kube-rbac-proxy", previous=True)
    assert asked == [
        {"list": ("kserve", "control-plane=kserve-controller-manager")},
        {"read": ("ctl-a", "kserve", "kube-rbac-proxy", True)},
        {"read": ("ctl-b", "kserve", "kube-rbac-proxy", True)},
    ]
    assert "==> kserve/ctl-a [kube-rbac-proxy] <==\nI1127 proxy log line" in text
    assert "(no previous log: 400 Bad Request)" in text


# -- preflight and tools -----------------------------------------------------------------


def test_preflight_without_a_docker_engine_is_one_line_pointing_to_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real docker client (when there is one) pointed at an engine that is certainly absent.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker-engine.sock")
    with pytest.raises(EnvironmentMissing) as caught:
        KindProviderFactory(load_matrix()).preflight()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("docker: no ")
    assert "nox -s local" in message


def test_preflight_message_from_the_recorded_docker_info(docker_bin: StandIn) -> None:
    docker_bin.rules(
        [{"prefix": ["info"], "stderr": recorded("docker-info-no-daemon.stderr"), "stdout": "\n", "rc": 1}]
    )
    with pytest.raises(EnvironmentMissing) as caught:
        docker_preflight(str(docker_bin.path))
    assert str(caught.value) == (
        "docker: no Docker engine reachable (Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
        "Is the docker daemon running?); the kind tier needs one — run `nox -s local` for the dockerless tier"
    )
    assert docker_bin.calls() == [["info", "--format", "{{.ServerVersion}}"]]


def test_preflight_without_a_docker_client(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentMissing, match=r"no-docker-here: not found; .*nox -s local"):
        docker_preflight(str(tmp_path / "no-docker-here"))


def test_tools_come_from_the_cache_on_amd64_and_from_path_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("KSERVE_COMPAT_CACHE", raising=False)
    monkeypatch.delenv("KIND_DOWNLOAD_URL", raising=False)
    monkeypatch.delenv("KUBECTL_DOWNLOAD_URL", raising=False)
    amd64 = resolve_tools(machine="x86_64", which=lambda _tool: None)
    assert amd64.kind == tmp_path / "kserve-compat" / "bin" / "kind" / os.environ["KIND_VERSION"] / "kind"
    assert amd64.kubectl == tmp_path / "kserve-compat" / "bin" / "kubectl" / os.environ["KUBECTL_VERSION"] / "kubectl"
    arm64 = resolve_tools(machine="aarch64", which=lambda tool: f"/usr/local/bin/{tool}")
    assert (arm64.kind, arm64.kubectl) == (Path("/usr/local/bin/kind"), Path("/usr/local/bin/kubectl"))
    explicit = resolve_tools(Path("/opt/kind"), Path("/opt/kubectl"), machine="aarch64", which=lambda _tool: None)
    assert (explicit.kind, explicit.kubectl) == (Path("/opt/kind"), Path("/opt/kubectl"))
    with pytest.raises(EnvironmentMissing) as caught:
        resolve_tools(machine="aarch64", which=lambda _tool: None)
    assert "\n" not in str(caught.value)
    assert "pytest-kind downloads amd64 builds only (this host is arm64)" in str(caught.value)


# -- plan --------------------------------------------------------------------------------


def test_plan_names_the_cluster_node_image_and_steps_without_running_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("plan() must not run anything")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    matrix = load_matrix()
    node_image = matrix.k8s("1.34").node_image
    steps = KindProviderFactory(matrix).plan("kserve-v0.14.1--k8s-1.34", "1.34")
    text = "\n".join(steps)
    assert f"create kind cluster kcompat-v0-14-1-k8s-1-34: one control-plane node, node image {node_image}" in text
    assert f"kind {os.environ['KIND_VERSION']}" in text
    assert "kind load" not in text
    assert "the kubelet pulls every image through registry mirrors" in text
    assert steps[-1] == "delete kind cluster kcompat-v0-14-1-k8s-1-34 at the end"

    kept = KindProviderFactory(matrix, KindOptions(keep_cluster=True, reuse_cluster=True)).plan(
        "kserve-v0.14.1--k8s-1.34", "1.34"
    )
    assert any(step.startswith("reuse kind cluster kcompat-v0-14-1-k8s-1-34 if it exists") for step in kept)
    assert kept[-1] == "keep kind cluster kcompat-v0-14-1-k8s-1-34 at the end (--keep-cluster)"
    on_failure = KindProviderFactory(matrix, KindOptions(keep_on_failure=True)).plan("kserve-v0.14.1--k8s-1.34", "1.34")
    assert on_failure[-1].endswith("unless a cell failed (--keep-on-failure)")


def test_plan_of_an_unknown_kubernetes_version_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"--k8s 1\.99"):
        KindProviderFactory(load_matrix()).plan("kserve-v0.14.1--k8s-1.99", "1.99")


# -- pinning pytest-kind's tool versions -------------------------------------------------


def _versions_seen_by_pytest_kind(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("KIND_VERSION", "KUBECTL_VERSION")}
    environ.update(env)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


PRINT_VERSIONS = "import pytest_kind.cluster as c; print(c.KIND_VERSION, c.KUBECTL_VERSION)"


def test_importing_the_kind_tier_pins_versions_before_pytest_kind_reads_them() -> None:
    seen = _versions_seen_by_pytest_kind("import e2e.cluster.kind\n" + PRINT_VERSIONS)
    assert seen == f"{KIND_VERSION} {KUBECTL_VERSION}"


def test_pinning_after_pytest_kind_was_imported_still_takes_effect() -> None:
    # What happens under pytest: its pytest11 entry point imports pytest-kind before any conftest.
    code = (
        "import pytest_kind.cluster as c\n"
        "assert c.KIND_VERSION == 'v0.17.0'\n"
        "from e2e.cluster.kind import pin_tool_versions\n"
        "pin_tool_versions()\n"
        "import os; print(c.KIND_VERSION, c.KUBECTL_VERSION, os.environ['KIND_VERSION'])"
    )
    assert _versions_seen_by_pytest_kind(code) == f"{KIND_VERSION} {KUBECTL_VERSION} {KIND_VERSION}"


def test_versions_exported_by_the_user_win() -> None:
    seen = _versions_seen_by_pytest_kind("import e2e.cluster.kind\n" + PRINT_VERSIONS, KIND_VERSION="v0.33.0")
    assert seen == f"v0.33.0 {KUBECTL_VERSION}"


# -- the GitHub workflow -----------------------------------------------------------------


def _actionlint() -> Path:
    on_path = shutil.which("actionlint")
    if on_path:
        return Path(on_path)
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    target = home / "kserve-compat" / "bin" / "actionlint" / ACTIONLINT_VERSION
    binary = target / "actionlint"
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        unavailable("actionlint: not on PATH and no Go toolchain to build it")
    target.mkdir(parents=True, exist_ok=True)
    build = subprocess.run(
        ["go", "install", f"github.com/rhysd/actionlint/cmd/actionlint@{ACTIONLINT_VERSION}"],
        env={**os.environ, "GOBIN": str(target), "GOTOOLCHAIN": "local"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if build.returncode != 0 or not binary.exists():
        last = (build.stderr.strip().splitlines() or ["no output"])[-1]
        unavailable(f"actionlint: `go install` of {ACTIONLINT_VERSION} failed: {last}")
    return binary


@pytest.mark.slow
def test_workflow_passes_actionlint() -> None:
    result = subprocess.run(
        [str(_actionlint()), "-no-color", str(WORKFLOW)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_matches_the_vendored_github_workflow_schema() -> None:
    check = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    if check is None:
        unavailable("check-jsonschema: not installed (it is in the `lint` extra)")
    result = subprocess.run(
        [check, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_runs_one_job_per_group_and_a_summary() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs = workflow["jobs"]
    assert set(jobs) == {"plan", "cells", "summary"}
    assert jobs["cells"]["strategy"]["fail-fast"] is False
    assert jobs["cells"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert jobs["summary"]["if"] == "always()"
    cells_run = " ".join(step.get("run", "") for step in jobs["cells"]["steps"])
    assert 'nox -s e2e -- --cell "$CELLS" --reports-dir "reports/$GROUP"' in cells_run
    uploads = [step for step in jobs["cells"]["steps"] if str(step.get("uses", "")).startswith("actions/upload")]
    assert uploads and uploads[0]["if"] == "always()" and uploads[0]["with"]["path"] == "reports/"
    plan_run = " ".join(step.get("run", "") for step in jobs["plan"]["steps"])
    assert "nox -s matrix --" in plan_run and "--github" in plan_run and "GITHUB_OUTPUT" in plan_run
    summary_run = " ".join(step.get("run", "") for step in jobs["summary"]["steps"])
    assert "nox -s report -- reports/ --out summary/" in summary_run
    # PyYAML reads the bare key `on` as True.
    inputs = workflow[True]["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"kserve", "proxy", "k8s"}
    for job in jobs.values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"actions/[a-z-]+@v\d+", step["uses"]), step["uses"]


# -- the factory, end to end against stand-ins --------------------------------------------


@pytest.mark.parametrize("fail", [False, True])
def test_factory_creates_yields_and_deletes_unless_a_cell_failed(
    kind_bin: StandIn, docker_bin: StandIn, in_tmp: Path, no_node_wait: None, fail: bool
) -> None:
    docker_bin.rules([{"prefix": ["info"], "stdout": "29.1.3\n"}])
    kind_bin.rules(
        [
            {"prefix": ["get", "clusters"], "stderr": recorded("kind-get-clusters-none.stderr")},
            {"prefix": ["create", "cluster"], "effect": "kubeconfig"},
            {"prefix": ["delete", "cluster"]},
        ]
    )
    options = KindOptions(
        keep_on_failure=True, kind_bin=kind_bin.path, kubectl_bin=in_tmp / "kubectl", docker=str(docker_bin.path)
    )
    factory = KindProviderFactory(load_matrix(), options)

    class CellFailed(Exception):
        pass

    with contextlib.suppress(CellFailed), factory.cluster("kserve-v0.14.1--k8s-1.34", "1.34") as cluster:
        assert cluster.info.name == "kcompat-v0-14-1-k8s-1-34"
        assert cluster.info.provider == "kind"
        assert cluster.sync_workloads() == []
        if fail:
            raise CellFailed
    create = next(call for call in kind_bin.calls() if call[:2] == ["create", "cluster"])
    assert f"--image={load_matrix().k8s('1.34').node_image}" in create
    assert any(call[:1] == ["delete"] for call in kind_bin.calls()) is not fail


def test_factory_shorthands_match_the_harness_call() -> None:
    factory = KindProviderFactory(keep=True, keep_on_failure=True, reuse=True)
    assert factory.options == KindOptions(keep_cluster=True, keep_on_failure=True, reuse_cluster=True)
    assert factory.matrix.kubernetes == load_matrix().kubernetes


def test_tools_that_cannot_be_downloaded_are_built_from_their_go_modules(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, pytest-kind's download fails: kind (pinned) and kubectl (the local tier's
    version) come from the build cache instead of ending the cell with FileNotFoundError."""
    import requests

    from e2e import binaries

    built: list[tuple[str, str | None]] = []

    def ensure(component: str, version: str | None = None, *, build: bool = True) -> Path:
        built.append((component, version))
        path = in_tmp / "built" / component
        path.parent.mkdir(exist_ok=True)
        path.write_text("#!/bin/sh\n")
        return path

    def offline() -> None:
        raise requests.ConnectionError("Failed to resolve 'github.com'")

    monkeypatch.setattr(binaries, "ensure", ensure)
    cluster = make_cluster(StandIn(in_tmp / "kind"), kubectl=in_tmp / "missing" / "kubectl")
    monkeypatch.setattr(cluster._kind, "ensure_kind", offline)
    monkeypatch.setattr(cluster._kind, "ensure_kubectl", offline)
    cluster._ensure_tools()
    assert built == [("kind", KIND_VERSION), ("kubectl", binaries.KUBERNETES_VERSION)]
    assert cluster.commands.kind == in_tmp / "built" / "kind"
    assert Path(cluster._kind.kind_path) == in_tmp / "built" / "kind"
    assert Path(cluster._kind.kubectl_path) == in_tmp / "built" / "kubectl"


@pytest.mark.parametrize("keep", [True, False])
def test_the_mirrors_stop_with_the_run_even_when_the_cluster_is_kept(
    kind_bin: StandIn, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    kind_bin.rules([{"prefix": ["delete", "cluster"]}])
    cluster = make_cluster(kind_bin, KindOptions(keep_cluster=keep))
    stopped: list[bool] = []

    def stop() -> None:
        stopped.append(True)
        raise HarnessError("mirror of quay.io: would not stop")  # the cluster is still handled

    monkeypatch.setattr(cluster.mirrors, "stop", stop)
    with pytest.raises(HarnessError, match="would not stop"):
        cluster.delete()
    assert stopped == [True]
    deleted = [call for call in kind_bin.calls() if call[:2] == ["delete", "cluster"]]
    assert bool(deleted) is not keep
