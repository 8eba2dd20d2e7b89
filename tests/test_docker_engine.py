""".ci/docker-engine and its runtime, tested without root or a Docker engine.

The runtime (.ci/runc-strip-sys-resource) runs for real in front of a stand-in ``runc`` that
records its argv and the spec it was handed. The script is sourced (which runs nothing) and
its ``main`` driven against a stand-in ``docker`` whose privileged containers fail with
runc's capability error until the runtime is registered and dockerd restarted; the steps
that need root (apt-get, starting dockerd) are replaced by recorders.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import REPO, TEST_DATA

SCRIPT = REPO / ".ci" / "docker-engine"
RUNTIME = REPO / ".ci" / "runc-strip-sys-resource"
CAPS_ERROR = (TEST_DATA / "kind" / "docker-run-privileged-no-caps.stderr").read_text()

SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")
# What docker asks for a privileged container, CAP_SYS_RESOURCE among them.
PRIVILEGED_CAPS = ["CAP_CHOWN", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_SYSLOG"]


def process_spec() -> dict[str, Any]:
    return {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["sleep", "60"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "capabilities": {name: list(PRIVILEGED_CAPS) for name in SETS},
        "noNewPrivileges": False,
    }


def bundle_config() -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2-dev",
        "process": process_spec(),
        "root": {"path": "/var/lib/docker/overlay2/x/merged"},
        "hostname": "probe",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"resources": {"devices": [{"allow": True, "access": "rwm"}]}, "maskedPaths": []},
    }


def without_sys_resource(spec: dict[str, Any], process_only: bool) -> dict[str, Any]:
    expected = copy.deepcopy(spec)
    process = expected if process_only else expected["process"]
    for name in SETS:
        process["capabilities"][name] = [c for c in PRIVILEGED_CAPS if c != "CAP_SYS_RESOURCE"]
    return expected


# -- the runtime -------------------------------------------------------------------------

_FAKE_RUNC = """\
#!{python}
import json, os, sys
with open(os.environ["FAKE_RUNC_LOG"], "a") as log:
    log.write(json.dumps({{"argv0": sys.argv[0], "args": sys.argv[1:]}}) + "\\n")
sys.exit(int(os.environ.get("FAKE_RUNC_RC", "0")))
"""


class Runtime:
    """The runtime with a stand-in runc first on PATH."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.runc = self.bin / "runc"
        self.runc.write_text(_FAKE_RUNC.format(python=sys.executable))
        self.runc.chmod(0o755)
        self.log = tmp_path / "runc.log"

    def __call__(self, *args: str, cwd: Path | None = None, rc: int = 0) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "FAKE_RUNC_LOG": str(self.log),
            "FAKE_RUNC_RC": str(rc),
        }
        env.pop("KSERVE_COMPAT_RUNC", None)
        return subprocess.run(
            [sys.executable, str(RUNTIME), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
        )

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    return Runtime(tmp_path)


def write_json(path: Path, data: dict[str, Any], mode: int = 0o644) -> Path:
    path.write_text(json.dumps(data, indent=1))
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    "bundle_args",
    [
        lambda b: ["--bundle", str(b)],
        lambda b: ["-b", str(b)],
        lambda b: [f"--bundle={b}"],
        lambda b: [],  # runc's default bundle: the current directory
    ],
    ids=["--bundle", "-b", "--bundle=", "cwd"],
)
def test_create_strips_sys_resource_from_the_bundle_config_and_passes_argv_through(
    runtime: Runtime, tmp_path: Path, bundle_args: Any
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    config = write_json(bundle / "config.json", bundle_config(), mode=0o600)
    # containerd's shim: global options, then create with its own options, then the id.
    args = [
        "--root", "/var/run/docker/runtime-runc/moby", "--log", str(bundle / "log.json"), "--log-format", "json",
        "create", *bundle_args(bundle), "--pid-file", str(bundle / "init.pid"), "--console-socket", "/tmp/c.sock",
        "probe-id",
    ]  # fmt: skip
    done = runtime(*args, cwd=bundle)
    assert done.returncode == 0, done.stderr
    assert runtime.calls() == [{"argv0": str(runtime.runc), "args": args}]
    assert json.loads(config.read_text()) == without_sys_resource(bundle_config(), process_only=False)
    assert config.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in bundle.iterdir()) == ["config.json"]  # no temporary file left


