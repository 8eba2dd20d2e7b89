"""Thaw what cgroup v1's freezer left frozen inside a container, so the engine can kill it.

On cgroup v1 hosts (ours), runc freezes a container's cgroup while it sets it up. When a
kind node is torn down in the middle of that (Ctrl-C during a cell, while the kubelet starts
a pod), a pod's cgroup inside the node can stay FROZEN with its ``runc init`` asleep in the
kernel; SIGKILL cannot reach it, and ``docker rm -f`` of the node fails with "tried to kill
container, but did not receive an exit event" (seen on our machines). Writing THAWED to
those cgroups lets the kill through.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

FREEZER_ROOT = Path("/sys/fs/cgroup/freezer")
_FROZEN = ("FROZEN", "FREEZING")


def container_freezer_dirs(container_id: str, root: Path = FREEZER_ROOT) -> list[Path]:
    """Where a Docker container's freezer cgroup lives (cgroupfs and systemd drivers)."""
    candidates = [root / "docker" / container_id, root / "system.slice" / f"docker-{container_id}.scope"]
    return [path for path in candidates if path.is_dir()]


def thaw(container_id: str, root: Path = FREEZER_ROOT) -> list[Path]:
    """Thaw every frozen cgroup of the container (its own and those nested in it); returns
    the cgroups it thawed (none on cgroup v2, where there is no such tree)."""
    thawed: list[Path] = []
    for base in container_freezer_dirs(container_id, root):
        for state in sorted(base.rglob("freezer.state")):
            try:
                if state.read_text().strip() not in _FROZEN:
                    continue
                state.write_text("THAWED")
            except OSError as exc:  # gone meanwhile, or not ours to write
                log.debug("could not thaw %s: %s", state.parent, exc)
                continue
            thawed.append(state.parent)
    return thawed
