"""Waiting for a Deployment rollout by watching it, failing fast on broken pods.

A rollout is complete when the controller has observed the newest generation and every
replica is updated and available, with no old replica left. A pod stuck in
ImagePullBackOff never changes the Deployment, so between watch windows we ask the
caller's ``failure_evidence`` probe (pod reasons, messages, log tails) and stop at once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import watch

from e2e.errors import HarnessError
from e2e.labels import label_selector

log = logging.getLogger(__name__)

IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"})
# A pull that never reached a registry's answer (the network, a registry or a mirror down):
# the image may well exist, so it is not "unavailable". A registry's own answers (404
# NotFound, 401/403 denied) do not match.
_REGISTRY_UNREACHED = re.compile(
    r"connection refused|no such host|i/o timeout|connection reset|network is unreachable|TLS handshake timeout",
    re.IGNORECASE,
)


def registry_unreached(text: str) -> bool:
    """Whether a pull error says the registry was never reached (see ``_REGISTRY_UNREACHED``)."""
    return bool(_REGISTRY_UNREACHED.search(text))


def node_out_of_disk(text: str) -> bool:
    """Whether a pull error says the node's own disk is full (containerd's ``no space left
    on device``): the image may well exist; the host needs room."""
    return "no space left on device" in text.lower()


class RolloutFailed(HarnessError):
    """The rollout cannot complete; ``evidence`` holds the pod reasons and log lines."""

    def __init__(self, message: str, evidence: list[str] | None = None) -> None:
        super().__init__(message)
        self.evidence = evidence or []


class ImageUnavailable(RolloutFailed):
    """A container image cannot be pulled (ImagePullBackOff, ErrImagePull, ...)."""


@dataclass(frozen=True)
class RolloutState:
    generation: int
    observed_generation: int
    replicas: int
    updated: int
    available: int
    total: int  # pods of every ReplicaSet, old ones included

    @classmethod
    def of(cls, deployment: Any) -> RolloutState:
        status = deployment.status
        return cls(
            generation=deployment.metadata.generation or 0,
            observed_generation=status.observed_generation or 0,
            replicas=deployment.spec.replicas if deployment.spec.replicas is not None else 1,
            updated=status.updated_replicas or 0,
            available=status.available_replicas or 0,
            total=status.replicas or 0,
        )

    @property
    def complete(self) -> bool:
        return (
            self.observed_generation >= self.generation
            and self.updated == self.replicas
            and self.available == self.replicas
            and self.total == self.replicas
        )

    def __str__(self) -> str:
        return (
            f"generation {self.observed_generation}/{self.generation}, updated {self.updated}/{self.replicas}, "
            f"available {self.available}/{self.replicas}, total pods {self.total}"
        )


def wait_for_rollout(
    api: k8s_client.ApiClient,
    namespace: str,
    name: str,
    *,
    timeout_s: float = 300,
    failure_evidence: Callable[[], list[str] | None] | None = None,
    window_s: int = 5,
) -> RolloutState:
    """Block until the Deployment's rollout completes; raise with evidence when it cannot.

    ``failure_evidence`` returns lines describing broken pods (or None when none are); a
    line mentioning an image-pull reason turns the failure into ``ImageUnavailable``.
    """
    apps = k8s_client.AppsV1Api(api)
    deadline = time.monotonic() + timeout_s
    last: RolloutState | None = None
    last_logged = 0.0
    while True:
        deployment = apps.read_namespaced_deployment(name, namespace)
        last = RolloutState.of(deployment)
        if last.complete:
            log.info("deployment %s/%s rolled out (%s)", namespace, name, last)
            return last
        _raise_if_broken(namespace, name, failure_evidence)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RolloutFailed(
                f"deployment {namespace}/{name} did not roll out in {timeout_s:.0f}s (last seen: {last})"
            )
        if time.monotonic() - last_logged > 15:
            log.info("waiting for deployment %s/%s to roll out (last seen: %s)", namespace, name, last)
            last_logged = time.monotonic()
        # Watch from the version we just read; any status change ends the window early.
        stream = watch.Watch()
        for event in stream.stream(
            apps.list_namespaced_deployment,
            namespace,
            field_selector=f"metadata.name={name}",
            resource_version=deployment.metadata.resource_version,
            timeout_seconds=max(1, min(window_s, int(remaining))),
        ):
            if RolloutState.of(event["object"]).complete:
                stream.stop()
            else:
                break  # re-read and re-check pods for failure evidence
        stream.stop()


REVISION = "deployment.kubernetes.io/revision"


def new_pods_selector(api: k8s_client.ApiClient, namespace: str, name: str) -> str | None:
    """The label selector of the pods the Deployment's rollout is bringing up (its newest
    ReplicaSet's ``pod-template-hash``), or None while the controller has not yet observed
    the latest change. Pods of an earlier, stuck rollout (an image that cannot be pulled) are
    not this rollout's failure: a rollout away from them is exactly what fixes them."""
    apps = k8s_client.AppsV1Api(api)
    deployment = apps.read_namespaced_deployment(name, namespace)
    if (deployment.status.observed_generation or 0) < (deployment.metadata.generation or 0):
        return None
    revision = (deployment.metadata.annotations or {}).get(REVISION)
    selector = label_selector(deployment.spec.selector)
    for replica_set in apps.list_namespaced_replica_set(namespace, label_selector=selector).items:
        owners = replica_set.metadata.owner_references or []
        if not any(owner.uid == deployment.metadata.uid for owner in owners):
            continue
        if (replica_set.metadata.annotations or {}).get(REVISION) == revision:
            template_hash = (replica_set.metadata.labels or {}).get("pod-template-hash")
            return f"{selector},pod-template-hash={template_hash}" if template_hash else selector
    return None


def _raise_if_broken(namespace: str, name: str, failure_evidence: Callable[[], list[str] | None] | None) -> None:
    if failure_evidence is None:
        return
    evidence = failure_evidence()
    if not evidence:
        return
    summary = evidence[0]
    if any(reason in line for line in evidence for reason in IMAGE_PULL_REASONS):
        raise ImageUnavailable(f"deployment {namespace}/{name}: image cannot be pulled: {summary}", evidence)
    raise RolloutFailed(f"deployment {namespace}/{name}: pods are failing: {summary}", evidence)
