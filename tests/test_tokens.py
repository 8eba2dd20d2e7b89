"""ServiceAccount tokens from the TokenRequest API, checked by a real API server."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from e2e import secrets
from e2e.errors import UsageError
from e2e.local.controlplane import ControlPlane
from e2e.tokens import (
    TokenRequestFailed,
    ensure_service_account,
    kubeconfig_for_service_account,
    kubeconfig_for_token,
    mint_token,
    service_account_username,
)

pytestmark = pytest.mark.needs_binaries

NAMESPACE = "tokens-test"


@pytest.fixture
def api(control_plane: ControlPlane) -> Iterator[k8s_client.ApiClient]:
    with control_plane.api_client() as client:
        yield client


def _token_review(api: k8s_client.ApiClient, token: str) -> k8s_client.V1TokenReviewStatus:
    review = k8s_client.AuthenticationV1Api(api).create_token_review(
        k8s_client.V1TokenReview(spec=k8s_client.V1TokenReviewSpec(token=token))
    )
    status: k8s_client.V1TokenReviewStatus = review.status
    return status


def _can_get_metrics(api: k8s_client.ApiClient, user: str, groups: list[str]) -> bool:
    review = k8s_client.AuthorizationV1Api(api).create_subject_access_review(
        k8s_client.V1SubjectAccessReview(
            spec=k8s_client.V1SubjectAccessReviewSpec(
                user=user,
                groups=groups,
                non_resource_attributes=k8s_client.V1NonResourceAttributes(path="/metrics", verb="get"),
            )
        )
    )
    return bool(review.status.allowed)


def test_ensure_service_account_creates_namespace_and_account_once(api: k8s_client.ApiClient) -> None:
    first = ensure_service_account(api, NAMESPACE, "twice")
    second = ensure_service_account(api, NAMESPACE, "twice")
    assert first.metadata.uid == second.metadata.uid


def test_a_minted_token_passes_a_token_review_as_its_service_account(api: k8s_client.ApiClient) -> None:
    ensure_service_account(api, NAMESPACE, "reviewed")
    token = mint_token(api, NAMESPACE, "reviewed")
    status = _token_review(api, token)
    assert status.authenticated is True
    assert status.user.username == service_account_username(NAMESPACE, "reviewed")
    assert "system:serviceaccounts" in status.user.groups
    assert f"system:serviceaccounts:{NAMESPACE}" in status.user.groups


def test_a_minted_token_is_registered_as_a_secret(api: k8s_client.ApiClient) -> None:
    ensure_service_account(api, NAMESPACE, "registered")
    token = mint_token(api, NAMESPACE, "registered")
    assert token in secrets.REGISTRY.secrets()
    assert token not in secrets.redact(f"token={token}")


def test_a_garbage_token_is_not_authenticated(api: k8s_client.ApiClient) -> None:
    assert _token_review(api, "not-a-real-token-at-all").authenticated is not True


def test_a_token_for_another_audience_is_not_accepted_by_the_api_server(api: k8s_client.ApiClient) -> None:
    ensure_service_account(api, NAMESPACE, "elsewhere")
    token = mint_token(api, NAMESPACE, "elsewhere", audiences=["https://somewhere-else.example"])
    assert _token_review(api, token).authenticated is not True


def test_subject_access_reviews_follow_rbac(api: k8s_client.ApiClient) -> None:
    rbac = k8s_client.RbacAuthorizationV1Api(api)
    rbac.create_cluster_role(
        k8s_client.V1ClusterRole(
            metadata=k8s_client.V1ObjectMeta(name="tokens-test-metrics-reader"),
            rules=[k8s_client.V1PolicyRule(non_resource_urls=["/metrics"], verbs=["get"])],
        )
    )
    rbac.create_cluster_role_binding(
        k8s_client.V1ClusterRoleBinding(
            metadata=k8s_client.V1ObjectMeta(name="tokens-test-metrics-reader"),
            role_ref=k8s_client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="tokens-test-metrics-reader"
            ),
            subjects=[k8s_client.RbacV1Subject(kind="ServiceAccount", name="scraper", namespace=NAMESPACE)],
        )
    )
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}", "system:authenticated"]
    assert _can_get_metrics(api, service_account_username(NAMESPACE, "scraper"), groups) is True
    assert _can_get_metrics(api, service_account_username(NAMESPACE, "bystander"), groups) is False


def test_kubeconfig_for_token_is_private_and_authenticates_as_the_service_account(
    control_plane: ControlPlane, api: k8s_client.ApiClient, tmp_path: Path
) -> None:
    ensure_service_account(api, NAMESPACE, "kubeconfig-user")
    token = mint_token(api, NAMESPACE, "kubeconfig-user")
    path = kubeconfig_for_token(control_plane.server, control_plane.ca_file, token, tmp_path / "sa.kubeconfig")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with k8s_config.new_client_from_config(config_file=str(path)) as as_sa:
        review = k8s_client.AuthenticationV1Api(as_sa).create_self_subject_review(k8s_client.V1SelfSubjectReview())
    assert review.status.user_info.username == service_account_username(NAMESPACE, "kubeconfig-user")


def test_kubeconfig_for_service_account_accepts_ca_bytes(
    control_plane: ControlPlane, api: k8s_client.ApiClient, tmp_path: Path
) -> None:
    path = kubeconfig_for_service_account(
        api,
        server=control_plane.server,
        ca=control_plane.ca_file.read_bytes(),
        namespace="tokens-other",
        service_account="fresh",
        path=tmp_path / "fresh.kubeconfig",
    )
    with k8s_config.new_client_from_config(config_file=str(path)) as as_sa:
        review = k8s_client.AuthenticationV1Api(as_sa).create_self_subject_review(k8s_client.V1SelfSubjectReview())
    assert review.status.user_info.username == service_account_username("tokens-other", "fresh")


def test_minting_for_a_missing_service_account_says_which(api: k8s_client.ApiClient) -> None:
    with pytest.raises(TokenRequestFailed, match=f"{NAMESPACE}/does-not-exist") as raised:
        mint_token(api, NAMESPACE, "does-not-exist")
    assert "404" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_too_short_expiration_is_refused_before_asking(api: k8s_client.ApiClient) -> None:
    with pytest.raises(UsageError, match="expiration_seconds 60"):
        mint_token(api, NAMESPACE, "anyone", expiration_seconds=60)
