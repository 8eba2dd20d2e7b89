"""The release's own sklearn model server, played for a predictor pod's ``kserve-container``.

A KServe release's Go module (``github.com/kserve/kserve@vX``) carries its Python servers:
``python/kserve`` (the ModelServer), ``python/sklearnserver`` and, from v0.17,
``python/storage``. Here each release gets one virtualenv, outside the repository, built
from exactly those trees with their dependencies from PyPI pinned by the release's own lock
file (``poetry.lock`` up to v0.15, ``uv.lock`` from v0.16), and an iris classifier trained
at build time with the release's pinned scikit-learn on scikit-learn's bundled data. That is
what the ``kserve/sklearnserver:vX`` image holds, minus the image.

The predictor pod's storage initializer is not run: its ``storageUri`` (``gs://...``) is not
reachable here. The harness places the trained model where the initializer would have put
it, and the provider records that as a deviation naming the URI not fetched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from packaging.markers import InvalidMarker, Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from e2e import binaries
from e2e.cache import cache_root
from e2e.errors import ImageReferenceError, WorkloadUnavailable
from e2e.images import ImageReference
from e2e.local.processes import ManagedProcess, OneProcess, wait_ready
from e2e.secrets import redact

log = logging.getLogger(__name__)

KSERVE_MODULE = "github.com/kserve/kserve"
SKLEARNSERVER_REPOSITORY = "kserve/sklearnserver"
#: Where KServe's storage initializer puts the model, and where the runtime reads it.
MODEL_MOUNT = "/mnt/models"
MODEL_FILE = "model.joblib"
#: Written last by a successful build: a venv without it (or from another recipe) is rebuilt.
_READY_MARKER = "kserve-compat-ready.json"
_TAIL_LINES = 15
# Importing kserve (grpc, pandas, fastapi) takes seconds, more on a loaded 2-core machine.
_START_TIMEOUT_S = 180.0

# Trains the iris classifier of KServe's sklearn docs (SVC, gamma="scale", the full data set)
# with the venv's own scikit-learn, so the model file matches the runtime that loads it.
_TRAIN_IRIS = """
import sys, joblib
from sklearn import svm
from sklearn.datasets import load_iris
features, labels = load_iris(return_X_y=True)
joblib.dump(svm.SVC(gamma="scale").fit(features, labels), sys.argv[1])
"""


class SklearnServerUnavailable(WorkloadUnavailable):
    """The release's sklearn server cannot be built here (module refused, PyPI unreachable)."""


def is_sklearnserver_image(image: str) -> bool:
    """Is ``image`` KServe's sklearn runtime (``kserve/sklearnserver:vX``, any registry)?"""
    try:
        return ImageReference.parse(image).path.endswith(SKLEARNSERVER_REPOSITORY)
    except ImageReferenceError:
        return False


def release_of(image: str) -> str:
    """The KServe release an sklearnserver image belongs to: its tag."""
    tag = ImageReference.parse(image).tag
    if not tag or not tag.startswith("v"):
        raise SklearnServerUnavailable(f"{image}: no release tag (vX.Y.Z) to take its python/ tree from")
    return tag


# -- the release's pins ----------------------------------------------------------------------


def locked_versions(lock_text: str, python_version: str | None = None) -> dict[str, str]:
    """``name -> version`` of every PyPI package a ``poetry.lock`` or ``uv.lock`` pins for
    this Python. Packages from a path (the release's own ``kserve``, ``storage``) are left
    out: they are installed from the module. Where a lock keeps several versions of one
    package for different Pythons, the one whose markers admit ``python_version`` wins."""
    python = python_version or platform.python_version()
    environment = {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python}
    chosen: dict[str, str] = {}
    for package in tomllib.loads(lock_text).get("package", []):
        source = package.get("source") or {}
        if isinstance(source, dict) and (
            source.get("type") in ("directory", "file", "git", "url")
            or {"editable", "directory", "virtual", "path", "git"} & set(source)
        ):
            continue
        if not _admits(package, python, environment):
            continue
        name, version = canonicalize_name(package["name"]), str(package["version"])
        if name not in chosen or _version(version) > _version(chosen[name]):
            chosen[name] = version
    return chosen


