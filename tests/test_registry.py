"""The availability probe against a real distribution registry on 127.0.0.1.

The registry is Debian's ``docker-registry`` (distribution v2.8); images are pushed into
it through its HTTP API. The token flow runs the same registry with ``auth: token``,
trusting a certificate whose key signs the JWTs a local token service hands out.
Failure modes a real registry will not produce on demand (429, 500s, a hang, a redirect)
come from small ``http.server`` scripts in front of or beside it.
"""

from __future__ import annotations

import http.server
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers.registry_server import (
    TOKEN_ISSUER,
    TOKEN_SERVICE,
    RunningRegistry,
    TokenService,
    TokenSigner,
    push_image,
    require_registry_binary,
    run_registry,
    scripted_handler,
    serve_http,
    silent_server,
)

from e2e.http_retry import retry_after_seconds
from e2e.images import RegistryMirrors
from e2e.registry import (
    MANIFEST_MEDIA_TYPES,
    ImageAvailability,
    RegistryProbe,
    Status,
    parse_bearer_challenge,
)

DIGEST = "sha256:" + "0" * 64
PULL_PASSWORD = "pull-secret-password-for-tests"  # a pull secret's password (secrets: redacted)


@pytest.fixture(scope="module")
def binary() -> str:
    return require_registry_binary()


