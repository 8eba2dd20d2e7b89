"""What a run leaves: every report file, the CI step summary, and the exit code."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from e2e.matrix import Matrix
from e2e.report.grid import expected_unavailable
from e2e.report.junit import write_junit
from e2e.report.markdown import markdown_report
from e2e.report.page import html_report
from e2e.report.store import json_text, write_report_file
from e2e.results import CellResult, Verdict
from e2e.secrets import redact

REPORT_FILES: dict[str, str] = {
    "json": "report.json",
    "markdown": "report.md",
    "html": "report.html",
    "junit": "junit.xml",
}

# -- outputs and exit code ------------------------------------------------------------


def step_summary(markdown: str) -> Path | None:
    """Append to ``$GITHUB_STEP_SUMMARY`` when GitHub Actions set it; returns the file."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as summary:
        summary.write(redact(markdown).rstrip() + "\n\n")
    return path


def write_reports(
    results: Sequence[CellResult], directory: Path | str, matrix: Matrix | None = None
) -> dict[str, Path]:
    """``report.json`` (the merged list), ``report.md``, ``report.html``, ``junit.xml``."""
    out = Path(directory)
    paths = {kind: out / name for kind, name in REPORT_FILES.items()}
    write_report_file(paths["json"], json_text([r.to_dict() for r in results]))
    write_report_file(paths["markdown"], markdown_report(results, matrix))
    write_report_file(paths["html"], html_report(results, matrix))
    write_junit(results, paths["junit"], matrix)
    return paths


def failing_cells(results: Sequence[CellResult], strict: bool, matrix: Matrix | None = None) -> list[CellResult]:
    """The cells that make the run fail (see ``exit_code``)."""
    failing = []
    for result in results:
        broken = result.verdict in (Verdict.FAIL, Verdict.ERROR)
        unexpectedly_unavailable = result.verdict is Verdict.IMAGE_UNAVAILABLE and not expected_unavailable(
            result, matrix
        )
        unexplained_skip = result.verdict is Verdict.SKIPPED and not result.reason  # a skip must say why
        if broken or unexpectedly_unavailable or unexplained_skip or (strict and result.findings):
            failing.append(result)
    return failing


def exit_code(results: Sequence[CellResult], strict: bool, matrix: Matrix | None = None) -> int:
    """0 when every cell passed, was skipped for a stated reason, or hit a retired image;
    1 otherwise. With ``strict`` a security finding is a failure too."""
    return 1 if failing_cells(results, strict, matrix) else 0
