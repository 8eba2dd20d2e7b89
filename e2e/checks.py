"""The checks a cell runs, shared by both tiers: metrics auth paths, metrics content,
the image in use, inference v1/v2, token leaks in the proxy's logs, and availability during
an image migration.

Every check talks to the API server through the ``kubernetes`` client or to an endpoint by
URL, never to a provider's internals, and records a ``CheckResult`` (name, status, one-line
detail, evidence, duration) on the ``CellResult`` it is given. Checks fail fast with
evidence: the only retries are short, bounded ones on connection errors while an endpoint
comes up.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import re
import ssl
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import requests
import tenacity
import urllib3
from kubernetes import client as k8s_client
from prometheus_client.parser import text_string_to_metric_families
from requests.adapters import HTTPAdapter
from urllib3.util.ssl_ import create_urllib3_context

from e2e.errors import HarnessError
from e2e.images import ImageReference
from e2e.labels import label_selector
from e2e.results import CellResult, CheckResult, CheckStatus, SecurityFinding, timed_check
from e2e.secrets import REDACTED, encodings, redact
from e2e.text import error_line, one_line

log = logging.getLogger(__name__)

#: KServe's own e2e input for the sklearn-iris sample and the predictions it expects.
IRIS_INPUT: list[list[float]] = [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]
IRIS_EXPECTED: list[int] = [1, 1]

#: The controller-runtime counter that proves the manager's metrics flow through the proxy.
RECONCILE_METRIC = "controller_runtime_reconcile_total"
RECONCILE_CONTROLLER = "inferenceservice"

#: A JWT-shaped token no API server issued (alg "none"): the proxy's TokenReview must reject
#: it. Not a secret; a scenario may add it to the token-leak scan.
GARBAGE_TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJrc2VydmUtY29tcGF0LWdhcmJhZ2UifQ.bm90LWEtc2lnbmF0dXJl"

REQUEST_TIMEOUT_S = 10.0
_BODY_EVIDENCE_CHARS = 200

Protocol = Literal["v1", "v2"]


class InferenceError(HarnessError):
    """A model server answered an inference request with an error or an unexpected shape."""


# --------------------------------------------------------------------------- HTTP plumbing


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


def _self_signed_session() -> requests.Session:
    """A session for the proxy's self-signed certificate (still pass verify=False per
    request: with trust_env, REQUESTS_CA_BUNDLE would override a session-level False)."""
    # A process-wide filter, not catch_warnings(): that one swaps global state and races
    # with other threads (e.g. the harness preparing the next cluster in the background).
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
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


def _connection_retrying(connect_wait_s: float) -> tenacity.Retrying:
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


def _get(url: str, token: str | None, *, connect_wait_s: float) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    for attempt in _connection_retrying(connect_wait_s):
        # verify=False: the proxy's certificate is self-signed (see above).
        with attempt, _self_signed_session() as session:
            return session.get(url, headers=headers, verify=False, timeout=REQUEST_TIMEOUT_S)
    raise AssertionError("unreachable: tenacity either returns or re-raises")


def _response_evidence(response: requests.Response) -> list[str]:
    evidence = [f"{response.request.method} {response.url} -> {response.status_code} {response.reason}"]
    challenge = response.headers.get("WWW-Authenticate")
    if challenge:
        evidence.append(f"WWW-Authenticate: {challenge}")
    body = response.text.strip()
    if body:
        evidence.append("body: " + one_line(body, _BODY_EVIDENCE_CHARS))
    return evidence


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class _AuthCase:
    check_name: str
    description: str
    expected_status: int


def check_metrics_auth(
    cell: CellResult,
    metrics_url: str,
    *,
    metrics_reader_token: str,
    no_access_token: str,
    connect_wait_s: float = 5.0,
) -> list[CheckResult]:
    """The four authentication/authorization paths of the proxy, and the metrics behind it.

    ``metrics_url`` is the full URL of the proxy's metrics path, e.g.
    ``https://127.0.0.1:18443/metrics``. Records ``metrics-no-token`` (401),
    ``metrics-garbage-token`` (401), ``metrics-forbidden`` (403 for a valid token without
    RBAC), ``metrics-authorized`` (200 for the metrics-reader token) and ``metrics-content``
    (the body parses as Prometheus text and has ``controller_runtime_reconcile_total`` with
    ``controller="inferenceservice"``). If the endpoint stays unreachable for
    ``connect_wait_s`` the first check is an error and the rest are skipped.
    """
    cases: list[tuple[_AuthCase, str | None]] = [
        (_AuthCase("metrics-no-token", "no token", 401), None),
        (_AuthCase("metrics-garbage-token", "garbage token", 401), GARBAGE_TOKEN),
        (_AuthCase("metrics-forbidden", "token without RBAC", 403), no_access_token),
        (_AuthCase("metrics-authorized", "metrics-reader token", 200), metrics_reader_token),
    ]
    results: list[CheckResult] = []
    authorized_body: str | None = None
    unreachable: str | None = None
    for case, token in cases:
        if unreachable is not None:
            results.append(_skipped(cell, case.check_name, unreachable))
            continue
        with timed_check(cell, case.check_name) as check:
            try:
                response = _get(metrics_url, token, connect_wait_s=connect_wait_s)
            except requests.RequestException as exc:
                check.status = CheckStatus.ERROR
                check.detail = f"{case.description}: {metrics_url} unreachable: {type(exc).__name__}"
                check.evidence = [one_line(exc)]
                unreachable = f"not attempted: {metrics_url} unreachable"
            else:
                got = response.status_code
                check.status = CheckStatus.PASS if got == case.expected_status else CheckStatus.FAIL
                check.detail = f"{case.description}: expected {case.expected_status}, got {got}"
                check.evidence = _response_evidence(response)
                if case.expected_status == 200 and got == 200:
                    authorized_body = response.text
        results.append(check)

    if authorized_body is None:
        reason = unreachable or "not attempted: the metrics-reader token did not get 200"
        results.append(_skipped(cell, "metrics-content", reason))
    else:
        results.append(check_metrics_content(cell, authorized_body))
    return results


def check_metrics_content(cell: CellResult, metrics_text: str) -> CheckResult:
    """``metrics-content``: the manager's controller-runtime metrics reach the client."""
    with timed_check(cell, "metrics-content") as check:
        try:
            families = list(text_string_to_metric_families(metrics_text))
        except (ValueError, TypeError, IndexError) as exc:
            check.status = CheckStatus.FAIL
            check.detail = f"body is not Prometheus text: {one_line(exc)}"
            check.evidence = [one_line(metrics_text, _BODY_EVIDENCE_CHARS)]
            return check
        reconciles = [
            sample
            for family in families
            for sample in family.samples
            if sample.name == RECONCILE_METRIC and sample.labels.get("controller") == RECONCILE_CONTROLLER
        ]
        controllers = sorted(
            {
                sample.labels.get("controller", "")
                for family in families
                for sample in family.samples
                if sample.name == RECONCILE_METRIC
            }
        )
        if reconciles:
            total = sum(sample.value for sample in reconciles)
            check.status = CheckStatus.PASS
            check.detail = (
                f'{RECONCILE_METRIC}{{controller="{RECONCILE_CONTROLLER}"}} present '
                f"({len(reconciles)} series, total {total:g})"
            )
        else:
            check.status = CheckStatus.FAIL
            check.detail = (
                f'no {RECONCILE_METRIC}{{controller="{RECONCILE_CONTROLLER}"}} in {len(families)} metric families'
            )
        check.evidence = [
            f"{RECONCILE_METRIC} controllers seen: {', '.join(controllers) or 'none'}",
            f"families: {', '.join(sorted(f.name for f in families)[:15])}",
        ]
    return check


