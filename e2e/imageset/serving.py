"""KServe's Python serving images of a release, built from its module's ``python/`` tree:
the sklearn model server and the storage initializer the sample InferenceServices run on.

The release's Dockerfiles (``python/sklearn.Dockerfile``, ``python/storage-initializer.Dockerfile``)
install the release's packages into a venv on ``python:3.11-slim-bookworm``, add the user
``kserve`` (1000) and run as it: ``ENTRYPOINT ["python", "-m", "sklearnserver"]`` and
``ENTRYPOINT ["/storage-initializer/scripts/initializer-entrypoint"]``. Here, with no registry
to pull that base from:

- the base is Debian bookworm from ``debootstrap`` with the runtime libraries the official
  ``python:3.11-slim`` image installs (``kserve-compat/python-base``), plus this machine's
  CPython 3.11 (the interpreter the venv was made with; its standard library only);
- the venv is the one ``e2e.local.sklearnserver`` builds for the local tier (the release's
  ``kserve`` with its ``storage`` extra, ``sklearnserver``, and ``storage`` from v0.17, every
  dependency pinned by the release's lock), kept at the absolute path it was made at: a
  venv is not relocatable. Both images hold it (one container, committed twice); the
  storage initializer's Kerberos/HDFS extras are left out (only HTTP is fetched here);
- the iris model trained with the venv's scikit-learn is inside (``<venv>/iris-model``):
  the in-cluster model store (``e2e/model_store.py``) serves it from the sklearnserver image.

Both images carry the recipe label (``docker_image``); a current pair is not built again.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from e2e import binaries, docker_cli
from e2e.command import failure_line
from e2e.imageset import node
from e2e.imageset.docker_image import (
    RECIPE_LABEL,
    ImageBuildFailed,
    ImageRecipe,
    docker,
    file_sha256,
    is_current,
)
from e2e.local import sklearnserver
from e2e.local.sklearnserver import SklearnServerEnv

log = logging.getLogger(__name__)

LAYOUT_REVISION = 1
SKLEARNSERVER = "kserve-sklearnserver"
STORAGE_INITIALIZER = "kserve-storage-initializer"
STORAGE_INITIALIZER_REPOSITORY = "kserve/storage-initializer"
PYTHON_BASE_REPOSITORY = "kserve-compat/python-base"
# What python:3.11-slim-bookworm installs besides Python: certificates, netbase, tzdata and
# the libraries of the standard library's extension modules; passwd for useradd.
PYTHON_BASE_PACKAGES: tuple[str, ...] = (
    "ca-certificates",
    "netbase",
    "tzdata",
    "libbz2-1.0",
    "libexpat1",
    "libffi8",
    "liblzma5",
    "libncursesw6",
    "libreadline8",
    "libsqlite3-0",
    "libssl3",
    "libuuid1",
    "zlib1g",
    "libnsl2",
    "libtirpc3",
    "passwd",
)
SERVING_USER = "1000"  # both Dockerfiles: useradd kserve -m -u 1000; USER 1000
STORAGE_ENTRYPOINT = "/storage-initializer/scripts/initializer-entrypoint"
STORAGE_WORKDIR = "/work"
ENTRYPOINT_IN_MODULE = "python/storage-initializer/scripts/initializer-entrypoint"
#: The label naming where the iris model lies inside the sklearnserver image.
IRIS_MODEL_LABEL = "io.kserve-compat.iris-model"
# Not copied from the interpreter's prefix: its own site-packages (the venv has its own),
# its test suite, the static library and Tk (nothing here has a display).
_PYTHON_EXCLUDES = ("site-packages", "test", "config-*", "idlelib", "tkinter", "turtledemo", "__pycache__")


def is_storage_initializer_image(image: str) -> bool:
    """Is ``image`` KServe's storage initializer (``kserve/storage-initializer:vX``)?"""
    return image.rsplit(":", 1)[0].endswith(STORAGE_INITIALIZER_REPOSITORY)


@dataclass(frozen=True)
class ServingImages:
    """The two images of a release the samples run on, as its manifests name them."""

    release: str
    sklearnserver: str
    storage_initializer: str

    @property
    def references(self) -> tuple[str, str]:
        return (self.sklearnserver, self.storage_initializer)


