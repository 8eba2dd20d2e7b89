"""Running the harness on real kind clusters from a test: the kind network's gateway (where a
registry the nodes reach must listen) and a harness run that a Ctrl-C always ends cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from e2e.availability import unavailable


def kind_network_gateway() -> str:
    """The IPv4 gateway of Docker's ``kind`` network (kind makes it with its first cluster)."""
    done = subprocess.run(
        ["docker", "network", "inspect", "kind", "--format", "{{range .IPAM.Config}}{{.Gateway}} {{end}}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    ipv4 = [address for address in done.stdout.split() if address.count(".") == 3]
    if done.returncode != 0 or not ipv4:
        unavailable(f"no Docker network 'kind' to put the user's registry on ({done.stderr.strip() or done.stdout})")
    return ipv4[0]


def run_to_the_end(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run the harness; if the test ends first (timeout, Ctrl-C), stop it with Ctrl-C, as a
    user would, so it deletes its cluster and mirrors (a SIGKILL would leave them)."""
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.communicate(timeout=180)