@pytest.mark.parametrize(
    "process_args",
    [lambda p: ["--process", str(p)], lambda p: ["-p", str(p)], lambda p: [f"--process={p}"]],
    ids=["--process", "-p", "--process="],
)
def test_exec_strips_sys_resource_from_the_process_json(runtime: Runtime, tmp_path: Path, process_args: Any) -> None:
    process = write_json(tmp_path / "runc-process123", process_spec())
    args = ["--root", "/r", "exec", "--detach", *process_args(process), "--pid-file", "/r/p.pid", "probe-id"]
    done = runtime(*args)
    assert done.returncode == 0, done.stderr
    assert runtime.calls() == [{"argv0": str(runtime.runc), "args": args}]
    assert json.loads(process.read_text()) == without_sys_resource(process_spec(), process_only=True)


@pytest.mark.parametrize(
    "args",
    [
        ["--root", "/r", "start", "probe-id"],
        ["--root", "/r", "delete", "--force", "probe-id"],
        ["--root", "/r", "state", "probe-id"],
        ["--version"],
        # what follows the container id is the command, never an option of exec
        ["exec", "--tty", "probe-id", "ls", "-p", "SPEC"],
    ],
)
def test_other_commands_pass_through_untouched(runtime: Runtime, tmp_path: Path, args: list[str]) -> None:
    spec = write_json(tmp_path / "config.json", bundle_config())
    before = spec.read_bytes()
    args = [str(spec) if arg == "SPEC" else arg for arg in args]
    done = runtime(*args, cwd=tmp_path, rc=3)
    assert done.returncode == 3  # runc's own exit status
    assert done.stderr == ""
    assert runtime.calls() == [{"argv0": str(runtime.runc), "args": args}]
    assert spec.read_bytes() == before


def test_a_spec_without_the_capability_is_not_rewritten(runtime: Runtime, tmp_path: Path) -> None:
    unprivileged = bundle_config()
    unprivileged["process"]["capabilities"] = {name: ["CAP_CHOWN"] for name in SETS}
    config = write_json(tmp_path / "config.json", unprivileged)
    before = config.read_bytes()
    assert runtime("create", "--bundle", str(tmp_path), "id").returncode == 0
    assert config.read_bytes() == before