def serving_images_of(release: str, images: list[str]) -> ServingImages | None:
    """The release's sklearnserver and storage-initializer among ``images`` (None unless both)."""
    server = next((image for image in images if sklearnserver.is_sklearnserver_image(image)), None)
    storage = next((image for image in images if is_storage_initializer_image(image)), None)
    return ServingImages(release, server, storage) if server and storage else None


def python_base_recipe() -> ImageRecipe:
    return node.base_recipe(packages=PYTHON_BASE_PACKAGES, repository=PYTHON_BASE_REPOSITORY)


def python_prefix(env: SklearnServerEnv) -> Path:
    """The prefix of the interpreter the venv was made with (``home`` of its pyvenv.cfg, up one)."""
    config = env.python.parent.parent / "pyvenv.cfg"
    for line in config.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return Path(value.strip()).parent
    raise ImageBuildFailed(f"{config}: no 'home' line (which Python made this venv?)")


def venv_dir(env: SklearnServerEnv) -> Path:
    return env.python.parent.parent


def recipes(images: ServingImages, env: SklearnServerEnv, entrypoint: Path) -> tuple[ImageRecipe, ImageRecipe]:
    """The recipes of the sklearnserver and storage-initializer images of ``env``."""
    inputs = {
        "layout": LAYOUT_REVISION,
        "release": images.release,
        "venv": str(venv_dir(env)),
        "venv_recipe": sklearnserver.ready_marker(env).read_text(),
        "model_sha256": file_sha256(env.model),
        "python": str(python_prefix(env)),
        "base": python_base_recipe().digest(),
        "user": SERVING_USER,
    }
    server = ImageRecipe((images.sklearnserver,), {**inputs, "component": SKLEARNSERVER})
    storage = ImageRecipe(
        (images.storage_initializer,),
        {**inputs, "component": STORAGE_INITIALIZER, "entrypoint_sha256": file_sha256(entrypoint)},
    )
    return server, storage


def status(images: ServingImages) -> tuple[str, str]:
    """(built|missing, detail) of the pair; nothing is built or downloaded."""
    env = sklearnserver.built_env(images.release)
    if env is None:
        return "missing", f"sklearnserver {images.release}: its venv is not built yet"
    entrypoint = _entrypoint_if_cached(images.release)
    if entrypoint is None:
        return "missing", f"{sklearnserver.KSERVE_MODULE}@{images.release} is not in the Go module cache yet"
    if all(is_current(recipe) for recipe in recipes(images, env, entrypoint)):
        return "built", ""
    return "missing", "not built (or built from another recipe)"


def _entrypoint_if_cached(release: str) -> Path | None:

    module = binaries.cached_module_dir(sklearnserver.KSERVE_MODULE, release)
    path = module / ENTRYPOINT_IN_MODULE if module else None
    return path if path is not None and path.is_file() else None


def build(images: ServingImages) -> ServingImages:
    """Build the release's two serving images unless current (the venv first, if needed).

    Raises ``binaries.BuildUnavailable`` when the release's module or packages cannot be had
    here, ``ImageBuildFailed`` when the images do not work (an import fails as user 1000).
    """
    try:
        env = sklearnserver.ensure_env(images.release)
    except sklearnserver.SklearnServerUnavailable as exc:
        raise binaries.BuildUnavailable(str(exc)) from None

    entrypoint = binaries.module_dir(sklearnserver.KSERVE_MODULE, images.release) / ENTRYPOINT_IN_MODULE
    if not entrypoint.is_file():
        raise binaries.BuildUnavailable(f"{sklearnserver.KSERVE_MODULE}@{images.release}: no {ENTRYPOINT_IN_MODULE}")
    server_recipe, storage_recipe = recipes(images, env, entrypoint)
    if is_current(server_recipe) and is_current(storage_recipe):
        log.info("serving images of %s are current", images.release)
        return images
    base = node.debootstrap_image(
        python_base_recipe(), PYTHON_BASE_PACKAGES, node.remove_from_rootfs, "", "KServe's Python serving images"
    )
    container = f"kserve-compat-serving-build-{uuid.uuid4().hex[:12]}"
    docker(
        ["run", "-d", "--name", container, "--entrypoint", "sleep", base, "infinity"], f"build container {container}"
    )
    try:
        _fill(container, env, entrypoint)
        venv = venv_dir(env)
        path = f"{venv}/bin:{node.PATH_ENV}"
        common = [f"ENV PATH={path}", f"ENV VIRTUAL_ENV={venv}", f"USER {SERVING_USER}"]
        commit_image(
            container,
            server_recipe,
            [*common, f"LABEL {IRIS_MODEL_LABEL}={env.model}", 'ENTRYPOINT ["python", "-m", "sklearnserver"]'],
        )
        commit_image(
            container,
            storage_recipe,
            [*common, f"WORKDIR {STORAGE_WORKDIR}", f"ENTRYPOINT {json.dumps([STORAGE_ENTRYPOINT])}"],
        )
    finally:
        docker_cli.remove_container(container)
    return images


