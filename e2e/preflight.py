"""``kserve-compat preflight``: is this live cluster ready for a KServe upgrade or a proxy image swap?

Against the current kubeconfig context, and read-only unless ``--check-metrics`` is given:

1. the KServe version installed (the tag of the controller's manager image, else the
   ``app.kubernetes.io/version`` label), and how it was found;
2. every image of the Pods and workload pod templates (Deployments, StatefulSets,
   DaemonSets) in the KServe namespace (``--all-namespaces``: everywhere), flagged by
   ``e2e.audit`` exactly as ``kserve-compat audit`` flags a manifest: retired registry with
   its replacement, unpinned, pinned by digest; and, unless ``--no-probe``, whether each
   image and the target image can be pulled (``e2e.registry``);
3. whether the proxy's ServiceAccount may create TokenReviews and SubjectAccessReviews,
   asked of the API server with SubjectAccessReviews (what ``kubectl auth can-i`` does; a
   review is answered, never stored);
4. the planned image patch (``e2e.manifests.proxy_patch`` built from the live Deployment)
   sent as a server-side dry run (``dryRun=All``): admission and validation run, nothing is
   persisted;
5. with ``--check-metrics`` only: the RBAC-proxied metrics check of ``e2e.checks`` through a
   ``kubectl port-forward`` (or ``--metrics-url``), with two temporary ServiceAccounts, a
   ClusterRole and a ClusterRoleBinding that are deleted afterwards, also on failure,
   Ctrl-C or SIGTERM. This is the only mode that writes to the cluster, and it says so.

Exit codes (the highest applicable one wins, as 4 wins over 3 in ``audit``):
0 go; 2 usage error (unreachable cluster, unknown context, no KServe in the namespace);
3 an image in use (or the target) is on a retired registry; 4 an image is unavailable or
not a valid reference; 5 the swap would be rejected, the proxy's ServiceAccount lacks the
RBAC it needs, or the ``--check-metrics`` check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import functools
import json
import logging
import os
import secrets as stdlib_secrets
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

from e2e.apply import api_message
from e2e.audit import EXIT_CLEAN, EXIT_RETIRED, EXIT_UNAVAILABLE, AuditedImage, AuditReport, audit
from e2e.errors import HarnessError, ImageReferenceError, UsageError
from e2e.images import ImageReference, RegistryMirrors
from e2e.manifests import ReleaseManifest, apply_strategic_merge, proxy_patch
from e2e.matrix import (
    ControllerProfile,
    KServeRelease,
    Matrix,
    MatrixCell,
    load_matrix,
    version_key,
)
from e2e.registry import RegistryProbe
from e2e.results import CellResult, CheckResult, CheckStatus
from e2e.secrets import redact
from e2e.text import one_line
from e2e.tokens import mint_token, service_account_username

log = logging.getLogger(__name__)

EXIT_GO = EXIT_CLEAN
EXIT_USAGE = UsageError.exit_code
#: The swap would be rejected (dry run refused, no proxy container), the proxy's
#: ServiceAccount lacks RBAC, or ``--check-metrics`` failed.
EXIT_REJECTED = 5

FIELD_MANAGER = "kserve-compat-preflight"
#: Label on every object ``--check-metrics`` creates, so a leftover can be found by hand.
MANAGED_BY = ("app.kubernetes.io/managed-by", "kserve-compat-preflight")
VERSION_LABEL = "app.kubernetes.io/version"
REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds for every API call

LIVE_SOURCE = "cluster"
PLANNED_SOURCE = "planned"

# What kube-rbac-proxy's own ServiceAccount must be allowed to do (delegated authn/authz).
PROXY_PERMISSIONS: tuple[tuple[str, str, str], ...] = (
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
)


class Status(enum.StrEnum):
    OK = "ok"
    FAIL = "fail"
    WARN = "warn"
    SKIPPED = "skipped"


@dataclass
class Check:
    """One line of the verdict: a failed check is a no-go reason with its exit code."""

    name: str
    status: Status
    detail: str
    exit_code: int = EXIT_GO  # what a failure of this check means
    evidence: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.detail = redact(self.detail)
        self.evidence = [redact(line) for line in self.evidence]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": str(self.status),
            "detail": self.detail,
            "exit_code": self.exit_code if self.status is Status.FAIL else EXIT_GO,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class InstalledVersion:
    version: str | None
    how: str  # "the tag of the manager image kserve/kserve-controller:v0.14.0"
    release: KServeRelease | None  # the matrix entry, if the matrix knows this version

    def describe(self) -> str:
        text = f"{self.version or 'unknown'} ({self.how})"
        if self.release is not None:
            text += f"; the release ships {self.release.proxy_image}"
        elif self.version:
            text += "; not a release the matrix knows"
        return text


@dataclass(frozen=True)
class ProxySidecar:
    deployment: str  # namespace/name
    container: str
    image: str | None  # None: the Deployment has no such container
    service_account: str  # namespace/name


@dataclass
class PreflightReport:
    context: str
    server: str
    namespace: str
    all_namespaces: bool
    version: InstalledVersion
    proxy: ProxySidecar
    target: str | None
    target_source: str
    images: AuditReport
    checks: list[Check] = field(default_factory=list)
    metrics: list[CheckResult] = field(default_factory=list)
    wrote: list[str] = field(default_factory=list)  # what --check-metrics created (and removed)
    cleanup_problems: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.status is Status.FAIL]

    @property
    def exit_code(self) -> int:
        return max((check.exit_code for check in self.failed), default=EXIT_GO)

    @property
    def verdict(self) -> str:
        return "no-go" if self.failed else "go"

    def in_use(self, image: AuditedImage) -> bool:
        return any(use.source == LIVE_SOURCE for use in image.uses)

    def role(self, image: AuditedImage) -> str:
        roles = []
        if self.in_use(image):
            roles.append("in use")
        if self.target is not None and image.image == self.target:
            roles.append("target")
        return ", ".join(roles) or "planned"


# -- connecting --------------------------------------------------------------------------------------


@dataclass
class Connection:
    api: k8s_client.ApiClient
    context: str
    server: str
    kubeconfig: str | None


def connect(kubeconfig: str | None, context: str | None) -> Connection:
    """An API client for ``context`` of ``kubeconfig`` (defaults as kubectl's), known reachable."""
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
            f"cluster {server} (context {chosen}): answered {exc.status} {exc.reason} to GET /version; "
            "expected a reachable API server that accepts these credentials"
        ) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        api.close()
        raise UsageError(
            f"cluster {server} (context {chosen}): unreachable ({_unreachable_reason(exc)}); "
            "expected a reachable API server"
        ) from None
    return Connection(api=api, context=chosen, server=server, kubeconfig=kubeconfig)


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
            f"Deployment {namespace}/{name}: the API answered {exc.status} {api_message(exc)}; "
            "expected read access"
        ) from None
    document: dict[str, Any] = api.sanitize_for_serialization(deployment)
    document.setdefault("apiVersion", "apps/v1")
    document.setdefault("kind", "Deployment")
    return document