def _skipped(cell: CellResult, name: str, reason: str) -> CheckResult:
    return cell.add(CheckResult(name=name, status=CheckStatus.SKIPPED, detail=reason))


# --------------------------------------------------------------------------- image in use

def _as_pulled(reported: str) -> ImageReference | None:
    """An image as a kubelet reports it (``docker-pullable://`` and all), with every default spelled
    out; None where it is no reference (some runtimes report a bare ``sha256:...`` image ID)."""
    ref = ImageReference.parse_or_none(reported.removeprefix("docker-pullable://").removeprefix("docker://"))
    return ref.normalized() if ref is not None else None


def _image_matches(expected: str, image: str, image_id: str = "") -> bool:
    """Whether a container runs ``expected``: by digest where it names one, else by name and tag."""
    wanted = _as_pulled(expected)
    if wanted is None:
        return expected == image
    seen = [ref for ref in (_as_pulled(image), _as_pulled(image_id)) if ref is not None]
    if wanted.digest:
        return any(ref.digest == wanted.digest for ref in seen)
    running = _as_pulled(image)
    return running is not None and (running.name, running.tag) == (wanted.name, wanted.tag)


def check_image_in_use(
    cell: CellResult,
    api: k8s_client.ApiClient,
    namespace: str,
    deployment: str,
    container: str,
    expected_image: str,
    *,
    observed_images: Sequence[str] | None = None,
) -> CheckResult:
    """``image-in-use``: the Deployment asks for ``expected_image`` and it is what runs.

    The pod template's container must name ``expected_image``; then every Running,
    non-terminating pod of the Deployment (its own label selector) must report it in
    ``containerStatuses`` (``image``, or ``imageID`` when a digest is expected). Without a
    kubelet (local tier) there are no pods: the caller passes ``observed_images``, the
    images of what it actually runs, and those are compared instead.
    """
    with timed_check(cell, "image-in-use") as check:
        apps = k8s_client.AppsV1Api(api)
        stored = apps.read_namespaced_deployment(deployment, namespace)
        template_images = {c.name: c.image for c in stored.spec.template.spec.containers}
        template_image = template_images.get(container)
        if template_image is None:
            check.status = CheckStatus.FAIL
            check.detail = f"deployment {namespace}/{deployment} has no container {container!r}"
            check.evidence = [f"containers: {', '.join(sorted(template_images))}"]
            return check
        check.evidence = [f"pod template {container}: {template_image}"]
        if not _image_matches(expected_image, template_image):
            check.status = CheckStatus.FAIL
            check.detail = f"pod template says {template_image}, expected {expected_image}"
            return check

        if observed_images is not None:
            seen = [("process", image, "") for image in observed_images]
            source = "running processes"
        else:
            selector = label_selector(stored.spec.selector)
            pods = k8s_client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
            seen = []
            for pod in pods:
                if pod.status.phase != "Running" or pod.metadata.deletion_timestamp is not None:
                    check.evidence.append(
                        f"pod {pod.metadata.name}: ignored ({pod.status.phase}"
                        f"{', terminating' if pod.metadata.deletion_timestamp else ''})"
                    )
                    continue
                statuses = {s.name: s for s in pod.status.container_statuses or []}
                status = statuses.get(container)
                if status is None:
                    seen.append((pod.metadata.name, "<no status>", ""))
                else:
                    seen.append((pod.metadata.name, status.image or "", status.image_id or ""))
            source = f"Running pods ({selector})"

        for where, image, image_id in seen:
            check.evidence.append(f"{where}: {image}" + (f" ({image_id})" if image_id else ""))
        if not seen:
            check.status = CheckStatus.FAIL
            check.detail = f"no {source} to compare with {expected_image}"
            return check
        wrong = [where for where, image, image_id in seen if not _image_matches(expected_image, image, image_id)]
        if wrong:
            check.status = CheckStatus.FAIL
            check.detail = f"{len(wrong)} of {len(seen)} {source} do not run {expected_image}: {', '.join(wrong)}"
        else:
            check.status = CheckStatus.PASS
            check.detail = f"template and {len(seen)} {source} run {expected_image}"
    return check


