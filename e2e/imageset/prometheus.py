"""The kind tier's Prometheus image: the same Prometheus the local tier runs, in an image.

The local tier runs Debian's ``prometheus`` package (see ``e2e/local/prometheus.py``); the
kind tier runs that very binary, packed with the shared libraries it links (``ldd``) into
an image tagged ``kserve-compat.local/prometheus:<version>``. The ``.local`` registry name
answers nowhere else: the run pushes the image into its own mirror of that host, from which
the kubelet pulls it.
"""

from __future__ import annotations

import re
from pathlib import Path

from e2e.command import run
from e2e.errors import HarnessError
from e2e.imageset.docker_image import ImageContent, ImageRecipe, build_image, file_sha256
from e2e.local import prometheus as local_prometheus

REPOSITORY = "kserve-compat.local/prometheus"
BINARY_IN_IMAGE = "/bin/prometheus"
NOBODY = "65534:65534"
_LDD_PATH = re.compile(r"(/\S+)\s+\(0x[0-9a-f]+\)\s*$")
_VERSION = re.compile(r"^prometheus, version (\d+\.\d+\.\d+)")


def shared_libraries(ldd_output: str) -> list[str]:
    """The files the dynamic loader maps, from ``ldd`` output (the vDSO has no file)."""
    found = []
    for line in ldd_output.splitlines():
        match = _LDD_PATH.search(line.strip())
        if match:
            found.append(match.group(1))
    return found


def prometheus_version(version_output: str) -> str:
    """``2.42.0`` from ``prometheus --version``'s first line."""
    match = _VERSION.match(version_output.strip())
    if not match:
        raise HarnessError(f"prometheus --version: unexpected output {version_output.strip()[:80]!r}")
    return match.group(1)


def build_prometheus_image() -> str:
    """The image of the local Prometheus binary (built unless current); its reference."""
    binary = local_prometheus.require()
    # Both streams are read: which one a tool answers on is not part of its interface.
    answer = run([binary, "--version"], "the Prometheus version", timeout=60)
    version = prometheus_version(answer.stdout + answer.stderr)
    linked = run(["ldd", binary], "the libraries Prometheus links", timeout=60)
    libraries = shared_libraries(linked.stdout + linked.stderr)
    files: dict[str, Path | bytes] = {BINARY_IN_IMAGE: binary}
    for library in libraries:
        files[library] = Path(library).resolve()  # the loader opens the name; store the file there
    files["/etc/passwd"] = (
        b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    )
    files["/etc/group"] = b"root:x:0:\nnogroup:x:65534:\n"
    recipe = ImageRecipe(
        (f"{REPOSITORY}:{version}",),
        {
            "binary_sha256": file_sha256(binary),
            "libraries": {name: file_sha256(Path(name).resolve()) for name in libraries},
            "user": NOBODY,
        },
    )
    content = ImageContent(files=files, entrypoint=[BINARY_IN_IMAGE], user=NOBODY, workdir="/prometheus")
    return build_image(recipe, content)
