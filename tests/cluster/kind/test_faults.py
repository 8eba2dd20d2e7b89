"""Faults on the real kind tier: Ctrl-C, a node killed mid-cell, no Docker engine.

Each test drives a real ``python -m pytest scenarios --provider kind --local-images`` of
the KServe v0.20.0 / Kubernetes 1.34 group (its cluster is kcompat-v0-20-0-k8s-1-34) on the
image set built by ``kserve-compat images``, then looks at what is left: kind clusters,
Docker containers, the run's temp and state directories, processes of its session.

The harness runs in its own session (``start_new_session``) with its own cwd (pytest-kind
keeps ``.pytest-kind/NAME`` there) and TMPDIR, so "left behind" is decidable: every process
whose session id is the harness's, every file under that cwd's ``.pytest-kind`` and TMPDIR.
Ctrl-C is SIGINT to the harness's process group, as a terminal sends it to its foreground
job (kind, kubectl and helm children get it too).

Skipped without a Docker engine or the image set (failed with ``CI=true``). Selected with
``-m kind_faults``; about 8 minutes on two cores (Ctrl-C: 7, 41 and 120 s; the killed node: 4.5-6 min,
as it installs the group twice; no engine: 2 s each).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers.paths import REPO
from helpers.release_files import session_release_files

from e2e.availability import unavailable
from e2e.cluster.kind import cluster_name, docker_preflight, parse_kind_clusters
from e2e.errors import HarnessError

pytestmark = [pytest.mark.kind_faults, pytest.mark.needs_docker, pytest.mark.slow]

KSERVE, K8S = "v0.20.0", "1.34"
GROUP_ID = f"kserve-{KSERVE}--k8s-{K8S}"
CLUSTER = cluster_name(GROUP_ID)  # kcompat-v0-20-0-k8s-1-34
NODE_CONTAINER = f"{CLUSTER}-control-plane"
# A fresh-install cell of this group takes about 2 minutes here (4 with another cluster running).
RUN_TIMEOUT_S = 600.0
# What the harness's live log (log_cli at INFO) prints at each stage the signal aims at.
CREATING = re.compile(r"Creating cluster " + re.escape(CLUSTER))
INSTALLING = re.compile(r"waiting for \d+ CRDs to be Established, e\.g\. certificaterequests\.cert-manager\.io")
IN_CELL = re.compile(r"step [3-8]/\d+ \w+")
# A step that holds a kubectl port-forward (a child process the harness must stop).
FORWARDING = re.compile(r"kubectl on 127\.0\.0\.1:\d+ behind the relay")


@dataclass
class KindTools:
    kind: Path


@pytest.fixture(scope="module")
def kind_tools() -> KindTools:
    """The kind binary and node image of the local image set, and no cluster of this group."""
    try:
        docker_preflight()
    except HarnessError as exc:
        unavailable(str(exc))
    from e2e import binaries
    from e2e.imageset.offline import LocalImageSet

    try:
        LocalImageSet().node_image(K8S)
        kind = binaries.ensure("kind", build=False)
        binaries.ensure("kubectl", binaries.KUBERNETES_VERSION, build=False)
    except HarnessError as exc:
        unavailable(f"the local image set is incomplete: {exc}")
    if CLUSTER in kind_clusters(kind):
        pytest.fail(f"kind cluster {CLUSTER} exists before the test: another run uses it (or left it)")
    return KindTools(kind=kind)


def kind_clusters(kind: Path) -> list[str]:
    done = subprocess.run([str(kind), "get", "clusters"], capture_output=True, text=True, timeout=60, check=True)
    return parse_kind_clusters(done.stdout)


def containers_of_cluster() -> list[str]:
    done = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}", "--filter", f"name={CLUSTER}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [name for name in done.stdout.split() if name.startswith(CLUSTER)]


def processes_in_session(session_id: int) -> list[str]:
    """``pid command`` of every live process whose session is ``session_id``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session_id:
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
        if state != "Z":  # a zombie is already dead; its parent (gone too) would have reaped it
            found.append(f"{entry.name} {command}")
    return found