# --------------------------------------------------------------------------- inference


def _post_json(url: str, body: Mapping[str, Any], *, connect_wait_s: float) -> Any:
    for attempt in _connection_retrying(connect_wait_s):
        with attempt:
            # The KServe model server answers :predict only with Content-Type application/json.
            response = requests.post(
                url,
                data=json.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=REQUEST_TIMEOUT_S,
            )
    if response.status_code != 200:
        snippet = one_line(response.text, _BODY_EVIDENCE_CHARS)
        raise InferenceError(f"POST {url} -> {response.status_code}: {snippet}")
    try:
        return response.json()
    except ValueError as exc:
        raise InferenceError(f"POST {url} -> 200 but the body is not JSON: {one_line(exc)}") from exc


def predict_v1(base_url: str, model_name: str, instances: Sequence[Any], *, connect_wait_s: float = 5.0) -> list[Any]:
    """The v1 protocol: ``POST /v1/models/<name>:predict`` → ``predictions``."""
    url = f"{base_url.rstrip('/')}/v1/models/{model_name}:predict"
    answer = _post_json(url, {"instances": list(instances)}, connect_wait_s=connect_wait_s)
    if not isinstance(answer, dict) or not isinstance(answer.get("predictions"), list):
        raise InferenceError(f"POST {url}: no 'predictions' list in {str(answer)[:_BODY_EVIDENCE_CHARS]}")
    predictions: list[Any] = answer["predictions"]
    return predictions


