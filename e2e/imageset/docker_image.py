"""Build a Docker image from files on disk, labelled with its recipe; reuse it while the recipe holds.

Images are made with ``docker import`` (one layer from a tar stream), which needs no builder
and no base image to pull: what the image holds is exactly the files given. The recipe (what
went in: binaries' sha256, versions, the entrypoint) is hashed into the label
``io.kserve-compat.recipe``; an image whose label matches is not built again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e import docker_cli
from e2e.errors import HarnessError

log = logging.getLogger(__name__)

RECIPE_LABEL = "io.kserve-compat.recipe"
DOCKER_TIMEOUT_SECONDS = 15 * 60
DOCKER_HINT = "the image set is built with a Docker engine"


class ImageBuildFailed(HarnessError):
    """Docker refused to create or tag an image; the message holds its last line."""


@dataclass(frozen=True)
class ImageRecipe:
    """What an image is made of; ``digest()`` is what its label records."""

    references: tuple[str, ...]  # every tag the image gets; the first is its name
    inputs: Mapping[str, Any]  # versions, sha256s of files, anything that changes the image

    @property
    def name(self) -> str:
        return self.references[0]

    def digest(self) -> str:
        text = json.dumps({"references": list(self.references), "inputs": dict(self.inputs)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class ImageContent:
    """The files of an image (path inside the image -> file on disk, or bytes) and its config."""

    files: dict[str, Path | bytes] = field(default_factory=dict)
    entrypoint: Sequence[str] = ()
    user: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    mode: Mapping[str, int] = field(default_factory=dict)  # path inside the image -> mode


def docker(
    args: Sequence[str], what: str, *, input_bytes: bytes | None = None, timeout: float = DOCKER_TIMEOUT_SECONDS
) -> str:
    """``docker ARGS``'s output; ImageBuildFailed with docker's last line when it fails."""
    return docker_cli.docker(
        args, what, error=ImageBuildFailed, input_bytes=input_bytes, timeout=timeout, hint=DOCKER_HINT
    ).stdout


def recorded_recipe(reference: str) -> str | None:
    """The recipe digest an image carries, or None when there is no such image (or label)."""
    return docker_cli.image_label(reference, RECIPE_LABEL)


def is_current(recipe: ImageRecipe) -> bool:
    """Every reference of ``recipe`` exists and carries its digest."""
    digest = recipe.digest()
    return all(recorded_recipe(reference) == digest for reference in recipe.references)


def add_parent_directories(archive: tarfile.TarFile, name: str, made: set[str]) -> None:
    """Directory entries (root's, 0755) for the parents of ``name`` not in ``made`` yet:
    a tar read by ``docker import`` gets its directories before their files."""
    parts = name.split("/")
    for depth in range(1, len(parts)):
        directory = "/".join(parts[:depth])
        if directory not in made:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(info)
            made.add(directory)


def _tar_stream(content: ImageContent) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        made: set[str] = set()
        for inner, source in sorted(content.files.items()):
            name = inner.strip("/")
            add_parent_directories(archive, name, made)
            data = source if isinstance(source, bytes) else source.read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            default_mode = 0o755 if isinstance(source, Path) and source.stat().st_mode & 0o111 else 0o644
            info.mode = content.mode.get(inner, default_mode)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_image(recipe: ImageRecipe, content: ImageContent) -> str:
    """Create the image of ``recipe`` from ``content`` unless it is current; return its name."""
    if is_current(recipe):
        log.info("image %s is current (recipe %s)", recipe.name, recipe.digest()[:12])
        return recipe.name
    changes = [f"LABEL {RECIPE_LABEL}={recipe.digest()}"]
    if content.entrypoint:
        changes.append(f"ENTRYPOINT {json.dumps(list(content.entrypoint))}")
    if content.user:
        changes.append(f"USER {content.user}")
    for key, value in sorted(content.env.items()):
        changes.append(f"ENV {key}={value}")
    if content.workdir:
        changes.append(f"WORKDIR {content.workdir}")
    args = ["import"]
    for change in changes:
        args += ["--change", change]
    log.info("building image %s (%d files)", recipe.name, len(content.files))
    docker([*args, "-", recipe.name], f"image {recipe.name}", input_bytes=_tar_stream(content))
    for reference in recipe.references[1:]:
        docker(["tag", recipe.name, reference], f"image {reference}")
    return recipe.name


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