def _pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    return spec


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any] | None:
    for container in _pod_spec(deployment).get("containers") or []:
        if container.get("name") == name:
            return dict(container)
    return None


def installed_version(deployment: dict[str, Any], profile: ControllerProfile, matrix: Matrix) -> InstalledVersion:
    """The KServe version: the manager image's tag if it is a version, else the version label."""
    manager = _container(deployment, profile.manager_container)
    image = str((manager or {}).get("image") or "")
    candidates: list[tuple[str | None, str]] = []
    if image:
        try:
            tag = ImageReference.parse(image).tag
        except ImageReferenceError:
            tag = None
        candidates.append((tag, f"the tag of the manager image {image}"))
    metadata = deployment.get("metadata") or {}
    template_metadata = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    for where, labels in (("Deployment", metadata.get("labels")), ("pod template", template_metadata.get("labels"))):
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
        known = next((r for r in matrix.releases if r.version == version), None)
        return InstalledVersion(version, how, known)
    looked = f"manager image {image!r}" if image else f"no container {profile.manager_container!r}"
    return InstalledVersion(None, f"{looked} has no version tag and no {VERSION_LABEL} label", None)


_WORKLOADS: tuple[tuple[str, str, str], ...] = (
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
    for kind, api_version, stem in _WORKLOADS:
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


# -- RBAC of the proxy -----------------------------------------------------------------------------------


def service_account_groups(namespace: str) -> list[str]:
    """The groups a ServiceAccount's token authenticates with: bindings to them count too."""
    return ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]