def infer_v2(
    base_url: str, model_name: str, rows: Sequence[Sequence[float]], *, connect_wait_s: float = 5.0
) -> list[Any]:
    """The v2 (open inference) protocol: ``POST /v2/models/<name>/infer`` → outputs[0].data.

    ``data`` is sent flattened in row-major order, which the protocol defines and every
    server (KServe's Python server, MLServer) accepts together with ``shape``.
    """
    url = f"{base_url.rstrip('/')}/v2/models/{model_name}/infer"
    width = len(rows[0]) if rows else 0
    tensor = {
        "name": "input-0",
        "shape": [len(rows), width],
        "datatype": "FP32",
        "data": [value for row in rows for value in row],
    }
    answer = _post_json(url, {"inputs": [tensor]}, connect_wait_s=connect_wait_s)
    try:
        data: list[Any] = answer["outputs"][0]["data"]
    except (KeyError, IndexError, TypeError) as exc:
        raise InferenceError(f"POST {url}: no outputs[0].data in {str(answer)[:_BODY_EVIDENCE_CHARS]}") from exc
    return data


def check_inference(
    cell: CellResult, base_url: str, model_name: str, protocol: Protocol, *, connect_wait_s: float = 5.0
) -> CheckResult:
    """``inference-v1`` / ``inference-v2``: the iris sample predicts ``IRIS_EXPECTED``."""
    with timed_check(cell, f"inference-{protocol}") as check:
        try:
            if protocol == "v1":
                got = predict_v1(base_url, model_name, IRIS_INPUT, connect_wait_s=connect_wait_s)
            else:
                got = infer_v2(base_url, model_name, IRIS_INPUT, connect_wait_s=connect_wait_s)
        except InferenceError as exc:
            check.status = CheckStatus.FAIL
            check.detail = one_line(exc)
            return check
        except requests.RequestException as exc:
            check.status = CheckStatus.ERROR
            check.detail = f"{base_url} unreachable: {type(exc).__name__}"
            check.evidence = [one_line(exc)]
            return check
        check.evidence = [f"model {model_name} at {base_url}: input {IRIS_INPUT} -> {got}"]
        if got == IRIS_EXPECTED:
            check.status = CheckStatus.PASS
            check.detail = f"{model_name} predicted {got}"
        else:
            check.status = CheckStatus.FAIL
            check.detail = f"expected {IRIS_EXPECTED}, got {got}"
    return check


# --------------------------------------------------------------------------- token leaks

