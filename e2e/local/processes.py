"""Child processes that the local tier runs (etcd, kube-apiserver, kube-rbac-proxy, ...).

Each ``ManagedProcess`` runs in its own process group with stdout and stderr going to one
log file, so that ``stop()`` also ends whatever it forked and its output survives it.
Every running process is in a registry: an ``atexit`` hook and a SIGTERM/SIGHUP handler
(which turns the signal into ``SystemExit`` so context managers unwind) stop whatever is
left, so neither Ctrl-C nor a CI runner's SIGTERM leaves orphans behind.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

import tenacity

from e2e.errors import HarnessError
from e2e.secrets import redact

log = logging.getLogger(__name__)

_TAIL_BYTES = 64 * 1024  # enough for the last lines of even a --v=10 log


class StartsAndStops:
    """``with thing:`` starts it and stops it again, also on an exception or Ctrl-C.

    For the harness's process-owning classes: each defines ``start`` (returning itself)
    and ``stop``; the context-manager protocol is written once, here.
    """

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def terminate(self) -> None:
        """Ask it to stop without waiting; ``stop()`` then waits. Stopping several things by
        terminating them all first lets them shut down together (a controller or an API
        server takes about a second each to drain)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ProcessExitedEarly(HarnessError):
    """A process died while the harness was waiting for it to become ready."""

    def __init__(self, name: str, exit_code: int | None, last_lines: Sequence[str]) -> None:
        self.name = name
        # Not `exit_code`: HarnessError uses that name for the CLI's exit status.
        self.returncode = exit_code
        self.last_lines = list(last_lines)  # already redacted
        shown = " | ".join(_evidence(self.last_lines)) or "(no output)"
        super().__init__(f"{name} exited with code {exit_code} while starting; output: {shown}")


_ERROR_LINE = re.compile(r"(?i)\b(error|fatal|panic|unknown (flag|shorthand)|invalid)\b")


def _evidence(lines: Sequence[str]) -> list[str]:
    """The lines worth a one-line message: the first error lines (a usage text printed after
    an unknown flag would bury them), then the last few lines."""
    stripped = [line.strip() for line in lines if line.strip() and not line.startswith("=== ")]
    errors = [line for line in stripped if _ERROR_LINE.search(line)][:3]
    return list(dict.fromkeys([*errors, *stripped[-4:]]))


class NotReady(HarnessError):
    """A process kept running but never became ready in time."""


class _StillWaiting(Exception):
    def __init__(self, seen: str) -> None:
        super().__init__(seen)
        self.seen = seen


def wait_ready(
    what: str,
    probe: Callable[[], tuple[bool, str]],
    *,
    watched: Sequence[ManagedProcess],
    timeout: float,
) -> None:
    """Poll ``probe`` (returns ready?, what it saw) with backoff until it says ready.

    Before each probe every ``watched`` process must still run: one that exited fails the
    wait at once with its exit code and last output (``ProcessExitedEarly``). After
    ``timeout`` seconds ``NotReady`` names ``what`` and the last thing the probe saw.
    """
    log.info("waiting up to %.0fs for %s", timeout, what)
    last_report = time.monotonic()

    def attempt() -> None:
        nonlocal last_report
        for process in watched:
            process.ensure_running()
        ready, seen = probe()
        if not ready:
            if time.monotonic() - last_report > 5:
                log.info("still waiting for %s; last saw: %s", what, redact(seen))
                last_report = time.monotonic()
            raise _StillWaiting(seen)

    try:
        tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_StillWaiting),
            stop=tenacity.stop_after_delay(timeout),
            wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        )(attempt)
    except _StillWaiting as still:
        seen = " ".join(redact(still.seen).split())[:400]  # one line, bounded
        raise NotReady(f"{what} not ready after {timeout:.0f}s; last saw: {seen}") from None


# Where the kernel takes ports for outgoing connections and bind(0) (Linux's default range).
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL = (32768, 60999)
# The harness's own ports come from below the ephemeral range: a port picked free, closed and
# then handed to a process can be taken meanwhile by any outgoing connection if it lies in
# that range (seen once: "bind: address already in use" from a played manager on a busy machine).
LOWEST_PORT = 20000
_ports = random.SystemRandom()
_handed_out: set[int] = set()
_handed_lock = threading.Lock()


