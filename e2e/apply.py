"""Applying manifests to an API server: server-side apply, in dependency order.

Server-side apply because the InferenceService CRD is about 2 MB: client-side apply's
last-applied annotation would exceed the annotation size limit. CRDs go first and must be
Established before objects of their kinds are applied.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import dynamic, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from e2e.errors import HarnessError
from e2e.text import one_line

log = logging.getLogger(__name__)

FIELD_MANAGER = "kserve-compat"

# Kinds applied before others, in this order; everything else keeps manifest order.
_ORDER = [
    "CustomResourceDefinition",
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "Role",
    "ClusterRoleBinding",
    "RoleBinding",
    "ConfigMap",
    "Secret",
    "Service",
]


class ApplyError(HarnessError):
    """An object could not be applied; the message names it and the API's answer."""


@dataclass
class ApplyReport:
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # kinds the cluster does not serve

    def extend(self, other: ApplyReport) -> None:
        self.applied += other.applied
        self.skipped += other.skipped


def object_ref(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata", {})
    namespace = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{doc.get('kind', '?')}/{namespace + '/' if namespace else ''}{name}"


# Applied after everything else: an admission webhook nobody serves yet (failurePolicy
# Fail) would otherwise reject the objects that follow it.
_LAST = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


def ordered(documents: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Documents in apply order: CRDs, namespaces, RBAC, config, the rest, then webhooks."""
    docs = [d for d in documents if d and d.get("kind")]
    rank = {kind: i for i, kind in enumerate(_ORDER)}
    rank.update({kind: len(_ORDER) + 1 + i for i, kind in enumerate(_LAST)})
    return sorted(docs, key=lambda d: rank.get(d["kind"], len(_ORDER)))


class Applier:
    """Server-side apply through the dynamic client (one discovery cache per cluster)."""

    def __init__(self, api: k8s_client.ApiClient) -> None:
        self.api = api
        self.dynamic = dynamic.DynamicClient(api)

    def resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def apply(self, documents: Sequence[dict[str, Any]], *, skip_unknown_kinds: bool = False) -> ApplyReport:
        """Apply ``documents`` in dependency order; CRDs are waited for before the rest."""
        report = ApplyReport()
        docs = ordered(documents)
        crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
        rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
        for doc in crds:
            self._apply_one(doc)
            report.applied.append(object_ref(doc))
        if crds:
            wait_established(self.api, [d["metadata"]["name"] for d in crds])
            self.dynamic.resources.invalidate_cache()  # the new kinds must be discoverable
        for doc in rest:
            try:
                self._apply_one(doc)
            except ResourceNotFoundError:
                if not skip_unknown_kinds:
                    raise ApplyError(
                        f"{object_ref(doc)}: the cluster does not serve {doc.get('apiVersion')} {doc['kind']}"
                    ) from None
                report.skipped.append(object_ref(doc))
                continue
            report.applied.append(object_ref(doc))
        log.info("applied %d objects (%d skipped)", len(report.applied), len(report.skipped))
        return report

    def _apply_one(self, doc: dict[str, Any]) -> None:
        resource = self.resource(doc["apiVersion"], doc["kind"])
        namespace = doc.get("metadata", {}).get("namespace") if resource.namespaced else None
        try:
            for attempt in Retrying(
                # A freshly created namespace or CRD can make the first apply race: retry briefly.
                retry=retry_if_exception(_is_transient),
                stop=stop_after_delay(30),
                wait=wait_exponential(multiplier=0.2, max=3),
                reraise=True,
            ):
                with attempt:
                    # The answer (the whole object, 700 KB for a CRD) is not read back into
                    # the dynamic client's objects: nothing uses it.
                    answer = self.dynamic.server_side_apply(
                        resource,
                        body=doc,
                        namespace=namespace,
                        field_manager=FIELD_MANAGER,
                        force_conflicts=True,
                        serialize=False,
                    )
                    answer.drain_conn()  # read to the end: the connection goes back to the pool
                    answer.release_conn()
        except ApiException as exc:
            raise ApplyError(f"{object_ref(doc)}: apply failed: {exc.status} {api_message(exc)}") from None

    def delete(self, documents: Sequence[dict[str, Any]]) -> None:
        """Delete objects, ignoring those already gone (cleanup of what we created)."""
        for doc in reversed(ordered(documents)):
            try:
                resource = self.resource(doc["apiVersion"], doc["kind"])
            except ResourceNotFoundError:
                continue  # the kind is not served: nothing of it can exist
            namespace = doc.get("metadata", {}).get("namespace") if resource.namespaced else None
            try:
                self.dynamic.delete(resource, name=doc["metadata"]["name"], namespace=namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise ApplyError(f"{object_ref(doc)}: delete failed: {exc.status} {api_message(exc)}") from None


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status in (404, 409, 429, 500, 503, 504)


def api_message(exc: ApiException) -> str:
    """What the API server said, on one line: the Status body's ``message``, else the HTTP reason."""
    try:
        body = json.loads(exc.body)
    except (TypeError, ValueError):
        return one_line(exc.reason)
    return one_line(body.get("message", exc.reason) if isinstance(body, dict) else exc.reason)


def wait_established(api: k8s_client.ApiClient, names: Sequence[str], timeout_s: float = 60) -> None:
    """Wait, by watching, until every named CRD reports ``Established=True``.

    A watch rather than polling: KServe's InferenceService CRD is ~700 KB of JSON, and every read of
    it costs the API server (already busy establishing it) a full encode. Events arrive as
    the conditions change, undecoded (building client models of the schema costs ~0.3 s a
    time). A watch that ends early is reopened until ``timeout_s``; each change is logged.
    """
    extensions = k8s_client.ApiextensionsV1Api(api)
    pending = set(names)
    last_seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    log.info("waiting for %d CRDs to be Established, e.g. %s", len(pending), sorted(pending)[0] if pending else "-")
    while pending and (remaining := deadline - time.monotonic()) > 0:
        watcher = watch.Watch()
        try:
            for event in watcher.stream(
                extensions.list_custom_resource_definition,
                timeout_seconds=max(1, math.ceil(remaining)),
                _request_timeout=remaining + 10,
                deserialize=False,
            ):
                crd = event.get("object") or {}
                name = crd.get("metadata", {}).get("name")
                if name not in pending:
                    continue
                seen = _established_state(crd)
                if seen == "Established=True":
                    pending.discard(name)
                if seen != last_seen.get(name):
                    last_seen[name] = seen
                    log.info("CRD %s: %s (%d still pending)", name, seen, len(pending))
                if not pending:
                    break
        except (ApiException, urllib3.exceptions.HTTPError, OSError, KeyError) as exc:
            # The watch broke (the API server restarting, say; the client raises KeyError on
            # an ERROR event it was told not to decode): reopen it while time is left.
            log.info("watching CRDs: %s; watching again", str(exc).splitlines()[0][:200])
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        finally:
            watcher.stop()
    if pending:
        name, seen = _first(pending, last_seen)
        raise ApplyError(f"CRD {name} not Established after {timeout_s:.0f}s (last seen: {seen})")


def _established_state(crd: dict[str, Any]) -> str:
    """``Established=<status>``, with the reason when it is not True (e.g. a name conflict)."""
    conditions = {c.get("type"): c for c in (crd.get("status") or {}).get("conditions") or []}
    established = conditions.get("Established", {})
    state = f"Established={established.get('status', 'unknown')}"
    names = conditions.get("NamesAccepted", {})
    if established.get("status") != "True" and names.get("status") == "False":
        state += f", NamesAccepted=False: {names.get('message', names.get('reason', ''))}"
    return state


def _first(pending: set[str], last_seen: dict[str, str]) -> tuple[str, str]:
    name = sorted(pending)[0]
    return name, last_seen.get(name, "nothing yet")
