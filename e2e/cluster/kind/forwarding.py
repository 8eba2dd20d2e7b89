"""Port-forwards that wait for kubectl's "Forwarding from" line and keep one local address
while kubectl is restarted under it (a rollout replaces the pod a Service forward reached)."""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import tenacity

from e2e.cluster.kind.commands import parse_forwarding_port
from e2e.errors import HarnessError
from e2e.tcp_pump import pump

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

# What kubectl prints once the pod it forwards to is gone (it may or may not exit).
FORWARD_LOST = re.compile(r"lost connection to pod|an error occurred forwarding")


class NotReady(Exception):
    """What is awaited has not happened yet (the message says what was last seen)."""


class _PortForward:
    """A running ``kubectl port-forward`` whose output is drained by a thread.

    Draining matters after readiness too: kubectl prints "Handling connection for PORT" per
    connection and would block on a full pipe. The drain also watches for the lines kubectl
    prints when the pod it is bound to is gone: depending on the version kubectl then exits
    ("lost connection to pod") or stays up and fails every connection ("an error occurred
    forwarding"), so a live process is no proof of a working forward.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.argv = list(argv)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.last_seen = "nothing yet"
        self.broken: str | None = None  # why this forward must not be used again
        self._ready = False
        self.process = subprocess.Popen(
            self.argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            if not line.startswith("Handling connection"):
                self.last_seen = line
            if FORWARD_LOST.search(line):
                self.broken = line
            if not self._ready:  # only wait_ready() reads the queue: don't hoard lines after it
                self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self, timeout: float) -> int:
        """The local port once kubectl says it listens; raises when it exits or times out."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise NotReady(f"no 'Forwarding from' line in {timeout:.0f}s") from None
            if line is None:
                raise NotReady(f"kubectl exited {self.process.wait()}")
            port = parse_forwarding_port(line)
            if port is not None:
                self._ready = True
                return port

    def unusable(self) -> str | None:
        """Why new connections must not go through this forward, or None."""
        code = self.process.poll()
        if code is not None:
            return f"kubectl exited {code}"
        return self.broken

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # The reader sees EOF once kubectl is gone; closing the pipe under it would race.
        self._reader.join(timeout=5)
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()


class _Relay:
    """A stable ``127.0.0.1:PORT`` in front of kubectl port-forwards restarted on demand.

    kubectl binds a Service port-forward to the one pod it picked at start; when a rollout
    replaces that pod the forward is dead for good, and a caller that keeps one address for
    a whole migration (the background prober) would see an outage that never ends. The
    relay owns the address instead. Each accepted connection is piped (one thread each, at
    most ``max_connections``) to the current kubectl; when kubectl has exited, reported a
    lost pod or refuses the connection, the relay restarts it (bounded, with backoff) and
    retries that connection once. Connections already piped to a dead kubectl end (their
    bytes are copied by ``tcp_pump``, as the local tier's relay copies them): that is the
    outage window the prober must count.
    """

    def __init__(
        self,
        where: str,
        start: Callable[[], tuple[_PortForward, int]],
        first: tuple[_PortForward, int],
        stopping: threading.Event,
        max_connections: int = 32,
        connect_timeout: float = 5.0,
    ) -> None:
        self._where = where
        self._start = start
        self._forward: _PortForward | None = first[0]
        self._port = first[1]
        self._stopping = stopping
        self._connect_timeout = connect_timeout
        self._restart_lock = threading.Lock()  # one restart at a time; others wait and reuse it
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # accept() wakes up to notice close()
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept, name=f"relay {where}", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            if not self._slots.acquire(blocking=False):
                log.warning("relay for %s: too many connections, refusing one", self._where)
                client.close()
                continue
            client.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(client,), name=f"relay {self._where} conn", daemon=True)
            with self._lock:
                self._threads.add(thread)
                self._sockets.add(client)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        backend: socket.socket | None = None
        try:
            backend = self._connect()
            if backend is not None:
                pump(client, backend)
        except OSError as exc:  # a reset mid-stream: the client sees its connection close
            log.debug("relay for %s: connection ended: %s", self._where, exc)
        finally:
            for sock in (client, backend):
                if sock is not None:
                    with self._lock:
                        self._sockets.discard(sock)
                    sock.close()
            with self._lock:
                self._threads.discard(threading.current_thread())
            self._slots.release()

    def _connect(self) -> socket.socket | None:
        """A socket to the current kubectl, restarting it once if it turns out dead."""
        for _ in range(2):
            forward, port = self._current()
            if forward is None:
                return None
            try:
                backend = socket.create_connection(("127.0.0.1", port), timeout=self._connect_timeout)
            except OSError as exc:
                forward.broken = forward.broken or f"connecting to kubectl's port {port}: {exc}"
                continue
            backend.settimeout(None)
            with self._lock:
                if self._stopping.is_set():
                    backend.close()
                    return None
                self._sockets.add(backend)
            return backend
        return None

    def _current(self) -> tuple[_PortForward | None, int]:
        """The forward to use: the running one, or a fresh one if it is unusable."""
        with self._restart_lock:
            if self._stopping.is_set():
                return None, 0
            forward = self._forward
            why = forward.unusable() if forward is not None else "the last restart failed"
            if forward is not None and why is None:
                return forward, self._port
            last = forward.last_seen if forward is not None else "nothing"
            log.info("kubectl port-forward %s: restarting (%s; last seen: %s)", self._where, why, last)
            if forward is not None:
                forward.stop()
            self._forward = None
            try:
                self._forward, self._port = self._start()
            except NotReady as exc:
                if not self._stopping.is_set():
                    log.warning(
                        "kubectl port-forward %s: restart failed (%s); closing one connection", self._where, exc
                    )
                return None, 0
            log.info("kubectl port-forward %s: forwarding again (kubectl port %d)", self._where, self._port)
            return self._forward, self._port

    def close(self) -> None:
        """Stop accepting, end every connection and wait for the relay threads."""
        self._stopping.set()
        self._listener.close()
        self._acceptor.join(timeout=5)
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):  # shutdown (not close) wakes a thread blocked on it
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)


