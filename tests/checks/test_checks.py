"""Tests of the check LOGIC in ``e2e.checks`` against real local servers.

The HTTPS server here is a stand-in for "an HTTPS endpoint answering X": it answers fixed
status codes per bearer token so that each check's verdict, detail and evidence can be
tested. It is not kube-rbac-proxy; the end-to-end run against the real proxy binary is a
scenario. Likewise the inference server is a stand-in that answers the v1/v2 shapes of KServe's
own e2e (kserve/kserve test/e2e/predictor/test_sklearn.py); the checks against a release's
real sklearnserver are in tests/local/test_sklearnserver.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets as stdlib_secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers.cells import new_cell

from e2e import checks
from e2e.checks import (
    IRIS_EXPECTED,
    IRIS_INPUT,
    InferenceError,
    InferenceTarget,
    MetricsProber,
    check_inference,
    check_metrics_auth,
    check_probe,
    check_token_leak,
    find_token_leaks,
    infer_v2,
    predict_v1,
    token_forms,
)
from e2e.checks.image import image_matches
from e2e.checks.metrics_services import check_guarded_service
from e2e.manifests.metrics_services import MetricsService
from e2e.results import CellResult, CheckStatus
from e2e.steps import migrate as migrate_step

# --------------------------------------------------------------------------- helpers

PROMETHEUS_TEXT = """\
# HELP controller_runtime_reconcile_total Total number of reconciliations per controller
# TYPE controller_runtime_reconcile_total counter
controller_runtime_reconcile_total{controller="inferenceservice",result="error"} 0
controller_runtime_reconcile_total{controller="inferenceservice",result="requeue"} 2
controller_runtime_reconcile_total{controller="inferenceservice",result="success"} 7
controller_runtime_reconcile_total{controller="trainedmodel",result="success"} 0
# HELP workqueue_depth Current depth of workqueue
# TYPE workqueue_depth gauge
workqueue_depth{name="inferenceservice"} 0
# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 112
"""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def service_account_jwt(subject: str) -> str:
    """A token shaped like a projected ServiceAccount token (RS256, 256-byte signature)."""
    header = {"alg": "RS256", "kid": _b64url(stdlib_secrets.token_bytes(32))}
    payload = {
        "aud": ["https://kubernetes.default.svc.cluster.local"],
        "exp": 1773312302,
        "iat": 1773308702,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "kubernetes.io": {
            "namespace": "kserve-compat",
            "serviceaccount": {"name": subject, "uid": "8c7d1f0e-5b7e-4a8e-9c55-3f1e2d7c9a10"},
        },
        "nbf": 1773308702,
        "sub": f"system:serviceaccount:kserve-compat:{subject}",
    }
    return ".".join(
        [
            _b64url(json.dumps(header, separators=(",", ":")).encode()),
            _b64url(json.dumps(payload, separators=(",", ":")).encode()),
            _b64url(stdlib_secrets.token_bytes(256)),
        ]
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Answer:
    status: int
    body: str = ""
    content_type: str = "text/plain; version=0.0.4"


Responder = Callable[[str, str, dict[str, str], bytes], Answer]  # method, path, headers, body


@dataclass
class StandInServer:
    """A real HTTP(S) server on 127.0.0.1 whose answers come from ``responder``."""

    responder: Responder
    tls: ssl.SSLContext | None = None
    port: int = 0
    requests_seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> StandInServer:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stand_in.requests_seen.append((self.command, self.path, self.headers.get("Authorization")))
                answer = stand_in.responder(self.command, self.path, dict(self.headers.items()), body)
                payload = answer.body.encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(payload)))
                if answer.status == 401:
                    self.send_header("WWW-Authenticate", 'Bearer realm="kube-rbac-proxy stand-in"')
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextlib.contextmanager
def running(server: StandInServer) -> Iterator[StandInServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server_tls() -> ssl.SSLContext:
    # A self-signed-style cert nobody trusts, like kube-rbac-proxy's generated one.
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def reader_token() -> str:
    return service_account_jwt("metrics-reader")


@pytest.fixture(scope="module")
def no_access_token() -> str:
    return service_account_jwt("no-access")


def proxy_like_responder(reader: str, no_access: str, body: str = PROMETHEUS_TEXT) -> Responder:
    """Answers as kube-rbac-proxy does (tests/local/test_proxy_runner.py measures it), keyed on the bearer token."""

    def respond(method: str, path: str, headers: dict[str, str], _: bytes) -> Answer:
        if path != "/metrics":
            return Answer(404, "404 page not found")
        authorization = headers.get("Authorization", "")
        if not authorization.startswith("Bearer "):
            return Answer(401, "Unauthorized")
        token = authorization.removeprefix("Bearer ")
        if token == reader:
            return Answer(200, body)
        if token == no_access:
            return Answer(
                403, "Forbidden (user=system:serviceaccount:kserve-compat:no-access, verb=get, path=/metrics)"
            )
        return Answer(401, "Unauthorized")

    return respond


def statuses(cell: CellResult) -> dict[str, CheckStatus]:
    return {check.name: check.status for check in cell.checks}


# --------------------------------------------------------------------------- the other metrics Services

SECOND_SERVICE = MetricsService(
    "kserve", "kserve-controller-manager-service", 8443, "kserve-controller-manager", "kube-rbac-proxy",
    "--secure-listen-address", "0.0.0.0:8443",
)  # fmt: skip


def test_a_second_proxy_service_passes_when_it_guards_as_the_first(
    server_tls: ssl.SSLContext, reader_token: str, no_access_token: str
) -> None:
    cell = new_cell()
    with running(StandInServer(proxy_like_responder(reader_token, no_access_token), server_tls)) as server:
        check = check_guarded_service(cell, SECOND_SERVICE, f"{server.url}/metrics", metrics_reader_token=reader_token)
    assert (check.name, check.status) == ("metrics-via-kserve-controller-manager-service", CheckStatus.PASS)
    assert check.detail.endswith("no token 401 (expected 401), metrics-reader 200 (expected 200)")
    assert all(reader_token not in line for line in check.evidence)


def test_a_second_service_that_serves_anyone_fails(server_tls: ssl.SSLContext, reader_token: str) -> None:
    cell = new_cell()
    with running(StandInServer(lambda *_: Answer(200, PROMETHEUS_TEXT), server_tls)) as server:
        check = check_guarded_service(cell, SECOND_SERVICE, f"{server.url}/metrics", metrics_reader_token=reader_token)
    assert check.status is CheckStatus.FAIL
    assert "no token 200 (expected 401)" in check.detail


def test_a_second_service_nobody_answers_is_an_error(reader_token: str) -> None:
    cell = new_cell()
    check = check_guarded_service(
        cell, SECOND_SERVICE, f"https://127.0.0.1:{free_port()}/metrics", metrics_reader_token=reader_token
    )
    assert check.status is CheckStatus.ERROR
    assert "unreachable" in check.detail


# --------------------------------------------------------------------------- metrics auth


def test_metrics_auth_all_paths_pass_against_an_endpoint_answering_per_the_table(
    server_tls: ssl.SSLContext, reader_token: str, no_access_token: str
) -> None:
    cell = new_cell()
    with running(StandInServer(proxy_like_responder(reader_token, no_access_token), server_tls)) as server:
        results = check_metrics_auth(
            cell, f"{server.url}/metrics", metrics_reader_token=reader_token, no_access_token=no_access_token
        )
    assert [r.name for r in results] == [
        "metrics-no-token",
        "metrics-garbage-token",
        "metrics-forbidden",
        "metrics-authorized",
        "metrics-content",
    ]
    assert all(r.passed for r in results), [(r.name, r.detail) for r in results]
    assert results[2].detail == "token without RBAC: expected 403, got 403"
    assert 'controller="inferenceservice"' in results[4].detail and "total 9" in results[4].detail
    assert cell.checks == results
    assert all(r.duration_s >= 0 for r in results)
    # The no-token request really carried no Authorization header.
    assert server.requests_seen[0][2] is None


def test_metrics_auth_fails_with_expected_and_got_when_the_endpoint_lets_everyone_in(
    server_tls: ssl.SSLContext, reader_token: str, no_access_token: str
) -> None:
    cell = new_cell()
    with running(StandInServer(lambda *_: Answer(200, PROMETHEUS_TEXT), server_tls)) as server:
        results = check_metrics_auth(
            cell, f"{server.url}/metrics", metrics_reader_token=reader_token, no_access_token=no_access_token
        )
    by_name = {r.name: r for r in results}
    assert by_name["metrics-no-token"].status is CheckStatus.FAIL
    assert by_name["metrics-no-token"].detail == "no token: expected 401, got 200"
    assert by_name["metrics-garbage-token"].status is CheckStatus.FAIL
    assert by_name["metrics-forbidden"].detail == "token without RBAC: expected 403, got 200"
    assert by_name["metrics-authorized"].passed and by_name["metrics-content"].passed
    assert any("-> 200" in line for line in by_name["metrics-forbidden"].evidence)
    assert cell.conclude().value == "fail"
    assert cell.reason.startswith("metrics-no-token: no token: expected 401, got 200")


def test_metrics_content_fails_without_the_inferenceservice_controller(
    server_tls: ssl.SSLContext, reader_token: str, no_access_token: str
) -> None:
    body = PROMETHEUS_TEXT.replace('controller="inferenceservice"', 'controller="trainedmodel"')
    cell = new_cell()
    with running(StandInServer(proxy_like_responder(reader_token, no_access_token, body), server_tls)) as server:
        results = check_metrics_auth(
            cell,
            f"{server.url}/metrics",
            metrics_reader_token=reader_token,
            no_access_token=no_access_token,
            content_wait_s=1,
        )
    content = results[-1]
    assert content.name == "metrics-content" and content.status is CheckStatus.FAIL
    assert "no controller_runtime_reconcile_total" in content.detail
    assert "controllers seen: trainedmodel" in content.evidence[0]


def test_metrics_content_is_parsed_not_substring_matched() -> None:
    # The name and label appear only inside a HELP text: a substring check would pass.
    body = (
        '# HELP go_goroutines mentions controller_runtime_reconcile_total{controller="inferenceservice"}\n'
        "# TYPE go_goroutines gauge\ngo_goroutines 3\n"
    )
    result = checks.check_metrics_content(new_cell(), body)
    assert result.status is CheckStatus.FAIL


def test_metrics_content_fails_on_a_body_that_is_not_prometheus_text() -> None:
    result = checks.check_metrics_content(new_cell(), "<html><body>Welcome to nginx!</body></html>\n")
    assert result.status is CheckStatus.FAIL
    assert result.detail.startswith("body is not Prometheus text")


def test_metrics_content_skipped_when_authorized_request_is_denied(
    server_tls: ssl.SSLContext, reader_token: str, no_access_token: str
) -> None:
    # The reader token gets 403, as when the metrics-reader ClusterRoleBinding is missing.
    cell = new_cell()
    with running(StandInServer(proxy_like_responder("someone-else-entirely", no_access_token), server_tls)) as srv:
        results = check_metrics_auth(
            cell, f"{srv.url}/metrics", metrics_reader_token=reader_token, no_access_token=no_access_token
        )
    assert statuses(cell)["metrics-authorized"] is CheckStatus.FAIL
    assert results[3].detail == "metrics-reader token: expected 200, got 401"
    assert statuses(cell)["metrics-content"] is CheckStatus.SKIPPED


def test_wrong_status_codes_are_not_retried(
    server_tls: ssl.SSLContext, reader_token: str, no_access_token: str
) -> None:
    cell = new_cell()
    with running(StandInServer(lambda *_: Answer(500, "Internal Server Error"), server_tls)) as server:
        check_metrics_auth(
            cell, f"{server.url}/metrics", metrics_reader_token=reader_token, no_access_token=no_access_token
        )
    assert len(server.requests_seen) == 4  # one request per auth path, none repeated


def test_unreachable_endpoint_errors_fast_and_skips_the_rest(reader_token: str, no_access_token: str) -> None:
    cell = new_cell()
    started = time.monotonic()
    results = check_metrics_auth(
        cell,
        f"https://127.0.0.1:{free_port()}/metrics",
        metrics_reader_token=reader_token,
        no_access_token=no_access_token,
        connect_wait_s=1.0,
    )
    assert time.monotonic() - started < 5
    assert results[0].status is CheckStatus.ERROR
    assert "unreachable: ConnectionError" in results[0].detail
    assert [r.status for r in results[1:]] == [CheckStatus.SKIPPED] * 4
    assert cell.conclude().value == "error"


def test_connection_errors_are_retried_while_the_endpoint_comes_up(
    server_tls: ssl.SSLContext, reader_token: str, no_access_token: str
) -> None:
    port = free_port()
    server = StandInServer(proxy_like_responder(reader_token, no_access_token), server_tls, port=port)
    starter = threading.Timer(1.0, server.start)
    starter.start()
    try:
        cell = new_cell()
        results = check_metrics_auth(
            cell,
            f"https://127.0.0.1:{port}/metrics",
            metrics_reader_token=reader_token,
            no_access_token=no_access_token,
            connect_wait_s=5.0,
        )
    finally:
        starter.join()
        server.stop()
    assert all(r.passed for r in results), [(r.name, r.detail) for r in results]


def test_tokens_never_reach_the_results(server_tls: ssl.SSLContext, reader_token: str, no_access_token: str) -> None:
    # An endpoint that echoes the Authorization header into its body (and so the evidence).
    def echo(method: str, path: str, headers: dict[str, str], _: bytes) -> Answer:
        return Answer(403, f"denied: {headers.get('Authorization')}")

    cell = new_cell()
    with running(StandInServer(echo, server_tls)) as server:
        check_metrics_auth(
            cell, f"{server.url}/metrics", metrics_reader_token=reader_token, no_access_token=no_access_token
        )
    dumped = json.dumps(cell.to_dict())
    assert reader_token not in dumped and no_access_token not in dumped
    assert "<redacted>" in dumped


# --------------------------------------------------------------------------- inference


def iris_stand_in(predictions: list[Any] | None = None, status: int = 200) -> Responder:
    """A stand-in model server answering KServe's v1/v2 shapes for model ``sklearn-iris``.

    It checks the request shape like the KServe model server does and answers class 1 for
    every row (or ``predictions`` when given); it does not predict anything.
    """

    def respond(method: str, path: str, headers: dict[str, str], raw: bytes) -> Answer:
        if status != 200:
            return Answer(status, '{"error": "model sklearn-iris is not ready"}', "application/json")
        if headers.get("Content-Type") != "application/json":
            return Answer(415, '{"error": "Unsupported content type"}', "application/json")
        body = json.loads(raw)
        answer: dict[str, Any]
        if path == "/v1/models/sklearn-iris:predict":
            rows = body["instances"]
            assert all(len(row) == 4 for row in rows)
            answer = {"predictions": predictions if predictions is not None else [1] * len(rows)}
        elif path == "/v2/models/sklearn-iris/infer":
            tensor = body["inputs"][0]
            assert tensor["name"] == "input-0" and tensor["datatype"] == "FP32"
            rows_count, width = tensor["shape"]
            assert len(tensor["data"]) == rows_count * width
            answer = {
                "model_name": "sklearn-iris",
                "id": "5f2b3c1e-0d7a-4f7e-9d0e-2b8f1a6c3e21",
                "parameters": None,
                "outputs": [
                    {
                        "name": "output-0",
                        "shape": [rows_count],
                        "datatype": "INT64",
                        "data": predictions if predictions is not None else [1] * rows_count,
                    }
                ],
            }
        else:
            return Answer(404, '{"error": "Model with name missing does not exist."}', "application/json")
        return Answer(200, json.dumps(answer), "application/json")

    return respond


def test_predict_v1_and_infer_v2_against_the_stand_in_model_server() -> None:
    with running(StandInServer(iris_stand_in())) as server:
        assert predict_v1(server.url, "sklearn-iris", IRIS_INPUT) == IRIS_EXPECTED
        assert infer_v2(server.url, "sklearn-iris", IRIS_INPUT) == IRIS_EXPECTED
        sent = json.loads(json.dumps(IRIS_INPUT))
        assert sent == IRIS_INPUT
        with pytest.raises(InferenceError, match="404"):
            predict_v1(server.url, "missing", IRIS_INPUT)


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_check_inference_passes_on_expected_predictions(protocol: checks.Protocol) -> None:
    cell = new_cell()
    with running(StandInServer(iris_stand_in())) as server:
        result = check_inference(cell, server.url, "sklearn-iris", protocol)
    assert result.name == f"inference-{protocol}" and result.passed, result.detail
    assert result.detail == "sklearn-iris predicted [1, 1]"


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_check_inference_fails_on_wrong_predictions(protocol: checks.Protocol) -> None:
    cell = new_cell()
    with running(StandInServer(iris_stand_in(predictions=[0, 2]))) as server:
        result = check_inference(cell, server.url, "sklearn-iris", protocol)
    assert result.status is CheckStatus.FAIL
    assert result.detail == "expected [1, 1], got [0, 2]"


def test_check_inference_fails_with_the_server_answer_on_http_errors() -> None:
    cell = new_cell()
    with running(StandInServer(iris_stand_in(status=503))) as server:
        result = check_inference(cell, server.url, "sklearn-iris", "v1")
    assert result.status is CheckStatus.FAIL
    assert "-> 503" in result.detail and "not ready" in result.detail


def test_check_inference_errors_fast_when_unreachable() -> None:
    started = time.monotonic()
    result = check_inference(new_cell(), f"http://127.0.0.1:{free_port()}", "sklearn-iris", "v2", connect_wait_s=0.5)
    assert time.monotonic() - started < 5
    assert result.status is CheckStatus.ERROR and "unreachable" in result.detail


# --------------------------------------------------------------------------- token leak

KLOG = "I0312 10:15:02.123456       1 request.go:1212]"


def token_review_body(token: str) -> str:
    return json.dumps(
        {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": {"token": token, "audiences": None},
            "status": {"user": {}},
        },
        separators=(",", ":"),
    )


def go_hex_dump(data: bytes) -> list[str]:
    """What Go's ``encoding/hex.Dump`` prints (client-go logs binary bodies this way)."""
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        hex_part = " ".join(f"{b:02x}" for b in chunk[:8])
        if len(chunk) > 8:
            hex_part += "  " + " ".join(f"{b:02x}" for b in chunk[8:])
        ascii_part = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {hex_part:<49}|{ascii_part}|")
    return lines


