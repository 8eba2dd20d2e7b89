"""The local control plane: real etcd and kube-apiserver (and controllers) as processes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import REPO
from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch

from e2e.availability import in_ci, unavailable
from e2e.errors import HarnessError
from e2e.local.controlplane import (
    ControlPlane,
    ControlPlaneBinaries,
    binary_version,
    loopback_apiserver_args,
    resolve_binaries,
)
from e2e.local.processes import ManagedProcess, ProcessExitedEarly, running_processes, stop_together, wait_ready

pytestmark = pytest.mark.needs_binaries


def _binaries(with_controllers: bool = False) -> ControlPlaneBinaries:
    try:
        # Locally only what is already built; CI builds what is missing.
        return resolve_binaries(with_controllers=with_controllers, build=in_ci())
    except HarnessError as error:
        unavailable(str(error))


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane(_binaries()) as plane:
        yield plane


def _gone(pid: int) -> bool:
    """No such process, or only a zombie left for its parent to reap."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


# -- processes ------------------------------------------------------------------------


def test_a_process_that_dies_while_starting_reports_exit_code_and_output(tmp_path: Path) -> None:
    script = "import sys; print('listening failed: port in use', file=sys.stderr); sys.exit(3)"
    process = ManagedProcess("failing", [sys.executable, "-c", script], log_path=tmp_path / "failing.log")
    process.start()
    with pytest.raises(ProcessExitedEarly) as raised:
        wait_ready("failing to serve", lambda: (False, "nothing yet"), watched=[process], timeout=30)
    assert raised.value.returncode == 3
    assert any("port in use" in line for line in raised.value.last_lines)
    assert "\n" not in str(raised.value)
    process.stop()
    assert process not in running_processes()


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    # The parent ignores SIGTERM and forks a child: stop() must still end both.
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    process = ManagedProcess("stubborn", [sys.executable, "-c", script], log_path=tmp_path / "stubborn.log")
    process.start()
    wait_ready(
        "the child's pid",
        lambda: (process.output().strip().splitlines()[-1].isdigit(), process.tail(2)),
        watched=[process],
        timeout=30,
    )
    child_pid = int(process.output().strip().splitlines()[-1])
    parent_pid = process.pid
    assert parent_pid is not None
    assert process.stop(grace=1) == -signal.SIGKILL
    assert _gone(parent_pid)
    wait_ready("the forked child to end", lambda: (_gone(child_pid), "still there"), watched=[], timeout=10)
    assert process not in running_processes()


