"""Whether the proxy's ServiceAccount may do what kube-rbac-proxy delegates (SubjectAccessReviews, never stored)."""

from __future__ import annotations

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e.apply import api_message
from e2e.preflight.model import (
    EXIT_REJECTED,
    PROXY_PERMISSIONS,
    REQUEST_TIMEOUT,
    Check,
    ProxySidecar,
    Status,
)
from e2e.tokens import service_account_username


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