@contextlib.contextmanager
def port_forward(
    argv: Sequence[str], env: Mapping[str, str], ready_timeout: float = 30.0, attempts: int = 3
) -> Iterator[str]:
    """Run ``argv`` (a kubectl port-forward) until it listens; yield a stable ``127.0.0.1:PORT``.

    kubectl is (re)started with backoff when it exits early (e.g. the Service has no ready
    endpoint yet) or stays silent. The address yielded is a relay's (see ``_Relay``), which
    outlives kubectl: it restarts kubectl when the pod behind it is replaced. Everything
    (relay threads, sockets, kubectl) is stopped on exit.
    """
    where = " ".join(argv[2:])
    stopping = threading.Event()
    started: list[_PortForward] = []

    def log_retry(state: tenacity.RetryCallState) -> None:
        outcome = state.outcome.exception() if state.outcome else None
        last = started[-1].last_seen if started else "nothing yet"
        log.info(
            "waiting for kubectl port-forward %s (attempt %d: %s; last seen: %s)",
            where,
            state.attempt_number,
            outcome,
            last,
        )

    def nap(seconds: float) -> None:
        stopping.wait(seconds)  # a backoff that ends at once on exit

    @tenacity.retry(
        # Stops early on exit: a restart in progress must not hold the context open.
        stop=tenacity.stop_after_attempt(attempts) | tenacity.stop_when_event_set(stopping),
        wait=tenacity.wait_exponential(multiplier=1, min=1, max=8),
        sleep=nap,
        retry=tenacity.retry_if_exception_type(NotReady),
        before_sleep=log_retry,
        reraise=True,
    )
    def start() -> tuple[_PortForward, int]:
        started[:] = [f for f in started if f.process.poll() is None]  # keep only what may need stopping
        forward = _PortForward(argv, env)
        started.append(forward)
        try:
            return forward, forward.wait_ready(ready_timeout)
        except NotReady:
            forward.stop()
            raise

    def stop_all() -> None:
        for forward in list(started):
            forward.stop()

    try:
        first = start()
    except NotReady as exc:
        last = started[-1].last_seen if started else "nothing"
        raise HarnessError(
            f"kubectl port-forward {where}: not ready after {attempts} attempts ({exc}; last seen: {last})"
        ) from None
    try:
        relay = _Relay(where, start, first, stopping)
    except BaseException:
        stop_all()
        raise
    log.info("port-forward %s: kubectl on 127.0.0.1:%d behind the relay on %s", where, first[1], relay.address)
    try:
        yield relay.address
    finally:
        stopping.set()
        stop_all()  # first: wakes a restart waiting for kubectl's first line
        relay.close()
        stop_all()  # again: a restart may have started kubectl while the relay was closing