def ephemeral_range(path: Path | None = None) -> tuple[int, int]:
    """The kernel's ephemeral port range (``EPHEMERAL_RANGE_FILE``), or Linux's default."""
    try:
        low, high = (int(part) for part in (path or EPHEMERAL_RANGE_FILE).read_text().split()[:2])
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, below the kernel's ephemeral range (so no
    outgoing connection takes it before the process it is meant for binds it), and never
    handed out twice by this process. Falls back to the kernel's choice when that range is
    too low to leave room below it."""
    low, _ = ephemeral_range()
    if low - LOWEST_PORT >= 1000:
        for _ in range(200):
            port = _ports.randrange(LOWEST_PORT, low)
            with _handed_lock:
                if port in _handed_out:
                    continue
                if _bindable(port):
                    _handed_out.add(port)
                    return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class ManagedProcess(StartsAndStops):
    """One child process with its own process group and log file.

    ``env`` adds to (and overrides) this process's environment.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [os.fspath(arg) for arg in argv]
        self.log_path = log_path
        self.env = dict(env or {})
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._terminated = False  # SIGTERM sent: a second one makes Go programs exit at once
        self.started_at: float | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        if self._popen is not None and self._popen.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self._popen.pid})")
        install_signal_handlers()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Ctrl-C landing inside Popen (after the fork) would orphan the child before it is
        # tracked: hold signals until it is registered for stopping.
        with _signals_held(), self.log_path.open("ab") as log_file:
            # A restart appends to the same log: mark where each run begins.
            log_file.write(f"=== {self.name} started at {time.strftime('%H:%M:%S')} ===\n".encode())
            log_file.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,  # own process group: stop() reaches its children
            )
            self.started_at = time.monotonic()
            self._stopped = False
            self._terminated = False
            _REGISTRY.add(self)
        log.info("started %s (pid %d), log %s", self.name, self._popen.pid, self.log_path)
        return self

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def exit_code(self) -> int | None:
        """The exit code once the process has ended (negative: killed by that signal)."""
        return self._popen.poll() if self._popen else None

    def ensure_running(self) -> None:
        """Raise ``ProcessExitedEarly`` (exit code, last output lines) if the process ended."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        code = self._popen.poll()
        if code is not None:
            raise ProcessExitedEarly(self.name, code, self.tail_lines(40))

    def terminate(self) -> None:
        """SIGTERM the process group once, without waiting (``stop()`` waits)."""
        popen = self._popen
        if popen is None or self._stopped or self._terminated or popen.poll() is not None:
            return
        _signal_group(popen.pid, signal.SIGTERM)
        self._terminated = True

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group (unless ``terminate()`` did), SIGKILL it after ``grace``
        seconds; return the exit code."""
        popen = self._popen
        if popen is None:
            return None
        if self._stopped:  # signalling again could hit a reused process group id
            return popen.returncode
        try:
            if popen.poll() is None:
                self.terminate()
                try:
                    popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    log.warning("%s ignored SIGTERM for %.0fs; killing it", self.name, grace)
                    _signal_group(popen.pid, signal.SIGKILL)
                    popen.wait(timeout=10)
            # The leader may be gone while something it forked still holds the group.
            _signal_group(popen.pid, signal.SIGKILL)
        finally:
            _REGISTRY.discard(self)
            self._stopped = popen.poll() is not None
        return popen.returncode

    def __enter__(self) -> Self:
        return self if self._popen is not None else self.start()

    # -- output --------------------------------------------------------------------------

    def output(self) -> str:
        """The whole log text, NOT redacted (for searching it, e.g. for leaked tokens)."""
        try:
            return self.log_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail_lines(self, lines: int = 20) -> list[str]:
        """The last ``lines`` lines of the log, redacted."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - _TAIL_BYTES))
                data = handle.read()
        except FileNotFoundError:
            return []
        text = redact(data.decode("utf-8", errors="replace"))
        return text.splitlines()[-lines:]

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the log as one redacted text."""
        return "\n".join(self.tail_lines(lines))

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exit={self.exit_code}"
        return f"<ManagedProcess {self.name} pid={self.pid} {state}>"