_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_HEXDUMP_LINE = re.compile(r"^\s*[0-9a-f]{8}  ((?:[0-9a-f]{2} {1,2}){1,16})")
_CONTEXT_CHARS = 24


@dataclass(frozen=True)
class LeakEvidence:
    """Where a token was found. Never holds the token: only its name and redacted context."""

    token_name: str
    line_number: int  # 1-based
    encoding: str  # e.g. "raw", "base64", "jwt-header-payload"
    context: str  # surrounding characters, every token form replaced by <redacted>

    def __str__(self) -> str:
        return f"line {self.line_number}: {self.token_name} token ({self.encoding}): ...{self.context}..."


def _embedded_base64_forms(raw: bytes) -> dict[str, str]:
    """Base64 text that appears wherever ``raw`` sits inside a larger base64-encoded blob.

    A log that base64-encodes a whole request body places the token at an arbitrary byte
    offset; its encoding is then not ``b64(token)`` but one of three alignments. For each
    offset mod 3, keep only the characters that depend on the token's bytes alone.
    """
    forms: dict[str, str] = {}
    for shift in (1, 2):
        dropped = {1: 2, 2: 3}[shift]  # leading characters that mix in the unknown byte(s)
        whole_groups = (len(raw) + shift) // 3
        for label, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            text = encode(b"\0" * shift + raw).decode()[dropped : 4 * whole_groups]
            if len(text) >= 16:
                forms[text] = f"{label} (embedded, offset {shift} mod 3)"
    return forms


def token_forms(token: str) -> dict[str, str]:
    """Every form of ``token`` the scanner looks for, mapped to a name for the encoding.

    Full forms: raw, base64 std/url with and without padding (also embedded in a larger
    base64 blob), URL-quoted, JSON-escaped, Go ``%q``-escaped, hex. Partial form, for
    JWTs only: ``header.payload.`` — the token minus its signature. A log line truncated
    inside the signature (client-go truncates long bodies at lower verbosity) still shows
    it, and it proves the proxy writes the caller's token to its log; the header alone is
    not used because every token from one issuer shares it.
    """
    raw = token.encode()
    standard = base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    named = [  # first name wins where two encodings coincide (a JWT's base64 == base64url)
        (standard, "base64"),
        (standard.rstrip("="), "base64 (unpadded)"),
        (urlsafe, "base64url"),
        (urlsafe.rstrip("="), "base64url (unpadded)"),
        (urllib.parse.quote(token, safe=""), "url-quoted"),
        (json.dumps(token)[1:-1], "json-escaped"),
        (token.encode("unicode_escape").decode().replace('"', '\\"'), "go-quoted"),
        (raw.hex(), "hex"),
        *((form, "encoded") for form in sorted(encodings(token))),  # what redaction knows
    ]
    forms: dict[str, str] = {}
    for form, name in named:
        forms.setdefault(form, name)
    for form, name in _embedded_base64_forms(raw).items():
        forms.setdefault(form, name)
    if _JWT_SHAPE.match(token):
        header, payload, _signature = token.split(".")
        forms.setdefault(f"{header}.{payload}.", "jwt-header-payload (signature cut off)")
    forms[token] = "raw"  # wins over an escaped form that happens to equal it
    return forms


def _hexdump_blocks(lines: Sequence[str]) -> Iterator[tuple[int, str]]:
    """Bodies that client-go logged as ``hex.Dump`` (binary/protobuf), as latin-1 text.

    Yields (1-based line number of the block's first line, the dumped bytes), so a token
    split across 16-byte dump lines is still found.
    """
    start = 0
    chunks: list[bytes] = []
    for number, line in enumerate(lines, start=1):
        match = _HEXDUMP_LINE.match(line)
        if match:
            if not chunks:
                start = number
            try:
                chunks.append(binascii.unhexlify(match.group(1).replace(" ", "")))
            except binascii.Error:
                continue
        elif chunks:
            yield start, b"".join(chunks).decode("latin-1")
            chunks = []
    if chunks:
        yield start, b"".join(chunks).decode("latin-1")


