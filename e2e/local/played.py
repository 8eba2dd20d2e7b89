"""The containers the local provider plays as processes, and how a pod's network is mapped.

Containers of one pod share a network namespace: a proxy's ``--upstream=http://127.0.0.1:8080/``
reaches the manager of the same pod because the manager listens on port 8080 there. Here
every played process listens on a free loopback port instead, so each ``PlayedContainer``
keeps the map "port in the pod -> address of the process"; ``pod_upstream`` uses it to
point a proxy's upstream at the process that plays the container it names, and leaves any
other upstream exactly as the Deployment says.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Runner(Protocol):
    """What plays a container: a proxy, a manager or the manager's stand-in."""

    remap_notes: list[str]

    @property
    def alive(self) -> bool: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def address(self) -> str: ...
    def logs(self) -> str: ...
    def tail_lines(self, lines: int = 15) -> list[str]: ...
    def stop(self) -> object: ...
    def terminate(self) -> None: ...


@dataclass
class PlayedContainer:
    """A container of a Deployment that the provider runs as a local process."""

    namespace: str
    deployment: str
    container: str
    image: str
    args: tuple[str, ...]
    pod_labels: dict[str, str]
    container_ports: dict[str | int, int]  # port name and number -> the original port
    runner: Runner
    role: str  # "proxy", "manager" or "stand-in"
    # The container's ports (as the pod spec and args say) -> where the process listens.
    addresses: dict[int, str] = field(default_factory=dict)
    previous_logs: str = ""

    @classmethod
    def of(cls, deployment: Any, container: Any, args: tuple[str, ...], runner: Runner, role: str) -> PlayedContainer:
        """The record of ``container`` of ``deployment`` (API objects) played by ``runner``."""
        ports: dict[str | int, int] = {}
        for port in container.ports or []:
            ports[port.container_port] = port.container_port
            if port.name:
                ports[port.name] = port.container_port
        return cls(
            namespace=deployment.metadata.namespace,
            deployment=deployment.metadata.name,
            container=container.name,
            image=container.image,
            args=args,
            pod_labels=dict(deployment.spec.template.metadata.labels or {}),
            container_ports=ports,
            runner=runner,
            role=role,
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.deployment, self.container)

    @property
    def pod(self) -> tuple[str, str]:
        return (self.namespace, self.deployment)


@dataclass
class SyncReport:
    started: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def pod_upstream(played: Iterable[PlayedContainer], pod: tuple[str, str], upstream: str | None) -> str | None:
    """``upstream`` pointed at the process that plays the container of ``pod`` listening on
    its loopback port (the manager's metrics address), or None: then the proxy keeps its
    upstream exactly as the Deployment says (a closed port stays closed)."""
    if not upstream:
        return None
    parts = urllib.parse.urlsplit(upstream)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.hostname not in LOOPBACK_HOSTS or port is None:
        return None
    for container in played:
        if container.pod == pod and port in container.addresses:
            return urllib.parse.urlunsplit(parts._replace(netloc=container.addresses[port]))
    return None


_LOOPBACK_PORT = re.compile(r"(127\.0\.0\.1|localhost):\d+")


def port_free(remap_note: str) -> str:
    """``--flag: OLD -> NEW`` with NEW's port dropped, so notes repeat identically per cell."""
    flag_and_old, _, new = remap_note.partition(" -> ")
    if not new:
        return remap_note
    if "upstream" in flag_and_old:
        return f"{flag_and_old} -> {_LOOPBACK_PORT.sub('<the process playing that port>', new, count=1)}"
    return f"{flag_and_old} -> a loopback port"