def test_an_unreadable_spec_is_left_to_runc_to_report(runtime: Runtime, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text("{not json")
    done = runtime("create", "--bundle", str(tmp_path), "id", rc=1)
    assert done.returncode == 1
    assert runtime.calls() == [{"argv0": str(runtime.runc), "args": ["create", "--bundle", str(tmp_path), "id"]}]
    assert config.read_text() == "{not json"
    assert f"{config}: left unchanged" in done.stderr


# -- the script --------------------------------------------------------------------------

# A docker that answers like an engine whose privileged containers fail with runc's
# capability error until daemon.json names the runtime AND dockerd was restarted.
_FAKE_DOCKER = """\
#!/usr/bin/env bash
echo "$*" >> "$FAKE/docker.log"
case "$1" in
  version) echo 20.10.24 ;;
  info) echo "$(cat "$FAKE/default-runtime" 2>/dev/null || echo runc)" ;;
  image) exit 0 ;;
  rm) exit 0 ;;
  run|exec)
    if [ "$FAKE_PROBE" = other ]; then
      echo "docker: Error response from daemon: OCI runtime create failed: something else." >&2; exit 125
    fi
    if [ "$FAKE_PROBE" = caps ] || [ ! -f "$FAKE/default-runtime" ]; then cat "$FAKE/caps.stderr" >&2; exit 125; fi ;;
esac
"""


class Engine:
    """The script's main() against the stand-in docker, with root-only steps recorded."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "fake"
        (self.dir / "bin").mkdir(parents=True)
        for name, body in (("docker", _FAKE_DOCKER), ("dockerd", "#!/bin/sh\nexit 99\n")):
            tool = self.dir / "bin" / name
            tool.write_text(body)
            tool.chmod(0o755)
        (self.dir / "caps.stderr").write_text(CAPS_ERROR)
        self.daemon_json = tmp_path / "etc" / "docker" / "daemon.json"
        self.runtime_path = tmp_path / "lib" / "runc-strip-sys-resource"
        self.steps = self.dir / "steps.log"

    def run(self, probe: str = "", then: str = "main") -> subprocess.CompletedProcess[str]:
        stubs = f"""
            source {shlex.quote(str(SCRIPT))}
            daemon_json={shlex.quote(str(self.daemon_json))}
            runtime_path={shlex.quote(str(self.runtime_path))}
            require_root() {{ :; }}
            apt_install() {{ echo "apt_install $*" >> "$STEPS"; }}
            start_dockerd() {{ echo start_dockerd >> "$STEPS"; }}
            restart_dockerd() {{
              echo restart_dockerd >> "$STEPS"
              runtime_registered && echo {shlex.quote("kserve-compat-runc")} > "$FAKE/default-runtime"
              return 0
            }}
            {then}
        """
        env = {
            **os.environ,
            "PATH": f"{self.dir / 'bin'}:{os.environ['PATH']}",
            "FAKE": str(self.dir),
            "FAKE_PROBE": probe,
            "STEPS": str(self.steps),
        }
        return subprocess.run(["bash", "-c", stubs], env=env, capture_output=True, text=True, check=False)

    def step_log(self) -> list[str]:
        return self.steps.read_text().splitlines() if self.steps.exists() else []

    def docker_log(self) -> list[str]:
        return (self.dir / "docker.log").read_text().splitlines()


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(tmp_path)


def test_a_host_that_needs_the_runtime_gets_it_registered_once(engine: Engine) -> None:
    first = engine.run()
    assert first.returncode == 0, first.stderr
    assert "lacks CAP_SYS_RESOURCE" in first.stdout
    assert first.stdout.splitlines()[-1] == (
        "docker-engine: ready: dockerd 20.10.24, default runtime kserve-compat-runc, privileged containers run"
    )
    assert json.loads(engine.daemon_json.read_text()) == {
        "runtimes": {"kserve-compat-runc": {"path": str(engine.runtime_path)}},
        "default-runtime": "kserve-compat-runc",
    }
    assert engine.runtime_path.read_bytes() == RUNTIME.read_bytes()
    assert os.access(engine.runtime_path, os.X_OK)
    assert engine.step_log() == ["restart_dockerd"]
    # the probe: a privileged container from the local image, an exec into it, then removed
    probe = [line for line in engine.docker_log() if line.startswith(("run", "exec", "rm"))]
    assert probe[0].startswith("run -d --privileged --name kserve-compat-probe-")
    assert probe[0].endswith(" kserve-compat/probe:local sleep 60")

    again = engine.run()
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [first.stdout.splitlines()[-1]]
    assert engine.step_log() == ["restart_dockerd"]  # no second restart


def test_a_normal_host_is_left_as_it_is(engine: Engine) -> None:
    (engine.dir / "default-runtime").write_text("runc\n")  # privileged containers run
    done = engine.run()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "docker-engine: ready: dockerd 20.10.24, default runtime runc, privileged containers run"
    ]
    assert not engine.daemon_json.exists()
    assert not engine.runtime_path.exists()
    assert engine.step_log() == []
    commands = [line.split()[0] for line in engine.docker_log()]
    assert commands == ["version", "image", "run", "exec", "rm", "version", "info"]


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        (
            "caps",
            "docker-engine: a privileged container still fails with kserve-compat-runc as the default runtime: "
            "docker: Error response from daemon: failed to create shim task: OCI runtime create failed: runc create "
            "failed: unable to start container process: unable to apply caps: operation not permitted: unknown",
        ),
        (
            "other",
            "docker-engine: a privileged container does not run: "
            "docker: Error response from daemon: OCI runtime create failed: something else.",
        ),
    ],
)
def test_a_probe_that_still_fails_is_one_line(engine: Engine, probe: str, message: str) -> None:
    done = engine.run(probe=probe)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [message]
    assert engine.daemon_json.exists() is (probe == "caps")  # registered only for the capability error


def test_registering_merges_into_an_existing_daemon_json(engine: Engine) -> None:
    existing = {"log-level": "warn", "runtimes": {"crun": {"path": "/usr/bin/crun"}}, "default-runtime": "crun"}
    engine.daemon_json.parent.mkdir(parents=True)
    engine.daemon_json.write_text(json.dumps(existing))
    done = engine.run(then="register_runtime; register_runtime")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["changed"]  # the second call finds nothing to change
    assert json.loads(engine.daemon_json.read_text()) == {
        "log-level": "warn",
        "runtimes": {"crun": {"path": "/usr/bin/crun"}, "kserve-compat-runc": {"path": str(engine.runtime_path)}},
        "default-runtime": "kserve-compat-runc",
    }


def test_a_daemon_json_that_does_not_parse_is_one_line_and_kept(engine: Engine) -> None:
    engine.daemon_json.parent.mkdir(parents=True)
    engine.daemon_json.write_text("{broken")
    done = engine.run(then="register_runtime")
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"docker-engine: {engine.daemon_json} is not valid JSON (")
    assert engine.daemon_json.read_text() == "{broken"
