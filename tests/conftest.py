"""Fixtures shared by the tests of e2e/ (the harness's own pytest plugin is e2e/plugin.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client as k8s_client
from real_cluster import real_control_plane
from release_files import SessionReleaseFiles, start_session

from e2e.local.controlplane import ControlPlane


@pytest.fixture(scope="session", autouse=True)
def release_files(tmp_path_factory: pytest.TempPathFactory) -> SessionReleaseFiles:
    """Release manifests through the harness's resolver (offline directory, cache, download).

    Autouse so that it is built from the environment the session started with, before any
    test sandboxes ``HOME`` or the cache. A file none of them has skips the test (fails it
    with ``CI=true``); see ``release_files.py``.
    """
    return start_session(tmp_path_factory.mktemp("release-manifest-lock") / "release-manifests.lock.json")


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    """A real etcd + kube-apiserver per test module (a module may override it)."""
    with real_control_plane() as plane:
        yield plane


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane) -> Iterator[k8s_client.ApiClient]:
    """An admin client of the module's control plane."""
    with control_plane.api_client() as client:
        yield client
