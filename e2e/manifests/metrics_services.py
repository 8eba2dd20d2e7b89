"""Every Service of a release that publishes a controller's metrics, read from its manifest.

A Service port publishes metrics when the container port it targets (by name or number,
through the pod template its selector matches) is where a container of the release listens
for them, as its own arguments say:

- kube-rbac-proxy's ``--secure-listen-address=HOST:PORT`` (RBAC-guarded, TLS), the proxy
  KServe's controller carries;
- a manager's ``--metrics-addr`` / ``--metrics-bind-address=HOST:PORT`` (v0.16's llmisvc
  controller serves its metrics itself, behind controller-runtime's authn/authz filter).

A listener bound to a loopback host answers inside its pod only: a Service, which sends
traffic to the pod's address, reaches nothing there. That is read here; whether a cluster
agrees is what the ``metrics-via-*`` checks see.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from e2e.labels import selects
from e2e.manifests.release import pod_spec, pod_template_labels

PROXY_LISTEN_FLAGS = ("--secure-listen-address",)
MANAGER_METRICS_FLAGS = ("--metrics-addr", "--metrics-bind-address")


@dataclass(frozen=True)
class MetricsService:
    """One Service port and the metrics listener behind it."""

    namespace: str
    service: str
    port: int
    deployment: str
    container: str
    flag: str  # the argument that sets the listener, e.g. --metrics-addr
    listen: str  # its value, HOST:PORT as written
    one_of_several_ports: bool = False  # the Service has more than one port on a metrics listener

    @property
    def behind_proxy(self) -> bool:
        return self.flag in PROXY_LISTEN_FLAGS

    @property
    def loopback_only(self) -> bool:
        """The listener's host is a loopback address (or "localhost"): nothing outside the pod reaches it."""
        host = self.listen.rpartition(":")[0].strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # "" or 0.0.0.0-like: every address of the pod

    def describe(self) -> str:
        return (
            f"Service {self.namespace}/{self.service}:{self.port} -> Deployment {self.deployment}, "
            f"container {self.container} ({self.flag}={self.listen})"
        )


def metrics_services(documents: Sequence[Mapping[str, Any]]) -> list[MetricsService]:
    """Each Service port of ``documents`` that reaches a container's metrics listener, in
    manifest order."""
    deployments = [d for d in documents if d.get("kind") == "Deployment"]
    found: list[MetricsService] = []
    for service in (d for d in documents if d.get("kind") == "Service"):
        metadata = service.get("metadata") or {}
        namespace = str(metadata.get("namespace") or "")  # "" and absent are one (the default)
        spec = service.get("spec") or {}
        selector = {str(k): str(v) for k, v in (spec.get("selector") or {}).items()}
        if not selector:
            continue  # a Service without a selector has no pods behind it
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for deployment in deployments:
                if str((deployment.get("metadata") or {}).get("namespace") or "") != namespace:
                    continue
                if not selects(selector, pod_template_labels(deployment)):
                    continue
                for container in pod_spec(deployment).get("containers") or []:
                    listener = _listener_on(container, target)
                    if listener is not None:
                        flag, listen = listener
                        found.append(
                            MetricsService(
                                namespace=namespace,
                                service=str(metadata.get("name")),
                                port=int(port["port"]),
                                deployment=str(deployment["metadata"]["name"]),
                                container=str(container.get("name")),
                                flag=flag,
                                listen=listen,
                            )
                        )
    ports_of = Counter((m.namespace, m.service) for m in found)
    return [replace(m, one_of_several_ports=ports_of[(m.namespace, m.service)] > 1) for m in found]


def _listener_on(container: Mapping[str, Any], target: object) -> tuple[str, str] | None:
    """(flag, HOST:PORT) of the metrics listener on the container port ``target``, if any."""
    if isinstance(target, str):
        named = [p for p in container.get("ports") or [] if p.get("name") == target]
        if not named:
            return None
        number = int(named[0]["containerPort"])
    else:
        number = int(str(target))
    words = [str(word) for word in [*(container.get("command") or []), *(container.get("args") or [])]]
    for place, word in enumerate(words):
        flag, equals, value = word.partition("=")
        if not equals and place + 1 < len(words):
            value = words[place + 1]  # `--metrics-addr 127.0.0.1:8443`, two words
        if flag in (*PROXY_LISTEN_FLAGS, *MANAGER_METRICS_FLAGS) and value.rpartition(":")[2] == str(number):
            return flag, value
    return None
