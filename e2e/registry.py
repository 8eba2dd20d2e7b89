"""Is this image pullable? Asked of the registry over the distribution (OCI) API.

One ``HEAD /v2/<name>/manifests/<reference>`` per image, with the anonymous bearer-token
dance registries demand (``401`` + ``WWW-Authenticate: Bearer realm=..,service=..,scope=..``),
redirects followed (registry.k8s.io redirects), and bounded retries on ``429``/``5xx`` only.
HEAD, not GET: Docker Hub counts manifest GETs against its pull limit, not HEADs.
Knows nothing of Kubernetes.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt

from e2e.http_retry import retry_after_seconds
from e2e.images import DEFAULT_REGISTRY, ImageReference, RegistryMirrors
from e2e.secrets import register

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
# Docker Hub's API lives on another host than the name users write.
DEFAULT_ENDPOINTS = {DEFAULT_REGISTRY: "https://registry-1.docker.io"}
# Registries on the loopback interface speak plain HTTP unless told otherwise.
PLAIN_HTTP_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# A token without ``expires_in`` is valid for 60 s (distribution token spec).
DEFAULT_TOKEN_LIFETIME = 60.0


class Status(StrEnum):
    AVAILABLE = "available"
    MISSING = "missing"
    DENIED = "denied"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class ImageAvailability:
    status: Status
    digest: str | None = None
    detail: str = ""
    # The reference actually asked for: differs from the input when a mirror applied.
    probed: str = ""

    @property
    def available(self) -> bool:
        return self.status is Status.AVAILABLE

    def describe(self) -> str:
        text = str(self.status)
        if self.detail:
            text += f" ({self.detail})"
        return text


@dataclass(frozen=True)
class BearerChallenge:
    realm: str
    service: str | None
    scope: str | None


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_bearer_challenge(header: str) -> BearerChallenge | None:
    """The Bearer challenge of a ``WWW-Authenticate`` header, or None (Basic, malformed)."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    values = {key.lower(): quoted if quoted else bare for key, quoted, bare in _CHALLENGE_PARAM.findall(params)}
    realm = values.get("realm")
    if not realm:
        return None
    return BearerChallenge(realm=realm, service=values.get("service"), scope=values.get("scope"))


