"""How the checks talk to the proxy and the model server over HTTP: one unverifying TLS
session for kube-rbac-proxy's self-signed certificate, and bounded retries on connection
errors only, while an endpoint comes up."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import requests
import tenacity
from requests.adapters import HTTPAdapter
from urllib3.util.ssl_ import create_urllib3_context

from e2e.text import one_line
from e2e.unverified_tls import ignore_insecure_request_warnings

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
#: How much of an unexpected answer's body a check keeps as evidence.
BODY_EVIDENCE_CHARS = 200

# kube-rbac-proxy without ``--tls-cert-file`` serves a self-signed certificate that it
# generates at start-up, so there is nothing to verify it against; the checks are about
# authentication and authorization, not about the serving certificate. verify=False alone
# still has urllib3 build a TLS context per connection and load the system CA store into
# it (~30 ms of CPU each time) only to ignore it: one shared unverifying context skips that.
_UNVERIFIED_TLS = create_urllib3_context(cert_reqs=ssl.CERT_NONE)


class _SelfSignedTLSAdapter(HTTPAdapter):
    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs["ssl_context"] = _UNVERIFIED_TLS
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


def self_signed_session() -> requests.Session:
    """A session for the proxy's self-signed certificate (still pass verify=False per
    request: with trust_env, REQUESTS_CA_BUNDLE would override a session-level False)."""
    ignore_insecure_request_warnings()
    session = requests.Session()
    session.mount("https://", _SelfSignedTLSAdapter())
    return session


def _log_connection_retry(state: tenacity.RetryCallState) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    log.info(
        "endpoint not reachable yet (attempt %d, %.1fs): %s",
        state.attempt_number,
        state.seconds_since_start or 0.0,
        one_line(error),
    )


def connection_retrying(connect_wait_s: float) -> tenacity.Retrying:
    """Retry only connection-level failures (the proxy or a port-forward still starting).

    Wrong status codes are never retried: kube-rbac-proxy caches authentication results
    (~2 min) and authorization decisions (allowed ~5 min, denied ~30 s), so retrying until
    the "right" code appears could blur what the proxy actually decided.
    """
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(
            (requests.exceptions.ConnectionError, requests.exceptions.ConnectTimeout)
        ),
        stop=tenacity.stop_after_delay(connect_wait_s),
        wait=tenacity.wait_fixed(0.5),
        before_sleep=_log_connection_retry,
        reraise=True,
    )


def get(url: str, token: str | None, *, connect_wait_s: float) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    for attempt in connection_retrying(connect_wait_s):
        # verify=False: the proxy's certificate is self-signed (see above).
        with attempt, self_signed_session() as session:
            return session.get(url, headers=headers, verify=False, timeout=REQUEST_TIMEOUT_S)
    raise AssertionError("unreachable: tenacity either returns or re-raises")


def response_evidence(response: requests.Response) -> list[str]:
    evidence = [f"{response.request.method} {response.url} -> {response.status_code} {response.reason}"]
    challenge = response.headers.get("WWW-Authenticate")
    if challenge:
        evidence.append(f"WWW-Authenticate: {challenge}")
    body = response.text.strip()
    if body:
        evidence.append("body: " + one_line(body, BODY_EVIDENCE_CHARS))
    return evidence
