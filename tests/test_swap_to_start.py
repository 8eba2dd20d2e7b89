"""A migration or rollback whose own image cannot run here skips before the swap to its start.

In the 1.34 grid, each v0.14+ group's migration to k8s-v0.13.1 (a version the Go module
proxy refuses) first rolled the controller out to the shipped image (about 30 s), then
found the frozen copy missing and skipped: the check now comes first.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from e2e.errors import WorkloadUnavailable
from e2e.manifests import ReleaseFiles, load_release_manifest
from e2e.matrix import load_matrix
from e2e.steps import swap_to_start


class Provider:
    """Has only what the local image set holds; records what it was asked to load."""

    def __init__(self, present: set[str]) -> None:
        self.present = present
        self.loaded: list[str] = []

    def load_images(self, images: list[str]) -> None:
        for image in images:
            if image not in self.present:
                raise WorkloadUnavailable(f"{image}: not in the local image set")
            self.loaded.append(image)


def cell_run(alias: str, provider: Provider, release_files: ReleaseFiles) -> Any:
    matrix = load_matrix()
    cell = matrix.cell(f"kserve-v0.14.0--{alias}--k8s-1.34")
    manifest = load_release_manifest(cell.release, release_files)
    cluster = SimpleNamespace(manifest=manifest, provider=provider)
    harness = SimpleNamespace(matrix=matrix, mirrors=None)
    return SimpleNamespace(cell=cell, harness=harness, group_cluster=lambda: cluster)


def test_a_change_to_an_image_not_here_skips_before_any_swap(
    release_files: ReleaseFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    swaps: list[str] = []
    monkeypatch.setattr(swap_to_start, "swap_to", lambda run, image: swaps.append(image))
    provider = Provider({"quay.io/brancz/kube-rbac-proxy:v0.18.0"})
    run = cell_run("k8s-v0.13.1", provider, release_files)
    with pytest.raises(WorkloadUnavailable, match=re.escape("registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1")):
        swap_to_start.act(run)
    assert swaps == []


def test_a_change_to_an_image_here_loads_it_then_swaps_to_the_start(
    release_files: ReleaseFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    swaps: list[str] = []
    monkeypatch.setattr(swap_to_start, "swap_to", lambda run, image: swaps.append(image))
    provider = Provider({"quay.io/brancz/kube-rbac-proxy:v0.22.1"})
    swap_to_start.act(cell_run("quay-v0.22.1", provider, release_files))
    assert provider.loaded == ["quay.io/brancz/kube-rbac-proxy:v0.22.1"]
    assert swaps == ["quay.io/brancz/kube-rbac-proxy:v0.18.0"]  # what v0.14.0 ships