def _redacted_context(line: str, spans: Sequence[tuple[int, int]], focus: tuple[int, int]) -> str:
    """The characters around ``focus`` with every span in ``spans`` replaced by <redacted>.

    Spans are replaced on the whole line first and the window is cut afterwards, so the
    window's edge can never leave part of a token behind.
    """
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces: list[str] = []
    cursor = 0
    focus_at = 0
    for start, end in merged:
        pieces.append(line[cursor:start])
        if start <= focus[0] < end:
            focus_at = sum(len(p) for p in pieces)
        pieces.append(REDACTED)
        cursor = end
    pieces.append(line[cursor:])
    clean = "".join(pieces)
    window = clean[max(0, focus_at - _CONTEXT_CHARS) : focus_at + len(REDACTED) + _CONTEXT_CHARS]
    window = "".join(char if char.isprintable() else "." for char in window)  # hexdump bytes
    return redact(window)  # also catches JWTs and bearer headers of tokens we were not given


def find_token_leaks(log_text: str, tokens: Mapping[str, str]) -> list[LeakEvidence]:
    """Every place a known token appears in ``log_text``, in any form ``token_forms`` knows.

    ``tokens`` maps a name to a token, e.g. ``{"metrics-reader": ..., "no-access": ...}``.
    One ``LeakEvidence`` per (token, line): the most complete form found on that line.
    """
    lines = log_text.splitlines()
    dumps = list(_hexdump_blocks(lines))
    haystack = "\n".join([log_text, *(dumped for _, dumped in dumps)])
    # Only forms present somewhere are searched line by line: --v=10 logs are long.
    forms = [
        (form, name, encoding)
        for name, token in tokens.items()
        for form, encoding in token_forms(token).items()
        if form in haystack
    ]
    if not forms:
        return []

    leaks: list[LeakEvidence] = []
    sources: list[tuple[int, str, str]] = [(n, line, "") for n, line in enumerate(lines, start=1)]
    sources.extend((n, dumped, "hexdump ") for n, dumped in dumps)
    for number, text, prefix in sources:
        spans: list[tuple[int, int, str, str]] = []
        for form, name, encoding in forms:
            start = text.find(form)
            while start != -1:
                spans.append((start, start + len(form), name, encoding))
                start = text.find(form, start + 1)
        if not spans:
            continue
        plain_spans = [(start, end) for start, end, _, _ in spans]
        reported: set[str] = set()
        # Longest match first: the raw token beats its header+payload prefix.
        for start, end, name, encoding in sorted(spans, key=lambda s: s[0] - s[1]):
            if name in reported:
                continue
            reported.add(name)
            context = _redacted_context(text, plain_spans, (start, end))
            leaks.append(LeakEvidence(name, number, prefix + encoding, context))
    leaks.sort(key=lambda leak: (leak.line_number, leak.token_name))
    return leaks


def check_token_leak(cell: CellResult, log_text: str, tokens: Mapping[str, str]) -> CheckResult:
    """``token-leak``: scan the proxy's log for the tokens the checks sent it.

    The check's status is about the scan, not about the leak: it passes when the scan ran
    (``"no token in N log lines"`` or ``"token found in proxy logs (security finding)"``)
    and errors only when the scan could not run (e.g. an empty log, which means the log
    was not collected). A leak is recorded as a ``SecurityFinding(kind="token-leak")`` on
    ``cell.findings``: security findings are separate from the compatibility verdict, so a
    cell can be compatible and still leak (kube-rbac-proxy before v0.18.2 at ``--v=10``).
    """
    with timed_check(cell, "token-leak") as check:
        # Blank lines do not count: callers join current and previous logs, either may be empty.
        line_count = sum(1 for line in log_text.splitlines() if line.strip())
        if line_count == 0:
            check.status = CheckStatus.ERROR
            check.detail = "proxy log is empty: nothing to scan (was it collected?)"
            return check
        leaks = find_token_leaks(log_text, tokens)
        check.status = CheckStatus.PASS
        if not leaks:
            check.detail = f"no token in {line_count} log lines"
            return check
        names = sorted({leak.token_name for leak in leaks})
        check.detail = "token found in proxy logs (security finding)"
        check.evidence = [str(leak) for leak in leaks[:5]]
        cell.findings.append(
            SecurityFinding(
                kind="token-leak",
                detail=(f"{', '.join(names)} token(s) in the proxy's log: {len(leaks)} line(s) of {line_count}"),
                evidence=[str(leak) for leak in leaks[:10]],
            )
        )
    return check