def proxy_log(*body_lines: str) -> str:
    """A kube-rbac-proxy --v=10 log around the given lines."""
    return "\n".join(
        [
            "I0312 10:14:58.000001       1 main.go:190] Valid token audiences: ",
            "I0312 10:14:58.000120       1 main.go:262] Generating self signed cert as no cert is provided",
            "I0312 10:14:58.912345       1 main.go:311] Starting TCP socket on 0.0.0.0:8443",
            "I0312 10:14:58.912876       1 main.go:318] Listening securely on 0.0.0.0:8443",
            f'{KLOG[:-18]}round_trippers.go:466] curl -v -XPOST  -H "Accept: application/json, */*" '
            "-H \"Authorization: Bearer <masked>\" 'https://10.96.0.1:443/apis/authentication.k8s.io/v1/tokenreviews'",
            *body_lines,
            f"{KLOG[:-18]}round_trippers.go:553] POST https://10.96.0.1:443/apis/authentication.k8s.io/v1/"
            "tokenreviews 201 Created in 3 milliseconds",
        ]
    )


def assert_no_token_in(text: str, *tokens: str) -> None:
    for token in tokens:
        header, payload, _ = token.split(".")
        assert token not in text
        assert f"{header}.{payload}" not in text
        assert payload not in text


def test_token_forms_cover_the_documented_encodings(reader_token: str) -> None:
    forms = token_forms(reader_token)
    assert forms[reader_token] == "raw"
    assert base64.b64encode(reader_token.encode()).decode() in forms
    assert "jwt-header-payload (signature cut off)" in forms.values()
    assert all(len(form) >= 16 for form in forms)


