"""urllib3's InsecureRequestWarning stays out of pytest's output, whichever thread warns.

The harness sets the filter lazily where it makes unverified requests, but pytest drops
filters added during a test when the test ends; a thread that warns later (the harness
prepares the next cluster in the background) would reach the next test's warnings summary.
The plugin therefore sets it at session start. Each case runs a small pytest of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers.paths import REPO

TWO_TESTS = '''
import threading
import warnings

import urllib3

from e2e.checks.session import self_signed_session


def test_the_checks_set_the_filter_during_a_test():
    self_signed_session()


def test_a_thread_warns_in_a_later_test():
    def warn():
        warnings.warn("unverified request", urllib3.exceptions.InsecureRequestWarning)

    thread = threading.Thread(target=warn)
    thread.start()
    thread.join()
'''


def _run_pytest(tmp_path: Path, *plugins: str) -> str:
    (tmp_path / "test_two.py").write_text(TWO_TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugins, "test_two.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    return completed.stdout


def test_with_the_plugin_no_insecure_request_warning_reaches_the_summary(tmp_path: Path) -> None:
    output = _run_pytest(tmp_path, "-p", "e2e.plugin")
    assert "2 passed" in output
    assert "InsecureRequestWarning" not in output


def test_without_it_the_filter_set_in_an_earlier_test_is_gone(tmp_path: Path) -> None:
    # The counter-case: the lazily set filter alone does not survive the first test.
    output = _run_pytest(tmp_path)
    assert "InsecureRequestWarning" in output
    assert "test_a_thread_warns_in_a_later_test" in output
