"""The kind tier's Prometheus image: the local tier's binary and the libraries it links."""

from __future__ import annotations

import subprocess

import pytest

from e2e import binaries
from e2e.availability import unavailable
from e2e.errors import HarnessError
from e2e.imageset import prometheus as prometheus_image
from e2e.local import prometheus as local_prometheus

LDD = """\
\tlinux-vdso.so.1 (0x00007ffd3b5f2000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3bd9f0d000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f3bda102000)
"""


def test_the_files_the_loader_maps_are_read_off_ldd() -> None:
    assert prometheus_image.shared_libraries(LDD) == ["/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
    assert prometheus_image.shared_libraries("\tstatically linked\n") == []


def test_the_version_is_read_off_prometheus_itself() -> None:
    output = "prometheus, version 2.42.0+ds (branch: debian/sid, revision: 2.42.0+ds-5+deb12u1)\n  build user: x\n"
    assert prometheus_image.prometheus_version(output) == "2.42.0"
    with pytest.raises(HarnessError, match="unexpected output"):
        prometheus_image.prometheus_version("Usage: prometheus [<flags>]")


def test_the_image_runs_the_local_binary() -> None:
    if local_prometheus.locate() is None:
        unavailable(f"no prometheus binary: {local_prometheus.INSTALL_HINT}")
    if reason := binaries.docker_engine_unreachable_reason():
        unavailable(reason)
    reference = prometheus_image.build_prometheus_image()
    assert reference.startswith(f"{prometheus_image.REPOSITORY}:")
    ran = subprocess.run(["docker", "run", "--rm", reference, "--version"], capture_output=True, text=True, check=False)
    assert ran.returncode == 0, ran.stderr
    assert (ran.stdout + ran.stderr).startswith(f"prometheus, version {reference.rsplit(':', 1)[1]}")
    user = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Config.User}}", reference], capture_output=True, text=True
    )
    assert user.stdout.strip() == prometheus_image.NOBODY
    # current: a second build reuses the image
    assert prometheus_image.build_prometheus_image() == reference