def _admits(package: Mapping[str, Any], python: str, environment: Mapping[str, str]) -> bool:
    markers = package.get("resolution-markers") or []  # uv.lock
    if markers:
        for text in markers:
            try:
                if Marker(text).evaluate(dict(environment)):
                    return True
            except InvalidMarker:
                return True
        return False
    wanted = str(package.get("python-versions", "*")).replace(" ", "")  # poetry.lock
    if wanted in ("", "*"):
        return True
    try:
        return SpecifierSet(wanted).contains(python)
    except InvalidSpecifier:  # poetry's own syntax ("^3.8"): keep it, pip will judge
        return True


def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        return Version("0")


@dataclass(frozen=True)
class ServerDependencies:
    """What ``pip install`` gets for a release's sklearnserver."""

    local: tuple[str, ...]  # the module's own packages, as ``/path[extras]``
    names: tuple[str, ...]  # PyPI packages by name: the lock's constraints give the version


def server_dependencies(sklearnserver: Path) -> ServerDependencies:
    """The dependencies ``python/sklearnserver/pyproject.toml`` declares: path dependencies
    (``../kserve`` with its extras, ``../storage``) resolved against the tree, others by name."""
    project = tomllib.loads((sklearnserver / "pyproject.toml").read_text())
    local: list[str] = []
    names: list[str] = []
    poetry = project.get("tool", {}).get("poetry", {}).get("dependencies", {})
    for name, spec in poetry.items():  # up to v0.15
        if name == "python":
            continue
        if isinstance(spec, dict) and "path" in spec:
            local.append(_local(sklearnserver / spec["path"], spec.get("extras", [])))
        else:
            names.append(name)
    for text in project.get("project", {}).get("dependencies", []):  # from v0.16 (PEP 621)
        try:
            requirement = Requirement(text.replace("${PROJECT_ROOT}", os.fspath(sklearnserver)))
        except InvalidRequirement as exc:
            raise SklearnServerUnavailable(f"{sklearnserver}/pyproject.toml: unreadable dependency {text!r}") from exc
        if requirement.url and requirement.url.startswith("file://"):
            # "file:///${PROJECT_ROOT}/..." leaves extra slashes, which POSIX keeps as "//".
            path = Path("/" + requirement.url.removeprefix("file:").lstrip("/"))
            local.append(_local(path, sorted(requirement.extras)))
        else:
            names.append(requirement.name)
    return ServerDependencies(tuple(local), tuple(names))


def _local(path: Path, extras: Sequence[str]) -> str:
    resolved = os.path.normpath(path)
    return f"{resolved}[{','.join(extras)}]" if extras else resolved


def lock_file(python_dir: Path) -> Path:
    """The release's lock of its sklearn server: sklearnserver's own, else the tree's."""
    for candidate in ("sklearnserver/poetry.lock", "sklearnserver/uv.lock", "uv.lock"):
        if (python_dir / candidate).is_file():
            return python_dir / candidate
    raise SklearnServerUnavailable(f"{python_dir}: no poetry.lock or uv.lock for sklearnserver")


# -- the venv of a release -------------------------------------------------------------------


@dataclass(frozen=True)
class SklearnServerEnv:
    release: str
    python: Path
    model: Path  # the iris model file trained with this venv's scikit-learn

    def describe(self) -> str:
        return f"sklearnserver {self.release} (python/ of {KSERVE_MODULE}@{self.release})"


def default_venv_dir(release: str) -> Path:
    return cache_root() / "venvs" / f"sklearnserver-{release}"


