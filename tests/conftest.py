"""Fixtures shared by the tests of e2e/ (the harness's own pytest plugin is e2e/plugin.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from helpers.live_kserve import PUSHED, Releases
from helpers.real_cluster import real_control_plane
from helpers.registry_server import (
    RunningRegistry,
    registry_serving,
)
from helpers.release_files import SessionReleaseFiles, start_session
from hypothesis import HealthCheck, settings
from kubernetes import client as k8s_client

from e2e.local.controlplane import ControlPlane
from e2e.manifests import ReleaseFiles

# Property tests on a busy 2-core machine: a shared CI runner may pause this process for
# seconds, which says nothing about the code. So: no per-example deadline, no "input
# generation is slow" health check, a fixed example budget (the same work on every run) and
# no example database (nothing carried between runs or written into the checkout). A failure
# still prints its falsifying example and the @reproduce_failure line to replay it.
settings.register_profile(
    "steady",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=100,
    database=None,
    print_blob=True,
)
# More examples, to hunt for bugs on purpose: HYPOTHESIS_PROFILE=explore nox -s tests -- -k round_trip
settings.register_profile("explore", parent=settings.get_profile("steady"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "steady"))


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


# -- a live cluster with KServe installed (tests/helpers/live_kserve.py): preflight and migrate --------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with registry_serving(tmp_path_factory.mktemp("registry"), PUSHED) as running:
        yield running


@pytest.fixture(scope="module")
def mirrors(registry: RunningRegistry) -> list[str]:
    """--registry-mirror options that send every image of both releases to the local registry."""
    rules = {
        "docker.io/kserve": "kserve",
        "quay.io/brancz": "brancz",
        "gcr.io/kubebuilder": "kubebuilder",
    }
    options = []
    for source, path in rules.items():
        options += ["--registry-mirror", f"{source}={registry.host}/{path}"]
    return options


@pytest.fixture(scope="module")
def kubeconfig(control_plane: ControlPlane) -> str:
    return str(control_plane.kubeconfig)


@pytest.fixture(scope="module")
def releases(api: k8s_client.ApiClient, release_files: ReleaseFiles) -> Releases:
    return Releases(api, release_files)
