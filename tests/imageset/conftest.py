"""Fixtures of the image set's unit tests: the stand-in world of ``helpers.imageset_world``."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.imageset_world import FakeWorld, install_world, write_manifest_files

from e2e.manifests import ReleaseFiles


@pytest.fixture()
def manifest_files(tmp_path: Path) -> ReleaseFiles:
    """An offline manifest directory with releases shipping the retired and the current proxy."""
    return write_manifest_files(tmp_path)


@pytest.fixture()
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeWorld:
    """binaries, docker and the node image builder replaced by recorders (undone by monkeypatch)."""
    return install_world(tmp_path, monkeypatch)