def can_i(
    api: k8s_client.ApiClient, namespace: str, service_account: str, group: str, resource: str, verb: str
) -> tuple[bool | None, str]:
    """(allowed, why) for the ServiceAccount; allowed None when the review itself failed."""
    review = k8s_client.V1SubjectAccessReview(
        spec=k8s_client.V1SubjectAccessReviewSpec(
            user=service_account_username(namespace, service_account),
            groups=service_account_groups(namespace),
            resource_attributes=k8s_client.V1ResourceAttributes(group=group, resource=resource, verb=verb),
        )
    )
    try:
        answer = k8s_client.AuthorizationV1Api(api).create_subject_access_review(
            review, _request_timeout=REQUEST_TIMEOUT
        )
    except ApiException as exc:
        return None, f"could not ask: SubjectAccessReview answered {exc.status} {api_message(exc)}"
    status = answer.status
    reason = " ".join(str(status.reason or status.evaluation_error or "").split())
    return bool(status.allowed), reason or ("allowed" if status.allowed else "no RBAC rule allows it")


def check_proxy_rbac(api: k8s_client.ApiClient, proxy: ProxySidecar) -> Check:
    namespace, name = proxy.service_account.split("/", 1)
    missing, unknown, granted = [], [], []
    for group, resource, verb in PROXY_PERMISSIONS:
        allowed, why = can_i(api, namespace, name, group, resource, verb)
        what = f"{verb} {resource}.{group}"
        if allowed is None:
            unknown.append(f"{what}: {why}")
        elif allowed:
            granted.append(f"{what}: {why}")
        else:
            missing.append(f"{what}: {why}")
    subject = f"ServiceAccount {proxy.service_account}"
    if missing:
        return Check(
            "proxy-rbac",
            Status.FAIL,
            f"{subject} may not {'; '.join(m.split(':')[0] for m in missing)}: the proxy would answer 401/500 "
            "to every scrape (KServe binds ClusterRole kserve-proxy-role via kserve-proxy-rolebinding)",
            EXIT_REJECTED,
            evidence=missing + granted + unknown,
        )
    if unknown:
        return Check("proxy-rbac", Status.WARN, f"{subject}: not verified", EXIT_REJECTED, evidence=unknown + granted)
    return Check(
        "proxy-rbac", Status.OK, f"{subject} may create tokenreviews and subjectaccessreviews", evidence=granted
    )


# -- the planned swap ------------------------------------------------------------------------------------


def planned_patch(
    deployment: dict[str, Any], profile: ControllerProfile, target: str, matrix: Matrix, release: KServeRelease
) -> dict[str, Any]:
    """``e2e.manifests.proxy_patch`` for ``target``, read from the live Deployment (no release file)."""
    manifest = ReleaseManifest(
        source=f"live Deployment {profile.namespace}/{profile.deployment}", profile=profile, documents=(deployment,)
    )
    cell = MatrixCell(release=release, proxy=matrix.proxy_for_image(target), kubernetes=matrix.kubernetes[0])
    return proxy_patch(cell, manifest)


def check_swap_dry_run(
    api: k8s_client.ApiClient, profile: ControllerProfile, patch: dict[str, Any], target: str
) -> Check:
    """Send the patch with ``dryRun=All``: validation and admission run, nothing is stored."""
    apps = k8s_client.AppsV1Api(api)
    try:
        answer = apps.patch_namespaced_deployment(
            profile.deployment,
            profile.namespace,
            patch,
            dry_run="All",
            field_manager=FIELD_MANAGER,
            _request_timeout=REQUEST_TIMEOUT,
        )
    except ApiException as exc:
        return Check(
            "swap-dry-run",
            Status.FAIL,
            f"the API rejected the planned patch (dry run): {exc.status} {api_message(exc)}",
            EXIT_REJECTED,
            evidence=[json.dumps(patch, sort_keys=True)],
        )
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return Check("swap-dry-run", Status.WARN, f"dry run not answered: {one_line(exc)}", EXIT_REJECTED)
    images = {c.name: c.image for c in answer.spec.template.spec.containers}
    got = images.get(profile.proxy_container)
    if got != target:
        return Check(
            "swap-dry-run",
            Status.FAIL,
            f"the API accepted the patch but the {profile.proxy_container} container would run {got}, not {target}",
            EXIT_REJECTED,
        )
    return Check(
        "swap-dry-run",
        Status.OK,
        f"the API accepted the planned patch (dry run, nothing stored): container {profile.proxy_container} "
        f"-> {target}",
        evidence=[json.dumps(patch, sort_keys=True)],
    )


# -- images -----------------------------------------------------------------------------------------------