# --------------------------------------------------------------------------- migration probe


@dataclass(frozen=True)
class InferenceTarget:
    """A model the prober keeps asking during a migration."""

    base_url: str
    model_name: str
    protocol: Protocol = "v1"

    @property
    def name(self) -> str:
        return f"inference-{self.protocol}:{self.model_name}"


@dataclass
class TargetTally:
    """What the prober saw of one target. Times are seconds since the probe started."""

    name: str
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    first_failure_s: float | None = None
    last_failure_s: float | None = None
    recovered_s: float | None = None  # first success after the last failure
    last_ok: bool = False
    last_error: str = ""

    @property
    def outage_s(self) -> float:
        """From the first failure until the first success after the last failure.

        If the target never recovered, until the end of the probe (the caller's
        ``ProbeSummary.duration_s``) — see ``ProbeSummary.outage_s``.
        """
        if self.first_failure_s is None:
            return 0.0
        end = self.recovered_s if self.recovered_s is not None else self.last_failure_s or 0.0
        return max(0.0, end - self.first_failure_s)


@dataclass
class ProbeSummary:
    duration_s: float
    metrics: TargetTally
    inference: list[TargetTally] = field(default_factory=list)

    def outage_s(self, tally: TargetTally) -> float:
        if tally.first_failure_s is not None and tally.recovered_s is None:
            return max(0.0, self.duration_s - tally.first_failure_s)
        return tally.outage_s


class MetricsProber:
    """Keeps calling the metrics endpoint and models in a background thread during a
    migration (the proxy image swapped in place), counting what failed and when.

    Bounded by ``max_requests`` rounds and ``max_duration_s``, whichever comes first, so a
    forgotten ``stop()`` cannot run forever.
    """

    def __init__(
        self,
        metrics_url: str,
        metrics_reader_token: str,
        inference: Sequence[InferenceTarget] = (),
        *,
        interval_s: float = 0.2,
        max_requests: int = 3000,
        max_duration_s: float = 600.0,
        request_timeout_s: float = 2.0,
    ) -> None:
        self._metrics_url = metrics_url
        self._token = metrics_reader_token
        self._inference = list(inference)
        self._interval_s = interval_s
        self._max_requests = max_requests
        self._max_duration_s = max_duration_s
        self._timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._finished: float | None = None
        self._metrics = TargetTally("metrics")
        self._models = {target.name: TargetTally(target.name) for target in self._inference}

    def start(self) -> MetricsProber:
        if self._thread is not None:
            raise RuntimeError("MetricsProber already started")
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="metrics-prober", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> ProbeSummary:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout_s * (1 + len(self._inference)) + 5)
        with self._lock:
            end = self._finished if self._finished is not None else time.monotonic()
            return ProbeSummary(
                duration_s=round(end - self._started, 3),
                metrics=_copy(self._metrics),
                inference=[_copy(t) for t in self._models.values()],
            )

    def __enter__(self) -> MetricsProber:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    def _run(self) -> None:
        rounds = 0
        session = _self_signed_session()
        try:
            while not self._stop.is_set() and rounds < self._max_requests:
                if time.monotonic() - self._started >= self._max_duration_s:
                    break
                rounds += 1
                self._probe(self._metrics, lambda: self._probe_metrics(session))
                for target in self._inference:
                    self._probe(self._models[target.name], functools.partial(self._probe_model, target))
                self._stop.wait(self._interval_s)
        finally:
            session.close()
            with self._lock:
                self._finished = time.monotonic()

    def _probe(self, tally: TargetTally, call: Callable[[], str | None]) -> None:
        try:
            error = call()
        except Exception as exc:  # any failure of one request is data, not a crash
            error = error_line(exc)
        now = round(time.monotonic() - self._started, 3)
        with self._lock:
            tally.attempts += 1
            if error is None:
                tally.successes += 1
                if not tally.last_ok and tally.failures and tally.last_failure_s is not None:
                    tally.recovered_s = now
                tally.last_ok = True
            else:
                tally.failures += 1
                if tally.first_failure_s is None:
                    tally.first_failure_s = now
                tally.last_failure_s = now
                tally.recovered_s = None
                tally.last_ok = False
                tally.last_error = redact(error)

    def _probe_metrics(self, session: requests.Session) -> str | None:
        response = session.get(
            self._metrics_url,
            headers={"Authorization": f"Bearer {self._token}"},
            verify=False,  # the proxy's self-signed certificate, as in check_metrics_auth
            timeout=self._timeout_s,
        )
        return None if response.status_code == 200 else f"HTTP {response.status_code}"

    def _probe_model(self, target: InferenceTarget) -> str | None:
        if target.protocol == "v1":
            got = predict_v1(target.base_url, target.model_name, IRIS_INPUT, connect_wait_s=0)
        else:
            got = infer_v2(target.base_url, target.model_name, IRIS_INPUT, connect_wait_s=0)
        return None if got == IRIS_EXPECTED else f"expected {IRIS_EXPECTED}, got {got}"


