"""A stand-in for the KServe manager's plain-HTTP metrics endpoint (``127.0.0.1:8080``).

The local tier plays the manager with the release's real binary; this stand-in is only the
labelled fallback for a release whose manager cannot be built (its output then carries
``kserve_compat_stand_in_info``), and a plain upstream for tests of the proxy alone.

It serves ``/metrics`` in the Prometheus text format with the metric names
controller-runtime registers for KServe's controllers, from a private registry (so the
test process's own metrics never leak in), and counts the requests it answered: a
request that reached it went through the proxy.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from e2e.local.processes import StartsAndStops

log = logging.getLogger(__name__)

#: The controllers KServe's manager runs (names as controller-runtime labels them).
KSERVE_CONTROLLERS = ("inferenceservice", "trainedmodel", "inferencegraph")

#: A metric name every scrape of the real manager and of this stand-in contains.
SENTINEL_METRIC = "controller_runtime_reconcile_total"


#: What the stand-in adds to its own output when it plays a manager that could not run, so
#: that a check reading it can say its result is a stand-in's (``e2e.checks.metrics``).
STAND_IN_METRIC = "kserve_compat_stand_in_info"


def kserve_like_registry(stand_in_reason: str = "") -> CollectorRegistry:
    """A registry holding controller-runtime's reconcile and workqueue metrics (and, with a
    ``stand_in_reason``, ``kserve_compat_stand_in_info{reason=...} 1``)."""
    registry = CollectorRegistry(auto_describe=True)
    if stand_in_reason:
        marker = Gauge(
            STAND_IN_METRIC,
            "This endpoint is kserve-compat's stand-in, not KServe's manager",
            ["reason"],
            registry=registry,
        )
        marker.labels(reason=stand_in_reason).set(1)
    reconciles = Counter(
        "controller_runtime_reconcile",
        "Total number of reconciliations per controller",
        ["controller", "result"],
        registry=registry,
    )
    errors = Counter(
        "controller_runtime_reconcile_errors",
        "Total number of reconciliation errors per controller",
        ["controller"],
        registry=registry,
    )
    workers = Gauge(
        "controller_runtime_active_workers",
        "Number of currently used workers per controller",
        ["controller"],
        registry=registry,
    )
    depth = Gauge("workqueue_depth", "Current depth of workqueue", ["name"], registry=registry)
    adds = Counter("workqueue_adds", "Total number of adds handled by workqueue", ["name"], registry=registry)
    retries = Counter("workqueue_retries", "Total number of retries handled by workqueue", ["name"], registry=registry)
    for number, controller in enumerate(KSERVE_CONTROLLERS, start=1):
        for result in ("success", "error", "requeue", "requeue_after"):
            reconciles.labels(controller=controller, result=result).inc(number * 3 if result == "success" else 0)
        errors.labels(controller=controller).inc(0)
        workers.labels(controller=controller).set(0)
        depth.labels(name=controller).set(0)
        adds.labels(name=controller).inc(number * 3)
        retries.labels(name=controller).inc(0)
    return registry


@dataclass(frozen=True)
class SeenRequest:
    """What the upstream saw of one request (no header values: they may hold tokens)."""

    method: str
    path: str
    header_names: tuple[str, ...]


class MetricsUpstream(StartsAndStops):
    """``/metrics`` on a free 127.0.0.1 port, served from a thread; a context manager."""

    def __init__(self, registry: CollectorRegistry | None = None, *, stand_in_reason: str = "") -> None:
        self.registry = registry or kserve_like_registry(stand_in_reason)
        self._lock = threading.Lock()
        self._seen: list[SeenRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("metrics upstream not started")
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def url(self) -> str:
        """The ``--upstream`` value for a proxy in front of this server."""
        return f"http://{self.address}/"

    @property
    def requests_served(self) -> int:
        with self._lock:
            return len(self._seen)

    def seen(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._seen)

    def body(self) -> bytes:
        """What ``/metrics`` answers right now."""
        return bytes(generate_latest(self.registry))

    def start(self) -> Self:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream._record(self)
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                payload = upstream.body()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics upstream: " + format, *args)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"metrics-upstream-{self.address}", daemon=True
        )
        self._thread.start()
        log.info("metrics upstream serving %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _record(self, handler: BaseHTTPRequestHandler) -> None:
        request = SeenRequest(handler.command, handler.path, tuple(handler.headers.keys()))
        with self._lock:
            self._seen.append(request)