@pytest.fixture(scope="module")
def registry(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(binary, tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="module")
def pushed(registry: RunningRegistry) -> dict[str, str]:
    """Images in the plain registry: reference -> manifest digest."""
    return {
        f"{registry.host}/kubebuilder/kube-rbac-proxy:v0.13.1": push_image(
            registry.url, "kubebuilder/kube-rbac-proxy", "v0.13.1"
        ),
        f"{registry.host}/brancz/kube-rbac-proxy:v0.18.0": push_image(
            registry.url, "brancz/kube-rbac-proxy", "v0.18.0"
        ),
    }


def fast_probe(**kwargs: object) -> tuple[RegistryProbe, list[float]]:
    """A probe whose waits are recorded instead of slept."""
    waits: list[float] = []
    options: dict[str, object] = {"sleep": waits.append, "connect_timeout": 2.0, "read_timeout": 2.0}
    options.update(kwargs)
    return RegistryProbe(**options), waits  # type: ignore[arg-type]


# -- a real registry, no auth ---------------------------------------------------------------


def test_available_image_reports_the_registrys_digest(registry: RunningRegistry, pushed: dict[str, str]) -> None:
    probe, _ = fast_probe()
    for ref, digest in pushed.items():
        result = probe.probe(ref)
        assert result == ImageAvailability(Status.AVAILABLE, digest=digest, probed=ref)


def test_pinned_digest_is_probed_by_digest(registry: RunningRegistry, pushed: dict[str, str]) -> None:
    probe, _ = fast_probe()
    ref, digest = next(iter(pushed.items()))
    assert probe.probe(f"{ref}@{digest}").digest == digest
    other = ref.rsplit(":", 1)[0] + "@" + DIGEST
    assert probe.probe(other).status is Status.MISSING


def test_missing_tag_and_missing_repository(registry: RunningRegistry, pushed: dict[str, str]) -> None:
    probe, _ = fast_probe()
    assert probe.probe(f"{registry.host}/kubebuilder/kube-rbac-proxy:v9.9.9").status is Status.MISSING
    assert probe.probe(f"{registry.host}/nobody/nothing:v1").status is Status.MISSING


def test_mirror_rewrites_the_probed_reference(registry: RunningRegistry, pushed: dict[str, str]) -> None:
    mirrors = RegistryMirrors.from_options([f"gcr.io/kubebuilder={registry.host}/kubebuilder"])
    probe, _ = fast_probe(mirrors=mirrors)
    result = probe.probe("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1")
    assert result.status is Status.AVAILABLE
    assert result.probed == f"{registry.host}/kubebuilder/kube-rbac-proxy:v0.13.1"
    assert result.digest == pushed[result.probed]


def test_endpoint_override_points_a_public_host_at_the_local_registry(
    registry: RunningRegistry, pushed: dict[str, str]
) -> None:
    probe, _ = fast_probe(endpoints={"quay.io": registry.url})
    result = probe.probe("quay.io/brancz/kube-rbac-proxy:v0.18.0")
    assert result.status is Status.AVAILABLE
    assert result.digest == pushed[f"{registry.host}/brancz/kube-rbac-proxy:v0.18.0"]


def test_a_host_url_mirror_is_asked_for_the_same_path(registry: RunningRegistry, pushed: dict[str, str]) -> None:
    """--registry-mirror quay.io=URL, as containerd's certs.d mirror: the name is kept and URL asked."""
    mirrors = RegistryMirrors.from_options([f"quay.io={registry.url}"])
    assert mirrors.rewrite("quay.io/brancz/kube-rbac-proxy:v0.18.0") == "quay.io/brancz/kube-rbac-proxy:v0.18.0"
    probe, _ = fast_probe(mirrors=mirrors)
    result = probe.probe("quay.io/brancz/kube-rbac-proxy:v0.18.0")
    assert result.status is Status.AVAILABLE
    assert result.digest == pushed[f"{registry.host}/brancz/kube-rbac-proxy:v0.18.0"]
    assert result.probed == f"quay.io/brancz/kube-rbac-proxy:v0.18.0 at {registry.url}"
    assert probe.probe("quay.io/brancz/kube-rbac-proxy:v9.9.9").status is Status.MISSING


def test_redirect_is_followed_to_the_real_registry(registry: RunningRegistry, pushed: dict[str, str]) -> None:
    handler, seen = scripted_handler(lambda request, _: (307, {"Location": registry.url + request.path}))
    with serve_http(handler) as front:
        probe, _ = fast_probe(endpoints={"registry.k8s.io": front})
        result = probe.probe("registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1")
    assert result.status is Status.AVAILABLE
    assert result.digest == pushed[f"{registry.host}/kubebuilder/kube-rbac-proxy:v0.13.1"]
    assert seen == ["HEAD /v2/kubebuilder/kube-rbac-proxy/manifests/v0.13.1"]


# -- a real registry with token auth --------------------------------------------------------


@pytest.fixture(scope="module")
def token_registry(
    binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningRegistry, TokenService, str]]:
    workdir = tmp_path_factory.mktemp("token-registry")
    signer = TokenSigner.create()
    bundle = workdir / "token-signer.pem"
    bundle.write_bytes(signer.certificate_pem())
    tokens = TokenService(signer, refused={"private/secret"}, users={"puller": PULL_PASSWORD})
    with serve_http(tokens.handler()) as token_url:
        auth = {
            "token": {
                "realm": f"{token_url}/token",
                "service": TOKEN_SERVICE,
                "issuer": TOKEN_ISSUER,
                "rootcertbundle": str(bundle),
            }
        }
        with run_registry(binary, workdir, auth=auth) as running:
            pusher = requests.Session()
            pusher.headers["Authorization"] = "Bearer " + signer.token(
                [
                    {"type": "repository", "name": name, "actions": ["pull", "push"]}
                    for name in ("brancz/kube-rbac-proxy", "private/secret")
                ]
            )
            digest = push_image(running.url, "brancz/kube-rbac-proxy", "v0.18.0", session=pusher)
            push_image(running.url, "private/secret", "v1", session=pusher)
            yield running, tokens, digest


def test_bearer_token_flow_and_per_scope_cache(token_registry: tuple[RunningRegistry, TokenService, str]) -> None:
    registry, tokens, digest = token_registry
    tokens.requests_by_scope.clear()
    probe, _ = fast_probe()
    ref = f"{registry.host}/brancz/kube-rbac-proxy:v0.18.0"

    assert probe.probe(ref) == ImageAvailability(Status.AVAILABLE, digest=digest, probed=ref)
    assert probe.probe(ref).digest == digest  # second probe: cached token
    assert probe.probe(f"{registry.host}/brancz/kube-rbac-proxy:v0.0.0").status is Status.MISSING
    assert probe.probe(f"{registry.host}/other/repo:v1").status is Status.MISSING

    assert tokens.requests_by_scope == {
        "repository:brancz/kube-rbac-proxy:pull": 1,
        "repository:other/repo:pull": 1,
    }
    assert probe.token_requests == 2