def _copy(tally: TargetTally) -> TargetTally:
    return TargetTally(**vars(tally))


def check_probe(cell: CellResult, summary: ProbeSummary) -> list[CheckResult]:
    """What the migration cost.

    ``migration-inference-lost-requests``: no inference request failed (the proxy swap
    must not touch the data path). ``migration-metrics-outage``: reports how long metrics
    were unavailable and passes if they answered 200 again by the end of the probe.
    """
    results: list[CheckResult] = []
    with timed_check(cell, "migration-inference-lost-requests") as lost:
        if not summary.inference:
            lost.status = CheckStatus.SKIPPED
            lost.detail = "no inference target was probed"
        else:
            failed = sum(t.failures for t in summary.inference)
            attempts = sum(t.attempts for t in summary.inference)
            lost.status = CheckStatus.PASS if failed == 0 and attempts > 0 else CheckStatus.FAIL
            lost.detail = f"{failed} of {attempts} inference requests failed in {summary.duration_s:.1f}s"
            lost.evidence = [_tally_line(t, summary) for t in summary.inference]
    results.append(lost)

    with timed_check(cell, "migration-metrics-outage") as outage:
        metrics = summary.metrics
        window = summary.outage_s(metrics)
        outage.evidence = [_tally_line(metrics, summary)]
        if metrics.attempts == 0:
            outage.status = CheckStatus.ERROR
            outage.detail = "the prober made no metrics request"
        elif metrics.last_ok:
            outage.status = CheckStatus.PASS
            outage.detail = (
                f"metrics unavailable for {window:.1f}s ({metrics.failures} of {metrics.attempts} "
                "requests failed); recovered"
                if metrics.failures
                else f"no metrics outage ({metrics.attempts} requests)"
            )
        else:
            outage.status = CheckStatus.FAIL
            outage.detail = f"metrics still failing at the end of the probe after {window:.1f}s: {metrics.last_error}"
    results.append(outage)
    return results


def _tally_line(tally: TargetTally, summary: ProbeSummary) -> str:
    line = f"{tally.name}: {tally.successes}/{tally.attempts} ok, {tally.failures} failed"
    if tally.first_failure_s is not None:
        line += (
            f", failing from {tally.first_failure_s:.1f}s to {tally.last_failure_s:.1f}s, "
            f"outage {summary.outage_s(tally):.1f}s, last error: {tally.last_error}"
        )
    return line
