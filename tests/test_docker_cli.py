"""The docker client's questions about an image and its removals (e2e.docker_cli), asked of a
stand-in ``docker`` that answers as the real one does (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e import docker_cli
from e2e.errors import EnvironmentMissing, HarnessError

IMAGE_ID = "sha256:" + "a" * 64

# Holds one image, present:1, labelled io.kserve-compat.recipe=abc; an image a container uses
# cannot be removed; every call is recorded.
STAND_IN = f"""#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls"
case "$1 $2" in
"image inspect")
    format="$4" image="$5"
    if [ "$image" != present:1 ]; then echo "Error: No such image: $image" >&2; exit 1; fi
    case "$format" in
    "{{{{.Id}}}}") echo {IMAGE_ID} ;;
    *io.kserve-compat.recipe*) echo abc ;;
    *) echo "<no value>" ;;
    esac ;;
"rmi busy:1")
    echo "Error response from daemon: conflict: unable to remove repository reference \\"busy:1\\" (must force)" >&2
    exit 1 ;;
"rmi "*|"rm "*) ;;
*) echo "docker: '$1' is not a docker command." >&2; exit 1 ;;
esac
"""


@pytest.fixture
def client(tmp_path: Path) -> str:
    path = tmp_path / "docker"
    path.write_text(STAND_IN)
    path.chmod(0o755)
    return str(path)


def calls(client: str) -> list[str]:
    return (Path(client).parent / "calls").read_text().splitlines()


def test_an_image_the_engine_holds(client: str) -> None:
    assert docker_cli.image_exists("present:1", client=client)
    assert docker_cli.image_id("present:1", client=client) == IMAGE_ID
    assert docker_cli.image_label("present:1", "io.kserve-compat.recipe", client=client) == "abc"
    assert docker_cli.image_label("present:1", "other", client=client) is None
    assert calls(client)[0] == "image inspect --format {{.Id}} present:1"


def test_an_image_the_engine_does_not_hold(client: str) -> None:
    assert not docker_cli.image_exists("absent:1", client=client)
    assert docker_cli.image_id("absent:1", client=client) is None
    assert docker_cli.image_label("absent:1", "io.kserve-compat.recipe", client=client) is None


def test_removing_an_image_says_why_it_stayed(client: str) -> None:
    assert docker_cli.remove_image("old:1", client=client) is None
    assert docker_cli.remove_image("busy:1", client=client) == (
        'conflict: unable to remove repository reference "busy:1" (must force)'
    )


def test_removing_a_container_forces_it_and_its_volumes(client: str) -> None:
    docker_cli.remove_container("build-1", client=client)
    assert calls(client) == ["rm -f -v build-1"]


def test_a_failed_command_is_one_line_of_the_callers_type(client: str) -> None:
    class Refused(HarnessError):
        pass

    with pytest.raises(
        Refused, match=r"^the thing: docker frobnicate exited 1: 'frobnicate' is not a docker command\.$"
    ):
        docker_cli.docker(["frobnicate"], "the thing", client=client, error=Refused)


def test_without_a_docker_client(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentMissing, match=r"no-docker: not found; build with an engine$"):
        docker_cli.docker(["info"], "info", client=str(tmp_path / "no-docker"), hint="build with an engine")
    with pytest.raises(EnvironmentMissing):
        docker_cli.image_exists("present:1", client=str(tmp_path / "no-docker"))