class RegistryProbe:
    """Asks registries whether images can be pulled; caches anonymous tokens per scope.

    ``endpoints`` maps a registry host as written in references (``quay.io``) to the base
    URL to talk to (``http://127.0.0.1:5000``): tests and air-gapped setups inject it here.
    ``credentials`` maps a host to (user, password), as a pod's pull secret holds them: sent
    to the registry's token service (Bearer) or with the request (Basic), never logged.
    ``sleep`` is injectable so that tests can see the waits without spending them.
    """

    def __init__(
        self,
        *,
        mirrors: RegistryMirrors | None = None,
        endpoints: Mapping[str, str] | None = None,
        insecure_registries: Iterable[str] = (),
        credentials: Mapping[str, tuple[str, str]] | None = None,
        session: requests.Session | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        max_attempts: int = 4,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.mirrors = mirrors or RegistryMirrors()
        # HOST=URL mirrors answer for their host under the same paths, as they do for containerd.
        self.endpoints = {**DEFAULT_ENDPOINTS, **dict(self.mirrors.endpoints), **(endpoints or {})}
        self.insecure = frozenset(insecure_registries)
        self.credentials = dict(credentials or {})
        for _user, password in self.credentials.values():
            register(password)
        self.session = session or requests.Session()
        self.timeout = (connect_timeout, read_timeout)
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_wait = max_wait
        self.sleep = sleep
        self._tokens: dict[tuple[str, str | None, str | None, str | None], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.token_requests = 0

    # -- public -------------------------------------------------------------------------
    def probe(self, ref: ImageReference | str) -> ImageAvailability:
        """Is ``ref`` (through the mirrors) pullable? Never raises for network trouble."""
        parsed = ImageReference.parse(ref) if isinstance(ref, str) else ref
        target = self.mirrors.rewrite_reference(parsed)
        base = self.base_url(target.domain)
        url = f"{base}/v2/{target.repository}/manifests/{target.manifest_reference}"
        result = self._probe_url(url, self.credentials.get(target.domain))
        # A HOST=URL mirror keeps the name: say where it was asked.
        probed = (
            target.format() if target.domain not in dict(self.mirrors.endpoints) else f"{target.format()} at {base}"
        )
        return ImageAvailability(result.status, result.digest, result.detail, probed=probed)

    def base_url(self, domain: str) -> str:
        if domain in self.endpoints:
            return self.endpoints[domain].rstrip("/")
        host = domain.rsplit(":", 1)[0] if not domain.endswith("]") else domain
        plain = host in PLAIN_HTTP_HOSTS or domain in self.insecure or host in self.insecure
        return f"{'http' if plain else 'https'}://{domain}"

    # -- the exchange ---------------------------------------------------------------------
    def _probe_url(self, url: str, login: tuple[str, str] | None = None) -> ImageAvailability:
        who = "the pull secret's credentials" if login else "an anonymous token"
        try:
            response = self._head(url, token=None)
            if response.status_code == 401:
                challenge = parse_bearer_challenge(response.headers.get("WWW-Authenticate", ""))
                if challenge is None and login is not None:  # Basic: the credentials go with the request
                    return self._classify(self._head(url, token=None, login=login))
                if challenge is None:
                    return ImageAvailability(
                        Status.DENIED, detail="401 without a Bearer challenge: credentials required"
                    )
                token = self._token(challenge, login)
                if token is None:
                    return ImageAvailability(Status.DENIED, detail=f"the token service refused {who}")
                # The challenge came from the final hop of any redirect: ask it directly.
                response = self._head(response.url, token=token)
                if response.status_code == 401:
                    return ImageAvailability(
                        Status.DENIED,
                        detail=f"401 with {who}: missing or denied (quay.io answers so for a missing repository)",
                    )
            return self._classify(response)
        except requests.RequestException as exc:
            return ImageAvailability(Status.UNREACHABLE, detail=network_failure(exc, url))

    @staticmethod
    def _classify(response: requests.Response) -> ImageAvailability:
        code = response.status_code
        if 200 <= code < 300:
            return ImageAvailability(Status.AVAILABLE, digest=response.headers.get("Docker-Content-Digest"))
        if code == 404:
            return ImageAvailability(Status.MISSING, detail="404: no such repository, tag or digest")
        if code == 403:
            return ImageAvailability(Status.DENIED, detail="403 forbidden")
        if code == 429 or code >= 500:
            return ImageAvailability(Status.UNREACHABLE, detail=f"HTTP {code} after retries")
        return ImageAvailability(Status.UNREACHABLE, detail=f"unexpected HTTP {code}")

    def _head(self, url: str, token: str | None, login: tuple[str, str] | None = None) -> requests.Response:
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self._with_retries(
            lambda: self.session.head(url, headers=headers, timeout=self.timeout, allow_redirects=True, auth=login)
        )

    def _token(self, challenge: BearerChallenge, login: tuple[str, str] | None = None) -> str | None:
        key = (challenge.realm, challenge.service, challenge.scope, login[0] if login else None)
        now = time.monotonic()
        with self._lock:
            cached = self._tokens.get(key)
            if cached and cached[1] > now:
                return cached[0]
        params = {name: value for name, value in (("service", challenge.service), ("scope", challenge.scope)) if value}
        with self._lock:
            self.token_requests += 1
        response = self._with_retries(
            lambda: self.session.get(challenge.realm, params=params, timeout=self.timeout, auth=login)
        )
        if response.status_code != 200:
            log.debug("token service %s answered %s", challenge.realm, response.status_code)
            return None
        try:
            body: Any = response.json()
        except ValueError:
            return None
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            return None
        register(token)
        lifetime = body.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else DEFAULT_TOKEN_LIFETIME
        with self._lock:
            # Renew 10% early so a token never expires between the cache and the HEAD.
            self._tokens[key] = (token, now + seconds * 0.9)
        return token

    # -- retries ----------------------------------------------------------------------------
    def _with_retries(self, send: Callable[[], requests.Response]) -> requests.Response:
        retrying = Retrying(
            retry=retry_if_result(lambda r: r.status_code == 429 or r.status_code >= 500),
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            sleep=self.sleep,
            # After the last attempt hand back the 429/5xx itself; the caller classifies it.
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            reraise=True,
        )
        response: requests.Response = retrying(send)
        return response

    def _wait(self, state: RetryCallState) -> float:
        """Retry-After when the registry sent one (capped), else exponential backoff."""
        exponential = min(self.max_wait, self.backoff * 2.0 ** (state.attempt_number - 1))
        outcome = state.outcome
        if outcome is None or outcome.failed:
            return exponential
        response: requests.Response = outcome.result()
        asked = retry_after_seconds(response.headers.get("Retry-After"))
        return exponential if asked is None else min(self.max_wait, asked)


def network_failure(exc: requests.RequestException, url: str) -> str:
    """A short reason for a failed request (requests' own text is a paragraph)."""
    failed_url = exc.request.url if exc.request is not None and exc.request.url else url
    host = urlsplit(str(failed_url)).netloc or url
    text = str(exc)
    if isinstance(exc, requests.ConnectTimeout):
        return f"{host}: connect timed out"
    if isinstance(exc, requests.Timeout):
        return f"{host}: timed out waiting for an answer"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"{host}: TLS handshake failed"
    if any(sign in text for sign in ("NameResolutionError", "Name or service not known", "name resolution")):
        return f"{host}: cannot resolve the host name"
    if "Connection refused" in text:
        return f"{host}: connection refused"
    return f"{host}: {type(exc).__name__}"