def test_raw_json_request_body_leak_is_found_with_name_line_and_redacted_context(
    reader_token: str, no_access_token: str
) -> None:
    log_text = proxy_log(f"{KLOG} Request Body: {token_review_body(reader_token)}")
    leaks = find_token_leaks(log_text, {"metrics-reader": reader_token, "no-access": no_access_token})
    assert len(leaks) == 1
    leak = leaks[0]
    assert (leak.token_name, leak.line_number, leak.encoding) == ("metrics-reader", 6, "raw")
    assert '"spec":{"token":"<redacted>' in leak.context
    assert_no_token_in(str(leak), reader_token)


def test_go_quoted_request_body_leak_is_found(reader_token: str) -> None:
    quoted = json.dumps(token_review_body(reader_token))  # Go's %#v of the body string
    log_text = proxy_log(f"{KLOG} Request Body: {quoted}")
    leaks = find_token_leaks(log_text, {"metrics-reader": reader_token})
    assert [leak.line_number for leak in leaks] == [6]
    assert '\\"token\\":\\"<redacted>' in leaks[0].context
    assert_no_token_in(str(leaks[0]), reader_token)


@pytest.mark.parametrize("prefix_bytes", [0, 1, 2])
def test_base64_of_a_whole_body_is_found_at_every_alignment(reader_token: str, prefix_bytes: int) -> None:
    body = (" " * prefix_bytes + token_review_body(reader_token)).encode()
    structured = json.dumps({"level": "debug", "msg": "request body", "body": base64.b64encode(body).decode()})
    leaks = find_token_leaks(proxy_log(structured), {"metrics-reader": reader_token})
    assert len(leaks) == 1 and leaks[0].encoding.startswith("base64")
    assert_no_token_in(str(leaks[0]), reader_token)