def image_checks(report: PreflightReport, probed: bool) -> list[Check]:
    relevant = [image for image in report.images.images if report.in_use(image) or image.image == report.target]
    retired = [image for image in relevant if image.retirement is not None]
    checks = []
    if retired:
        checks.append(
            Check(
                "retired-registry",
                Status.FAIL,
                "; ".join(f"{image.image} ({report.role(image)})" for image in retired) + " on a retired registry",
                EXIT_RETIRED,
                evidence=[f"{image.image}: {image.retirement.describe()}" for image in retired if image.retirement],
            )
        )
    else:
        checks.append(Check("retired-registry", Status.OK, f"none of {len(relevant)} images is on a retired registry"))
    invalid = [image for image in relevant if image.invalid is not None]
    if not probed:
        if invalid:
            checks.append(
                Check(
                    "image-availability",
                    Status.FAIL,
                    f"{len(invalid)} not a valid reference",
                    EXIT_UNAVAILABLE,
                    evidence=[str(i.invalid) for i in invalid],
                )
            )
        else:
            checks.append(Check("image-availability", Status.SKIPPED, "--no-probe: registries not asked"))
        return checks
    unavailable = [image for image in relevant if image.unavailable]
    if unavailable:
        evidence = [
            str(image.invalid)
            if image.invalid is not None or image.availability is None
            else f"{image.image}: {image.availability.describe()}"
            for image in unavailable
        ]
        checks.append(
            Check(
                "image-availability",
                Status.FAIL,
                "; ".join(f"{image.image} ({report.role(image)})" for image in unavailable) + " cannot be pulled",
                EXIT_UNAVAILABLE,
                evidence=evidence,
            )
        )
    else:
        checks.append(Check("image-availability", Status.OK, f"all {len(relevant)} images can be pulled"))
    return checks


# -- --check-metrics: the only mode that writes -------------------------------------------------------------


@dataclass
class TemporaryAccess:
    """Two ServiceAccounts (one with ``get /metrics``, one without) that ``--check-metrics``
    creates in the KServe namespace, with a ClusterRole and binding; ``remove`` deletes them."""

    api: k8s_client.ApiClient
    namespace: str
    suffix: str = field(default_factory=lambda: stdlib_secrets.token_hex(3))
    created: list[tuple[str, str]] = field(default_factory=list)  # (kind, name) in creation order

    @property
    def reader(self) -> str:
        return f"kserve-compat-preflight-reader-{self.suffix}"

    @property
    def no_access(self) -> str:
        return f"kserve-compat-preflight-no-access-{self.suffix}"

    @property
    def role(self) -> str:
        return f"kserve-compat-preflight-metrics-reader-{self.suffix}"

    def _meta(self, name: str, namespaced: bool) -> k8s_client.V1ObjectMeta:
        return k8s_client.V1ObjectMeta(
            name=name, namespace=self.namespace if namespaced else None, labels={MANAGED_BY[0]: MANAGED_BY[1]}
        )

    def describe(self) -> list[str]:
        return [
            f"ServiceAccount {self.namespace}/{self.reader}",
            f"ServiceAccount {self.namespace}/{self.no_access}",
            f"ClusterRole {self.role}",
            f"ClusterRoleBinding {self.role}",
        ]

    def create(self) -> None:
        core, rbac = k8s_client.CoreV1Api(self.api), k8s_client.RbacAuthorizationV1Api(self.api)
        for name in (self.reader, self.no_access):
            self._record("ServiceAccount", name)
            core.create_namespaced_service_account(
                self.namespace, k8s_client.V1ServiceAccount(metadata=self._meta(name, True)),
                _request_timeout=REQUEST_TIMEOUT,
            )
        self._record("ClusterRole", self.role)
        rbac.create_cluster_role(
            k8s_client.V1ClusterRole(
                metadata=self._meta(self.role, False),
                rules=[k8s_client.V1PolicyRule(non_resource_urls=["/metrics"], verbs=["get"])],
            ),
            _request_timeout=REQUEST_TIMEOUT,
        )
        self._record("ClusterRoleBinding", self.role)
        rbac.create_cluster_role_binding(
            k8s_client.V1ClusterRoleBinding(
                metadata=self._meta(self.role, False),
                role_ref=k8s_client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=self.role
                ),
                subjects=[
                    k8s_client.RbacV1Subject(kind="ServiceAccount", name=self.reader, namespace=self.namespace)
                ],
            ),
            _request_timeout=REQUEST_TIMEOUT,
        )

    def _record(self, kind: str, name: str) -> None:
        # Recorded before the create call: a create interrupted after the server stored the
        # object must still be cleaned up (a delete of something never created is a 404).
        self.created.append((kind, name))

    def wait_reader_allowed(self, timeout_s: float = 30.0) -> bool:
        """Until the API server's RBAC cache knows the new binding: kube-rbac-proxy caches a
        denial for about 30 s, so the first scrape must not race it."""

        def allowed() -> bool:
            review = k8s_client.V1SubjectAccessReview(
                spec=k8s_client.V1SubjectAccessReviewSpec(
                    user=service_account_username(self.namespace, self.reader),
                    groups=service_account_groups(self.namespace),
                    non_resource_attributes=k8s_client.V1NonResourceAttributes(path="/metrics", verb="get"),
                )
            )
            answer = k8s_client.AuthorizationV1Api(self.api).create_subject_access_review(
                review, _request_timeout=REQUEST_TIMEOUT
            )
            return bool(answer.status.allowed)

        retrying = Retrying(
            retry=retry_if_result(lambda ok: not ok),
            stop=stop_after_delay(timeout_s),
            wait=wait_exponential(multiplier=0.1, max=2),
            retry_error_callback=lambda state: False,
        )
        return bool(retrying(allowed))

    def remove(self) -> list[str]:
        """Delete everything created, newest first; returns what could not be deleted."""
        core, rbac = k8s_client.CoreV1Api(self.api), k8s_client.RbacAuthorizationV1Api(self.api)
        deleters: dict[str, Callable[[str], Any]] = {
            "ServiceAccount": lambda n: core.delete_namespaced_service_account(
                n, self.namespace, _request_timeout=REQUEST_TIMEOUT
            ),
            "ClusterRole": lambda n: rbac.delete_cluster_role(n, _request_timeout=REQUEST_TIMEOUT),
            "ClusterRoleBinding": lambda n: rbac.delete_cluster_role_binding(n, _request_timeout=REQUEST_TIMEOUT),
        }
        problems = []
        for kind, name in reversed(self.created):
            try:
                deleters[kind](name)
            except ApiException as exc:
                if exc.status != 404:
                    problems.append(f"{kind} {name}: delete answered {exc.status} {api_message(exc)}")
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                problems.append(f"{kind} {name}: delete failed ({one_line(exc)})")
        self.created.clear()
        return problems


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises KeyboardInterrupt so that ``finally`` cleans up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resolve_kubectl(kubectl: str | None) -> str:
    binary = kubectl or shutil.which("kubectl")
    if not binary or not os.access(binary, os.X_OK):
        where = f"--kubectl {kubectl}: not an executable" if kubectl else "kubectl not found on PATH"
        raise UsageError(f"--check-metrics: {where}; pass --kubectl PATH or --metrics-url URL")
    return binary