def _waits_for_partner_on_sigterm(tmp_path: Path, me: str, partner: str) -> ManagedProcess:
    """A process that, on SIGTERM, notes it and exits 0 only once ``partner`` was signalled
    too (exit 1 after 10 s); it counts the SIGTERMs it got in ``<me>.count``."""
    script = (
        "import os, signal, sys, time\n"
        f"me, partner = {str(tmp_path / me)!r}, {str(tmp_path / partner)!r}\n"
        "count = 0\n"
        "def on_term(*_):\n"
        "    global count\n"
        "    count += 1\n"
        "    open(me + '.count', 'w').write(str(count))\n"
        "    if count > 1: return\n"
        "    open(me, 'w').close()\n"
        "    deadline = time.monotonic() + 10\n"
        "    while not os.path.exists(partner):\n"
        "        if time.monotonic() > deadline: sys.exit(1)\n"
        "        time.sleep(0.01)\n"
        "    time.sleep(0.2)  # a second SIGTERM would land now\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    process = ManagedProcess(me, [sys.executable, "-c", script], log_path=tmp_path / f"{me}.log")
    process.start()
    wait_ready(f"{me} to start", lambda: ("ready" in process.output(), process.tail(2)), watched=[process], timeout=30)
    return process


def test_stopping_together_signals_every_process_before_waiting_for_any(tmp_path: Path) -> None:
    # Each waits for the other's SIGTERM before it exits: stopping one after the other
    # would leave the first waiting (killed after stop's grace), so both exit 0 only when
    # every process was signalled before any was waited for.
    first = _waits_for_partner_on_sigterm(tmp_path, "first", "second")
    second = _waits_for_partner_on_sigterm(tmp_path, "second", "first")
    stop_together([first, second])
    assert (first.exit_code, second.exit_code) == (0, 0)
    # terminate() then stop() signals once: a second SIGTERM makes Go programs exit at once.
    assert [(tmp_path / f"{name}.count").read_text() for name in ("first", "second")] == ["1", "1"]
    assert first not in running_processes() and second not in running_processes()


def test_a_process_stopped_alone_is_not_waited_for_by_its_partner(tmp_path: Path) -> None:
    # The counter-test of the one above: stopped one at a time, the first never sees its
    # partner signalled and is killed after the grace period.
    first = _waits_for_partner_on_sigterm(tmp_path, "first", "second")
    second = _waits_for_partner_on_sigterm(tmp_path, "second", "first")
    assert first.stop(grace=1) == -signal.SIGKILL
    assert second.stop() == 0


def test_ctrl_c_inside_popen_is_delivered_once_the_process_is_tracked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child exists but Popen has not returned yet: an interrupt here used to orphan it.
    real_popen = subprocess.Popen

    def popen_then_ctrl_c(*args: Any, **kwargs: Any) -> Any:
        child = real_popen(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return child

    monkeypatch.setattr(subprocess, "Popen", popen_then_ctrl_c)
    process = ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "s")
    with pytest.raises(KeyboardInterrupt):
        process.start()
    assert process in running_processes() and process.alive
    process.stop()
    assert not process.alive
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_output_is_kept_verbatim_and_tail_is_redacted(tmp_path: Path) -> None:
    from e2e import secrets

    token = secrets.register("tok-" + os.urandom(16).hex())
    process = ManagedProcess(
        "echo", [sys.executable, "-c", f"print('Authorization: Bearer {token}')"], log_path=tmp_path / "echo.log"
    )
    process.start()
    wait_ready("echo to exit", lambda: (not process.alive, "running"), watched=[], timeout=30)
    assert token in process.output()
    assert token not in process.tail(5)
    process.stop()


# -- the API server -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "args"),
    [
        ("v1.34.4", []),
        ("v1.36.3", []),
        ("v1.37.2", ["--endpoint-reconciler-type=none"]),
        ("v1.38.0", ["--endpoint-reconciler-type=none"]),
    ],
)
def test_from_1_37_the_loopback_api_server_runs_without_an_endpoint_reconciler(version: str, args: list[str]) -> None:
    # v1.37.2 exits at start otherwise: "cannot use public IP 127.0.0.1 with endpoint
    # reconciler: ... may not be in the loopback range" (seen on the local tier's 1.37 run).
    assert loopback_apiserver_args(version) == args


def test_apiserver_answers_version_with_the_built_version(control_plane: ControlPlane) -> None:
    built = binary_version(control_plane.binaries.kube_apiserver).split()[-1]  # "Kubernetes v1.34.4"
    with control_plane.api_client() as api:
        served = k8s_client.VersionApi(api).get_code().git_version
    assert served == built
    assert control_plane.kubernetes_version == built


def test_admin_kubeconfig_and_keys_are_private(control_plane: ControlPlane) -> None:
    private = [control_plane.kubeconfig, control_plane.pki.ca.key, control_plane.pki.admin.key]
    private.append(control_plane.pki.service_account_private_key)
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def _environment_of(pid: int | None) -> dict[str, str]:
    assert pid is not None
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def test_the_apiserver_collects_garbage_less_often_unless_the_user_chose(control_plane: ControlPlane) -> None:
    # The saving is measured by `nox -s bench`; here: the setting reaches the process.
    expected = os.environ.get("GOGC", "400")
    assert _environment_of(control_plane.processes["kube-apiserver"].pid)["GOGC"] == expected
    assert _environment_of(control_plane.processes["etcd"].pid).get("GOGC") == os.environ.get("GOGC")


def test_apiserver_restart_keeps_the_data(control_plane: ControlPlane) -> None:
    with control_plane.api_client() as api:
        k8s_client.CoreV1Api(api).create_namespaced_config_map(
            "default",
            k8s_client.V1ConfigMap(metadata=k8s_client.V1ObjectMeta(name="survives-restart"), data={"k": "v"}),
        )
    apiserver = control_plane.processes["kube-apiserver"]
    assert apiserver.pid is not None
    os.kill(apiserver.pid, signal.SIGKILL)  # as if it crashed mid-run
    control_plane.restart_apiserver()
    assert control_plane.processes["kube-apiserver"].alive
    assert _environment_of(control_plane.processes["kube-apiserver"].pid)["GOGC"] == os.environ.get("GOGC", "400")
    with control_plane.api_client() as api:
        config_map = k8s_client.CoreV1Api(api).read_namespaced_config_map("survives-restart", "default")
    assert config_map.data == {"k": "v"}


