"""A real Prometheus as a local process, scraping what the local tier plays.

The binary is Debian's ``prometheus`` package (``apt-get install prometheus``; 2.42) or
any ``prometheus`` named by ``KSERVE_COMPAT_PROMETHEUS``. Everything it writes lives in
one directory (the cluster's work directory): its configuration, one 0600 file per
scrape token (Prometheus reads ``bearer_token_file`` on every scrape; the token is never
on a command line or in a log), its TSDB and its log. It runs through ``ManagedProcess``,
so Ctrl-C and SIGTERM stop it like the control plane's processes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

import requests
import yaml

from e2e.errors import EnvironmentMissing
from e2e.local.processes import ManagedProcess, OneProcess, free_loopback_port, wait_ready
from e2e.scrape import ScrapeJob, prometheus_config, scrape_config

log = logging.getLogger(__name__)

BINARY_ENV = "KSERVE_COMPAT_PROMETHEUS"
INSTALL_HINT = "install Debian's prometheus package (apt-get install prometheus) or set KSERVE_COMPAT_PROMETHEUS"


def locate() -> Path | None:
    """The prometheus binary: ``$KSERVE_COMPAT_PROMETHEUS``, else ``prometheus`` on PATH."""
    named = os.environ.get(BINARY_ENV)
    if named:
        path = Path(named)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which("prometheus")
    return Path(found) if found else None


def require() -> Path:
    binary = locate()
    if binary is None:
        where = f"{BINARY_ENV}={os.environ[BINARY_ENV]}" if os.environ.get(BINARY_ENV) else "PATH"
        raise EnvironmentMissing(f"no prometheus binary on {where}: {INSTALL_HINT}")
    return binary


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


class PrometheusProcess(OneProcess):
    """One Prometheus scraping ``jobs`` at ``addresses[job.name]`` (``host:port``).

    ``start()`` only forks; ``wait_ready()`` waits for ``/-/ready`` (the check calls it, so
    a group's install does not wait for Prometheus's start-up).
    """

    def __init__(
        self,
        binary: Path,
        jobs: Sequence[ScrapeJob],
        addresses: Mapping[str, str],
        workdir: Path,
        *,
        name: str = "prometheus",
        ready_timeout: float = 30.0,
    ) -> None:
        self.binary = binary
        self.jobs = list(jobs)
        self.workdir = workdir
        self.ready_timeout = ready_timeout
        self.port = free_loopback_port()
        self.config_path = workdir / "prometheus.yml"
        self.data_dir = workdir / "data"
        tokens = workdir / "tokens"
        self._configs = [
            scrape_config(job.name, addresses[job.name], os.fspath(tokens / f"{job.name}.token")) for job in self.jobs
        ]
        self.process = ManagedProcess(
            name,
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=info",
            ],
            log_path=workdir / f"{name}.log",
            cwd=workdir,
        )
        self._ready = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> Self:
        tokens = self.workdir / "tokens"
        tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
        for job in self.jobs:
            _write_secret(tokens / f"{job.name}.token", job.token)
        self.config_path.write_text(yaml.safe_dump(prometheus_config(self._configs), sort_keys=False))
        self.process.start()
        return self

    def wait_ready(self) -> None:
        """Wait until Prometheus answers ``/-/ready`` (raises ``ProcessExitedEarly`` with its
        last output if it exits first, ``NotReady`` if it never answers)."""
        if self._ready:
            self.process.ensure_running()
            return
        wait_ready(f"prometheus on {self.address}", self._probe, watched=[self.process], timeout=self.ready_timeout)
        self._ready = True

    def _probe(self) -> tuple[bool, str]:
        session = requests.Session()
        session.trust_env = False
        try:
            response = session.get(f"{self.url}/-/ready", timeout=2)
        except requests.RequestException as error:
            return False, f"{type(error).__name__}"
        return response.status_code == 200, f"HTTP {response.status_code} {response.text.strip()[:80]}"