@contextlib.contextmanager
def metrics_endpoint(conn: Connection, profile: ControllerProfile, metrics_url: str | None, kubectl: str | None) -> (
    Iterator[str]
):
    """``metrics_url`` as given, else a ``kubectl port-forward`` to the metrics Service."""
    if metrics_url:
        yield metrics_url
        return
    binary = resolve_kubectl(kubectl)
    # Imported here: the kind tier's module pins tool versions in the environment on import.
    from e2e.cluster.kind import port_forward, port_forward_argv
    from e2e.cluster.provider import ServiceTarget

    service = ServiceTarget(profile.namespace, profile.metrics_service, profile.metrics_port)
    argv = [*port_forward_argv(Path(binary), service), "--context", conn.context]
    env = dict(os.environ)
    if conn.kubeconfig:
        env["KUBECONFIG"] = str(Path(conn.kubeconfig).expanduser())
    with port_forward(argv, env) as address:
        yield f"https://{address}/metrics"


def check_metrics(
    conn: Connection, profile: ControllerProfile, report: PreflightReport, metrics_url: str | None,
    kubectl: str | None,
) -> Check:
    """The four auth paths and the content of the proxied metrics, with temporary identities."""
    from e2e.checks import check_metrics_auth  # heavy (prometheus parser): only in this mode

    if not metrics_url:
        resolve_kubectl(kubectl)  # before anything is written
    access = TemporaryAccess(conn.api, profile.namespace)
    report.wrote = access.describe()
    print(
        "kserve-compat preflight: --check-metrics writes to the cluster: creating "
        + ", ".join(report.wrote) + " (removed afterwards)",
        file=sys.stderr,
    )
    cell = CellResult(
        cell_id="preflight", provider="live", kserve_version=report.version.version or "unknown",
        proxy_alias="in-use", proxy_image=report.proxy.image or "", kubernetes_version="",
    )
    try:
        with sigterm_as_interrupt():
            try:
                access.create()
                if not access.wait_reader_allowed():
                    return Check("metrics-auth", Status.FAIL, "the temporary reader's RBAC never took effect",
                                 EXIT_REJECTED)
                reader = mint_token(conn.api, profile.namespace, access.reader)
                no_access = mint_token(conn.api, profile.namespace, access.no_access)
                with metrics_endpoint(conn, profile, metrics_url, kubectl) as url:
                    report.metrics = check_metrics_auth(
                        cell, url, metrics_reader_token=reader, no_access_token=no_access
                    )
            except ApiException as exc:
                return Check("metrics-auth", Status.FAIL, f"could not set up the check: {exc.status} "
                             f"{api_message(exc)}", EXIT_REJECTED)
            except HarnessError as exc:
                return Check("metrics-auth", Status.FAIL, f"could not run the check: {exc}", EXIT_REJECTED)
            finally:
                report.cleanup_problems = access.remove()
    finally:
        for problem in report.cleanup_problems:
            log.error("--check-metrics cleanup: %s; delete it by hand (label %s=%s)", problem, *MANAGED_BY)
    failing = [r for r in report.metrics if r.status is not CheckStatus.PASS]
    if failing:
        first = failing[0]
        return Check("metrics-auth", Status.FAIL, f"{first.name}: {first.detail}", EXIT_REJECTED,
                     evidence=[line for r in failing for line in r.evidence][:6])
    return Check(
        "metrics-auth", Status.OK, f"{len(report.metrics)} metrics checks passed through {profile.proxy_container}"
    )


