"""The image of ``kserve-compat watch-images``, built offline from this checkout.

``deploy/watch-images/Dockerfile`` installs the wheel of ``nox -s build`` into a venv on
``python:3.12-slim`` for machines that can pull that base and reach PyPI. Here no base image
can be pulled, so the image is made as KServe's serving images are (``serving.py``):

- the base is ``kserve-compat/python-base`` (Debian bookworm from debootstrap) with this
  machine's CPython copied in at its own prefix, its standard library only;
- a wheel of the checkout (``pip wheel --no-deps`` of a copy of ``pyproject.toml``,
  ``README.md`` and ``e2e/``: setuptools builds in the tree, and would pack whatever a
  left-over ``build/`` holds) and the wheels of its dependencies (``pip wheel``: the index or
  pip's cache, the only downloads);
- a venv at ``/opt/kserve-compat/venv`` (the Dockerfile's path), made inside the image by
  that interpreter and filled from those wheels only (``--no-index``): a venv is not
  relocatable, so it is made where it runs;
- user ``nonroot`` (65532, as distroless's), ``ENTRYPOINT ["kserve-compat"]``,
  ``CMD ["watch-images", "--listen", "0.0.0.0:9400"]``; before it is tagged,
  ``kserve-compat --version`` and ``watch-images --print-manifest`` run in it as 65532.

It is tagged ``kserve-compat/watch-images:<package version>`` and labelled with its recipe:
the files of the checkout's wheel (their sha256, not the zip's timestamps), the interpreter
and the base. A current image is not built again; the dependencies are what pip resolved
when it was built (their requirements are in the wheel's metadata, so in the recipe).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from e2e import __version__, binaries, docker_cli
from e2e.command import failure_line, run
from e2e.errors import EnvironmentMissing, HarnessError, UsageError
from e2e.imageset import node
from e2e.imageset.components import BUILT, FAILED, MISSING, UNAVAILABLE, PlannedImage
from e2e.imageset.docker_image import ImageBuildFailed, ImageRecipe, docker, is_current
from e2e.imageset.serving import PYTHON_BASE_PACKAGES, commit_image, copy_python, python_base_recipe

log = logging.getLogger(__name__)

COMPONENT = "watch-images"
REPOSITORY = "kserve-compat/watch-images"
LAYOUT_REVISION = 1
VENV = "/opt/kserve-compat/venv"
USER = "65532"  # nonroot, as distroless's; the manifest's runAsUser
COMMAND = ("watch-images", "--listen", "0.0.0.0:9400")
# What the wheel is built from: the package and what pyproject.toml reads besides it (the
# README, and scenarios/, which it maps to the package e2e.scenarios).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "e2e", "scenarios")
PIP_TIMEOUT_SECONDS = 15 * 60
_TAIL_LINES = 3


def image_reference() -> str:
    """``kserve-compat/watch-images:<this package's version>``."""
    return f"{REPOSITORY}:{__version__}"


def checkout() -> Path:
    """The checkout this package runs from (EnvironmentMissing when it is installed from a wheel)."""
    root = Path(__file__).resolve().parents[2]
    missing = [name for name in WHEEL_SOURCES if not (root / name).exists()]
    if missing:
        raise EnvironmentMissing(
            f"{root}: no {', '.join(missing)}; the watch-images image is built from a checkout of kserve-compat"
        )
    return root


def python_prefix() -> Path:
    """The prefix of this interpreter (of the venv's base interpreter, in a venv)."""
    return Path(sys.base_prefix)


def build_wheel(root: Path, into: Path) -> Path:
    """A wheel of the checkout at ``root``, built from a copy of its ``WHEEL_SOURCES``."""
    source = into / "source"
    for name in WHEEL_SOURCES:
        if (root / name).is_dir():
            shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, source / name)
    _pip(["wheel", "--no-deps", "--wheel-dir", str(into / "wheel"), str(source)], f"a wheel of {root}")
    wheels = sorted((into / "wheel").glob("kserve_compat-*.whl"))
    if len(wheels) != 1:
        raise ImageBuildFailed(f"pip wheel {root}: expected one kserve_compat wheel, got {[w.name for w in wheels]}")
    return wheels[0]