def test_base64_of_the_token_itself_is_found(reader_token: str) -> None:
    encoded = base64.b64encode(reader_token.encode()).decode()
    leaks = find_token_leaks(proxy_log(f"{KLOG} token={encoded}"), {"metrics-reader": reader_token})
    assert [leak.encoding for leak in leaks] == ["base64"]
    assert encoded not in str(leaks[0])


def test_a_line_truncated_inside_the_signature_still_counts(reader_token: str) -> None:
    line = f"{KLOG} Request Body: {token_review_body(reader_token)}"
    cut = line[: line.index(reader_token) + len(reader_token) - 100] + " [truncated 1422 chars]"
    leaks = find_token_leaks(proxy_log(cut), {"metrics-reader": reader_token})
    assert [leak.encoding for leak in leaks] == ["jwt-header-payload (signature cut off)"]
    assert_no_token_in(str(leaks[0]), reader_token)


def test_protobuf_body_in_a_hex_dump_is_found(reader_token: str) -> None:
    protobuf = b"k8s\x00\n\x1c\n\x19authentication.k8s.io/v1\x12\x0bTokenReview\x12\xa2\x07\x12\x9d\x07\n"
    protobuf += bytes([0x9A, 0x07]) + reader_token.encode() + b"\x1a\x00\x1a\x00\x1a\x00"
    log_text = proxy_log(f"{KLOG} Request Body:", *go_hex_dump(protobuf))
    leaks = find_token_leaks(log_text, {"metrics-reader": reader_token})
    assert len(leaks) == 1 and leaks[0].encoding == "hexdump raw"
    assert leaks[0].line_number == 7  # the dump's first line
    assert_no_token_in(str(leaks[0]), reader_token)


