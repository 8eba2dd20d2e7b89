"""The docker client as the harness calls it: ``docker ARGS`` through ``e2e.command``, and the
one place that asks the engine about an image (is it there, its id, a label) or removes a
container or an image.

``client`` is the docker program to run (``--docker`` of the kind tier; ``docker`` on PATH
otherwise).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from typing import IO

from e2e.command import DEFAULT_TIMEOUT_S, last_lines, run
from e2e.errors import HarnessError

log = logging.getLogger(__name__)

DOCKER = "docker"
INSPECT_TIMEOUT_S = 60.0
REMOVE_TIMEOUT_S = 120.0


def docker(
    args: Sequence[str],
    what: str,
    *,
    client: str = DOCKER,
    error: type[HarnessError] = HarnessError,
    timeout: float = DEFAULT_TIMEOUT_S,
    input_bytes: bytes | None = None,
    stdin: IO[bytes] | None = None,
    check: bool = True,
    hint: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``docker ARGS`` (see ``e2e.command.run``): a failure is one ``error`` line with docker's
    last line, a missing client is ``EnvironmentMissing`` (with ``hint``)."""
    return run(
        [client, *args],
        what,
        error=error,
        timeout=timeout,
        input_bytes=input_bytes,
        stdin=stdin,
        check=check,
        hint=hint,
    )


def inspect_image(image: str, template: str, *, client: str = DOCKER) -> str | None:
    """``docker image inspect --format TEMPLATE IMAGE``'s answer, stripped; None when the
    engine holds no such image (by that exact reference)."""
    result = docker(
        ["image", "inspect", "--format", template, image],
        f"docker image inspect {image}",
        client=client,
        timeout=INSPECT_TIMEOUT_S,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def image_exists(image: str, *, client: str = DOCKER) -> bool:
    """Whether the local engine holds ``image`` (by the exact reference)."""
    return inspect_image(image, "{{.Id}}", client=client) is not None


def image_id(image: str, *, client: str = DOCKER) -> str | None:
    """The image's Id (``sha256:...``, its config digest), or None when there is no such image."""
    return inspect_image(image, "{{.Id}}", client=client) or None


def image_label(image: str, name: str, *, client: str = DOCKER) -> str | None:
    """The value of label ``name`` on ``image``, or None when there is no such image or label."""
    label = inspect_image(image, f'{{{{ index .Config.Labels "{name}" }}}}', client=client)
    return label if label and label != "<no value>" else None


def remove_container(container: str, *, client: str = DOCKER) -> None:
    """``docker rm -f -v``: a container the harness made goes, with its anonymous volumes;
    when the engine refuses, the log says why (there is nothing else to do about it)."""
    result = docker(
        ["rm", "-f", "-v", container], f"remove {container}", client=client, timeout=REMOVE_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        log.warning("docker rm %s: %s", container, last_lines(result.stderr))


def remove_image(image: str, *, client: str = DOCKER) -> str | None:
    """``docker rmi IMAGE``: None once removed, else docker's reason (an image still used by a
    container stays)."""
    result = docker(["rmi", image], f"remove {image}", client=client, timeout=REMOVE_TIMEOUT_S, check=False)
    return None if result.returncode == 0 else last_lines(result.stderr)
