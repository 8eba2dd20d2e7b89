"""ServiceAccount tokens through the TokenRequest API, and kubeconfigs that use them.

Shared by both tiers: only the API server is involved. Every minted token is registered
with ``e2e.secrets`` before it is returned, so no log line or report can show it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e import secrets
from e2e.errors import HarnessError, UsageError

#: The API server refuses TokenRequests for less than ten minutes.
MIN_EXPIRATION_SECONDS = 600


class TokenRequestFailed(HarnessError):
    """The API server did not issue a token for a ServiceAccount."""


def service_account_username(namespace: str, name: str) -> str:
    """The user name a ServiceAccount's token authenticates as."""
    return f"system:serviceaccount:{namespace}:{name}"


def ensure_service_account(api: k8s_client.ApiClient, namespace: str, name: str) -> k8s_client.V1ServiceAccount:
    """The ServiceAccount ``namespace/name``, created (with its namespace) if missing."""
    core = k8s_client.CoreV1Api(api)
    _create_if_missing(
        lambda: core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=namespace)))
    )
    _create_if_missing(
        lambda: core.create_namespaced_service_account(
            namespace, k8s_client.V1ServiceAccount(metadata=k8s_client.V1ObjectMeta(name=name))
        )
    )
    account: k8s_client.V1ServiceAccount = core.read_namespaced_service_account(name, namespace)
    return account


def mint_token(
    api: k8s_client.ApiClient,
    namespace: str,
    service_account: str,
    *,
    audiences: Sequence[str] | None = None,
    expiration_seconds: int = 3600,
) -> str:
    """A fresh token for ``namespace/service_account`` (registered as a secret).

    ``audiences`` empty or None: the API server's own audiences, which is what
    kube-rbac-proxy's TokenReviews check when it has no ``--auth-token-audiences``.
    """
    if expiration_seconds < MIN_EXPIRATION_SECONDS:
        raise UsageError(f"expiration_seconds {expiration_seconds}: expected at least {MIN_EXPIRATION_SECONDS}")
    request = k8s_client.AuthenticationV1TokenRequest(
        spec=k8s_client.V1TokenRequestSpec(audiences=list(audiences or []), expiration_seconds=expiration_seconds)
    )
    try:
        response = k8s_client.CoreV1Api(api).create_namespaced_service_account_token(
            service_account, namespace, request
        )
    except ApiException as error:
        raise TokenRequestFailed(
            f"TokenRequest for ServiceAccount {namespace}/{service_account}: "
            f"expected a token, got HTTP {error.status} {error.reason}"
        ) from None
    token = str(response.status.token or "")
    if not token:
        raise TokenRequestFailed(
            f"TokenRequest for ServiceAccount {namespace}/{service_account}: expected a token, got an empty status"
        )
    return secrets.register(token)


def kubeconfig_for_token(
    server: str, ca: Path | str | bytes, token: str, path: Path, *, user: str = "token-user"
) -> Path:
    """Write a kubeconfig (mode 0600) that talks to ``server`` with a bearer ``token``.

    ``ca`` is the CA bundle: a file path, or the PEM bytes themselves.
    """
    ca_data = ca if isinstance(ca, bytes) else Path(ca).read_bytes()
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "cluster",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_data).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": secrets.register(token)}}],
        "contexts": [{"name": "default", "context": {"cluster": "cluster", "user": user}}],
        "current-context": "default",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(config, handle)
    return path


def _create_if_missing(create: Callable[[], object]) -> None:
    try:
        create()
    except ApiException as error:
        if error.status != 409:  # 409 Conflict: it already exists, which is what we want
            raise


def kubeconfig_for_service_account(
    api: k8s_client.ApiClient,
    *,
    server: str,
    ca: Path | str | bytes,
    namespace: str,
    service_account: str,
    path: Path,
    expiration_seconds: int = 24 * 3600,
) -> Path:
    """Ensure ``namespace/service_account`` exists, mint it a token and write a kubeconfig
    (0600) with it: how a process authenticates as that ServiceAccount from outside a pod.

    The default lifetime outlasts a whole run: a process reads its kubeconfig only once.
    """
    ensure_service_account(api, namespace, service_account)
    token = mint_token(api, namespace, service_account, expiration_seconds=expiration_seconds)
    return kubeconfig_for_token(server, ca, token, path, user=service_account)