def test_masked_token_is_not_a_leak(reader_token: str) -> None:
    masked = token_review_body("<masked>")
    log_text = proxy_log(f"{KLOG} Request Body: {masked}", f"{KLOG} Response Body: {masked}")
    assert find_token_leaks(log_text, {"metrics-reader": reader_token}) == []


def test_an_opaque_token_and_a_second_token_on_the_line_are_redacted_in_the_context() -> None:
    opaque = "k8s-compat-" + stdlib_secrets.token_hex(20)  # not JWT-shaped: no regex would catch it
    other = "other-" + stdlib_secrets.token_hex(16)
    line = f'{KLOG} headers: Authorization: Token {other} body {{"spec":{{"token":"{opaque}"}}}}'
    leaks = find_token_leaks(proxy_log(line), {"reader": opaque, "other": other})
    assert {leak.token_name for leak in leaks} == {"reader", "other"}
    for leak in leaks:
        # Neither token, nor a piece of one cut off at the edge of the context window.
        assert opaque not in str(leak) and other not in str(leak)
        assert opaque[-40:-30] not in leak.context and other[-16:-8] not in leak.context


def test_check_token_leak_records_a_security_finding_and_a_passing_scan(
    reader_token: str, no_access_token: str
) -> None:
    cell = new_cell()
    log_text = proxy_log(
        f"{KLOG} Request Body: {token_review_body(no_access_token)}",
        f"{KLOG} Response Body: {token_review_body(no_access_token)}",
    )
    result = check_token_leak(cell, log_text, {"metrics-reader": reader_token, "no-access": no_access_token})
    assert result.name == "token-leak" and result.passed
    assert result.detail == "token found in proxy logs (security finding)"
    assert len(cell.findings) == 1
    finding = cell.findings[0]
    assert finding.kind == "token-leak" and finding.detail.startswith("no-access token(s)")
    assert cell.conclude().value == "pass"  # compatibility is a separate verdict
    dumped = json.dumps(cell.to_dict())
    assert_no_token_in(dumped, reader_token, no_access_token)