# -- the run ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False
    target_image: str | None = None
    target_proxy: str | None = None
    registry_mirror: Sequence[str] = ()
    insecure_registry: Sequence[str] = ()
    probe: bool = True
    timeout: float = 10.0
    check_metrics: bool = False
    metrics_url: str | None = None
    kubectl: str | None = None
    matrix: str | None = None


def resolve_target(options: Options, matrix: Matrix) -> tuple[str | None, str]:
    if options.target_image and options.target_proxy:
        raise UsageError("--target-image and --target-proxy: expected one of them, not both")
    if options.target_proxy:
        return matrix.proxy(options.target_proxy).image, f"--target-proxy {options.target_proxy}"
    if options.target_image:
        ImageReference.parse(options.target_image)  # a bad reference is a usage error, not a finding
        return options.target_image, "--target-image"
    return None, "none given: no swap planned"


def preflight(options: Options) -> PreflightReport:
    matrix = load_matrix(options.matrix)
    mirrors = RegistryMirrors.from_options(options.registry_mirror)
    if options.timeout <= 0:
        raise UsageError(f"--timeout {options.timeout}: expected a positive number of seconds")
    target, target_source = resolve_target(options, matrix)
    # Every release the matrix knows names its controller the same way; the newest one's
    # profile finds the Deployment, then the version found there picks the exact profile.
    newest = max(matrix.releases, key=lambda r: version_key(r.version))
    profile = replace(newest.profile, namespace=options.namespace or newest.profile.namespace)
    conn = connect(options.kubeconfig, options.context)
    with conn.api:
        deployment = read_controller(conn.api, profile, conn.context)
        version = installed_version(deployment, profile, matrix)
        release = version.release or newest
        profile = replace(release.profile, namespace=profile.namespace)
        proxy_container = _container(deployment, profile.proxy_container)
        pod_spec = _pod_spec(deployment)
        proxy = ProxySidecar(
            deployment=f"{profile.namespace}/{profile.deployment}",
            container=profile.proxy_container,
            image=str(proxy_container.get("image")) if proxy_container else None,
            service_account=f"{profile.namespace}/{pod_spec.get('serviceAccountName') or 'default'}",
        )
        patch = planned = None
        if target is not None and proxy_container is not None:
            patch = planned_patch(deployment, profile, target, matrix, release)
            planned = apply_strategic_merge(deployment, patch)
            planned = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": planned.get("metadata", {}),
                       "spec": planned.get("spec", {})}
        probe = (
            RegistryProbe(
                mirrors=mirrors, insecure_registries=options.insecure_registry,
                connect_timeout=options.timeout, read_timeout=options.timeout,
            )
            if options.probe
            else None
        )
        live = live_workloads(conn.api, None if options.all_namespaces else profile.namespace)
        report = PreflightReport(
            context=conn.context, server=conn.server, namespace=profile.namespace,
            all_namespaces=options.all_namespaces, version=version, proxy=proxy, target=target,
            target_source=target_source, images=audit_images(live, planned, probe),
        )
        report.checks += image_checks(report, probed=probe is not None)
        report.checks.append(check_proxy_rbac(conn.api, proxy))
        if proxy_container is None:
            report.checks.append(
                Check("swap-dry-run", Status.FAIL, f"Deployment {proxy.deployment} has no container "
                      f"{profile.proxy_container!r}: there is no proxy to swap", EXIT_REJECTED)
            )
        elif target is None or patch is None:
            report.checks.append(Check("swap-dry-run", Status.SKIPPED, "no --target-image/--target-proxy"))
        else:
            report.checks.append(check_swap_dry_run(conn.api, profile, patch, target))
        if options.check_metrics:
            report.checks.append(check_metrics(conn, profile, report, options.metrics_url, options.kubectl))
    return report


