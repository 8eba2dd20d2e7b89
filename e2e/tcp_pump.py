"""Copying a TCP connection's bytes both ways: what a relay does once it holds a client's
socket and its upstream's. One copy for both relays of the harness (a Service's address on
the local tier, a kind port-forward's stable address), so both close alike: an end of stream
from one side is passed on as a half-close, never as a reset.
"""

from __future__ import annotations

import contextlib
import selectors
import socket

CHUNK = 64 * 1024


def pump(first: socket.socket, second: socket.socket) -> None:
    """Copy bytes both ways until both sides have closed (an end of stream from one side is
    passed on as a half-close), either socket fails, or a ``shutdown``/``close`` of them by
    their owner ends it (the selector wakes within a second)."""
    peer = {first: second, second: first}
    with contextlib.suppress(OSError, ValueError), selectors.DefaultSelector() as selector:
        selector.register(first, selectors.EVENT_READ)
        selector.register(second, selectors.EVENT_READ)
        reading = 2
        while reading and first.fileno() >= 0 and second.fileno() >= 0:
            for key, _ in selector.select(timeout=1.0):
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                data = source.recv(CHUNK)
                if data:
                    peer[source].sendall(data)
                    continue
                selector.unregister(source)
                peer[source].shutdown(socket.SHUT_WR)
                reading -= 1