def test_check_token_leak_on_a_clean_log(reader_token: str) -> None:
    cell = new_cell()
    log_text = proxy_log(f"{KLOG} Request Body: {token_review_body('<masked>')}")
    result = check_token_leak(cell, log_text, {"metrics-reader": reader_token})
    assert result.passed and result.detail == "no token in 7 log lines"
    assert cell.findings == []


def test_check_token_leak_errors_on_an_empty_log(reader_token: str) -> None:
    for empty in ("", "\n".join(["", ""])):  # no previous log and no current log
        result = check_token_leak(new_cell(), empty, {"metrics-reader": reader_token})
        assert result.status is CheckStatus.ERROR


# --------------------------------------------------------------------------- image names


@pytest.mark.parametrize(
    ("expected", "image", "image_id", "same"),
    [
        ("quay.io/brancz/kube-rbac-proxy:v0.18.0", "quay.io/brancz/kube-rbac-proxy:v0.18.0", "", True),
        ("quay.io/brancz/kube-rbac-proxy:v0.18.0", "quay.io/brancz/kube-rbac-proxy:v0.18.1", "", False),
        ("busybox", "docker.io/library/busybox:latest", "", True),
        ("kserve/kserve-controller:v0.14.1", "docker.io/kserve/kserve-controller:v0.14.1", "", True),
        ("localhost:5000/kube-rbac-proxy:v0.13.1", "localhost:5000/kube-rbac-proxy:v0.13.1", "", True),
        (
            "quay.io/brancz/kube-rbac-proxy@sha256:" + "a" * 64,
            "quay.io/brancz/kube-rbac-proxy:v0.18.0",
            "quay.io/brancz/kube-rbac-proxy@sha256:" + "a" * 64,
            True,
        ),
        (
            "quay.io/brancz/kube-rbac-proxy@sha256:" + "a" * 64,
            "quay.io/brancz/kube-rbac-proxy:v0.18.0",
            "quay.io/brancz/kube-rbac-proxy@sha256:" + "b" * 64,
            False,
        ),
    ],
)
def test_image_comparison(expected: str, image: str, image_id: str, same: bool) -> None:
    assert image_matches(expected, image, image_id) is same


