"""Copying a TCP connection's bytes both ways: what a relay does once it holds a client's
socket and its upstream's. One copy for both relays of the harness (a Service's address on
the local tier, a kind port-forward's stable address), so both close alike: an end of stream
from one side is passed on as a half-close, never as a reset, and the other side then has
``AFTER_END_S`` to finish (a peer that never closes its side must not hold a relay's thread
and connection slot for ever).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time

CHUNK = 64 * 1024
AFTER_END_S = 5.0


def pump(first: socket.socket, second: socket.socket, after_end_s: float = AFTER_END_S) -> None:
    """Copy bytes both ways until both sides have closed (an end of stream from one side is
    passed on as a half-close; the other side then has ``after_end_s`` to finish), either
    socket fails, or a ``shutdown``/``close`` of them by their owner ends it (the selector
    wakes within a second). The caller closes both sockets after."""
    peer = {first: second, second: first}
    with contextlib.suppress(OSError, ValueError), selectors.DefaultSelector() as selector:
        selector.register(first, selectors.EVENT_READ)
        selector.register(second, selectors.EVENT_READ)
        reading = 2
        deadline = float("inf")
        while reading and first.fileno() >= 0 and second.fileno() >= 0 and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                data = source.recv(CHUNK)
                if data:
                    peer[source].sendall(data)
                    continue
                selector.unregister(source)
                peer[source].shutdown(socket.SHUT_WR)
                reading -= 1
                deadline = min(deadline, time.monotonic() + after_end_s)
