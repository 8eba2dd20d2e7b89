"""A Service's stable address on the local tier: a loopback TCP relay to whatever plays it now.

In a cluster a Service's address stays while the pods behind it come and go. On the local
tier the processes that play those pods change (a swap restarts the proxy) and exist only
once the release is installed; a client configured once, before that, gets a relay's
address instead: Prometheus, started with the group's cluster so that its own start-up
(it applies a new configuration's targets about 5 s after it starts) overlaps the
install. Each accepted connection is forwarded to the address ``resolve()`` returns at
that moment and the bytes are copied unchanged, so TLS stays end to end between the
client and the proxy. With nothing behind the Service the connection is closed at once,
as a Service without endpoints refuses it. The last address found is tried first (a
played container keeps its port across restarts, so it stays the one tried while a swap
has nothing behind the Service); ``resolve()``, which asks the API server, runs again only
when that fails, and at most every ``RESOLVE_EVERY_S``.

``disconnect(address)`` cuts the connections to a process about to be stopped: a client
holding an HTTP/2 connection (Prometheus does) would otherwise delay the proxy's graceful
shutdown by Go's one-second GOAWAY timeout, and with it every swap and the outage window
the migration scenario measures.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Self

from e2e.local.processes import StartsAndStops
from e2e.tcp_pump import pump

log = logging.getLogger(__name__)

RESOLVE_EVERY_S = 1.0


class ServiceRelay(StartsAndStops):
    """Listens on a free port of ``host`` (loopback by default); forwards each connection to ``resolve()``'s
    ``host:port`` (None: nothing plays the Service now)."""

    def __init__(self, resolve: Callable[[], str | None], name: str = "service", host: str = "127.0.0.1") -> None:
        self.resolve = resolve
        self.name = name
        self._connections: dict[socket.socket, tuple[socket.socket, str]] = {}  # client -> (upstream, address)
        self._lock = threading.Lock()
        self._last: str | None = None
        self._resolved_at = float("-inf")
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                relay._forward(self.request)

        # ``host``: loopback for local clients; a registry mirror listens on the kind network's gateway.
        self._server = socketserver.ThreadingTCPServer((host, 0), Handler, bind_and_activate=True)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"relay-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        with self._lock:
            pairs = [(client, upstream) for client, (upstream, _) in self._connections.items()]
        for client, upstream in pairs:
            _cut(client)
            _cut(upstream)

    def disconnect(self, address: str) -> int:
        """Cut every connection forwarded to ``address``; how many there were."""
        with self._lock:
            pairs = [(client, upstream) for client, (upstream, to) in self._connections.items() if to == address]
        for client, upstream in pairs:
            _cut(client)
            _cut(upstream)
        return len(pairs)

    def _forward(self, client: socket.socket) -> None:
        address = self._last
        upstream = _connect(address)
        if upstream is None:
            fresh = self._resolve()
            if fresh is not None and fresh != address:
                address, upstream = fresh, _connect(fresh)
        if upstream is None or address is None:
            return  # closing the client is the refusal
        upstream.settimeout(None)
        with self._lock:
            self._connections[client] = (upstream, address)
        try:
            pump(client, upstream)
        finally:
            with self._lock:
                self._connections.pop(client, None)
            upstream.close()

    def _resolve(self) -> str | None:
        with self._lock:
            if time.monotonic() - self._resolved_at < RESOLVE_EVERY_S:
                return None
            self._resolved_at = time.monotonic()
        try:
            target = self.resolve()
        except Exception as error:  # a half-updated cluster: refuse this connection, not the relay
            log.debug("relay %s: no address (%s)", self.name, error)
            target = None
        # Nothing found (a swap between two processes) keeps the last address: the next
        # process takes the same port, and is reached as soon as it listens.
        if target is not None:
            self._last = target
        return target


def _connect(address: str | None) -> socket.socket | None:
    if address is None:
        return None
    host, _, port = address.rpartition(":")
    try:
        return socket.create_connection((host, int(port)), timeout=5)
    except OSError:
        return None


def _cut(connection: socket.socket) -> None:
    """Shut a socket down both ways (which also wakes its pump's selector), then close it."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        connection.close()