def _fill(container: str, env: SklearnServerEnv, entrypoint: Path) -> None:
    """Put the interpreter, the venv and the storage initializer's script in; add user 1000;
    prove as that user that both entry points import."""
    prefix, venv = python_prefix(env), venv_dir(env)
    copy_python(container, prefix, venv)
    docker(["exec", container, "mkdir", "-p", str(Path(STORAGE_ENTRYPOINT).parent)], "mkdir /storage-initializer")
    docker(["cp", str(entrypoint), f"{container}:{STORAGE_ENTRYPOINT}"], "storage initializer entrypoint")
    # The venv keeps the absolute path it was made at (under root's home on this machine):
    # its parents are opened to the image's user, as the Dockerfiles chown their venv to it.
    parents = sorted({str(p) for path in (prefix, venv) for p in path.parents if str(p) != "/"})
    script = (
        f"useradd kserve -m -u {SERVING_USER} -d /home/kserve"
        f" && mkdir -p {STORAGE_WORKDIR} /mnt/models && chown -R {SERVING_USER}:{SERVING_USER} /mnt {STORAGE_WORKDIR}"
        f" && chmod 0755 {' '.join(parents)} {STORAGE_ENTRYPOINT}"
    )
    docker(["exec", container, "sh", "-c", script], "user kserve and permissions")
    path = f"PATH={venv}/bin:{node.PATH_ENV}"
    # The server: its imports. The storage initializer: run without arguments it imports
    # what it downloads with, then prints its usage (exit 0 up to v0.16, 1 from v0.17).
    for check, proof in (
        (["python", "-c", "import sklearnserver, joblib, sklearn"], None),
        ([STORAGE_ENTRYPOINT], "Usage: initializer-entrypoint"),
    ):
        what = f"serving image of {env.release}: `{' '.join(check)}` as user {SERVING_USER}"
        result = docker_cli.docker(
            ["exec", "-u", SERVING_USER, "-e", path, "-w", "/tmp", container, *check],
            what,
            error=ImageBuildFailed,
            timeout=300,
            check=False,
        )
        if (proof is None and result.returncode != 0) or (proof is not None and proof not in result.stdout):
            raise ImageBuildFailed(failure_line(result, what))


def copy_python(container: str, prefix: Path, *also: Path) -> None:
    """This machine's interpreter at ``prefix`` (its standard library, less ``_PYTHON_EXCLUDES``)
    and the directories ``also`` into ``container``, each at its own absolute path."""
    excludes = [f"--exclude={prefix.relative_to('/')}/lib/python*/{name}" for name in _PYTHON_EXCLUDES]
    excludes.append("--exclude=__pycache__")
    paths = [str(path.relative_to("/")) for path in (prefix, *also)]
    node.docker_stream(
        ["cp", "-", f"{container}:/"],
        f"Python {prefix}{''.join(f' and {path}' for path in also)} into {container}",
        ["tar", "-C", "/", "-c", *excludes, *paths],
    )


def commit_image(container: str, recipe: ImageRecipe, changes: list[str]) -> None:
    """``docker commit`` ``container`` as ``recipe``'s image with ``changes`` and its recipe label
    (the image it replaces removed)."""
    args = ["commit"]
    for change in [*changes, f"LABEL {RECIPE_LABEL}={recipe.digest()}"]:
        args += ["--change", change]
    previous = docker_cli.image_id(recipe.name)
    docker([*args, container, recipe.name], f"image {recipe.name}")
    node.drop_replaced(recipe.name, previous)
    log.info("built %s", recipe.name)


def iris_model_path(image: str) -> str | None:
    """Where the sklearnserver image built here holds the iris model (its label), or None."""
    label = docker_cli.image_label(image, IRIS_MODEL_LABEL)
    return label if label is not None and label.startswith("/") else None