def wheel_files_sha256(wheel: Path) -> str:
    """The sha256 of a wheel's files (names and contents): the same for the same checkout,
    whatever the zip's timestamps."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(archive.read(name)).digest())
    return digest.hexdigest()


def recipe(wheel: Path) -> ImageRecipe:
    return ImageRecipe(
        (image_reference(),),
        {
            "layout": LAYOUT_REVISION,
            "component": COMPONENT,
            "version": __version__,
            "wheel_files_sha256": wheel_files_sha256(wheel),
            "python": str(python_prefix()),
            "python_version": platform.python_version(),
            "base": python_base_recipe().digest(),
            "venv": VENV,
            "user": USER,
            "command": list(COMMAND),
        },
    )


def build_watch_images_image() -> str:
    """Build the watch-images image of this checkout unless current; its reference.

    Raises EnvironmentMissing without a checkout or a Docker engine, ``binaries.BuildUnavailable``
    when pip cannot get a wheel (no index, no cache), ImageBuildFailed when the image does not
    run ``kserve-compat`` as its user.
    """
    root = checkout()
    reason = binaries.docker_engine_unreachable_reason()
    if reason:
        raise EnvironmentMissing(f"the watch-images image: {reason}")
    with tempfile.TemporaryDirectory(prefix="kserve-compat-watch-images-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(root, work)
        wanted = recipe(wheel)
        if is_current(wanted):
            log.info("image %s is current (recipe %s)", wanted.name, wanted.digest()[:12])
            return wanted.name
        wheelhouse = work / "wheelhouse"
        _pip(["wheel", "--wheel-dir", str(wheelhouse), str(wheel)], f"the wheels {wheel.name} depends on")
        base = node.debootstrap_image(
            python_base_recipe(), PYTHON_BASE_PACKAGES, node.remove_from_rootfs, "", "the watch-images image"
        )
        container = f"kserve-compat-watch-images-build-{uuid.uuid4().hex[:12]}"
        docker(["run", "-d", "--name", container, "--entrypoint", "sleep", base, "infinity"], f"container {container}")
        try:
            _fill(container, wheelhouse)
            commit_image(
                container,
                wanted,
                [
                    f"ENV PATH={VENV}/bin:{node.PATH_ENV}",
                    f"ENV VIRTUAL_ENV={VENV}",
                    "ENV PYTHONDONTWRITEBYTECODE=1",  # the Deployment's root filesystem is read-only
                    f"USER {USER}:{USER}",
                    "WORKDIR /home/nonroot",
                    'ENTRYPOINT ["kserve-compat"]',
                    f"CMD {json.dumps(list(COMMAND))}",
                ],
            )
        finally:
            docker_cli.remove_container(container)
    return wanted.name


def _fill(container: str, wheelhouse: Path) -> None:
    """The interpreter, the venv from ``wheelhouse``, user nonroot; proven as that user."""
    prefix = python_prefix()
    copy_python(container, prefix)
    docker(["cp", str(wheelhouse), f"{container}:/tmp/wheelhouse"], f"wheels into {container}")
    python = prefix / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    # The interpreter keeps this machine's path (under root's home here): its parents are
    # opened to the image's user.
    parents = " ".join(str(p) for p in sorted(prefix.parents) if str(p) != "/")
    script = (
        f"{python} -m venv {VENV}"
        f" && {VENV}/bin/python -m pip install --no-index --no-cache-dir --disable-pip-version-check"
        f" --find-links /tmp/wheelhouse kserve-compat=={__version__}"
        " && rm -rf /tmp/wheelhouse"
        f" && groupadd -g {USER} nonroot"
        f" && useradd -u {USER} -g {USER} -m -d /home/nonroot -s /usr/sbin/nologin nonroot"
        + (f" && chmod 0755 {parents}" if parents else "")
    )
    docker(["exec", container, "sh", "-c", script], f"venv {VENV} and user nonroot in {container}")
    as_user = ["exec", "-u", USER, "-e", f"PATH={VENV}/bin:{node.PATH_ENV}", "-w", "/tmp", container]
    for check, proof in (
        (["kserve-compat", "--version"], f"kserve-compat {__version__}"),
        (["kserve-compat", "watch-images", "--print-manifest"], "kind: PrometheusRule"),
    ):
        what = f"the watch-images image: `{' '.join(check)}` as user {USER}"
        result = docker_cli.docker([*as_user, *check], what, error=ImageBuildFailed, timeout=300, check=False)
        if result.returncode != 0 or proof not in result.stdout:
            raise ImageBuildFailed(failure_line(result, what))


def _pip(args: Sequence[str], what: str) -> None:
    """``pip ARGS`` with this interpreter; BuildUnavailable with pip's last lines when it fails
    (what it could not get is what this machine cannot build from)."""
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
    log.info("pip %s: %s", args[0], what)
    run(command, what, error=binaries.BuildUnavailable, timeout=PIP_TIMEOUT_SECONDS, tail=_TAIL_LINES)


# -- in the image set's listing (`kserve-compat images list|build|push --watch-images`) ---------------


def planned() -> PlannedImage:
    """The image and where it stands: built (current), missing, or unavailable with why.
    Builds the checkout's wheel (seconds) to know its recipe; nothing else."""
    image = PlannedImage(image_reference(), COMPONENT, __version__, MISSING)
    try:
        root = checkout()
    except EnvironmentMissing as exc:
        return replace(image, status=UNAVAILABLE, detail=str(exc))
    reason = binaries.docker_engine_unreachable_reason()
    if reason:
        return replace(image, detail=reason)
    try:
        with tempfile.TemporaryDirectory(prefix="kserve-compat-watch-images-") as tmp:
            current = is_current(recipe(build_wheel(root, Path(tmp))))
    except binaries.BuildUnavailable as exc:
        return replace(image, status=UNAVAILABLE, detail=str(exc))
    return replace(image, status=BUILT) if current else replace(image, detail="not built (or from another checkout)")


def ensure() -> PlannedImage:
    """Build the image unless current; its final status: unavailable (no checkout, pip could not
    get a wheel) or failed, with the error's line. No Docker engine: EnvironmentMissing, as
    ``components.ensure_images`` says it."""
    image = PlannedImage(image_reference(), COMPONENT, __version__, MISSING)
    try:
        checkout()
    except EnvironmentMissing as exc:
        return replace(image, status=UNAVAILABLE, detail=str(exc))
    reason = binaries.docker_engine_unreachable_reason()
    if reason:
        raise EnvironmentMissing(f"{reason}; start one (.ci/docker-engine) and run again")
    try:
        build_watch_images_image()
    except binaries.BuildUnavailable as exc:
        return replace(image, status=UNAVAILABLE, detail=str(exc))
    except UsageError:
        raise
    except HarnessError as exc:
        return replace(image, status=FAILED, detail=str(exc))
    return replace(image, status=BUILT)