# -- rendering --------------------------------------------------------------------------------------------


def _where(image: AuditedImage) -> str:
    live = [use for use in image.uses if use.source == LIVE_SOURCE] or image.uses
    first = live[0]
    obj = "/".join(part for part in (first.namespace, first.name) if part)
    text = f"{first.kind} {obj}" + (f" container {first.container}" if first.container else "")
    if first.source == PLANNED_SOURCE:
        text = f"planned: {text}"
    return text if len(live) == 1 else f"{text} (+{len(live) - 1} more)"


def _availability(image: AuditedImage) -> str:
    if image.invalid is not None:
        return "invalid reference"
    found = image.availability
    if found is None:
        return "-"
    text = str(found.status)
    if found.probed and image.reference and found.probed != image.reference.format():
        text += f" via {found.probed}"
    return text


def _image_rows(report: PreflightReport) -> list[list[str]]:
    return [
        [image.image, report.role(image), image.pin, "retired" if image.retirement else "ok", _availability(image),
         _where(image)]
        for image in report.images.images
        if report.in_use(image) or image.image == report.target
    ]


IMAGE_HEADER = ["IMAGE", "ROLE", "PIN", "REGISTRY", "AVAILABILITY", "WHERE"]
CHECK_HEADER = ["CHECK", "RESULT", "DETAIL"]


def _summary_lines(report: PreflightReport) -> list[tuple[str, str]]:
    scope = "all namespaces" if report.all_namespaces else f"namespace {report.namespace}"
    mode = "wrote temporary objects (--check-metrics), removed" if report.wrote else "read-only"
    return [
        ("cluster", f"{report.server} (context {report.context}), images from {scope}, {mode}"),
        ("kserve", report.version.describe()),
        ("proxy", f"{report.proxy.image or '(no container ' + report.proxy.container + ')'} "
                  f"(Deployment {report.proxy.deployment}, ServiceAccount {report.proxy.service_account})"),
        ("target", f"{report.target} ({report.target_source})" if report.target else report.target_source),
    ]


def _verdict_line(report: PreflightReport) -> str:
    if not report.failed:
        return "verdict: GO"
    return f"verdict: NO-GO (exit {report.exit_code})"


def _reasons(report: PreflightReport) -> list[str]:
    lines = []
    for check in report.checks:
        if check.status in (Status.FAIL, Status.WARN):
            lines.append(f"{check.name} ({check.status}): {check.detail}")
            lines += [f"    {line}" for line in check.evidence]
    return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]


def render_table(report: PreflightReport) -> str:
    lines = [f"{key:<8} {value}" for key, value in _summary_lines(report)]
    lines += ["", *_table(IMAGE_HEADER, _image_rows(report))]
    lines += ["", *_table(CHECK_HEADER, [[c.name, str(c.status), c.detail] for c in report.checks])]
    if report.metrics:
        lines += ["", *_table(CHECK_HEADER, [[r.name, str(r.status), r.detail] for r in report.metrics])]
    reasons = _reasons(report)
    if reasons:
        lines += ["", "reasons:", *(f"  {line}" for line in reasons)]
    lines += [*(f"cleanup: {p}" for p in report.cleanup_problems), "", _verdict_line(report)]
    return redact("\n".join(lines) + "\n")


