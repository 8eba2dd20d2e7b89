"""A pytest plugin that keeps secrets out of every sink pytest writes to.

Loaded for every pytest run of the repository (``-p e2e.pytest_redaction`` in
``pyproject.toml``'s ``addopts``). It applies ``e2e.secrets.redact`` (registered tokens and
their encodings, any JWT-shaped string, bearer headers, kubeconfig credentials) to:

- every log handler of pytest's logging plugin: the captured logs of each test phase
  ("Captured log ..." sections), ``caplog``, live logs (``--log-cli-level``) and
  ``--log-file``. The filter sits on the handlers, which pytest attaches to the root
  logger, so a record of any logger that propagates, from any thread, is redacted;
- every test and collection report before anyone reads it: captured stdout/stderr and log
  sections (a child process writing to the inherited stdout/stderr lands here), the
  failure (``longrepr``: assertion messages, tracebacks, the crash line of the short
  summary), the xfail reason and ``user_properties`` (``record_property``);
- the ``--junitxml`` file once pytest has written it (also what ``record_xml_attribute``
  and ``record_testsuite_property`` put there);
- the terminal writer, as a last line for text the reports do not carry (warnings,
  a plugin's summary).

Not covered: output a test prints with capturing off (``-s``) goes straight to the
terminal, and a logger with handlers of its own that does not propagate never reaches
pytest's handlers.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from e2e.secrets import RedactingFilter, redact

_LOGGING_PLUGIN = "logging-plugin"  # the name pytest's logging plugin registers itself under


def pytest_plugin_registered(plugin: object, plugin_name: str, manager: pytest.PytestPluginManager) -> None:
    # Historic hook: also called for the plugins registered before this one. The logging
    # plugin creates its handlers (caplog, report, live, file) once and reuses them for
    # every test, so a filter added here sees every record they ever handle.
    if plugin_name == _LOGGING_PLUGIN:
        for handler in vars(plugin).values():
            if isinstance(handler, logging.Handler):
                add_redacting_filter(handler)


def add_redacting_filter(handler: logging.Handler) -> None:
    """Give ``handler`` one ``RedactingFilter`` (a second call adds none)."""
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # trylast: the terminal reporter is registered by pytest's own pytest_configure.
    if config.pluginmanager.get_plugin("terminalreporter") is None:  # -p no:terminal
        return
    writer = config.get_terminal_writer()
    if getattr(writer, "_kserve_compat_redacting", False):
        return
    write = writer.write

    def redacting_write(msg: str, *, flush: bool = False, **markup: bool) -> None:
        write(redact(msg), flush=flush, **markup)

    writer.write = redacting_write  # type: ignore[method-assign]
    writer._kserve_compat_redacting = True  # type: ignore[attr-defined]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # tryfirst makes this the outermost wrapper: it sees the report as the other wrappers
    # (e.g. xfail handling) left it, before any pytest_runtest_logreport reads it.
    report = yield
    redact_report(report)
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    redact_report(report)
    return report


def redact_report(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Redact, in place, everything of ``report`` that pytest or a plugin may print or write."""
    report.sections = [(redact(title), redact(content)) for title, content in report.sections]
    report.longrepr = _redacted_longrepr(report.longrepr)
    if isinstance(report, pytest.TestReport):
        report.user_properties = [(redact(name), _redacted_value(value)) for name, value in report.user_properties]
    wasxfail = getattr(report, "wasxfail", None)
    if isinstance(wasxfail, str):
        report.wasxfail = redact(wasxfail)  # type: ignore[union-attr]


def _redacted_value(value: object) -> object:
    """``value`` itself unless its text holds a secret (then that text, redacted)."""
    text = value if isinstance(value, str) else str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def _redacted_longrepr(longrepr: Any) -> Any:
    """The failure representation with every secret removed, keeping its structure.

    A longrepr is ``None``, a string, a ``(path, lineno, reason)`` tuple (skips) or a
    terminal representation (traceback entries, the crash line, chained exceptions). The
    structure is kept where it can be walked, so that the short summary and JUnit still
    find the crash message; whatever still holds a secret after that becomes its text.
    """
    if longrepr is None:
        return None
    cleaned = _redact_in_place(longrepr, set())
    text = str(cleaned)
    if redact(text) != text:
        return redact(text)
    return cleaned


def _redact_in_place(value: Any, seen: set[int]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, tuple):
        return tuple(_redact_in_place(element, seen) for element in value)
    if isinstance(value, list):
        value[:] = [_redact_in_place(element, seen) for element in value]
        return value
    # pytest's terminal representations (ReprEntry, ReprFileLocation, ...) are plain
    # objects that render themselves: redact their attributes, keep their identity
    # (an exception chain and its outermost traceback share objects).
    if hasattr(value, "toterminal") and hasattr(value, "__dict__") and id(value) not in seen:
        seen.add(id(value))
        for name, attribute in list(vars(value).items()):
            object.__setattr__(value, name, _redact_in_place(attribute, seen))
    return value


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, object, object]:
    # After every other implementation: pytest's JUnit plugin writes its file in its own.
    try:
        return (yield)
    finally:
        xmlpath = session.config.getoption("xmlpath", None)
        if xmlpath and not hasattr(session.config, "workerinput"):  # xdist workers write none
            path = Path(os.path.abspath(os.path.expanduser(os.path.expandvars(xmlpath))))
            if path.is_file():
                redact_junit_file(path)


def redact_junit_file(path: Path) -> None:
    """Redact every text and attribute of a JUnit XML file; rewrite it only if one changed."""
    tree = ET.parse(path)
    changed = False
    for element in tree.iter():
        for name, value in element.attrib.items():
            if redact(value) != value:
                element.set(name, redact(value))
                changed = True
        for part in ("text", "tail"):
            text = getattr(element, part)
            if text and redact(text) != text:
                setattr(element, part, redact(text))
                changed = True
    if changed:
        # The same declaration and encoding as pytest's own writer.
        xml = ET.tostring(tree.getroot(), encoding="unicode")
        path.write_text(f'<?xml version="1.0" encoding="utf-8"?>{xml}', encoding="utf-8")
