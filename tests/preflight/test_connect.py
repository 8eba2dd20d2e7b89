"""``connect``'s choice between a kubeconfig and the pod's ServiceAccount, on a fake pod: a
ServiceAccount directory in a temporary folder, the service environment kubelet sets, and an
API server address nothing listens on (so the answer names the server it tried, and nothing
leaves the machine). The ServiceAccount against a real API server: ``test_watch_images.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from e2e.errors import UsageError
from e2e.local.processes import free_loopback_port
from e2e.preflight import cluster


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """A fake pod: its ServiceAccount mounted, the API server's address in the environment, no
    kubeconfig anywhere. Returns the API server's (closed) port."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("eyJhbGciOiJSUzI1NiJ9.fake-service-account.token-signature")
    trustme.CA().cert_pem.write_to_path(str(account / "ca.crt"))
    port = free_loopback_port()
    monkeypatch.setattr(cluster, "SERVICE_ACCOUNT_DIR", account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(port))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config
    return port


def test_in_a_pod_without_a_kubeconfig_the_service_account_is_used(pod: int) -> None:
    with pytest.raises(UsageError, match=rf"cluster https://127\.0\.0\.1:{pod} \(context in-cluster\): unreachable"):
        cluster.connect(None, None)


def test_the_service_account_configuration_takes_the_pods_token_and_ca(pod: int) -> None:
    configuration = cluster._in_cluster_configuration()
    assert configuration.host == f"https://127.0.0.1:{pod}"
    assert configuration.ssl_ca_cert == str(cluster.SERVICE_ACCOUNT_DIR / "ca.crt")
    assert configuration.api_key["BearerToken"].startswith("bearer eyJ")
    # The kubelet rotates the token: the client reads the file again before it expires.
    assert configuration.refresh_api_key_hook is not None


@pytest.mark.parametrize("kubeconfig_env", ["", "unset"])
def test_an_empty_or_unset_kubeconfig_variable_still_means_no_kubeconfig(
    pod: int, kubeconfig_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kubeconfig_env != "unset":
        monkeypatch.setenv("KUBECONFIG", kubeconfig_env)
    with pytest.raises(UsageError, match="context in-cluster"):
        cluster.connect(None, None)


def test_a_kubeconfig_or_a_context_wins_over_the_service_account(
    pod: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError, match=r"the default kubeconfig \(\$KUBECONFIG or ~/\.kube/config\): not usable"):
        cluster.connect(None, "prod")  # a context names a kubeconfig's: there is none
    with pytest.raises(UsageError, match="--kubeconfig /nonexistent: not found"):
        cluster.connect("/nonexistent", None)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")  # named, even if missing: kubectl's choice too
    with pytest.raises(UsageError, match=r"the default kubeconfig \(\$KUBECONFIG or ~/\.kube/config\): not usable"):
        cluster.connect(None, None)
    monkeypatch.delenv("KUBECONFIG")
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    (tmp_path / "home" / ".kube" / "config").write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(UsageError, match="the default kubeconfig"):
        cluster.connect(None, None)


def test_outside_a_pod_the_kubeconfig_error_stays(pod: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(UsageError, match=r"the default kubeconfig .*: not usable"):
        cluster.connect(None, None)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    (cluster.SERVICE_ACCOUNT_DIR / "token").unlink()  # a pod with automountServiceAccountToken: false
    with pytest.raises(UsageError, match=r"the default kubeconfig .*: not usable"):
        cluster.connect(None, None)


def test_a_service_account_without_its_ca_is_one_line(pod: int) -> None:
    (cluster.SERVICE_ACCOUNT_DIR / "ca.crt").unlink()
    with pytest.raises(UsageError, match=r"the pod's ServiceAccount \(.*\): not usable \(.*certification file"):
        cluster.connect(None, None)