def test_teardown_leaves_no_process_and_no_directory_when_the_body_raises() -> None:
    binaries = _binaries()
    pids: list[int] = []
    workdir: Path | None = None
    with pytest.raises(RuntimeError, match="test body failed"), ControlPlane(binaries) as plane:
        workdir = plane.workdir
        pids = [p.pid for p in plane.processes.values() if p.pid is not None]
        raise RuntimeError("test body failed")
    assert workdir is not None and not workdir.exists()
    assert len(pids) == 2
    assert all(_gone(pid) for pid in pids)
    assert not any(p.pid in pids for p in running_processes())


def test_keep_leaves_the_directory(tmp_path: Path) -> None:
    import shutil

    with ControlPlane(_binaries(), keep=True) as plane:
        workdir = plane.workdir
    assert workdir is not None and (workdir / "logs" / "kube-apiserver.log").exists()
    shutil.rmtree(workdir)


# -- controllers + kwok ---------------------------------------------------------------


@pytest.mark.slow
def test_with_controllers_a_deployment_becomes_available() -> None:
    binaries = _binaries(with_controllers=True)
    labels = {"app": "pause"}
    deployment = k8s_client.V1Deployment(
        metadata=k8s_client.V1ObjectMeta(name="pause"),
        spec=k8s_client.V1DeploymentSpec(
            replicas=2,
            selector=k8s_client.V1LabelSelector(match_labels=labels),
            template=k8s_client.V1PodTemplateSpec(
                metadata=k8s_client.V1ObjectMeta(labels=labels),
                spec=k8s_client.V1PodSpec(
                    containers=[k8s_client.V1Container(name="pause", image="registry.k8s.io/pause:3.10")]
                ),
            ),
        ),
    )
    with ControlPlane(binaries, with_controllers=True) as plane, plane.api_client() as api:
        apps = k8s_client.AppsV1Api(api)
        # The namespace's "default" ServiceAccount comes from the controller manager.
        core = k8s_client.CoreV1Api(api)
        wait_ready(
            "ServiceAccount default/default",
            lambda: (
                any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account("default").items),
                "no default ServiceAccount yet",
            ),
            watched=list(plane.processes.values()),
            timeout=60,
        )
        apps.create_namespaced_deployment("default", deployment)
        last_status = "never seen"
        available = False
        deadline = time.monotonic() + 120
        while not available and time.monotonic() < deadline:
            stream = k8s_watch.Watch().stream(
                apps.list_namespaced_deployment, "default", field_selector="metadata.name=pause", timeout_seconds=30
            )
            for event in stream:
                status = event["object"].status
                conditions = {c.type: c.status for c in (status.conditions or [])}
                last_status = f"available={status.available_replicas} conditions={conditions}"
                if conditions.get("Available") == "True" and status.available_replicas == 2:
                    available = True
                    break
        assert available, f"Deployment default/pause never became Available; last saw {last_status}"
        pods = k8s_client.CoreV1Api(api).list_namespaced_pod("default", label_selector="app=pause").items
        assert {pod.spec.node_name for pod in pods} == {"kwok-node-0"}
        assert all(pod.status.phase == "Running" for pod in pods)


_INTERRUPTED_RUN = """
import json, sys, time
from pathlib import Path
from e2e.local.controlplane import ControlPlane, ControlPlaneBinaries
binaries = ControlPlaneBinaries(etcd=Path(sys.argv[1]), kube_apiserver=Path(sys.argv[2]))
with ControlPlane(binaries) as plane:
    pids = [p.pid for p in plane.processes.values()]
    print(json.dumps({"pids": pids, "workdir": str(plane.workdir)}), flush=True)
    time.sleep(300)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_run_stops_its_processes_and_removes_its_directory(signum: int, tmp_path: Path) -> None:
    import json

    binaries = _binaries()
    repo_root = REPO
    runner = ManagedProcess(
        "interrupted-run",
        [sys.executable, "-c", _INTERRUPTED_RUN, binaries.etcd, binaries.kube_apiserver],
        log_path=tmp_path / "run.log",
        env={"PYTHONPATH": str(repo_root)},
    )
    runner.start()

    def started() -> tuple[bool, str]:
        lines = [line for line in runner.output().splitlines() if line.startswith("{")]
        return bool(lines), runner.tail(3)

    wait_ready("the control plane in the child run", started, watched=[runner], timeout=90)
    report = json.loads([line for line in runner.output().splitlines() if line.startswith("{")][-1])
    assert runner.pid is not None
    os.kill(runner.pid, signum)  # the Python process only, as a CI runner or Ctrl-C would
    wait_ready("the run to exit", lambda: (not runner.alive, runner.tail(3)), watched=[], timeout=60)
    runner.stop()
    assert all(_gone(pid) for pid in report["pids"])
    assert not Path(report["workdir"]).exists()
