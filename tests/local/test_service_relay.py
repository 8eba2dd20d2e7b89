"""The local tier's stable Service address: a loopback relay to whatever plays the Service.

Real sockets on loopback: an echo server stands for the process behind the Service.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from e2e.local import service_relay
from e2e.local.service_relay import ServiceRelay


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(self.server.prefix)  # type: ignore[attr-defined]
        while data := self.request.recv(4096):
            self.request.sendall(data)


def echo_server(prefix: bytes) -> socketserver.ThreadingTCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.prefix = prefix  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def address_of(server: socketserver.ThreadingTCPServer) -> str:
    host, port = server.server_address[:2]
    return f"{host!s}:{port}"


def exchange(relay: ServiceRelay, payload: bytes) -> bytes:
    """Send ``payload`` through the relay; what came back ('' if the relay closed it)."""
    host, _, port = relay.address.rpartition(":")
    chunks = []
    with socket.create_connection((host, int(port)), timeout=5) as client:
        try:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            while chunk := client.recv(4096):
                chunks.append(chunk)
        except OSError:  # a refusal may close the connection before we are done sending
            pass
    return b"".join(chunks)


@pytest.fixture
def no_throttle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_relay, "RESOLVE_EVERY_S", 0.0)


@pytest.fixture
def first() -> Iterator[socketserver.ThreadingTCPServer]:
    server = echo_server(b"first:")
    yield server
    server.shutdown()
    server.server_close()


def test_bytes_go_both_ways_unchanged_and_the_address_is_asked_once(
    first: socketserver.ThreadingTCPServer,
) -> None:
    asked = []

    def resolve() -> str:
        asked.append(1)
        return address_of(first)

    with ServiceRelay(resolve, "echo") as relay:
        payload = bytes(range(256)) * 1000  # binary, larger than one chunk
        assert exchange(relay, payload) == b"first:" + payload
        for _ in range(3):
            assert exchange(relay, b"ping") == b"first:ping"
    assert len(asked) == 1  # the last address is tried first


def test_nothing_behind_the_service_is_a_refusal_until_something_plays_it(
    first: socketserver.ThreadingTCPServer, no_throttle: None
) -> None:
    behind: list[str] = []

    def resolve() -> str | None:
        if not behind:
            raise RuntimeError("service not found")  # e.g. the API server's 404 before the install
        return behind[0]

    with ServiceRelay(resolve, "late") as relay:
        assert exchange(relay, b"ping") == b""
        behind.append(address_of(first))
        assert exchange(relay, b"ping") == b"first:ping"


def test_a_restarted_process_elsewhere_is_found_again(
    first: socketserver.ThreadingTCPServer, no_throttle: None
) -> None:
    second = echo_server(b"second:")
    current = [address_of(first)]
    try:
        with ServiceRelay(lambda: current[0], "moved") as relay:
            assert exchange(relay, b"a") == b"first:a"
            first.shutdown()
            first.server_close()
            current[0] = address_of(second)
            assert exchange(relay, b"b") == b"second:b"
    finally:
        second.shutdown()
        second.server_close()


def test_a_process_restarted_on_its_port_is_reached_at_once_after_a_swap_with_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A swap stops the proxy, the API server then finds no played process (None), and the
    next proxy listens on the same port: it is reached at once, not after the throttle."""
    port_holder = echo_server(b"old:")
    address = address_of(port_holder)
    current: list[str | None] = [address]
    with ServiceRelay(lambda: current[0], "swapped") as relay:
        assert exchange(relay, b"a") == b"old:a"
        port_holder.shutdown()
        port_holder.server_close()
        current[0] = None  # between the two processes
        monkeypatch.setattr(service_relay, "RESOLVE_EVERY_S", 0.3)
        time.sleep(0.35)  # past the throttle: the API server is asked, and finds nothing
        assert exchange(relay, b"b") == b""  # resolve() said nothing plays it: a refusal
        host, _, port = address.rpartition(":")
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        try:
            restarted = socketserver.ThreadingTCPServer((host, int(port)), _Echo)
        finally:
            socketserver.ThreadingTCPServer.allow_reuse_address = False
        restarted.daemon_threads = True
        restarted.prefix = b"new:"  # type: ignore[attr-defined]
        threading.Thread(target=restarted.serve_forever, daemon=True).start()
        try:
            # Within the throttle window: the last address is tried again, not forgotten.
            assert exchange(relay, b"c") == b"new:c"
        finally:
            restarted.shutdown()
            restarted.server_close()


def test_the_api_server_is_not_asked_more_than_once_a_second() -> None:
    asked = []

    def resolve() -> None:
        asked.append(time.monotonic())

    with ServiceRelay(resolve, "absent") as relay:
        for _ in range(5):
            assert exchange(relay, b"ping") == b""
    assert len(asked) == 1


def test_stop_closes_open_connections_and_the_port(first: socketserver.ThreadingTCPServer) -> None:
    relay = ServiceRelay(lambda: address_of(first), "stopped").start()
    host, _, port = relay.address.rpartition(":")
    client = socket.create_connection((host, int(port)), timeout=5)
    client.sendall(b"ping")
    received = b""
    while len(received) < len(b"first:ping"):
        received += client.recv(100)
    assert received == b"first:ping"
    relay.stop()
    assert client.recv(100) == b""  # closed by the relay
    client.close()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()


def test_disconnect_cuts_only_the_connections_to_that_address(first: socketserver.ThreadingTCPServer) -> None:
    """What the local tier does before it stops a played proxy: the client's connection is
    closed at once (an HTTP/2 client would otherwise hold the proxy's graceful shutdown)."""
    with ServiceRelay(lambda: address_of(first), "cut") as relay:
        host, _, port = relay.address.rpartition(":")
        client = socket.create_connection((host, int(port)), timeout=5)
        received = b""
        while len(received) < len(b"first:"):
            received += client.recv(100)
        assert relay.disconnect("127.0.0.1:1") == 0
        assert relay.disconnect(address_of(first)) == 1
        assert client.recv(100) == b""  # closed, not left hanging
        client.close()
        assert exchange(relay, b"again") == b"first:again"  # new connections still go through
