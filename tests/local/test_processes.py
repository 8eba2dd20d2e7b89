"""The local tier's port choice (e2e/local/processes.py): below the kernel's ephemeral range, so
no outgoing connection can take a port between its choice and the bind of the process it is
for (a played manager once failed with "bind: address already in use" on a busy machine)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO

from e2e.local import processes


def test_ports_come_from_below_the_ephemeral_range_free_and_never_twice() -> None:
    low, _ = processes.ephemeral_range()
    ports = [processes.free_loopback_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(processes.LOWEST_PORT <= port < low for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # free when handed out


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        picks = iter([busy, busy, 31000])
        monkeypatch.setattr(processes, "EPHEMERAL_RANGE_FILE", Path("/nonexistent"))  # the default range
        monkeypatch.setattr(processes._ports, "randrange", lambda low, high: next(picks))
        monkeypatch.setattr(processes, "_handed_out", set())
        assert processes.free_loopback_port() == 31000


def test_a_range_with_no_room_below_falls_back_to_the_kernels_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("1024\t65535\n")
    assert processes.ephemeral_range(ranges) == (1024, 65535)
    assert processes.ephemeral_range(tmp_path / "missing") == processes.DEFAULT_EPHEMERAL
    monkeypatch.setattr(processes, "EPHEMERAL_RANGE_FILE", ranges)
    monkeypatch.setattr(processes._ports, "randrange", lambda low, high: pytest.fail("no room: not to be asked"))
    port = processes.free_loopback_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_sigterm_stops_a_pytest_run_as_ctrl_c_does(tmp_path: Path) -> None:
    """A SystemExit inside a test only fails that test and pytest goes on: a SIGTERM sent to
    a kind run (a cancelled CI job, --parallel-groups passing it on) must stop the session
    instead, so its teardown deletes the clusters."""
    (tmp_path / "test_terminated.py").write_text(
        "import os, signal\n"
        "from e2e.local.processes import interrupt_on_termination\n"
        "def test_first():\n"
        "    interrupt_on_termination()\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    except KeyboardInterrupt as exc:\n"
        "        print('interrupted by', exc)\n"
        "        raise\n"
        "def test_second():\n"
        "    print('the run went on')\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "test_terminated.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "interrupted by SIGTERM" in output
    assert "the run went on" not in output
