"""No secret reaches any sink of a pytest run: terminal, captured and live logs, caplog,
the log file, the reports every plugin reads, and the JUnit XML.

An inner pytest session (a subprocess, configured by this repository's pyproject.toml as
every pytest run of it is) logs freshly minted tokens from the main thread, from a worker
thread and through a played process's output, prints them, fails with them, skips and
xfails with them, records them as JUnit properties and warns with them. The outer test
then reads everything that session wrote.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import secrets as random_secrets
import subprocess
import sys
import textwrap
import threading

import pytest
from helpers.paths import REPO

from e2e.secrets import REDACTED, register

INNER_CONFTEST = '''
import json
import logging
import os

from e2e.secrets import register

# The harness registers a token the moment it mints it.
OPAQUE = register(os.environ["INNER_OPAQUE_TOKEN"])
MINTED_JWT = register(os.environ["INNER_MINTED_JWT"])
UNREGISTERED_JWT = os.environ["INNER_UNREGISTERED_JWT"]  # e.g. echoed by a proxy, never registered
DUMPS = os.environ["INNER_DUMPS"]


def _dump(name, entry):
    with open(os.path.join(DUMPS, name), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\\n")


def _report_text(report):
    return {
        "nodeid": report.nodeid,
        "longrepr": report.longreprtext,
        "sections": report.sections,
        "user_properties": [[name, str(value)] for name, value in getattr(report, "user_properties", [])],
        "wasxfail": getattr(report, "wasxfail", ""),
    }


# What every later reader of a report (JUnit, report-log, xdist, pytest-html) gets.
def pytest_runtest_logreport(report):
    _dump("reports.jsonl", _report_text(report))


def pytest_collectreport(report):
    _dump("reports.jsonl", _report_text(report))


def pytest_sessionfinish(session):
    logging.getLogger("kserve-compat").info("session over; last token %s", OPAQUE)
'''

INNER_TESTS = '''
import base64
import json
import logging
import os
import subprocess
import sys
import threading
import time
import warnings

import pytest
from conftest import DUMPS, MINTED_JWT, OPAQUE, UNREGISTERED_JWT

from e2e.local.processes import ManagedProcess

log = logging.getLogger("e2e.runbook")  # not the root logger
SECRETS = (OPAQUE, MINTED_JWT, UNREGISTERED_JWT)


def leak_everywhere(tmp_path, record_property, record_testsuite_property):
    # main thread, a named logger, message and arguments
    log.info("minted %s for metrics-reader", OPAQUE)
    log.warning(f"TokenRequest answered {MINTED_JWT}; proxy echoed {UNREGISTERED_JWT}")
    log.info("encoded: %s", base64.b64encode(OPAQUE.encode()).decode())
    try:
        raise ValueError(f"API error body: {OPAQUE}")
    except ValueError:
        log.exception("minting failed")

    # a worker thread, as the prober and the cluster preparation run
    worker = threading.Thread(
        target=lambda: logging.getLogger("e2e.checks.prober").warning("scraping with %s", MINTED_JWT)
    )
    worker.start()
    worker.join()

    # a played process: its output goes to its log file, the harness logs what it read
    script = "import sys; print('I1203 proxy.go:42] token', sys.argv[1], sys.argv[2]); print(sys.argv[3])"
    with ManagedProcess(
        "echo-proxy", [sys.executable, "-c", script, *SECRETS], log_path=tmp_path / "echo-proxy.log"
    ) as process:
        deadline = time.monotonic() + 30
        while process.alive and time.monotonic() < deadline:
            time.sleep(0.05)
    log.info("echo-proxy said: %s", process.output())

    # a child process writing to the stdout/stderr it inherited (pytest's fd capture)
    subprocess.run([sys.executable, "-c", "import sys; print(sys.argv[1]); print(sys.argv[2], file=sys.stderr)",
                    OPAQUE, UNREGISTERED_JWT], check=True)
    print("stdout:", OPAQUE, MINTED_JWT)
    print("stderr:", UNREGISTERED_JWT, file=sys.stderr)

    record_property("token", OPAQUE)
    record_property("tokens", {"minted": MINTED_JWT, "echoed": UNREGISTERED_JWT})
    record_testsuite_property("suite-token", MINTED_JWT)
    warnings.warn(f"token {OPAQUE} expires soon", UserWarning, stacklevel=1)


def dump_caplog(name, caplog):
    with open(os.path.join(DUMPS, "caplog.jsonl"), "a", encoding="utf-8") as handle:
        entry = {"test": name, "text": caplog.text, "messages": [r.getMessage() for r in caplog.records]}
        handle.write(json.dumps(entry) + "\\n")


def test_passes(tmp_path, record_property, record_testsuite_property, caplog):
    leak_everywhere(tmp_path, record_property, record_testsuite_property)
    dump_caplog("passes", caplog)


def test_fails_on_an_assertion(tmp_path, record_property, record_testsuite_property, caplog):
    leak_everywhere(tmp_path, record_property, record_testsuite_property)
    dump_caplog("fails", caplog)
    token = OPAQUE
    assert token == MINTED_JWT, f"the proxy accepted {UNREGISTERED_JWT}"


def test_fails_with_a_chain(tmp_path, record_property, record_testsuite_property):
    leak_everywhere(tmp_path, record_property, record_testsuite_property)
    try:
        raise KeyError(MINTED_JWT)
    except KeyError as exc:
        raise RuntimeError(f"scrape with {OPAQUE} failed") from exc


def test_fails_like_record_cell():
    pytest.fail(f"cell: fail: 401 for {OPAQUE}\\n    evidence: {UNREGISTERED_JWT}", pytrace=False)


def test_skips():
    pytest.skip(f"no cluster for {OPAQUE}")


def test_xfails():
    pytest.xfail(f"known leak of {MINTED_JWT}")
'''

INNER_BROKEN_MODULE = '''
import os

raise RuntimeError("cannot import with " + os.environ["INNER_OPAQUE_TOKEN"])
'''


def fake_jwt() -> str:
    """JWT-shaped (so the regex catches it even unregistered); issued by nothing."""

    def segment(data: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    signature = base64.urlsafe_b64encode(random_secrets.token_bytes(32)).decode().rstrip("=")
    return f"{segment({'alg': 'RS256', 'kid': random_secrets.token_hex(4)})}.{segment({'sub': 'sa'})}.{signature}"


@pytest.fixture(scope="module")
def inner_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Run the inner session once; return the secrets and every text it produced."""
    root = tmp_path_factory.mktemp("inner")
    dumps = root / "dumps"
    dumps.mkdir()
    (root / "conftest.py").write_text(textwrap.dedent(INNER_CONFTEST))
    (root / "test_leaks.py").write_text(textwrap.dedent(INNER_TESTS))
    (root / "test_broken_import.py").write_text(textwrap.dedent(INNER_BROKEN_MODULE))
    secrets = {
        "registered opaque token": "tok-" + random_secrets.token_hex(16),
        "registered JWT": fake_jwt(),
        "unregistered JWT": fake_jwt(),
    }
    opaque = secrets["registered opaque token"]
    secrets["registered token, base64"] = base64.b64encode(opaque.encode()).decode()
    for secret in secrets.values():
        register(secret)  # so that this session's own output, should a test fail, leaks none
    env = {
        **os.environ,
        "INNER_OPAQUE_TOKEN": opaque,
        "INNER_MINTED_JWT": secrets["registered JWT"],
        "INNER_UNREGISTERED_JWT": secrets["unregistered JWT"],
        "INNER_DUMPS": str(dumps),
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("PYTEST_ADDOPTS", None)
    junit, log_file = root / "junit.xml", root / "pytest.log"
    completed = subprocess.run(
        [
            sys.executable, "-m", "pytest",
            # This repository's configuration (its addopts load the redaction plugin),
            # but none of its conftest files: the inner session is a plain one.
            "-c", str(REPO / "pyproject.toml"), "--rootdir", str(root),
            "-p", "no:cacheprovider", "--continue-on-collection-errors",
            "-rA", "-l", "--log-cli-level=INFO", "--log-level=INFO",
            "--log-file", str(log_file), "--log-file-level=INFO",
            "--junitxml", str(junit), "-o", "junit_logging=all", "-o", "junit_log_passing_tests=true",
            str(root),
        ],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    sinks = {
        "terminal": completed.stdout + completed.stderr,
        "junit xml": junit.read_text() if junit.is_file() else "",
        "log file": log_file.read_text() if log_file.is_file() else "",
        "reports": (dumps / "reports.jsonl").read_text() if (dumps / "reports.jsonl").is_file() else "",
        "caplog": (dumps / "caplog.jsonl").read_text() if (dumps / "caplog.jsonl").is_file() else "",
    }
    return {"returncode": completed.returncode, "secrets": secrets, "sinks": sinks}


def test_the_inner_session_wrote_to_every_sink(inner_run: dict[str, object]) -> None:
    """Guards the test below: each sink really received the (redacted) text."""
    sinks: dict[str, str] = inner_run["sinks"]  # type: ignore[assignment]
    terminal = sinks["terminal"]
    assert inner_run["returncode"] == 1, terminal[-3000:]
    assert "3 failed, 1 passed, 1 skipped, 1 xfailed" in terminal and "1 error" in terminal, terminal[-3000:]
    for section in ("Captured log call", "Captured stdout call", "Captured stderr call", "live log call",
                    "warnings summary", "PASSES", "FAILURES", "ERRORS", "short test summary info"):
        assert section in terminal, section
    for name, text in sinks.items():
        shown = REDACTED if name != "junit xml" else html.escape(REDACTED)
        assert shown in text, f"nothing redacted reached the {name}"
    junit = sinks["junit xml"]
    for element in ("<properties>", "<system-out>", "<system-err>", "<failure", "<skipped", "<error"):
        assert element in junit, element
    assert 'name="suite-token"' in junit and "echo-proxy said" in junit
    assert "echo-proxy said" in sinks["log file"] and "scraping with" in sinks["caplog"]


def test_no_secret_reaches_any_sink(inner_run: dict[str, object]) -> None:
    secrets: dict[str, str] = inner_run["secrets"]  # type: ignore[assignment]
    sinks: dict[str, str] = inner_run["sinks"]  # type: ignore[assignment]
    leaks = [f"{label} in the {sink}" for sink, text in sinks.items() for label, secret in secrets.items()
             if secret in text]  # fmt: skip
    assert not leaks, leaks


def test_caplog_of_this_session_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """The repository's own test runs load the plugin too (pyproject.toml's addopts)."""
    token = register("tok-" + random_secrets.token_hex(16))
    unregistered = fake_jwt()
    logger = logging.getLogger("e2e.checks.prober")
    with caplog.at_level(logging.INFO, logger="e2e.checks.prober"):
        worker = threading.Thread(target=lambda: logger.info("scraping with %s, proxy echoed %s", token, unregistered))
        worker.start()
        worker.join()
        logger.info("minted %s", token)
    assert [r.getMessage() for r in caplog.records] == [
        f"scraping with {REDACTED}, proxy echoed {REDACTED}",
        f"minted {REDACTED}",
    ]
    assert token not in caplog.text and unregistered not in caplog.text
