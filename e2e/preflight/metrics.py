"""``--check-metrics``, the only mode that writes: temporary ServiceAccounts and RBAC, a port-forward, the
proxied metrics check of ``e2e.checks``, and a cleanup that also runs on failure, Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets as stdlib_secrets
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

from e2e.apply import api_message
from e2e.errors import HarnessError, UsageError
from e2e.matrix import (
    ControllerProfile,
)
from e2e.preflight.cluster import (
    Connection,
)
from e2e.preflight.model import (
    EXIT_REJECTED,
    MANAGED_BY,
    REQUEST_TIMEOUT,
    Check,
    PreflightReport,
    Status,
)
from e2e.preflight.rbac import service_account_groups
from e2e.results import CellResult, CheckStatus
from e2e.text import one_line
from e2e.tokens import mint_token, service_account_username

log = logging.getLogger(__name__)


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
                self.namespace,
                k8s_client.V1ServiceAccount(metadata=self._meta(name, True)),
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
                subjects=[k8s_client.RbacV1Subject(kind="ServiceAccount", name=self.reader, namespace=self.namespace)],
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


def resolve_kubectl(kubectl: str | None, needed_by: str = "--check-metrics") -> str:
    binary = kubectl or shutil.which("kubectl")
    if not binary or not os.access(binary, os.X_OK):
        where = f"--kubectl {kubectl}: not an executable" if kubectl else "kubectl not found on PATH"
        raise UsageError(f"{needed_by}: {where}; pass --kubectl PATH or --metrics-url URL")
    return binary


def kubectl_env(conn: Connection) -> dict[str, str]:
    """This process's environment with the connection's kubeconfig, for a kubectl it starts."""
    env = dict(os.environ)
    if conn.kubeconfig:
        env["KUBECONFIG"] = str(Path(conn.kubeconfig).expanduser())
    return env


@contextlib.contextmanager
def metrics_endpoint(
    conn: Connection, profile: ControllerProfile, metrics_url: str | None, kubectl: str | None
) -> Iterator[str]:
    """``metrics_url`` as given, else a ``kubectl port-forward`` to the metrics Service."""
    if metrics_url:
        yield metrics_url
        return
    binary = resolve_kubectl(kubectl)
    # Imported here: the kind tier's module pins tool versions in the environment on import.
    from e2e.cluster.kind import port_forward, port_forward_argv
    from e2e.cluster.provider import ServiceTarget

    service = ServiceTarget(profile.namespace, profile.metrics_service, profile.metrics_port)
    argv = [*port_forward_argv(Path(binary), service), *conn.kubectl_context()]
    with port_forward(argv, kubectl_env(conn)) as address:
        yield f"https://{address}/metrics"


def check_metrics(
    conn: Connection,
    profile: ControllerProfile,
    report: PreflightReport,
    metrics_url: str | None,
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
        + ", ".join(report.wrote)
        + " (removed afterwards)",
        file=sys.stderr,
    )
    cell = CellResult(
        cell_id="preflight",
        provider="live",
        kserve_version=report.version.version or "unknown",
        proxy_alias="in-use",
        proxy_image=report.proxy.image or "",
        kubernetes_version="",
    )
    try:
        with sigterm_as_interrupt():
            try:
                access.create()
                if not access.wait_reader_allowed():
                    return Check(
                        "metrics-auth", Status.FAIL, "the temporary reader's RBAC never took effect", EXIT_REJECTED
                    )
                reader = mint_token(conn.api, profile.namespace, access.reader)
                no_access = mint_token(conn.api, profile.namespace, access.no_access)
                with metrics_endpoint(conn, profile, metrics_url, kubectl) as url:
                    report.metrics = check_metrics_auth(
                        cell, url, metrics_reader_token=reader, no_access_token=no_access
                    )
            except ApiException as exc:
                return Check(
                    "metrics-auth",
                    Status.FAIL,
                    f"could not set up the check: {exc.status} {api_message(exc)}",
                    EXIT_REJECTED,
                )
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
        return Check(
            "metrics-auth",
            Status.FAIL,
            f"{first.name}: {first.detail}",
            EXIT_REJECTED,
            evidence=[line for r in failing for line in r.evidence][:6],
        )
    return Check(
        "metrics-auth", Status.OK, f"{len(report.metrics)} metrics checks passed through {profile.proxy_container}"
    )