def ensure_env(release: str, venv_dir: Path | None = None) -> SklearnServerEnv:
    """The venv of ``release``'s sklearnserver; built on first use (minutes: PyPI downloads),
    then reused. A file lock makes concurrent runs wait for one build. Raises
    ``SklearnServerUnavailable`` with the reason when it cannot be built here."""
    venv = (venv_dir or default_venv_dir(release)).expanduser()
    found = _ready(venv, release)
    if found is not None:
        return found
    if venv in _failed:  # every sync asks again: answer as before, without rebuilding
        raise SklearnServerUnavailable(_failed[venv])
    try:
        return _ensure(release, venv)
    except SklearnServerUnavailable as exc:
        _failed[venv] = str(exc)
        raise


#: Builds that failed in this process (venv -> why): a run does not retry them per cell.
_failed: dict[Path, str] = {}


def _ensure(release: str, venv: Path) -> SklearnServerEnv:
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f".{venv.name}.lock").open("w") as lock:
        log.info("sklearnserver %s: waiting for the build lock", release)
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _ready(venv, release)
        if found is not None:
            return found
        try:
            with tempfile.TemporaryDirectory(prefix="kserve-compat-sklearnserver-") as scratch:
                return _build(release, venv, Path(scratch))
        except binaries.BuildUnavailable as exc:
            raise SklearnServerUnavailable(f"sklearnserver {release}: {exc}") from None


def built_env(release: str) -> SklearnServerEnv | None:
    """The venv of ``release`` when it is built already (nothing is built or downloaded)."""
    return _ready(default_venv_dir(release).expanduser(), release)


def ready_marker(env: SklearnServerEnv) -> Path:
    """The file a finished build writes last: what went into the venv (release, lock, Python)."""
    return env.python.parent.parent / _READY_MARKER


def _ready(venv: Path, release: str) -> SklearnServerEnv | None:
    try:
        recorded = json.loads((venv / _READY_MARKER).read_text())
    except (OSError, ValueError):
        return None
    env = SklearnServerEnv(release, venv / "bin" / "python", venv / "iris-model" / MODEL_FILE)
    if recorded.get("release") != release or not env.python.exists() or not env.model.is_file():
        return None
    return env


