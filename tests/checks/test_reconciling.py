"""Waiting for the manager to reconcile after its pod was replaced (the leader lease)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from e2e.checks.reconciling import reconcile_series, wait_until_reconciling

WITHOUT = "# TYPE go_goroutines gauge\ngo_goroutines 12\n"
WITH = (
    WITHOUT + "# TYPE controller_runtime_reconcile_total counter\n"
    'controller_runtime_reconcile_total{controller="inferenceservice",result="success"} 3\n'
)


class _Manager(http.server.BaseHTTPRequestHandler):
    answers: list[tuple[int, str]] = []

    def do_GET(self) -> None:
        status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def manager() -> Iterator[tuple[str, type[_Manager]]]:
    handler = type("Handler", (_Manager,), {"answers": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics", handler
    server.shutdown()
    server.server_close()


def test_the_counter_of_the_inferenceservice_controller_is_what_counts() -> None:
    assert reconcile_series(WITH) == 1
    assert reconcile_series(WITHOUT) == 0
    assert reconcile_series('controller_runtime_reconcile_total{controller="trainedmodel"} 1\n') == 0
    assert reconcile_series("not prometheus {{{") == 0


def test_waits_while_the_manager_answers_without_reconciles(manager: tuple[str, type[_Manager]]) -> None:
    url, handler = manager
    handler.answers = [(200, WITHOUT), (200, WITHOUT), (200, WITH)]
    wait = wait_until_reconciling(url, "token", timeout_s=20)
    assert wait.reconciling and wait.seconds >= 1.0  # two backoff sleeps of at least 0.5 s


def test_gives_up_after_the_timeout_with_what_it_last_saw(manager: tuple[str, type[_Manager]]) -> None:
    url, handler = manager
    handler.answers = [(200, WITHOUT)]
    wait = wait_until_reconciling(url, "token", timeout_s=1.5)
    assert not wait.reconciling
    assert wait.last_seen == 'HTTP 200 without controller_runtime_reconcile_total{controller="inferenceservice"}'


def test_a_proxy_that_refuses_is_left_to_the_checks_at_once(manager: tuple[str, type[_Manager]]) -> None:
    url, handler = manager
    handler.answers = [(403, "Forbidden")]
    wait = wait_until_reconciling(url, "token", timeout_s=30)
    assert not wait.reconciling and wait.seconds < 5 and wait.last_seen == "HTTP 403"