# --------------------------------------------------------------------------- migration probe


def test_prober_counts_failures_while_the_metrics_endpoint_is_down_and_the_window(
    server_tls: ssl.SSLContext, reader_token: str, no_access_token: str
) -> None:
    metrics = StandInServer(proxy_like_responder(reader_token, no_access_token), server_tls).start()
    model = StandInServer(iris_stand_in()).start()
    try:
        prober = MetricsProber(
            f"{metrics.url}/metrics",
            reader_token,
            [InferenceTarget(model.url, "sklearn-iris", "v1"), InferenceTarget(model.url, "sklearn-iris", "v2")],
            interval_s=0.05,
            request_timeout_s=1.0,
        ).start()
        time.sleep(0.5)
        port = metrics.port
        metrics.stop()  # the old proxy container goes away...
        time.sleep(1.0)
        metrics = StandInServer(proxy_like_responder(reader_token, no_access_token), server_tls, port=port).start()
        time.sleep(0.5)  # ...and the new one answers
        summary = prober.stop()
    finally:
        metrics.stop()
        model.stop()

    assert summary.metrics.failures > 0 and summary.metrics.successes > 0
    assert summary.metrics.last_ok and summary.metrics.recovered_s is not None
    assert 0.5 <= summary.outage_s(summary.metrics) <= 3.0, summary
    assert all(t.failures == 0 and t.attempts > 5 for t in summary.inference)
    cell = new_cell()
    lost, outage = check_probe(cell, summary)
    assert lost.name == "migration-inference-lost-requests" and lost.passed, lost.detail
    assert outage.name == "migration-metrics-outage" and outage.passed
    assert outage.detail.startswith("metrics unavailable for") and outage.detail.endswith("recovered")
    assert reader_token not in json.dumps(cell.to_dict())
    # The timeline the report draws: every request in one bucket, the outage's failures among them.
    assert sum(row[1] + row[2] for row in cell.traffic) == summary.metrics.attempts
    assert sum(row[2] for row in cell.traffic) == summary.metrics.failures
    assert sum(row[3] + row[4] for row in cell.traffic) == sum(t.attempts for t in summary.inference)
    failing = [row[0] for row in cell.traffic if row[2]]
    assert failing and 0.4 <= failing[0] <= 1.0  # the metrics went away 0.5 s in