def _build(release: str, venv: Path, scratch: Path) -> SklearnServerEnv:
    started = time.monotonic()
    module = binaries.download_module(KSERVE_MODULE, release, scratch)
    source = module.dir / "python"
    if not (source / "sklearnserver" / "pyproject.toml").is_file():
        raise SklearnServerUnavailable(f"{KSERVE_MODULE}@{release} has no python/sklearnserver")
    # The module cache is read-only and pip builds in the tree: build from a copy.
    tree = scratch / "python"
    for part in ("kserve", "storage", "sklearnserver"):
        if (source / part).is_dir():
            shutil.copytree(source / part, tree / part)
    for path in tree.rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)
    lock = lock_file(source)
    constraints = scratch / "constraints.txt"
    pins = locked_versions(lock.read_text())
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    dependencies = server_dependencies(tree / "sklearnserver")
    if venv.exists():  # a half-built venv (interrupted pip) is not trusted
        shutil.rmtree(venv)
    _run([sys.executable, "-m", "venv", os.fspath(venv)], f"sklearnserver {release}: creating {venv}")
    python = venv / "bin" / "python"
    pip = [os.fspath(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    pip += ["--progress-bar", "off"]
    _run(
        [*pip, "-c", os.fspath(constraints), *dependencies.local, *dependencies.names],
        f"sklearnserver {release}: pip install its dependencies as {lock.name} pins them ({len(pins)} pins)",
    )
    _run([*pip, "--no-deps", os.fspath(tree / "sklearnserver")], f"sklearnserver {release}: pip install sklearnserver")
    model = venv / "iris-model" / MODEL_FILE
    model.parent.mkdir(parents=True, exist_ok=True)
    _run([os.fspath(python), "-c", _TRAIN_IRIS, os.fspath(model)], f"sklearnserver {release}: training the iris model")
    recipe = {
        "release": release,
        "lock": lock.name,
        "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest(),
        "python": platform.python_version(),
        "module_commit": module.commit,
    }
    (venv / _READY_MARKER).write_text(json.dumps(recipe, indent=1))
    log.info("sklearnserver %s: ready in %.0f s (%s)", release, time.monotonic() - started, venv)
    return SklearnServerEnv(release, python, model)


def _run(command: Sequence[str], what: str) -> None:
    """A build step; pip's progress lines logged, its last lines in the error."""
    log.info("%s", what)
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    ) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                if line.startswith(("Collecting", "Successfully", "ERROR")):
                    log.info("  %s", line)
        code = process.wait()
    if code != 0:
        raise SklearnServerUnavailable(f"{what} failed (exit {code}): {' | '.join(tail)}")


# -- the played container --------------------------------------------------------------------


def free_port() -> int:
    """A port free on every interface: KServe's REST and gRPC servers bind 0.0.0.0 / [::]."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("0.0.0.0", 0))
        return int(probe.getsockname()[1])


def remap_server_args(
    args: Sequence[str], *, http_port: int, grpc_port: int, model_dir: Path
) -> tuple[list[str], list[str]]:
    """The container's args with its ports moved to free ports and ``--model_dir`` where
    the model was placed; returns (args, notes). gRPC gets a port of its own even when the
    args do not name one: every server of a pod here shares one network namespace."""
    out: list[str] = []
    notes: list[str] = []
    seen: set[str] = set()
    replacements = {"--http_port": str(http_port), "--grpc_port": str(grpc_port), "--model_dir": os.fspath(model_dir)}
    for arg in args:
        flag, sep, value = arg.partition("=")
        if sep and flag in replacements:
            seen.add(flag)
            out.append(f"{flag}={replacements[flag]}")
            notes.append(f"{flag}: {value} -> {'the placed model' if flag == '--model_dir' else 'a free port'}")
        else:
            out.append(arg)
    if "--grpc_port" not in seen:
        out.append(f"--grpc_port={grpc_port}")
        notes.append("--grpc_port: (its default) -> a free port")
    if "--model_dir" not in seen:
        raise SklearnServerUnavailable(f"no --model_dir=... in the container's args {list(args)}")
    return out, notes


class SklearnServerProcess(OneProcess):
    """``python -m sklearnserver`` of a release with the args KServe generated (remapped);
    ready when its REST port accepts, as the pod's tcpSocket readiness probe asks."""

    def __init__(
        self,
        env: SklearnServerEnv,
        args: Sequence[str],
        *,
        environ: Mapping[str, str],
        http_port: int,
        workdir: Path,
        name: str,
        remap_notes: Sequence[str] = (),
    ) -> None:
        self.env = env
        self.args = list(args)
        self.http_port = http_port
        self.remap_notes = list(remap_notes)
        self.process = ManagedProcess(
            name,
            [env.python, "-m", "sklearnserver", *self.args],
            log_path=workdir / f"{name}.log",
            env={**environ, "PYTHONUNBUFFERED": "1"},
            cwd=workdir,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self) -> Self:
        log.info("starting %s %s", self.env.describe(), " ".join(redact(a) for a in self.args))
        self.process.start()
        return self

    def wait_ready(self, timeout: float = _START_TIMEOUT_S) -> None:
        """Until the REST port accepts; ``ProcessExitedEarly`` if the server exits first."""
        wait_ready(f"{self.process.name} on {self.address}", self._probe, watched=[self.process], timeout=timeout)

    def _probe(self) -> tuple[bool, str]:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.http_port), timeout=1):
            return True, "accepting"
        last = self.process.tail_lines(1)
        return False, f"port {self.http_port} closed; last log line: {last[-1] if last else '(none)'}"
