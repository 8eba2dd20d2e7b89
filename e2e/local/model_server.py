"""A real KServe model server for the local tier, run from its own virtualenv.

The local tier has no kubelet and no internet, so the kind tier's sample
InferenceServices (which pull ``gs://kfserving-examples/...``) cannot run. Instead this
module starts the real ``kserve`` Python ModelServer as a subprocess, serving an sklearn
iris classifier trained at start-up on scikit-learn's bundled iris data set. What that
checks is the harness's inference client (request shapes, headers, response parsing)
against the real server code KServe ships, not KServe's serving stack on Kubernetes.

``kserve`` and ``scikit-learn`` are heavy (grpcio, pandas, scipy, ...), so they live in a
separate virtualenv outside the repository, built on demand by ``ensure_model_server_env``;
the harness's own environment never imports them. The script run inside that venv is
``iris_model_server.py`` beside this file.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

import requests
import tenacity

from e2e.cache import cache_root
from e2e.errors import EnvironmentMissing, HarnessError
from e2e.local.processes import ManagedProcess, StartsAndStops

log = logging.getLogger(__name__)

#: Newest kserve release on PyPI when this was written; it supports Python 3.10-3.13.
KSERVE_VERSION = "0.21.0"
#: Newest scikit-learn release with Python 3.11 wheels when this was written.
SCIKIT_LEARN_VERSION = "1.9.1"
MODEL_SERVER_REQUIREMENTS = (f"kserve=={KSERVE_VERSION}", f"scikit-learn=={SCIKIT_LEARN_VERSION}")

#: Overrides where the model-server venv lives (e.g. a CI cache directory).
VENV_DIR_ENV = "KSERVE_COMPAT_MODEL_SERVER_VENV"
#: Written last by a successful build: a venv without it (or with other pins) is rebuilt.
_READY_MARKER = "kserve-compat-ready.json"

IRIS_SERVER_SCRIPT = Path(__file__).with_name("iris_model_server.py")

#: Names the kind tier gives its v1 and v2 sample InferenceServices; each model here is
#: reachable over both protocols, the names only mirror the kind tier's.
DEFAULT_MODEL_NAMES = ("sklearn-iris", "sklearn-iris-v2")

# Importing kserve (grpc, pandas, fastapi) takes seconds, more on a loaded 2-core machine
# while Go builds run; the bound is there only so that a hung server cannot hang a run.
_READY_TIMEOUT_SECONDS = 180.0
_STOP_GRACE_SECONDS = 10.0
_STDERR_TAIL_LINES = 15


class ModelServerFailed(HarnessError):
    """The model server exited early or never became ready."""


def default_venv_dir() -> Path:
    override = os.environ.get(VENV_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return cache_root() / "venvs" / f"model-server-kserve-{KSERVE_VERSION}"


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def _marker_content(base_python: str) -> dict[str, object]:
    return {"requirements": list(MODEL_SERVER_REQUIREMENTS), "base_python": base_python}


def _is_ready(venv_dir: Path) -> bool:
    marker = venv_dir / _READY_MARKER
    if not marker.is_file() or not _venv_python(venv_dir).exists():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict):
        return False
    return recorded.get("requirements") == list(MODEL_SERVER_REQUIREMENTS)


def _run_logged(command: Sequence[str], what: str) -> None:
    """Run a build step, logging pip's progress lines; on failure raise with its last lines."""
    log.info("model-server venv: %s", what)
    tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    except OSError as error:  # e.g. the base python does not exist
        raise EnvironmentMissing(f"model-server venv: {what} failed: {error}") from error
    with process:
        assert process.stdout is not None
        for raw_line in process.stdout:
            line = raw_line.rstrip()
            if not line:
                continue
            tail.append(line)
            # "Collecting"/"Successfully" show progress during a multi-minute install
            # without flooding the log with every "Requirement already satisfied".
            if line.startswith(("Collecting", "Installing", "Successfully", "ERROR")):
                log.info("model-server venv: %s", line)
            else:
                log.debug("model-server venv: %s", line)
        returncode = process.wait()
    if returncode != 0:
        raise EnvironmentMissing(f"model-server venv: {what} failed (exit {returncode}): " + " | ".join(tail))


