"""A real control plane for the tests that need one (not a fixture: modules scope it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from e2e.availability import in_ci, unavailable
from e2e.errors import HarnessError
from e2e.local.controlplane import ControlPlane, resolve_binaries


@contextlib.contextmanager
def real_control_plane(*, with_controllers: bool = False) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver (+ controllers and kwok) from the cached binaries.

    A missing binary skips the test locally and fails it in CI (where it is built).
    """
    try:
        binaries = resolve_binaries(with_controllers=with_controllers, build=in_ci())
    except HarnessError as error:
        unavailable(str(error))
    with ControlPlane(binaries, with_controllers=with_controllers) as plane:
        yield plane