def _markdown_table(header: list[str], rows: list[list[str]], code_first: bool = False) -> list[str]:
    lines = ["| " + " | ".join(h.capitalize() for h in header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [f"`{row[0]}`" if code_first else row[0], *row[1:]]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


def render_markdown(report: PreflightReport) -> str:
    lines = [f"- **{key}**: {value}" for key, value in _summary_lines(report)]
    lines += ["", *_markdown_table(IMAGE_HEADER, _image_rows(report), code_first=True)]
    lines += ["", *_markdown_table(CHECK_HEADER, [[c.name, str(c.status), c.detail] for c in report.checks])]
    if report.metrics:
        lines += ["", *_markdown_table(CHECK_HEADER, [[r.name, str(r.status), r.detail] for r in report.metrics])]
    reasons = _reasons(report)
    if reasons:
        # Evidence lines (indented in the table form) become nested bullets.
        lines += ["", *(f"  - {line.strip()}" if line.startswith(" ") else f"- {line}" for line in reasons)]
    lines += ["", f"**{_verdict_line(report)}**"]
    return redact("\n".join(lines) + "\n")


def render_json(report: PreflightReport) -> str:
    relevant = {row[0] for row in _image_rows(report)}
    document = {
        "verdict": report.verdict,
        "exit_code": report.exit_code,
        "cluster": {"server": report.server, "context": report.context},
        "namespace": report.namespace,
        "all_namespaces": report.all_namespaces,
        "kserve": {
            "version": report.version.version,
            "found_by": report.version.how,
            "matrix_release": report.version.release.version if report.version.release else None,
        },
        "proxy": {
            "deployment": report.proxy.deployment,
            "container": report.proxy.container,
            "image": report.proxy.image,
            "service_account": report.proxy.service_account,
        },
        "target": {"image": report.target, "source": report.target_source},
        "images": [_image_json(report, image) for image in report.images.images if image.image in relevant],
        "checks": [check.as_json() for check in report.checks],
        "metrics_checks": [
            {"name": r.name, "status": str(r.status), "detail": r.detail, "evidence": r.evidence}
            for r in report.metrics
        ],
        "wrote": report.wrote,
        "cleanup_problems": report.cleanup_problems,
    }
    return redact(json.dumps(document, indent=2) + "\n")


def _image_json(report: PreflightReport, image: AuditedImage) -> dict[str, Any]:
    document = {**image.as_json(), "role": report.role(image)}
    # "source" says live or planned; a line number would point into YAML nobody sees.
    document["uses"] = [{k: v for k, v in use.items() if k != "line"} for use in document["uses"]]
    return document


RENDERERS = {"table": render_table, "json": render_json, "markdown": render_markdown}


# -- the subcommand ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current context)")
    parser.add_argument("--namespace", "-n", metavar="NS", help="where KServe's controller runs (default: kserve)")
    parser.add_argument(
        "--all-namespaces", "-A", action="store_true", help="list images of workloads in every namespace"
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target-image", metavar="IMAGE", help="the proxy image you plan to run")
    target.add_argument(
        "--target-proxy", metavar="ALIAS", help="the proxy image you plan to run, by matrix alias (e.g. quay-v0.18.0)"
    )
    parser.add_argument(
        "--matrix", metavar="FILE", help="matrix file for --target-proxy (default: scenarios/matrix.yaml)"
    )
    parser.add_argument(
        "--registry-mirror", action="append", default=[], metavar="SRC=DST",
        help="probe SRC/... at DST/... instead (repeatable), e.g. gcr.io/kubebuilder=registry.example:5000/kubebuilder",
    )
    parser.add_argument(
        "--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
        help="talk plain HTTP to this registry (localhost and 127.0.0.1 always are)",
    )
    parser.add_argument("--no-probe", action="store_true", help="do not ask registries whether images can be pulled")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per registry request (default 10)")
    parser.add_argument(
        "--check-metrics", action="store_true",
        help="WRITES: also scrape the proxied metrics with temporary ServiceAccounts and RBAC (removed afterwards)",
    )
    parser.add_argument(
        "--metrics-url", metavar="URL",
        help="with --check-metrics: the proxy's metrics URL (default: kubectl port-forward to the metrics Service)",
    )
    parser.add_argument("--kubectl", metavar="PATH", help="kubectl for the port-forward (default: from PATH)")
    parser.add_argument("--format", choices=sorted(RENDERERS), default="table", help="output format")


def run(args: argparse.Namespace) -> int:
    if args.metrics_url and not args.check_metrics:
        raise UsageError("--metrics-url: only meaningful with --check-metrics")
    options = Options(
        kubeconfig=args.kubeconfig, context=args.context, namespace=args.namespace,
        all_namespaces=args.all_namespaces, target_image=args.target_image, target_proxy=args.target_proxy,
        registry_mirror=tuple(args.registry_mirror), insecure_registry=tuple(args.insecure_registry),
        probe=not args.no_probe, timeout=args.timeout, check_metrics=args.check_metrics,
        metrics_url=args.metrics_url, kubectl=args.kubectl, matrix=args.matrix,
    )
    report = preflight(options)
    sys.stdout.write(RENDERERS[args.format](report))
    return report.exit_code