def test_prober_reports_a_metrics_outage_that_never_recovers_and_lost_inference(
    server_tls: ssl.SSLContext, reader_token: str, no_access_token: str
) -> None:
    metrics = StandInServer(proxy_like_responder(reader_token, no_access_token), server_tls).start()
    model = StandInServer(iris_stand_in()).start()
    prober = MetricsProber(
        f"{metrics.url}/metrics", reader_token, [InferenceTarget(model.url, "sklearn-iris")], interval_s=0.05
    ).start()
    time.sleep(0.3)
    metrics.stop()
    model.stop()
    time.sleep(0.5)
    summary = prober.stop()
    lost, outage = check_probe(new_cell(), summary)
    assert lost.status is CheckStatus.FAIL and "inference requests failed" in lost.detail
    assert outage.status is CheckStatus.FAIL
    assert outage.detail.startswith("metrics still failing at the end of the probe")
    assert summary.outage_s(summary.metrics) >= 0.4


def test_probing_goes_on_after_the_rollout_until_metrics_answer_again(
    server_tls: ssl.SSLContext, reader_token: str, no_access_token: str
) -> None:
    """The old pod's end can break metrics just after the rollout is complete: the probe
    waits for the outage to close instead of stopping inside it (a fixed 1 s tail did)."""
    metrics = StandInServer(proxy_like_responder(reader_token, no_access_token), server_tls).start()
    port = metrics.port
    prober = MetricsProber(f"{metrics.url}/metrics", reader_token, interval_s=0.05, request_timeout_s=1.0).start()
    restarted: list[StandInServer] = []

    def new_proxy_answers_later() -> None:
        time.sleep(1.6)  # longer than the settle wait's minimum
        restarted.append(
            StandInServer(proxy_like_responder(reader_token, no_access_token), server_tls, port=port).start()
        )

    try:
        time.sleep(0.3)
        metrics.stop()  # "rolled out", and then the old proxy goes away
        later = threading.Thread(target=new_proxy_answers_later)
        later.start()
        migrate_step.wait_for_metrics_to_settle(prober)
        summary = prober.stop()
        later.join()
    finally:
        prober.stop()
        for server in restarted:
            server.stop()
    assert summary.metrics.last_ok and summary.metrics.streak >= migrate_step.SETTLED_STREAK
    assert 1.2 <= summary.outage_s(summary.metrics) <= 4.0, summary
    _, outage = check_probe(new_cell(), summary)
    assert outage.passed, outage.detail


def test_prober_is_bounded_by_max_requests(server_tls: ssl.SSLContext, reader_token: str, no_access_token: str) -> None:
    with running(StandInServer(proxy_like_responder(reader_token, no_access_token), server_tls)) as metrics:
        prober = MetricsProber(f"{metrics.url}/metrics", reader_token, interval_s=0.01, max_requests=5).start()
        time.sleep(1.0)
        summary = prober.stop()
    assert summary.metrics.attempts == 5 and summary.metrics.failures == 0
    lost, outage = check_probe(new_cell(), summary)
    assert lost.status is CheckStatus.SKIPPED
    assert outage.passed and outage.detail == "no metrics outage (5 requests)"


def test_module_paths_are_importable() -> None:
    # The checks module stays free of provider and pytest imports (one concern per module).
    source = Path(checks.__file__).read_text()
    assert "e2e.cluster" not in source and "import pytest" not in source