def test_token_without_access_is_denied(token_registry: tuple[RunningRegistry, TokenService, str]) -> None:
    registry, _, _ = token_registry
    probe, _ = fast_probe()
    result = probe.probe(f"{registry.host}/private/secret:v1")
    assert result.status is Status.DENIED
    assert "missing or denied" in result.detail


def test_a_pull_secrets_credentials_open_a_private_repository_and_stay_secret(
    token_registry: tuple[RunningRegistry, TokenService, str], caplog: pytest.LogCaptureFixture
) -> None:
    registry, _, _ = token_registry
    ref = f"{registry.host}/private/secret:v1"
    anonymous, _ = fast_probe()
    assert anonymous.probe(ref).status is Status.DENIED
    probe, _ = fast_probe(credentials={registry.host: ("puller", PULL_PASSWORD)})
    assert probe.probe(ref).status is Status.AVAILABLE
    wrong, _ = fast_probe(credentials={registry.host: ("puller", "not-the-password")})
    refused = wrong.probe(ref)
    assert refused.status is Status.DENIED and "refused the pull secret's credentials" in refused.detail
    # The password is a secret from now on: redacted wherever the harness writes.
    from e2e.secrets import redact

    assert PULL_PASSWORD not in redact(f"Basic puller:{PULL_PASSWORD}")


def test_registry_without_a_token_is_denied(token_registry: tuple[RunningRegistry, TokenService, str]) -> None:
    registry, _, _ = token_registry
    response = requests.head(
        f"{registry.url}/v2/brancz/kube-rbac-proxy/manifests/v0.18.0",
        headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
        timeout=5,
    )
    assert response.status_code == 401  # the registry really demands the token
    challenge = parse_bearer_challenge(response.headers["WWW-Authenticate"])
    assert challenge is not None
    assert challenge.service == TOKEN_SERVICE
    assert challenge.scope == "repository:brancz/kube-rbac-proxy:pull"


# -- failure modes from scripted servers ------------------------------------------------------


def test_429_then_200_honours_retry_after() -> None:
    def answer(_: http.server.BaseHTTPRequestHandler, n: int) -> tuple[int, dict[str, str]]:
        return (429, {"Retry-After": "7"}) if n == 0 else (200, {"Docker-Content-Digest": DIGEST})

    handler, seen = scripted_handler(answer)
    with serve_http(handler) as url:
        probe, waits = fast_probe(endpoints={"registry.example": url})
        result = probe.probe("registry.example/a/b:v1")
    assert result == ImageAvailability(Status.AVAILABLE, digest=DIGEST, probed="registry.example/a/b:v1")
    assert len(seen) == 2
    assert waits == [7.0]


def test_retry_after_is_capped() -> None:
    def answer(_: http.server.BaseHTTPRequestHandler, n: int) -> tuple[int, dict[str, str]]:
        return (503, {"Retry-After": "3600"}) if n == 0 else (200, {})

    handler, _ = scripted_handler(answer)
    with serve_http(handler) as url:
        probe, waits = fast_probe(endpoints={"registry.example": url}, max_wait=5.0)
        assert probe.probe("registry.example/a:v1").status is Status.AVAILABLE
    assert waits == [5.0]


def test_500s_are_retried_a_bounded_number_of_times() -> None:
    handler, seen = scripted_handler(lambda _, __: (500, {}))
    with serve_http(handler) as url:
        probe, waits = fast_probe(endpoints={"registry.example": url}, max_attempts=3, backoff=0.5)
        result = probe.probe("registry.example/a:v1")
    assert result.status is Status.UNREACHABLE
    assert "500" in result.detail
    assert len(seen) == 3
    assert waits == [0.5, 1.0]  # exponential


def test_404_and_403_are_not_retried() -> None:
    for code, status in ((404, Status.MISSING), (403, Status.DENIED)):
        handler, seen = scripted_handler(lambda _, __, c=code: (c, {}))  # type: ignore[misc]
        with serve_http(handler) as url:
            probe, waits = fast_probe(endpoints={"registry.example": url})
            assert probe.probe("registry.example/a:v1").status is status
        assert len(seen) == 1 and waits == []


