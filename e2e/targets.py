"""Value types shared by the cluster providers and the code that drives them.

Neutral ground: ``e2e.cluster`` (what a cluster is) and ``e2e.kserve`` (what KServe installs
on it) both use these, and neither has to import the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceTarget:
    """A Service port the harness wants to reach from the test process."""

    namespace: str
    name: str
    port: int