def ensure_model_server_env(venv_dir: Path | None = None, base_python: str = sys.executable) -> Path:
    """The python of a venv with pinned ``kserve`` and ``scikit-learn``; built if missing.

    Idempotent: a finished build leaves a marker naming its pins, and a later call with
    the same pins returns at once. A file lock makes concurrent callers (parallel test
    workers, two harness runs) wait for one build instead of racing pip in one directory.
    Raises ``EnvironmentMissing`` if the venv cannot be built (no PyPI, no wheels).
    """
    venv_dir = (venv_dir or default_venv_dir()).expanduser().resolve()
    python = _venv_python(venv_dir)
    if _is_ready(venv_dir):
        return python
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv_dir.parent / f".{venv_dir.name}.lock"
    with lock_path.open("w") as lock_file:
        log.info("model-server venv: waiting for the build lock %s", lock_path)
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if _is_ready(venv_dir):  # another process built it meanwhile
                return python
            started = time.monotonic()
            # A half-built venv (interrupted pip, other pins) is not trusted: start afresh.
            if venv_dir.exists():
                log.info("model-server venv: removing incomplete venv %s", venv_dir)
                shutil.rmtree(venv_dir)
            _run_logged([base_python, "-m", "venv", str(venv_dir)], f"creating {venv_dir}")
            _run_logged(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--progress-bar",
                    "off",
                    *MODEL_SERVER_REQUIREMENTS,
                ],
                "pip install " + " ".join(MODEL_SERVER_REQUIREMENTS),
            )
            (venv_dir / _READY_MARKER).write_text(json.dumps(_marker_content(base_python)))
            log.info(
                "model-server venv: ready at %s after %.0f s",
                venv_dir,
                time.monotonic() - started,
            )
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return python


def _free_port() -> int:
    # kserve 0.21's REST server binds 0.0.0.0 (hard-coded in kserve.protocol.rest.server),
    # so pick a port free on every interface; the harness itself only connects through
    # 127.0.0.1. A clash between this probe and the server's bind shows up as the server
    # exiting early, which start() reports with its output.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("0.0.0.0", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = _STDERR_TAIL_LINES) -> list[str]:
    try:
        with path.open(errors="replace") as stream:
            return [line.rstrip() for line in deque(stream, maxlen=lines)]
    except OSError:
        return []


class _NotReadyYet(Exception):
    """The server is running but not answering ready; retried until the deadline."""


