"""Connecting to the live cluster and reading it: the KServe controller, its version, the workloads' images."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import SERVICE_HOST_ENV_NAME, InClusterConfigLoader

from e2e.apply import api_message
from e2e.audit import AuditReport, audit
from e2e.errors import HarnessError, ImageReferenceError, UsageError
from e2e.images import ImageReference
from e2e.manifests import pod_spec, pod_template_labels
from e2e.matrix import (
    ControllerProfile,
    KServeRelease,
    Matrix,
    version_key,
)
from e2e.preflight.model import (
    LIVE_SOURCE,
    PLANNED_SOURCE,
    REQUEST_TIMEOUT,
    VERSION_LABEL,
    InstalledVersion,
)
from e2e.registry import RegistryProbe
from e2e.text import one_line

# Where the kubelet mounts a pod's ServiceAccount token and the cluster's CA.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
IN_CLUSTER = "in-cluster"  # what a Connection names as its context when it uses the pod's ServiceAccount


@dataclass
class Connection:
    api: k8s_client.ApiClient
    context: str
    server: str
    kubeconfig: str | None
    in_cluster: bool = False  # the pod's ServiceAccount, no kubeconfig

    def kubectl_context(self) -> list[str]:
        """The ``--context`` option of a kubectl started for this connection (none in a pod:
        that kubectl finds the ServiceAccount as this process did)."""
        return [] if self.in_cluster else ["--context", self.context]


def connect(kubeconfig: str | None, context: str | None) -> Connection:
    """An API client for ``context`` of ``kubeconfig`` (defaults as kubectl's), known reachable.

    With neither given, no default kubeconfig and a ServiceAccount mounted (the process runs
    in a pod, as ``watch-images`` does in its Deployment): that ServiceAccount, as kubectl does.
    """
    if kubeconfig is None and context is None and not _default_kubeconfig_exists() and _in_pod():
        return _reachable(_in_cluster_configuration(), IN_CLUSTER, None, in_cluster=True)
    where = f"kubeconfig {kubeconfig}" if kubeconfig else "the default kubeconfig ($KUBECONFIG or ~/.kube/config)"
    if kubeconfig and not Path(kubeconfig).expanduser().is_file():
        raise UsageError(f"--kubeconfig {kubeconfig}: not found; expected a kubeconfig file")
    try:
        contexts, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    except (ConfigException, OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{where}: not usable ({one_line(exc)}); expected a kubeconfig with contexts") from None
    names = [str(c.get("name")) for c in contexts or []]
    if context is not None and context not in names:
        known = ", ".join(names) or "none"
        raise UsageError(f"--context {context}: not in {where}; it has: {known}")
    if context is None and not active:
        raise UsageError(f"{where}: no current-context; pass --context (it has: {', '.join(names) or 'none'})")
    chosen = context or str(active.get("name"))
    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(
            config_file=kubeconfig, context=chosen, client_configuration=configuration, persist_config=False
        )
    except (ConfigException, OSError, ValueError) as exc:
        raise UsageError(f"context {chosen} of {where}: not usable ({one_line(exc)})") from None
    return _reachable(configuration, chosen, kubeconfig)


def _default_kubeconfig_exists() -> bool:
    """Whether kubectl would read a kubeconfig: $KUBECONFIG set (even naming nothing: that is
    its error to report) or ~/.kube/config there."""
    return bool(os.environ.get("KUBECONFIG")) or Path("~/.kube/config").expanduser().exists()


def _in_pod() -> bool:
    return bool(os.environ.get(SERVICE_HOST_ENV_NAME)) and (SERVICE_ACCOUNT_DIR / "token").is_file()


def _in_cluster_configuration() -> k8s_client.Configuration:
    """The pod's ServiceAccount: the API server of $KUBERNETES_SERVICE_HOST/PORT, its token
    (read again as the kubelet rotates it) and the cluster's CA."""
    configuration = k8s_client.Configuration()
    loader = InClusterConfigLoader(
        token_filename=str(SERVICE_ACCOUNT_DIR / "token"), cert_filename=str(SERVICE_ACCOUNT_DIR / "ca.crt")
    )
    try:
        loader.load_and_set(configuration)
    except (ConfigException, OSError) as exc:
        raise UsageError(f"the pod's ServiceAccount ({SERVICE_ACCOUNT_DIR}): not usable ({one_line(exc)})") from None
    return configuration


def _reachable(
    configuration: k8s_client.Configuration, context: str, kubeconfig: str | None, *, in_cluster: bool = False
) -> Connection:
    """A connection through ``configuration``, once the API server has answered ``GET /version``."""
    # No silent connection retries: urllib3 would log a warning per retry, and an unreachable
    # server must be one line (a preflight is cheap to run again).
    configuration.retries = 0
    api = k8s_client.ApiClient(configuration)
    server = str(api.configuration.host)
    try:
        k8s_client.VersionApi(api).get_code(_request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        api.close()
        raise UsageError(
            f"cluster {server} (context {context}): answered {exc.status} {exc.reason} to GET /version; "
            "expected a reachable API server that accepts these credentials"
        ) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        api.close()
        raise UsageError(
            f"cluster {server} (context {context}): unreachable ({_unreachable_reason(exc)}); "
            "expected a reachable API server"
        ) from None
    return Connection(api=api, context=context, server=server, kubeconfig=kubeconfig, in_cluster=in_cluster)


def _unreachable_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = one_line(reason)
    # urllib3 wraps the OS error: "<...HTTPSConnection object at 0x..>: Failed to establish a new
    # connection: [Errno 111] Connection refused" -- keep the part a human reads.
    return text.rsplit(": ", 1)[-1] if "Failed to establish" in text else text


# -- reading the cluster -------------------------------------------------------------------------------


def _api_call(what: str, call: Callable[[], Any]) -> Any:
    """``call()``; an API error becomes a one-line HarnessError naming ``what``."""
    try:
        return call()
    except ApiException as exc:
        raise HarnessError(f"{what}: the API answered {exc.status} {api_message(exc)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise HarnessError(f"{what}: the API server stopped answering ({one_line(exc)})") from None


def read_controller(api: k8s_client.ApiClient, profile: ControllerProfile, context: str) -> dict[str, Any]:
    """The controller Deployment (as the API's JSON); UsageError when KServe is not there."""
    core = k8s_client.CoreV1Api(api)
    apps = k8s_client.AppsV1Api(api)
    namespace, name = profile.namespace, profile.deployment
    try:
        core.read_namespace(namespace, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            raise UsageError(
                f"--namespace {namespace}: no such namespace in context {context}; "
                "expected the namespace KServe is installed in"
            ) from None
        if exc.status != 403:  # may not read namespaces: the Deployment read below decides
            raise UsageError(f"--namespace {namespace}: the API answered {exc.status} {api_message(exc)}") from None
    try:
        deployment = apps.read_namespaced_deployment(name, namespace, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            raise UsageError(
                f"--namespace {namespace}: no Deployment {name} in context {context}; "
                "expected KServe's controller there (is KServe installed in another namespace?)"
            ) from None
        raise UsageError(
            f"Deployment {namespace}/{name}: the API answered {exc.status} {api_message(exc)}; expected read access"
        ) from None
    document: dict[str, Any] = api.sanitize_for_serialization(deployment)
    document.setdefault("apiVersion", "apps/v1")
    document.setdefault("kind", "Deployment")
    return document


def named_container(deployment: dict[str, Any], name: str) -> dict[str, Any] | None:
    for container in pod_spec(deployment).get("containers") or []:
        if container.get("name") == name:
            return dict(container)
    return None


def installed_version(deployment: dict[str, Any], profile: ControllerProfile, matrix: Matrix) -> InstalledVersion:
    """The KServe version: the manager image's tag if it is a version, else the version label."""
    manager = named_container(deployment, profile.manager_container)
    image = str((manager or {}).get("image") or "")
    candidates: list[tuple[str | None, str]] = []
    if image:
        try:
            tag = ImageReference.parse(image).tag
        except ImageReferenceError:
            tag = None
        candidates.append((tag, f"the tag of the manager image {image}"))
    metadata = deployment.get("metadata") or {}
    for where, labels in (("Deployment", metadata.get("labels")), ("pod template", pod_template_labels(deployment))):
        value = (labels or {}).get(VERSION_LABEL)
        candidates.append((value, f"the {VERSION_LABEL} label of the {where}"))
    for value, how in candidates:
        if value is None:
            continue
        version = value if value.startswith("v") else f"v{value}"
        try:
            version_key(version)
        except UsageError:
            continue
        try:  # any release tag: an unlisted one takes its line's defaults
            known: KServeRelease | None = matrix.release(version)
        except UsageError:  # a line the matrix has no defaults for
            known = None
        return InstalledVersion(version, how, known)
    looked = f"manager image {image!r}" if image else f"no container {profile.manager_container!r}"
    return InstalledVersion(None, f"{looked} has no version tag and no {VERSION_LABEL} label", None)


# What live_workloads lists. watch-images's ClusterRole (e2e/data/manifests/watch-images.yaml)
# grants `list` on exactly these; a test holds the two together.
LISTED_WORKLOADS: tuple[tuple[str, str, str], ...] = (
    # (kind, apiVersion, API method stem) -- list_namespaced_<stem> / list_<stem>_for_all_namespaces
    ("Pod", "v1", "pod"),
    ("Deployment", "apps/v1", "deployment"),
    ("StatefulSet", "apps/v1", "stateful_set"),
    ("DaemonSet", "apps/v1", "daemon_set"),
)


def live_workloads(api: k8s_client.ApiClient, namespace: str | None) -> list[dict[str, Any]]:
    """Pods and workloads with pod templates (namespace None: all namespaces), as objects
    that ``e2e.audit`` reads: kind, apiVersion, name and namespace, spec."""
    core, apps = k8s_client.CoreV1Api(api), k8s_client.AppsV1Api(api)
    objects: list[dict[str, Any]] = []
    for kind, api_version, stem in LISTED_WORKLOADS:
        group = core if api_version == "v1" else apps
        where = f"namespace {namespace}" if namespace else "all namespaces"
        method: Callable[..., Any] = getattr(
            group, f"list_namespaced_{stem}" if namespace else f"list_{stem}_for_all_namespaces"
        )
        arguments = (namespace,) if namespace else ()
        listed = _api_call(
            f"list {kind}s in {where}",
            functools.partial(method, *arguments, _request_timeout=REQUEST_TIMEOUT),
        )
        for item in listed.items:
            raw = api.sanitize_for_serialization(item)
            meta = raw.get("metadata") or {}
            objects.append(
                {
                    "apiVersion": api_version,
                    "kind": kind,
                    "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
                    "spec": raw.get("spec") or {},
                }
            )
    return objects


def audit_images(
    live: Sequence[dict[str, Any]], planned: dict[str, Any] | None, probe: RegistryProbe | None
) -> AuditReport:
    """``e2e.audit`` over the live objects and the planned Deployment: one judgement per image."""
    sources = [(LIVE_SOURCE, yaml.safe_dump_all(live, sort_keys=False))]
    if planned is not None:
        sources.append((PLANNED_SOURCE, yaml.safe_dump(planned, sort_keys=False)))
    return audit(sources, probe)