class OneProcess(StartsAndStops):
    """Something run as one ``ManagedProcess`` (a played container, Prometheus): its state,
    output and stop come from that process; subclasses set ``process`` and define ``start``."""

    process: ManagedProcess

    @property
    def alive(self) -> bool:
        return self.process.alive

    @property
    def exit_code(self) -> int | None:
        return self.process.exit_code

    def stop(self) -> int | None:
        return self.process.stop()

    def terminate(self) -> None:
        self.process.terminate()

    def logs(self) -> str:
        """Everything it printed, NOT redacted: search it (e.g. for leaked tokens), never print it."""
        return self.process.output()

    def tail_lines(self, lines: int = 15) -> list[str]:
        """The last ``lines`` lines of its output, redacted."""
        return self.process.tail_lines(lines)

    def _start_and_wait(self, what: str, probe: Callable[[], tuple[bool, str]], timeout: float) -> None:
        """Start the process and wait until ``probe`` says ready; stopped again if it never is."""
        self.process.start()
        try:
            wait_ready(what, probe, watched=[self.process], timeout=timeout)
        except BaseException:
            self.process.stop()
            raise


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)  # start_new_session made pid the group id


class _ProcessRegistry:
    """Processes started and not yet stopped, so that exit paths can stop them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: dict[int, ManagedProcess] = {}

    def add(self, process: ManagedProcess) -> None:
        with self._lock:
            self._processes[id(process)] = process

    def discard(self, process: ManagedProcess) -> None:
        with self._lock:
            self._processes.pop(id(process), None)

    def running(self) -> list[ManagedProcess]:
        with self._lock:
            return list(self._processes.values())


_REGISTRY = _ProcessRegistry()


def running_processes() -> list[ManagedProcess]:
    """Every process started through this module and not stopped yet."""
    return _REGISTRY.running()


def stop_together(things: Sequence[StartsAndStops]) -> None:
    """Stop several things at once: terminate each, then wait for each in the given order."""
    for thing in things:
        thing.terminate()
    for thing in things:
        thing.stop()


def stop_all(grace: float = 3.0) -> None:
    """Stop every registered process, newest first (e.g. the API server before etcd)."""
    for process in reversed(_REGISTRY.running()):
        try:
            process.stop(grace=grace)
        except Exception:  # teardown must reach every process
            log.exception("could not stop %s", process.name)


atexit.register(stop_all)

_handlers_installed = False


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Record SIGINT/SIGTERM during the block and deliver them when it ends.

    Python runs signal handlers in the main thread only, so other threads need nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for held_signal in previous:
        signal.signal(held_signal, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        for held_signal, handler in previous.items():
            signal.signal(held_signal, handler if handler is not None else signal.SIG_DFL)
        for signum in held:
            signal.raise_signal(signum)  # now handled as usual (KeyboardInterrupt, SystemExit)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds every `with` block (stopping their processes); atexit follows.
    raise SystemExit(128 + signum)


def _interrupt_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def interrupt_on_termination() -> None:
    """In a pytest run, SIGTERM/SIGHUP become KeyboardInterrupt, as Ctrl-C is: pytest then
    stops the session and the fixtures' teardown deletes the clusters and stops the
    processes. (A SystemExit raised inside a test only fails that test: a kind grid sent
    SIGTERM by ``--parallel-groups`` went on to its next cells, clusters and all.)

    Only the main thread can do this; a handler someone else installed is kept.
    """
    global _handlers_installed
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) in (signal.SIG_DFL, _exit_on_signal):
            signal.signal(signum, _interrupt_on_signal)
    _handlers_installed = True


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit, unless someone else already handles them.

    Only the main thread can do this: call it before processes start in other threads.
    """
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _exit_on_signal)
    _handlers_installed = True