class IrisModelServer(StartsAndStops):
    """The real KServe ModelServer serving an sklearn iris classifier on 127.0.0.1.

    Each name in ``model_names`` is served over both the v1 protocol
    (``POST /v1/models/<name>:predict``) and the v2 protocol
    (``POST /v2/models/<name>/infer``). Usage::

        with IrisModelServer() as server:
            requests.post(f"{server.base_url}/v1/models/sklearn-iris:predict", json=...)
    """

    def __init__(
        self,
        model_names: Sequence[str] = DEFAULT_MODEL_NAMES,
        python: Path | None = None,
        ready_timeout_seconds: float = _READY_TIMEOUT_SECONDS,
    ) -> None:
        if not model_names:
            raise ValueError("IrisModelServer needs at least one model name")
        self.model_names = tuple(model_names)
        self._python = python
        self._ready_timeout_seconds = ready_timeout_seconds
        self._process: ManagedProcess | None = None
        self._workdir: Path | None = None
        self._http_port: int | None = None

    @property
    def base_url(self) -> str:
        if self._http_port is None:
            raise RuntimeError("IrisModelServer is not started")
        return f"http://127.0.0.1:{self._http_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def stderr_path(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("IrisModelServer is not started")
        return self._workdir / "model-server.log"

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError("IrisModelServer is already started")
        python = self._python or ensure_model_server_env()
        self._workdir = Path(tempfile.mkdtemp(prefix="kserve-compat-iris-"))
        # stop() must run even if start() fails half-way or the run is interrupted.
        atexit.register(self.stop)
        try:
            self._launch(python)
            self._wait_until_ready()
        except BaseException:  # includes KeyboardInterrupt: never leave the server behind
            self.stop()
            raise
        return self

    def _launch(self, python: Path) -> None:
        assert self._workdir is not None
        self._http_port = _free_port()
        grpc_port = _free_port()
        model_dir = self._workdir / "model"
        command = [
            str(python),
            str(IRIS_SERVER_SCRIPT),
            "--model-dir",
            str(model_dir),
            "--http-port",
            str(self._http_port),
            "--grpc-port",
            str(grpc_port),
        ]
        for name in self.model_names:
            command += ["--model-name", name]
        log.info("starting model server: %s", " ".join(command))
        # ManagedProcess: own process group, SIGTERM then SIGKILL, stopped on exit paths too.
        self._process = ManagedProcess("iris-model-server", command, log_path=self.stderr_path, cwd=self._workdir)
        self._process.start()

    def _fail_if_exited(self) -> None:
        assert self._process is not None
        code = self._process.exit_code
        if code is not None:
            raise ModelServerFailed(
                f"model server exited with code {code} before it was ready; last output: "
                + " | ".join(_tail(self.stderr_path))
            )

    def _check_ready(self) -> None:
        self._fail_if_exited()
        try:
            health = requests.get(f"{self.base_url}/v2/health/ready", timeout=5)
        except requests.RequestException as error:
            raise _NotReadyYet(f"GET /v2/health/ready: {error.__class__.__name__}") from error
        if health.status_code != 200:
            raise _NotReadyYet(f"GET /v2/health/ready: {health.status_code} {health.text[:200]}")
        for name in self.model_names:
            answer = requests.get(f"{self.base_url}/v1/models/{name}", timeout=5)
            body = answer.json() if answer.status_code == 200 else {}
            if not (isinstance(body, dict) and body.get("ready") is True):
                raise _NotReadyYet(f"GET /v1/models/{name}: {answer.status_code} {answer.text[:200]}")

    def _wait_until_ready(self) -> None:
        last_seen: list[str] = ["nothing yet"]

        def remember(state: tenacity.RetryCallState) -> None:
            outcome = state.outcome
            if outcome is not None and outcome.failed:
                last_seen[0] = str(outcome.exception())
            log.info(
                "waiting for model server %s to be ready (%.0f s); last saw: %s",
                self.base_url,
                state.seconds_since_start or 0.0,
                last_seen[0],
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_NotReadyYet),
            stop=tenacity.stop_after_delay(self._ready_timeout_seconds),
            # Quick polls first (a warm start takes a few seconds), then every 2 s.
            wait=tenacity.wait_exponential(multiplier=0.25, max=2),
            before_sleep=remember,
            reraise=True,
        )
        try:
            retrying(self._check_ready)
        except _NotReadyYet as error:
            raise ModelServerFailed(
                f"model server at {self.base_url} not ready after "
                f"{self._ready_timeout_seconds:.0f} s; last saw: {error}; last output: "
                + " | ".join(_tail(self.stderr_path))
            ) from error
        log.info("model server ready at %s serving %s", self.base_url, ", ".join(self.model_names))

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its temp dir. Idempotent."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None:
            process.stop(grace=_STOP_GRACE_SECONDS)
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        self._http_port = None


@contextlib.contextmanager
def iris_model_server(model_names: Sequence[str] = DEFAULT_MODEL_NAMES) -> Iterator[IrisModelServer]:
    """``IrisModelServer`` as a generator-style context manager (for pytest fixtures)."""
    with IrisModelServer(model_names) as server:
        yield server
