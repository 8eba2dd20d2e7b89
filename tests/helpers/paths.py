"""Where the tests find the repository and their own recorded data."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Recorded outputs of real tools (kind, docker, kube-rbac-proxy --help), read by the tests.
TEST_DATA = REPO / "tests" / "data"
