"""The byte pump both relays use: a half-close is passed on, and a peer that never closes its
side after the other ended cannot hold the relay's thread for longer than the grace."""

from __future__ import annotations

import socket
import threading
import time

from e2e.tcp_pump import pump


def _pumped(after_end_s: float) -> tuple[socket.socket, socket.socket, threading.Thread]:
    """client <-> [pump] <-> server: the test holds the client's and the server's ends."""
    client, relay_client_side = socket.socketpair()
    relay_server_side, server = socket.socketpair()
    thread = threading.Thread(target=pump, args=(relay_client_side, relay_server_side, after_end_s), daemon=True)
    thread.start()
    return client, server, thread


def test_bytes_go_both_ways_and_a_half_close_is_passed_on() -> None:
    client, server, thread = _pumped(after_end_s=5.0)
    client.sendall(b"GET")
    assert server.recv(16) == b"GET"
    client.shutdown(socket.SHUT_WR)  # the client is done sending, still reading
    assert server.recv(16) == b""  # the server sees the end of the request...
    server.sendall(b"200 OK")  # ...and still answers through the relay
    assert client.recv(16) == b"200 OK"
    server.close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_peer_that_never_closes_its_side_is_cut_after_the_grace() -> None:
    client, server, thread = _pumped(after_end_s=0.3)
    client.shutdown(socket.SHUT_WR)
    assert server.recv(16) == b""
    started = time.monotonic()
    thread.join(timeout=5)  # the server never closes: the grace ends the pump
    assert not thread.is_alive()
    assert time.monotonic() - started < 3.0