def test_401_after_anonymous_token_is_missing_or_denied() -> None:
    """What quay.io does for a repository that does not exist."""
    token_requests: list[str] = []

    class Tokens(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            token_requests.append(self.path)
            body = b'{"token": "anonymous-token-value"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serve_http(Tokens) as token_url:
        challenge = f'Bearer realm="{token_url}/v2/auth",service="quay.io",scope="repository:nobody/nothing:pull"'
        handler, seen = scripted_handler(lambda _, __: (401, {"WWW-Authenticate": challenge}))
        with serve_http(handler) as url:
            probe, _ = fast_probe(endpoints={"quay.io": url})
            result = probe.probe("quay.io/nobody/nothing:v1")
    assert result.status is Status.DENIED
    assert "missing or denied" in result.detail
    assert len(seen) == 2 and len(token_requests) == 1
    assert "scope=repository%3Anobody%2Fnothing%3Apull" in token_requests[0]


def test_basic_auth_challenge_is_denied() -> None:
    handler, _ = scripted_handler(lambda _, __: (401, {"WWW-Authenticate": 'Basic realm="x"'}))
    with serve_http(handler) as url:
        probe, _ = fast_probe(endpoints={"registry.example": url})
        assert probe.probe("registry.example/a:v1").status is Status.DENIED


def test_hung_registry_is_unreachable() -> None:
    with silent_server() as host:
        probe, _ = fast_probe(read_timeout=0.5)
        result = probe.probe(f"{host}/a/b:v1")
    assert result.status is Status.UNREACHABLE
    assert result.detail == f"{host}: timed out waiting for an answer"


def test_refused_connection_is_unreachable() -> None:
    from helpers.registry_server import free_port

    probe, _ = fast_probe()
    port = free_port()
    result = probe.probe(f"127.0.0.1:{port}/a:v1")
    assert result == ImageAvailability(
        Status.UNREACHABLE, detail=f"127.0.0.1:{port}: connection refused", probed=f"127.0.0.1:{port}/a:v1"
    )


def test_unresolvable_host_is_unreachable() -> None:
    probe, _ = fast_probe()
    result = probe.probe("registry.invalid/a:v1")  # .invalid never resolves (RFC 2606)
    assert result.status is Status.UNREACHABLE
    assert result.detail == "registry.invalid: cannot resolve the host name"


# -- pure pieces --------------------------------------------------------------------------------


def test_parse_bearer_challenge() -> None:
    challenge = parse_bearer_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"'
    )
    assert challenge is not None
    assert challenge.realm == "https://auth.docker.io/token"
    assert challenge.service == "registry.docker.io"
    assert challenge.scope == "repository:library/nginx:pull"
    assert parse_bearer_challenge('Basic realm="x"') is None
    assert parse_bearer_challenge("Bearer service=x") is None


def test_retry_after_forms() -> None:
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=lambda: 1445412480.0) == 10.0


def test_base_urls() -> None:
    probe = RegistryProbe(insecure_registries=["registry.lan:5000"])
    assert probe.base_url("docker.io") == "https://registry-1.docker.io"
    assert probe.base_url("quay.io") == "https://quay.io"
    assert probe.base_url("localhost:5000") == "http://localhost:5000"
    assert probe.base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert probe.base_url("[::1]:5000") == "http://[::1]:5000"
    assert probe.base_url("registry.lan:5000") == "http://registry.lan:5000"


def test_docker_hub_names_are_normalized_for_the_api(tmp_path: Path) -> None:
    handler, seen = scripted_handler(lambda _, __: (200, {}))
    with serve_http(handler) as url:
        probe, _ = fast_probe(endpoints={"docker.io": url})
        probe.probe("nginx")
        probe.probe("kserve/kserve-controller:v0.10.1")
    assert seen == [
        "HEAD /v2/library/nginx/manifests/latest",
        "HEAD /v2/kserve/kserve-controller/manifests/v0.10.1",
    ]