@dataclass
class HarnessRun:
    """A ``pytest scenarios`` of the v0.20.0 group, its live log read line by line."""

    workdir: Path
    process: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _reader: threading.Thread | None = None

    @classmethod
    def start(cls, workdir: Path, *args: str) -> HarnessRun:
        tmp = workdir / "tmp"
        tmp.mkdir(parents=True)
        env = {
            **os.environ,
            "KSERVE_COMPAT_MANIFEST_DIR": str(session_release_files().offline_directory()),
            "TMPDIR": str(tmp),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("CI", None)  # the harness's own behaviour, not the test suite's CI rule
        argv = [
            sys.executable,
            "-m",
            "pytest",
            str(REPO / "scenarios"),
            "--provider",
            "kind",
            "--local-images",
            "--kserve",
            KSERVE,
            "--k8s",
            K8S,
            "-p",
            "no:cacheprovider",
            "--reports-dir",
            str(workdir / "reports"),
            "-o",
            "log_cli=true",
            "--log-cli-level=INFO",
            *args,
        ]
        process = subprocess.Popen(
            argv,
            cwd=workdir,  # pytest-kind's .pytest-kind/NAME goes here
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group and session, like a terminal's job
        )
        run = cls(workdir, process)
        run._reader = threading.Thread(target=run._read, daemon=True)
        run._reader.start()
        return run

    def _read(self) -> None:
        assert self.process.stdout is not None
        with (self.workdir / "harness.log").open("w") as log:  # the whole live log, for a look after a failure
            for line in self.process.stdout:
                log.write(f"{time.monotonic():.1f} {line}")
                log.flush()
                self._record(line)
        with self._changed:
            self._changed.notify_all()

    def _record(self, line: str) -> None:
        with self._changed:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(line for _, line in self.lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = RUN_TIMEOUT_S) -> str:
        """The first line matching ``pattern``; fails when the run ends or times out first."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for _, line in self.lines[seen:]:
                    if pattern.search(line):
                        return line
                seen = len(self.lines)
                if self.process.poll() is not None and not (self._reader and self._reader.is_alive()):
                    pytest.fail(f"the run ended before /{pattern.pattern}/:\n{self.output_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no /{pattern.pattern}/ in {timeout:.0f}s:\n{self.output_tail()}")
                self._changed.wait(timeout=min(left, 1.0))

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the run's process group."""
        os.killpg(self.process.pid, signal.SIGINT)

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not end in {timeout:.0f}s:\n{self.output_tail()}")
        if self._reader is not None:
            self._reader.join(timeout=10)
        return code

    def kill_leftovers(self) -> None:
        """After a failed test: end what the run left, so later tests start clean."""
        with_session = processes_in_session(self.process.pid)
        if self.process.poll() is None or with_session:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def output_tail(self, lines: int = 60) -> str:
        with self._changed:
            return "\n".join(line for _, line in self.lines[-lines:])

    def results(self) -> dict[str, dict[str, object]]:
        """The saved result JSON of each cell, by cell id."""
        found: dict[str, dict[str, object]] = {}
        for path in sorted((self.workdir / "reports" / "cells").glob("*.json")):
            record = json.loads(path.read_text())
            found[str(record["cell_id"])] = record
        return found


@pytest.fixture
def harness_runs(tmp_path: Path, kind_tools: KindTools) -> Iterator[list[HarnessRun]]:
    """Runs started by a test; whatever a failed test left is removed afterwards."""
    runs: list[HarnessRun] = []
    yield runs
    for run in runs:
        run.kill_leftovers()
    if CLUSTER in kind_clusters(kind_tools.kind):
        subprocess.run([str(kind_tools.kind), "delete", "cluster", "--name", CLUSTER], timeout=120, check=False)


def assert_nothing_left(run: HarnessRun, kind: Path) -> None:
    """No cluster, node container, state or temp directory, nor process of the run."""
    assert CLUSTER not in kind_clusters(kind), run.output_tail()
    assert containers_of_cluster() == [], run.output_tail()
    assert processes_in_session(run.process.pid) == [], run.output_tail()
    state = run.workdir / ".pytest-kind"
    left = sorted(str(p.relative_to(run.workdir)) for p in state.rglob("*")) if state.exists() else []
    assert left == [], "pytest-kind state left behind"
    # Not counted: the kubernetes client's discovery cache (DynamicClient: TMPDIR/osrcp-HASH.json,
    # one per API server address); a cache of the library, not a temp directory of the run.
    left = sorted(p.name for p in (run.workdir / "tmp").iterdir() if not p.name.startswith("osrcp-"))
    assert left == [], "temp files left behind"


def wait_for_node_container(run: HarnessRun, timeout: float = 60.0) -> None:
    """Until ``kind create cluster`` has started the node container (it is mid-create)."""
    deadline = time.monotonic() + timeout
    while not containers_of_cluster():
        if time.monotonic() > deadline or run.process.poll() is not None:
            pytest.fail(f"no container {NODE_CONTAINER} in {timeout:.0f}s:\n{run.output_tail()}")
        time.sleep(0.2)


def interrupted_at(
    stage: re.Pattern[str], tmp_path: Path, kind: Path, runs: list[HarnessRun], *, mid_create: bool = False
) -> tuple[float, float]:
    """Start a fresh-install run, Ctrl-C it when ``stage`` shows; (seconds until then,
    seconds from the signal to the end of the run)."""
    started = time.monotonic()
    run = HarnessRun.start(tmp_path, "--proxy", "quay-v0.22.1", "-k", "fresh")
    runs.append(run)
    run.wait_for(stage)
    if mid_create:
        wait_for_node_container(run)
    signalled = time.monotonic()
    run.interrupt()
    code = run.wait()
    ended = time.monotonic()
    print(f"\nCtrl-C at /{stage.pattern}/ after {signalled - started:.1f}s; run ended {ended - signalled:.1f}s later")
    assert code != 0, run.output_tail()  # pytest: 2 (interrupted)
    assert "KeyboardInterrupt" in run.output, run.output_tail()
    assert_nothing_left(run, kind)
    return signalled - started, ended - signalled


# -- Ctrl-C --------------------------------------------------------------------------------


def test_ctrl_c_while_the_cluster_is_created_leaves_nothing(
    tmp_path: Path, kind_tools: KindTools, harness_runs: list[HarnessRun]
) -> None:
    _, cleanup = interrupted_at(CREATING, tmp_path, kind_tools.kind, harness_runs, mid_create=True)
    assert cleanup < 60


def test_ctrl_c_during_the_install_leaves_nothing(
    tmp_path: Path, kind_tools: KindTools, harness_runs: list[HarnessRun]
) -> None:
    _, cleanup = interrupted_at(INSTALLING, tmp_path, kind_tools.kind, harness_runs)
    assert cleanup < 60


def test_ctrl_c_during_a_cell_leaves_nothing(
    tmp_path: Path, kind_tools: KindTools, harness_runs: list[HarnessRun]
) -> None:
    _, cleanup = interrupted_at(FORWARDING, tmp_path, kind_tools.kind, harness_runs)
    assert cleanup < 60


# -- the node container killed mid-cell -------------------------------------------------


def test_node_killed_mid_cell_errors_that_cell_and_the_next_runs_on_a_new_cluster(
    tmp_path: Path, kind_tools: KindTools, harness_runs: list[HarnessRun]
) -> None:
    started = time.monotonic()
    run = HarnessRun.start(tmp_path, "--proxy", "quay-v0.22.1,quay-v0.18.0", "-k", "fresh")
    harness_runs.append(run)
    step = run.wait_for(IN_CELL)
    killed_cell = re.search(r"(kserve-\S+?):? step", step)
    assert killed_cell is not None, step
    subprocess.run(["docker", "kill", NODE_CONTAINER], capture_output=True, timeout=60, check=True)
    killed = time.monotonic()
    code = run.wait()
    ended = time.monotonic()
    print(f"\nnode killed after {killed - started:.1f}s; run ended {ended - killed:.1f}s later")

    results = run.results()
    assert len(results) == 2, run.output_tail()
    first = results[killed_cell.group(1)]
    assert first["verdict"] == "error", first
    assert first["reason"], first
    replaced = [note for note in first["notes"] if "cluster replaced after this cell" in note]  # type: ignore[attr-defined]
    assert replaced == [
        f"cluster replaced after this cell: kind cluster {CLUSTER}: node container {NODE_CONTAINER} exited "
        f"({replaced[0].split('exited (', 1)[1]}"
    ], first
    assert "Exited (137)" in replaced[0]  # docker kill: SIGKILL
    (second,) = [r for cell_id, r in results.items() if cell_id != killed_cell.group(1)]
    assert second["verdict"] in ("pass", "fail"), second  # its verdict, whatever it is: not an error
    # The live log (pytest repeats a failed test's log in its summary: read up to the verdicts).
    lines = [line for _, line in run.lines]
    error_at = next(i for i, line in enumerate(lines) if f"{killed_cell.group(1)}: verdict error" in line)
    second_at = next(i for i, line in enumerate(lines) if f"{second['cell_id']}: verdict " in line)
    assert any(CREATING.search(line) for line in lines[error_at:second_at]), run.output_tail()
    assert code == 1, run.output_tail()  # the first cell's error fails the run
    assert "cluster replaced" not in " ".join(map(str, second["notes"]))  # type: ignore[call-overload]
    assert_nothing_left(run, kind_tools.kind)


# -- no Docker engine -------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["absent", "stopped"])
def test_without_a_docker_engine_the_kind_tier_on_local_images_stops_with_one_line_exit_3(
    tmp_path: Path, engine: str
) -> None:
    """No socket at all, or a stale one that refuses (dockerd stopped): no run, one line."""
    sock = tmp_path / "docker.sock"
    if engine == "stopped":
        import socket

        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(sock))  # closed without listen(): connecting is refused
    env = {
        **os.environ,
        "DOCKER_HOST": f"unix://{sock}",
        "KSERVE_COMPAT_MANIFEST_DIR": str(session_release_files().offline_directory()),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("CI", None)
    argv = [sys.executable, "-m", "pytest", str(REPO / "scenarios"), "--provider", "kind", "--local-images"]
    argv += ["--kserve", KSERVE, "--k8s", K8S, "--proxy", "quay-v0.22.1", "-p", "no:cacheprovider"]
    argv += ["--reports-dir", str(tmp_path / "reports")]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "Traceback" not in output
    # pytest.exit's line: "! _pytest.outcomes.Exit: kserve-compat: docker: no Docker engine reachable (...)"
    stops = [line for line in output.splitlines() if "kserve-compat: docker: no Docker engine reachable" in line]
    assert len(stops) == 1, output
    assert "nox -s local" in stops[0]
    assert not (tmp_path / ".pytest-kind").exists()
